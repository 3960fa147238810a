"""Vigil's shared words, each declared once: metric names and their aliases, verdict marks, and
the one UTC time helper every package uses.

Nothing here reads data or imports the rest of the project, so any module (a front door, the
experiment core, a check) can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal, TypeGuard, get_args, overload

__all__ = [
    "METRICS",
    "METRIC_ALIASES",
    "VERDICT_MARKS",
    "MetricName",
    "SeriesMetric",
    "as_utc",
    "is_metric",
    "naive_utc",
    "utc_now",
]

SeriesMetric = Literal[
    "revenue",
    "ctr",
    "ne",
    "calibration",
    "fallback_rate",
    "error_rate",
    "invalid_rate",
    "latency_p99",
]
"""The metrics read per minute to localize an onset and verify a recovery."""

MetricName = Literal[SeriesMetric, "revenue_per_request", "latency_mean", "requests", "srm"]
"""Every metric a check, a series or an alert speaks of (``tools.metrics`` defines each)."""

METRICS: tuple[str, ...] = get_args(MetricName)

METRIC_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "revenue_per_request": "revenue",
        "rpr": "revenue",
        "fallback": "fallback_rate",
        "errors": "error_rate",
        "latency": "latency_p99",
        "p99": "latency_p99",
    }
)
"""Common spellings in alerting rules and chat, mapped onto the alert metric they mean."""

VERDICT_MARKS: Mapping[str, str] = MappingProxyType(
    {"ok": "✓", "fail": "✗", "warn": "⚠", "inconclusive": "?", "no_data": "–"}
)
"""One mark per check verdict, for every text a human reads (Slack, reports)."""


def is_metric(name: str) -> TypeGuard[MetricName]:
    """Whether ``name`` is one of :data:`MetricName` (narrows the type for the checker)."""
    return name in METRICS


def utc_now() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


@overload
def as_utc(ts: datetime) -> datetime: ...
@overload
def as_utc(ts: None) -> None: ...
def as_utc(ts: datetime | None) -> datetime | None:
    """``ts`` as an aware UTC datetime; a naive ``ts`` is taken to be UTC already.

    Args:
        ts: Any datetime, or None (returned as is).

    Returns:
        The same instant, aware, in UTC.
    """
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@overload
def naive_utc(ts: datetime) -> datetime: ...
@overload
def naive_utc(ts: None) -> None: ...
def naive_utc(ts: datetime | None) -> datetime | None:
    """``ts`` as a naive UTC datetime (how SQL columns without a zone store it).

    Args:
        ts: Any datetime (a naive one is taken to be UTC already), or None (returned as is).

    Returns:
        The same instant, in UTC, without ``tzinfo``.
    """
    if ts is None:
        return None
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts
