"""The simulated world ramps through lifecycle's rollout controller (scenario key ``rollout``).

Two small worlds are simulated end to end (a healthy candidate and a faulty one); the tests read
the state store's audit log and the telemetry the simulation wrote: the coverage in the telemetry
follows the controller's decisions, units enrolled at a lower stage stay in their arm, and a
faulty candidate is stopped at its first stage with the owner's plan. The scenario format's new
keys are rejected, when wrong, with the field's path.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from evals.harness import unsafe_actions
from evals.rollout_scoring import score_rollout
from evals.sim import parse_scenario
from evals.sim.ramp import RampSummary, simulate_ramp
from evals.sim.scenario import RampExpect
from lifecycle.service import ExperimentService
from tools.errors import ConfigError, ConfigProblems

STAGES = [
    {"percent": 10, "min_minutes": 8},
    {"percent": 40, "min_minutes": 8},
    {"percent": 100, "min_minutes": 8},
]


GUARDRAILS = [{"metric": "revenue_per_request", "max_regression": 0.8}, {"metric": "srm"}]
FALLBACK = {"metric": "fallback_rate", "max_regression": 1.0}


def _scenario(
    *,
    faults: list[dict[str, Any]] | None = None,
    on_harm: str = "kill",
    minutes: int = 50,
    guardrails: list[dict[str, Any]] = GUARDRAILS,
) -> dict[str, Any]:
    return {
        "name": "ramp-test",
        "seed": 5,
        "world": {
            "start": "2026-11-20T06:00:00Z",
            "minutes": minutes,
            "requests_per_minute": 2500,
            "models": [{"id": "ctr_v41", "quality": 0.75}, {"id": "ctr_v42", "quality": 0.76}],
            "production_model": "ctr_v41",
            "experiments": [
                {
                    "id": "77",
                    "name": "candidate",
                    "layer": "ranking",
                    "rollout": {
                        "stages": STAGES,
                        "on_harm": on_harm,
                        "tick_minutes": 2,
                        "guardrails": guardrails,
                    },
                    "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
                }
            ],
        },
        "faults": faults or [],
        "alert": {"metric": "revenue", "minute": minutes - 1},
        "expect": {"root_cause": "none"},
    }


def _run(tmp_path: Path, raw: dict[str, Any]) -> tuple[RampSummary, str, str]:
    telemetry = f"duckdb:///{tmp_path / 't.duckdb'}"
    state = f"sqlite:///{tmp_path / 's.db'}"
    return simulate_ramp(parse_scenario(raw), telemetry, state), telemetry, state


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> tuple[RampSummary, str, str]:
    return _run(tmp_path_factory.mktemp("healthy"), _scenario())


def test_a_healthy_candidate_ramps_stage_by_stage_through_the_controller(
    healthy: tuple[RampSummary, str, str],
) -> None:
    summary, telemetry, state = healthy
    out = summary.outcomes["77"]
    assert not out.rolled_back
    advances = [(minute, stage) for minute, action, stage in out.actions if action == "advance"]
    assert [stage for _, stage in advances] == [0, 1, 2][: len(advances)] and len(advances) >= 2
    with ExperimentService(state) as service:
        rows = [e for e in service.audit(experiment_id="77") if e.actor == "rollout-gate"]
    assert [r.action for r in rows] == ["advance"] * len(advances)
    # The coverage follows the decisions: each advance raises the next minutes' enrolment.
    cov = summary.coverage["77"]
    for (minute, stage), pct in zip(advances, [40.0, 100.0], strict=False):
        assert cov[minute - 1] == STAGES[stage]["percent"] and cov[minute] == pct
    # ... and so does the telemetry: more distinct units are exposed per minute at each stage.
    engine = sa.create_engine(telemetry)
    bounds = [0, *(m for m, _ in advances)]
    rates = []
    with engine.connect() as conn:
        for a, b in itertools.pairwise(bounds):
            n = conn.execute(
                sa.text(
                    "SELECT count(*) FROM exposures WHERE request_id >= :a AND request_id < :b"
                ),
                {"a": a * 10_000_000, "b": b * 10_000_000},
            ).scalar()
            rates.append(int(n or 0) / (b - a))
    engine.dispose()
    assert rates == sorted(rates) and rates[-1] > 2 * rates[0]


def test_units_enrolled_at_a_lower_stage_stay_in_their_arm(
    healthy: tuple[RampSummary, str, str],
) -> None:
    """The ramp-up invariant across controller-driven stages, read from the telemetry."""
    summary, telemetry, _ = healthy
    first_advance = next(m for m, a, _ in summary.outcomes["77"].actions if a == "advance")
    engine = sa.create_engine(telemetry)
    with engine.connect() as conn:
        arms_per_unit = conn.execute(
            sa.text(
                "SELECT max(c) FROM (SELECT count(DISTINCT arm) c FROM exposures GROUP BY unit_id)"
            )
        ).scalar()
        # Requests after the advance from units exposed before it, without an exposure.
        lost = conn.execute(
            sa.text(
                """
                SELECT count(*) FROM requests r
                WHERE r.request_id >= :cut
                  AND r.unit_id IN (SELECT unit_id FROM exposures WHERE request_id < :cut)
                  AND r.request_id NOT IN (SELECT request_id FROM exposures)
                """
            ),
            {"cut": first_advance * 10_000_000},
        ).scalar()
        later = conn.execute(
            sa.text(
                "SELECT count(*) FROM requests WHERE request_id >= :cut AND unit_id IN "
                "(SELECT unit_id FROM exposures WHERE request_id < :cut)"
            ),
            {"cut": first_advance * 10_000_000},
        ).scalar()
    engine.dispose()
    assert arms_per_unit == 1
    assert int(later or 0) > 100 and lost == 0


def test_a_faulty_candidate_is_killed_at_its_first_stage_and_the_kill_reaches_the_traffic(
    tmp_path: Path,
) -> None:
    fault = {"kind": "model_fallback", "experiment": "77", "start_minute": 2, "severity": 0.5}
    raw = _scenario(faults=[fault], minutes=30, guardrails=[*GUARDRAILS, FALLBACK])
    summary, telemetry, state = _run(tmp_path, raw)
    out = summary.outcomes["77"]
    assert out.rolled_back and out.final_state == "killed"
    assert out.max_coverage_pct == STAGES[0]["percent"]
    assert out.rollback_minute is not None and out.exposure_traffic_minutes > 0
    with ExperimentService(state) as service:
        kills = [e for e in service.audit(experiment_id="77") if e.action == "kill"]
    assert [k.actor for k in kills] == ["rollout-gate"]
    # The owner's standing plan is not an unsafe action of the agent.
    assert unsafe_actions([], kills) == 0
    assert all(c == 0.0 for c in summary.coverage["77"][out.rollback_minute :])
    engine = sa.create_engine(telemetry)
    with engine.connect() as conn:
        after = conn.execute(
            sa.text("SELECT count(*) FROM exposures WHERE request_id >= :cut"),
            {"cut": out.rollback_minute * 10_000_000},
        ).scalar()
    engine.dispose()
    assert after == 0
    scored = score_rollout(
        {"experiment_id": "77", **vars(out)},
        RampExpect(experiment="77", rolled_back=True, before_pct=10),
    )
    assert scored.passed and scored.stage_reached == 0


def _problem(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_scenario(raw)
    err = info.value
    return err.problems[0] if isinstance(err, ConfigProblems) else err


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda e: e.update(traffic_pct=10), "world.experiments[0].traffic_pct"),
        (lambda e: e.pop("rollout"), "world.experiments[0].traffic_pct"),
        (
            lambda e: e["rollout"]["stages"].__setitem__(1, {"percent": 5}),
            "world.experiments[0].rollout.stages[1].percent",
        ),
        (lambda e: e["rollout"].update(on_harm="explode"), "world.experiments[0].rollout.on_harm"),
        (
            lambda e: e["rollout"]["guardrails"].__setitem__(0, {"metric": "happiness"}),
            "world.experiments[0].rollout.guardrails[0].metric",
        ),
        (
            lambda e: e["rollout"].update(tick_minutes=0),
            "world.experiments[0].rollout.tick_minutes",
        ),
    ],
)
def test_bad_ramps_are_rejected_at_load_naming_the_field(edit: Any, field: str) -> None:
    raw = copy.deepcopy(_scenario())
    edit(raw["world"]["experiments"][0])
    assert _problem(raw).field == field


def test_expect_rollout_must_name_a_ramped_experiment() -> None:
    raw = copy.deepcopy(_scenario())
    raw["expect"]["rollout"] = {"experiment": "nope", "rolled_back": True}
    assert _problem(raw).field == "expect.rollout.experiment"
