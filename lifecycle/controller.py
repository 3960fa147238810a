"""The rollout controller: every ramping experiment's health gate, fed from the telemetry.

One tick reads each ramping experiment's per-arm statistics for its current stage (one grouped
query for all of them, unit-clustered: :mod:`tools.unit_stats`), evaluates the gate
(:func:`lifecycle.gate.evaluate_gate`) and acts on its decision:

1. Skip an experiment a kill switch stops: the kill switch always wins.
2. ``rollback`` (SRM, or a guardrail confidently harmed) -> what the experiment's plan says
   (``rollout.on_harm``): ``ramp_down`` one stage, ``kill`` it, or ``pause_and_alert`` (change
   nothing, hold, and open an alert in the ledger that the caller turns into an investigation).
3. ``advance`` (the stage ran its minimum time, every guardrail non-inferior) -> next stage.
4. ``hold`` -> nothing.

An experiment in shadow mode (issue 18) is judged after ``rollout.shadow_minutes``: its shadow
predictions since the shadow began are read per candidate arm (``ShadowSource``, the
``shadow_predictions`` table) and each arm is judged by the preflight's shadow step
(:func:`lifecycle.preflight.judge_shadow`). Every check of every arm holds (``ok`` or ``warn``)
-> ``end_shadow``: the experiment moves to its first stage; one fails in any arm -> ``pause``
with the arm named (no user saw the candidate; the owner completes it, or resumes the shadow
after a fix); no data or inconclusive -> hold. A kill switch wins here too.

Stage time and data count only from the stage's start. Every action is audited with the actor
``rollout-gate``, the decision and the statistics that drove it; holds are not audited (one per
tick would drown the log). The controller runs on the telemetry clock: ``tick(at)`` is "now"
(``at=None``: the newest request in the telemetry, so a simulated or replayed world works).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, assert_never

import pandas as pd

from lifecycle.alerts import AlertLedger
from lifecycle.config import GuardrailMetric
from lifecycle.gate import ArmSummary, GateConfig, GateInput, GateReport, evaluate_gate
from lifecycle.gate import Decision as GateDecision
from lifecycle.monitors import GUARDRAIL_ALERT_METRIC, UNIT_METRIC, AlertSpec, arm_statistics
from lifecycle.monitors import unit_statistics as _unit_statistics
from lifecycle.service import ExperimentService
from lifecycle.settings import LifecycleSettings
from lifecycle.views import ExperimentView
from tools.errors import StateError, TelemetryError
from tools.unit_stats import UnitStatsReader, unit_sum_columns
from tools.vocabulary import as_utc, utc_now

if TYPE_CHECKING:  # the preflight's modules load scikit-learn: imported when a shadow is judged
    from lifecycle.preflight import ShadowSource
    from tools.checks.replay import ReplayParams

__all__ = [
    "ACTOR",
    "ALERT_SOURCE",
    "Action",
    "Decision",
    "Look",
    "RolloutController",
    "gate_input",
]

ACTOR = "rollout-gate"
"""Who the audit log names for the controller's actions."""

ALERT_SOURCE = "rollout-gate"
"""The alert ledger's source for ``pause_and_alert`` alerts."""

Action = Literal["advance", "hold", "ramp_down", "kill", "alert", "pause", "skipped"]


@dataclass(frozen=True)
class Decision:
    """What the controller decided for one experiment at one tick.

    Attributes:
        experiment_id: The experiment.
        at: The tick's time (telemetry clock).
        stage: The stage evaluated (index into the plan).
        decision: The gate's decision (``advance``, ``hold``, ``rollback``).
        action: What was done: ``advance``, ``hold``, ``ramp_down``, ``kill``, ``alert``
            (``pause_and_alert``), or ``skipped`` (a kill switch or a concurrent change won).
        before: The rollout state before, e.g. ``ramping(0)``.
        after: The state after.
        reasons: Why, one line each (the gate's reasons).
        report: The gate's report (every guardrail's interval against its tolerance).
        alert: The alert opened for ``pause_and_alert`` (None when one was open already).
    """

    experiment_id: str
    at: datetime
    stage: int
    decision: Literal["advance", "hold", "rollback"]
    action: Action
    before: str
    after: str
    reasons: list[str]
    report: GateReport
    alert: AlertSpec | None = field(default=None)


@dataclass(frozen=True)
class Look:
    """One experiment's gate at one time, before acting.

    Attributes:
        view: The experiment.
        report: The gate's report.
        stats: The statistics it judged (since the stage's start).
        at: The time of the look.
    """

    view: ExperimentView
    report: GateReport
    stats: GateInput
    at: datetime


