"""Change points and regression onsets in per-minute metric series.

Two pure functions over arrays:

* :func:`detect_change_points` segments a series (``(n,)`` or ``(n, d)``) into pieces that are
  each a straight line plus Gaussian noise with their own variance, by exact penalised likelihood
  (PELT, Killick et al. 2012) with the BIC penalty. The same defaults serve every series: the
  values are standardised, isolated outliers are replaced by a local median (a single wild minute
  is not a change), and the noise variance of a segment is floored at ``resolution`` times the
  series' variance, so that a perfectly smooth curve is not cut into many straight pieces.
* :func:`regression_onset` finds where a sustained shift of ``series - baseline`` starts (test minus
  control, or a metric minus its seasonal baseline), with a piecewise-constant model whose noise
  level is estimated robustly from first differences and corrected for autocorrelation.

Indices are 0-based; a change point is the index where a new segment starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tools.errors import ConfigError

__all__ = ["Direction", "OnsetStats", "detect_change_points", "regression_onset"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Direction = Literal["increase", "decrease", "either"]
_Cost = Callable[[IntArray, IntArray], FloatArray]
"""Cost of each segment ``[a, b)`` for a column of starts ``(k, 1)`` and a row of ends ``(1, m)``:
a ``(k, m)`` matrix (entries with ``b - a`` under the minimum size are never read)."""

_MAD_TO_SD = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal sample -> its sd


# --- input handling -------------------------------------------------------------------------


def _as_matrix(x: Any, field: str) -> FloatArray:
    """Return ``x`` as a float (n, d) matrix with NaN gaps filled by linear interpolation.

    All-NaN columns are dropped (they carry no information); a 3-D input or non-numbers raise
    :class:`ConfigError` naming ``field``.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, type(x).__name__, "must be an array of numbers") from exc
    if arr.ndim == 0 or arr.ndim > 2:
        raise ConfigError(field, arr.shape, "must be a 1-D series or an (n, d) matrix")
    if arr.ndim == 1:
        arr = arr[:, None]
    arr = np.where(np.isinf(arr), np.nan, arr)
    keep = [j for j in range(arr.shape[1]) if np.isfinite(arr[:, j]).any()]
    arr = arr[:, keep].copy()
    idx = np.arange(arr.shape[0])
    for j in range(arr.shape[1]):
        col = arr[:, j]
        bad = np.isnan(col)
        if bad.any():
            col[bad] = np.interp(idx[bad], idx[~bad], col[~bad])
    return arr


def _mad(v: FloatArray) -> float:
    if v.size == 0:
        return 0.0
    return float(np.median(np.abs(v - np.median(v))) * _MAD_TO_SD)


