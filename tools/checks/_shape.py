"""Step or ramp: the shape of a rise in a per-minute series (NE of a stale model vs a worse model).

A model that stops refreshing keeps serving one snapshot while the world drifts away from it: its
log loss degrades gradually, a *ramp* that keeps growing since the drift began. A worse model (a
bad snapshot, extra noise) degrades at once and then holds: a *step*. The two are told apart by
a segmented regression on the per-minute series (test minus control, or the subject's own)::

    y(t) = a [+ g·t] + c·1[t ≥ τ] + b·(t − τ)₊

``τ`` is where a pure step fits best (the step model with ``b = 0``, least weighted squares over
every admissible ``τ``), so a true step at ``τ`` leaves nothing for ``b`` and a ramp, whose best
step lands inside it, keeps rising after ``τ``: ``b > 0``. The test of ``b`` (one-sided,
weighted least squares with the noise level estimated from the residuals) is a z test at the
caller's alpha (the slope's standard error is the larger of the model-based and the HC1
sandwich one, so a noise level that changed at the step cannot inflate it); its power is stated
as the smallest slope it would detect with 80 % power. Where a ramp began is dated by the best
pure ramp (``b·(t − τ)₊``, no step), since a ramp's best single step lies inside it.
``g`` (a linear drift of the baseline) is fitted only for a series without a concurrent
reference, where the diurnal curve moves the level slowly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from tools.checks._engine import Window
from tools.checks._power import mde_of
from tools.checks._reliability import _Cube
from tools.stats import p_from_z
from tools.telemetry import HistogramSpec

__all__ = ["Shape", "block_slopes", "series_shape", "slope_series"]

_Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Shape:
    """The fitted shape of a series' rise.

    Attributes:
        onset: Index of ``τ``, the best single step.
        level: The series' reference level before ``τ`` (the baseline's mean log loss, to state
            the step and the slope relative to it).
        step: ``c``, the jump at ``τ`` (series units).
        slope: ``b``, the rise per index (minute) after ``τ``.
        se: Standard error of ``slope``.
        z: ``slope / se``.
        p_value: One-sided p-value of ``slope > 0``.
        step_z: ``c`` over its standard error in the pure step model.
        after: Points at and after ``τ``.
        tried: How many ``τ`` were scanned (the step's p-value is corrected for them).
        ramp_onset: Index where a pure ramp fits best departing from the baseline (where a
            ramp began; None when no rising ramp fits).
    """

    onset: int
    level: float
    step: float
    slope: float
    se: float
    z: float
    p_value: float
    step_z: float
    after: int
    tried: int = 1
    ramp_onset: int | None = None

    def step_p(self) -> float:
        """One-sided p-value of the step ``c > 0``, Bonferroni-corrected for the scanned ``τ``."""
        return min(1.0, self.tried * p_from_z(self.step_z, "up"))

    def held(self, alpha: float) -> bool:
        """Whether a ramp is excluded: a ramp from ``τ`` that has carried the series only half
        as far as the step by now would have been detected, and no slope was seen. (Strict: a
        drift that saturates soon after its onset looks like a step to any shape test.)"""
        reach = mde_of(self.se, alpha, two_sided=False) * max(self.after - 1, 0)
        return self.step > 0 and reach <= 0.5 * self.step and self.p_value >= alpha

    def slope_per_hour(self) -> float:
        """The ramp's slope relative to the level, per hour (0.05 = NE +5 %/h)."""
        return 60.0 * self.slope / self.level if self.level > 0 else math.nan

    @property
    def start(self) -> int:
        """Where a ramp began: the pure ramp's onset when one fits before ``τ``, else ``τ``."""
        if self.ramp_onset is not None and self.ramp_onset <= self.onset:
            return self.ramp_onset
        return self.onset

    def rise(self) -> float:
        """How far the ramp has carried the series since it began, relative to the level."""
        span = max(self.after - 1 + self.onset - self.start, 0)
        return self.slope * span / self.level if self.level > 0 else math.nan

    def mde_per_hour(self, alpha: float) -> float:
        """The smallest slope (relative, per hour) the test detects at ``alpha`` with 80 % power."""
        if self.level <= 0:
            return math.inf
        return 60.0 * mde_of(self.se, alpha, two_sided=False) / self.level


def _wls(x: _Floats, y: _Floats, w: _Floats) -> tuple[_Floats, float, _Floats] | None:
    """Weighted least squares: coefficients, weighted SSE and ``(X'WX)^-1``; None if singular."""
    xtw = x.T * w
    gram = xtw @ x
    try:
        inv = np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(inv)):
        return None
    beta: _Floats = inv @ (xtw @ y)
    resid = y - x @ beta
    return beta, float(np.sum(w * resid * resid)), np.asarray(inv, dtype=float)


