"""A prediction histogram as arrays: per arm, one (sums x blocks x bins) tensor, built once.

Prediction (shift, point mass, stuck constants), calibration (equal-count buckets), NE (the
reliability slope) and staleness (the slope per block) all read the same histogram the same way:
one arm's sums per block and bin, over some blocks. Filtering the histogram's rows per arm and per
call costs a pandas mask over every row each time; :func:`hist_arrays` scatters the rows into one
tensor per arm once per histogram (and per block count), and every later read is a slice and a sum.
The toolbox hands every check of a subject and window the same histogram object, so they share it.

Sums add the rows in their order, as ``np.add.at`` and ``np.bincount`` over the rows did: the
histogram holds one row per (arm, block, bin), so every cell is that row's value, and a sum over
blocks adds them in block order either way.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import numpy.typing as npt
import pandas as pd

from tools.histograms import BINNED_SUMS

__all__ = ["HistArrays", "hist_arrays"]

_Floats = npt.NDArray[np.float64]


class HistArrays:
    """One histogram's sums per arm, block and bin (``BINNED_SUMS`` columns, NaN as 0).

    Blocks cover ``[0, n_blocks)``; rows outside it, and bins outside ``[0, n_bins)``, are left
    out (the reader's histogram has none).

    Args:
        hist: ``arm, block, bin`` and the :data:`tools.histograms.BINNED_SUMS` columns (those it
            lacks are zeros).
        n_blocks: Time blocks of the fetched range.
        n_bins: Bins of the histogram.
    """

    def __init__(self, hist: pd.DataFrame, n_blocks: int, n_bins: int) -> None:
        self.n_blocks, self.n_bins = n_blocks, n_bins
        self.columns: tuple[str, ...] = BINNED_SUMS
        self._tensors: dict[str, _Floats] = {}
        if not len(hist):
            return
        block = hist["block"].to_numpy(np.int64)
        bins = hist["bin"].to_numpy(np.int64)
        keep = (block >= 0) & (block < n_blocks) & (bins >= 0) & (bins < n_bins)
        everything = bool(keep.all())
        codes, arms = pd.factorize(hist["arm"] if everything else hist["arm"][keep])
        size = n_blocks * n_bins
        cell = block * n_bins + bins
        slot = codes * size + (cell if everything else cell[keep])
        shape = (len(arms), len(BINNED_SUMS), n_blocks, n_bins)
        out = np.zeros(shape)
        for j, col in enumerate(BINNED_SUMS):
            if col not in hist.columns:
                continue
            v = hist[col].to_numpy(np.float64)
            v = v if everything else v[keep]
            if np.isnan(v).any():
                v = np.where(np.isnan(v), 0.0, v)
            sums = np.bincount(slot, weights=v, minlength=len(arms) * size)
            out[:, j] = sums.reshape(len(arms), n_blocks, n_bins)
        self._tensors = {str(arm): out[i] for i, arm in enumerate(arms)}

    def tensor(self, arm: str) -> _Floats:
        """``arm``'s (columns x blocks x bins) sums, each column's matrix contiguous; zeros for
        an arm without rows (shared: callers must not modify it)."""
        hit = self._tensors.get(arm)
        if hit is None:
            shape = (len(self.columns), self.n_blocks, self.n_bins)
            hit = self._tensors[arm] = np.zeros(shape)
        return hit

    def matrix(self, arm: str, column: str) -> _Floats:
        """``arm``'s (blocks x bins) sums of one column (shared, read-only)."""
        out: _Floats = self.tensor(arm)[self.columns.index(column)]
        return out

    def bin_sums(self, arm: str, blocks: range | None) -> _Floats:
        """``arm``'s (bins x columns) sums over the blocks ``blocks`` (all when None), added
        block after block."""
        t = self.tensor(arm)
        if blocks is not None:
            inside = [b for b in blocks if 0 <= b < self.n_blocks]
            step = blocks.step == 1 or len(inside) < 2
            t = t[:, inside[0] : inside[-1] + 1] if inside and step else t[:, inside]
        if not t.shape[1]:
            return np.zeros((self.n_bins, len(self.columns)))
        out: _Floats = np.add.reduce(t, axis=1).T
        return out

    def frame(self, arm: str, blocks: range | None) -> pd.DataFrame:
        """:meth:`bin_sums` as :func:`tools.histograms.bin_sums` gives it: one row per bin."""
        index = pd.RangeIndex(self.n_bins, name="bin")
        return pd.DataFrame(self.bin_sums(arm, blocks), index=index, columns=pd.Index(self.columns))


_CACHE: dict[tuple[int, int, int], tuple[weakref.ref[pd.DataFrame], HistArrays]] = {}
_LOCK = threading.Lock()


def hist_arrays(hist: pd.DataFrame, n_blocks: int, n_bins: int) -> HistArrays:
    """The arrays of ``hist``, built once per histogram object (while it lives) and shape.

    The checks never modify a histogram they are handed; the toolbox hands every check of a
    subject and window the same one, so they share its arrays.
    """
    key = (id(hist), n_blocks, n_bins)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is hist:
            return hit[1]
    arrays = HistArrays(hist, n_blocks, n_bins)

    def forget(_: object, key: tuple[int, int, int] = key) -> None:
        with _LOCK:
            _CACHE.pop(key, None)

    with _LOCK:
        _CACHE[key] = (weakref.ref(hist, forget), arrays)
    return arrays
