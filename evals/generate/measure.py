"""The signal strength of any scenario's expected fault, hand-written ones included.

A generated scenario states its strength (``expect.signal_strength``); for one that does not, the
same formula (:mod:`evals.generate.strength`) is applied to its world, its fault and its alert, so
``vigil eval`` draws the strength curve for the public suite too.
"""

from __future__ import annotations

from evals.generate.faults import FaultDraw, Scope, fault_sample
from evals.generate.strength import signal_strength
from evals.generate.world import Exp, Timeline, WorldDraw
from evals.sim.scenario import FaultSpec, Scenario, fault_arm

__all__ = ["scenario_strength", "world_draw"]


def world_draw(scenario: Scenario) -> WorldDraw:
    """The scenario's world in the generator's terms (what the sample computation reads)."""
    world = scenario.world
    experiments = [
        Exp(
            id=e.id,
            name=e.name,
            layer=e.layer,
            # A ramped experiment (``rollout``) counts at full coverage: an upper bound.
            traffic_pct=e.traffic_pct if e.traffic_pct is not None else 100.0,
            control=e.control,
            arms={name: arm.model_dump(exclude_none=True) for name, arm in e.arms.items()},
            start_minute=e.start_minute,
            end_minute=e.end_minute,
        )
        for e in world.experiments
    ]
    onset = int(scenario.expect.onset_minute or 0)
    return WorldDraw(
        start=scenario.start,
        diurnal=world.diurnal,
        requests_per_minute=world.requests_per_minute,
        base_ctr=world.base_ctr,
        timeline=Timeline(
            onset=onset, lag=max(0, scenario.alert.minute - onset), minutes=world.minutes
        ),
        models=[m.model_dump(exclude_none=True) for m in world.models],
        production_model=world.production_model,
        model_layer="",
        experiments=experiments,
        dimensions={str(k): dict(v) for k, v in world.dimensions.items()},
    )


def _expected_fault(scenario: Scenario) -> FaultSpec | None:
    expect = scenario.expect
    matching = [f for f in scenario.faults if f.kind == expect.root_cause]
    named = [f for f in matching if f.experiment == expect.experiment]
    found = named or matching
    return found[0] if found else None


def scenario_strength(scenario: Scenario, *, minute: int | None = None) -> float | None:
    """``expect.signal_strength`` if stated, else computed; None for a healthy scenario.

    Args:
        scenario: A validated scenario.
        minute: Measure the fault's traffic up to this minute instead of the alert's (the
            strength a watching investigation's last follow-up could see); always computed.

    Returns:
        The strength of the fault ``expect.root_cause`` names (the one in ``expect.experiment``
        when several), from its onset to the alert (or ``minute``); None when no fault is of
        that kind.
    """
    if minute is None and scenario.expect.signal_strength is not None:
        return scenario.expect.signal_strength
    spec = _expected_fault(scenario)
    if spec is None:
        return None
    world = world_draw(scenario)
    scope: Scope = (
        "experiment" if spec.experiment is not None else "model" if spec.model else "global"
    )
    fault = FaultDraw(
        kind=spec.kind,
        scope=scope,
        start_minute=spec.start_minute,
        severity=spec.severity,
        strength=0.0,
        experiment=next((e for e in world.experiments if e.id == spec.experiment), None),
        arm=fault_arm(scenario, spec),
        model=spec.model,
        where={str(k): v for k, v in spec.where.items()},
        end_minute=spec.end_minute,
        mode=spec.mode,
    )
    alert = max(scenario.alert.minute if minute is None else minute, spec.start_minute)
    sample = fault_sample(world, fault, alert, global_alert=scenario.alert.experiment is None)
    return round(signal_strength(spec.kind, spec.severity, sample), 3)
