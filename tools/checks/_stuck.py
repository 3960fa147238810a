"""Partial collapse: a share of the predictions stuck at one constant, scanned over time.

A model that emits a constant for some of its requests (the bias-only output, about the mean CTR)
barely moves the variance and never an invalid share; it fills one fine bin of the prediction
histogram. Per comparand (an arm against control over the same minutes, or against its own
baseline), every segment of the window's grid (:func:`tools.stats.segment_grid`) is tested: the
bin whose share grew most, a one-sided two-proportion z test, Bonferroni over the bins and the
segments; Holm over the comparands. Only a segment whose growth is material (``mass`` points of
the predictions more than either neighbouring bin, and ``ratio`` times the reference share) may
carry a verdict, so a popular value that is merely noisy, or a whole distribution that moved (a
rescaled model), never does. The bin must also tower over its neighbours in the test histogram
itself (its count against theirs, exact binomial): the p-value is the larger of the two tests.
A fault that began minutes before the alert is not diluted by the whole window: its own segment
is in the grid.

A constant confined to one dimension value (the production model stuck on web only) is located
by :func:`stuck_slices`: once the whole subject shows a significant growth of a bin (material or
not: 19 % of one country's predictions are 2 % of the model's), the bin's counts per dimension
value are read (one more statement, only then) and the same test runs inside each slice, its
materiality relative to the slice, Bonferroni over the slices on top of the scan's own family. A
value whose growth is significant and material while the rest of its dimension stays quiet
locates the finding there, as :func:`tools.checks._localize.localize` does for rates.

The power statement: the smallest stuck share the whole window could have shown, given the
reference share of the most popular bin and the family's correction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.special import bdtrc, ndtr, ndtri

from tools.checks._engine import Comparand, SubjectFrame
from tools.checks._hist import hist_arrays
from tools.stats import holm, segment_grid

__all__ = ["SliceCounts", "Stuck", "StuckSlice", "stuck_mde", "stuck_scan", "stuck_slices"]

_NEIGHBOURS = 3
"""Bins on each side a stuck bin must tower over in the test histogram itself."""


@dataclass(frozen=True)
class Stuck:
    """The most significant material growth of one bin for one comparand.

    Attributes:
        comparand: Test group and reference.
        bin: The histogram bin.
        value: Mean prediction in that bin (the constant).
        share_test: Its share of the test group's predictions over ``span``.
        share_ref: Its share of the reference's.
        n_test: Test predictions over ``span``.
        n_ref: Reference predictions.
        z: One-sided z score of the growth.
        p_value: Bonferroni over bins and segments.
        adjusted_p: Holm over the comparands.
        span: Epoch minutes ``[a, b)`` of the segment.
    """

    comparand: Comparand
    bin: int
    value: float
    share_test: float
    share_ref: float
    n_test: float
    n_ref: float
    z: float
    p_value: float
    adjusted_p: float
    span: tuple[int, int]

    @property
    def growth(self) -> float:
        """Share growth of the bin (test − reference)."""
        return self.share_test - self.share_ref


SliceCounts = Callable[[tuple[int, int]], pd.DataFrame]
"""Reads the bin counts per dimension value for bins ``(lo, hi)``, the rest pooled as bin -1
(:meth:`tools.telemetry.TelemetryReader.slice_histogram`)."""


@dataclass(frozen=True)
class StuckSlice:
    """A stuck bin located in one or more dimension values.

    Attributes:
        where: The dimension values (``{"platform": "web"}``).
        stuck: The bin's growth inside the first of them (shares of the slice's predictions;
            p-values Bonferroni over the slices on top of the scan's family).
        slices: How many dimension values were tested.
    """

    where: dict[str, str]
    stuck: Stuck
    slices: int


def _matrices(
    hist: pd.DataFrame, arm: str, n_blocks: int, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    arrays = hist_arrays(hist, n_blocks, n_bins)
    return arrays.matrix(arm, "n"), arrays.matrix(arm, "sum_pred")


def _blocks(fetch_start: int, span: tuple[int, int], block: int) -> slice:
    return slice(max((span[0] - fetch_start) // block, 0), -(-(span[1] - fetch_start) // block))


def _growth(t: np.ndarray, r: np.ndarray, mass: float, ratio: float) -> tuple[int, float] | None:
    """The bin with the largest material growth and its one-sided z, or None.

    Material: the bin grew by ``mass`` more than either neighbour did (a constant fills one bin;
    a rescaled or shifted distribution moves neighbouring bins alike) and to ``ratio`` times its
    reference share.
    """
    nt, nr = t.sum(), r.sum()
    if nt <= 0 or nr <= 0:
        return None
    st, sr = t / nt, r / nr
    g = st - sr
    neighbours = np.maximum(np.r_[0.0, g[:-1]], np.r_[g[1:], 0.0]).clip(min=0.0)
    ok = (g - neighbours >= mass) & (st >= ratio * sr)
    if not ok.any():
        return None
    pooled = (t + r) / (nt + nr)
    se = np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * (1 / nt + 1 / nr))
    z = np.where(ok, (st - sr) / se, -np.inf)
    k = int(np.argmax(z))
    return k, float(z[k])


def _peak_p(t: np.ndarray, k: int, width: int = _NEIGHBOURS) -> float:
    """How unlikely bin ``k`` towers over its ``width`` neighbours on each side, were the test
    histogram smooth there: given their total, its count is binomial with share 1/(bins)."""
    lo, hi = max(k - width, 0), min(k + width + 1, len(t))
    around = float(t[lo:hi].sum())
    bins = hi - lo
    x = round(float(t[k]))
    if bins < 2 or x <= 0:
        return 1.0
    return float(bdtrc(x - 1, round(around), 1.0 / bins))


def _family(frame: SubjectFrame, n_bins: int) -> int:
    """Tests a scan makes per comparand: every bin in every segment of the window's grid."""
    return n_bins * max(len(segment_grid(frame.window.length)), 1)