def _best_step(
    t: _Floats, y: _Floats, w: _Floats, base: _Floats, taus: range
) -> tuple[int, float, float] | None:
    """The ``τ`` whose step model fits best, that fit's step and its z score.

    All ``τ`` at once (Frisch-Waugh): the step's indicator and ``y`` residualised on the base
    columns; each ``τ``'s inner products are suffix sums over the points at or after it.
    """
    fit = _wls(base, y, w)
    if fit is None:
        return None
    _beta, sse_base, inv = fit
    wx = base * w[:, None]
    xwy = wx.T @ y
    # Suffix sums from each point on: d'Wd, X'Wd and y'Wd for d = 1[t >= t_i].
    sw = np.cumsum(w[::-1])[::-1]
    swx = np.cumsum(wx[::-1], axis=0)[::-1]
    swy = np.cumsum((w * y)[::-1])[::-1]
    first = np.searchsorted(t, np.asarray(list(taus), dtype=float))
    keep = first < len(t)
    first = first[keep]
    tau_values = np.asarray(list(taus))[keep]
    if not len(first):
        return None
    xwd = swx[first]
    rdd = sw[first] - np.einsum("ij,jk,ik->i", xwd, inv, xwd)
    ryd = swy[first] - xwd @ (inv @ xwy)
    ok = rdd > 1e-12 * max(float(sw[0]), 1e-300)
    if not ok.any():
        return None
    gain = np.where(ok, ryd * ryd / np.where(ok, rdd, 1.0), -np.inf)
    i = int(np.argmax(gain))
    sse = sse_base - float(gain[i])
    dof = max(len(y) - base.shape[1] - 1, 1)
    step = float(ryd[i] / rdd[i])
    se = math.sqrt(max(sse / dof / float(rdd[i]), 0.0))
    return int(tau_values[i]), step, step / se if se > 0 else 0.0


def _best_hinge(t: _Floats, y: _Floats, w: _Floats, base: _Floats, taus: range) -> int | None:
    """Where a pure ramp ``b·(t − τ)₊`` departs from the baseline, best fitting (the ramp's
    onset: a ramp's best single step lies inside it, later than where it began)."""
    fit = _wls(base, y, w)
    if fit is None:
        return None
    _beta, _sse, inv = fit
    wx = base * w[:, None]
    xwy = wx.T @ y

    def suffix(v: _Floats) -> _Floats:
        out: _Floats = np.cumsum(v[::-1], axis=0)[::-1]
        return out

    s_w, s_wt, s_wtt = suffix(w), suffix(w * t), suffix(w * t * t)
    s_wx, s_wxt = suffix(wx), suffix(wx * t[:, None])
    s_wy, s_wyt = suffix(w * y), suffix(w * y * t)
    tau = np.asarray(list(taus), dtype=float)
    first = np.searchsorted(t, tau)
    keep = first < len(t)
    tau, first = tau[keep], first[keep]
    if not len(first):
        return None
    xwd = s_wxt[first] - tau[:, None] * s_wx[first]
    dwd = s_wtt[first] - 2 * tau * s_wt[first] + tau * tau * s_w[first]
    ywd = s_wyt[first] - tau * s_wy[first]
    rdd = dwd - np.einsum("ij,jk,ik->i", xwd, inv, xwd)
    ryd = ywd - xwd @ (inv @ xwy)
    ok = (rdd > 0) & (ryd > 0)
    if not ok.any():
        return None
    gain = np.where(ok, ryd * ryd / np.where(ok, rdd, 1.0), -np.inf)
    return int(tau[int(np.argmax(gain))])


