"""The experiment state store on a real PostgreSQL server (started by the suite, tests/pg.py).

The Alembic chains of both packages run there, the service creates, kills and audits, a kill
pressed from many threads at once is recorded once, and a server that cannot be reached or a
driver that is missing gives one line naming the URL with its password hidden.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from agent.store import VERSION_TABLE as AGENT_VERSION_TABLE
from agent.store import AgentStore
from agent.store import metadata as agent_metadata
from lifecycle.service import ExperimentService
from lifecycle.store import VERSION_TABLE, metadata, open_engine
from lifecycle.validation import parse_experiment_file
from tests.lifecycle.conftest import world
from tests.pg import PgServer
from tools.errors import ConfigError, RetryableError

LIFECYCLE_MIGRATIONS = Path(__file__).parents[2] / "lifecycle" / "migrations"


@pytest.fixture
def url(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A new, empty database per test."""
    return pg_server.url(pg_server.create_database(request.node.name[:30]))


def _revision(engine: sa.Engine, table: str) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": table}
        ).get_current_revision()


def test_both_chains_migrate_a_fresh_database_to_the_declared_schema(url: str) -> None:
    ExperimentService(url).close()
    AgentStore(url).engine.dispose()
    engine = open_engine(url)
    try:
        assert engine.dialect.name == "postgresql"
        assert _revision(engine, VERSION_TABLE) == "0003"
        assert _revision(engine, AGENT_VERSION_TABLE) is not None
        with engine.connect() as conn:
            # No drift between the migrations and the tables the code declares, on PostgreSQL.
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            diff = compare_metadata(ctx, [metadata, agent_metadata])  # type: ignore[arg-type]
            # The other chain's version table is the only table no metadata declares.
            assert [d[0] for d in diff] == ["remove_table"]
            assert diff[0][1].name == AGENT_VERSION_TABLE
        # Opening again is a no-op at head.
        ExperimentService(url).close()
        assert _revision(engine, VERSION_TABLE) == "0003"
    finally:
        engine.dispose()


def test_create_kill_and_audit_on_postgres(url: str) -> None:
    with ExperimentService(url) as service:
        created = service.create(parse_experiment_file(world()), "alice", start=True, reason="go")
        assert created == ["879", "901"]
        assert service.get("879").status == "ramping"  # a rollout, at its first stage
        assert service.kill("879", "carol", "revenue drop", key="mit-1") is True
        assert service.kill("879", "carol", "again", key="mit-2") is False  # already active
        view = service.get("879")
        assert view.status == "killed" and view.blocked_by == [("experiment", "879")]
        kills = [e for e in service.audit("879") if e.action == "kill"]
        assert len(kills) == 1 and kills[0].actor == "carol"
        assert service.version() == max(e.id for e in service.audit())
    engine = open_engine(url)
    try:
        # The audit log is append-only on PostgreSQL too (the migration's trigger).
        with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_log SET actor = 'mallory'"))
    finally:
        engine.dispose()


def test_a_kill_pressed_from_many_threads_is_recorded_once(url: str) -> None:
    with ExperimentService(url) as setup:
        setup.create(parse_experiment_file(world()), "alice", start=True)
    services = [ExperimentService(url) for _ in range(6)]
    barrier = threading.Barrier(len(services))
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def press(service: ExperimentService, name: str) -> None:
        try:
            barrier.wait()
            outcomes.append(service.kill("879", name, "race"))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [
        threading.Thread(target=press, args=(svc, f"oncall{i}")) for i, svc in enumerate(services)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        assert sorted(outcomes) == [False] * 5 + [True]
        assert len([e for e in services[0].audit("879") if e.action == "kill"]) == 1
    finally:
        for svc in services:
            svc.close()


def test_an_unreachable_database_is_one_line_without_the_password(pg_server: PgServer) -> None:
    bad = f"postgresql+psycopg://vigil:s3cret@127.0.0.1:{pg_server.port + 1}/vigil"
    with pytest.raises(RetryableError) as err:
        ExperimentService(bad)
    text = str(err.value)
    assert "\n" not in text and "s3cret" not in text
    assert "vigil:***@127.0.0.1" in text and "unreachable" in text


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as without the `postgres` extra
    with pytest.raises(ConfigError) as err:
        open_engine("postgresql+psycopg://vigil:s3cret@127.0.0.1:9/vigil")
    assert err.value.field == "state_url"
    assert "vigil[postgres]" in str(err.value) and "s3cret" not in str(err.value)