def stuck_scan(
    frame: SubjectFrame,
    hist: pd.DataFrame,
    n_bins: int,
    block: int,
    *,
    mass: float,
    ratio: float,
    min_n: float = 50.0,
) -> list[Stuck]:
    """Every comparand's most significant material bin growth over the window's segments.

    Args:
        frame: The subject (its comparands, window and arms).
        hist: Its prediction histogram (``arm, block, bin, n, sum_pred``).
        n_bins: Bins of the histogram.
        block: Minutes per histogram block.
        mass: Smallest growth of a bin's share that counts (0.03: 3 % of the predictions).
        ratio: The grown share must also be this multiple of the reference share.
        min_n: Fewest predictions per side in a segment.

    Returns:
        One :class:`Stuck` per comparand with a material growth somewhere, Holm-adjusted.
    """
    w = frame.window
    n_blocks = -(-(w.end - w.fetch_start) // block)
    mats = {arm: _matrices(hist, arm, n_blocks, n_bins) for arm in frame.arms}
    grid = [(w.start + a, w.start + b) for a, b in segment_grid(w.length)]
    family = _family(frame, n_bins)
    raw: list[Stuck] = []
    for comp in frame.comparands():
        (tn, ts), (rn, _) = mats[comp.test], mats[comp.ref]
        base = rn[_blocks(w.fetch_start, (w.fetch_start, w.start), block)].sum(axis=0)
        best: Stuck | None = None
        for span in grid:
            sl = _blocks(w.fetch_start, span, block)
            t = tn[sl].sum(axis=0)
            r = rn[sl].sum(axis=0) if comp.concurrent else base
            if t.sum() < min_n or r.sum() < min_n:
                continue
            found = _growth(t, r, mass, ratio)
            if found is None:
                continue
            k, z = found
            if best is not None and z <= best.z:
                continue
            value = float(ts[sl].sum(axis=0)[k] / t[k]) if t[k] > 0 else float("nan")
            # Both must hold (an intersection-union test: the larger p-value): the bin grew
            # against the reference, and it towers over its neighbours now, where a distribution
            # that moved as a whole (a rescaled model, few requests per bin) is smooth.
            p = min(1.0, max(float(ndtr(-z)), _peak_p(t, k)) * family)
            best = Stuck(
                comp,
                k,
                value,
                float(t[k] / t.sum()),
                float(r[k] / r.sum()),
                float(t.sum()),
                float(r.sum()),
                z,
                p,
                1.0,
                span,
            )
        if best is not None:
            raw.append(best)
    adjusted = holm([s.p_value for s in raw])
    return [
        Stuck(**{**s.__dict__, "adjusted_p": float(q)}) for s, q in zip(raw, adjusted, strict=True)
    ]


def _bin_test(
    t: np.ndarray, r: np.ndarray, nt: float, nr: float, mass: float, ratio: float
) -> tuple[float, float, float] | None:
    """The centre bin's growth in the vectors ``t`` and ``r`` (its ``_NEIGHBOURS`` on each side
    around it, ``nt`` and ``nr`` the totals): ``(growth, z, p)``, the p-value the larger of the
    growth's and the peak's (as in :func:`stuck_scan`), None when immaterial (as :func:`_growth`
    judges it) or too small a sample."""
    c = len(t) // 2
    if nt <= 0 or nr <= 0:
        return None
    st, sr = t / nt, r / nr
    g = st - sr
    neighbour = max(float(g[c - 1]), float(g[c + 1]), 0.0)
    if g[c] - neighbour < mass or st[c] < ratio * sr[c]:
        return None
    pooled = (t[c] + r[c]) / (nt + nr)
    se = float(np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / nt + 1 / nr)))
    z = float(g[c] / se)
    return float(g[c]), z, max(float(ndtr(-z)), _peak_p(t, c))


