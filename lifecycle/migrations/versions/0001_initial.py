"""Initial schema: layers, model registry, experiments, arms, rollout state, kill switches, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_APPEND_ONLY = "audit log is append-only"


def upgrade() -> None:
    """Create every table, and the triggers that keep the audit log append-only."""
    op.create_table(
        "layers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("salt", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("refresh_minutes", sa.Integer, nullable=True),
        sa.Column("training_ne", sa.Float, nullable=True),
        sa.Column("registered_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", "version", name="pk_models"),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("layer", sa.String(64), sa.ForeignKey("layers.id"), nullable=False),
        sa.Column("traffic_pct", sa.Float, nullable=False),
        sa.Column("range_start", sa.Float, nullable=False),
        sa.Column("range_end", sa.Float, nullable=False),
        sa.Column("control", sa.String(64), nullable=False),
        sa.Column("targeting", sa.Text, nullable=False),
        sa.Column("rollout", sa.Text, nullable=False),
        sa.Column("guardrails", sa.Text, nullable=False),
        sa.Column("forced", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "arms",
        sa.Column("experiment_id", sa.String(64), sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("ad_load", sa.Float, nullable=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "name", name="pk_arms"),
    )
    op.create_table(
        "rollout_state",
        sa.Column(
            "experiment_id", sa.String(64), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("prior", sa.String(16), nullable=True),
        sa.Column("stage_started_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
    )
    op.create_table(
        "kill_switches",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("activated_at", sa.DateTime, nullable=False),
        sa.Column("activated_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("released_at", sa.DateTime, nullable=True),
        sa.Column("released_by", sa.String(200), nullable=True),
        sa.Column("release_reason", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("scope", "target", name="pk_kill_switches"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=True),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("before", sa.Text, nullable=True),
        sa.Column("after", sa.Text, nullable=True),
        sa.Column("idem_key", sa.String(200), nullable=True, unique=True),
    )
    op.create_index("ix_audit_log_experiment_id", "audit_log", ["experiment_id"])
    _append_only_triggers()


def _append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    """Drop everything the upgrade created."""
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    for table in (
        "audit_log",
        "kill_switches",
        "rollout_state",
        "arms",
        "experiments",
        "models",
        "layers",
    ):
        op.drop_table(table)
