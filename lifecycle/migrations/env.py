"""Alembic environment: runs on the connection :func:`lifecycle.store.migrate` passes in.

There is no ``alembic.ini`` and no URL here: the store opens its own engine and hands Alembic a
connection already inside its write transaction, so the whole upgrade is one transaction.
"""

from __future__ import annotations

from lifecycle.store import VERSION_TABLE, metadata, run_migrations

run_migrations(metadata, VERSION_TABLE)
