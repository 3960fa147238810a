"""Statistical primitives against known values and scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tools.histograms import calibration_buckets, point_mass, reliability, shift
from tools.stats import (
    binary_entropy,
    chi2_goodness_of_fit,
    compare_means,
    compare_proportions,
    compare_rates,
    epidemic_segment,
    holm,
    least_events,
    poisson_interval,
    segment_grid,
)
from tools.telemetry import HistogramSpec


def test_holm_matches_textbook_example() -> None:
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert holm([]).size == 0


def test_chi2_goodness_of_fit_matches_scipy() -> None:
    stat, p = chi2_goodness_of_fit([5200, 4800], [1, 1])
    want = sps.chisquare([5200, 4800], [5000, 5000])
    assert stat == pytest.approx(want.statistic) and stat == pytest.approx(16.0)
    assert p == pytest.approx(want.pvalue)
    assert chi2_goodness_of_fit([10], [1]) == (0.0, 1.0)


def test_poisson_interval_known_values() -> None:
    lo, hi = poisson_interval(0)
    assert lo == 0.0 and hi == pytest.approx(3.6889, abs=1e-4)
    lo, hi = poisson_interval(10)
    assert (lo, hi) == pytest.approx((4.7954, 18.3904), abs=1e-4)


def test_two_proportions_and_rates() -> None:
    c = compare_proportions(60, 1000, 40, 1000, "up")
    pooled = 0.05
    z = 0.02 / np.sqrt(pooled * (1 - pooled) * 2 / 1000)
    assert c.estimate == pytest.approx(0.02) and c.z == pytest.approx(z)
    # 100 events: the exact conditional test (60 of 100 at an even split), not the z tail.
    assert c.p_value == pytest.approx(sps.binom.sf(59, 100, 0.5))
    big = compare_proportions(6000, 100_000, 4000, 100_000, "up")
    assert big.p_value == pytest.approx(sps.norm.sf(big.z))
    r = compare_rates(130, 100.0, 100, 100.0, "both")
    assert r.estimate == pytest.approx(1.3)
    assert r.z == pytest.approx(np.log(1.3) / np.sqrt(1 / 130 + 1 / 100))
    # 230 events: the exact conditional test (130 of 230 at equal exposures).
    assert r.p_value == pytest.approx(2 * sps.binom.sf(129, 230, 0.5))
    assert compare_rates(13_000, 100.0, 10_000, 100.0, "up").p_value == pytest.approx(
        sps.norm.sf(np.log(1.3) / np.sqrt(1 / 13_000 + 1 / 10_000))
    )
    assert not compare_rates(0, 1.0, 0, 1.0, "up").valid


def test_a_side_with_no_events_is_a_total_loss_not_missing_data() -> None:
    # Every click of a slice lost: 0 logged where 40 were expected. The exact test calls it.
    lost = compare_rates(0, 40.0, 400, 400.0, "down")
    assert lost.valid and lost.estimate < 0.05
    assert lost.p_value == pytest.approx(sps.binom.cdf(0, 400, 40 / 440))
    assert lost.p_value < 1e-15
    # The minimum-sample rule counts, per side, the larger of the logged events and those its
    # exposure would hold at the pooled rate: the clicks a fault lost still count, and so do
    # the predictions it shrank; without exposure there is nothing to count.
    assert least_events(0, 40.0, 400, 400.0) == pytest.approx(40 * 400 / 440)
    assert least_events(23, 54.6, 271, 272.1) > 30 > 23
    shrunk = least_events(35, 8.0, 300, 300.0)  # predictions cut to a fifth, clicks as before
    assert shrunk == 35 and 335 / 308 * 8.0 < 30
    assert least_events(5, 0.0, 400, 400.0) == 0.0


def test_compare_means_from_sums() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.1, 1.0, 4000), rng.normal(1.0, 1.0, 4000)
    c = compare_means(a.sum(), (a**2).sum(), a.size, b.sum(), (b**2).sum(), b.size, "both")
    t = sps.ttest_ind(a, b, equal_var=False)
    assert c.estimate == pytest.approx(a.mean() - b.mean())
    assert c.z == pytest.approx(t.statistic, rel=1e-3)


def test_binary_entropy() -> None:
    assert binary_entropy(0.5) == pytest.approx(np.log(2))
    assert np.isnan(binary_entropy(0.0))


def test_segment_grid_is_suffixes_whole_and_first_half() -> None:
    assert segment_grid(60) == [(0, 30), (0, 60), (20, 60), (40, 60), (50, 60), (55, 60)]
    assert segment_grid(0) == []


def test_epidemic_segment_finds_a_planted_step() -> None:
    rng = np.random.default_rng(1)
    exposure = np.full(120, 500.0)
    rate = np.where(np.arange(120) >= 80, 0.05, 0.01)
    events = rng.poisson(rate * exposure).astype(float)
    assert epidemic_segment(events, exposure, "up") == (80, 120)
    assert epidemic_segment(events, exposure, "down", min_start=81) is None
    ended = np.where((np.arange(120) >= 30) & (np.arange(120) < 60), 0.05, 0.01)
    events = rng.poisson(ended * exposure).astype(float)
    assert epidemic_segment(events, exposure, "up") == (30, 60)


def _binned(pred: np.ndarray, label: np.ndarray, spec: HistogramSpec) -> pd.DataFrame:
    edges = spec.edges()
    idx = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, spec.n_bins - 1)
    frame = pd.DataFrame({"bin": idx, "n": 1.0, "sum_pred": pred, "sum_label": label})
    frame["sum_pred2"] = pred**2
    frame["sum_ll"] = 0.0
    return frame.groupby("bin").sum().reindex(range(spec.n_bins), fill_value=0.0)


def test_reliability_slope_recovers_a_known_slope() -> None:
    rng = np.random.default_rng(2)
    spec = HistogramSpec()
    logit = rng.normal(-4.0, 1.0, 400_000)
    pred = 1 / (1 + np.exp(-logit))
    truth = 1 / (1 + np.exp(-(-2.0 + 0.5 * logit)))  # slope 0.5 on the prediction's logit
    fit = reliability(_binned(pred, (rng.random(pred.size) < truth).astype(float), spec))
    assert fit is not None
    assert abs(fit.slope - 0.5) < 3 * fit.slope_se < 0.05


def test_shift_point_mass_and_buckets() -> None:
    rng = np.random.default_rng(3)
    spec = HistogramSpec()
    a = np.exp(rng.normal(np.log(0.02), 0.6, 50_000)).clip(0, 1)
    b = a.copy()
    b[:10_000] = 0.0137  # a fifth stuck at one value
    same = shift(_binned(a, a * 0, spec), _binned(a, a * 0, spec), spec.edges())
    assert same.ks == 0 and same.psi == pytest.approx(0, abs=1e-9) and same.js == 0
    moved = shift(_binned(b, b * 0, spec), _binned(a, a * 0, spec), spec.edges())
    # The gap just above the constant: 0.2 * (1 - F(0.0137)), F the log-normal's CDF.
    gap = 0.2 * (1 - sps.norm.cdf((np.log(0.0137) - np.log(0.02)) / 0.6))
    assert moved.ks == pytest.approx(gap, abs=0.01) and moved.ks_p < 1e-9
    mass = point_mass(_binned(b, b * 0, spec), _binned(a, a * 0, spec))
    assert mass is not None and mass.value == pytest.approx(0.0137, rel=1e-3)
    assert mass.share_test - mass.share_ref > 0.15
    buckets = calibration_buckets(_binned(a, (rng.random(a.size) < a).astype(float), spec), 10)
    assert len(buckets) == 10
    assert buckets["n"].min() > 0.5 * buckets["n"].max()  # equal-count, not uniform-width


def test_rare_event_proportions_hold_their_alpha() -> None:
    """Errors are rare (0.01 %): a slice with five in a short segment against one in its
    baseline is not 1e-7 evidence. Under no change, p < alpha happens at most alpha of the time."""
    c = compare_proportions(5, 1430, 1, 9374, "up")
    assert c.z > 5 and c.p_value > 1e-4
    rng = np.random.default_rng(3)
    rate, n1, n0, alpha, trials = 2e-4, 3000, 20_000, 1e-2, 4000
    hits = sum(
        compare_proportions(rng.binomial(n1, rate), n1, rng.binomial(n0, rate), n0, "up").p_value
        < alpha
        for _ in range(trials)
    )
    assert hits / trials <= alpha
