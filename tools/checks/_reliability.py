"""NE's sharpness half: a drop of the reliability slope, read from the prediction histogram.

NE mixes calibration (``Σ p / Σ y``) and refinement; a model that turned noisier but was
recalibrated keeps its mean calibration while its predictions become over-confident: the logistic
reliability slope falls. With ~1 % CTR, NE itself needs ~100k requests to see a 5 % step, while the
slope, fitted on every bin of the histogram, sees it in a few thousand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tools.changepoint import regression_onset
from tools.checks._engine import Comparand, SubjectFrame
from tools.checks._hist import hist_arrays
from tools.histograms import Reliability, reliability_of
from tools.stats import holm, p_from_z, segment_grid
from tools.telemetry import HistogramSpec

__all__ = ["SlopeFinding", "rescaled_slope", "slope_findings", "slope_ratio"]


@dataclass(frozen=True)
class SlopeFinding:
    """The reliability slope of one comparand over its most telling segment."""

    comparand: Comparand
    test: Reliability
    ref: Reliability
    ratio: float
    z: float
    p_value: float
    adjusted_p: float
    focus: tuple[int, int]
    onset: int | None
    culprit: str | None


_FIT_SUMS = ("n", "sum_pred", "sum_label")
"""The bins' sums a reliability fit reads, in :func:`tools.histograms.reliability_of`'s order."""


class _Cube:
    """One arm's histogram as block x bin matrices of n, Σ prediction and Σ label."""

    def __init__(self, hist: pd.DataFrame, arm: str, n_blocks: int, n_bins: int) -> None:
        arrays = hist_arrays(hist, n_blocks, n_bins)
        self.m = {col: arrays.matrix(arm, col) for col in _FIT_SUMS}

    def binned(self, blocks: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bin, the sums of n, Σ prediction and Σ label over ``blocks``."""
        sl = slice(max(blocks.start, 0), max(blocks.stop, 0))
        n, pred, label = (self.m[col][sl].sum(axis=0) for col in _FIT_SUMS)
        return n, pred, label

    def spread(self) -> np.ndarray:
        """Variance of logit(prediction) in each block (NaN for empty blocks)."""
        n, s = self.m["n"], self.m["sum_pred"]
        p = np.clip(np.divide(s, n, out=np.zeros_like(s), where=n > 0), 1e-9, 1 - 1e-9)
        x = np.log(p / (1 - p))
        tot = n.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (n * x).sum(axis=1) / tot
            out: np.ndarray = (n * (x - mean[:, None]) ** 2).sum(axis=1) / tot
        return out


def _blocks(fetch_start: int, span: tuple[int, int], block: int) -> range:
    return range((span[0] - fetch_start) // block, -(-(span[1] - fetch_start) // block))


def _spread_onset(
    cubes: dict[str, _Cube], comp: Comparand, block: int, fetch_start: int
) -> int | None:
    """Where the test group's logit spread stepped up (vs its reference arm, if concurrent)."""
    series = cubes[comp.test].spread()
    baseline = cubes[comp.ref].spread() if comp.concurrent else None
    found, _ = regression_onset(
        series, baseline, direction="increase", z_threshold=3.0, min_duration=max(2, 5 // block)
    )
    return None if found is None else fetch_start + found * block


def slope_findings(
    frame: SubjectFrame,
    hist: pd.DataFrame,
    spec: HistogramSpec,
    block: int,
) -> list[SlopeFinding]:
    """Scan each comparand's segments for the largest drop of the reliability slope.

    Segments are the window's (Bonferroni over them); comparands get Holm over the family.
    Arm-control gaps are two-sided, the lower slope being the culprit; baselines one-sided.
    The onset is where the test group's logit spread stepped up, block by block, against its
    reference (:func:`tools.changepoint.regression_onset`).
    """
    w = frame.window
    n_blocks = -(-(w.end - w.fetch_start) // block)
    cubes = {arm: _Cube(hist, arm, n_blocks, spec.n_bins) for arm in frame.arms}
    grid = segment_grid(w.length)
    raw: list[tuple[Comparand, Reliability, Reliability, float, float, tuple[int, int]]] = []
    # An arm's fit over some blocks serves every comparand that reads it (the same numbers).
    fits: dict[tuple[str, int, int], Reliability | None] = {}

    def fit(arm: str, blocks: range) -> Reliability | None:
        key = (arm, blocks.start, blocks.stop)
        if key not in fits:
            fits[key] = reliability_of(*cubes[arm].binned(blocks))
        return fits[key]

    spreads: dict[Comparand, int | None] = {}
    for comp in frame.comparands():
        # Also test from where the predictions' spread stepped up: chosen from the predictions
        # alone, so the slope test (labels given predictions) stays valid for it.
        spread_at = spreads[comp] = _spread_onset(cubes, comp, block, w.fetch_start)
        segments = list(grid)
        if spread_at is not None and w.start <= spread_at < w.end - 5:
            segments.append((spread_at - w.start, w.length))
        base = None
        if not comp.concurrent:
            base = fit(comp.ref, _blocks(w.fetch_start, (w.fetch_start, w.start), block))
            if base is None:
                continue
        best = None
        for a, b in segments:
            span = (w.start + a, w.start + b)
            blocks = _blocks(w.fetch_start, span, block)
            t = fit(comp.test, blocks)
            r = base or fit(comp.ref, blocks)
            if t is None or r is None:
                continue
            z = (t.slope - r.slope) / float(np.sqrt(t.slope_se**2 + r.slope_se**2))
            p = p_from_z(z, "both" if comp.concurrent else "down")
            if best is None or p < best[3]:
                best = (t, r, z, p, span)
        if best is not None:
            t, r, z, p, span = best
            raw.append((comp, t, r, z, min(1.0, p * len(segments)), span))
    adjusted = holm([x[4] for x in raw])
    out = []
    for (comp, t, r, z, p, span), adj in zip(raw, adjusted, strict=True):
        ratio = t.slope / r.slope if r.slope > 0 else float("nan")
        if comp.concurrent:
            culprit: str | None = comp.test if t.slope <= r.slope else comp.ref
        else:
            culprit = comp.test if z < 0 else None
        onset = spreads[comp] if culprit else None
        if onset is None or not w.fetch_start <= onset < span[1]:
            onset = span[0]
        out.append(SlopeFinding(comp, t, r, ratio, z, p, float(adj), span, onset, culprit))
    return out


def slope_ratio(
    frame: SubjectFrame,
    hist: pd.DataFrame,
    spec: HistogramSpec,
    block: int,
    comp: Comparand,
    span: tuple[int, int],
) -> float | None:
    """The reliability slope of ``comp``'s test group over ``span`` ÷ its reference's (the
    reference arm over the same minutes, or the test group over the baseline)."""
    w = frame.window
    n_blocks = -(-(w.end - w.fetch_start) // block)
    ref_span = span if comp.concurrent else (w.fetch_start, w.start)
    t = reliability_of(
        *_Cube(hist, comp.test, n_blocks, spec.n_bins).binned(_blocks(w.fetch_start, span, block))
    )
    r = reliability_of(
        *_Cube(hist, comp.ref, n_blocks, spec.n_bins).binned(
            _blocks(w.fetch_start, ref_span, block)
        )
    )
    if t is None or r is None or not r.slope > 0:
        return None
    return float(t.slope / r.slope)


def rescaled_slope(
    hist: pd.DataFrame,
    spec: HistogramSpec,
    block: int,
    fetch_start: int,
    arm: str,
    span: tuple[int, int],
    share: float,
    factor: float,
) -> tuple[Reliability, float] | None:
    """``arm``'s reliability over ``span`` and its slope had ``share`` of its predictions been
    multiplied by ``factor``.

    The arm's bins over ``span`` stand for the sound model; the rescaled share is the same bins
    with every prediction times ``factor`` (at most 1) and the labels unchanged, fitted together
    with the rest. A rescaling of a slice mixes shifted and unshifted predictions in every bin,
    which flattens the pooled slope as noise would; this is how far, for a slice whose requests
    are spread over the bins as the arm's are.
    """
    n_blocks = max(-(-(span[1] - fetch_start) // block), 0)
    n, pred, label = _Cube(hist, arm, n_blocks, spec.n_bins).binned(
        _blocks(fetch_start, span, block)
    )
    keep = n > 0
    n, pred, label = n[keep], pred[keep], label[keep]
    base = reliability_of(n, pred, label)
    if base is None or not base.slope > 0:
        return None
    scaled = np.minimum(pred * factor, n)
    mixed = reliability_of(
        np.r_[n * (1 - share), n * share],
        np.r_[pred * (1 - share), scaled * share],
        np.r_[label * (1 - share), label * share],
    )
    return None if mixed is None else (base, float(mixed.slope))
