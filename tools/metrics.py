"""The metrics checks and series speak of, each defined once over the reader's additive sums.

A metric knows how to turn summed columns into a value, which direction is bad, and which
(events, exposure) pair carries it as a rate for change-point location.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    out: pd.Series = num / den.where(den > 0)
    return out


def _ne(s: pd.DataFrame) -> pd.Series:
    ctr = _ratio(s["sum_label_v"], s["n_pred"]).clip(1e-12, 1 - 1e-12)
    entropy = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))
    out: pd.Series = _ratio(s["sum_ll"], s["n_ll"]) / entropy
    return out


_VALUES: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "revenue": lambda s: s["sum_revenue"],
    "revenue_per_request": lambda s: _ratio(s["sum_revenue"], s["n"]),
    "ctr": lambda s: _ratio(s["sum_label"], s["n"]),
    "ne": _ne,
    "calibration": lambda s: _ratio(s["sum_pred"], s["sum_label_v"]),
    "fallback_rate": lambda s: _ratio(s["n_fallback"], s["n"]),
    "error_rate": lambda s: _ratio(s["n_error"], s["n"]),
    "invalid_rate": lambda s: _ratio(s["n_invalid"], s["n"] - s["n_error"]),
    "latency_p99": lambda s: latency_quantile(s, 0.99),
    "latency_mean": lambda s: _ratio(s["sum_latency"], s["n_latency"]),
    "requests": lambda s: s["n"],
}


def metric_values(sums: pd.DataFrame, metric: str) -> pd.Series:
    """The metric's value on each row of summed cube columns (NaN where undefined).

    ``srm`` is each row's share of requests within its minute (rows must carry ``minute``).
    """
    metric_spec(metric)
    if metric == "srm":
        total = sums.groupby("minute")["n"].transform("sum")
        return _ratio(sums["n"], total)
    return _VALUES[metric](sums)


def latency_quantile(sums: pd.DataFrame, q: float) -> pd.Series:
    """Latency quantile per row, interpolated (log-linearly) on the ``lat_gt_<k>`` ladder counts.

    NaN where the rows carry no ladder or no latencies; capped at the ladder's ends.
    """
    cols = [f"lat_gt_{k}" for k in range(len(LATENCY_LADDER_MS))]
    if not set(cols) <= set(sums.columns):
        return pd.Series(np.nan, index=sums.index)
    n = sums["n_latency"].to_numpy(float)
    above = sums[cols].to_numpy(float)
    out = np.full(n.size, np.nan)
    log_t = np.log(np.asarray(LATENCY_LADDER_MS))
    for i in range(n.size):
        if n[i] <= 0:
            continue
        share_above = above[i] / n[i]  # non-increasing along the ladder
        target = 1 - q
        k = int(np.searchsorted(-share_above, -target, side="left"))
        if k == 0:
            out[i] = LATENCY_LADDER_MS[0]
        elif k >= len(cols):
            out[i] = LATENCY_LADDER_MS[-1]
        else:
            s0, s1 = share_above[k - 1], share_above[k]
            frac = 0.0 if s0 == s1 else (s0 - target) / (s0 - s1)
            out[i] = float(np.exp(log_t[k - 1] + frac * (log_t[k] - log_t[k - 1])))
    return pd.Series(out, index=sums.index)
