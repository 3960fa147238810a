"""The preflight in the simulated world: candidates broken in a way a replay can see (miscalibrated,
NaN-producing) are stopped before start; a healthy candidate is not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from evals.launch_history import simulate_launches
from evals.preflight_scoring import PreflightResult, preflight_figures
from evals.replay import PREFLIGHT_MINUTES as MINUTES
from evals.replay import PREFLIGHT_SCENARIO, PreflightWorld, WorldRunner, preflight_world
from evals.sim import load_scenario, parse_scenario
from lifecycle.preflight import Preflight
from lifecycle.risk import LAUNCH_FEATURES, LOG_FEATURES, RiskModel
from tools.errors import ConfigError

SCENARIO = PREFLIGHT_SCENARIO


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreflightWorld]:
    scenario = parse_scenario(SCENARIO)
    w = preflight_world(scenario, Path(tmp_path_factory.mktemp("preflight")))
    yield w
    w.close()


@pytest.fixture(scope="module")
def preflight(world: PreflightWorld) -> Preflight:
    history = simulate_launches(2000, seed=4)
    risk = RiskModel.fit(
        history[list(LAUNCH_FEATURES)],
        history["incident"],
        kind="logistic",
        log_columns=LOG_FEATURES,
    )
    now = world.scenario.start.replace(tzinfo=None) + timedelta(minutes=MINUTES)
    return Preflight(
        world.service,
        runner=world.runner,
        requests=world.reader,
        shadow=world.shadow,
        risk=risk,
        clock=lambda: now.replace(tzinfo=UTC),
    )


def test_healthy_candidate_passes(preflight: Preflight) -> None:
    report = preflight.run("900")
    replay = next(s for s in report.steps if s.name == "replay")
    assert replay.verdict in ("ok", "warn"), replay.summary
    assert not report.failed
    assert report.decision != "refused"
    assert report.risk is not None
    assert report.candidates == {"test": "ctr_v42"} and report.reference == "ctr_v41"


def test_miscalibrated_candidate_is_stopped(preflight: Preflight) -> None:
    report = preflight.run("901")
    assert report.decision == "refused" and report.zone == "red"
    calibration = next(c for s in report.steps for c in s.checks if c.check == "calibration")
    assert calibration.verdict == "fail"
    assert calibration.effect is not None and 1.25 < calibration.effect.estimate < 1.55


def test_nan_producing_candidate_is_stopped(preflight: Preflight) -> None:
    report = preflight.run("902")
    assert report.decision == "refused"
    prediction = next(c for s in report.steps for c in s.checks if c.check == "prediction")
    assert prediction.verdict == "fail" and "invalid" in prediction.summary


def test_replay_is_reproducible(world: PreflightWorld) -> None:
    frame = world.reader.sample_requests(
        world.scenario.start, world.scenario.start + timedelta(minutes=MINUTES), limit=500
    )
    runner = WorldRunner(world.scenario)
    a = runner.score("ctr_v44", None, frame).predictions
    b = runner.score("ctr_v44", None, frame).predictions
    assert ((a == b) | (a != a)).all()
    assert len(frame) == 500


def test_shadow_run_is_judged_against_the_served_model(preflight: Preflight) -> None:
    healthy = preflight.run("903")
    shadow = next(s for s in healthy.steps if s.name == "shadow")
    assert shadow.verdict in ("ok", "warn"), shadow.summary
    assert all(c.params["source"] == "shadow" for c in shadow.checks)
    assert [s.name for s in healthy.steps] == [
        "validation",
        "replay",
        "resources",
        "shadow",
        "risk",
    ]
    bad = preflight.run("904")
    shadow = next(s for s in bad.steps if s.name == "shadow")
    calibration = next(c for c in shadow.checks if c.check == "calibration")
    assert shadow.verdict == "fail" and calibration.verdict == "fail"
    assert bad.decision == "refused"


def test_no_shadow_run_no_shadow_step(preflight: Preflight) -> None:
    assert "shadow" not in [s.name for s in preflight.run("900").steps]


PREFLIGHT_SUITE = Path(__file__).resolve().parents[2] / "evals" / "scenarios" / "preflight"


def test_preflight_scenarios_load_and_name_a_bad_experiment() -> None:
    paths = sorted(PREFLIGHT_SUITE.glob("*.yaml"))
    assert len(paths) >= 2
    expects = [e for p in paths for e in load_scenario(p).expect.preflight]
    assert {e.decision for e in expects} == {"stop", "pass"}
    raw = dict(
        SCENARIO,
        expect={"root_cause": "none", "preflight": [{"experiment": "nope", "decision": "stop"}]},
    )
    with pytest.raises(ConfigError, match=r"expect\.preflight\[0\]\.experiment"):
        parse_scenario(raw)


class _Row:
    def __init__(self, *results: PreflightResult) -> None:
        self.preflight = list(results)


def _result(expected: str, decision: str) -> PreflightResult:
    correct = (decision == "refused") == (expected == "stop")
    return PreflightResult.model_validate(
        {
            "experiment": "1",
            "expected": expected,
            "decision": decision,
            "zone": "red" if decision == "refused" else "yellow",
            "failed_steps": [],
            "correct": correct,
            "seconds": 0.1,
        }
    )


def test_preflight_figures_known_answers() -> None:
    rows = [
        _Row(_result("stop", "refused"), _result("pass", "start")),
        _Row(_result("stop", "needs_approval")),
        _Row(),
    ]
    figures = preflight_figures(rows)
    assert figures is not None
    assert figures["checked"] == 3
    assert figures["broken_stopped"] == 0.5 and figures["healthy_passed"] == 1.0
    assert figures["accuracy"] == pytest.approx(2 / 3)
    assert figures["wrong"] == ["1: expected stop, got needs_approval"]
    assert preflight_figures([_Row()]) is None
