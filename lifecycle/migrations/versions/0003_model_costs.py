"""The model registry's declared serving cost: milliseconds per request and memory (issue 18).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Two nullable columns on ``models``; versions registered before this revision declare no cost
(the preflight then falls back to the ``model_costs`` setting, then to the replay's measurement).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_TABLE = "models"
_COLUMNS = ("ms_per_request", "memory_gb")


def upgrade() -> None:
    """Add the declared cost columns (nullable: nothing to backfill)."""
    for name in _COLUMNS:
        op.add_column(_TABLE, sa.Column(name, sa.Float, nullable=True))


def downgrade() -> None:
    """Drop the declared cost columns (batch mode: SQLite rebuilds the table)."""
    with op.batch_alter_table(_TABLE) as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
