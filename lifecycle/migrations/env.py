"""Alembic environment: runs on the connection :func:`lifecycle.store.migrate` passes in.

There is no ``alembic.ini`` and no URL here: the store opens its own engine and hands Alembic a
connection already inside its write transaction, so the whole upgrade is one transaction.
"""

from __future__ import annotations

from alembic import context

from lifecycle.store import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
