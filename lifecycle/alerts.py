"""The alert ledger: open and resolved alerts, persisted in the state database.

Vigil's monitors and the Alertmanager webhook record every alert here, so that an alert for the
same experiment and metric is not fired twice while one is open (monitors), and a firing episode
is investigated once however often it is re-sent (Alertmanager) — across restarts and processes.
At most one open alert per (source, key) is enforced by a partial unique index, and writes take
the state store's write lock (``lifecycle.store.write``). The table belongs to the state store's
schema (``lifecycle.store.alert_ledger``, Alembic migration 0002): opening a ledger migrates the
store like opening the experiment service does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from lifecycle.store import alert_ledger as _alerts
from lifecycle.store import migrate, open_engine, write
from tools.vocabulary import as_utc as _aware
from tools.vocabulary import naive_utc as _naive_utc

__all__ = ["AlertLedger", "AlertRecord", "AlertStatus"]

AlertStatus = Literal["open", "resolved"]
_RESOLVED_FIRST = "resolved before Vigil saw it fire"


@dataclass(frozen=True)
class AlertRecord:
    """One alert in the ledger.

    Attributes:
        id: Ledger row id.
        source: Who fired it (``monitor``, ``alertmanager``).
        key: Identity within the source: ``experiment:metric`` for monitors, fingerprint and
            start time for Alertmanager.
        experiment_id: The experiment, or None for a global alert.
        metric: The alert metric (Vigil's vocabulary).
        status: ``open`` or ``resolved``.
        fired_at: When it fired (UTC).
        resolved_at: When it was resolved (UTC), None while open.
        investigation_id: The investigation it started, if any.
        detail: One line a human reads.
    """

    id: int
    source: str
    key: str
    experiment_id: str | None
    metric: str
    status: AlertStatus
    fired_at: datetime
    resolved_at: datetime | None
    investigation_id: str | None
    detail: str

    @classmethod
    def _from_row(cls, row: RowMapping) -> AlertRecord:
        fired = _aware(row["fired_at"])
        assert fired is not None  # the column is NOT NULL
        return cls(
            id=int(row["id"]),
            source=str(row["source"]),
            key=str(row["key"]),
            experiment_id=row["experiment_id"],
            metric=str(row["metric"]),
            status="open" if row["status"] == "open" else "resolved",
            fired_at=fired,
            resolved_at=_aware(row["resolved_at"]),
            investigation_id=row["investigation_id"],
            detail=str(row["detail"] or ""),
        )


def _find(conn: Connection, source: str, key: str) -> AlertRecord | None:
    query = (
        select(_alerts)
        .where(and_(_alerts.c.source == source, _alerts.c.key == key))
        .order_by(_alerts.c.id.desc())
        .limit(1)
    )
    row = conn.execute(query).mappings().first()
    return None if row is None else AlertRecord._from_row(row)


class AlertLedger:
    """Open and resolved alerts, persisted in the state database (table ``alert_ledger``).

    Args:
        state_url: SQLAlchemy URL of the state database (``Settings.state_url``); its schema is
            migrated to the newest revision on open.
    """

    def __init__(self, state_url: str) -> None:
        self._engine = open_engine(state_url)
        migrate(self._engine)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def find(self, source: str, key: str) -> AlertRecord | None:
        """The most recent alert of ``source`` with ``key``, open or resolved."""
        with self._engine.connect() as conn:
            return _find(conn, source, key)

    def open(
        self,
        source: str,
        key: str,
        *,
        metric: str,
        fired_at: datetime,
        experiment_id: str | None = None,
        detail: str = "",
        once: bool = False,
    ) -> AlertRecord | None:
        """Record a newly fired alert unless it is a duplicate.

        Args:
            source: Who fired it.
            key: Identity within the source.
            metric: The alert metric.
            fired_at: When it fired.
            experiment_id: The experiment, if any.
            detail: One line a human reads.
            once: Refuse the key if it was ever recorded, not only while open (an Alertmanager
                firing episode is identified by its start, so it is new exactly once).

        Returns:
            The new record, or None when an open alert with the same key exists (or, with
            ``once``, any alert with the key).
        """
        with self._lock:
            values = {
                "source": source,
                "key": key,
                "experiment_id": experiment_id,
                "metric": metric,
                "status": "open",
                "fired_at": _naive_utc(fired_at),
                "detail": detail,
            }
            try:
                with write(self._engine) as conn:
                    # Under the write lock: no other process can record the key in between.
                    if once and _find(conn, source, key) is not None:
                        return None
                    conn.execute(insert(_alerts).values(**values))
                    return _find(conn, source, key)
            except IntegrityError:
                return None

    def attach(self, record_id: int, investigation_id: str) -> None:
        """Note the investigation an alert started."""
        with write(self._engine) as conn:
            conn.execute(
                update(_alerts)
                .where(_alerts.c.id == record_id)
                .values(investigation_id=investigation_id)
            )

    def detach(self, record_id: int, investigation_id: str) -> bool:
        """Take an alert back from a (failed) investigation so that it can be investigated anew.

        A compare-and-set: of concurrent callers naming the same investigation, one wins.

        Returns:
            True when this call detached it (the caller must now start a new investigation and
            :meth:`attach` it; until then :meth:`unattached` lists the alert).
        """
        with write(self._engine) as conn:
            done = conn.execute(
                update(_alerts)
                .where(
                    and_(_alerts.c.id == record_id, _alerts.c.investigation_id == investigation_id)
                )
                .values(investigation_id=None)
            )
        return bool(done.rowcount)

    def unattached(self) -> list[AlertRecord]:
        """Alerts claimed but never attached to an investigation, oldest first.

        A process that claimed an alert and died before its investigation was recorded leaves
        one; start-up re-submits them so that no accepted alert is lost. A resolution seen
        before its alert ever fired is not a claim and is not listed.
        """
        query = select(_alerts).where(_alerts.c.investigation_id.is_(None)).order_by(_alerts.c.id)
        with self._engine.connect() as conn:
            records = [AlertRecord._from_row(r) for r in conn.execute(query).mappings()]
        return [r for r in records if not (r.status == "resolved" and r.detail == _RESOLVED_FIRST)]

    def discard(self, record_id: int) -> None:
        """Forget an alert that could not be acted on (so that a retry is not a duplicate)."""
        with write(self._engine) as conn:
            conn.execute(delete(_alerts).where(_alerts.c.id == record_id))

    def resolve_open(self, source: str, key: str, at: datetime) -> bool:
        """Resolve the open alert with ``key``, if there is one; True when one was closed."""
        with write(self._engine) as conn:
            done = conn.execute(
                update(_alerts)
                .where(
                    and_(
                        _alerts.c.source == source,
                        _alerts.c.key == key,
                        _alerts.c.status == "open",
                    )
                )
                .values(status="resolved", resolved_at=_naive_utc(at))
            )
        return bool(done.rowcount)

    def resolve(
        self, source: str, key: str, at: datetime, *, metric: str, experiment_id: str | None = None
    ) -> AlertRecord:
        """Mark the open alert with ``key`` resolved, or record a resolution seen first.

        Args:
            source: Who fired it.
            key: Identity within the source.
            at: When it was resolved.
            metric: The alert metric (used when no open record exists).
            experiment_id: The experiment (used when no open record exists).

        Returns:
            The resolved record.
        """
        resolved_at = _naive_utc(at)
        with self._lock, write(self._engine) as conn:
            done = conn.execute(
                update(_alerts)
                .where(
                    and_(
                        _alerts.c.source == source,
                        _alerts.c.key == key,
                        _alerts.c.status == "open",
                    )
                )
                .values(status="resolved", resolved_at=resolved_at)
            )
            if done.rowcount == 0 and _find(conn, source, key) is None:
                conn.execute(
                    insert(_alerts).values(
                        source=source,
                        key=key,
                        experiment_id=experiment_id,
                        metric=metric,
                        status="resolved",
                        fired_at=resolved_at,
                        resolved_at=resolved_at,
                        detail=_RESOLVED_FIRST,
                    )
                )
        record = self.find(source, key)
        assert record is not None  # written above or already present
        return record

    def open_alerts(self, source: str | None = None) -> list[AlertRecord]:
        """Every open alert, oldest first, optionally of one source."""
        query = select(_alerts).where(_alerts.c.status == "open").order_by(_alerts.c.id)
        if source is not None:
            query = query.where(_alerts.c.source == source)
        with self._engine.connect() as conn:
            return [AlertRecord._from_row(r) for r in conn.execute(query).mappings()]
