"""Change-point detection and regression onset on series with a known answer; TCPDBench scorers."""

from __future__ import annotations

import numpy as np
import pytest

from evals.bench._tcpd import (
    clean_cps,
    cover_single,
    covering,
    f_measure,
    partition_from_cps,
    true_positives,
)
from tools.changepoint import detect_change_points, regression_onset
from tools.errors import ConfigError

DAY = 1440


def _near(found: list[int], expected: list[int], tol: int = 5) -> bool:
    return len(found) == len(expected) and all(
        abs(f - e) <= tol for f, e in zip(sorted(found), expected, strict=True)
    )


# --- TCPDBench scorers: the doctests of analysis/scripts/metrics.py ---------------------------


def test_true_positives_doctests() -> None:
    assert true_positives({1, 10, 20, 23}, {3, 8, 20}) == {1, 10, 20}
    assert true_positives({1, 10, 20, 23}, {1, 3, 8, 20}) == {1, 10, 20}
    assert true_positives({1, 10, 20, 23}, {1, 3, 5, 8, 20}) == {1, 10, 20}
    assert true_positives(set(), {1, 2, 3}) == set()
    assert true_positives({1, 2, 3}, set()) == set()


def test_f_measure_doctests() -> None:
    ann = {"1": [10, 20], "2": [11, 20], "3": [10], "4": [0, 5]}
    assert f_measure(ann, [10, 20])[0] == 1.0
    assert f_measure({"1": [], "2": [10], "3": [50]}, [10])[0] == 0.9090909090909091
    assert f_measure({"1": [], "2": [10], "3": [50]}, [])[0] == 0.8


def test_f_measure_hand_computed() -> None:
    # X = {0, 10, 30}; union {0, 12, 40}: TP {0, 12} -> P = 2/3
    # annotator a {0, 12}: 2/2; annotator b {0, 40}: 1/2 -> R = 3/4; F = 2PR / (P + R)
    f, p, r = f_measure({"a": [12], "b": [40]}, [10, 30])
    assert p == pytest.approx(2 / 3)
    assert r == pytest.approx(3 / 4)
    assert f == pytest.approx(2 * (2 / 3) * (3 / 4) / (2 / 3 + 3 / 4))


def test_partition_and_cover_doctests() -> None:
    assert partition_from_cps([], 5) == [{0, 1, 2, 3, 4}]
    assert partition_from_cps([3, 5], 8) == [{0, 1, 2}, {3, 4}, {5, 6, 7}]
    assert partition_from_cps([1, 2, 7], 8) == [{0}, {1}, {2, 3, 4, 5, 6}, {7}]
    assert partition_from_cps([0, 4], 6) == [{0, 1, 2, 3}, {4, 5}]
    assert cover_single([{1, 2, 3}, {4, 5}, {6}], [{1, 2, 3}, {4, 5, 6}]) == 0.8333333333333334
    assert cover_single([{1, 2, 3, 4}, {5, 6}], [{1, 2, 3, 4, 5, 6}]) == 0.6666666666666666
    assert cover_single([{1, 2}, {3, 4}, {5, 6}], [{1, 2, 3}, {4, 5, 6}]) == 0.6666666666666666
    assert cover_single([{1, 2, 3, 4, 5, 6}], [{1}, {2}, {3}, {4, 5, 6}]) == 0.3333333333333333
    assert covering({"1": [10, 20], "2": [10], "3": [0, 5]}, [10, 20], 45) == 0.7962962962962963
    assert covering({"1": [], "2": [10], "3": [40]}, [10], 45) == 0.7954144620811286
    assert covering({"1": [], "2": [10], "3": [40]}, [], 45) == 0.8189300411522634


def test_clean_cps_drops_endpoints_and_duplicates() -> None:
    assert clean_cps([0, 1, 5, 5, 8, 9, 10], 10) == [1, 5, 8]


# --- detect_change_points --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_shift_found(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, 600)
    x[250:] += 2.0
    assert _near(detect_change_points(x), [250])


def test_several_shifts_slope_and_variance() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(900, dtype=float)
    x = rng.normal(0, 1, 900)
    x[300:] += 0.03 * (t[300:] - 300) * 3  # slope change at 300
    x[600:] = x[599] + rng.normal(0, 6, 300)  # level and variance change at 600
    assert _near(detect_change_points(x), [300, 600], tol=10)


def test_multivariate_shift_in_one_dimension() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (400, 3))
    x[180:, 1] += 3.0
    assert _near(detect_change_points(x), [180])


