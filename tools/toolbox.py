"""The Toolbox: the checks bound to a telemetry reader and the experiments and models they judge.

This is what the agent (and an LLM, through tool schemas generated from the signatures and
docstrings declared in :mod:`tools.registry`) calls. Every check fetches one wide aggregate per
(subject, window) — the window plus ``baseline_minutes`` before it — through the reader, which
caches it; checks never re-scan.
Times are UTC (naive datetimes are UTC; aware ones are converted).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TypedDict

import pandas as pd

from tools.aggregates import HistogramSpec
from tools.catalog import (
    CheckSettings,
    ExperimentInfo,
    ModelInfo,
    cadence,
    served_models,
    training_values,
)
from tools.checks import (
    SubjectFrame,
    Window,
    attribution_check,
    calibration_check,
    change_point_check,
    fallback_check,
    infra_check,
    ne_check,
    prediction_check,
    srm_check,
    staleness_check,
)
from tools.errors import ConfigError, NotFoundError
from tools.metrics import metric_spec, metric_values
from tools.registry import CHECKS, Checks
from tools.result import CheckResult
from tools.telemetry import Subject, TelemetryReader, to_datetime, to_minute
from tools.vocabulary import MetricName

__all__ = ["CHECKS", "CheckSettings", "Checks", "ExperimentInfo", "ModelInfo", "Toolbox"]


class _HistogramArgs(TypedDict):
    hist: pd.DataFrame
    histogram: HistogramSpec
    block_minutes: int


@dataclass(frozen=True)
class _Scored:
    frame: SubjectFrame
    histogram: _HistogramArgs


class Toolbox(Checks):
    """Diagnostic checks over one telemetry store, for the agent and its LLM.

    It implements :class:`tools.registry.Checks` (where each check is declared and documented).

    Args:
        reader: The telemetry reader (it caches every aggregate it fetches).
        experiments: Experiment id -> :class:`ExperimentInfo`.
        models: Model id -> :class:`ModelInfo`.
        production_model: The model serving traffic outside ranking experiments.
        settings: Thresholds and windows.
    """

    def __init__(
        self,
        reader: TelemetryReader,
        experiments: Mapping[str, ExperimentInfo],
        models: Mapping[str, ModelInfo] | None = None,
        production_model: str | None = None,
        settings: CheckSettings | None = None,
    ) -> None:
        self.reader = reader
        self.experiments = MappingProxyType(dict(experiments))
        self.models = MappingProxyType(dict(models or {}))
        self.production_model = production_model
        self.settings = settings or CheckSettings()
        self._frames: dict[tuple[Subject, int, int, int, bool], SubjectFrame] = {}
        self._lock = threading.RLock()

    def refresh(self) -> None:
        """Forget every cached aggregate: the next check reads the telemetry afresh.

        Call it when new telemetry has arrived for a window already read (verifying a
        mitigation re-reads the minutes after it).
        """
        with self._lock:
            self._frames.clear()
            self.reader.clear_cache()

    # -- checks (declared, with the docstrings the LLM reads, in tools.registry.Checks) ------

    def prediction(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        scored = self._scored(start, end, experiment_id, model_id)
        return prediction_check(scored.frame, **scored.histogram, params=self.settings.prediction)

    def calibration(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        scored = self._scored(start, end, experiment_id, model_id)
        training = training_values(self.reader, scored.frame, "training_calibration")
        return calibration_check(
            scored.frame, **scored.histogram, training=training, params=self.settings.calibration
        )

    def ne(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        scored = self._scored(start, end, experiment_id, model_id)
        training = training_values(self.reader, scored.frame, "training_ne")
        return ne_check(
            scored.frame, **scored.histogram, training=training, params=self.settings.ne
        )

    def staleness(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        frame = self._subject_frame(start, end, experiment_id, model_id)
        served = served_models(frame)
        snapshots = self.reader.snapshots(sorted(set(served.values())))
        refresh = {arm: cadence(self.models, model, snapshots) for arm, model in served.items()}
        return staleness_check(frame, snapshots, refresh=refresh, params=self.settings.staleness)

    def fallback(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        frame = self._subject_frame(start, end, experiment_id, model_id)
        return fallback_check(frame, params=self.settings.fallback)

    def srm(self, start: datetime, end: datetime, experiment_id: str) -> CheckResult:
        info = self._experiment(experiment_id)
        frame = self._frame(Subject(experiment_id=experiment_id), start, end)
        units = self.reader.units(experiment_id, start, end)
        return srm_check(
            units, info.arms, experiment_id=experiment_id, frame=frame, params=self.settings.srm
        )

    def attribution(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        baseline_start: datetime | None = None,
        baseline_end: datetime | None = None,
    ) -> CheckResult:
        if (baseline_start is None) != (baseline_end is None):
            raise ConfigError("baseline_end", baseline_end, "give both baseline bounds or neither")
        if baseline_start is None or baseline_end is None:
            frame = self._frame(Subject(), start, end, lean=True)
            lo = to_datetime(frame.window.fetch_start)
        else:
            frame = self._joined_frame(start, end, baseline_start, baseline_end)
            lo = baseline_start
        experiments = self._experiments_rows(lo, end, baseline_start, baseline_end, start)
        return attribution_check(
            metric,
            frame,
            experiments=experiments,
            controls=self._controls(),
            params=self.settings.attribution,
        )

    def change_point(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
    ) -> CheckResult:
        metric_spec(metric)
        subject = self._subject(experiment_id, None)
        lean = subject.kind == "all" and metric not in ("ne",)
        frame = self._frame(subject, start, end, lean=lean)
        seasonal = None
        if subject.kind != "experiment":
            season = timedelta(minutes=self.settings.season_minutes)
            cube = self.reader.cube(
                subject,
                to_datetime(frame.window.fetch_start) - season,
                to_datetime(frame.window.end) - season,
                latency=subject.kind == "all",
                lean=lean,
            )
            if len(cube):
                shift = self.settings.season_minutes
                seasonal = SubjectFrame(
                    cube.assign(minute=cube["minute"] + shift),
                    frame.window,
                    subject,
                    self.reader.schema.dimensions,
                )
        return change_point_check(
            metric, frame, seasonal=seasonal, params=self.settings.change_point
        )

    def infra(self, start: datetime, end: datetime) -> CheckResult:
        frame = self._frame(Subject(), start, end, lean=True)
        result = infra_check(frame, params=self.settings.infra)
        if result.verdict not in ("fail", "warn"):
            return result
        # Only a finding needs the per-experiment split that says whether an arm owns it.
        experiments = self.reader.experiments(to_datetime(frame.window.fetch_start), end)
        return infra_check(
            frame, experiments=experiments, controls=self._controls(), params=self.settings.infra
        )

    def metric_series(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
    ) -> pd.DataFrame:
        metric_spec(metric)
        subject = self._subject(experiment_id, None)
        frame = self._frame(subject, start, end, lean=subject.kind == "all" and metric != "ne")
        w = frame.window
        parts = []
        for arm in frame.arms:
            sums = frame.minute_sums(arm).loc[w.start : w.end - 1].reset_index(names="minute")
            values = metric_values(sums.assign(arm=arm), metric)
            parts.append(
                pd.DataFrame(
                    {
                        "minute": pd.to_datetime(sums["minute"] * 60, unit="s"),
                        "arm": arm,
                        "value": values.to_numpy(float),
                    }
                )
            )
        if not parts:
            return pd.DataFrame(
                {"minute": pd.Series(dtype="datetime64[ns]"), "arm": [], "value": []}
            )
        return pd.concat(parts, ignore_index=True)

    # -- plumbing ------------------------------------------------------------------------------

    def _experiment(self, experiment_id: str) -> ExperimentInfo:
        info = self.experiments.get(experiment_id)
        if info is None:
            raise NotFoundError("experiment", experiment_id)
        return info

    def _subject_frame(
        self, start: datetime, end: datetime, experiment_id: str | None, model_id: str | None
    ) -> SubjectFrame:
        """The preamble of a check on one subject: validate it, read its frame."""
        return self._frame(self._subject(experiment_id, model_id), start, end)

    def _scored(
        self, start: datetime, end: datetime, experiment_id: str | None, model_id: str | None
    ) -> _Scored:
        """The preamble of a check over scored predictions: the frame and the histogram."""
        subject = self._subject(experiment_id, model_id)
        frame = self._frame(subject, start, end)
        hist, block = self._histogram(subject, start, end)
        return _Scored(
            frame,
            {"hist": hist, "histogram": self.reader.histogram_spec, "block_minutes": block},
        )

    def _subject(self, experiment_id: str | None, model_id: str | None) -> Subject:
        if experiment_id is not None:
            self._experiment(experiment_id)
            return Subject(experiment_id=experiment_id)
        return Subject(model_id=model_id)

    def _window(self, start: datetime, end: datetime) -> Window:
        lo, hi = to_minute(start), to_minute(end, ceil=True)
        if hi <= lo:
            raise ConfigError("end", end, f"window end must be after its start {start}")
        return Window(lo - self.settings.baseline_minutes, lo, hi)

    def _frame(
        self, subject: Subject, start: datetime, end: datetime, *, lean: bool = False
    ) -> SubjectFrame:
        """The subject's wide aggregate over the window and its baseline, fetched once.

        ``lean`` (all traffic only): the cheaper cube of infra, attribution and global change
        points, with the latency ladder and without model keys or log loss.
        """
        w = self._window(start, end)
        key = (subject, w.fetch_start, w.start, w.end, lean)
        with self._lock:
            hit = self._frames.get(key)
            if hit is None:
                # Only all traffic carries the latency ladder (infra); it costs a third of a scan.
                # A full cube brings the histogram of prediction, calibration and NE along: one
                # read of the subject's rows (one exposure join) serves every check.
                cube = self.reader.cube(
                    subject,
                    to_datetime(w.fetch_start),
                    to_datetime(w.end),
                    latency=subject.kind == "all",
                    lean=lean,
                    histogram_block=None if lean else self._block(w),
                )
                control = (
                    self.experiments[subject.experiment_id].control
                    if subject.experiment_id is not None
                    else None
                )
                hit = SubjectFrame(cube, w, subject, self.reader.schema.dimensions, control)
                self._frames[key] = hit
            return hit

    def _joined_frame(
        self, start: datetime, end: datetime, baseline_start: datetime, baseline_end: datetime
    ) -> SubjectFrame:
        lo, b_hi = to_minute(baseline_start), to_minute(baseline_end)
        w_lo = to_minute(start)
        if not lo < b_hi <= w_lo:
            raise ConfigError(
                "baseline_end", baseline_end, "the baseline must end by the window's start"
            )
        window = self.reader.cube(Subject(), start, end, latency=True, lean=True)
        base = self.reader.cube(Subject(), baseline_start, baseline_end, latency=True, lean=True)
        cube = pd.concat([base, window], ignore_index=True)
        w = Window(lo, w_lo, to_minute(end, ceil=True))
        return SubjectFrame(cube, w, Subject(), self.reader.schema.dimensions)

    def _experiments_rows(
        self,
        lo: datetime,
        end: datetime,
        baseline_start: datetime | None,
        baseline_end: datetime | None,
        start: datetime,
    ) -> pd.DataFrame:
        if baseline_start is None or baseline_end is None:
            return self.reader.experiments(lo, end)
        return pd.concat(
            [
                self.reader.experiments(baseline_start, baseline_end),
                self.reader.experiments(start, end),
            ],
            ignore_index=True,
        )

    def _histogram(
        self, subject: Subject, start: datetime, end: datetime
    ) -> tuple[pd.DataFrame, int]:
        w = self._window(start, end)
        block = self._block(w)
        hist = self.reader.histogram(
            subject, to_datetime(w.fetch_start), to_datetime(w.end), block_minutes=block
        )
        return hist, block

    def _block(self, w: Window) -> int:
        """Minutes per histogram time block: at most ``max_blocks`` blocks over the fetch."""
        return max(1, math.ceil((w.end - w.fetch_start) / self.settings.max_blocks))

    def _controls(self) -> dict[str, str]:
        return {e.id: e.control for e in self.experiments.values()}