def _decision(look: Look, action: Action, after: str, alert: AlertSpec | None = None) -> Decision:
    return Decision(
        experiment_id=look.view.id,
        at=look.at,
        stage=look.view.stage,
        decision=look.report.decision,
        action=action,
        before=_state(look.view),
        after=after,
        reasons=list(look.report.reasons),
        report=look.report,
        alert=alert,
    )


def _empty_sums() -> pd.DataFrame:
    return pd.DataFrame(columns=["experiment_id", "arm", *unit_sum_columns()])


def gate_input(
    view: ExperimentView,
    unit_sums: Sequence[Mapping[str, Any]],
    cube: pd.DataFrame | None = None,
) -> GateInput:
    """The gate's input for one experiment from its per-unit sums (and cube, if any).

    Args:
        view: The experiment.
        unit_sums: :meth:`UnitStatsReader.arm_unit_sums` rows of this experiment, as records
            (read with ``request_sums=True`` they also judge NE, calibration and latency).
        cube: :meth:`TelemetryReader.cube` rows for guardrails without per-unit sums (NE,
            calibration, latency) when ``unit_sums`` lacks the request sums; such guardrails
            have no data without either.
    """
    units = {str(r["arm"]): int(r["units"]) for r in unit_sums}
    metrics: dict[GuardrailMetric, dict[str, ArmSummary]] = {}
    has_request_sums = bool(unit_sums) and "n_pred" in unit_sums[0]
    for g in view.guardrails:
        if g.metric == "srm":
            continue
        if g.metric in UNIT_METRIC:
            metrics[g.metric] = _unit_statistics(unit_sums, g.metric)
        elif cube is not None:
            metrics[g.metric] = arm_statistics(cube, g.metric, view.control)
        elif has_request_sums and (g.metric != "latency_p99" or "lat_gt_0" in unit_sums[0]):
            frame = pd.DataFrame(list(unit_sums))
            metrics[g.metric] = arm_statistics(frame, g.metric, view.control)
    return GateInput(units=units, metrics=metrics)


def _state(view: ExperimentView) -> str:
    return f"{view.status}({view.stage})" if view.status == "ramping" else view.status


