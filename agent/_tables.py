"""The agent's tables in the state database (migrated by ``agent/migrations``)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["investigations", "metadata", "mitigations"]

metadata = MetaData()
investigations = Table(
    "agent_investigations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("metric", String(32), nullable=False),
    Column("experiment_id", String(64), nullable=True),
    Column("view_json", Text, nullable=False),
    Column("report_html", Text, nullable=False, default=""),
    # Follow-ups (migration 0002): the schedule on the telemetry clock, the claim (wall clock).
    Column("due_at", DateTime, nullable=True),
    Column("watching_since", DateTime, nullable=True),
    Column("followups_started", Integer, nullable=False, server_default="0"),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_at", DateTime, nullable=True),
    Column("followups_json", Text, nullable=False, server_default="[]"),
    Column("joined_json", Text, nullable=False, server_default="[]"),
)
Index("ix_agent_investigations_created", investigations.c.created_at)
Index("ix_agent_investigations_due", investigations.c.due_at)
mitigations = Table(
    "agent_mitigations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("investigation_id", String(64), nullable=True),
    Column("action", String(32), nullable=False),
    Column("target", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    Column("blast_radius", Float, nullable=False),
    Column("expected_effect", Text, nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("proposed_by", String(128), nullable=False),
    Column("approved_by", String(128), nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("decided_at", DateTime, nullable=True),
    Column("executed_at", DateTime, nullable=True),
    Column("acted_at", DateTime, nullable=True),
    Column("recovered", Boolean, nullable=True),
    Column("detail_json", Text, nullable=False, default="{}"),
)
Index("ix_agent_mitigations_investigation", mitigations.c.investigation_id)
