"""A simulated world whose gradual rollouts are driven by the real rollout controller.

A scenario experiment with ``rollout`` (instead of ``traffic_pct``) is created in a lifecycle state
store with its plan and guardrails and started at its launch minute. The world is then simulated
``tick_minutes`` at a time; after each slice is committed to the telemetry store, lifecycle's
:class:`~lifecycle.controller.RolloutController` ticks on the telemetry clock (one grouped query
for all ramping experiments, the gate, the plan's action, the audit log) exactly as it does in
``vigil serve``, and the next slice allocates units through the state store's new snapshot
(:func:`lifecycle.allocation.assign_many` on :meth:`ExperimentService.snapshot`): the coverage
in the telemetry follows the gate's decisions, kill switches included. Units enrolled at a lower
stage stay enrolled, in the same arm, when the gate advances (the allocation's ramp-up invariant).

The world is drawn in blocks of ``tick_minutes`` (each slice draws only its own minutes), so it
is a function of the scenario alone, like every simulated world, though not minute for minute
the world of its fixed-traffic twin (whose blocks are longer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC

import numpy as np
import sqlalchemy as sa

from evals.sim.bridge import minute_to_ts, scenario_to_experiment_file
from evals.sim.engine import simulate_block
from evals.sim.runner import _write_snapshots
from evals.sim.scenario import Scenario
from evals.sim.shadow import RunnerFor, log_shadow
from evals.sim.store import TelemetryWriter, open_writer
from evals.sim.world import World, build_world
from lifecycle.allocation import ConfigSnapshot, assign_many
from lifecycle.config import RolloutPlan, RolloutStage
from lifecycle.controller import Decision, RolloutController
from lifecycle.gate import GateConfig
from lifecycle.inference import ModelRunner, ShadowLog
from lifecycle.service import ExperimentService
from tools.errors import ConfigError
from tools.unit_stats import UnitStatsReader

__all__ = ["RAMP_ACTOR", "RampOutcome", "RampSummary", "has_ramp", "simulate_ramp"]

RAMP_ACTOR = "vigil-scenario"
"""Who creates and starts the scenario's experiments in the state store."""

ROLLBACK_ACTIONS = frozenset({"ramp_down", "kill", "alert", "pause"})
"""Controller actions that count as a rollback (``alert`` is ``pause_and_alert``; ``pause`` is a
failed shadow run, stopped before anyone was served the candidate)."""


@dataclass
class RampOutcome:
    """How one ramped experiment's rollout went.

    Attributes:
        experiment_id: The experiment.
        stage_reached: Highest stage index it served at (``len(stages)`` once ``running``).
        max_coverage_pct: Highest percent of its layer's units enrolled at any minute.
        rolled_back: The gate rolled it back (ramp down, kill, or pause and alert).
        rollback_minute: The minute of the first rollback (None without one).
        exposure_traffic_minutes: Share of all traffic served by its test arms, summed over the
            minutes from its first fault's start (its launch without one) to the rollback (to
            the end without one): 1 % of traffic for 30 minutes is 0.3.
        final_state: Where its rollout stood at the end, e.g. ``ramping(1)``, ``killed``.
        actions: The controller's non-hold actions as ``(minute, action, stage)``.
        shadow: How its shadow run ended: ``passed`` (moved to its first stage), ``failed``
            (paused), ``running`` (still in shadow at the end), None without a shadow run.
        shadow_minute: The minute the controller ended the shadow run (None: it did not).
        shadow_rows: Shadow predictions logged for it.
        shadow_summary: The shadow step's summary when the run ended (each arm's verdict).
    """

    experiment_id: str
    stage_reached: int = 0
    max_coverage_pct: float = 0.0
    rolled_back: bool = False
    rollback_minute: int | None = None
    exposure_traffic_minutes: float = 0.0
    final_state: str = "draft"
    actions: list[tuple[int, str, int]] = field(default_factory=list)
    shadow: str | None = None
    shadow_minute: int | None = None
    shadow_rows: int = 0
    shadow_summary: str | None = None


@dataclass(frozen=True)
class RampSummary:
    """What :func:`simulate_ramp` wrote and decided.

    Attributes:
        scenario: The scenario's name.
        end_minute: The minute after the last one simulated.
        requests: Request rows written.
        exposures: Exposure rows written.
        ticks: Controller ticks.
        seconds: Wall time.
        outcomes: Per ramped experiment.
        coverage: Per ramped experiment, percent of its layer enrolled at every minute.
    """

    scenario: str
    end_minute: int
    requests: int
    exposures: int
    ticks: int
    seconds: float
    outcomes: dict[str, RampOutcome]
    coverage: dict[str, list[float]]


def has_ramp(scenario: Scenario) -> bool:
    """True when an experiment of the scenario is ramped by the controller."""
    return any(e.rollout is not None for e in scenario.world.experiments)


