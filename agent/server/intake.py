"""Alert intake: deduplicate through the alert ledger, then start investigations on the pool.

Used by the Alertmanager webhook and the monitor loop. An alert is first claimed in the ledger
(atomically: a duplicate cannot slip in between), then submitted; when the pool is full the claim
is withdrawn, so the sender's retry is treated as new and nothing is lost. A claim whose process
died before its investigation was recorded is re-submitted at start-up (:meth:`recover`), and a
re-sent alert whose investigation failed starts a new one instead of being a duplicate of it.

One incident, one investigation: before a claimed alert starts an investigation it is offered to
the open investigation of its scope (``join``, the agent's ``Investigator.join``); an alert for an
experiment (or for all traffic) that is being investigated, awaits approval or is watched joins
that investigation instead of starting a second one with a second mitigation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from agent.models import Alert
from agent.server.alertmanager import MappedAlert
from agent.server.metrics import ServerMetrics
from agent.server.pool import InvestigationPool, PoolFull
from lifecycle.alerts import AlertLedger, AlertRecord
from tools.errors import NotFoundError, VigilError

__all__ = ["AlertIntake", "IntakeResult"]

_log = logging.getLogger(__name__)


@dataclass
class IntakeResult:
    """What became of a batch of alerts.

    Attributes:
        investigations: Ids of the investigations started now.
        duplicates: Ids of the investigations earlier copies of an alert started ("" when the
            earlier copy started none).
        resolved: How many resolutions were recorded.
        refused: How many firing alerts were refused because the queue was full.
        joined: Ids of the open investigations alerts joined instead of starting their own.
    """

    investigations: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    resolved: int = 0
    refused: int = 0


class AlertIntake:
    """Turns alerts into investigations, once each.

    Args:
        pool: Where investigations run.
        ledger: Where alerts are recorded (state database).
        metrics: Counters to bump.
        status_of: An investigation's status (raises ``NotFoundError`` for an unknown id); a
            re-sent alert whose investigation ``failed`` or is unknown is investigated anew.
        join: Offers an alert to the open investigation of its scope; the id it joined, or None
            (``Investigator.join``). None: every alert starts its own investigation.
    """

    def __init__(
        self,
        pool: InvestigationPool,
        ledger: AlertLedger,
        metrics: ServerMetrics,
        status_of: Callable[[str], str] | None = None,
        join: Callable[[Alert], str | None] | None = None,
    ):
        self._pool = pool
        self._ledger = ledger
        self._metrics = metrics
        self._status_of = status_of
        self._join = join

    def receive(self, alerts: list[MappedAlert]) -> IntakeResult:
        """Record a webhook's alerts and start an investigation for each new firing one.

        Args:
            alerts: The webhook's alerts, mapped.

        Returns:
            What became of them; ``refused > 0`` means the caller should answer 429.
        """
        result = IntakeResult()
        for item in alerts:
            alert = item.alert
            if item.status == "resolved":
                self._ledger.resolve(
                    "alertmanager",
                    item.key,
                    item.ends_at or alert.fired_at,
                    metric=alert.metric,
                    experiment_id=alert.experiment,
                )
                result.resolved += 1
                self._metrics.alerts.labels(source="alertmanager", outcome="resolved").inc()
                continue
            started, joined = self._fire(alert, source="alertmanager", key=item.key, once=True)
            if started is None:
                previous = self._ledger.find("alertmanager", item.key)
                started, joined = self._retry_dead(alert, previous)
                if started is None:
                    ident = previous.investigation_id if previous is not None else None
                    result.duplicates.append(ident or "")
                    continue
            if started == "":
                result.refused += 1
            elif joined:
                result.joined.append(started)
            else:
                result.investigations.append(started)
        return result

    def _retry_dead(self, alert: Alert, previous: AlertRecord | None) -> tuple[str | None, bool]:
        """Investigate a re-sent alert anew when its investigation failed or is gone.

        Returns:
            As :meth:`_submit`; None when the earlier investigation stands.
        """
        if previous is None or not previous.investigation_id or self._status_of is None:
            return None, False
        try:
            status = self._status_of(previous.investigation_id)
        except NotFoundError:
            status = "unknown"
        if status not in ("failed", "unknown"):
            return None, False
        if not self._ledger.detach(previous.id, previous.investigation_id):
            return None, False  # a concurrent re-send took it over
        _log.info(
            "re-sent alert: investigation %s %s; starting anew", previous.investigation_id, status
        )
        return self._submit(alert, previous.id, source=previous.source)

    def recover(self) -> list[str]:
        """Re-submit every alert claimed but never attached to an investigation (a crash).

        Called at start-up, before requests are served. These alerts were accepted, so they are
        queued even past the pool's capacity.

        Returns:
            The ids of the investigations started.
        """
        started = []
        for record in self._ledger.unattached():
            try:
                alert = Alert.model_validate(
                    {
                        "metric": record.metric,
                        "fired_at": record.fired_at,
                        "experiment": record.experiment_id,
                        "source": "monitor" if record.source == "monitor" else "alertmanager",
                        "summary": record.detail,
                    }
                )
                investigation_id = self._pool.submit(alert, force=True)
            except (ValidationError, VigilError):  # one bad record must not stop the start-up
                _log.exception("could not recover %s alert %s", record.source, record.key)
                continue
            self._ledger.attach(record.id, investigation_id)
            self._metrics.alerts.labels(source=record.source, outcome="recovered").inc()
            _log.warning("recovered %s alert %s as %s", record.source, record.key, investigation_id)
            started.append(investigation_id)
        return started

    def fire(self, alert: Alert, *, source: str, key: str, once: bool = False) -> str | None:
        """Claim ``key`` in the ledger and start an investigation for ``alert``.

        Args:
            alert: What fired.
            source: Ledger source (``alertmanager``, ``monitor``).
            key: Identity within the source.
            once: The key may never recur (see :meth:`AlertLedger.open`).

        Returns:
            The new investigation's id (or the open one it joined); None for a duplicate; ``""``
            when the pool was full (the claim is withdrawn).
        """
        return self._fire(alert, source=source, key=key, once=once)[0]

    def _fire(self, alert: Alert, *, source: str, key: str, once: bool) -> tuple[str | None, bool]:
        record = self._ledger.open(
            source,
            key,
            metric=alert.metric,
            fired_at=alert.fired_at,
            experiment_id=alert.experiment,
            detail=alert.summary or alert.name,
            once=once,
        )
        if record is None:
            self._metrics.alerts.labels(source=source, outcome="duplicate").inc()
            return None, False
        return self._submit(alert, record.id, source=source)

    def submit_claimed(self, alert: Alert, record_id: int, *, source: str) -> str:
        """Start an investigation for an alert already claimed in the ledger (by a monitor).

        Returns:
            The new investigation's id (or that of the open investigation it joined), or ``""``
            when the pool was full (the claim is withdrawn, so the alert fires again on the next
            round).
        """
        return self._submit(alert, record_id, source=source)[0]

    def _submit(self, alert: Alert, record_id: int, *, source: str) -> tuple[str, bool]:
        """As :meth:`submit_claimed`, and whether the alert joined an open investigation."""
        if self._join is not None:
            try:
                joined = self._join(alert)
            except BaseException:
                self._ledger.discard(record_id)
                raise
            if joined is not None:
                self._ledger.attach(record_id, joined)
                self._metrics.alerts.labels(source=source, outcome="joined").inc()
                _log.info("%s alert %s joined %s", source, alert.name or alert.metric, joined)
                return joined, True
        try:
            investigation_id = self._pool.submit(alert)
        except PoolFull:
            self._ledger.discard(record_id)
            self._metrics.alerts.labels(source=source, outcome="refused").inc()
            _log.warning("queue full: refused %s alert %s", source, alert.name or alert.metric)
            return "", False
        except BaseException:
            self._ledger.discard(record_id)
            raise
        self._ledger.attach(record_id, investigation_id)
        self._metrics.alerts.labels(source=source, outcome="started").inc()
        return investigation_id, False