@pytest.mark.parametrize("seed", range(5))
def test_flat_noise_has_no_change(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    assert detect_change_points(rng.normal(5, 2, 1000)) == []


def test_single_outliers_are_not_changes() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 500)
    x[[50, 200, 201, 420]] += 25.0
    assert detect_change_points(x) == []


def test_diurnal_week_without_shift_with_period() -> None:
    rng = np.random.default_rng(6)
    t = np.arange(7 * DAY)
    curve = 100 + 30 * np.sin(2 * np.pi * t / DAY) + 10 * np.sin(4 * np.pi * t / DAY)
    x = curve + rng.normal(0, 3, t.size)
    assert detect_change_points(x, period=DAY) == []
    x[8000:] += 8.0
    assert _near(detect_change_points(x, period=DAY), [8000])


def test_long_series_uses_blocks_and_stays_exact() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 20_000)
    x[12_345:] -= 1.5
    assert _near(detect_change_points(x), [12_345])


def test_empty_constant_nan_inputs_are_clean() -> None:
    assert detect_change_points([]) == []
    assert detect_change_points(np.full(100, np.nan)) == []
    assert detect_change_points(np.ones(100)) == []
    assert detect_change_points(np.zeros((50, 0))) == []
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, 300)
    x[150:] += 4.0
    x[[10, 11, 12, 151, 200]] = np.nan
    assert _near(detect_change_points(x), [150])


def test_bad_inputs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="x"):
        detect_change_points(np.zeros((3, 3, 3)))
    with pytest.raises(ConfigError, match="x"):
        detect_change_points(["a", "b"])
    with pytest.raises(ConfigError, match="resolution"):
        detect_change_points(np.zeros(10), resolution=0)
    with pytest.raises(ConfigError, match="min_size"):
        detect_change_points(np.zeros(10), min_size=1)
    with pytest.raises(ConfigError, match="period"):
        detect_change_points(np.zeros(10), period=1)


# --- regression_onset ------------------------------------------------------------------------


def _arms(seed: int, shift: float, at: int, n: int = 2 * DAY) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    curve = 0.02 + 0.01 * np.sin(2 * np.pi * t / DAY)  # a diurnal fallback rate
    control = curve + rng.normal(0, 0.002, n)
    test = curve + rng.normal(0, 0.002, n)
    test[at:] += shift
    return test, control


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_onset_of_a_shift_against_control(seed: int) -> None:
    test, control = _arms(seed, shift=0.006, at=2000)
    onset, stats = regression_onset(test, control, direction="increase")
    assert onset is not None and abs(onset - 2000) <= 5
    assert stats.end is None and stats.shift == pytest.approx(0.006, abs=0.001)
    assert stats.z > 5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_onset_on_a_diurnal_series_without_shift(seed: int) -> None:
    test, control = _arms(seed, shift=0.0, at=0)
    onset, stats = regression_onset(test, control)
    assert onset is None and stats.reason


def test_direction_is_respected_and_recovery_reported() -> None:
    test, control = _arms(4, shift=-0.006, at=1500)
    assert regression_onset(test, control, direction="increase")[0] is None
    onset, _ = regression_onset(test, control, direction="decrease")
    assert onset is not None and abs(onset - 1500) <= 5
    test[2200:] = control[2200:] + np.random.default_rng(5).normal(0, 0.0028, test.size - 2200)
    onset, stats = regression_onset(test, control, direction="either")
    assert onset is not None and abs(onset - 1500) <= 5
    assert stats.end is not None and abs(stats.end - 2200) <= 5


def test_autocorrelated_noise_does_not_alarm() -> None:
    rng = np.random.default_rng(9)
    e = np.zeros(3000)
    for i in range(1, e.size):
        e[i] = 0.8 * e[i - 1] + rng.normal()
    onset, stats = regression_onset(e)
    assert onset is None
    assert stats.autocorrelation == pytest.approx(0.8, abs=0.1)


def test_onset_edge_cases() -> None:
    assert regression_onset([])[0] is None
    onset, stats = regression_onset(np.full(50, np.nan))
    assert onset is None and "too few" in stats.reason
    onset, stats = regression_onset(np.ones(50))
    assert onset is None and stats.reason == "the residual is constant"
    assert regression_onset(np.ones(50), np.ones(50) * 2)[1].as_dict()["onset"] is None
    with pytest.raises(ConfigError, match="baseline"):
        regression_onset(np.ones(50), np.ones(40))
    with pytest.raises(ConfigError, match="direction"):
        regression_onset(np.ones(50), direction="up")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="series"):
        regression_onset(np.ones((5, 5)))
