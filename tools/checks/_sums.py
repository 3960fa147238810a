"""The small values a frame's reads hand out: its window, a comparand, column sums by name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Comparand", "Sums", "SumsLike", "Window"]

_Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Window:
    """Epoch minutes: the baseline ``[fetch_start, start)`` and the window ``[start, end)``."""

    fetch_start: int
    start: int
    end: int

    @property
    def length(self) -> int:
        """Minutes in the window."""
        return self.end - self.start


@dataclass(frozen=True)
class Comparand:
    """One test group against its reference.

    ``concurrent``: the reference arm over the same minutes. Otherwise the group's own baseline
    minutes, or, with ``expected`` set, a known value (a model's training calibration).
    """

    test: str
    ref: str
    concurrent: bool
    expected: float | None = None

    @property
    def label(self) -> str:
        """``test vs control``, ``arm vs its baseline`` or ``arm vs expected 1.0``."""
        if self.concurrent:
            return f"{self.test} vs {self.ref}"
        if self.expected is not None:
            return f"{self.test} vs expected {self.expected:g}"
        return f"{self.test} vs its baseline"


class SumsLike(Protocol):
    """Summed cube columns read by name: a :class:`Sums` or a ``pd.Series`` of the same."""

    def __getitem__(self, key: str, /) -> Any:
        """The sum of column ``key``."""


class Sums(Mapping[str, np.float64]):
    """Column sums of one group, read by name like the ``pd.Series`` they stand in for.

    Values are ``np.float64`` (as a float Series gives), so arithmetic on them behaves the same;
    building one costs nothing but keeping the vector (the scans build hundreds, and a test reads
    two or three of their columns). ``columns``: the names in order, or name -> position (shared,
    as :attr:`SubjectFrame.column_at` gives it).
    """

    __slots__ = ("_at", "_values")

    def __init__(self, columns: Sequence[str] | Mapping[str, int], values: _Floats) -> None:
        if not isinstance(columns, Mapping):
            columns = {name: j for j, name in enumerate(columns)}
        if len(columns) != len(values):
            raise ValueError(f"{len(values)} sums for {len(columns)} columns")
        self._at: Mapping[str, int] = columns
        self._values = values

    def __getitem__(self, key: str, /) -> np.float64:
        out: np.float64 = self._values[self._at[key]]
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)