def stuck_slices(
    frame: SubjectFrame,
    found: Stuck,
    counts: SliceCounts,
    n_bins: int,
    block: int,
    *,
    mass: float,
    ratio: float,
    alpha: float,
    min_n: float = 50.0,
    quiet_share: float = 0.3,
) -> StuckSlice | None:
    """Where ``found``'s bin grew: the dimension values it is confined to, or None.

    Each dimension value with ``min_n`` predictions on each side is tested on the comparand
    and span of ``found``, its materiality (``mass``, ``ratio``) relative to the slice; the
    p-value is Bonferroni over the scan's family and over the slices tested. A value locates
    its dimension when it alone is significant at ``alpha`` and material there, and the rest of
    the dimension grew by less than ``quiet_share`` of its growth (a constant on web in every
    country locates the platform, not a country).
    """
    w = frame.window
    comp, k, c = found.comparand, found.bin, _NEIGHBOURS
    table = counts((k - c, k + c))
    n_blocks = -(-(w.end - w.fetch_start) // block)
    blocks = np.arange(n_blocks)
    span = blocks[_blocks(w.fetch_start, found.span, block)]
    baseline = blocks[_blocks(w.fetch_start, (w.fetch_start, w.start), block)]
    ref_span = span if comp.concurrent else baseline

    def side(arm: str, dim: str, within: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Per value of ``dim``: the counts of the bins around ``k``, and the total."""
        part = table[(table["arm"] == arm) & table["block"].isin(within)]
        by = part.groupby([dim, "bin"])["n"].sum().unstack(fill_value=0)
        near = by.reindex(columns=range(k - c, k + c + 1), fill_value=0.0)
        return [str(v) for v in by.index], near.to_numpy(float), by.sum(axis=1).to_numpy(float)

    family = _family(frame, n_bins)
    tested: list[tuple[str, str, Stuck | None, float]] = []
    for dim in frame.dims:
        t_vals, t_near, t_tot = side(comp.test, dim, span)
        r_vals, r_near, r_tot = side(comp.ref, dim, ref_span)
        r_row = {v: j for j, v in enumerate(r_vals)}
        for i, v in enumerate(t_vals):
            j = r_row.get(v)
            if j is None or t_tot[i] < min_n or r_tot[j] < min_n:
                continue
            inside = _bin_test(t_near[i], r_near[j], t_tot[i], r_tot[j], mass, ratio)
            here = None
            if inside is not None:
                share = float(t_near[i][c] / t_tot[i])
                here = replace(
                    found,
                    share_test=share,
                    share_ref=share - inside[0],
                    n_test=float(t_tot[i]),
                    n_ref=float(r_tot[j]),
                    z=inside[1],
                    p_value=inside[2],
                )
            # The rest of the dimension: its growth of the bin, material or not.
            n_rest, nr_rest = t_tot.sum() - t_tot[i], r_tot.sum() - r_tot[j]
            rest = float("nan")
            if n_rest > 0 and nr_rest > 0:
                t_rest = t_near[:, c].sum() - t_near[i][c]
                r_rest = r_near[:, c].sum() - r_near[j][c]
                rest = float(t_rest / n_rest - r_rest / nr_rest)
            tested.append((dim, v, here, rest))
    hits: dict[str, list[tuple[str, Stuck, bool]]] = {}
    for dim, value, here, rest in tested:
        if here is None:
            continue
        adjusted = min(1.0, here.p_value * family * len(tested))
        if adjusted >= alpha:
            continue
        here = replace(here, p_value=adjusted, adjusted_p=adjusted)
        quiet = bool(np.isfinite(rest) and rest < quiet_share * here.growth)
        hits.setdefault(dim, []).append((value, here, quiet))
    located = [(dim, h[0]) for dim, h in hits.items() if len(h) == 1 and h[0][2]]
    if not located:
        return None
    best = min(located, key=lambda x: x[1][1].adjusted_p)
    return StuckSlice({dim: h[0] for dim, h in located}, best[1][1], len(tested))


def stuck_mde(
    frame: SubjectFrame,
    hist: pd.DataFrame,
    n_bins: int,
    block: int,
    *,
    alpha: float,
    mass: float,
    ratio: float,
    power: float = 0.8,
) -> float | None:
    """The smallest stuck share the whole window could have shown (at ``power``), or None.

    For the weakest comparand: its test and reference predictions over the window, the most
    popular reference bin (a constant near the mean CTR lands in one), and the z the scan's
    correction demands (bins × segments × comparands). At least the materiality floor.
    """
    w = frame.window
    comps = frame.comparands()
    if not comps:
        return None
    grid = max(len(segment_grid(w.length)), 1)
    z_need = float(ndtri(1 - alpha / (n_bins * grid * len(comps)))) + float(ndtri(power))
    n_blocks = -(-(w.end - w.fetch_start) // block)
    worst: float | None = None
    for comp in comps:
        tn, _ = _matrices(hist, comp.test, n_blocks, n_bins)
        rn, _ = _matrices(hist, comp.ref, n_blocks, n_bins)
        t = tn[_blocks(w.fetch_start, (w.start, w.end), block)].sum(axis=0)
        ref_span = (w.start, w.end) if comp.concurrent else (w.fetch_start, w.start)
        r = rn[_blocks(w.fetch_start, ref_span, block)].sum(axis=0)
        nt, nr = float(t.sum()), float(r.sum())
        if nt <= 0 or nr <= 0:
            continue
        s0 = float((r / nr).max())
        d = max(mass, (ratio - 1) * s0)
        for _ in range(30):
            s = s0 + d / 2
            need = z_need * float(np.sqrt(s * (1 - s) * (1 / nt + 1 / nr)))
            if need <= d + 1e-9:
                break
            d = min(need, 1.0)
        # A constant in a share f of the predictions grows its bin by f · (1 − s0).
        f = min(d / max(1 - s0, 1e-9), 1.0)
        worst = f if worst is None else max(worst, f)
    return worst
