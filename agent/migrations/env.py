"""Alembic environment of the agent's tables: runs on the connection ``AgentStore`` passes in.

Like the experiment core's (``lifecycle/migrations/env.py``), with the agent's own metadata and
version table: the two chains share the state database and never touch each other's tables.
"""

from __future__ import annotations

from agent.store import VERSION_TABLE, metadata
from lifecycle.store import run_migrations

run_migrations(metadata, VERSION_TABLE)
