"""A subject's aggregate as numpy arrays: per-arm minute sums, span sums and slices, computed once.

The reader hands over one wide cube (one row per minute x arm x model x dimension values). Every
check reads it the same few ways: the sums of an arm per minute, over a span of minutes, per value
of one dimension, or inside one slice (``platform=android``). :class:`SubjectFrame` factorises
the key columns once, keeps the additive columns as one float matrix, and answers each of those
reads with ``bincount`` / ``cumsum`` over arrays, not with a pandas filter and group-by per call.

Sums are added in row order (a span's sum adds its minutes in order), so they can differ from a
pandas group-by (which compensates its additions) in the last bits: equal to about 1e-15
relative, never in a verdict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from tools.checks._arrays import Core, binned, core_of
from tools.checks._sums import Comparand, Sums, SumsLike, Window
from tools.telemetry import Subject

__all__ = ["Comparand", "SubjectFrame", "Sums", "SumsLike", "Window"]

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]
_Mask = npt.NDArray[np.bool_]
_T = TypeVar("_T")

TENSOR_CELLS = 4_000_000
"""Largest per-dimension tensor (values x arms x minutes x columns; 32 MB) a frame keeps; past it
(a week-long range) slices and drill-downs read the rows directly."""


class SubjectFrame:
    """A subject's wide aggregate over its fetched range, with per-arm minute sums cached.

    Args:
        cube: :meth:`tools.telemetry.TelemetryReader.cube` rows.
        window: The baseline and window minutes the cube covers.
        subject: Whose traffic.
        dims: Dimension columns of the cube (those the cube lacks are left out).
        control: The control arm (experiments only).
    """

    def __init__(
        self,
        cube: pd.DataFrame,
        window: Window,
        subject: Subject,
        dims: Sequence[str],
        control: str | None = None,
    ) -> None:
        keys = {"minute", "arm", "model_id", "model_version", *dims}
        names = [str(c) for c in cube.columns if c not in keys]
        if "n_served" not in names:
            names.append("n_served")
        present = tuple(d for d in dims if d in cube.columns)
        self._setup(window, subject, present, control, names)
        self._source = lambda: _with_served(cube)
        self._build = lambda: core_of(cube, window.fetch_start, self._length, names, present)

    def _setup(
        self,
        window: Window,
        subject: Subject,
        dims: tuple[str, ...],
        control: str | None,
        sum_cols: list[str],
    ) -> None:
        self.window = window
        self.subject = subject
        self.dims = dims
        self.control = control
        self.sum_cols = sum_cols
        self._columns_index: pd.Index | None = None
        self._at = {name: j for j, name in enumerate(sum_cols)}
        self._cube: pd.DataFrame | None = None
        self._core: Core | None = None
        self._lock = threading.Lock()
        self._minutes: _Floats | None = None  # arms x minutes x columns
        self._by_dim: dict[str, tuple[_Floats, _Ints]] = {}  # see _dim_tensor
        self._arm_frames: dict[str, pd.DataFrame] = {}
        self._derived: dict[str, Any] = {}
        self._seen: dict[str, tuple[str, ...]] = {}

    def _child(
        self,
        core: Callable[[], Core],
        cube: Callable[[], pd.DataFrame],
        sum_cols: list[str],
        minutes: Callable[[], _Floats] | None = None,
    ) -> SubjectFrame:
        out = SubjectFrame.__new__(SubjectFrame)
        out._setup(self.window, self.subject, self.dims, self.control, sum_cols)
        if sum_cols == self.sum_cols:
            out._columns_index, out._at = self._columns_index, self._at
        out._source, out._build = cube, core
        out._per_minute_of = minutes
        return out

    _source: Callable[[], pd.DataFrame]  # the rows, built on first use
    _build: Callable[[], Core]  # the arrays, built on first use
    _per_minute_of: Callable[[], _Floats] | None = None
    _arms_of: Callable[[], tuple[str, ...]] | None = None

    @property
    def _length(self) -> int:
        """Minutes in the fetched range."""
        return self.window.end - self.window.fetch_start

    @property
    def column_at(self) -> Mapping[str, int]:
        """:attr:`sum_cols` name -> position (shared, read-only)."""
        return self._at

    @property
    def _columns(self) -> pd.Index:
        """:attr:`sum_cols` as an index (built once: a string index costs a pandas array)."""
        if self._columns_index is None:
            self._columns_index = pd.Index(self.sum_cols)
        return self._columns_index

    @property
    def cube(self) -> pd.DataFrame:
        """The rows, with ``n_served = n - n_error`` (built on first use)."""
        if self._cube is None:
            self._cube = self._source()
        return self._cube

    def _arrays(self) -> Core:
        # Checks read one frame from several threads: one core per frame, or a reader could
        # factorise a model key into a core another thread then replaces.
        if self._core is None:
            with self._lock:
                if self._core is None:
                    self._core = self._build()
        return self._core

    # -- reads ----------------------------------------------------------------------------------

    @property
    def arms(self) -> list[str]:
        """Arms present in the data, sorted."""
        return list(self._present("arm"))

    def values(self, dim: str) -> list[str]:
        """The values of dimension ``dim`` present in the data, sorted (none for a dimension
        the cube lacks)."""
        return list(self._present(dim)) if dim in self.dims else []

    def served_models(self) -> list[str]:
        """The model ids present in the data, sorted (none when the cube has no model keys)."""
        return list(self._present("model_id")) if "model_id" in self._arrays().codes else []

    def _present(self, key: str) -> tuple[str, ...]:
        hit = self._seen.get(key)
        if hit is None and key == "arm" and self._arms_of is not None:
            hit = self._seen[key] = self._arms_of()
        if hit is None:
            core = self._arrays()
            labels = core.labels(key)
            counts = np.bincount(core.codes[key], minlength=len(labels))
            hit = tuple(sorted(labels[np.flatnonzero(counts)].tolist()))
            self._seen[key] = hit
        return hit

    def slice(self, where: Mapping[str, str]) -> SubjectFrame:
        """The same subject restricted to rows with the given dimension values."""

        def keep() -> _Mask:
            core = self._arrays()
            mask = np.ones(len(core.offsets), dtype=bool)
            for dim, value in where.items():
                mask &= core.codes[dim] == core.code(dim, value)
            return mask

        child = self._child(
            lambda: self._arrays().subset(keep()), lambda: self.cube[keep()], list(self.sum_cols)
        )
        if len(where) == 1 and self._tensor_fits(next(iter(where))):
            # One dimension: every value's minute sums come from one pass over the rows.
            ((dim, value),) = where.items()
            child._per_minute_of = lambda: self._dim_minutes(dim, value)
            child._arms_of = lambda: self._dim_arms(dim, value)
        return child

    def with_alias(self, name: str, column: str) -> SubjectFrame:
        """The same frame with one more additive column ``name``, a copy of ``column``."""
        if name in self.sum_cols:
            return self
        j = self._at[column]

        def core() -> Core:
            c = self._arrays()

            def columns() -> _Floats:
                out: _Floats = np.vstack([c.columns, c.columns[j : j + 1]])
                return out

            return Core(columns, c.offsets, c.codes, c.uniques)

        def minutes() -> _Floats:
            m = self._per_minute()
            out: _Floats = np.concatenate([m, m[:, :, j : j + 1]], axis=2)
            return out

        return self._child(
            core,
            lambda: self.cube.assign(**{name: self.cube[column]}),
            [*self.sum_cols, name],
            minutes,
        )

    def select(self, columns: Sequence[str]) -> SubjectFrame:
        """The same rows with only the additive ``columns``: a scan of many slices that reads a
        few columns (a proportion's events and exposure) builds its per-slice sums over those
        alone. Every sum is the same number as the full frame's. One per column list."""
        return self.derived(f"select:{','.join(columns)}", lambda: self._select(columns))

    def _select(self, columns: Sequence[str]) -> SubjectFrame:
        idx = [self._at[c] for c in columns]

        def core() -> Core:
            c = self._arrays()
            out = Core(lambda: c.columns[idx], c.offsets, c.codes, c.uniques)
            out._lookup, out._labels = c._lookup, c._labels
            return out

        def rows() -> pd.DataFrame:
            keep = [c for c in self.cube.columns if c not in self._at or c in columns]
            return self.cube[keep]

        # The parent's minute sums when it has them; else the child adds its own columns alone.
        minutes = (lambda: self._per_minute()[:, :, idx]) if self._minutes is not None else None
        child = self._child(core, rows, list(columns), minutes)
        child._seen = self._seen  # the same rows: the same arms and values
        return child

    def dim_values(self) -> int:
        """How many (dimension, value) slices the cube holds."""
        return sum(len(self._present(d)) for d in self.dims)

    def comparands(self, expected: Mapping[str, float] | None = None) -> list[Comparand]:
        """Experiments: every other arm vs control, and every arm vs its own baseline.

        Models and all traffic: the window vs its own baseline. With ``expected`` (arm -> known
        value), also every such arm against that value.
        """
        arms = self.arms
        own = [Comparand(a, a, concurrent=False) for a in arms]
        known = [
            Comparand(a, a, concurrent=False, expected=float(expected[a]))
            for a in arms
            if expected is not None and a in expected
        ]
        if self.control is None or self.control not in arms:
            return own + known
        rel = [Comparand(a, self.control, concurrent=True) for a in arms if a != self.control]
        return rel + own + known

    def minute_matrix(self, arm: str) -> _Floats:
        """Sums per minute of ``arm`` as a (minutes x :attr:`sum_cols`) array over the fetched
        range, zeros where silent. Shared: callers must not modify it."""
        minutes = self._per_minute()
        i = self._arm_index(arm)
        if i is None:
            return np.zeros((minutes.shape[1], len(self.sum_cols)))
        out: _Floats = minutes[i]
        return out

    def minute_column(self, arm: str, column: str) -> _Floats:
        """Sums of one column per minute of ``arm`` over the fetched range (shared, read-only)."""
        out: _Floats = self.minute_matrix(arm)[:, self._at[column]]
        return out

    def minute_sums(self, arm: str) -> pd.DataFrame:
        """Sums per minute of ``arm`` over the whole fetched range (zeros where silent)."""
        hit = self._arm_frames.get(arm)
        if hit is None:
            w = self.window
            index = pd.RangeIndex(w.fetch_start, w.end, name="minute")
            hit = pd.DataFrame(self.minute_matrix(arm), index=index, columns=self._columns)
            self._arm_frames[arm] = hit
        return hit

    def span_vector(self, arm: str, a: int, b: int) -> _Floats:
        """Column sums of ``arm`` over epoch minutes ``[a, b)`` as an array (see :meth:`sums`)."""
        w = self.window
        length = w.end - w.fetch_start
        i0 = min(max(a - w.fetch_start, 0), length)
        i1 = min(max(b - w.fetch_start, i0), length)
        out: _Floats = np.add.reduce(self.minute_matrix(arm)[i0:i1], axis=0)
        return out

    def span(self, arm: str, a: int, b: int) -> Sums:
        """Column sums of ``arm`` over ``[a, b)`` as a light :class:`Sums`."""
        return Sums(self._at, self.span_vector(arm, a, b))

    def sums(self, arm: str, a: int, b: int) -> pd.Series:
        """Column sums of ``arm`` over epoch minutes ``[a, b)``."""
        return pd.Series(self.span_vector(arm, a, b), index=self._columns)

    def derived(self, key: str, build: Callable[[], _T]) -> _T:
        """``build()``, computed once per frame: a table several checks or metrics read (the
        frame is immutable; callers must not modify the answer)."""
        if key not in self._derived:
            self._derived[key] = build()
        hit: _T = self._derived[key]
        return hit

    def grouped(
        self,
        keys: Sequence[str],
        span: tuple[int, int] | None = None,
        columns: Sequence[str] = ("n",),
        *,
        arm: str | None = None,
    ) -> pd.DataFrame:
        """Sums of ``columns`` per combination of the key columns ``keys`` (``arm``,
        ``model_id``, ``model_version``, dimensions) over the minutes ``span`` (every row when
        None), of one ``arm`` or all: ``cube.groupby(keys)[columns].sum().reset_index()``,
        combinations sorted."""
        seen, sums = self.group_sums(keys, span, columns, arm=arm)
        out: dict[str, Any] = self.key_values(keys, seen)
        for j, col in enumerate(columns):
            out[col] = sums[j]
        return pd.DataFrame(out)

    def group_sums(
        self,
        keys: Sequence[str],
        span: tuple[int, int] | None = None,
        columns: Sequence[str] = ("n",),
        *,
        arm: str | None = None,
    ) -> tuple[_Ints, _Floats]:
        """:meth:`grouped` as arrays: the combinations with rows there, as flat indexes into
        the keys' codes (``np.ravel_multi_index``, ascending: sorted by value), and their sums
        (one row per column, rows added in order)."""
        core = self._arrays()
        if span is None:
            keep = np.ones(len(core.offsets), dtype=bool)
        else:
            w = self.window
            keep = (core.offsets >= max(span[0] - w.fetch_start, 0)) & (
                core.offsets < span[1] - w.fetch_start
            )
        if arm is not None:
            keep &= core.codes["arm"] == core.code("arm", arm)
        codes = [core.codes[k][keep] for k in keys]
        sizes = tuple(len(core.uniques[k]) for k in keys)
        group = np.ravel_multi_index(codes, sizes) if keys else np.zeros(int(keep.sum()), int)
        seen, inverse = np.unique(group, return_inverse=True)
        sums = np.empty((len(columns), seen.size))
        for j, col in enumerate(columns):
            values = core.columns[self._at[col]][keep]
            sums[j] = np.bincount(inverse, weights=values, minlength=seen.size)
        return seen, sums

    def key_values(self, keys: Sequence[str], flat: _Ints) -> dict[str, pd.Index]:
        """The key values of combinations given as :meth:`group_sums`' flat indexes."""
        if not keys:
            return {}
        core = self._arrays()
        sizes = tuple(len(core.labels(k)) for k in keys)
        return {
            k: core.uniques[k].take(np.asarray(c, dtype=np.int64))
            for k, c in zip(keys, np.unravel_index(flat, sizes), strict=True)
        }

    def key_codes(self, keys: Sequence[str]) -> tuple[list[_Ints], list[pd.Index]]:
        """Per key column (``arm``, ``model_id``, ``model_version``, dimensions): every row's
        code, and the sorted values the codes index (shared, read-only)."""
        core = self._arrays()
        codes = [core.codes[k] for k in keys]  # factorises a model key on first read
        return codes, [core.uniques[k] for k in keys]

    def code(self, key: str, value: str) -> int:
        """The code of ``value`` in key column ``key`` (-1 when it never occurs)."""
        return self._arrays().code(key, value)

    def row_column(self, column: str) -> _Floats:
        """Every row's value of the additive column ``column`` (NaN as 0; shared, read-only)."""
        out: _Floats = self._arrays().columns[self._at[column]]
        return out

    def row_minutes(self) -> _Ints:
        """Every row's epoch minute (shared, read-only)."""
        hit: _Ints | None = self._derived.get("row_minutes")
        if hit is None:
            offsets = self._arrays().offsets
            if (offsets < 0).any():  # rows outside the fetched range: read them from the rows
                hit = self.cube["minute"].to_numpy(np.int64)
            else:
                hit = offsets + self.window.fetch_start
            self._derived["row_minutes"] = hit
        return hit

    def dim_sums(self, arm: str, a: int, b: int, dim: str) -> pd.DataFrame:
        """Column sums of ``arm`` over minutes ``[a, b)`` per value of ``dim`` (the values with
        rows there, sorted)."""
        values, out = self.dim_arrays(arm, a, b, dim)
        return pd.DataFrame(out, index=pd.Index(values, name=dim), columns=self._columns)

    def dim_arrays(
        self, arm: str, a: int, b: int, dim: str
    ) -> tuple[npt.NDArray[np.object_], _Floats]:
        """:meth:`dim_sums` as arrays: the values (strings), and their sums (values x
        :attr:`sum_cols`)."""
        core = self._arrays()
        w = self.window
        length = w.end - w.fetch_start
        i0 = min(max(a - w.fetch_start, 0), length)
        i1 = min(max(b - w.fetch_start, i0), length)
        code = core.code("arm", arm)
        uniques = core.uniques[dim]
        if code < 0:
            out, present = np.zeros((0, len(self.sum_cols))), np.zeros(len(uniques), dtype=bool)
        elif self._tensor_fits(dim):
            tensor, rows = self._dim_tensor(dim)
            present = rows[:, code, i0:i1].sum(axis=1) > 0
            out = np.add.reduce(tensor[present, code, i0:i1], axis=1)
        else:  # a long range: straight from the rows
            keep = (core.offsets >= i0) & (core.offsets < i1) & (core.codes["arm"] == code)
            codes = core.codes[dim][keep]
            present = np.bincount(codes, minlength=len(uniques)) > 0
            at = np.flatnonzero(present)
            out = np.empty((at.size, len(self.sum_cols)))
            for j, column in enumerate(core.columns[:, keep]):
                out[:, j] = np.bincount(codes, weights=column, minlength=len(uniques))[at]
        return core.labels(dim)[present], out

    # -- internals ------------------------------------------------------------------------------

    def _dim_arms(self, dim: str, value: str) -> tuple[str, ...]:
        """Arms with rows where ``dim == value``, sorted."""
        core = self._arrays()
        code = core.code(dim, value)
        if code < 0:
            return ()
        _, rows = self._dim_tensor(dim)
        present = np.flatnonzero(rows[code].sum(axis=1))
        return tuple(sorted(core.labels("arm")[present].tolist()))

    def _arm_index(self, arm: str) -> int | None:
        code = self._arrays().code("arm", arm)
        return None if code < 0 else code

    def _per_minute(self) -> _Floats:
        if self._minutes is None:
            if self._per_minute_of is not None:
                self._minutes = self._per_minute_of()
            else:
                core = self._arrays()
                self._minutes = binned(
                    core, core.codes["arm"], len(core.uniques["arm"]), self._length
                )
        return self._minutes

    def _tensor_fits(self, dim: str) -> bool:
        """Whether :meth:`_dim_tensor` of ``dim`` stays under :data:`TENSOR_CELLS`."""
        core = self._arrays()
        cells = len(core.uniques[dim]) * len(core.uniques["arm"]) * self._length
        return cells * len(self.sum_cols) <= TENSOR_CELLS

    def _dim_tensor(self, dim: str) -> tuple[_Floats, _Ints]:
        """Sums (values x arms x minutes x columns) and rows (values x arms x minutes) per
        value of ``dim``: one pass over the rows serves every slice and drill-down of it."""
        hit = self._by_dim.get(dim)
        if hit is None:
            core = self._arrays()
            n_arms, n_values = len(core.uniques["arm"]), len(core.uniques[dim])
            group = core.codes[dim] * n_arms + core.codes["arm"]
            flat = binned(core, group, n_values * n_arms, self._length)
            tensor = flat.reshape(n_values, n_arms, *flat.shape[1:])
            length = flat.shape[1]
            ok = core.offsets >= 0
            slot = group[ok] * length + core.offsets[ok]
            rows = np.bincount(slot, minlength=n_values * n_arms * length)
            hit = self._by_dim[dim] = (tensor, rows.reshape(n_values, n_arms, length))
        return hit

    def _dim_minutes(self, dim: str, value: str) -> _Floats:
        """Minute sums (arms x minutes x columns) of the rows with ``dim == value``."""
        core = self._arrays()
        tensor, _ = self._dim_tensor(dim)
        code = core.code(dim, value)
        if code < 0:
            return np.zeros((len(core.uniques["arm"]), *tensor.shape[2:]))
        out: _Floats = tensor[code]
        return out


def _with_served(cube: pd.DataFrame) -> pd.DataFrame:
    served = cube["n"] - cube["n_error"] if "n_error" in cube.columns else cube["n"]
    return cube.assign(n_served=served)
