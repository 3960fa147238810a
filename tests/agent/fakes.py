"""Fakes that script and record: a toolbox with the real Toolbox's signatures, the experiment
core's actions, a catalog, and a notifier. Used by the graph's unit tests (the end-to-end tests run
the real toolbox on simulated telemetry)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from agent.models import InvestigationView, MitigationView
from agent.reasoning import ExperimentMeta
from tools.result import CheckResult, Effect, Evidence

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


def at(minute: float) -> datetime:
    """The fake world's time at ``minute``."""
    return T0 + timedelta(minutes=minute)


def ok(check: str, experiment: str | None = None) -> CheckResult:
    """A healthy result."""
    return CheckResult(
        check=check, verdict="ok", summary=f"No {check} issue.", experiment=experiment
    )


def fail(
    check: str,
    summary: str,
    *,
    experiment: str | None = None,
    arm: str | None = "test",
    onset: datetime | None = None,
    p: float = 1e-9,
    effect: str = "difference",
    estimate: float = 0.3,
    unit: str = "pp",
    params: dict[str, Any] | None = None,
) -> CheckResult:
    """A failing result with a series evidence (test vs control)."""
    rows: list[list[Any]] = [
        [at(150 + i).isoformat(), 0.01, 0.01 + (0.3 if i >= 2 else 0.0)] for i in range(8)
    ]
    return CheckResult(
        check=check,
        verdict="fail",
        summary=summary,
        effect=Effect(name=effect, estimate=estimate, unit=unit),
        p_value=p,
        onset=onset,
        experiment=experiment,
        arm=arm,
        params=dict(params or {}),
        evidence=[
            Evidence(
                name=f"{check} per minute",
                kind="series",
                columns=["minute", "control", "test"],
                rows=rows,
            )
        ],
    )


