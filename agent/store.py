"""The agent's tables in the state database: investigations, their reports, and mitigations.

The agent owns two tables (``agent_investigations``, ``agent_mitigations``) in the state database,
next to the experiment core's. Each package migrates its own: the agent's Alembic chain
(``agent/migrations``, version table ``agent_alembic_version``) runs when a store is opened,
through the same migration runner as lifecycle's, and never touches lifecycle's tables.

A mitigation's status moves only by compare-and-set (:meth:`AgentStore.transition`): an
``UPDATE ... WHERE status IN (...)`` that one caller wins, so a second approval or a retried call
can never execute an action twice, across threads and processes.

Every write is one transaction that takes the write lock before it reads (``BEGIN IMMEDIATE`` on
SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL): a deferred SQLite transaction that reads and
then writes is refused at once in WAL mode when another writer committed meanwhile, where an
immediate one waits its turn. Lock contention that outlasts SQLite's busy timeout is retried with
backoff for a bounded time and then raised as :class:`~tools.errors.StoreBusy` (retryable, never a
terminal failure).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError

from agent._tables import investigations as _investigations
from agent._tables import metadata
from agent._tables import mitigations as _mitigations
from agent.models import Alert, FollowUp, InvestigationView, MitigationStatus, MitigationView
from agent.store_followups import OPEN_STATUSES, Claim, FollowUpRecords
from lifecycle.store import migrate, open_engine
from tools.errors import NotFoundError, StoreBusy
from tools.vocabulary import as_utc as _aware
from tools.vocabulary import naive_utc as _naive
from tools.vocabulary import utc_now as utcnow

__all__ = [
    "OPEN_STATUSES",
    "VERSION_TABLE",
    "AgentStore",
    "Claim",
    "is_contention",
    "metadata",
    "utcnow",
]

_T = TypeVar("_T")
# SQLSTATEs of PostgreSQL's passing conflicts: serialization failure, deadlock, lock not available.
_PG_CONTENTION = {"40001", "40P01", "55P03"}

VERSION_TABLE = "agent_alembic_version"
_MIGRATIONS = Path(__file__).with_name("migrations")

# What the store keeps beside a view's JSON and lays over it when read.
_OVERLAID = {"mitigations", "next_followup_at", "followups", "joined_alerts"}
_VIEW_COLUMNS = (
    _investigations.c.view_json,
    _investigations.c.due_at,
    _investigations.c.followups_json,
    _investigations.c.joined_json,
)


def is_contention(exc: BaseException) -> bool:
    """True when a database error is lock contention that trying again can resolve."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_CONTENTION:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database table is locked" in text


