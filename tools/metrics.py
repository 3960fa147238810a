"""The metrics checks and series speak of, each defined once over the reader's additive sums.

A metric knows how to turn summed columns into a value, which direction is bad, and which
(events, exposure) pair carries it as a rate for change-point location.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from tools.errors import ConfigError
from tools.stats import Direction
from tools.telemetry import LATENCY_LADDER_MS
from tools.vocabulary import METRICS, MetricName

__all__ = [
    "METRICS",
    "MetricName",
    "MetricSpec",
    "latency_quantile",
    "metric_array",
    "metric_spec",
    "metric_values",
]


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is computed and read.

    Attributes:
        name: The metric's name.
        direction: Which change is a regression.
        events: Column of the rate's numerator (for change-point location).
        exposure: Column of the rate's denominator.
        invert: The metric is exposure/events (calibration), so its direction flips on the rate.
        unit: How to read the value.
    """

    name: MetricName
    direction: Direction
    events: str
    exposure: str
    invert: bool = False
    unit: str = ""

    @property
    def rate_direction(self) -> Direction:
        """The bad direction of ``events / exposure`` (flipped for inverted metrics)."""
        if not self.invert or self.direction == "both":
            return self.direction
        return "down" if self.direction == "up" else "up"


_SPECS: dict[str, MetricSpec] = {
    "revenue": MetricSpec("revenue", "down", "sum_revenue", "n", unit="per request"),
    "revenue_per_request": MetricSpec("revenue_per_request", "down", "sum_revenue", "n"),
    "ctr": MetricSpec("ctr", "down", "sum_label", "n", unit="ratio"),
    "ne": MetricSpec("ne", "up", "sum_ll", "n_ll"),
    "calibration": MetricSpec(
        "calibration", "both", "sum_label_v", "sum_pred", invert=True, unit="ratio"
    ),
    "fallback_rate": MetricSpec("fallback_rate", "up", "n_fallback", "n", unit="ratio"),
    "error_rate": MetricSpec("error_rate", "up", "n_error", "n", unit="ratio"),
    "invalid_rate": MetricSpec("invalid_rate", "up", "n_invalid", "n_served", unit="ratio"),
    "latency_p99": MetricSpec("latency_p99", "up", "lat_gt_p99", "n_latency", unit="ms"),
    "latency_mean": MetricSpec("latency_mean", "up", "sum_latency", "n_latency", unit="ms"),
    "requests": MetricSpec("requests", "down", "n", "one"),
    "srm": MetricSpec("srm", "both", "n", "n_total", unit="share"),
}


def metric_spec(metric: str) -> MetricSpec:
    """The spec of ``metric``.

    Raises:
        ConfigError: Unknown metric, named with the valid choices.
    """
    spec = _SPECS.get(metric)
    if spec is None:
        raise ConfigError("metric", metric, f"unknown metric; choose from {list(METRICS)}")
    return spec


Columns = Mapping[str, npt.NDArray[np.float64]]
"""Summed cube columns by name, one value per row (a frame's columns as arrays)."""

_FloatArray = npt.NDArray[np.float64]


def _ratio(num: _FloatArray, den: _FloatArray) -> _FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out: _FloatArray = num / np.where(den > 0, den, np.nan)
    return out


def _ne(s: Columns) -> _FloatArray:
    ctr = np.clip(_ratio(s["sum_label_v"], s["n_pred"]), 1e-12, 1 - 1e-12)
    entropy = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))
    with np.errstate(divide="ignore", invalid="ignore"):
        out: _FloatArray = _ratio(s["sum_ll"], s["n_ll"]) / entropy
    return out


