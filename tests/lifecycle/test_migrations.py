"""The state store's Alembic chain: head, fresh stores, and upgrades of older stores to head."""

from __future__ import annotations

import importlib
import io
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from lifecycle.alerts import AlertLedger
from lifecycle.service import ExperimentService
from lifecycle.store import VERSION_TABLE, metadata, migrate, open_engine

MIGRATIONS = Path(__file__).parents[2] / "lifecycle" / "migrations"
FIRED = datetime(2026, 11, 20, 8, 32, tzinfo=UTC)
HEAD = "0003"  # the registry's declared costs (issue 18)


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _indexes(engine: sa.Engine, table: str) -> dict[str, bool]:
    return {str(i["name"]): bool(i["unique"]) for i in sa.inspect(engine).get_indexes(table)}


def test_head_is_the_alert_ledger_revision() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(cfg)
    assert scripts.get_heads() == [HEAD]  # one head: the chain is linear
    assert [s.revision for s in scripts.walk_revisions()] == ["0003", "0002", "0001"]
    assert scripts.get_revision("0002").down_revision == "0001"
    assert scripts.get_revision("0003").down_revision == "0002"


def test_fresh_store_gets_the_ledger_from_the_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ledger = AlertLedger(url)
    engine = open_engine(url)
    try:
        assert _revision(engine) == HEAD
        assert {"alert_ledger", "experiments", "audit_log", VERSION_TABLE} <= _tables(engine)
        assert _indexes(engine, "alert_ledger") == {
            "ix_alert_ledger_open": True,
            "ix_alert_ledger_key": False,
        }
        # The migrated schema is the one the code declares (no drift between the two).
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(ctx, metadata) == []
        # The partial unique index works: one open alert per key, a new one after resolving.
        first = ledger.open("monitor", "879:revenue", metric="revenue", fired_at=FIRED)
        assert first is not None
        assert ledger.open("monitor", "879:revenue", metric="revenue", fired_at=FIRED) is None
        assert ledger.resolve_open("monitor", "879:revenue", FIRED)
        again = ledger.open("monitor", "879:revenue", metric="revenue", fired_at=FIRED)
        assert again is not None and again.id != first.id
    finally:
        ledger.close()
        engine.dispose()


def test_store_at_0001_upgrades_to_head_keeping_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = open_engine(url)
    assert migrate(engine, "0001") == "0001"
    assert _revision(engine) == "0001" and "alert_ledger" not in _tables(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO layers (id, name, description, created_at) "
                "VALUES ('ranking', 'Ranking', '', '2026-11-20 06:00:00')"
            )
        )
    engine.dispose()

    with ExperimentService(url) as service:  # opening a store migrates it to head
        assert [layer.id for layer in service.layers()] == ["ranking"]
    engine = open_engine(url)
    try:
        assert _revision(engine) == HEAD and "alert_ledger" in _tables(engine)
        assert migrate(engine) == HEAD  # at head: a no-op
    finally:
        engine.dispose()
    ledger = AlertLedger(url)
    try:
        assert ledger.open("alertmanager", "fp@t0", metric="ctr", fired_at=FIRED) is not None
    finally:
        ledger.close()


def test_store_whose_ledger_predates_the_migration_is_adopted(tmp_path: Path) -> None:
    # Before 0002 the ledger made its own table (create_all) beside a store at 0001.
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = open_engine(url)
    migrate(engine, "0001")
    legacy = sa.MetaData()
    table = metadata.tables["alert_ledger"].to_metadata(legacy)
    legacy.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert().values(
                source="monitor",
                key="879:ctr",
                metric="ctr",
                status="open",
                fired_at=FIRED.replace(tzinfo=None),
                detail="before the migration",
            )
        )
    engine.dispose()

    ledger = AlertLedger(url)
    try:
        (kept,) = ledger.open_alerts()
        assert (kept.key, kept.detail) == ("879:ctr", "before the migration")
        assert ledger.open("monitor", "879:ctr", metric="ctr", fired_at=FIRED) is None
    finally:
        ledger.close()
    engine = open_engine(url)
    try:
        assert _revision(engine) == HEAD
    finally:
        engine.dispose()


def test_the_migration_renders_portable_sql_for_postgresql() -> None:
    buffer = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    module = importlib.import_module("lifecycle.migrations.versions.0002_alert_ledger")
    with Operations.context(ctx):
        module.upgrade()
    sql = " ".join(buffer.getvalue().split())
    assert "CREATE TABLE alert_ledger" in sql and "id SERIAL NOT NULL" in sql
    assert "CREATE UNIQUE INDEX ix_alert_ledger_open ON alert_ledger (source, key) " in sql
    assert "WHERE status = 'open'" in sql
    assert "CREATE INDEX ix_alert_ledger_key ON alert_ledger (source, key)" in sql