class AgentStore(FollowUpRecords):
    """Investigations and mitigations in the state database.

    Args:
        url: SQLAlchemy URL of the state database (``Settings.state_url``).
        busy_s: How long lock contention is retried (beyond SQLite's own busy timeout) before
            :class:`~tools.errors.StoreBusy` is raised.
    """

    def __init__(self, url: str, *, busy_s: float = 60.0) -> None:
        self.engine = open_engine(url)
        self._busy_s = busy_s
        migrate(self.engine, scripts=_MIGRATIONS, version_table=VERSION_TABLE)

    def _write(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, retried on lock contention."""
        deadline = time.monotonic() + self._busy_s
        delay = 0.005
        while True:
            try:
                with self.engine.execution_options(vigil_write=True).begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if not is_contention(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StoreBusy(f"the state store stayed locked: {exc.orig}") from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _locked(self, conn: Connection, query: Any) -> Any:
        """``query`` reading rows this transaction will write (row-locked on PostgreSQL)."""
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return conn.execute(query)

    # -- investigations ------------------------------------------------------------------------

    def save_investigation(self, view: InvestigationView, report_html: str | None = None) -> None:
        """Insert or update an investigation (its mitigations live in their own table).

        The alert that opened an investigation is written once: an update keeps the stored one
        (a follow-up re-runs the graph with the same alert on a later window). The follow-up
        schedule and history and the joined alerts are kept beside the view, by their own
        methods, and laid over it when it is read.
        """
        body = view.model_dump(mode="json", exclude=_OVERLAID)
        now = _naive(utcnow())
        values: dict[str, Any] = {
            "status": view.status,
            "updated_at": now,
            "metric": view.alert.metric,
            "experiment_id": view.alert.experiment,
        }
        if report_html is not None:
            values["report_html"] = report_html

        def work(conn: Connection) -> None:
            row = self._locked(
                conn,
                select(_investigations.c.view_json).where(_investigations.c.id == view.id),
            ).first()
            if row is not None:
                body["alert"] = json.loads(row[0]).get("alert", body["alert"])
                conn.execute(
                    update(_investigations)
                    .where(_investigations.c.id == view.id)
                    .values(view_json=json.dumps(body), **values)
                )
                return
            conn.execute(
                insert(_investigations).values(
                    id=view.id,
                    created_at=_naive(view.created_at),
                    view_json=json.dumps(body),
                    **{"report_html": "", **values},
                )
            )

        try:
            self._write(work)
        except IntegrityError:  # a concurrent insert won between our read and insert
            self._write(work)

    def _views(self, rows: Iterable[Any]) -> list[InvestigationView]:
        views = []
        for row in rows:
            view = InvestigationView.model_validate_json(row[0])
            view.next_followup_at = _aware(row[1])
            view.followups = [FollowUp.model_validate(f) for f in json.loads(row[2] or "[]")]
            view.joined_alerts = [Alert.model_validate(a) for a in json.loads(row[3] or "[]")]
            view.mitigations = self.mitigations_of(view.id)
            views.append(view)
        return views

    def get_investigation(self, investigation_id: str) -> InvestigationView:
        """One investigation with its mitigations (NotFoundError if unknown)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_VIEW_COLUMNS).where(_investigations.c.id == investigation_id)
            ).first()
        if row is None:
            raise NotFoundError("investigation", investigation_id)
        return self._views([row])[0]

    def list_investigations(self, limit: int = 50) -> list[InvestigationView]:
        """The most recent investigations, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*_VIEW_COLUMNS)
                .order_by(_investigations.c.created_at.desc(), _investigations.c.id.desc())
                .limit(limit)
            ).all()
        return self._views(rows)

    def investigations_in(self, statuses: Iterable[str]) -> list[InvestigationView]:
        """Every investigation in one of ``statuses``, oldest first (for recovery sweeps)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*_VIEW_COLUMNS)
                .where(_investigations.c.status.in_(list(statuses)))
                .order_by(_investigations.c.created_at, _investigations.c.id)
            ).all()
        return self._views(rows)

    def report_html(self, investigation_id: str) -> str:
        """The stored HTML report ("" before the report node ran)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_investigations.c.report_html).where(
                    _investigations.c.id == investigation_id
                )
            ).first()
        if row is None:
            raise NotFoundError("investigation", investigation_id)
        return str(row[0] or "")

    # -- mitigations ---------------------------------------------------------------------------

    def add_mitigation(self, view: MitigationView, detail: dict[str, Any] | None = None) -> bool:
        """Insert a proposal unless one with its id exists (idempotent); True if inserted."""
        try:
            self._write(
                lambda conn: conn.execute(
                    insert(_mitigations).values(
                        id=view.id,
                        investigation_id=view.investigation_id,
                        action=view.action,
                        target=view.target,
                        status=view.status,
                        blast_radius=view.blast_radius,
                        expected_effect=view.expected_effect,
                        reason=view.reason,
                        proposed_by=view.proposed_by,
                        approved_by=view.approved_by,
                        created_at=_naive(utcnow()),
                        detail_json=json.dumps(detail or {}, default=str),
                    )
                )
            )
        except IntegrityError:
            return False
        return True

    def get_mitigation(self, mitigation_id: str) -> MitigationView:
        """One mitigation (NotFoundError if unknown)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_mitigations).where(_mitigations.c.id == mitigation_id)
            ).first()
        if row is None:
            raise NotFoundError("mitigation", mitigation_id)
        return self._view(row._mapping)

    def detail(self, mitigation_id: str) -> dict[str, Any]:
        """The mitigation's detail record (what was proposed from, verification figures)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_mitigations.c.detail_json, _mitigations.c.acted_at).where(
                    _mitigations.c.id == mitigation_id
                )
            ).first()
        if row is None:
            raise NotFoundError("mitigation", mitigation_id)
        out: dict[str, Any] = json.loads(row[0] or "{}")
        out["acted_at"] = _aware(row[1])
        return out

    def mitigations_of(self, investigation_id: str) -> list[MitigationView]:
        """An investigation's mitigations in the order they were proposed."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_mitigations)
                .where(_mitigations.c.investigation_id == investigation_id)
                .order_by(_mitigations.c.created_at, _mitigations.c.id)
            ).all()
        return [self._view(r._mapping) for r in rows]

    def list_mitigations(self, statuses: Iterable[str] | None = None) -> list[MitigationView]:
        """Every mitigation (optionally only those in ``statuses``), oldest first."""
        query = select(_mitigations).order_by(_mitigations.c.created_at, _mitigations.c.id)
        if statuses is not None:
            query = query.where(_mitigations.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._view(r._mapping) for r in rows]

    def transition(
        self,
        mitigation_id: str,
        expected: Iterable[MitigationStatus],
        new: MitigationStatus,
        **fields: Any,
    ) -> bool:
        """Move a mitigation to ``new`` if its status is one of ``expected`` (compare-and-set).

        Args:
            mitigation_id: The mitigation.
            expected: Statuses it may be in now.
            new: The status to move to.
            **fields: Columns to set with it (``approved_by``, ``decided_at``, ``executed_at``,
                ``acted_at``, ``recovered``, ``detail`` — merged into the detail record).

        Returns:
            True when this call made the move; False when the status was not one of ``expected``
            (someone else moved it first).
        """
        detail = fields.pop("detail", None)
        allowed = list(expected)
        base = {k: _naive(v) if isinstance(v, datetime) else v for k, v in fields.items()}

        def work(conn: Connection) -> bool:
            row = self._locked(
                conn,
                select(_mitigations.c.status, _mitigations.c.detail_json).where(
                    _mitigations.c.id == mitigation_id
                ),
            ).first()
            if row is None or row[0] not in allowed:
                return False
            values = dict(base)
            if detail is not None:
                merged = {**json.loads(row[1] or "{}"), **detail}
                values["detail_json"] = json.dumps(merged, default=str)
            result = conn.execute(
                update(_mitigations)
                .where(_mitigations.c.id == mitigation_id)
                .where(_mitigations.c.status.in_(allowed))
                .values(status=new, **values)
            )
            return bool(result.rowcount == 1)

        return self._write(work)

    def merge_detail(self, mitigation_id: str, detail: dict[str, Any]) -> None:
        """Merge ``detail`` into a mitigation's detail record, whatever its status."""

        def work(conn: Connection) -> None:
            row = self._locked(
                conn,
                select(_mitigations.c.detail_json).where(_mitigations.c.id == mitigation_id),
            ).first()
            if row is None:
                raise NotFoundError("mitigation", mitigation_id)
            merged = {**json.loads(row[0] or "{}"), **detail}
            conn.execute(
                update(_mitigations)
                .where(_mitigations.c.id == mitigation_id)
                .values(detail_json=json.dumps(merged, default=str))
            )

        self._write(work)

    @staticmethod
    def _view(row: RowMapping) -> MitigationView:
        detail = json.loads(row["detail_json"] or "{}")
        measured = detail.get("verification") or {}
        return MitigationView(
            id=row["id"],
            investigation_id=row["investigation_id"],
            action=row["action"],
            target=row["target"],
            status=row["status"],
            blast_radius=row["blast_radius"],
            expected_effect=row["expected_effect"] or "",
            reason=row["reason"] or "",
            proposed_by=row["proposed_by"],
            approved_by=row["approved_by"],
            decided_at=_aware(row["decided_at"]),
            executed_at=_aware(row["executed_at"]),
            recovered=row["recovered"],
            verification_pending=detail.get("verification_pending"),
            verification=measured.get("summary") if isinstance(measured, dict) else None,
            effect=detail.get("effect"),
        )
