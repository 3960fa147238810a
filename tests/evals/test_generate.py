"""`vigil scenarios generate`: deterministic per seed, loadable, broad, and its strength formula."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from scipy import stats as sps
from typer.testing import CliRunner

from evals.generate import generate, generate_scenario, write_scenarios
from evals.generate.faults import FaultDraw, fault_sample
from evals.generate.measure import scenario_strength
from evals.generate.strength import (
    Z_DETECT,
    Attributed,
    Sample,
    bucket,
    signal_strength,
    statistical_strength,
    z_checks,
)
from evals.generate.world import Exp, Timeline, WorldDraw
from evals.sim import load_scenario, parse_scenario
from evals.sim.scenario import FAULT_KINDS

BATCH = 160


@pytest.fixture(scope="module")
def batch() -> list[dict[str, Any]]:
    return generate(7000, BATCH)


def test_a_seed_always_gives_the_same_scenario() -> None:
    assert generate_scenario(4242) == generate_scenario(4242)
    assert generate_scenario(4242) != generate_scenario(4243)
    # Scenario k of --seed S is seed S+k's, whatever the count.
    assert generate(4240, 4)[2] == generate_scenario(4242)


def test_written_scenarios_load_through_the_public_loader(tmp_path: Path) -> None:
    paths = write_scenarios(9000, 12, tmp_path)
    assert len(paths) == 12 and len({p.name for p in paths}) == 12
    for path in paths:
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        assert scenario.name.startswith(f"g{scenario.seed}-")
        truth = scenario.expect.root_cause
        if truth == "none":
            assert scenario.faults == [] and scenario.expect.mitigation == "none"
        else:
            assert scenario.faults[0].kind == truth
            assert scenario.expect.signal_strength is not None
            assert scenario.expect.onset_minute == scenario.faults[0].start_minute
            # The stated strength is the formula's on the world as written.
            stated = scenario.expect.signal_strength
            computed = scenario_strength(
                scenario.model_copy(
                    update={"expect": scenario.expect.model_copy(update={"signal_strength": None})}
                )
            )
            assert computed == pytest.approx(stated, rel=1e-3, abs=1e-3)


def test_the_cli_writes_the_seeds_it_names(tmp_path: Path) -> None:
    from agent.cli import _register_all, app

    _register_all()
    assert isinstance(app, typer.Typer)
    out = tmp_path / "gen"
    result = CliRunner().invoke(
        app, ["scenarios", "generate", "--seed", "31", "--count", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("*.yaml"))
    assert [n.split("-")[0] for n in names] == ["g31", "g32", "g33"]
    assert load_scenario(out / names[0]) == parse_scenario(generate_scenario(31))


def _arms(batch: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.get("control", "control"), e["arms"]) for s in batch for e in s["world"]["experiments"]
    ]


def test_a_moderate_batch_covers_the_distribution(batch: list[dict[str, Any]]) -> None:
    truths = Counter(s["expect"]["root_cause"] for s in batch)
    assert set(FAULT_KINDS) | {"none"} <= set(truths)
    tags = Counter(t for s in batch for t in s["tags"])
    assert tags["two_faults"] >= 5 and tags["healthy"] >= 10
    assert tags["experiment"] and tags["model"] and tags["global"] and tags["where"]
    assert tags["day"] and tags["night"] and tags["flat"]
    assert {
        "strength:<0.5",
        "strength:0.5-1",
        "strength:1-2",
        "strength:2-4",
        "strength:>=4",
    } <= set(tags)
    arms = _arms(batch)
    assert any(len(a) >= 3 for _, a in arms)
    assert any(control != "control" for control, _ in arms)
    odd = {name for _, a in arms for name in a} - {"control", "test"}
    assert len(odd) >= 8
    assert any(len({arm.get("weight", 1.0) for arm in a.values()}) > 1 for _, a in arms)
    exps = [e for s in batch for e in s["world"]["experiments"]]
    assert any(e.get("start_minute", 0) > 0 for e in exps)
    assert any(e.get("end_minute") is not None for e in exps)
    for s in batch:
        world = s["world"]
        assert 1000 <= world["requests_per_minute"] <= 20000
        assert 5 <= len(world["experiments"]) <= 40
        assert 2 <= len({e["layer"] for e in world["experiments"]}) <= 8
        if s["faults"]:
            lag = s["alert"]["minute"] - s["expect"]["onset_minute"]
            assert 5 <= lag <= 60
    collapse_modes = {f.get("mode") for s in batch for f in s["faults"]}
    assert len(collapse_modes) >= 3
    # World minutes cover baseline, onset, lag and follow-ups, no more.
    assert max(s["world"]["minutes"] for s in batch) <= 150 + 60 + 90
    first = min(s["world"]["requests_per_minute"] * s["alert"]["minute"] for s in batch)
    assert first > 0


def test_stated_strengths_span_the_floor(batch: list[dict[str, Any]]) -> None:
    strengths = [s["expect"]["signal_strength"] for s in batch if s["faults"]]
    assert min(strengths) < 0.5 and max(strengths) > 4
    for s in batch:
        if s["faults"]:
            assert f"strength:{bucket(s['expect']['signal_strength'])}" in s["tags"]


def test_statistical_strength_of_a_miscalibration_by_hand() -> None:
    # 45 % over-calibration, 20 clicks since the onset, reference known exactly: on the
    # calibration check's scale (log Σpred/Σclicks, se 1/sqrt(clicks))
    # ln 1.45 / (2.80 / sqrt(20)) = 0.3716 / 0.6261 = 0.5935 (the textbook test at alpha 0.05).
    sample = Sample(requests=1000, reference_requests=math.inf, ctr=0.02)
    assert statistical_strength("miscalibration", 1.45, sample) == pytest.approx(0.5935, abs=1e-4)
    assert pytest.approx(2.80) == Z_DETECT


def test_a_miscalibration_is_as_strong_as_its_inverse() -> None:
    # The check compares log ratios: predictions x2.5 are as far from calibrated as x0.4 (a
    # ratio-scale distance |s - 1| would call 2.5x more than twice as strong as 0.4x).
    sample = Sample(requests=20_000, reference_requests=20_000, ctr=0.02)
    over = signal_strength("miscalibration", 2.5, sample)
    assert over == pytest.approx(signal_strength("miscalibration", 0.4, sample), rel=1e-9)
    assert over == pytest.approx(math.log(2.5) / (z_checks(1) * math.sqrt(2 / 400)), rel=1e-6)


def test_strength_at_the_checks_own_alpha_by_hand() -> None:
    # The checks fail at 1e-3, Bonferroni over 6 segments, Holm over the family (1 here):
    # z = z(1 - 1e-3 / 6 / 2) + z(0.8) = 3.7649 + 0.8416 = 4.6064.
    assert z_checks(1) == pytest.approx(4.6064, abs=1e-3)
    assert z_checks(3) > z_checks(1) > Z_DETECT
    sample = Sample(requests=1000, reference_requests=math.inf, ctr=0.02)
    want = math.log(1.45) / (z_checks(1) / math.sqrt(20))
    assert signal_strength("miscalibration", 1.45, sample) == pytest.approx(want, rel=1e-6)


def test_a_miscalibrated_arm_behind_a_global_alert_is_bounded_by_attribution_by_hand() -> None:
    # x2 on an arm: 400 clicks in it and in control since the onset, so the calibration check
    # alone would see it easily. Behind a global alert attribution must name it first: 100 and
    # 100 clicks in its 30-minute window, 400 and 400 in the baseline, the fault in the whole
    # window and none of the baseline, 60 arms x 6 metrics at the playbook's alpha 0.01.
    named = Sample(requests=20_000, reference_requests=20_000, ctr=0.02)
    seen = Attributed(clicks=(100.0, 100.0, 400.0, 400.0), affected=(1.0, 0.0), family=360)
    hidden = Sample(requests=20_000, reference_requests=20_000, ctr=0.02, attributed=seen)
    z = float(sps.norm.isf(0.01 / 360 / 2)) + float(sps.norm.ppf(0.8))
    want = math.log(2.0) / (z * math.sqrt(2 / 100 + 2 / 400))
    assert signal_strength("miscalibration", 2.0, hidden) == pytest.approx(want, rel=1e-6)
    assert want < 1 < signal_strength("miscalibration", 2.0, named)
    # A baseline the fault already reached shrinks the difference in differences.
    late = Attributed(clicks=(100.0, 100.0, 400.0, 400.0), affected=(1.0, 0.25), family=360)
    later = Sample(requests=20_000, reference_requests=20_000, ctr=0.02, attributed=late)
    assert signal_strength("miscalibration", 2.0, later) < want


def test_strength_of_a_fallback_by_hand() -> None:
    # p0 0.001 -> p1 0.001 + 0.1 x 0.999 = 0.1009; mean 0.05095; n = n_ref = 500.
    sample = Sample(requests=500, reference_requests=500, ctr=0.02)
    sigma = math.sqrt(0.05095 * (1 - 0.05095))
    want = 0.0999 / (2.8 * sigma * math.sqrt(2 / 500))
    assert statistical_strength("model_fallback", 0.1, sample) == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(2.565, abs=1e-3)
    assert signal_strength("model_fallback", 0.1, sample) == pytest.approx(
        want * 2.8 / z_checks(1), rel=1e-6
    )


def test_a_fault_in_a_slice_pays_for_the_slice_scan_or_for_its_dilution_by_hand() -> None:
    # 45 % over-calibration on a slice of 30 % of the traffic, 20 clicks in it since the onset.
    whole = Sample(requests=1000, reference_requests=math.inf, ctr=0.02)
    sliced = Sample(
        requests=1000, reference_requests=math.inf, ctr=0.02, slices=12, where_share=0.3
    )
    effect = math.log(1.45)
    scan = effect / (z_checks(12) / math.sqrt(20))  # one test per dimension value, Holm over 12
    diluted = effect * math.sqrt(0.3) / (z_checks(1) / math.sqrt(20))
    assert scan > diluted  # a small slice is better found by the scan
    assert signal_strength("miscalibration", 1.45, sliced) == pytest.approx(scan, rel=1e-6)
    assert signal_strength("miscalibration", 1.45, sliced) < signal_strength(
        "miscalibration", 1.45, whole
    )
    # A slice of 95 % of the traffic: testing the whole scope beats paying for 12 tests.
    most = Sample(requests=1000, reference_requests=math.inf, ctr=0.02, slices=12, where_share=0.95)
    want = effect * math.sqrt(0.95) / (z_checks(1) / math.sqrt(20))
    assert signal_strength("miscalibration", 1.45, most) == pytest.approx(want, rel=1e-6)


def test_a_fault_below_the_checks_materiality_is_below_the_floor_however_large_the_sample() -> None:
    huge = Sample(requests=1e9, reference_requests=1e9, ctr=0.02)
    # Fallback at 0.1 %: +0.05 pp is half a doubling, material only from +0.1 pp.
    assert statistical_strength("model_fallback", 0.0005, huge) > 10
    assert signal_strength("model_fallback", 0.0005, huge) == pytest.approx(0.0005 * 0.999 / 0.001)
    assert signal_strength("model_fallback", 0.002, huge) > 1
    # Calibration: a 5 % rescaling is below the checks' 1.1 ratio; 20 % is above it.
    assert signal_strength("miscalibration", 1.05, huge) == pytest.approx(
        math.log(1.05) / math.log(1.1), rel=1e-6
    )
    assert signal_strength("miscalibration", 1 / 1.05, huge) == pytest.approx(
        math.log(1.05) / math.log(1.1), rel=1e-6
    )
    assert signal_strength("miscalibration", 1.2, huge) > 1
    # A constant collapse is seen as a point mass of 3 % of the predictions, not as invalid.
    collapse = Sample(requests=1e9, reference_requests=1e9, ctr=0.02, mode="constant")
    assert signal_strength("prediction_collapse", 0.015, collapse) == pytest.approx(0.5)
    assert signal_strength("prediction_collapse", 0.015, huge) > 10


def test_a_stale_model_is_as_strong_as_its_snapshot_is_overdue() -> None:
    tiny = Sample(requests=10, reference_requests=10, ctr=0.02, quality=0.75, hours=0.1)
    assert signal_strength("stale_model", 0.05, tiny) < 0.1
    overdue = Sample(
        requests=10, reference_requests=10, ctr=0.02, quality=0.75, hours=0.1, overdue=1.3
    )
    assert signal_strength("stale_model", 0.05, overdue) == pytest.approx(1.3)


def test_the_sample_counts_the_arm_s_requests_from_onset_to_alert() -> None:
    exp = Exp(
        id="1",
        name="x",
        layer="ranking",
        traffic_pct=10.0,
        control="base",
        arms={"base": {"weight": 3.0}, "B": {"weight": 1.0}},
    )
    world = WorldDraw(
        start=datetime(2026, 11, 20, 6),
        diurnal=False,
        requests_per_minute=1000,
        base_ctr=0.02,
        timeline=Timeline(onset=60, lag=9, minutes=200),
        models=[{"id": "m", "quality": 0.75}],
        production_model="m",
        model_layer="ranking",
        experiments=[exp],
    )
    fault = FaultDraw(
        kind="model_fallback",
        scope="experiment",
        start_minute=60,
        severity=0.1,
        strength=0.0,
        experiment=exp,
        arm="B",
        where={"platform": "android"},  # 45 % of the default mix
    )
    sample = fault_sample(world, fault, alert=69)
    # 10 minutes x 1000 x 10 % x 1/4 x 0.45, against the control's 3/4.
    assert sample.requests == pytest.approx(10 * 1000 * 0.1 * 0.25 * 0.45)
    assert sample.reference_requests == pytest.approx(10 * 1000 * 0.1 * 0.75 * 0.45)
    assert sample.ctr == pytest.approx(0.02)


def test_buckets() -> None:
    assert [bucket(x) for x in (0.1, 0.5, 0.99, 1.0, 3.9, 4.0, 50.0)] == [
        "<0.5",
        "0.5-1",
        "0.5-1",
        "1-2",
        "2-4",
        ">=4",
        ">=4",
    ]
    assert bucket(None) == "healthy"


def test_public_scenarios_get_a_computed_strength() -> None:
    obvious = scenario_strength(load_scenario(Path("evals/scenarios/miscal-over-obvious.yaml")))
    subtle = scenario_strength(load_scenario(Path("evals/scenarios/miscal-under-subtle.yaml")))
    assert obvious is not None and subtle is not None
    assert obvious > subtle > 0
    assert scenario_strength(load_scenario(Path("evals/scenarios/healthy-noise.yaml"))) is None


def test_strength_grows_with_the_traffic_a_follow_up_adds() -> None:
    """Measured to a later minute (the last follow-up's), a lasting fault has touched more
    traffic, so it is at least as detectable; a stated strength is not used for a later minute."""
    scenario = load_scenario(Path("evals/scenarios/miscal-over-obvious.yaml"))
    at_alert = scenario_strength(scenario)
    later = scenario_strength(scenario, minute=scenario.alert.minute + 40)
    assert at_alert is not None and later is not None
    assert later > at_alert


def test_two_fault_worlds_alert_on_the_first_fault(batch: list[dict[str, Any]]) -> None:
    from evals.generate import SIGNATURE

    two = [s for s in batch if "two_faults" in s["tags"]]
    assert two
    for s in two:
        first, second = s["faults"]
        assert first["kind"] != second["kind"]
        assert s["alert"]["metric"] == SIGNATURE[first["kind"]]
        assert s["alert"].get("experiment") == first.get("experiment")
        if "experiment" in first and "experiment" in second:
            assert first["experiment"] != second["experiment"]
