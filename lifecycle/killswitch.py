"""The kill switch, the big red button: activate and release, idempotent across processes.

A switch is a row keyed by (scope, target). Activation is a conditional update of ``active`` from
false to true, or an insert guarded by the primary key, so two processes pressing the same button
at once record it once: the loser's update matches no row, or its insert violates the key. The
caller records the audit entry in the same transaction only when this returns True.

Scopes: ``experiment`` (one experiment), ``layer`` (every experiment of a layer), ``model`` (every
experiment with an arm serving the model), ``global`` (everything; the target is ``*``).
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from lifecycle import store as s
from lifecycle.allocation import KillScope
from lifecycle.views import KillSwitchView

__all__ = ["GLOBAL_TARGET", "activate", "active_switches", "list_switches", "release"]

GLOBAL_TARGET = "*"


def activate(
    conn: Connection, scope: KillScope, target: str, actor: str, reason: str, at: datetime
) -> bool:
    """Activate a switch.

    Returns:
        True when this call activated it; False when it was active already.
    """
    where = (s.kill_switches.c.scope == scope) & (s.kill_switches.c.target == target)
    values = {
        "active": True,
        "activated_at": s.to_db_time(at),
        "activated_by": actor,
        "reason": reason,
        "released_at": None,
        "released_by": None,
        "release_reason": None,
    }
    flipped = conn.execute(
        update(s.kill_switches).where(where & (s.kill_switches.c.active.is_(False))).values(values)
    )
    if flipped.rowcount == 1:
        return True
    if conn.execute(select(s.kill_switches.c.active).where(where)).first() is not None:
        return False  # active already
    try:
        with conn.begin_nested():
            conn.execute(insert(s.kill_switches).values(scope=scope, target=target, **values))
    except IntegrityError:
        return False  # another writer inserted it first
    return True


def release(
    conn: Connection, scope: KillScope, target: str, actor: str, reason: str, at: datetime
) -> bool:
    """Release an active switch.

    Returns:
        True when this call released it; False when it was not active.
    """
    done = conn.execute(
        update(s.kill_switches)
        .where(
            (s.kill_switches.c.scope == scope)
            & (s.kill_switches.c.target == target)
            & (s.kill_switches.c.active.is_(True))
        )
        .values(
            active=False,
            released_at=s.to_db_time(at),
            released_by=actor,
            release_reason=reason,
        )
    )
    return done.rowcount == 1


def active_switches(conn: Connection) -> frozenset[tuple[KillScope, str]]:
    """The active (scope, target) pairs."""
    rows = conn.execute(
        select(s.kill_switches.c.scope, s.kill_switches.c.target).where(
            s.kill_switches.c.active.is_(True)
        )
    )
    return frozenset((cast(KillScope, scope), str(target)) for scope, target in rows)


def list_switches(conn: Connection, active_only: bool = True) -> list[KillSwitchView]:
    """Switches, newest activation first."""
    query = select(s.kill_switches).order_by(s.kill_switches.c.activated_at.desc())
    if active_only:
        query = query.where(s.kill_switches.c.active.is_(True))
    return [
        KillSwitchView(
            scope=r["scope"],
            target=r["target"],
            active=bool(r["active"]),
            activated_at=s.from_db_time(r["activated_at"]),
            activated_by=r["activated_by"],
            reason=r["reason"],
            released_at=None if r["released_at"] is None else s.from_db_time(r["released_at"]),
            released_by=r["released_by"],
            release_reason=r["release_reason"],
        )
        for r in conn.execute(query).mappings()
    ]
