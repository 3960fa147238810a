"""Statistical primitives the checks share: tests on aggregated counts, intervals, corrections.

Everything here works on sums (counts, sums of values and of squares), never on raw requests.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import bdtr, bdtrc, chdtrc, gammaincinv, ndtr, ndtri

__all__ = [
    "Comparison",
    "Direction",
    "binary_entropy",
    "chi2_goodness_of_fit",
    "compare_means",
    "compare_proportions",
    "compare_rates",
    "epidemic_segment",
    "holm",
    "least_events",
    "p_from_z",
    "poisson_interval",
    "segment_grid",
]

Direction = Literal["up", "down", "both"]
"""Which change is bad: an increase, a decrease, or either."""


@dataclass(frozen=True)
class Comparison:
    """A test-vs-reference comparison: the effect, its interval, a z score and its p-value."""

    estimate: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float

    @property
    def valid(self) -> bool:
        """False when the data could not support a test (zero counts, no variance)."""
        return bool(np.isfinite(self.z))


_INVALID = Comparison(float("nan"), float("nan"), float("nan"), float("nan"), 1.0)


def p_from_z(z: float, direction: Direction) -> float:
    """The p-value of standard-normal score ``z`` for the stated bad ``direction``."""
    # scipy.special's ufuncs are what sps.norm.sf / cdf evaluate, without their ~0.2 ms wrapper.
    if not np.isfinite(z):
        return 1.0
    if direction == "up":
        return float(ndtr(-z))
    if direction == "down":
        return float(ndtr(z))
    return float(2 * ndtr(-abs(z)))


@functools.lru_cache(maxsize=16)
def _z_two_sided(confidence: float) -> float:
    """``Φ⁻¹(0.5 + confidence / 2)``: the half-width of a two-sided interval in sds."""
    return float(ndtri(0.5 + confidence / 2))


def compare_proportions(
    x1: float, n1: float, x0: float, n0: float, direction: Direction, confidence: float = 0.95
) -> Comparison:
    """Two-proportion test of ``x1/n1`` against ``x0/n0``.

    Whole counts under ``_EXACT_BELOW`` events get the exact conditional test: given the total
    ``x1 + x0``, ``x1`` is binomial with the share ``n1 / (n1 + n0)`` under no change (the
    Poisson limit of Fisher's test). Rare events (errors, fallbacks: a handful per slice) are
    where the pooled z test is anti-conservative: 5 errors against 1 expected score p 2e-7 by z,
    2e-4 exactly. Larger counts keep the z test (pooled variance).

    Returns:
        The difference ``p1 - p0`` with a Wald interval (unpooled) and the test's p-value.
    """
    if n1 <= 0 or n0 <= 0:
        return _INVALID
    p1, p0 = x1 / n1, x0 / n0
    pooled = (x1 + x0) / (n1 + n0)
    se_pool = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    # Unpooled SE with a continuity floor so that 0/n has an interval of honest width.
    se = np.sqrt(max(p1 * (1 - p1), 0.5 / n1) / n1 + max(p0 * (1 - p0), 0.5 / n0) / n0)
    diff = p1 - p0
    if se_pool == 0:
        return Comparison(diff, diff, diff, 0.0, 1.0)
    z = diff / se_pool
    zc = _z_two_sided(confidence)
    p_value = _conditional_p(x1, x0, n1 / (n1 + n0), direction)
    if p_value is None:
        p_value = p_from_z(z, direction)
    return Comparison(diff, diff - zc * se, diff + zc * se, float(z), p_value)


_EXACT_BELOW = 5000
"""Total events below which :func:`compare_proportions` tests exactly."""


def _conditional_p(x1: float, x0: float, share: float, direction: Direction) -> float | None:
    """Exact p-value of ``x1`` events out of ``x1 + x0`` at the share ``share`` (None: not
    whole counts, or too many for it to matter)."""
    total = x1 + x0
    if total >= _EXACT_BELOW or x1 != round(x1) or x0 != round(x0) or not 0 < share < 1:
        return None
    k, n = int(np.rint(x1)), int(np.rint(total))
    up = float(bdtrc(k - 1, n, share)) if k > 0 else 1.0
    down = float(bdtr(k, n, share))
    if direction == "up":
        return up
    if direction == "down":
        return down
    return min(1.0, 2 * min(up, down))


def compare_rates(
    x1: float, e1: float, x0: float, e0: float, direction: Direction, confidence: float = 0.95
) -> Comparison:
    """Poisson rate ratio ``(x1/e1) / (x0/e0)`` on the log scale; the estimate is the ratio.

    ``x`` are event counts (clicks), ``e`` exposures (requests, or the sum of predicted CTR).
    A side with no events is what a total loss looks like (every click of a slice unlogged), not
    an absence of data: its ratio takes half an event (Haldane), and whole counts under
    ``_EXACT_BELOW`` events get the exact conditional test (given ``x1 + x0``, ``x1`` is
    binomial with the share ``e1 / (e1 + e0)`` under no change), as in
    :func:`compare_proportions`. Whether the exposures could have shown enough events is the
    caller's question (:func:`least_events`).
    """
    if x1 < 0 or x0 < 0 or x1 + x0 <= 0 or e1 <= 0 or e0 <= 0:
        return _INVALID
    k1, k0 = (x1, x0) if x1 > 0 and x0 > 0 else (x1 + 0.5, x0 + 0.5)
    log_ratio = np.log((k1 / e1) / (k0 / e0))
    se = np.sqrt(1 / k1 + 1 / k0)
    z = log_ratio / se
    zc = _z_two_sided(confidence)
    p_value = _conditional_p(x1, x0, e1 / (e1 + e0), direction)
    if p_value is None:
        p_value = p_from_z(float(z), direction)
    return Comparison(
        float(np.exp(log_ratio)),
        float(np.exp(log_ratio - zc * se)),
        float(np.exp(log_ratio + zc * se)),
        float(z),
        p_value,
    )


def least_events(x1: float, e1: float, x0: float, e0: float) -> float:
    """The events the thinner side of a rate comparison stands on, for a minimum-sample rule.

    Each side counts the larger of its logged events and the events its exposure would hold
    at the pooled rate ``(x1 + x0) / (e1 + e0)``. Neither alone will do: a fault that loses
    events (clicks never logged) would hide under a minimum on the logged count, and one that
    shrinks the exposure (predictions cut to a fifth) under a minimum on the expected count.
    Without exposure on either side there is nothing to count.
    """
    if e1 <= 0 or e0 <= 0:
        return 0.0
    rate = (x1 + x0) / (e1 + e0)
    return float(min(max(x1, rate * e1), max(x0, rate * e0)))


def compare_means(
    s1: float,
    q1: float,
    n1: float,
    s0: float,
    q0: float,
    n0: float,
    direction: Direction,
    confidence: float = 0.95,
    scale1: float = 1.0,
    scale0: float = 1.0,
) -> Comparison:
    """Welch z test of ``scale1 * mean1`` against ``scale0 * mean0`` from sums and squares.

    ``s`` is the sum, ``q`` the sum of squares, ``n`` the count; the scales turn a mean log loss
    into a normalized entropy (1 / background entropy) without changing the test's shape.
    """
    if n1 < 2 or n0 < 2:
        return _INVALID
    m1, m0 = s1 / n1, s0 / n0
    v1 = max(q1 / n1 - m1 * m1, 0.0) * n1 / (n1 - 1)
    v0 = max(q0 / n0 - m0 * m0, 0.0) * n0 / (n0 - 1)
    se = np.sqrt(scale1**2 * v1 / n1 + scale0**2 * v0 / n0)
    diff = scale1 * m1 - scale0 * m0
    if se == 0:
        return _INVALID
    z = diff / se
    zc = _z_two_sided(confidence)
    return Comparison(diff, diff - zc * se, diff + zc * se, float(z), p_from_z(z, direction))


def poisson_interval(k: float, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval for the mean of a Poisson count ``k``."""
    alpha = 1 - confidence
    # sps.chi2.ppf(q, df) is 2 * gammaincinv(df / 2, q), here without its wrapper's overhead.
    lo = 0.0 if k <= 0 else float(2 * gammaincinv(k, alpha / 2) / 2)
    hi = float(2 * gammaincinv(k + 1, 1 - alpha / 2) / 2)
    return lo, hi


def chi2_goodness_of_fit(counts: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """Pearson chi-square of ``counts`` against expected shares proportional to ``weights``.

    Returns:
        ``(statistic, p_value)``; ``(0.0, 1.0)`` with fewer than two categories or no counts.
    """
    obs = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float)
    if obs.size < 2 or obs.sum() <= 0 or w.sum() <= 0:
        return 0.0, 1.0
    expected = obs.sum() * w / w.sum()
    stat = float(((obs - expected) ** 2 / expected).sum())
    return stat, float(chdtrc(obs.size - 1, stat))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted


def binary_entropy(p: float) -> float:
    """Entropy (nats) of a Bernoulli(p) label: the log loss of always predicting ``p``."""
    if not 0 < p < 1:
        return float("nan")
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def segment_grid(n_minutes: int, shortest: int = 5) -> list[tuple[int, int]]:
    """Candidate time segments ``[a, b)`` (minute offsets) a regression may occupy.

    A fault is usually still running when it is investigated, so the family is the suffixes of
    geometric lengths (``shortest``, twice that, ...), the whole window, and its first half (a fault
    that has ended). Checks scan them all and Bonferroni-correct by their number: a short fault is
    not diluted by a long window, at the price of a factor of about log2(n / shortest).
    """
    if n_minutes <= 0:
        return []
    segments = {(0, n_minutes)}
    length = shortest
    while length < n_minutes:
        segments.add((n_minutes - length, n_minutes))
        length *= 2
    if n_minutes >= 2 * shortest:
        segments.add((0, n_minutes // 2))
    return sorted(segments)


def epidemic_segment(
    events: np.ndarray,
    exposure: np.ndarray,
    direction: Direction,
    min_len: int = 3,
    min_end: int = 0,
    min_start: int = 0,
) -> tuple[int, int] | None:
    """Most likely segment ``[a, b)`` in which the rate ``events / exposure`` departs.

    A Poisson (quasi-)likelihood "epidemic" change model: one rate inside the segment, one outside;
    the segment maximises the likelihood ratio among those whose inside rate moves in the bad
    ``direction``. A fault still running at the window's end gives ``b == len(events)``. Only
    segments ending after position ``min_end`` and starting at ``min_start`` or later count (a
    departure inside a baseline is no finding).

    Returns:
        ``(a, b)`` in positions of the arrays, or None without a departure in that direction.
    """
    x = np.asarray(events, dtype=float)
    e = np.asarray(exposure, dtype=float)
    step = -(-x.size // _MAX_POINTS)
    if step > 1:
        # Long windows: coarsen so the (a, b) table stays small; positions scale back below.
        pad = (-x.size) % step
        coarse = epidemic_segment(
            np.pad(x, (0, pad)).reshape(-1, step).sum(axis=1),
            np.pad(e, (0, pad)).reshape(-1, step).sum(axis=1),
            direction,
            max(1, min_len // step),
            min_end // step,
            min_start // step,
        )
        if coarse is None:
            return None
        return coarse[0] * step, min(coarse[1] * step, x.size)
    n = x.size
    if n < 2 * min_len or e.sum() <= 0 or x.sum() <= 0:
        return None
    cx = np.concatenate([[0.0], np.cumsum(x)])
    ce = np.concatenate([[0.0], np.cumsum(e)])
    # Only the admissible segments, in row-major (a, then b) order: argmax keeps the first best.
    a, b = _segments(n, min_len)
    keep = (b > min_end) & (a >= min_start)
    a, b = a[keep], b[keep]
    xin = cx[b] - cx[a]
    ein = ce[b] - ce[a]
    xout = cx[-1] - xin
    eout = ce[-1] - ein
    with np.errstate(divide="ignore", invalid="ignore"):
        rin = xin / ein
        rout = xout / eout
    ok = (ein > 0) & (eout > 0)
    if direction == "up":
        ok &= rin > rout
    elif direction == "down":
        ok &= rin < rout
    else:
        ok &= rin != rout
    # The likelihood only where the segment moves the bad way (the same numbers, fewer of them).
    at = np.flatnonzero(ok)
    xin, ein, xout, eout, rin, rout = (v[at] for v in (xin, ein, xout, eout, rin, rout))
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = _xlogy(xin, rin) - rin * ein + _xlogy(xout, rout) - rout * eout
    finite = np.isfinite(ll)
    if not finite.any():
        return None
    best = int(at[int(np.argmax(np.where(finite, ll, -np.inf)))])
    return int(a[best]), int(b[best])


@functools.lru_cache(maxsize=8)
def _segments(n: int, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``[a, b)`` with ``min_len <= b - a <= n - 1`` in ``0..n``, in row-major order."""
    a, b = np.triu_indices(n + 1, k=max(min_len, 1))
    keep = b - a <= n - 1
    return a[keep].astype(np.int64), b[keep].astype(np.int64)


_MAX_POINTS = 400


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.where(x > 0, x * np.log(np.where(y > 0, y, 1.0)), 0.0)
    return out
