"""Distribution statistics computed from fine prediction histograms (never from raw predictions).

The reader returns per-bin sums on log-spaced bins; from them come distribution-shift measures
(KS, PSI, Jensen-Shannon, Wasserstein-1), point masses (predictions stuck at a constant) and
equal-count calibration buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.special import expit

__all__ = [
    "BINNED_SUMS",
    "PointMass",
    "Reliability",
    "Shift",
    "bin_sums",
    "calibration_buckets",
    "logit_spread",
    "point_mass",
    "reliability",
    "reliability_of",
    "shift",
]

BINNED_SUMS = ("n", "sum_pred", "sum_pred2", "sum_label", "sum_ll")


@dataclass(frozen=True)
class Shift:
    """How far the test distribution moved from the reference one.

    Attributes:
        n_test: Predictions in the test histogram.
        n_ref: Predictions in the reference histogram.
        ks: Largest gap between the two CDFs (on bin edges, so slightly conservative).
        ks_p: Asymptotic two-sample KS p-value of ``ks``.
        psi: Population stability index on reference-quantile buckets.
        js: Jensen-Shannon divergence (base 2, 0..1) on the same buckets.
        wasserstein: Earth mover's distance in prediction units.
        wasserstein_rel: ``wasserstein`` divided by the reference's mean prediction.
    """

    n_test: float
    n_ref: float
    ks: float
    ks_p: float
    psi: float
    js: float
    wasserstein: float
    wasserstein_rel: float


@dataclass(frozen=True)
class PointMass:
    """The bin whose share grew most in the test histogram (a constant prediction shows here)."""

    bin: int
    value: float
    share_test: float
    share_ref: float
    z: float


def bin_sums(hist: pd.DataFrame, arm: str, blocks: range | None, n_bins: int) -> pd.DataFrame:
    """Sums per bin (all ``n_bins`` rows, zeros where empty) of one arm over some time blocks."""
    bins = hist["bin"].to_numpy(np.int64)
    keep = (hist["arm"] == arm).to_numpy(dtype=bool) & (bins >= 0) & (bins < n_bins)
    if blocks is not None:
        keep &= np.isin(hist["block"].to_numpy(np.int64), np.asarray(blocks, dtype=np.int64))
    at = bins[keep]
    out = np.empty((n_bins, len(BINNED_SUMS)))
    for j, col in enumerate(BINNED_SUMS):
        values = hist[col].to_numpy(np.float64)[keep]
        values = np.where(np.isnan(values), 0.0, values)
        out[:, j] = np.bincount(at, weights=values, minlength=n_bins)
    index = pd.RangeIndex(n_bins, name="bin")
    return pd.DataFrame(out, index=index, columns=pd.Index(BINNED_SUMS))


def shift(test: pd.DataFrame, ref: pd.DataFrame, edges: np.ndarray, buckets: int = 20) -> Shift:
    """Distribution-shift statistics between two binned prediction distributions."""
    t = test["n"].to_numpy(float)
    r = ref["n"].to_numpy(float)
    nt, nr = t.sum(), r.sum()
    if nt <= 0 or nr <= 0:
        nan = float("nan")
        return Shift(nt, nr, nan, 1.0, nan, nan, nan, nan)
    ct, cr = np.cumsum(t) / nt, np.cumsum(r) / nr
    ks = float(np.max(np.abs(ct - cr)))
    en = np.sqrt(nt * nr / (nt + nr))
    ks_p = float(sps.kstwobign.sf(ks * en))
    widths = np.diff(edges)
    wass = float(np.sum(np.abs(ct - cr)[:-1] * widths[1:]))
    ref_mean = float(ref["sum_pred"].sum() / nr)
    groups = _quantile_groups(r / nr, buckets)
    pt = np.bincount(groups, weights=t / nt)
    pr = np.bincount(groups, weights=r / nr)
    eps = 1e-4
    pt_s, pr_s = (pt + eps) / (1 + eps * pt.size), (pr + eps) / (1 + eps * pr.size)
    psi = float(np.sum((pt_s - pr_s) * np.log(pt_s / pr_s)))
    mid = (pt + pr) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_t = np.where(pt > 0, pt * np.log2(pt / mid), 0.0).sum()
        kl_r = np.where(pr > 0, pr * np.log2(pr / mid), 0.0).sum()
    js = float((kl_t + kl_r) / 2)
    rel = wass / ref_mean if ref_mean > 0 else float("nan")
    return Shift(float(nt), float(nr), ks, ks_p, psi, js, wass, rel)


def point_mass(test: pd.DataFrame, ref: pd.DataFrame) -> PointMass | None:
    """The bin with the largest growth in share from ``ref`` to ``test``, with its z score."""
    t = test["n"].to_numpy(float)
    r = ref["n"].to_numpy(float)
    nt, nr = t.sum(), r.sum()
    if nt <= 0 or nr <= 0:
        return None
    st, sr = t / nt, r / nr
    pooled = (t + r) / (nt + nr)
    se = np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * (1 / nt + 1 / nr))
    z = (st - sr) / se
    idx = int(np.argmax(st - sr))
    value = float(test["sum_pred"].iloc[idx] / t[idx]) if t[idx] > 0 else float("nan")
    return PointMass(idx, value, float(st[idx]), float(sr[idx]), float(z[idx]))


def calibration_buckets(binned: pd.DataFrame, buckets: int = 10) -> pd.DataFrame:
    """Equal-count buckets of prediction with their calibration (Σ prediction ÷ Σ label).

    At a 1-2 % CTR, uniform buckets put nearly everything in the first one; merging the fine
    bins into buckets of equal count keeps every bucket informative.

    Returns:
        Columns ``bucket, n, mean_pred, ctr, clicks, calibration`` (one row per non-empty bucket).
    """
    n = binned["n"].to_numpy(float)
    if n.sum() <= 0:
        return pd.DataFrame(columns=["bucket", "n", "mean_pred", "ctr", "clicks", "calibration"])
    groups = _quantile_groups(n / n.sum(), buckets)
    sums = {
        col: np.bincount(groups, weights=binned[col].to_numpy(float), minlength=buckets)
        for col in ("n", "sum_pred", "sum_label")
    }
    kept = np.flatnonzero(sums["n"] > 0)
    n_b, pred, label = (sums[col][kept] for col in ("n", "sum_pred", "sum_label"))
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame(
            {
                "bucket": kept.astype(np.int64),
                "n": n_b,
                "mean_pred": pred / n_b,
                "ctr": label / n_b,
                "clicks": label,
                "calibration": pred / label,
            }
        )


def _quantile_groups(shares: np.ndarray, buckets: int) -> np.ndarray:
    """Assign consecutive bins to ``buckets`` groups of roughly equal share (by bin midpoint)."""
    cum = np.cumsum(shares) - shares / 2
    groups: np.ndarray = np.clip((cum * buckets).astype(int), 0, buckets - 1)
    return groups


@dataclass(frozen=True)
class Reliability:
    """Logistic calibration of binned predictions: ``logit P(click) = a + b · logit(p)``.

    ``slope`` b is 1 for predictions as sharp as they deserve; noisier (over-confident)
    predictions give a smaller slope, whatever their mean calibration (Cox 1958).
    """

    slope: float
    slope_se: float
    intercept: float
    clicks: float
    n: float


def reliability(binned: pd.DataFrame, iterations: int = 25) -> Reliability | None:
    """Fit the reliability slope on binned sums (``n``, ``sum_pred``, ``sum_label`` per bin).

    Grouped logistic regression by Newton's method on the bins' mean predictions; the slope's
    standard error comes from the inverse Fisher information. None without enough clicks.
    """
    return reliability_of(
        binned["n"].to_numpy(float),
        binned["sum_pred"].to_numpy(float),
        binned["sum_label"].to_numpy(float),
        iterations,
    )


def reliability_of(
    n: np.ndarray, sum_pred: np.ndarray, sum_label: np.ndarray, iterations: int = 25
) -> Reliability | None:
    """:func:`reliability` on the bins' sums as arrays."""
    y = sum_label
    keep = n > 0
    n, y = n[keep], y[keep]
    if y.sum() < 20 or (n - y).sum() < 20 or keep.sum() < 3:
        return None
    p = np.clip(sum_pred[keep] / n, 1e-9, 1 - 1e-9)
    x = np.log(p / (1 - p))
    design = np.column_stack([np.ones_like(x), x])
    beta = np.array([0.0, 1.0])
    info = np.eye(2)
    for _ in range(iterations):
        mu = expit(design @ beta)  # no overflow where a step overshoots
        w = n * mu * (1 - mu)
        info = design.T @ (design * w[:, None])
        grad = design.T @ (y - n * mu)
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(step).all():
            return None
        # A damped step: far from the optimum a full Newton step on a few bins can overshoot.
        beta = beta + step / max(1.0, float(np.max(np.abs(step))) / 5.0)
        if np.max(np.abs(step)) < 1e-8:
            break
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None
    se = float(np.sqrt(max(cov[1, 1], 0.0)))
    if not (np.isfinite(beta).all() and se > 0):
        return None
    return Reliability(float(beta[1]), se, float(beta[0]), float(y.sum()), float(n.sum()))


def logit_spread(binned: pd.DataFrame) -> float:
    """Variance of logit(prediction) across the bins (weighted by count); NaN when empty."""
    n = binned["n"].to_numpy(float)
    if n.sum() <= 0:
        return float("nan")
    p = np.clip(
        np.divide(binned["sum_pred"].to_numpy(float), n, out=np.zeros_like(n), where=n > 0),
        1e-9,
        1 - 1e-9,
    )
    x = np.log(p / (1 - p))
    mean = float((n * x).sum() / n.sum())
    return float((n * (x - mean) ** 2).sum() / n.sum())