class FakeToolbox:
    """Scripted checks, keyed ``check@experiment:ID`` / ``check@model:ID`` / ``check@global``.

    Unscripted checks are healthy. Every call is recorded in ``calls``.
    """

    def __init__(
        self,
        results: Mapping[str, CheckResult] | None = None,
        *,
        onset: datetime | None = None,
        attribution: Mapping[str, list[tuple[str, float, float | None]]] | None = None,
        series: Mapping[str, pd.DataFrame] | None = None,
    ) -> None:
        self.results = dict(results or {})
        self.onset = onset
        self.attribution_rows = dict(attribution or {})
        self.series = dict(series or {})
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _get(self, check: str, experiment_id: str | None, model_id: str | None, **kw: Any):
        with self._lock:
            self.calls.append((check, {"experiment_id": experiment_id, "model_id": model_id, **kw}))
        key = (
            f"{check}@experiment:{experiment_id}"
            if experiment_id
            else f"{check}@model:{model_id}"
            if model_id
            else f"{check}@global"
        )
        return self.results.get(key) or ok(check, experiment_id)

    def prediction(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Share of invalid predictions, collapse and distribution shift.

        Args:
            start: Window start (UTC).
            end: Window end (UTC).
            experiment_id: Compare this experiment's arms with its control.
            model_id: Compare this model with its own baseline.
        """
        return self._get("prediction", experiment_id, model_id)

    def calibration(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Sum of predictions over sum of labels.

        Args:
            start: Window start (UTC).
            end: Window end (UTC).
            experiment_id: Compare this experiment's arms with its control.
            model_id: Compare this model with its own baseline.
        """
        return self._get("calibration", experiment_id, model_id)

    def ne(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Normalized entropy.

        Args:
            start: Window start (UTC).
            end: Window end (UTC).
            experiment_id: Compare this experiment's arms with its control.
            model_id: Compare this model with its own baseline.
        """
        return self._get("ne", experiment_id, model_id)

    def staleness(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Age of the served snapshot.

        Args:
            start: Window start (UTC).
            end: Window end (UTC).
            experiment_id: Compare this experiment's arms with its control.
            model_id: Compare this model with its own baseline.
        """
        return self._get("staleness", experiment_id, model_id)

    def fallback(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Fallback rate vs control.

        Args:
            start: Window start (UTC).
            end: Window end (UTC).
            experiment_id: Compare this experiment's arms with its control.
            model_id: Compare this model with its own baseline.
        """
        return self._get("fallback", experiment_id, model_id)

    def srm(self, start: datetime, end: datetime, experiment_id: str) -> CheckResult:
        """Sample ratio mismatch.

        Args:
            start: Window start (UTC).
            end: Window end (UTC).
            experiment_id: The experiment.
        """
        return self._get("srm", experiment_id, None)

    def infra(self, start: datetime, end: datetime) -> CheckResult:
        """Errors and latency on all traffic.

        Args:
            start: Window start (UTC).
            end: Window end (UTC).
        """
        return self._get("infra", None, None)

    def change_point(
        self, metric: str, start: datetime, end: datetime, experiment_id: str | None = None
    ) -> CheckResult:
        """Onset of a regression in a metric.

        Args:
            metric: The metric.
            start: Window start (UTC).
            end: Window end (UTC).
            experiment_id: Only this experiment's traffic.
        """
        with self._lock:
            self.calls.append(("change_point", {"metric": metric, "experiment_id": experiment_id}))
        if self.onset is None:
            return CheckResult(check="change_point", verdict="ok", summary="No change point.")
        return CheckResult(
            check="change_point",
            verdict="fail",
            onset=self.onset,
            summary=f"{metric} shifted at {self.onset:%H:%M}.",
        )

    def attribution(
        self,
        metric: str,
        start: datetime,
        end: datetime,
        baseline_start: datetime | None = None,
        baseline_end: datetime | None = None,
    ) -> CheckResult:
        """Which experiment explains a global metric delta.

        Args:
            metric: The metric.
            start: Window start (UTC).
            end: Window end (UTC).
            baseline_start: Baseline start.
            baseline_end: Baseline end.
        """
        with self._lock:
            self.calls.append(("attribution", {"metric": metric}))
        rows: list[list[Any]] = [
            ["experiment", f"{e}/test", s / 100, s, p]
            for e, s, p in self.attribution_rows.get(metric, [])
        ]
        return CheckResult(
            check="attribution",
            verdict="fail" if rows else "ok",
            summary=f"Attribution of {metric} by experiment.",
            evidence=[
                Evidence(
                    name="candidates",
                    kind="table",
                    columns=["kind", "candidate", "contribution", "share_of_change", "p_value"],
                    rows=rows,
                )
            ],
        )

    def metric_series(
        self, metric: str, start: datetime, end: datetime, experiment_id: str | None = None
    ) -> pd.DataFrame:
        """Per-minute values of a metric (scripted frames; empty otherwise)."""
        frame = self.series.get(metric)
        if frame is None:
            return pd.DataFrame({"minute": [], "arm": [], "value": []})
        lo = pd.Timestamp(start).tz_convert(None) if start.tzinfo else pd.Timestamp(start)
        hi = pd.Timestamp(end).tz_convert(None) if end.tzinfo else pd.Timestamp(end)
        t = pd.to_datetime(frame["minute"], utc=True).dt.tz_localize(None)
        return frame[(t >= lo) & (t < hi)].reset_index(drop=True)


class FakeActions:
    """The experiment core's actions, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self._lock = threading.Lock()

    def _do(self, action: str, target: str | None, actor: str) -> bool:
        with self._lock:
            self.calls.append((action, target, actor))
        return True

    def kill(self, experiment_id: str, actor: str, reason: str, key: str) -> bool:
        return self._do("kill_experiment", experiment_id, actor)

    def ramp_down(self, experiment_id: str, actor: str, reason: str, key: str) -> bool:
        return self._do("ramp_down", experiment_id, actor)

    def rollback_model(self, model_id: str, actor: str, reason: str, key: str) -> bool:
        return self._do("rollback_model", model_id, actor)

    def record(self, action: str, target: str | None, actor: str, reason: str, key: str) -> bool:
        return self._do(action, target, actor)


class FakeCatalog:
    """A dozen experiments, each owned by someone."""

    def __init__(
        self,
        experiments: Mapping[str, ExperimentMeta] | None = None,
        production_model: str | None = "ctr_v41",
    ) -> None:
        self._experiments = dict(experiments or default_experiments())
        self._production = production_model

    def experiments(self) -> dict[str, ExperimentMeta]:
        return dict(self._experiments)

    def production_model(self) -> str | None:
        return self._production


def default_experiments() -> dict[str, ExperimentMeta]:
    out = {
        "879": ExperimentMeta(
            id="879",
            name="Ranking Model Improvements",
            owner="alice",
            traffic_share=0.05,
            models={"control": "ctr_v41", "test": "ctr_v42"},
        )
    }
    for i in range(880, 891):
        out[str(i)] = ExperimentMeta(
            id=str(i),
            name=f"Experiment {i}",
            owner="bob",
            traffic_share=0.05,
            models={"control": "ctr_v41", "test": "ctr_v41"},
        )
    return out


class RecordingNotifier:
    """Records every callback."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def investigation_finished(self, view: InvestigationView) -> None:
        self.events.append(("finished", view.id, view.status))

    def awaiting_approval(self, view: InvestigationView) -> None:
        self.events.append(("awaiting", view.id, view.status))

    def mitigation_executed(self, mitigation: MitigationView) -> None:
        self.events.append(("executed", mitigation.id, mitigation.status))

    def mitigation_rejected(self, mitigation: MitigationView, user: str) -> None:
        self.events.append(("rejected", mitigation.id, user))

    def recovery_verified(self, mitigation: MitigationView) -> None:
        self.events.append(("verified", mitigation.id, str(mitigation.recovered)))
