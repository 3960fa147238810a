"""The vectorised statistics give exactly the answers of the plain versions they replace."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tools import changepoint
from tools.metrics import latency_quantile, metric_array, metric_values
from tools.stats import chi2_goodness_of_fit, epidemic_segment, p_from_z, poisson_interval
from tools.telemetry import LATENCY_LADDER_MS


def _epidemic_full(x: np.ndarray, e: np.ndarray, direction: str, min_len: int) -> object:
    """Every (a, b) of the (n + 1) x (n + 1) table, as the scan was first written."""
    n = x.size
    cx, ce = np.concatenate([[0.0], np.cumsum(x)]), np.concatenate([[0.0], np.cumsum(e)])
    a, b = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    xin, ein = cx[b] - cx[a], ce[b] - ce[a]
    xout, eout = cx[-1] - xin, ce[-1] - ein
    with np.errstate(divide="ignore", invalid="ignore"):
        rin, rout = xin / ein, xout / eout

        def xlogy(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return np.where(u > 0, u * np.log(np.where(v > 0, v, 1.0)), 0.0)

        ll = xlogy(xin, rin) - rin * ein + xlogy(xout, rout) - rout * eout
    ok = (b - a >= min_len) & (ein > 0) & (eout > 0) & (n - (b - a) >= 1)
    ok &= {"up": rin > rout, "down": rin < rout, "both": rin != rout}[direction]
    ll = np.where(ok & np.isfinite(ll), ll, -np.inf)
    if not np.isfinite(ll).any():
        return None
    ia, ib = np.unravel_index(int(np.argmax(ll)), ll.shape)
    return int(ia), int(ib)


def test_epidemic_scan_finds_the_segment_of_the_full_table() -> None:
    rng = np.random.default_rng(4)
    for _ in range(60):
        n = int(rng.integers(6, 300))
        e = rng.poisson(rng.uniform(1, 200), n).astype(float)
        e[rng.random(n) < 0.1] = 0.0
        lift = np.where(np.arange(n) >= rng.integers(0, n), rng.uniform(0.3, 3.0), 1.0)
        x = rng.poisson(e * 0.05 * lift).astype(float) + (rng.random(n) if n % 2 else 0.0)
        for direction in ("up", "down", "both"):
            min_len = int(rng.integers(1, 4))
            want = _epidemic_full(x, e, direction, min_len)
            assert epidemic_segment(x, e, direction, min_len) == want


def _pelt_reference(
    cost: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int, penalty: float, min_size: int
) -> list[int]:
    """PELT one end at a time (the loop the block version must reproduce)."""
    best = np.full(n + 1, np.inf)
    best[0] = -penalty
    last = np.zeros(n + 1, dtype=np.int64)
    cands = np.zeros(0, dtype=np.int64)
    for b in range(min_size, n + 1):
        cands = np.append(cands, b - min_size)
        total = best[cands] + cost(cands[:, None], np.array([[b]]))[:, 0]
        i = int(np.argmin(total))
        best[b] = total[i] + penalty
        last[b] = cands[i]
        cands = cands[total <= best[b]]
    cps, b = [], n
    while b > 0:
        a = int(last[b])
        if a > 0:
            cps.append(a)
        b = a
    return sorted(cps)


@pytest.mark.parametrize("dims", [1, 2])
def test_block_pelt_matches_one_end_at_a_time(dims: int) -> None:
    rng = np.random.default_rng(8 + dims)
    for _ in range(8):
        n = int(rng.integers(30, 260))
        y = rng.normal(0, 1, (n, dims)) + np.where(np.arange(n) > n // 2, 1.5, 0.0)[:, None]
        sums = changepoint._Sums(y)

        def cost(a: np.ndarray, b: np.ndarray, sums: changepoint._Sums = sums) -> np.ndarray:
            a2, b2 = np.broadcast_arrays(a, b)
            m = (b2 - a2).ravel()[:, None].astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = (m * np.log(sums.rss_line(a2.ravel(), b2.ravel()) / m + 0.05)).sum(axis=1)
            return out.reshape(a2.shape)

        min_size = int(rng.integers(2, 7))
        penalty = (3 * dims + 1) * math.log(n)
        want = _pelt_reference(cost, n, penalty, min_size)
        assert changepoint._pelt(cost, n, penalty, min_size) == want


def _quantile_loop(sums: pd.DataFrame, q: float) -> np.ndarray:
    cols = [f"lat_gt_{k}" for k in range(len(LATENCY_LADDER_MS))]
    n, above = sums["n_latency"].to_numpy(float), sums[cols].to_numpy(float)
    out, log_t = np.full(n.size, np.nan), np.log(np.asarray(LATENCY_LADDER_MS))
    for i in range(n.size):
        if n[i] <= 0:
            continue
        share = above[i] / n[i]
        k = int(np.searchsorted(-share, -(1 - q), side="left"))
        if k == 0:
            out[i] = LATENCY_LADDER_MS[0]
        elif k >= len(cols):
            out[i] = LATENCY_LADDER_MS[-1]
        else:
            s0, s1 = share[k - 1], share[k]
            frac = 0.0 if s0 == s1 else (s0 - (1 - q)) / (s0 - s1)
            out[i] = float(np.exp(log_t[k - 1] + frac * (log_t[k] - log_t[k - 1])))
    return out


def test_latency_quantile_matches_the_row_by_row_interpolation() -> None:
    rng = np.random.default_rng(2)
    steps, rows = len(LATENCY_LADDER_MS), 400
    n = rng.integers(0, 3000, rows).astype(float)
    share = np.sort(rng.beta(0.3, 3.0, (rows, steps)), axis=1)[:, ::-1]
    ladder = np.floor(share * n[:, None])
    sums = pd.DataFrame({f"lat_gt_{k}": ladder[:, k] for k in range(steps)})
    sums["n"] = sums["n_latency"] = n
    for q in (0.5, 0.99):
        want = _quantile_loop(sums, q)
        np.testing.assert_array_equal(latency_quantile(sums, q).to_numpy(), want)
        arrays = {c: sums[c].to_numpy(float) for c in sums.columns}
        if q == 0.99:
            np.testing.assert_array_equal(metric_array(arrays, "latency_p99"), want)
    # A hand-made row that is no ladder (not non-increasing) is still searched as it is.
    odd = sums.head(3).copy()
    odd.loc[0, "lat_gt_3"] = odd.loc[0, "n_latency"]
    np.testing.assert_array_equal(latency_quantile(odd, 0.99), _quantile_loop(odd, 0.99))


def test_metric_values_keep_their_definitions() -> None:
    sums = pd.DataFrame(
        {
            "minute": [1, 1, 2, 3],
            "n": [100.0, 300.0, 0.0, 50.0],
            "n_error": [1.0, 0.0, 0.0, 5.0],
            "n_invalid": [2.0, 0.0, 0.0, 0.0],
            "sum_label": [3.0, 6.0, 0.0, 1.0],
        }
    )
    np.testing.assert_array_equal(metric_values(sums, "ctr"), [0.03, 0.02, np.nan, 0.02])
    np.testing.assert_array_equal(metric_values(sums, "srm"), [0.25, 0.75, np.nan, 1.0])
    np.testing.assert_array_equal(metric_values(sums, "invalid_rate"), [2 / 99, 0.0, np.nan, 0.0])


def test_normal_and_chi_square_tails_equal_scipy_stats() -> None:
    for z in (-40.0, -3.3, -0.2, 0.0, 1.7, 8.5):
        assert p_from_z(z, "up") == float(sps.norm.sf(z))
        assert p_from_z(z, "down") == float(sps.norm.cdf(z))
        assert p_from_z(z, "both") == float(2 * sps.norm.sf(abs(z)))
    assert p_from_z(float("nan"), "up") == 1.0
    alpha = 1 - 0.95
    for k in (0.0, 0.4, 3.0, 17.25, 4000.0):
        lo = 0.0 if k <= 0 else float(sps.chi2.ppf(alpha / 2, 2 * k) / 2)
        assert poisson_interval(k) == (lo, float(sps.chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2))
    stat, p = chi2_goodness_of_fit([480, 520, 610], [1, 1, 1])
    assert p == float(sps.chi2.sf(stat, 2))
