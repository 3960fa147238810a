"""Fakes that script and record: a toolbox with the registry's check signatures, the experiment
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
from tools.registry import RoutedChecks
from tools.result import CheckResult, Effect, Evidence
from tools.vocabulary import MetricName

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


class FakeToolbox(RoutedChecks):
    """Scripted checks, keyed ``check@experiment:ID`` / ``check@model:ID`` / ``check@global``.

    Unscripted checks are healthy. Every call is recorded in ``calls``. The check methods, with the
    real signatures, come from the check registry (:class:`tools.registry.RoutedChecks`); only
    :meth:`route` answers them.
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

    def route(self, name: str, arguments: Mapping[str, Any]) -> CheckResult:
        if name == "change_point":
            return self._change_point(arguments["metric"], arguments["experiment_id"])
        if name == "attribution":
            return self._attribution(arguments["metric"])
        experiment_id = arguments.get("experiment_id")
        model_id = arguments.get("model_id")
        with self._lock:
            self.calls.append((name, {"experiment_id": experiment_id, "model_id": model_id}))
        key = (
            f"{name}@experiment:{experiment_id}"
            if experiment_id
            else f"{name}@model:{model_id}"
            if model_id
            else f"{name}@global"
        )
        return self.results.get(key) or ok(name, experiment_id)

    def _change_point(self, metric: str, experiment_id: str | None) -> CheckResult:
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

    def _attribution(self, metric: str) -> CheckResult:
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
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
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

    def start(self, experiment_id: str, actor: str, reason: str, key: str) -> bool:
        return self._do("start_experiment", experiment_id, actor)


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
