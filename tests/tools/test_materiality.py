"""Materiality relative to the reference rate, lost clicks in every arm, noise vs rescaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.tools.test_known_answers import _arm, _stepped, frame_of
from tools.checks import calibration_check, fallback_check, infra_check, prediction_check
from tools.checks._common import material_increase, reference_rate


def test_material_increase_is_a_doubling_of_a_rare_rate_between_its_floors() -> None:
    # 0.1 % base: a doubling (+0.1 pp) is material long before the absolute 1 pp floor.
    assert material_increase(0.001, 0.01, 2.0, 0.0002) == pytest.approx(0.001)
    # A healthy rate of 0 (invalid predictions): the least floor, never zero.
    assert material_increase(0.0, 0.005, 2.0, 0.0002) == pytest.approx(0.0002)
    # A common rate: the absolute floor caps it.
    assert material_increase(0.2, 0.01, 2.0, 0.0002) == pytest.approx(0.01)


def _fallback(n: float, rate: float) -> dict[str, float]:
    return _arm(n, n * 0.02, 0.02, n_fallback=n * rate)


@pytest.mark.parametrize(("after", "verdict"), [(0.003, "fail"), (0.0017, "warn")])
def test_a_rare_fallback_rate_fails_when_it_doubles_not_when_it_rises_a_little(
    after: float, verdict: str
) -> None:
    # 20k requests a minute on a model, 0.1 % fallbacks before; after: x3 or x1.7.
    before = {"all": _fallback(20_000, 0.001)}
    data = _stepped(before, {"all": _fallback(20_000, after)})
    frame = frame_of(data, control=None)
    assert reference_rate(frame, "n_fallback") == pytest.approx(0.001)
    result = fallback_check(frame)
    # Both rises are far too significant to be noise; only the tripled rate is material.
    assert result.verdict == verdict
    assert result.params["material_fail"] == pytest.approx(0.001)


def test_a_steady_rare_rate_is_not_flagged() -> None:
    steady = {"all": _fallback(20_000, 0.001)}
    result = fallback_check(frame_of(_stepped(steady, steady), control=None))
    assert result.verdict == "ok"


def test_invalid_predictions_from_a_model_that_emitted_none_fail() -> None:
    clean = _arm(20_000, 400, 0.02)
    dirty = _arm(20_000, 400, 0.02, n_invalid=20_000 * 0.0005)  # 0.05 % NaN predictions
    result = prediction_check(frame_of(_stepped({"all": clean}, {"all": dirty}), control=None))
    assert result.verdict == "fail"
    # The absolute 0.5 pp floor alone would have called it immaterial.
    assert result.params["invalid_fail"] > 0.0005 > result.params["material_fail"]


def test_an_error_rate_eight_times_its_baseline_fails_below_the_absolute_floor() -> None:
    calm = _arm(20_000, 400, 0.02, n_error=20_000 * 0.0005)
    outage = _arm(20_000, 400, 0.02, n_error=20_000 * 0.004)  # 0.05 % -> 0.4 %
    result = infra_check(frame_of(_stepped({"all": calm}, {"all": outage}), control=None))
    assert result.verdict == "fail"
    assert infra_check(frame_of(_stepped({"all": calm}, {"all": calm}), control=None)).verdict in (
        "ok",
        "inconclusive",
    )


def test_clicks_lost_in_every_arm_fail_as_a_measurement_fault_blaming_no_arm() -> None:
    steady = _arm(5000, 100, 0.02)
    lost = _arm(5000, 70, 0.02)  # 30 % of the clicks are not logged, in both arms alike
    data = _stepped({"control": steady, "test": steady}, {"control": lost, "test": lost})
    result = calibration_check(frame_of(data), training={"control": 1.0, "test": 1.0})
    assert result.verdict == "fail"
    assert result.arm is None
    assert result.params["moved"] == "clicks" and result.params["scope"] == "all_arms"
    # The predictions moving in every arm (a production-model fault) stays a warning here.
    over = _arm(5000, 100, 0.028)
    data = _stepped({"control": steady, "test": steady}, {"control": over, "test": over})
    shifted = calibration_check(frame_of(data), training={"control": 1.0, "test": 1.0})
    assert shifted.verdict == "warn" and shifted.params["moved"] == "predictions"


def test_an_arm_that_moved_far_more_than_control_is_not_a_shared_cause() -> None:
    # Both arms' predictions rose against their baselines, control x2.3 (a noisy short baseline
    # can show that), the test arm x4.6: the gap between them (x2, p about 0.001 over 60 and 33
    # clicks) says the test arm has a fault of its own; "every arm moved together" holds only
    # when no arm stands apart from control.
    before = {"control": _arm(50, 1.0, 0.02), "test": _arm(27.5, 0.55, 0.02)}
    after = {"control": _arm(50, 1.0, 0.046), "test": _arm(27.5, 0.55, 0.092)}
    result = calibration_check(
        frame_of(_stepped(before, after)), training={"control": 1.0, "test": 1.0}
    )
    assert result.arm == "test" and result.params["scope"] == "arm"
    assert result.verdict in ("fail", "warn")
    # The same rise in both arms stays a shared cause.
    alike = {"control": _arm(50, 1.0, 0.092), "test": _arm(27.5, 0.55, 0.092)}
    shared = calibration_check(
        frame_of(_stepped(before, alike)), training={"control": 1.0, "test": 1.0}
    )
    assert shared.params["scope"] == "all_arms" and shared.arm is None


def _noisy(data: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Poisson clicks around the cube's expected clicks, minute by minute."""
    clicks = rng.poisson(data["sum_label"].to_numpy()).astype(float)
    return data.assign(sum_label=clicks, sum_label_v=clicks)


def test_a_shared_rise_is_rarely_pinned_on_one_arm_and_a_lone_one_usually_is() -> None:
    # 300 worlds each: predictions of both arms x2 (a shared cause) and of the test arm alone x2.
    rng = np.random.default_rng(7)
    before = {"control": _arm(50, 1.0, 0.02), "test": _arm(50, 1.0, 0.02)}
    both = {"control": _arm(50, 1.0, 0.04), "test": _arm(50, 1.0, 0.04)}
    lone = {"control": _arm(50, 1.0, 0.02), "test": _arm(50, 1.0, 0.04)}
    training = {"control": 1.0, "test": 1.0}
    pinned = sum(
        calibration_check(frame_of(_noisy(_stepped(before, both), rng)), training=training).arm
        is not None
        for _ in range(300)
    )
    found = sum(
        calibration_check(frame_of(_noisy(_stepped(before, lone), rng)), training=training).arm
        == "test"
        for _ in range(300)
    )
    assert pinned / 300 <= 0.05
    assert found / 300 >= 0.9
