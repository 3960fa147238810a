"""Prometheus Alertmanager webhook payloads (version 4) and their mapping onto :class:`Alert`.

Alertmanager adds fields of its own over time, so the payload models ignore unknown keys; the
fields Vigil relies on are required and validated. Which label holds the metric, the experiment
and the alert's name is configurable (``Settings.alert_labels``) so that existing alerting rules
need not be rewritten for Vigil.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agent.models import Alert, AlertMetric
from agent.server.errors import ErrorItem, validation_items
from tools.errors import ConfigError
from tools.vocabulary import METRIC_ALIASES, utc_now
from tools.vocabulary import as_utc as _utc

__all__ = [
    "ALERT_FIELDS",
    "AlertmanagerAlert",
    "AlertmanagerPayload",
    "Batch",
    "MappedAlert",
    "map_payload",
    "parse_batch",
]

ALERT_FIELDS = ("name", "metric", "experiment")
_METRICS: tuple[str, ...] = get_args(AlertMetric)
# Common spellings in alerting rules, mapped onto Vigil's metric vocabulary.
_METRIC_ALIASES = METRIC_ALIASES


# Size limits: generous for real alerting rules, small enough that one alert stays one row.
MAX_LABELS = 64
MAX_ANNOTATIONS = 32
MAX_ALERTS = 1000
_Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_LabelValue = Annotated[str, StringConstraints(max_length=1024)]
_AnnotationValue = Annotated[str, StringConstraints(max_length=8192)]
_Url = Annotated[str, StringConstraints(max_length=2048)]
Labels = Annotated[dict[_Name, _LabelValue], Field(max_length=MAX_LABELS)]
Annotations = Annotated[dict[_Name, _AnnotationValue], Field(max_length=MAX_ANNOTATIONS)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AlertmanagerAlert(_Lenient):
    """One alert of a webhook notification."""

    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Annotations = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: _Url = ""
    fingerprint: str = Field(min_length=1, max_length=128)


class _Envelope(_Lenient):
    """The webhook body with its alerts not yet validated (each is judged on its own)."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: _Url = ""
    groupKey: Annotated[str, StringConstraints(max_length=8192)] = ""
    truncatedAlerts: int = Field(default=0, ge=0)
    groupLabels: Labels = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: Annotations = Field(default_factory=dict)
    externalURL: _Url = ""
    alerts: list[Any] = Field(max_length=MAX_ALERTS)


class AlertmanagerPayload(_Envelope):
    """The webhook body Alertmanager posts (``version`` 4)."""

    alerts: list[AlertmanagerAlert] = Field(max_length=MAX_ALERTS)


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


@dataclass
class Batch:
    """A webhook body judged alert by alert.

    Attributes:
        alerts: The valid alerts, mapped, in payload order.
        rejected: One item per problem of the invalid alerts, each naming its field
            (``alerts[1].startsAt``); a bad alert never holds up the good ones.
    """

    alerts: list[MappedAlert] = field(default_factory=list)
    rejected: list[ErrorItem] = field(default_factory=list)


def _metric(value: str, field: str) -> AlertMetric:
    name = value.strip().lower()
    name = _METRIC_ALIASES.get(name, name)
    if name not in _METRICS:
        raise ConfigError(field, value, f"metric must be one of {', '.join(_METRICS)}")
    return cast(AlertMetric, name)


def _check_labels(labels: Mapping[str, str]) -> None:
    unknown = sorted(set(labels) - set(ALERT_FIELDS))
    if unknown:
        raise ConfigError("alert_labels", unknown, f"keys must be among {ALERT_FIELDS}")


def _map_one(
    i: int, am: AlertmanagerAlert, envelope: _Envelope, labels: Mapping[str, str], now: datetime
) -> MappedAlert:
    merged = {**envelope.commonLabels, **am.labels}
    metric_label = labels.get("metric", "metric")
    path = f"alerts[{i}].labels.{metric_label}"
    if metric_label not in merged:
        raise ConfigError(path, None, f"the alert has no {metric_label!r} label")
    metric = _metric(merged[metric_label], path)
    experiment = merged.get(labels.get("experiment", "experiment")) or None
    name = merged.get(labels.get("name", "name"), "")
    starts = _utc(am.startsAt)
    ends = _utc(am.endsAt) if am.endsAt is not None and am.endsAt.year > 1 else None
    annotations = {**envelope.commonAnnotations, **am.annotations}
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
    return MappedAlert(key=key, status=am.status, alert=alert, ends_at=ends)


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
    _check_labels(labels)
    now = now or utc_now()
    return [_map_one(i, am, payload, labels, now) for i, am in enumerate(payload.alerts)]


def parse_batch(
    body: Any,
    labels: Mapping[str, str],
    *,
    now: datetime | None = None,
    skew_s: float = 300.0,
) -> Batch:
    """Validate a webhook body alert by alert, so that one bad alert is refused alone.

    Alertmanager does not retry a 4xx answer, so refusing a whole batch for one malformed alert
    would lose the good ones; the envelope (``version``, ``status``, common labels...) must be
    valid, each alert is then judged on its own.

    Args:
        body: The decoded JSON body.
        labels: ``Settings.alert_labels``.
        now: When the notification arrived (defaults to the current time, UTC).
        skew_s: How far in the future ``startsAt`` may lie (clock skew between hosts).

    Returns:
        The valid alerts and the problems of the others.

    Raises:
        ValidationError: The envelope itself is invalid (nothing is accepted).
    """
    _check_labels(labels)
    envelope = _Envelope.model_validate(body)
    now = now or utc_now()
    batch = Batch()
    for i, raw in enumerate(envelope.alerts):
        try:
            am = AlertmanagerAlert.model_validate(raw)
            if _utc(am.startsAt) > now + timedelta(seconds=skew_s):
                raise ConfigError(
                    f"alerts[{i}].startsAt",
                    am.startsAt.isoformat(),
                    f"startsAt is more than {skew_s:g} s in the future",
                )
            batch.alerts.append(_map_one(i, am, envelope, labels, now))
        except ValidationError as exc:
            batch.rejected += validation_items(exc.errors(), prefix=f"alerts[{i}]")
        except ConfigError as exc:
            batch.rejected.append(ErrorItem(field=exc.field, message=exc.message))
    return batch
