"""The arrays behind a :class:`tools.checks._frame.SubjectFrame`: codes, offsets, columns.

A cube's key columns become integer codes into their sorted values (factorised once, the model
keys only when read), its minutes offsets into the fetched range, and its additive columns one
float matrix; sums per group are ``bincount`` passes over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["Core", "binned", "core_of"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


class Core:
    """The arrays behind a frame: key codes, minute offsets and the additive columns.

    ``columns`` is (additive columns x rows), each column contiguous: ``bincount`` reads it
    without a copy. A slice's core takes its parent's rows lazily.
    """

    def __init__(
        self,
        columns: Floats | Callable[[], Floats],
        offsets: Ints,
        codes: Mapping[str, Ints],
        uniques: dict[str, pd.Index],
    ) -> None:
        self._columns = columns
        self.offsets = offsets  # minute - fetch_start; rows outside the fetched range are -1
        self.codes = codes  # key column -> code per row (into ``uniques[key]``, sorted)
        self.uniques = uniques
        self._lookup: dict[str, dict[str, int]] = {}
        self._labels: dict[str, npt.NDArray[np.object_]] = {}

    def code(self, key: str, value: str) -> int:
        """The code of ``value`` in key column ``key``, or -1 when it never occurs."""
        table = self._lookup.get(key)
        if table is None:
            table = self._lookup[key] = {v: i for i, v in enumerate(self.labels(key))}
        return table.get(value, -1)

    def labels(self, key: str) -> npt.NDArray[np.object_]:
        """``uniques[key]`` as an array of Python strings (reading a string index value by
        value costs a pandas call each; shared, read-only)."""
        hit = self._labels.get(key)
        if hit is None:
            self.codes[key]  # a model key is factorised on first read: its values with it
            hit = self._labels[key] = np.array([str(v) for v in self.uniques[key]], dtype=object)
        return hit

    @property
    def columns(self) -> Floats:
        """The additive columns (NaN already 0, as pandas' sums skip it), one row each."""
        if callable(self._columns):
            self._columns = self._columns()
        return self._columns

    def subset(self, keep: Mask) -> Core:
        """The core of the rows ``keep`` selects (their columns taken when first read)."""
        rows = np.flatnonzero(keep)
        out = Core(
            lambda: self.columns[:, rows],
            self.offsets[rows],
            Codes(self.codes, rows),
            self.uniques,
        )
        out._lookup, out._labels = self._lookup, self._labels
        return out


class Codes(Mapping[str, Ints]):
    """A subset's key codes, taken from its parent's when first read."""

    def __init__(self, parent: Mapping[str, Ints], rows: Ints) -> None:
        self._parent, self._rows = parent, rows
        self._taken: dict[str, Ints] = {}

    def __getitem__(self, key: str) -> Ints:
        hit = self._taken.get(key)
        if hit is None:
            hit = self._taken[key] = self._parent[key][self._rows]
        return hit

    def __iter__(self) -> Iterator[str]:
        return iter(self._parent)

    def __len__(self) -> int:
        return len(self._parent)


def binned(core: Core, group: Ints, n_groups: int, length: int) -> Floats:
    """Sums per group x minute x column over ``length`` minutes (rows added in order; silent
    minutes are 0)."""
    ok = core.offsets >= 0
    slot = group[ok] * length + core.offsets[ok]
    columns = core.columns[:, ok] if not ok.all() else core.columns
    size = n_groups * length
    out = np.empty((size, len(columns)))
    for j, column in enumerate(columns):
        out[:, j] = np.bincount(slot, weights=column, minlength=size)
    return out.reshape(n_groups, length, len(columns))


def core_of(
    cube: pd.DataFrame, fetch_start: int, length: int, names: Sequence[str], dims: Sequence[str]
) -> Core:
    """The arrays of ``cube``: additive columns ``names``, minutes from ``fetch_start``, keys."""
    columns = np.empty((len(names), len(cube)))
    for j, name in enumerate(names):
        if name == "n_served" and "n_served" not in cube.columns:
            columns[j] = cube["n"].to_numpy(np.float64)
            if "n_error" in cube.columns:
                columns[j] -= cube["n_error"].to_numpy(np.float64)
        else:
            columns[j] = cube[name].to_numpy(np.float64)
    columns[np.isnan(columns)] = 0.0
    offsets = cube["minute"].to_numpy(np.int64) - fetch_start
    offsets = np.where((offsets >= 0) & (offsets < length), offsets, -1)
    uniques: dict[str, pd.Index] = {}
    codes = Factorized(cube, uniques)
    for key in ("arm", *dims):
        codes[key]  # the keys every frame reads; the model keys on demand
    return Core(columns, offsets, codes, uniques)


class Factorized(Mapping[str, Ints]):
    """A cube's key columns as codes into their sorted values, factorised when first read."""

    def __init__(self, cube: pd.DataFrame, uniques: dict[str, pd.Index]) -> None:
        self._cube, self._uniques = cube, uniques
        self._codes: dict[str, Ints] = {}

    def __getitem__(self, key: str) -> Ints:
        hit = self._codes.get(key)
        if hit is None:
            codes, values = pd.factorize(self._cube[key], sort=True)
            self._uniques[key] = pd.Index(values)  # first: a reader of the codes reads these
            hit = self._codes[key] = np.asarray(codes, dtype=np.int64)
        return hit

    def __iter__(self) -> Iterator[str]:
        return iter(self._codes)

    def __len__(self) -> int:
        return len(self._codes)
