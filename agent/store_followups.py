"""Follow-up schedules, claims and joined alerts of investigations, in the state database.

A mixin of :class:`agent.store.AgentStore`: the schedule (``due_at`` on the telemetry clock), the
claim a process holds while it runs a follow-up (wall clock, taken over once stale), the history
and the alerts that joined an open investigation live in ``agent_investigations`` beside the view
(migration 0002). Every change is one write transaction of the store (``_write``: the write lock
first, retried on contention), so two processes never claim the same follow-up.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, select, text, update
from sqlalchemy.engine import Connection

from agent._tables import investigations
from agent.models import Alert, FollowUp
from tools.errors import NotFoundError
from tools.vocabulary import as_utc as _aware
from tools.vocabulary import naive_utc as _naive
from tools.vocabulary import utc_now as utcnow

__all__ = ["OPEN_STATUSES", "Claim", "FollowUpRecords"]

_T = TypeVar("_T")

OPEN_STATUSES = ("running", "awaiting_approval", "watching")
"""An investigation in one of these is open: an alert for its scope joins it."""


@dataclass(frozen=True)
class Claim:
    """A follow-up one process won the right to run.

    Attributes:
        investigation_id: The investigation.
        n: The follow-up's number (1 for the first).
        due_at: When it was due (telemetry clock).
        resumed: Taken over from a process whose claim went stale (it may have run part of it).
    """

    investigation_id: str
    n: int
    due_at: datetime | None
    resumed: bool = False


class FollowUpRecords:
    """Follow-ups and joined alerts; mixed into :class:`agent.store.AgentStore`."""

    engine: Engine

    def _write(self, work: Callable[[Connection], _T]) -> _T:
        raise NotImplementedError

    def _locked(self, conn: Connection, query: Any) -> Any:
        raise NotImplementedError

    def _jsonlist(self, conn: Connection, investigation_id: str, column: str) -> list[Any] | None:
        row = self._locked(
            conn,
            select(investigations.c[column]).where(investigations.c.id == investigation_id),
        ).first()
        return None if row is None else list(json.loads(row[0] or "[]"))

    def schedule_followup(
        self, investigation_id: str, due_at: datetime | None, first: FollowUp | None = None
    ) -> None:
        """Set (or, with None, clear) when a watching investigation is re-run next.

        Args:
            investigation_id: The investigation.
            due_at: The telemetry clock's time of the next follow-up; None: no more.
            first: The first run's entry for the history (recorded once, when it starts
                watching); it also fixes ``watching_since``, the base of the schedule.
        """

        def work(conn: Connection) -> None:
            history = self._jsonlist(conn, investigation_id, "followups_json")
            if history is None:
                raise NotFoundError("investigation", investigation_id)
            values: dict[str, Any] = {"due_at": _naive(due_at) if due_at else None}
            if first is not None and not any(f.get("n") == first.n for f in history):
                history.insert(0, first.model_dump(mode="json"))
                values["followups_json"] = json.dumps(history)
                values["watching_since"] = _naive(first.ran_at)
            conn.execute(
                update(investigations)
                .where(investigations.c.id == investigation_id)
                .values(**values)
            )

        self._write(work)

    def followup_count(self, investigation_id: str) -> tuple[int, datetime | None]:
        """How many follow-ups were started, and since when it has been watching."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(investigations.c.followups_started, investigations.c.watching_since).where(
                    investigations.c.id == investigation_id
                )
            ).first()
        if row is None:
            raise NotFoundError("investigation", investigation_id)
        return int(row[0] or 0), _aware(row[1])

    def due_followups(self, now: datetime, lease_s: float) -> list[str]:
        """Watching investigations due at ``now``, and follow-ups whose claim went stale."""
        stale = _naive(utcnow()) - timedelta(seconds=lease_s)
        c = investigations.c
        due = (c.status == "watching") & (c.due_at <= _naive(now)) & c.claimed_by.is_(None)
        dead = c.claimed_by.is_not(None) & (c.claimed_at <= stale)
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.id).where(due | dead).order_by(c.due_at, c.id)).all()
        return [str(r[0]) for r in rows]

    def claim_followup(
        self, investigation_id: str, runner: str, now: datetime, lease_s: float
    ) -> Claim | None:
        """Claim the investigation's due follow-up for ``runner`` (one winner, across processes).

        A watching investigation due at ``now`` starts follow-up ``n + 1`` (its due time cleared,
        an entry added to the history); a claim older than ``lease_s`` (its process died) is
        taken over with the same number, to be resumed. Anything else: None.
        """
        stale = _naive(utcnow()) - timedelta(seconds=lease_s)
        c = investigations.c

        def work(conn: Connection) -> Claim | None:
            row = self._locked(
                conn,
                select(
                    c.status,
                    c.due_at,
                    c.followups_started,
                    c.claimed_by,
                    c.claimed_at,
                    c.followups_json,
                ).where(c.id == investigation_id),
            ).first()
            if row is None:
                return None
            status, due, started, holder, held_at, history = row
            taken = {"claimed_by": runner, "claimed_at": _naive(utcnow())}
            if holder is not None:
                if held_at is not None and held_at > stale:
                    return None
                conn.execute(update(investigations).where(c.id == investigation_id).values(**taken))
                return Claim(investigation_id, int(started), _aware(due), resumed=True)
            if status != "watching" or due is None or due > _naive(now):
                return None
            n = int(started) + 1
            entry = FollowUp(n=n, due_at=_aware(due), ran_at=now)
            items = [*json.loads(history or "[]"), entry.model_dump(mode="json")]
            conn.execute(
                update(investigations)
                .where(c.id == investigation_id)
                .values(due_at=None, followups_started=n, followups_json=json.dumps(items), **taken)
            )
            return Claim(investigation_id, n, _aware(due), resumed=False)

        return self._write(work)

    def finish_followup(self, investigation_id: str, runner: str, entry: FollowUp) -> bool:
        """Record how follow-up ``entry.n`` ended and release ``runner``'s claim on it.

        Returns:
            False when another process holds the claim now (it took over a stale one).
        """

        def work(conn: Connection) -> bool:
            row = self._locked(
                conn,
                select(investigations.c.claimed_by, investigations.c.followups_json).where(
                    investigations.c.id == investigation_id
                ),
            ).first()
            if row is None or row[0] != runner:
                return False
            items = [f for f in json.loads(row[1] or "[]") if f.get("n") != entry.n]
            items.append(entry.model_dump(mode="json"))
            items.sort(key=lambda f: int(f.get("n", 0)))
            conn.execute(
                update(investigations)
                .where(investigations.c.id == investigation_id)
                .values(claimed_by=None, claimed_at=None, followups_json=json.dumps(items))
            )
            return True

        return self._write(work)

    def join_open(self, alert: Alert, window_minutes: int) -> str | None:
        """Attach ``alert`` to the open investigation of its scope, if there is one; its id.

        Open: running, awaiting approval or watching. Its scope: the same experiment, or both
        global. It joins a watching investigation whenever it fired, any other when the two
        alerts fired within ``window_minutes`` of each other. The same alert joining twice (a
        re-sent notification) is recorded once. One write transaction: two alerts of the scope
        arriving together find the same investigation.
        """
        c = investigations.c
        scope = c.experiment_id == alert.experiment
        if alert.experiment is None:
            scope = c.experiment_id.is_(None)
        fired = _aware(alert.fired_at)
        window = timedelta(minutes=window_minutes)
        entry = alert.model_dump(mode="json")

        def work(conn: Connection) -> str | None:
            if conn.dialect.name == "postgresql":  # serialise joins of one scope
                key = f"vigil-incident:{alert.experiment or '*'}"
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
            rows = conn.execute(
                select(c.id, c.status, c.view_json)
                .where(scope & c.status.in_(OPEN_STATUSES))
                .order_by(c.created_at.desc(), c.id.desc())
            ).all()
            for ident, status, body in rows:
                opened = Alert.model_validate(json.loads(body)["alert"])
                near = abs(_aware(opened.fired_at) - fired) <= window
                if status != "watching" and not near:
                    continue
                joined = self._jsonlist(conn, ident, "joined_json") or []
                if entry not in joined and entry != opened.model_dump(mode="json"):
                    joined.append(entry)
                    conn.execute(
                        update(investigations)
                        .where(c.id == ident)
                        .values(joined_json=json.dumps(joined))
                    )
                return str(ident)
            return None

        return self._write(work)