def series_shape(
    y: npt.ArrayLike,
    weight: npt.ArrayLike,
    *,
    trend: bool,
    first: int = 0,
    min_segment: int = 10,
    scale: float | None = None,
) -> Shape | None:
    """Fit the step-or-ramp model to a per-minute series (module docstring).

    Args:
        y: Per-minute values (mean log loss, or its difference with a reference); NaN where a
            minute has no data.
        weight: Per-minute weights proportional to the inverse variance (requests, or
            ``1/(1/n + 1/n_ref)`` for a difference); 0 where a minute has no data.
        trend: Also fit a linear baseline drift ``g`` (a series with no concurrent reference).
        first: Earliest index ``τ`` may take (the onset lies after the baseline's start).
        min_segment: Fewest points on each side of ``τ``.
        scale: The level the step and slope are stated against (the reference's mean log loss
            for a difference series); None: the series' own weighted mean before ``τ``.

    Returns:
        The fitted :class:`Shape`, or None when the series is too short or degenerate.
    """
    yy = np.asarray(y, dtype=float)
    ww = np.asarray(weight, dtype=float)
    ok = np.isfinite(yy) & np.isfinite(ww) & (ww > 0)
    idx = np.flatnonzero(ok)
    if len(idx) < 2 * min_segment + 3:
        return None
    t = idx.astype(float)
    ys, ws = yy[ok], ww[ok] / float(np.mean(ww[ok]))
    base = np.column_stack([np.ones_like(t), t - t.mean()] if trend else [np.ones_like(t)])
    lo = max(int(t[min_segment]), first)
    # The step may sit anywhere up to the last points: a recent step must not pass for a ramp.
    hi = int(t[-2])
    if hi <= lo:
        return None
    found = _best_step(t, ys, ws, base, range(lo, hi + 1))
    if found is None:
        return None
    tau, step, step_z = found
    after = (t >= tau).astype(float)
    before = t < tau
    level = scale if scale is not None else float(np.average(ys[before], weights=ws[before]))
    if after.sum() < min_segment:
        # Too few points since the step to fit a slope: no ramp can be told from it yet.
        return Shape(
            tau, level, step, 0.0, math.inf, 0.0, 1.0, step_z, int(after.sum()), hi - lo + 1
        )
    ramp = np.maximum(t - tau, 0.0)
    design = np.column_stack([base, after, ramp])
    fit = _wls(design, ys, ws)
    if fit is None:
        return None
    beta, sse, inv = fit
    dof = max(len(ys) - design.shape[1], 1)
    # The slope's standard error: the larger of the model-based one and the heteroscedasticity-
    # robust (HC1 sandwich) one, so a noise level that changed at the step (fewer clicks after
    # it, a skewed small reference) cannot make the test anti-conservative.
    resid = ys - design @ beta
    meat = (design * (ws * resid)[:, None]).T @ (design * (ws * resid)[:, None])
    robust = float((inv @ meat @ inv)[-1, -1]) * len(ys) / dof
    se = math.sqrt(max(sse / dof * float(inv[-1, -1]), robust, 0.0))
    slope = float(beta[-1])
    z = slope / se if se > 0 else 0.0
    return Shape(
        onset=tau,
        level=level,
        step=float(beta[-2]),
        slope=slope,
        se=se,
        z=z,
        p_value=p_from_z(z, "up"),
        step_z=step_z,
        after=int(after.sum()),
        tried=len(range(lo, hi + 1)),
        ramp_onset=_best_hinge(t, ys, ws, base, range(lo, hi + 1)),
    )