_VALUES: dict[str, Callable[[Columns], _FloatArray]] = {
    "revenue": lambda s: s["sum_revenue"],
    "revenue_per_request": lambda s: _ratio(s["sum_revenue"], s["n"]),
    "ctr": lambda s: _ratio(s["sum_label"], s["n"]),
    "ne": _ne,
    "calibration": lambda s: _ratio(s["sum_pred"], s["sum_label_v"]),
    "fallback_rate": lambda s: _ratio(s["n_fallback"], s["n"]),
    "error_rate": lambda s: _ratio(s["n_error"], s["n"]),
    "invalid_rate": lambda s: _ratio(s["n_invalid"], s["n"] - s["n_error"]),
    "latency_p99": lambda s: _quantile(s, 0.99),
    "latency_mean": lambda s: _ratio(s["sum_latency"], s["n_latency"]),
    "requests": lambda s: s["n"],
}


def metric_array(columns: Columns, metric: str) -> _FloatArray:
    """The metric's value on each row of summed columns given as arrays (NaN where undefined).

    The same numbers as :func:`metric_values` without a frame; ``srm`` reads each row as its own
    minute (its share of itself).
    """
    metric_spec(metric)
    if metric == "srm":
        return _ratio(columns["n"], columns["n"])
    return np.asarray(_VALUES[metric](columns), dtype=np.float64)


def metric_values(sums: pd.DataFrame, metric: str) -> pd.Series:
    """The metric's value on each row of summed cube columns (NaN where undefined).

    ``srm`` is each row's share of requests within its minute (rows must carry ``minute``).
    """
    metric_spec(metric)
    if metric == "srm":
        total = sums.groupby("minute")["n"].transform("sum").to_numpy(np.float64)
        return pd.Series(_ratio(sums["n"].to_numpy(np.float64), total), index=sums.index)
    return pd.Series(metric_array(_FrameColumns(sums), metric), index=sums.index)


class _FrameColumns(Mapping[str, _FloatArray]):
    """A frame's columns as float arrays, converted when read."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def __getitem__(self, key: str) -> _FloatArray:
        return self._frame[key].to_numpy(np.float64)

    def __iter__(self) -> Iterator[str]:
        return iter(str(c) for c in self._frame.columns)

    def __len__(self) -> int:
        return len(self._frame.columns)


def latency_quantile(sums: pd.DataFrame, q: float) -> pd.Series:
    """Latency quantile per row, interpolated (log-linearly) on the ``lat_gt_<k>`` ladder counts.

    NaN where the rows carry no ladder or no latencies; capped at the ladder's ends.
    """
    return pd.Series(_quantile(_FrameColumns(sums), q), index=sums.index)


def _quantile(s: Columns, q: float) -> _FloatArray:
    cols = [f"lat_gt_{k}" for k in range(len(LATENCY_LADDER_MS))]
    if not all(c in s for c in cols):
        size = len(s[next(iter(s))]) if len(s) else 0
        return np.full(size, np.nan)
    n = np.asarray(s["n_latency"], dtype=np.float64)
    above = np.column_stack([np.asarray(s[c], dtype=np.float64) for c in cols])
    out = np.full(n.size, np.nan)
    rows = np.flatnonzero(n > 0)
    if not rows.size:
        return out
    target = 1 - q
    share = above[rows] / n[rows, None]  # non-increasing along the ladder
    ladder = np.asarray(LATENCY_LADDER_MS, dtype=np.float64)
    log_t = np.log(ladder)
    steps = len(cols)
    if np.all(np.diff(share, axis=1) <= 0):
        # searchsorted(-share, -target, "left") on a sorted row: how many shares exceed target.
        k = (share > target).sum(axis=1)
    else:  # not a ladder (hand-made sums): search each row as it is
        k = np.array([np.searchsorted(-row, -target, side="left") for row in share])
    inside = (k > 0) & (k < steps)
    vals = np.where(k == 0, ladder[0], ladder[-1])
    i = np.flatnonzero(inside)
    ki = k[i]
    s0, s1 = share[i, ki - 1], share[i, ki]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(s0 == s1, 0.0, (s0 - target) / (s0 - s1))
    vals[i] = np.exp(log_t[ki - 1] + frac * (log_t[ki] - log_t[ki - 1]))
    out[rows] = vals
    return out
