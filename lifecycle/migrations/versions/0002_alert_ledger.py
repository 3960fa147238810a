"""The alert ledger: open and resolved alerts of the monitors and the Alertmanager webhook.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Before this revision the ledger created its own table on open; a store that has it already (same
columns, made by that code) is adopted as it is, so upgrading such a store does not fail.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_TABLE = "alert_ledger"


def upgrade() -> None:
    """Create the ledger table, its lookup index and the one-open-alert-per-key index."""
    offline = op.get_context().as_sql  # rendering SQL: there is no database to look at
    if not offline and sa.inspect(op.get_bind()).has_table(_TABLE):
        return
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=True),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fired_at", sa.DateTime, nullable=False),
        sa.Column("resolved_at", sa.DateTime, nullable=True),
        sa.Column("investigation_id", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    # A partial unique index (SQLite >= 3.8 and PostgreSQL): at most one open alert per key.
    open_only = sa.text("status = 'open'")
    op.create_index(
        "ix_alert_ledger_open",
        _TABLE,
        ["source", "key"],
        unique=True,
        sqlite_where=open_only,
        postgresql_where=open_only,
    )
    op.create_index("ix_alert_ledger_key", _TABLE, ["source", "key"])


def downgrade() -> None:
    """Drop the ledger (its indexes go with it)."""
    op.drop_index("ix_alert_ledger_key", table_name=_TABLE)
    op.drop_index("ix_alert_ledger_open", table_name=_TABLE)
    op.drop_table(_TABLE)