class RolloutController:
    """Drives every ramping experiment through its stages from the telemetry.

    Args:
        state_url: The state store; the controller acts through its own
            :class:`ExperimentService`, whose clock is the tick's time.
        units: Per-unit sums reader (one grouped query per tick).
        ledger: Alert ledger for ``pause_and_alert``; opened on ``state_url`` if None.
        gate: The gate's thresholds.
        vocabulary: Targeting vocabulary of the service (as in the settings).
        shadow: Shadow predictions of experiments in shadow mode (None: a shadow run is never
            judged, so it holds until a human advances it with force).
        replay: Thresholds of the shadow run's checks.
    """

    def __init__(
        self,
        state_url: str,
        units: UnitStatsReader,
        *,
        ledger: AlertLedger | None = None,
        gate: GateConfig | None = None,
        vocabulary: Mapping[str, Collection[str]] | None = None,
        shadow: ShadowSource | None = None,
        replay: ReplayParams | None = None,
    ) -> None:
        self._shadow = shadow
        self._replay = replay
        self._at: datetime | None = None
        self._gate = gate or GateConfig()
        self.service = ExperimentService(
            state_url, vocabulary=vocabulary, gate=self._gate, clock=self._now
        )
        self._units = units
        self._ledger = ledger or AlertLedger(state_url)
        self.ticks = 0

    @classmethod
    def from_settings(cls, settings: LifecycleSettings) -> RolloutController:
        """A controller on the settings' state store and telemetry (tables as mapped)."""
        schema = settings.telemetry_schema()
        from lifecycle.inference import ShadowLog

        return cls(
            settings.state_url,
            UnitStatsReader(settings.telemetry_url, schema),
            vocabulary=settings.targeting_vocabulary,
            shadow=ShadowLog(
                settings.telemetry_url,
                requests=settings.telemetry_tables.get("requests", "requests"),
            ),
        )

    def _now(self) -> datetime:
        return self._at if self._at is not None else utc_now()

    def close(self) -> None:
        """Release the state store's connections."""
        self.service.close()
        self._ledger.close()

    def now(self) -> datetime:
        """The telemetry clock: the newest request's time, or the wall clock without data."""
        return self._units.latest() or utc_now()

    def ramping(self) -> list[ExperimentView]:
        """Experiments in ``ramping`` (kill-switched ones included: the tick skips them)."""
        return [v for v in self.service.list() if v.status == "ramping"]

    def evaluate(
        self, at: datetime | None = None, experiment_ids: Collection[str] | None = None
    ) -> list[Look]:
        """The gate's report for every ramping experiment at ``at``; changes nothing.

        Args:
            at: "Now" (UTC); the telemetry clock by default.
            experiment_ids: Only these experiments (all ramping ones by default).
        """
        end = as_utc(at) if at is not None else self.now()
        views = [v for v in self.ramping() if experiment_ids is None or v.id in experiment_ids]
        starts = {v.id: as_utc(v.stage_started_at) for v in views}
        # Only a stage that has begun has data; the others are judged on nothing (hold).
        live = {k: s for k, s in starts.items() if s < end}
        wanted = {g.metric for v in views if v.id in live for g in v.guardrails}
        sums = (
            self._units.arm_unit_sums(
                live,
                end,
                request_sums=bool(wanted & {"ne", "calibration", "latency_p99"}),
                latency="latency_p99" in wanted,
            )
            if live
            else _empty_sums()
        )
        by_experiment: dict[str, list[dict[str, Any]]] = {}
        for row in sums.to_dict("records"):  # once: per-experiment frame filters are slow
            by_experiment.setdefault(str(row["experiment_id"]), []).append(
                {str(k): v for k, v in row.items()}
            )
        out = []
        for v in views:
            stage = v.rollout.stages[min(v.stage, len(v.rollout.stages) - 1)]
            own = by_experiment.get(v.id, [])
            elapsed = max(0.0, (end - starts[v.id]) / timedelta(minutes=1))
            stats = gate_input(v, own)
            report = evaluate_gate(
                v.config,
                stats,
                elapsed_minutes=elapsed,
                min_minutes=stage.min_minutes,
                config=self._gate,
            )
            out.append(Look(v, report, stats, end))
        return out

    def tick(self, at: datetime | None = None) -> list[Decision]:
        """Evaluate every ramping experiment's gate and act on it.

        Args:
            at: "Now" (UTC): the end of the telemetry window and the time actions are stamped
                with; the telemetry clock by default.

        Returns:
            One decision per ramping experiment.
        """
        end = as_utc(at) if at is not None else self.now()
        decisions = [self._act(look) for look in self.evaluate(end)]
        decisions += [
            self._judge_shadow(v, end) for v in self.service.list() if v.status == "shadow"
        ]
        # An alert stays open while its experiment's stage keeps failing the gate.
        failing = {f"{d.experiment_id}:stage{d.stage}" for d in decisions if d.action == "alert"}
        for record in self._ledger.open_alerts(ALERT_SOURCE):
            if record.key not in failing:
                self._ledger.resolve_open(ALERT_SOURCE, record.key, end)
        self.ticks += 1
        return decisions

    def alerts(self, decisions: list[Decision]) -> list[AlertSpec]:
        """The alerts a tick opened (``pause_and_alert``), for the caller to investigate."""
        return [d.alert for d in decisions if d.alert is not None]

    # --- acting ------------------------------------------------------------------------------

    def _act(self, look: Look) -> Decision:
        view, report = look.view, look.report
        # 1. A kill switch wins over the controller.
        if view.killed:
            return _decision(look, "skipped", _state(view))
        if report.decision != "hold":
            # 2. Read again just before acting: a kill switch or a human may have been faster.
            current = self.service.get(view.id)
            if current.killed or (current.status, current.stage) != (view.status, view.stage):
                return _decision(look, "skipped", _state(current))
        key = f"{view.id}:stage{view.stage}"
        self._at = look.at
        try:
            match report.decision:
                case "hold":
                    return _decision(look, "hold", _state(view))
                case "advance":
                    # The service evaluates the same gate on the same statistics in its own
                    # transaction and audits the decision with them.
                    result = self.service.advance(view.id, ACTOR, stats=look.stats)
                    done: Action = "advance" if result.decision == "advance" else "skipped"
                    return _decision(look, done, result.after)
                case "rollback":
                    return self._rollback(look, key)
                case _:
                    assert_never(report.decision)
        except StateError:
            # Changed under us (killed, paused by a human): theirs wins; the next tick sees it.
            return _decision(look, "skipped", _state(self.service.get(view.id)))
        finally:
            self._at = None

    def _judge_shadow(self, view: ExperimentView, end: datetime) -> Decision:
        started = as_utc(view.stage_started_at)
        elapsed = max(0.0, (end - started) / timedelta(minutes=1))
        due = view.rollout.shadow_minutes

        def decision(action: Action, reason: str, after: str = "shadow") -> Decision:
            gate: GateDecision = (
                "advance" if action == "advance" else "rollback" if action == "pause" else "hold"
            )
            report = GateReport(
                decision=gate,
                reasons=[reason],
                srm=None,
                guardrails=[],
                elapsed_minutes=elapsed,
                min_minutes=float(due),
            )
            return _decision(Look(view, report, GateInput(), end), action, after)

        # 1. A kill switch wins over the controller.
        if view.killed:
            return decision("skipped", "a kill switch stops it")
        # 2. The shadow run lasts its minimum time, then its predictions are judged.
        if elapsed < due:
            return decision("hold", f"shadow run: {elapsed:.0f} of {due} minutes")
        if self._shadow is None:
            return decision("hold", "no shadow log to judge the shadow run")
        from lifecycle.preflight import judge_shadow

        try:
            samples = self._shadow.shadow_samples(view.id, started, end)
        except TelemetryError as exc:
            return decision("hold", f"shadow run not read: {exc}")
        if not samples:
            return decision("hold", "no shadow predictions logged yet")
        # Each candidate arm is judged on its own sample: one failing arm fails the run.
        step = judge_shadow(samples, self._replay)
        evidence = {
            "verdict": step.verdict,
            "summary": step.summary,
            "arms": {s.arm: len(s.labels) for s in samples},
            "checks": [{"check": c.check, "arm": c.arm, "verdict": c.verdict} for c in step.checks],
        }
        self._at = end
        try:
            # 3. Pass -> first stage; fail -> pause; could not tell -> hold.
            match step.verdict:
                case "ok" | "warn":
                    reason = f"shadow run passed: {step.summary}"
                    self.service.end_shadow(view.id, ACTOR, reason, evidence=evidence)
                    return decision("advance", reason, "ramping(0)")
                case "fail":
                    reason = f"shadow run failed: {step.summary}"
                    self.service.pause(view.id, ACTOR, reason)
                    return decision("pause", reason, "paused")
                case "inconclusive" | "no_data":
                    return decision("hold", step.summary)
                case _:
                    assert_never(step.verdict)
        except StateError:
            # Changed under us (killed, paused by a human): theirs wins; the next tick sees it.
            return decision("skipped", "changed concurrently", _state(self.service.get(view.id)))
        finally:
            self._at = None

    def _rollback(self, look: Look, key: str) -> Decision:
        view, plan = look.view, look.view.rollout.on_harm
        reason = f"health gate: rollback ({plan}): " + "; ".join(look.report.reasons)
        match plan:
            case "ramp_down":
                result = self.service.advance(view.id, ACTOR, stats=look.stats)
                done: Action = "ramp_down" if result.decision == "rollback" else "skipped"
                return _decision(look, done, result.after)
            case "kill":
                self.service.kill(view.id, ACTOR, reason, key=f"rollout-gate:{key}")
                return _decision(look, "kill", _state(self.service.get(view.id)))
            case "pause_and_alert":
                return _decision(look, "alert", _state(view), self._alert(look, key, reason))
            case _:
                assert_never(plan)

    def _alert(self, look: Look, key: str, reason: str) -> AlertSpec | None:
        view, report = look.view, look.report
        harmed = [g for g in report.guardrails if g.verdict == "harm"]
        srm_failed = report.srm is not None and report.srm.verdict == "fail"
        guardrail = "srm" if srm_failed or not harmed else harmed[0].metric
        metric = GUARDRAIL_ALERT_METRIC[guardrail]
        record = self._ledger.open(
            ALERT_SOURCE, key, metric=metric, fired_at=look.at, experiment_id=view.id, detail=reason
        )
        if record is None:
            return None  # open already: one alert per experiment and stage
        self.service.record("note", view.id, ACTOR, reason, key=f"rollout-gate:alert:{record.id}")
        labels = {"guardrail": guardrail, "stage": str(view.stage), "decision": "rollback"}
        if harmed:
            worst = harmed[0]
            labels |= {
                "arm": worst.arm,
                "estimate": f"{worst.estimate:.4g}",
                "ci_low": f"{worst.ci_low:.4g}",
                "ci_high": f"{worst.ci_high:.4g}",
            }
        return AlertSpec(
            ledger_id=record.id,
            key=key,
            experiment_id=view.id,
            guardrail=guardrail,
            metric=metric,
            fired_at=look.at,
            since=as_utc(view.stage_started_at),
            summary=reason,
            labels=labels,
        )
