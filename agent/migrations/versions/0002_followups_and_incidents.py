"""Follow-ups of watching investigations and alerts that joined an open investigation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07

Adds to ``agent_investigations`` the follow-up schedule (``due_at`` on the telemetry clock, the
first watching time, how many follow-ups were started), the claim a process holds while it runs
one (``claimed_by``, ``claimed_at``, wall clock), the follow-up history and the joined alerts
(JSON lists). Existing investigations get an empty schedule, history and list.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("due_at", sa.DateTime, nullable=True),
        sa.Column("watching_since", sa.DateTime, nullable=True),
        sa.Column("followups_started", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.DateTime, nullable=True),
        sa.Column("followups_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("joined_json", sa.Text, nullable=False, server_default="[]"),
    ]


def _present() -> tuple[set[str], set[str]]:
    """Columns and indexes ``agent_investigations`` has already (a store made by ``create_all``
    from the current code has them all)."""
    if op.get_context().as_sql:  # rendering SQL: there is no database to look at
        return set(), set()
    inspector = sa.inspect(op.get_bind())
    columns = {c["name"] for c in inspector.get_columns("agent_investigations")}
    indexes = {str(i["name"]) for i in inspector.get_indexes("agent_investigations")}
    return columns, indexes


def upgrade() -> None:
    """Add the follow-up and joined-alert columns, and an index on the due time."""
    columns, indexes = _present()
    missing = [c for c in _columns() if c.name not in columns]
    if missing:
        with op.batch_alter_table("agent_investigations") as batch:
            for column in missing:
                batch.add_column(column)
    if "ix_agent_investigations_due" not in indexes:
        op.create_index("ix_agent_investigations_due", "agent_investigations", ["due_at"])


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_agent_investigations_due", table_name="agent_investigations")
    with op.batch_alter_table("agent_investigations") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