def slope_series(
    hist: pd.DataFrame,
    spec: HistogramSpec,
    block: int,
    window: Window,
    arm: str,
    ref: str | None,
) -> tuple[_Floats, _Floats, float] | None:
    """The drop of ``arm``'s reliability slope per time block, as a series for :func:`series_shape`.

    Each block's logistic reliability slope is fitted on its own bins (blocks with too few clicks
    are left out). The series is ``-slope`` (against ``ref``'s slope in the same block when
    given), so a model growing noisier rises; weights are the inverse variances of the fits.

    Returns:
        ``(series, weights, scale)`` with ``scale`` the reference's mean slope, or None.
    """
    n_blocks = -(-(window.end - window.fetch_start) // block)
    if n_blocks < 2 or hist.empty:
        return None

    def fits(name: str) -> tuple[_Floats, _Floats]:
        cube = _Cube(hist, name, n_blocks, spec.n_bins)
        return block_slopes(cube.m["n"], cube.m["sum_pred"], cube.m["sum_label"])

    y, v = fits(arm)
    if ref is not None:
        yr, vr = fits(ref)
        y, v = y - yr, v + vr
        level = yr
    else:
        level = y
    good = np.isfinite(y) & np.isfinite(v)
    if not good.any() or not np.isfinite(level).any():
        return None
    scale = float(np.nanmean(np.abs(level))) if ref is not None else float(np.nanmean(level))
    weight = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
    return -y, weight, scale


def block_slopes(
    n: _Floats, sum_pred: _Floats, sum_label: _Floats, iterations: int = 25
) -> tuple[_Floats, _Floats]:
    """The reliability slope of every block at once (blocks x bins sums), and its variance.

    The same grouped logistic regression as :func:`tools.histograms.reliability` (damped Newton
    steps from slope 1), vectorised over the blocks; blocks with fewer than 20 clicks or 20
    non-clicks, or under three populated bins, get NaN and an infinite variance.
    """
    clicks = sum_label.sum(axis=1)
    usable = (clicks >= 20) & ((n - sum_label).sum(axis=1) >= 20) & ((n > 0).sum(axis=1) >= 3)
    p = np.clip(np.divide(sum_pred, n, out=np.full_like(n, 0.5), where=n > 0), 1e-9, 1 - 1e-9)
    x = np.log(p / (1 - p))
    a = np.zeros(n.shape[0])
    b = np.ones(n.shape[0])
    i00 = i01 = i11 = np.ones(n.shape[0])
    for _ in range(iterations):
        mu = 1.0 / (1.0 + np.exp(-np.clip(a[:, None] + b[:, None] * x, -50, 50)))
        w = n * mu * (1 - mu)
        i00, i01, i11 = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
        r = sum_label - n * mu
        g0, g1 = r.sum(axis=1), (r * x).sum(axis=1)
        det = i00 * i11 - i01 * i01
        ok = usable & (det > 0)
        safe = np.where(ok, det, 1.0)
        d0 = np.where(ok, (i11 * g0 - i01 * g1) / safe, 0.0)
        d1 = np.where(ok, (i00 * g1 - i01 * g0) / safe, 0.0)
        damp = np.maximum(1.0, np.maximum(np.abs(d0), np.abs(d1)) / 5.0)
        a, b = a + d0 / damp, b + d1 / damp
        if float(np.max(np.abs(np.concatenate([d0, d1])), initial=0.0)) < 1e-8:
            break
    det = i00 * i11 - i01 * i01
    good = usable & (det > 0) & np.isfinite(b)
    var = np.where(good, i00 / np.where(good, det, 1.0), np.inf)
    good &= var > 0
    return np.where(good, b, np.nan), np.where(good, var, np.inf)
