"""Prometheus Alertmanager webhook payloads (version 4) and their mapping onto :class:`Alert`.

Alertmanager adds fields of its own over time, so the payload models ignore unknown keys; the
fields Vigil relies on are required and validated. Which label holds the metric, the experiment
and the alert's name is configurable (``Settings.alert_labels``) so that existing alerting rules
need not be rewritten for Vigil.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from agent.models import Alert, AlertMetric
from tools.errors import ConfigError

__all__ = [
    "ALERT_FIELDS",
    "AlertmanagerAlert",
    "AlertmanagerPayload",
    "MappedAlert",
    "map_payload",
]

ALERT_FIELDS = ("name", "metric", "experiment")
_METRICS: tuple[str, ...] = get_args(AlertMetric)
# Common spellings in alerting rules, mapped onto Vigil's metric vocabulary.
_METRIC_ALIASES = {
    "revenue_per_request": "revenue",
    "rpr": "revenue",
    "fallback": "fallback_rate",
    "errors": "error_rate",
    "latency": "latency_p99",
    "p99": "latency_p99",
}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AlertmanagerAlert(_Lenient):
    """One alert of a webhook notification."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1)


class AlertmanagerPayload(_Lenient):
    """The webhook body Alertmanager posts (``version`` 4)."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert]


@dataclass(frozen=True)
class MappedAlert:
    """One Alertmanager alert as Vigil sees it.

    Attributes:
        key: Deduplication key: the fingerprint and ``startsAt`` (one firing episode).
        status: ``firing`` or ``resolved``.
        alert: The :class:`Alert` an investigation starts from.
        ends_at: When a resolved alert ended (None while firing).
    """

    key: str
    status: Literal["firing", "resolved"]
    alert: Alert
    ends_at: datetime | None


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _metric(value: str, field: str) -> AlertMetric:
    name = value.strip().lower()
    name = _METRIC_ALIASES.get(name, name)
    if name not in _METRICS:
        raise ConfigError(field, value, f"metric must be one of {', '.join(_METRICS)}")
    return cast(AlertMetric, name)


def map_payload(
    payload: AlertmanagerPayload, labels: Mapping[str, str], *, now: datetime | None = None
) -> list[MappedAlert]:
    """Map every alert of a webhook payload onto a Vigil alert.

    Args:
        payload: The validated webhook body.
        labels: Alert field (``name``, ``metric``, ``experiment``) -> the label holding it
            (``Settings.alert_labels``); a field not mapped falls back to its own name.
        now: When the notification arrived (defaults to the current time, UTC).

    Returns:
        One :class:`MappedAlert` per payload alert, in payload order.

    Raises:
        ConfigError: An alert lacks the metric label or names an unknown metric; the field is
            the alert's path in the payload, e.g. ``alerts[1].labels.metric``.
    """
    unknown = sorted(set(labels) - set(ALERT_FIELDS))
    if unknown:
        raise ConfigError("alert_labels", unknown, f"keys must be among {ALERT_FIELDS}")
    now = now or datetime.now(UTC)
    out: list[MappedAlert] = []
    for i, am in enumerate(payload.alerts):
        merged = {**payload.commonLabels, **am.labels}
        metric_label = labels.get("metric", "metric")
        field = f"alerts[{i}].labels.{metric_label}"
        if metric_label not in merged:
            raise ConfigError(field, None, f"the alert has no {metric_label!r} label")
        metric = _metric(merged[metric_label], field)
        experiment = merged.get(labels.get("experiment", "experiment")) or None
        name = merged.get(labels.get("name", "name"), "")
        starts = _utc(am.startsAt)
        ends = _utc(am.endsAt) if am.endsAt is not None and am.endsAt.year > 1 else None
        annotations = {**payload.commonAnnotations, **am.annotations}
        alert = Alert(
            metric=metric,
            fired_at=starts if am.status == "firing" else now,
            experiment=experiment,
            since=None,
            source="alertmanager",
            name=name,
            summary=annotations.get("summary", annotations.get("description", "")),
            labels=dict(merged),
            annotations=annotations,
            fingerprint=am.fingerprint,
        )
        key = f"{am.fingerprint}@{starts.isoformat()}"
        out.append(MappedAlert(key=key, status=am.status, alert=alert, ends_at=ends))
    return out
