"""The Toolbox: the checks bound to a telemetry reader and the experiments and models they judge.

This is what the agent (and an LLM, through tool schemas generated from the signatures and
docstrings declared in :mod:`tools.registry`) calls. Its check methods come from the registry:
each call is routed to the check's declared implementation, which reads through the shared
preambles here (:class:`tools.registry.CheckContext`). Every check fetches one wide aggregate per
(subject, window) — the window plus ``baseline_minutes`` before it — through the reader, which
caches it; checks never re-scan.
Times are UTC (naive datetimes are UTC; aware ones are converted).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import pandas as pd

from tools.catalog import CheckSettings, ExperimentInfo, ModelInfo
from tools.checks import SubjectFrame, Window
from tools.checks.attribution import ATTRIBUTABLE
from tools.errors import ConfigError, NotFoundError
from tools.metrics import metric_spec, metric_values
from tools.registry import CHECKS, CheckCall, CheckName, Checks, RoutedChecks, Scored, check_entry
from tools.result import CheckResult
from tools.telemetry import Subject, TelemetryReader, to_datetime, to_minute
from tools.vocabulary import MetricName

__all__ = ["CHECKS", "CheckSettings", "Checks", "ExperimentInfo", "ModelInfo", "Toolbox"]


class Toolbox(RoutedChecks):
    """Diagnostic checks over one telemetry store, for the agent and its LLM.

    It implements :class:`tools.registry.Checks` (where each check is declared, documented and
    implemented) and the :class:`tools.registry.CheckContext` the implementations read through.

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
        # Attribution's frame over an explicit baseline, per (baseline, window) bounds.
        self._joined: dict[tuple[datetime, ...], SubjectFrame] = {}
        self._lock = threading.RLock()

    def refresh(self) -> None:
        """Forget every cached aggregate: the next check reads the telemetry afresh.

        Call it when new telemetry has arrived for a window already read (verifying a
        mitigation re-reads the minutes after it).
        """
        with self._lock:
            self._frames.clear()
            self._joined.clear()
            self.reader.clear_cache()

    # -- checks (declared, with their implementations, in tools.registry.Checks) ---------------

    def route(self, name: CheckName, arguments: Mapping[str, Any]) -> CheckResult:
        """Run the check ``name``'s declared implementation on this toolbox.

        A finding located in a slice (``where``) also states ``params["where_share"]``: the
        slice's share of its subject's requests in the window (what a cause confined there can
        move at most), when the subject's frame was read.
        """
        call = CheckCall(**arguments)
        result = check_entry(name).run(self, call)
        if not result.where or "where_share" in result.params:
            return result
        share = self._where_share(call, result.where)
        if share is None:
            return result
        return result.model_copy(update={"params": {**result.params, "where_share": share}})

    def _where_share(self, call: CheckCall, where: Mapping[str, str]) -> float | None:
        """The share of the call's subject's requests in the window that ``where`` holds, from a
        frame already read (None when none was, or ``where`` names no dimension of it)."""
        w = self._window(call.start, call.end)
        with self._lock:
            subject = (
                Subject()
                if call.experiment_id is None and call.model_id is None
                else self.subject(call.experiment_id, call.model_id)
            )
            frame = self._frames.get((subject, w.fetch_start, w.start, w.end, False))
            frame = frame or self._frames.get((subject, w.fetch_start, w.start, w.end, True))
        if frame is None or not set(where) <= set(frame.dims):
            return None
        total = float(frame.span("all", w.start, w.end)["n"])
        if total <= 0:
            return None
        part = float(frame.slice(dict(where)).span("all", w.start, w.end)["n"])
        return round(part / total, 4)

    def metric_series(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
    ) -> pd.DataFrame:
        metric_spec(metric)
        subject = self.subject(experiment_id, None)
        frame = self.frame(subject, start, end, lean=subject.kind == "all" and metric != "ne")
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

    def experiment(self, experiment_id: str) -> ExperimentInfo:
        """The experiment (NotFoundError if it is unknown)."""
        info = self.experiments.get(experiment_id)
        if info is None:
            raise NotFoundError("experiment", experiment_id)
        return info

    def subject_frame(self, call: CheckCall) -> SubjectFrame:
        """The preamble of a check on one subject: validate it, read its frame."""
        return self.frame(self.subject(call.experiment_id, call.model_id), call.start, call.end)

    def scored(self, call: CheckCall) -> Scored:
        """The preamble of a check over scored predictions: the frame and the histogram."""
        subject = self.subject(call.experiment_id, call.model_id)
        frame = self.frame(subject, call.start, call.end)
        # One histogram object per frame: the checks share its arrays (tools.checks._hist).
        hist, block = frame.derived(
            "histogram", lambda: self._histogram(subject, call.start, call.end)
        )
        return Scored(
            frame,
            {"hist": hist, "histogram": self.reader.histogram_spec, "block_minutes": block},
        )

    def subject(self, experiment_id: str | None, model_id: str | None) -> Subject:
        """The subject named (an experiment is looked up first)."""
        if experiment_id is not None:
            self.experiment(experiment_id)
            return Subject(experiment_id=experiment_id)
        return Subject(model_id=model_id)

    def _window(self, start: datetime, end: datetime) -> Window:
        lo, hi = to_minute(start), to_minute(end, ceil=True)
        if hi <= lo:
            raise ConfigError("end", end, f"window end must be after its start {start}")
        return Window(lo - self.settings.baseline_minutes, lo, hi)

    def frame(
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

    def attribution_inputs(self, call: CheckCall) -> tuple[SubjectFrame, pd.DataFrame]:
        """All traffic's frame over the window and baseline, and the experiments' rows."""
        start, end = call.start, call.end
        baseline_start, baseline_end = call.baseline_start, call.baseline_end
        if (baseline_start is None) != (baseline_end is None):
            raise ConfigError("baseline_end", baseline_end, "give both baseline bounds or neither")
        if baseline_start is None or baseline_end is None:
            frame = self.frame(Subject(), start, end, lean=True)
            lo = to_datetime(frame.window.fetch_start)
        else:
            frame = self._joined_frame(start, end, baseline_start, baseline_end)
            lo = baseline_start
        experiments = self._experiments_rows(
            lo, end, baseline_start, baseline_end, start, frame.window, _attributed(call.metric)
        )
        return frame, experiments

    def _joined_frame(
        self, start: datetime, end: datetime, baseline_start: datetime, baseline_end: datetime
    ) -> SubjectFrame:
        lo, b_hi = to_minute(baseline_start), to_minute(baseline_end)
        w_lo = to_minute(start)
        if not lo < b_hi <= w_lo:
            raise ConfigError(
                "baseline_end", baseline_end, "the baseline must end by the window's start"
            )
        key = (baseline_start, baseline_end, start, end)
        with self._lock:
            hit = self._joined.get(key)
            if hit is None:
                window = self.reader.cube(Subject(), start, end, latency=True, lean=True)
                base = self.reader.cube(
                    Subject(), baseline_start, baseline_end, latency=True, lean=True
                )
                cube = pd.concat([base, window], ignore_index=True)
                w = Window(lo, w_lo, to_minute(end, ceil=True))
                hit = SubjectFrame(cube, w, Subject(), self.reader.schema.dimensions)
                self._joined[key] = hit
            return hit

    def _experiments_rows(
        self,
        lo: datetime,
        end: datetime,
        baseline_start: datetime | None,
        baseline_end: datetime | None,
        start: datetime,
        w: Window,
        sums: tuple[str, ...] | None,
    ) -> pd.DataFrame:
        # Attribution sums each arm over its window and its baseline only: one row per span
        # (not per minute), and one read when the baseline ends where the window starts; only
        # the sums of its metric.
        spans = tuple((a, b) for a, b in ((w.start, w.end), (w.fetch_start, w.start)) if b > a)
        if baseline_start is None or baseline_end is None:
            return self.reader.experiments(lo, end, spans=spans, sums=sums)
        if baseline_end == start:
            return self.reader.experiments(baseline_start, end, spans=spans, sums=sums)
        return pd.concat(
            [
                self.reader.experiments(baseline_start, baseline_end, spans=spans, sums=sums),
                self.reader.experiments(start, end, spans=spans, sums=sums),
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

    def controls(self) -> dict[str, str]:
        """Experiment id -> its control arm."""
        return {e.id: e.control for e in self.experiments.values()}


def _attributed(metric: str | None) -> tuple[str, ...] | None:
    """The experiments' sums attribution reads for ``metric`` (None: every sum)."""
    cols = ATTRIBUTABLE.get(metric or "")
    return None if cols is None else tuple(dict.fromkeys(("n", *cols)))