def _create(scenario: Scenario, service: ExperimentService) -> None:
    """Store the world's experiments as drafts: ramps with their plan, the rest at 100 %."""
    file = scenario_to_experiment_file(scenario)
    full = RolloutPlan(stages=[RolloutStage(percent=100.0, min_minutes=0)])
    ramped = {e.id for e in scenario.world.experiments if e.rollout is not None}
    experiments = [
        e
        if e.id in ramped
        else e.model_copy(update={"rollout": full.model_copy(update={"shadow": e.rollout.shadow})})
        for e in file.experiments
    ]
    service.create(
        file.model_copy(update={"experiments": experiments}),
        RAMP_ACTOR,
        reason=f"scenario {scenario.name}",
    )


def _runners(scenario: Scenario) -> RunnerFor:
    """The world's model runner per served (reference) model, for the shadow log."""
    from evals.replay import WorldRunner  # evals.replay imports evals.sim: import when needed

    made: dict[str, ModelRunner] = {}

    def runner_for(reference: str) -> ModelRunner:
        if reference not in made:
            made[reference] = WorldRunner(scenario, reference=reference)
        return made[reference]

    return runner_for


def _shadow_counts(engine: sa.Engine) -> dict[str, int]:
    if not sa.inspect(engine).has_table("shadow_predictions"):
        return {}
    query = "SELECT experiment_id, COUNT(*) FROM shadow_predictions GROUP BY experiment_id"
    with engine.connect() as conn:
        return {str(e): int(n) for e, n in conn.execute(sa.text(query))}


def _allocate(world: World, snapshot: ConfigSnapshot) -> dict[str, float]:
    """Point the world's allocation at the state store's snapshot; enrolled percent per id.

    An experiment in shadow enrols units but serves them control (``assign_many``), so it
    counts as enrolling none: nobody is served its candidates.
    """
    enrolled = {}
    for i, exp_id in enumerate(world.exp_ids):
        world.exp_unit_arms[i] = assign_many(snapshot, world.unit_ids, exp_id)
        compiled = snapshot.get(exp_id)
        serving = exp_id not in snapshot.blocked and compiled.status in ("ramping", "running")
        enrolled[exp_id] = compiled.coverage_pct if serving else 0.0
    return enrolled


def simulate_ramp(
    scenario: Scenario,
    telemetry_url: str,
    state_url: str,
    *,
    end_minute: int | None = None,
    replace: bool = True,
    gate: GateConfig | None = None,
) -> RampSummary:
    """Simulate minutes ``[0, end_minute)`` with the rollout controller deciding the coverage.

    Args:
        scenario: A scenario with at least one ``rollout`` experiment.
        telemetry_url: The telemetry store (written slice by slice, each slice committed).
        state_url: The state store the experiments are created in (it must not hold them yet).
        end_minute: Minute after the last one; default ``world.minutes``.
        replace: Drop the telemetry tables first.
        gate: The gate's thresholds (lifecycle's defaults if None).

    Returns:
        What was written and how every ramp went.

    Raises:
        ConfigError: For a bad end minute or a scenario without a ramp.
    """
    end = scenario.world.minutes if end_minute is None else end_minute
    if end < 1:
        raise ConfigError("end_minute", end, "must be at least 1")
    ramps = {e.id: e for e in scenario.world.experiments if e.rollout is not None}
    if not ramps:
        raise ConfigError("world.experiments", None, "no experiment has a rollout to drive")
    began = time.perf_counter()
    tick = min(e.rollout.tick_minutes for e in ramps.values() if e.rollout is not None)
    world = build_world(scenario)
    # Blocks of one tick: each slice draws only its own minutes (a block is drawn whole), and
    # the world stays a function of the scenario alone.
    world.block_minutes = tick
    clock = {"now": minute_to_ts(scenario, 0).replace(tzinfo=UTC)}
    engine = _engine(telemetry_url, replace)
    service = ExperimentService(state_url, clock=lambda: clock["now"])
    # The controller judges a shadow run from the shadow_predictions this loop logs.
    controller = RolloutController(
        state_url, UnitStatsReader(engine), gate=gate, shadow=ShadowLog(engine)
    )
    runner_for = _runners(scenario)
    try:
        _create(scenario, service)
        launches = {e.id: e.start_minute for e in scenario.world.experiments}
        with engine.begin() as conn:
            writer = TelemetryWriter(engine, conn)
            _write_snapshots(world, writer, 0, end)
            writer.flush()
            writer.restore()
        outcomes = {k: RampOutcome(k) for k in ramps}
        coverage: dict[str, list[float]] = {k: [] for k in ramps}
        rows = {"requests": 0, "exposures": 0, "shadow": 0}
        ticks = 0
        for lo in range(0, end, tick):
            hi = min(end, lo + tick)
            now = minute_to_ts(scenario, lo).replace(tzinfo=UTC)
            clock["now"] = now
            for exp_id, minute in launches.items():
                if lo <= minute < hi:
                    service.start(exp_id, RAMP_ACTOR, f"scenario launch at minute {minute}")
            if lo > 0:
                decisions = controller.tick(now)
                ticks += 1
                _record(decisions, outcomes, lo)
            snapshot = service.snapshot()
            enrolled = _allocate(world, snapshot)
            _account(scenario, world, service, outcomes, coverage, enrolled, lo, hi)
            written = _write_slice(world, engine, lo, hi)
            rows["requests"] += written[0]
            rows["exposures"] += written[1]
            # What a serving process does beside serving: score the drawn candidates of the
            # experiments in shadow and log them, for the controller's next tick to judge.
            rows["shadow"] += log_shadow(
                engine,
                snapshot,
                runner_for,
                scenario,
                minute_to_ts(scenario, lo),
                minute_to_ts(scenario, hi),
            )
        for exp_id, n in _shadow_counts(engine).items():
            if exp_id in outcomes:
                outcomes[exp_id].shadow_rows = n
        for view in service.list():
            if view.id in outcomes:
                state = view.status
                outcomes[view.id].final_state = (
                    f"ramping({view.stage})" if state == "ramping" else state
                )
    finally:
        controller.close()
        service.close()
        engine.dispose()
    return RampSummary(
        scenario=scenario.name,
        end_minute=end,
        requests=rows["requests"],
        exposures=rows["exposures"],
        ticks=ticks,
        seconds=time.perf_counter() - began,
        outcomes=outcomes,
        coverage=coverage,
    )


