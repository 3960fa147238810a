"""Power on every verdict: known-answer MDEs, and no ✓ where the sample could not have seen a fault.

The minimal detectable effect of a two-sample z test at level α with power 1 − β is
``(z_{1-α/2} + z_{1-β}) · SE`` (two-sided); for two proportions ``SE = √(p(1−p)(1/n₁ + 1/n₀))``,
for a ratio of Poisson rates on the log scale ``SE = √(1/x₁ + 1/x₀)`` (x the event counts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tests.tools.test_known_answers import _arm, cube, frame_of
from tools.checks import calibration_check, fallback_check, ne_check, srm_check
from tools.checks.srm import srm_mde
from tools.stats import segment_grid

WINDOW = 60  # minutes in frame_of's window
Z_POWER = float(sps.norm.ppf(0.8))


def _fallback_arms(n: float, rate: float) -> dict[str, dict[str, float]]:
    sums = {"n": n, "n_fallback": n * rate}
    return {"control": dict(sums), "test": dict(sums)}


def test_fallback_mde_is_the_two_proportion_formula() -> None:
    n, rate = 100.0, 0.05
    result = fallback_check(frame_of(cube(_fallback_arms(n, rate))))
    alpha = result.params["mde_alpha"]
    # alpha_warn corrected by the scanned segments and the family (test vs control, two baselines).
    assert alpha == pytest.approx(0.01 / (len(segment_grid(WINDOW)) * 3))
    per_arm = n * WINDOW
    se = np.sqrt(rate * (1 - rate) * (2 / per_arm))
    textbook = (sps.norm.isf(alpha / 2) + Z_POWER) * se
    assert result.mde == pytest.approx(100 * textbook, rel=1e-3)  # in pp
    # 1.7 pp cannot rule out the 1 pp that fails the check: inconclusive, with what would settle.
    assert 1.0 < result.mde < 2.5
    assert result.verdict == "inconclusive"
    assert "could not rule out" in result.summary and "would settle it" in result.summary
    settle = result.params["minutes_to_settle"]
    assert settle == pytest.approx(WINDOW * ((result.mde / 1.0) ** 2 - 1), rel=0.01)


def test_fallback_with_ample_traffic_is_ok_and_says_what_it_could_see() -> None:
    result = fallback_check(frame_of(cube(_fallback_arms(3000.0, 0.05))))
    assert result.verdict == "ok"
    assert result.mde is not None and result.mde < 1.0
    assert f"{result.mde:.2g} pp or more would have shown" in result.summary


def test_an_ok_says_whether_it_could_have_seen_a_material_change() -> None:
    """Calibration's ``ok`` is about ±25 %; it also says whether ±10 % (what it fails on) would
    have shown, and how much more traffic that needs, for an alert on calibration itself."""

    def steady(clicks_per_minute: float) -> dict[str, object]:
        data = cube(
            {
                "control": _arm(20_000, clicks_per_minute, clicks_per_minute / 20_000),
                "test": _arm(20_000, clicks_per_minute, clicks_per_minute / 20_000),
            }
        )
        result = calibration_check(frame_of(data))
        assert result.verdict == "ok", result.summary
        return result.params

    some = steady(30.0)  # 1,800 clicks a side: ±25 % shows, ±10 % does not
    assert some["sees_material"] is False
    assert some["material_effect_size"] == pytest.approx(1.1)
    more = some["minutes_to_material"]
    assert isinstance(more, float) and more > 0
    assert "more" in str(some["material_settle_text"])
    plenty = steady(400.0)  # 24,000 clicks a side: ±10 % shows too
    assert plenty["sees_material"] is True and "minutes_to_material" not in plenty


def test_calibration_mde_is_the_poisson_ratio_formula() -> None:
    clicks_per_minute = 2.0
    data = cube(
        {
            "control": _arm(1000, clicks_per_minute, 0.002),
            "test": _arm(1000, clicks_per_minute, 0.002),
        }
    )
    result = calibration_check(frame_of(data))
    alpha = result.params["mde_alpha"]
    x = clicks_per_minute * WINDOW
    textbook = np.exp((sps.norm.isf(alpha / 2) + Z_POWER) * np.sqrt(1 / x + 1 / x))
    assert result.mde == pytest.approx(textbook, rel=1e-3)  # a ratio: ±(mde - 1)
    assert result.verdict == "inconclusive"  # 120 clicks a side cannot see ±25 %


def test_twenty_clicks_in_the_faulty_arm_is_inconclusive_not_ok() -> None:
    # The test arm over-predicts by 45 % but collected only 20 clicks in the window.
    data = cube(
        {
            "control": _arm(1000, 10 / 3, 0.02 / 6),
            "test": _arm(100, 1 / 3, 1.45 * 0.02 / 6),
        }
    )
    frame = frame_of(data)
    assert frame.sums("test", frame.window.start, frame.window.end)["sum_label_v"] == (
        pytest.approx(20)
    )
    result = calibration_check(frame)
    assert result.verdict == "inconclusive", result.summary
    assert "would settle it" in result.summary
    assert ne_check(frame).verdict == "inconclusive"


def test_a_window_without_rows_is_no_data() -> None:
    only_baseline = cube(_fallback_arms(1000.0, 0.01), minutes=WINDOW)
    result = fallback_check(frame_of(only_baseline))
    assert result.verdict == "no_data"
    assert "No telemetry" in result.summary


def test_srm_mde_is_the_chi_square_power() -> None:
    alpha, total = 0.01, 10_000
    got = srm_mde(total, [0.5, 0.5], alpha)
    # One degree of freedom: the chi-square test is the two-sided z test on one arm's share.
    normal = (sps.norm.isf(alpha / 2) + Z_POWER) * np.sqrt(0.25 / total)
    assert got == pytest.approx(normal, rel=0.01)
    # Exactly the power asked for, by the noncentral chi-square itself.
    lam = total * got**2 / 0.25
    assert sps.ncx2.sf(sps.chi2.isf(alpha, 1), 1, lam) == pytest.approx(0.8, abs=1e-6)
    # Unequal weights: the arm hardest to see decides.
    assert srm_mde(total, [0.1, 0.9], alpha) == pytest.approx(normal * np.sqrt(0.09 / 0.25))


def test_srm_power_decides_between_ok_and_inconclusive() -> None:
    few = pd.DataFrame(
        {"arm": ["control", "test"], "units": [500.0, 500.0], "exposures": [5e3] * 2}
    )
    result = srm_check(few, {"control": 1, "test": 1}, experiment_id="e")
    assert result.verdict == "inconclusive" and "could not rule out" in result.summary
    many = few.assign(units=[50_000.0, 50_000.0])
    result = srm_check(many, {"control": 1, "test": 1}, experiment_id="e")
    assert result.verdict == "ok" and result.mde is not None and result.mde < 2.0


def test_an_srm_ok_must_also_see_a_young_deficit() -> None:
    # 100,000 units over the window rule out 2 pp there; the last 20 minutes' 3,000 units do
    # not: a bug that began then is diluted in the window, so the split is not cleared.
    units = pd.DataFrame(
        {
            "arm": ["control", "test"],
            "units": [50_000.0, 50_000.0],
            "exposures": [5e5] * 2,
            "units_10": [800.0, 800.0],
            "units_20": [1_500.0, 1_500.0],
            "units_40": [3_000.0, 3_000.0],
        }
    )
    young = srm_check(units, {"control": 1, "test": 1}, experiment_id="e")
    assert young.verdict == "inconclusive" and "last 20 minutes" in young.summary
    assert young.mde is not None and young.mde > 2.0
    seen = units.assign(units_10=[8e3] * 2, units_20=[2e4] * 2, units_40=[4e4] * 2)
    result = srm_check(seen, {"control": 1, "test": 1}, experiment_id="e")
    assert result.verdict == "ok" and result.params["recent_mde"] < 2.0