def _hampel(y: FloatArray, half_window: int, z: float) -> FloatArray:
    """Replace points further than ``z`` noise sds from their local median by that median.

    The noise sd comes from the MAD of first differences, which level shifts barely move.
    """
    n = y.shape[0]
    if n < 2 * half_window + 1:
        return y
    out = y.copy()
    pad = np.pad(y, ((half_window, half_window), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, 2 * half_window + 1, axis=0)
    med = np.median(windows, axis=-1)
    for j in range(y.shape[1]):
        sd = _mad(np.diff(y[:, j])) / math.sqrt(2.0)
        if sd <= 0:
            continue
        wild = np.abs(y[:, j] - med[:, j]) > z * sd
        out[wild, j] = med[wild, j]
    return out


def _standardise(y: FloatArray) -> FloatArray:
    sd = y.std(axis=0)
    sd[sd == 0] = 1.0
    out: FloatArray = (y - y.mean(axis=0)) / sd
    return out


def _remove_season(y: FloatArray, period: int) -> FloatArray:
    """Subtract the seasonal profile: per phase, the median of the series minus its moving average.

    Needs three cycles (else the series is returned as is); the profile is smoothed over
    ``period // 24`` phases (an hour of a daily cycle in minutes).
    """
    n = y.shape[0]
    if period < 2 or n < 3 * period:
        return y
    width = period // 24
    phase = np.arange(n) % period
    # the centred moving average exists only where a whole period fits: use only those points
    lo = period // 2
    valid_phase = phase[lo : lo + n - period + 1]
    kernel = np.ones(period) / period
    out = y.copy()
    for j in range(y.shape[1]):
        col = y[:, j]
        detrended = col[lo : lo + n - period + 1] - np.convolve(col, kernel, mode="valid")
        profile = np.array([np.median(detrended[valid_phase == p]) for p in range(period)])
        if width > 1:  # a smooth cycle: average neighbouring phases to damp the noise
            wrapped = np.concatenate([profile[-(width // 2) :], profile, profile[: width // 2]])
            profile = np.convolve(wrapped, np.ones(width) / width, mode="same")[
                width // 2 : width // 2 + period
            ]
        out[:, j] = col - (profile - profile.mean())[phase]
    return out


# --- segment costs and PELT -----------------------------------------------------------------


class _Sums:
    """Cumulative sums that give any segment's least-squares residual in O(1)."""

    def __init__(self, y: FloatArray) -> None:
        n = y.shape[0]
        t = np.repeat((np.arange(n, dtype=np.float64) / max(n, 1))[:, None], y.shape[1], axis=1)

        def csum(a: FloatArray) -> FloatArray:
            return np.concatenate([np.zeros((1, a.shape[1])), np.cumsum(a, axis=0)])

        self.t, self.tt, self.y = csum(t), csum(t * t), csum(y)
        self.yy, self.ty = csum(y * y), csum(t * y)
        # A series of one dimension also as 1-D running sums: the same numbers, read as vectors.
        self.flat = _Sums1(self) if y.shape[1] == 1 else None

    def rss_mean(self, a: IntArray, b: int | IntArray) -> FloatArray:
        """Residual sum of squares around each segment's mean, shape (len(a), d)."""
        return _rss_mean(self, a, b, (b - a)[:, None].astype(np.float64))

    def rss_line(self, a: IntArray, b: int | IntArray) -> FloatArray:
        """Residual sum of squares around each segment's least-squares line, shape (len(a), d)."""
        return _rss_line(self, a, b, (b - a)[:, None].astype(np.float64))


class _Sums1:
    """:class:`_Sums` of a one-dimensional series on 1-D arrays: any start/end shapes that
    broadcast (a column of starts against a row of ends gives a matrix)."""

    def __init__(self, sums: _Sums) -> None:
        self.t, self.tt, self.y = sums.t[:, 0], sums.tt[:, 0], sums.y[:, 0]
        self.yy, self.ty = sums.yy[:, 0], sums.ty[:, 0]

    def rss_mean(self, a: IntArray, b: IntArray) -> FloatArray:
        """:meth:`_Sums.rss_mean` of the one dimension."""
        return _rss_mean(self, a, b, (b - a).astype(np.float64))

    def rss_line(self, a: IntArray, b: IntArray) -> FloatArray:
        """:meth:`_Sums.rss_line` of the one dimension."""
        return _rss_line(self, a, b, (b - a).astype(np.float64))


def _rss_mean(s: _Sums | _Sums1, a: IntArray, b: int | IntArray, m: FloatArray) -> FloatArray:
    """Residual sum of squares around the mean of each segment ``[a, b)`` of length ``m``."""
    sy = s.y[b] - s.y[a]
    out: FloatArray = np.maximum(s.yy[b] - s.yy[a] - sy * sy / m, 0.0)
    return out


def _rss_line(s: _Sums | _Sums1, a: IntArray, b: int | IntArray, m: FloatArray) -> FloatArray:
    """Residual sum of squares around the least-squares line of each segment ``[a, b)``."""
    st, sy = s.t[b] - s.t[a], s.y[b] - s.y[a]
    stt = s.tt[b] - s.tt[a] - st * st / m
    sty = s.ty[b] - s.ty[a] - st * sy / m
    syy = s.yy[b] - s.yy[a] - sy * sy / m
    ok = stt > 1e-12
    slope_term = np.where(ok, sty * sty / np.where(ok, stt, 1.0), 0.0)
    out: FloatArray = np.maximum(syy - slope_term, 0.0)
    return out


PELT_CHUNK = 16
"""Ends whose segment costs :func:`_pelt` computes in one call of the cost function."""


def _pelt(cost: _Cost, n: int, penalty: float, min_size: int) -> list[int]:
    """Exact optimal segmentation minimising total cost + penalty per change (PELT).

    The segment ending at ``b`` starts at a candidate ``a <= b - min_size``. The costs of a
    chunk of consecutive ends against every candidate alive at its start and every candidate
    its ends add are computed together (one call of ``cost``); then each end, in order, adds
    its candidate (``b - min_size``, whose optimum is known by then), takes its minimum over
    the live candidates and prunes, as one by one. A candidate is live only from its own end
    on, where its segments are at least ``min_size`` long, so the costs of shorter (or empty)
    segments the chunk also computes are never read.
    """
    if n < 2 * min_size:
        return []
    best = np.full(n + 1, np.inf)
    best[0] = -penalty
    last = np.zeros(n + 1, dtype=np.int64)
    cands = np.zeros(0, dtype=np.int64)
    first = min_size
    while first <= n:
        ends = np.arange(first, min(first + max(PELT_CHUNK, min_size), n + 1), dtype=np.int64)
        # The candidates alive at the chunk's start, then the one each end adds (ascending).
        pool = np.concatenate([cands, ends - min_size])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            costs = np.ascontiguousarray(cost(pool[:, None], ends[None, :]).T)  # one row per end
        # Candidates not live yet at an end (their segments too short) are masked out below:
        # a finite placeholder keeps the sums quiet.
        costs[pool[None, :] > ends[:, None] - min_size] = 0.0
        start = best[pool]  # a candidate's optimum, read when it joins
        alive = np.zeros(pool.size, dtype=bool)
        alive[: cands.size] = True
        for j, b in enumerate(ends.tolist()):
            k = cands.size + j
            alive[k] = True
            start[k] = best[pool[k]]
            total = np.where(alive, start + costs[j], np.inf)
            i = int(total.argmin())
            if total[i] == np.inf:  # every live start is infinite: the first live one, as is
                i = int(alive.argmax())
            best[b] = total[i] + penalty
            last[b] = pool[i]
            # a start that cannot beat the optimum now never will (cost is sub-additive)
            alive &= total <= best[b]
        cands = pool[alive]
        first += ends.size
    cps: list[int] = []
    b = n
    while b > 0:
        a = int(last[b])
        if a > 0:
            cps.append(a)
        b = a
    return sorted(cps)


def _segment(y: FloatArray, *, penalty: float, min_size: int, resolution: float) -> list[int]:
    sums = _Sums(y)
    floor = resolution

    def cost(a: IntArray, b: IntArray) -> FloatArray:
        if sums.flat is not None:  # one dimension: the same arithmetic on (k, m) matrices
            m1 = (b - a).astype(np.float64)
            return np.asarray(m1 * np.log(sums.flat.rss_line(a, b) / m1 + floor))
        a2, b2 = np.broadcast_arrays(a, b)
        ia, ib = a2.ravel(), b2.ravel()
        m = (ib - ia)[:, None].astype(np.float64)
        out = (m * np.log(sums.rss_line(ia, ib) / m + floor)).sum(axis=1)
        return np.asarray(out).reshape(a2.shape)

    return _pelt(cost, y.shape[0], penalty, min_size)


def detect_change_points(
    x: Any,
    *,
    penalty: float | None = None,
    min_size: int = 5,
    resolution: float = 0.05,
    outlier_z: float = 5.0,
    period: int | None = None,
    max_points: int = 4000,
) -> list[int]:
    """Find where a series changes level, slope or noise, with one default for every series.

    Model: each segment is a line plus Gaussian noise with its own variance (3 parameters per
    dimension); the segmentation maximises the likelihood minus ``penalty`` per change point,
    found exactly by PELT. The series is standardised per dimension first.

    Args:
        x: The series, shape ``(n,)`` or ``(n, d)`` (a multivariate series changes at once in all
            dimensions). NaN gaps are interpolated; all-NaN dimensions are ignored.
        penalty: Cost of one change point in units of twice the log-likelihood. Default: the BIC,
            ``(3 d + 1) * log(n)``.
        min_size: Shortest segment, in points.
        resolution: Floor of a segment's noise variance as a share of the series' variance; shifts
            much smaller than ``sqrt(resolution)`` series sds are ignored. Must be > 0.
        outlier_z: Points further than this many noise sds from their 5-point median are treated as
            outliers (replaced by that median) before segmenting; ``0`` disables it.
        period: If given, a seasonal profile of this many points (e.g. 1440 for a daily cycle in
            minutes) is removed first.
        max_points: Longer series are segmented on block means of ``ceil(n / max_points)`` points,
            then each change point is placed exactly within its block.

    Returns:
        Sorted 0-based indices where a new segment starts (never 0); empty for an empty, constant
        or too-short series.

    Raises:
        ConfigError: For a non-numeric or >2-D input, or an invalid setting.
    """
    if min_size < 2:
        raise ConfigError("min_size", min_size, "must be at least 2")
    if not resolution > 0:
        raise ConfigError("resolution", resolution, "must be > 0")
    if outlier_z < 0:
        raise ConfigError("outlier_z", outlier_z, "must be >= 0 (0 disables outlier removal)")
    if max_points < 4 * min_size:
        raise ConfigError(
            "max_points", max_points, f"must be at least 4 * min_size = {4 * min_size}"
        )
    if period is not None and period < 2:
        raise ConfigError("period", period, "must be at least 2 points")
    y = _as_matrix(x, "x")
    n, d = y.shape
    if d == 0 or n < 2 * min_size:
        return []
    if outlier_z > 0:
        y = _hampel(y, 2, outlier_z)
    if period is not None:
        y = _remove_season(y, period)
    y = _standardise(y)
    if not np.any(y.std(axis=0) > 0):
        return []
    block = math.ceil(n / max_points)
    if block > 1:
        return _detect_blocked(y, block, penalty, min_size, resolution)
    pen = (3 * d + 1) * math.log(n) if penalty is None else penalty
    return _segment(y, penalty=pen, min_size=min_size, resolution=resolution)


def _detect_blocked(
    y: FloatArray, block: int, penalty: float | None, min_size: int, resolution: float
) -> list[int]:
    """Segment block means, then move each change to the best split inside its block."""
    n, d = y.shape
    nb = n // block
    means = y[: nb * block].reshape(nb, block, d).mean(axis=1)
    pen = (3 * d + 1) * math.log(n) if penalty is None else penalty
    coarse = _segment(
        means, penalty=pen, min_size=max(2, math.ceil(min_size / block)), resolution=resolution
    )
    sums = _Sums(y)
    bounds = [0] + [c * block for c in coarse] + [n]
    refined: list[int] = []
    for i, c in enumerate(coarse, start=1):
        lo, hi = (
            max(bounds[i - 1] + min_size, c * block - block),
            min(bounds[i + 1] - min_size, c * block + block),
        )
        if lo > hi:
            refined.append(c * block)
            continue
        starts = np.arange(lo, hi + 1, dtype=np.int64)
        left = np.array([sums.rss_line(np.array([bounds[i - 1]]), int(s))[0].sum() for s in starts])
        right = np.array(
            [sums.rss_line(np.array([int(s)]), bounds[i + 1])[0].sum() for s in starts]
        )
        refined.append(int(starts[int(np.argmin(left + right))]))
    return sorted(set(refined))


# --- regression onset -----------------------------------------------------------------------


@dataclass(frozen=True)
class OnsetStats:
    """What :func:`regression_onset` measured.

    Attributes:
        onset: Index where the sustained shift starts, or None.
        end: Index where it ended (first index back to normal), or None if it lasts to the end.
        reference_mean: Mean of the residual before the onset (the first segment).
        shifted_mean: Mean of the residual from the onset to its end.
        shift: ``shifted_mean - reference_mean``.
        z: The shift in units of its standard error (noise corrected for autocorrelation).
        noise_sd: Robust per-point noise sd of the residual.
        autocorrelation: Lag-1 autocorrelation used to widen the standard error.
        change_points: All change points of the residual's piecewise-constant fit.
        n: Number of points used.
        reason: Why there is no onset, when there is none ("" otherwise).
    """

    onset: int | None
    end: int | None
    reference_mean: float
    shifted_mean: float
    shift: float
    z: float
    noise_sd: float
    autocorrelation: float
    change_points: tuple[int, ...]
    n: int
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for ``CheckResult.params`` or evidence)."""
        out = asdict(self)
        out["change_points"] = list(self.change_points)
        return out


def _residual(series: Any, baseline: Any) -> FloatArray:
    y = np.asarray(series, dtype=np.float64) if series is not None else np.zeros(0)
    if y.ndim != 1:
        raise ConfigError("series", y.shape, "must be a 1-D series")
    if baseline is None:
        return y
    base = np.asarray(baseline, dtype=np.float64)
    if base.shape != y.shape:
        raise ConfigError("baseline", base.shape, f"must have the series' shape {y.shape}")
    return y - base


def _noise(r: FloatArray) -> tuple[float, float]:
    """Robust noise sd (MAD of first differences) and a lag-1 autocorrelation from differences.

    For AR(1) noise with coefficient phi, first differences have lag-1 autocorrelation
    ``-(1 - phi) / 2``; differences are insensitive to level shifts, so the estimate is too.
    """
    dif = np.diff(r)
    sd = _mad(dif) / math.sqrt(2.0)
    if dif.size < 3 or np.std(dif) == 0:
        return sd, 0.0
    rho_d = float(np.corrcoef(dif[:-1], dif[1:])[0, 1])
    phi = min(max(1.0 + 2.0 * rho_d, 0.0), 0.9)
    # under AR(1) the MAD of differences sees sd * sqrt(2 (1 - phi)); undo that
    sd = sd / math.sqrt(max(1.0 - phi, 1e-3))
    return sd, phi


def regression_onset(
    series: Any,
    baseline: Any = None,
    *,
    direction: Direction = "either",
    z_threshold: float = 5.0,
    min_shift: float = 0.0,
    min_duration: int = 5,
    penalty: float | None = None,
) -> tuple[int | None, OnsetStats]:
    """Find where a sustained shift of ``series - baseline`` begins.

    The residual (test minus control, or a metric minus its seasonal baseline, so a diurnal curve
    cancels) is fitted with piecewise-constant means by PELT, with the noise level estimated from
    first differences and corrected for lag-1 autocorrelation. The reference level is the first
    segment. The onset is the start of the first run of segments, each at least ``min_duration``
    points long in total, whose mean differs from the reference in ``direction`` by more than
    ``min_shift`` and by ``z_threshold`` standard errors.

    Args:
        series: Per-minute values, shape ``(n,)``. NaN gaps are interpolated.
        baseline: Same shape: the control arm or a seasonal baseline; None if ``series`` already is
            a difference.
        direction: ``"increase"``, ``"decrease"`` or ``"either"``.
        z_threshold: Minimum shift in standard errors of the two means.
        min_shift: Minimum absolute shift, in the series' units (practical significance).
        min_duration: Shortest segment, and shortest shift, in points.
        penalty: Cost of a change point (in squared-noise units). Default ``3 log n``.

    Returns:
        ``(onset index or None, OnsetStats)``.

    Raises:
        ConfigError: On a bad shape, direction or setting.
    """
    if direction not in ("increase", "decrease", "either"):
        raise ConfigError("direction", direction, "must be 'increase', 'decrease' or 'either'")
    if min_duration < 2:
        raise ConfigError("min_duration", min_duration, "must be at least 2")
    if z_threshold < 0 or min_shift < 0:
        raise ConfigError("z_threshold", (z_threshold, min_shift), "thresholds must be >= 0")
    r = _residual(series, baseline)
    n = int(r.size)

    def none(reason: str, **kw: Any) -> tuple[None, OnsetStats]:
        base: dict[str, Any] = {
            "onset": None,
            "end": None,
            "reference_mean": math.nan,
            "shifted_mean": math.nan,
            "shift": 0.0,
            "z": 0.0,
            "noise_sd": math.nan,
            "autocorrelation": 0.0,
            "change_points": (),
            "n": n,
            "reason": reason,
        }
        base.update(kw)
        return None, OnsetStats(**base)

    finite = np.isfinite(r)
    if int(finite.sum()) < 2 * min_duration:
        return none(f"too few finite points ({int(finite.sum())} < {2 * min_duration})")
    r = _as_matrix(r, "series")[:, 0]
    sd, phi = _noise(r)
    if sd <= 0:
        sd = float(np.std(r))
    if sd <= 0:
        return none("the residual is constant", noise_sd=0.0, reference_mean=float(r[0]))
    sums = _Sums(r[:, None])

    flat = sums.flat
    assert flat is not None  # a 1-D residual

    def cost(a: IntArray, b: IntArray) -> FloatArray:
        return np.asarray(flat.rss_mean(a, b) * (1.0 - phi) / ((1.0 + phi) * sd * sd))

    pen = 3.0 * math.log(n) if penalty is None else penalty
    cps = _pelt(cost, n, pen, min_duration)
    bounds = [0, *cps, n]
    ref = float(r[: bounds[1]].mean())
    lr_sd = sd * math.sqrt((1.0 + phi) / (1.0 - phi))

    def shifted(a: int, b: int) -> tuple[bool, float, float]:
        mean = float(r[a:b].mean())
        diff = mean - ref
        se = lr_sd * math.sqrt(1.0 / bounds[1] + 1.0 / (b - a))
        z = diff / se
        ok_dir = {"increase": diff > 0, "decrease": diff < 0, "either": True}[direction]
        return ok_dir and abs(z) >= z_threshold and abs(diff) > min_shift, mean, z

    for i in range(1, len(bounds) - 1):
        if not shifted(bounds[i], bounds[i + 1])[0]:
            continue
        j = i + 1
        sign = np.sign(r[bounds[i] : bounds[i + 1]].mean() - ref)
        while j < len(bounds) - 1:
            ok, mean_j, _ = shifted(bounds[j], bounds[j + 1])
            if not ok or np.sign(mean_j - ref) != sign:
                break
            j += 1
        onset, stop = bounds[i], bounds[j]
        if stop - onset < min_duration:
            continue
        _, mean, z = shifted(onset, stop)
        return onset, OnsetStats(
            onset=onset,
            end=None if stop == n else stop,
            reference_mean=ref,
            shifted_mean=mean,
            shift=mean - ref,
            z=z,
            noise_sd=sd,
            autocorrelation=phi,
            change_points=tuple(cps),
            n=n,
        )
    return none(
        "no sustained shift beyond the thresholds",
        noise_sd=sd,
        autocorrelation=phi,
        change_points=tuple(cps),
        reference_mean=ref,
    )