def _engine(url: str, replace: bool) -> sa.Engine:
    with open_writer(url, replace=replace):
        pass  # creates the file and the tables (dropped first when replacing)
    return sa.create_engine(url)


def _write_slice(world: World, engine: sa.Engine, lo: int, hi: int) -> tuple[int, int]:
    """Simulate minutes ``[lo, hi)`` and commit them; returns the rows written."""
    b_lo, b_hi = lo // world.block_minutes, (hi - 1) // world.block_minutes
    with engine.begin() as conn:
        writer = TelemetryWriter(engine, conn)
        try:
            for b in range(b_lo, b_hi + 1):
                block = simulate_block(world, b, lo, hi)
                if block is not None:
                    writer.write("requests", block.requests)
                    writer.write("exposures", block.exposures)
            writer.flush()
        finally:
            writer.restore()
    return writer.rows["requests"], writer.rows["exposures"]


def _record(decisions: list[Decision], outcomes: dict[str, RampOutcome], minute: int) -> None:
    for d in decisions:
        out = outcomes.get(d.experiment_id)
        if out is None:
            continue
        if d.before == "shadow":
            out.shadow = out.shadow or "running"
            if d.action in ("advance", "pause"):
                out.shadow = "passed" if d.action == "advance" else "failed"
                out.shadow_minute = minute
                out.shadow_summary = "; ".join(d.reasons)
        if d.action in ("hold", "skipped"):
            continue
        if d.action == "alert" and d.alert is None:
            continue  # the stage's alert is open already: nothing new was done
        out.actions.append((minute, d.action, d.stage))
        if d.action in ROLLBACK_ACTIONS and not out.rolled_back:
            out.rolled_back, out.rollback_minute = True, minute


def _account(
    scenario: Scenario,
    world: World,
    service: ExperimentService,
    outcomes: dict[str, RampOutcome],
    coverage: dict[str, list[float]],
    enrolled: dict[str, float],
    lo: int,
    hi: int,
) -> None:
    """Coverage per minute, the stage reached and the exposure before a rollback."""
    views = {v.id: v for v in service.list() if v.id in outcomes}
    for exp_id, out in outcomes.items():
        spec = scenario.experiments[exp_id]
        pct = enrolled.get(exp_id, 0.0)
        coverage[exp_id].extend([pct] * (hi - lo))
        view = views[exp_id]
        if pct > 0:
            out.max_coverage_pct = max(out.max_coverage_pct, pct)
            reached = view.stage if view.status == "ramping" else len(view.rollout.stages)
            out.stage_reached = max(out.stage_reached, reached)
        total = sum(a.weight for a in spec.arms.values())
        test_share = sum(a.weight for k, a in spec.arms.items() if k != spec.control) / total
        faults = [f.start_minute for f in scenario.faults if f.experiment == exp_id]
        since = min(faults) if faults else spec.start_minute
        stop = out.rollback_minute if out.rollback_minute is not None else np.inf
        minutes = max(0.0, min(hi, stop) - max(lo, since))
        out.exposure_traffic_minutes += pct / 100.0 * test_share * minutes
