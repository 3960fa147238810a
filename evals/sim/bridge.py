"""Where a scenario meets the rest of Vigil: lifecycle configuration, allocation and clock.

:func:`scenario_to_experiment_file` turns the world's layers, models and experiments into a real
:class:`lifecycle.config.ExperimentFile`, so the agent and the lifecycle see the scenario's
experiments as configuration; :func:`world_snapshot` compiles it with
:func:`lifecycle.allocation.build_snapshot` (kill switches included), and the simulator assigns
units only through :func:`lifecycle.allocation.assign_many` on that snapshot.

Time: minute ``m`` of a scenario is ``world.start + m minutes``. Telemetry timestamps are naive UTC
datetimes; :func:`ts_to_minute` also accepts aware datetimes and converts them to UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from evals.sim.scenario import Scenario
from lifecycle.allocation import (
    ConfigSnapshot,
    KillScope,
    Status,
    assign_many,
    build_snapshot,
)
from lifecycle.config import Arm, Experiment, ExperimentFile, Layer, ModelEntry, RolloutPlan
from tools.telemetry import TelemetryReader
from tools.toolbox import ExperimentInfo, ModelInfo, Toolbox

__all__ = [
    "minute_to_ts",
    "scenario_to_experiment_file",
    "scenario_toolbox",
    "ts_to_minute",
    "unit_arms",
    "world_snapshot",
]


def minute_to_ts(scenario: Scenario, minute: float) -> datetime:
    """The naive UTC timestamp of a scenario minute (fractions allowed).

    Args:
        scenario: The scenario whose ``world.start`` is minute 0.
        minute: Minutes since the start.
    """
    return scenario.start + timedelta(minutes=float(minute))


def ts_to_minute(scenario: Scenario, ts: datetime) -> float:
    """Minutes since the scenario's start of a timestamp (naive = UTC).

    Args:
        scenario: The scenario whose ``world.start`` is minute 0.
        ts: A naive UTC or an aware datetime.
    """
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return (ts - scenario.start).total_seconds() / 60.0


def scenario_to_experiment_file(scenario: Scenario) -> ExperimentFile:
    """The scenario's layers, model registry and experiments as lifecycle configuration.

    Layers are listed in order of first use; each model becomes a :class:`ModelEntry` (with its
    refresh cadence); each experiment keeps its id, name, layer, traffic and arms (model, ad load,
    weight). Launch and stop minutes are simulator timeline, not configuration, and are left out.

    Args:
        scenario: A validated scenario.

    Returns:
        A file :class:`lifecycle.service.ExperimentService` can validate and create.
    """
    layers: dict[str, Layer] = {}
    experiments: list[Experiment] = []
    for spec in scenario.world.experiments:
        layers.setdefault(spec.layer, Layer(id=spec.layer, name=spec.layer))
        arms = {
            name: Arm(weight=arm.weight, model=arm.model, ad_load=arm.ad_load)
            for name, arm in spec.arms.items()
        }
        ramp: dict[str, Any] = {}
        if spec.rollout is not None:  # a ramp: its plan and guardrails go to lifecycle as given
            plan = RolloutPlan(stages=spec.rollout.stages, on_harm=spec.rollout.on_harm)
            ramp = {"rollout": plan, "guardrails": spec.rollout.guardrails}
        if spec.shadow:  # shadow mode first (issue 18), then the plan
            ramp["rollout"] = ramp.get("rollout", RolloutPlan()).model_copy(update={"shadow": True})
        experiments.append(
            Experiment(
                id=spec.id,
                name=spec.name,
                description=spec.description,
                owner=spec.owner,
                layer=spec.layer,
                traffic_pct=spec.layer_pct,
                arms=arms,
                control=spec.control,
                **ramp,
            )
        )
    models = [
        ModelEntry(
            id=m.id,
            version=m.version,
            description=f"simulated model, quality {m.quality:g}",
            refresh_minutes=m.refresh_minutes,
        )
        for m in scenario.world.models
    ]
    return ExperimentFile(layers=list(layers.values()), models=models, experiments=experiments)


def world_snapshot(
    scenario: Scenario, kill_switches: Iterable[tuple[KillScope, str]] = ()
) -> ConfigSnapshot:
    """Compile the scenario's experiments (all running, full coverage; ``shadow: true`` ones in
    lifecycle's ``shadow`` state: served control, their drawn arms scored) with active kill
    switches.

    Args:
        scenario: A validated scenario.
        kill_switches: Active ``(scope, target)`` pairs; blocked experiments allocate nobody.
    """
    file = scenario_to_experiment_file(scenario)
    shadow: dict[str, Status] = {e.id: "shadow" for e in scenario.world.experiments if e.shadow}
    return build_snapshot(file.layers, file.experiments, status=shadow, kill_switches=kill_switches)


def unit_arms(
    snapshot: ConfigSnapshot, unit_ids: npt.NDArray[np.int64], experiment_ids: Iterable[str]
) -> dict[str, npt.NDArray[np.int16]]:
    """Arm index of every unit of the pool in each experiment (``-1`` = not in it).

    Allocation is a pure function of the unit id, so the pool is assigned once and requests look
    their unit's arm up; this is :func:`lifecycle.allocation.assign_many`, the production path.
    """
    return {exp_id: assign_many(snapshot, unit_ids, exp_id) for exp_id in experiment_ids}


def scenario_toolbox(
    scenario: Scenario, telemetry_url: str, *, grouping_sets: bool | None = None
) -> Toolbox:
    """The checks over a simulated world's telemetry, its experiments and models taken as given.

    The agent reads experiments from lifecycle instead (``agent.runtime.toolbox_factory``); this
    is for benchmarks and tests that run the checks on a world without a state store.

    Args:
        scenario: The world's scenario.
        telemetry_url: Where its telemetry is.
        grouping_sets: The reader's choice of one ``GROUPING SETS`` statement (None: the
            dialect's default), for benchmarks that measure it.
    """
    experiments = {
        e.id: ExperimentInfo(
            id=e.id,
            name=e.name,
            layer=e.layer,
            arms={arm: spec.weight for arm, spec in e.arms.items()},
            control=e.control,
            arm_models={arm: spec.model for arm, spec in e.arms.items()},
        )
        for e in scenario.world.experiments
    }
    models = {m.id: ModelInfo(m.id, m.refresh_minutes) for m in scenario.world.models}
    reader = TelemetryReader(telemetry_url, grouping_sets=grouping_sets)
    return Toolbox(reader, experiments, models, scenario.world.production_model)
