"""Verification: after an action, did the metric recover?

The metric of the cause (``verify_metric`` in the playbook: the fallback rate for a fallback) and
the alert's metric are read per minute on all traffic (an experiment that was killed has no arms
left to compare) in three windows: a baseline before the onset, the incident from the onset to
the action, and the minutes after the action. The metric recovered when, after the action, it is
back within the baseline's noise or has closed at least half of the incident's gap. With too few
minutes after the action there is nothing to judge yet: ``None`` (pending).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from agent.playbook import WindowSpec
from tools.errors import ConfigError
from tools.registry import Checks
from tools.vocabulary import METRICS, is_metric, naive_utc

__all__ = ["Recovery", "measure_recovery"]

_NOISE_Z = 3.0
_GAP_CLOSED = 0.5


@dataclass(frozen=True)
class Recovery:
    """What verification found.

    Attributes:
        metric: The metric read.
        recovered: True / False, or None when there is no post-action data yet.
        baseline: Mean before the onset.
        incident: Mean from the onset to the action.
        after: Mean after the action (None without data).
        minutes_after: Minutes of data after the action.
        summary: One sentence a human reads.
    """

    metric: str
    recovered: bool | None
    baseline: float | None
    incident: float | None
    after: float | None
    minutes_after: int
    summary: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "metric": self.metric,
            "recovered": self.recovered,
            "baseline": self.baseline,
            "incident": self.incident,
            "after": self.after,
            "minutes_after": self.minutes_after,
            "summary": self.summary,
        }


def _per_minute(frame: pd.DataFrame) -> pd.Series:
    """One value per minute (the mean over arms if the frame has several)."""
    if frame is None or len(frame) == 0:
        return pd.Series(dtype=float)
    values = pd.to_numeric(frame["value"], errors="coerce")
    series = values.groupby(frame["minute"]).mean().dropna()
    finite: pd.Series = series[np.isfinite(series.to_numpy(dtype=float))]
    return finite


def _naive64(ts: datetime) -> np.datetime64:
    return pd.Timestamp(naive_utc(ts)).to_datetime64()


def _stamps(index: pd.Index) -> np.ndarray:
    """Minutes as UTC datetime64 (ints are minutes since the epoch, as the reader returns)."""
    if len(index) and pd.api.types.is_numeric_dtype(index):
        return pd.to_datetime(np.asarray(index, dtype="int64") * 60, unit="s").to_numpy()
    stamps = pd.to_datetime(pd.Series(index), utc=True)
    return stamps.dt.tz_localize(None).to_numpy()


def _stats(series: pd.Series) -> tuple[float | None, float, int]:
    n = len(series)
    if n == 0:
        return None, 0.0, 0
    mean = float(series.mean())
    sd = float(series.std(ddof=1)) if n > 1 else 0.0
    return mean, sd, n


def measure_recovery(
    toolbox: Checks,
    metric: str,
    onset: datetime,
    acted_at: datetime,
    spec: WindowSpec,
) -> Recovery:
    """Judge recovery of ``metric`` after an action taken at ``acted_at``.

    Args:
        toolbox: The checks; only ``metric_series`` is read.
        metric: The metric to read.
        onset: When the incident started.
        acted_at: When the action took effect (on the telemetry's clock).
        spec: Baseline and verification window lengths, minimum minutes to judge.

    Returns:
        The verdict with its figures.

    Raises:
        ConfigError: ``metric`` is not a metric.
    """
    if not is_metric(metric):
        raise ConfigError("metric", metric, f"unknown metric; choose from {list(METRICS)}")
    base_start = onset - timedelta(minutes=spec.baseline_minutes)
    after_end = acted_at + timedelta(minutes=spec.verify_minutes)
    frame = toolbox.metric_series(metric, base_start, after_end)
    series = _per_minute(frame)
    stamps = _stamps(series.index)
    values = series.to_numpy(dtype=float)

    def window(lo: datetime, hi: datetime) -> pd.Series:
        mask = (stamps >= _naive64(lo)) & (stamps < _naive64(hi))
        return pd.Series(values[mask])

    base, base_sd, n_base = _stats(window(base_start, onset))
    incident, _, _ = _stats(window(onset, acted_at))
    after, after_sd, n_after = _stats(window(acted_at, after_end))
    if n_after < spec.verify_min_points or base is None or after is None:
        return Recovery(
            metric,
            None,
            base,
            incident,
            after,
            n_after,
            f"{metric}: not enough data after the action yet ({n_after} of "
            f"{spec.verify_min_points} minutes); verification pending.",
        )
    noise = _NOISE_Z * math.sqrt(base_sd**2 / max(n_base, 1) + after_sd**2 / max(n_after, 1))
    gap = abs(incident - base) if incident is not None else 0.0
    distance = abs(after - base)
    recovered = distance <= max(noise, _GAP_CLOSED * gap)
    word = "recovered" if recovered else "has not recovered"
    incident_text = f"{incident:.4g}" if incident is not None else "n/a"
    return Recovery(
        metric,
        recovered,
        base,
        incident,
        after,
        n_after,
        f"{metric} {word}: {after:.4g} over {n_after} minutes after the action vs "
        f"{base:.4g} before the onset and {incident_text} during the incident.",
    )
