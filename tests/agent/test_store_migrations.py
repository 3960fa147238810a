"""The agent's Alembic chain: fresh stores, stores made by ``create_all`` before it, PostgreSQL."""

from __future__ import annotations

import importlib
import io
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from agent.models import MitigationView
from agent.store import VERSION_TABLE, AgentStore, metadata
from lifecycle.service import ExperimentService
from lifecycle.store import VERSION_TABLE as LIFECYCLE_VERSION_TABLE
from lifecycle.store import open_engine

AGENT_TABLES = {"agent_investigations", "agent_mitigations"}


def _revision(engine: sa.Engine, table: str = VERSION_TABLE) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": table}
        ).get_current_revision()


def _proposal(ident: str) -> MitigationView:
    return MitigationView(
        id=ident,
        investigation_id="inv-1",
        action="kill_experiment",
        target="879",
        status="proposed",
        blast_radius=0.1,
    )


def test_a_fresh_store_is_migrated_beside_the_experiment_core(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with ExperimentService(url):
        pass
    store = AgentStore(url)
    assert store.add_mitigation(_proposal("m-1"))
    engine = open_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert AGENT_TABLES | {VERSION_TABLE, LIFECYCLE_VERSION_TABLE, "experiments"} <= tables
        # Two chains, two version tables: neither records the other's revision.
        assert _revision(engine) == "0002"
        assert _revision(engine, LIFECYCLE_VERSION_TABLE) == "0003"
        with engine.connect() as conn:
            # The migrated tables are the ones the code declares (lifecycle's are not ours).
            ours = {"include_name": lambda name, kind, _: kind != "table" or name in AGENT_TABLES}
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, **ours})
            assert compare_metadata(ctx, metadata) == []
    finally:
        engine.dispose()
    # Opening again is a no-op that keeps the data.
    again = AgentStore(url)
    assert again.get_mitigation("m-1").status == "proposed"
    # The compare-and-set still lets one caller win.
    assert again.transition("m-1", ["proposed"], "approved", approved_by="carol") is True
    assert again.transition("m-1", ["proposed"], "approved", approved_by="dave") is False
    assert again.get_mitigation("m-1").approved_by == "carol"


def test_tables_made_by_create_all_before_the_chain_are_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = open_engine(url)
    legacy = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(legacy)
    legacy.create_all(engine)  # what AgentStore did before its migrations: no version table
    now = datetime(2026, 11, 20, 9)
    with engine.begin() as conn:
        conn.execute(
            legacy.tables["agent_mitigations"].insert(),
            {
                "id": "m-old",
                "action": "kill_experiment",
                "target": "879",
                "status": "proposed",
                "blast_radius": 0.1,
                "expected_effect": "",
                "reason": "",
                "proposed_by": "vigil",
                "created_at": now,
                "detail_json": "{}",
            },
        )
    engine.dispose()

    store = AgentStore(url)
    assert store.get_mitigation("m-old").status == "proposed"
    engine = open_engine(url)
    try:
        assert _revision(engine) == "0002"
    finally:
        engine.dispose()


def test_the_migration_renders_sql_for_postgresql() -> None:
    buffer = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    module = importlib.import_module("agent.migrations.versions.0001_agent_tables")
    with Operations.context(ctx):
        module.upgrade()
    sql = " ".join(buffer.getvalue().split())
    assert "CREATE TABLE agent_investigations" in sql and "CREATE TABLE agent_mitigations" in sql
    assert "recovered BOOLEAN" in sql and "blast_radius FLOAT NOT NULL" in sql
    assert "CREATE INDEX ix_agent_mitigations_investigation" in sql
