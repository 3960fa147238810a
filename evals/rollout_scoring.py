"""Scoring a controller-driven rollout (a scenario experiment with ``rollout``) in ``vigil eval``.

The simulator (:func:`evals.sim.ramp.simulate_ramp`) records how each ramp went; the harness
keeps it beside the scenario's stores (:data:`OUTCOME_FILE`) and the runner adds a
:class:`RolloutResult` to the scenario's row: the stage reached, whether the gate rolled the
candidate back and when, the traffic-minutes of exposure before it did, and whether that is what
the scenario's ``expect.rollout`` asks for. Pure functions besides reading that file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.sim.scenario import RampExpect

__all__ = ["OUTCOME_FILE", "RolloutResult", "read_outcomes", "score_rollout", "write_outcomes"]

OUTCOME_FILE = "rollout.outcomes.json"
"""Beside the scenario's stores (the settings' home): the ramps' outcomes as JSON."""


class RolloutResult(BaseModel):
    """One ramped experiment's rollout, as a result row shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str
    stage_reached: int = Field(
        description="Highest stage index served (stages count once running)."
    )
    max_coverage_pct: float = Field(description="Highest percent of the layer's units enrolled.")
    rolled_back: bool
    rollback_minute: int | None
    exposure_traffic_minutes: float = Field(
        description="Share of all traffic on the test arms summed over minutes, from the fault "
        "(or launch) to the rollback (or the end)."
    )
    final_state: str
    shadow: str | None = Field(
        default=None,
        description="How its shadow run ended: passed, failed, running (None: no shadow run).",
    )
    shadow_minute: int | None = Field(
        default=None, description="When the controller ended the shadow run."
    )
    shadow_summary: str | None = Field(
        default=None, description="The shadow step's summary, each candidate arm's verdict."
    )
    expected_rolled_back: bool | None = None
    expected_shadow: str | None = None
    expected_below_pct: float | None = None
    passed: bool | None = Field(
        default=None, description="As expected (None when the scenario expects nothing)."
    )
    why: list[str] = Field(default_factory=list)


def write_outcomes(home: Path, outcomes: list[dict[str, Any]]) -> None:
    """Keep the ramps' outcomes beside the stores (``home``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / OUTCOME_FILE).write_text(json.dumps(outcomes))


def read_outcomes(home: Path) -> list[dict[str, Any]]:
    """The outcomes :func:`write_outcomes` kept; empty when the world had no ramp."""
    path = home / OUTCOME_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [dict(d) for d in data] if isinstance(data, list) else []


def score_rollout(outcome: dict[str, Any], expect: RampExpect | None) -> RolloutResult:
    """One ramp's outcome against the scenario's ``expect.rollout`` (may be None).

    ``expect.rolled_back``: the gate must (True) or must not (False) roll the candidate back;
    ``expect.before_pct``: with a rollback, it must come before more than this percent of the
    layer's units were enrolled; ``expect.full``: the candidate must reach ``running``;
    ``expect.shadow``: its shadow run must end so (``passed``, ``failed``), and a failed one
    before any unit was served a candidate (no coverage, no exposure).
    """
    why: list[str] = []
    rolled_back = bool(outcome["rolled_back"])
    coverage = float(outcome["max_coverage_pct"])
    want_rb = expect.rolled_back if expect is not None else None
    below = expect.before_pct if expect is not None else None
    full = expect.full if expect is not None else False
    shadow = expect.shadow if expect is not None else None
    got_shadow = outcome.get("shadow")
    if shadow is not None and got_shadow != shadow:
        why.append(f"shadow run {got_shadow or 'never judged'}, expected {shadow}")
    exposure = float(outcome["exposure_traffic_minutes"])
    if shadow == "failed" and (coverage > 0 or exposure > 0):
        why.append(f"a candidate was served ({coverage:g} %, {exposure:.3g} traffic-minutes)")
    if want_rb is not None and rolled_back != want_rb:
        why.append("rolled back" if rolled_back else "not rolled back")
    if below is not None and coverage > below:
        why.append(f"reached {coverage:g} % before the gate stopped it (limit {below:g} %)")
    if full and outcome["final_state"] != "running":
        why.append(f"did not reach full rollout ({outcome['final_state']})")
    return RolloutResult(
        experiment=str(outcome["experiment_id"]),
        stage_reached=int(outcome["stage_reached"]),
        max_coverage_pct=coverage,
        rolled_back=rolled_back,
        rollback_minute=outcome["rollback_minute"],
        exposure_traffic_minutes=exposure,
        final_state=str(outcome["final_state"]),
        shadow=got_shadow,
        shadow_minute=outcome.get("shadow_minute"),
        shadow_summary=outcome.get("shadow_summary"),
        expected_rolled_back=want_rb,
        expected_shadow=shadow,
        expected_below_pct=below,
        passed=None if expect is None else not why,
        why=why,
    )
