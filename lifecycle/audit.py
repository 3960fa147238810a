"""The append-only audit log: who changed what, when, why, and the state before and after.

Every state change writes one entry in the same transaction as the change, so the log and the
state cannot disagree; the largest entry id is the version of the state. An optional idempotency
key is unique: a second action carrying a key already recorded fails the transaction, which is
how a retried mitigation is made to take effect once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from lifecycle import store as s
from lifecycle.views import AuditEntry

__all__ = ["first_starts", "key_used", "read", "record"]


def record(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    reason: str = "",
    experiment_id: str | None = None,
    target: str | None = None,
    before: Any = None,
    after: Any = None,
    key: str | None = None,
) -> int:
    """Append one entry and return its id (the new state version).

    Raises:
        sqlalchemy.exc.IntegrityError: When ``key`` was recorded before.
    """
    result = conn.execute(
        insert(s.audit_log).values(
            at=s.to_db_time(at),
            actor=actor,
            action=action,
            experiment_id=experiment_id,
            target=target,
            reason=reason,
            before=None if before is None else s.dump_json(before),
            after=None if after is None else s.dump_json(after),
            idem_key=key,
        )
    )
    pk = result.inserted_primary_key
    return int(pk[0]) if pk is not None else s.state_version(conn)


def key_used(conn: Connection, key: str) -> bool:
    """True when an entry carries the idempotency key."""
    query = select(s.audit_log.c.id).where(s.audit_log.c.idem_key == key)
    return conn.execute(query).first() is not None


def read(
    conn: Connection, experiment_id: str | None = None, limit: int | None = None
) -> list[AuditEntry]:
    """Entries oldest first; those about one experiment (or all); the newest ``limit`` ones."""
    query = select(s.audit_log).order_by(s.audit_log.c.id.desc())
    if experiment_id is not None:
        query = query.where(s.audit_log.c.experiment_id == experiment_id)
    if limit is not None:
        query = query.limit(limit)
    rows = list(conn.execute(query).mappings())
    return [
        AuditEntry(
            id=int(r["id"]),
            at=s.from_db_time(r["at"]),
            actor=r["actor"],
            action=r["action"],
            experiment_id=r["experiment_id"],
            target=r["target"],
            reason=r["reason"],
            before=s.load_json(r["before"]),
            after=s.load_json(r["after"]),
            key=r["idem_key"],
        )
        for r in reversed(rows)
    ]


def first_starts(conn: Connection, experiment_id: str | None = None) -> dict[str, datetime]:
    """Experiment id -> when it was first started (began serving), for those ever started."""
    query = (
        select(s.audit_log.c.experiment_id, func.min(s.audit_log.c.at))
        .where(s.audit_log.c.action == "start")
        .group_by(s.audit_log.c.experiment_id)
    )
    if experiment_id is not None:
        query = query.where(s.audit_log.c.experiment_id == experiment_id)
    return {str(exp): s.from_db_time(at) for exp, at in conn.execute(query)}
