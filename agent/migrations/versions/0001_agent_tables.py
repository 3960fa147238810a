"""The agent's tables: investigations (with their reports) and mitigations.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Before this revision the agent created these tables with ``create_all`` on open; a store that has
them already (same columns, made by that code) is adopted as it is, so upgrading it keeps every
investigation and every mitigation's status.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _exists(table: str) -> bool:
    if op.get_context().as_sql:  # rendering SQL: there is no database to look at
        return False
    return bool(sa.inspect(op.get_bind()).has_table(table))


def upgrade() -> None:
    """Create both tables and their lookup indexes (unless made by the code before it)."""
    if not _exists("agent_investigations"):
        op.create_table(
            "agent_investigations",
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("updated_at", sa.DateTime, nullable=False),
            sa.Column("metric", sa.String(32), nullable=False),
            sa.Column("experiment_id", sa.String(64), nullable=True),
            sa.Column("view_json", sa.Text, nullable=False),
            sa.Column("report_html", sa.Text, nullable=False),
        )
        op.create_index("ix_agent_investigations_created", "agent_investigations", ["created_at"])
    if not _exists("agent_mitigations"):
        op.create_table(
            "agent_mitigations",
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("investigation_id", sa.String(64), nullable=True),
            sa.Column("action", sa.String(32), nullable=False),
            sa.Column("target", sa.String(128), nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("blast_radius", sa.Float, nullable=False),
            sa.Column("expected_effect", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("proposed_by", sa.String(128), nullable=False),
            sa.Column("approved_by", sa.String(128), nullable=True),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("decided_at", sa.DateTime, nullable=True),
            sa.Column("executed_at", sa.DateTime, nullable=True),
            sa.Column("acted_at", sa.DateTime, nullable=True),
            sa.Column("recovered", sa.Boolean, nullable=True),
            sa.Column("detail_json", sa.Text, nullable=False),
        )
        op.create_index(
            "ix_agent_mitigations_investigation", "agent_mitigations", ["investigation_id"]
        )


def downgrade() -> None:
    """Drop both tables (their indexes go with them)."""
    op.drop_index("ix_agent_mitigations_investigation", table_name="agent_mitigations")
    op.drop_table("agent_mitigations")
    op.drop_index("ix_agent_investigations_created", table_name="agent_investigations")
    op.drop_table("agent_investigations")
