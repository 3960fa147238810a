"""What the telemetry reader's aggregate frames speak of: subjects, minutes, bins and columns.

Frames use ``minute`` = whole minutes since the Unix epoch (UTC); :func:`to_datetime` converts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from tools.vocabulary import naive_utc

__all__ = [
    "ALL_ARM",
    "CUBE_SUMS",
    "LATENCY_LADDER_MS",
    "LOGLOSS_EPS",
    "HistogramSpec",
    "Subject",
    "naive_utc",
    "to_datetime",
    "to_minute",
]

ALL_ARM = "all"
"""The arm label of rows that belong to no experiment arm (model subjects, all traffic)."""

LOGLOSS_EPS = 1e-12
"""Predictions are clamped to [eps, 1 - eps] before the log loss (He et al. 2014)."""

LATENCY_LADDER_MS: tuple[float, ...] = tuple(float(8 * 2 ** (k / 2)) for k in range(23))
"""Latency thresholds (8 ms .. 16 s, x1.41): per group, how many requests were slower than each.

Counts above thresholds add up across minutes and dimensions, so quantiles of any slice can be read
from them on every dialect (SQLite has no quantile function)."""

CUBE_SUMS: tuple[str, ...] = (
    "n",
    "n_pred",
    "n_invalid",
    "sum_pred",
    "sum_pred2",
    "sum_label",
    "sum_label_v",
    "n_ll",
    "sum_ll",
    "sum_ll2",
    "n_fallback",
    "n_error",
    "sum_revenue",
    "sum_revenue2",
    "n_latency",
    "sum_latency",
)
"""Additive columns of :meth:`TelemetryReader.cube` (``lat_gt_<k>`` follow when asked for)."""


def to_minute(ts: datetime, *, ceil: bool = False) -> int:
    """Whole minutes since the Unix epoch of ``ts`` (naive = UTC), rounded down (or up)."""
    seconds = naive_utc(ts).replace(tzinfo=UTC).timestamp()
    return int(-(-seconds // 60)) if ceil else int(seconds // 60)


def to_datetime(minute: int | float) -> datetime:
    """The naive UTC datetime of epoch minute ``minute``."""
    return datetime.fromtimestamp(float(minute) * 60, tz=UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Subject:
    """Whose traffic a query reads: one experiment, one model, or all traffic (both None)."""

    experiment_id: str | None = None
    model_id: str | None = None

    @property
    def kind(self) -> Literal["experiment", "model", "all"]:
        """``experiment`` when an experiment is named, else ``model`` or ``all``."""
        if self.experiment_id is not None:
            return "experiment"
        return "model" if self.model_id is not None else "all"

    def __str__(self) -> str:
        if self.experiment_id is not None:
            return f"experiment {self.experiment_id}"
        return f"model {self.model_id}" if self.model_id is not None else "all traffic"


@dataclass(frozen=True)
class HistogramSpec:
    """Fine log-spaced prediction bins: ``bins_per_decade`` per decade from 10**min_log10 to 1."""

    min_log10: float = -6.0
    bins_per_decade: int = 40

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return round(-self.min_log10 * self.bins_per_decade)

    def edges(self) -> np.ndarray:
        """Bin edges (n_bins + 1), the first at 0 and the last at 1."""
        inner = 10.0 ** (self.min_log10 + np.arange(1, self.n_bins) / self.bins_per_decade)
        return np.concatenate([[0.0], inner, [1.0]])
