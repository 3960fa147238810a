"""The experiment state store: tables, the engine, and migrations run on open.

SQLAlchemy Core over portable SQL: SQLite by default, PostgreSQL (or another dialect) by URL. The
schema is created and upgraded by the Alembic migrations shipped in ``lifecycle/migrations``, run
programmatically when a store is opened; nothing is created with ``create_all``.

Writers serialise: on SQLite a write transaction starts with ``BEGIN IMMEDIATE`` (it takes the
write lock before reading, so a read-check-write cannot interleave with another process); on
PostgreSQL rows are read ``FOR UPDATE``. Conditional updates and unique keys make the decisive
writes race-free on any dialect.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from tools.errors import ConfigError, RetryableError
from tools.vocabulary import as_utc, naive_utc

__all__ = [
    "VERSION_TABLE",
    "alert_ledger",
    "arms",
    "audit_log",
    "dump_json",
    "enable_wal",
    "experiments",
    "from_db_time",
    "kill_switches",
    "layers",
    "load_json",
    "metadata",
    "migrate",
    "models",
    "open_engine",
    "redact_url",
    "rollout_state",
    "run_migrations",
    "state_version",
    "to_db_time",
    "write",
]

VERSION_TABLE = "lifecycle_alembic_version"
_MIGRATIONS = Path(__file__).with_name("migrations")

metadata = MetaData()

layers = Table(
    "layers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("salt", String(200), nullable=True),
    Column("created_at", DateTime, nullable=False),
)

# The model registry: one row per registered version; the serving version of a model is its
# latest version not rolled back.
models = Table(
    "models",
    metadata,
    Column("id", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("refresh_minutes", Integer, nullable=True),
    Column("training_ne", Float, nullable=True),
    Column("registered_at", DateTime, nullable=False),
    # The declared serving cost (migration 0003, issue 18); None: not declared.
    Column("ms_per_request", Float, nullable=True),
    Column("memory_gb", Float, nullable=True),
    PrimaryKeyConstraint("id", "version", name="pk_models"),
)

experiments = Table(
    "experiments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("owner", String(200), nullable=False),
    Column("layer", String(64), ForeignKey("layers.id"), nullable=False),
    Column("traffic_pct", Float, nullable=False),
    Column("range_start", Float, nullable=False),
    Column("range_end", Float, nullable=False),
    Column("control", String(64), nullable=False),
    Column("targeting", Text, nullable=False),
    Column("rollout", Text, nullable=False),
    Column("guardrails", Text, nullable=False),
    Column("forced", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
)

arms = Table(
    "arms",
    metadata,
    Column("experiment_id", String(64), ForeignKey("experiments.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("position", Integer, nullable=False),
    Column("weight", Float, nullable=False),
    Column("model", String(64), nullable=True),
    Column("ad_load", Float, nullable=True),
    Column("params", Text, nullable=False),
    PrimaryKeyConstraint("experiment_id", "name", name="pk_arms"),
)

rollout_state = Table(
    "rollout_state",
    metadata,
    Column("experiment_id", String(64), ForeignKey("experiments.id"), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("stage", Integer, nullable=False),
    Column("prior", String(16), nullable=True),
    Column("stage_started_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("revision", Integer, nullable=False),
)

# One row per (scope, target) ever switched; ``active`` flips. The primary key and conditional
# updates on ``active`` make activation idempotent across processes.
kill_switches = Table(
    "kill_switches",
    metadata,
    Column("scope", String(16), nullable=False),
    Column("target", String(200), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("activated_at", DateTime, nullable=False),
    Column("activated_by", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("released_at", DateTime, nullable=True),
    Column("released_by", String(200), nullable=True),
    Column("release_reason", Text, nullable=True),
    PrimaryKeyConstraint("scope", "target", name="pk_kill_switches"),
)

# Append-only (the migration adds triggers refusing UPDATE and DELETE on SQLite and PostgreSQL).
# The largest id is the version of the state: every state change writes exactly here.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(32), nullable=False),
    Column("experiment_id", String(64), nullable=True, index=True),
    Column("target", String(200), nullable=True),
    Column("reason", Text, nullable=False),
    Column("before", Text, nullable=True),
    Column("after", Text, nullable=True),
    Column("idem_key", String(200), nullable=True, unique=True),
)


# Open and resolved alerts (``lifecycle.alerts``), added by migration 0002.
alert_ledger = Table(
    "alert_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("key", String(255), nullable=False),
    Column("experiment_id", String(64), nullable=True),
    Column("metric", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("fired_at", DateTime, nullable=False),
    Column("resolved_at", DateTime, nullable=True),
    Column("investigation_id", String(64), nullable=True),
    Column("detail", Text, nullable=False, default=""),
)
# At most one open alert per (source, key): the database, not a read-then-write, enforces it.
Index(
    "ix_alert_ledger_open",
    alert_ledger.c.source,
    alert_ledger.c.key,
    unique=True,
    sqlite_where=alert_ledger.c.status == "open",
    postgresql_where=alert_ledger.c.status == "open",
)
Index("ix_alert_ledger_key", alert_ledger.c.source, alert_ledger.c.key)

# --- values ------------------------------------------------------------------------------------


to_db_time = naive_utc
"""UTC, naive: how times are stored (portable across dialects)."""
from_db_time = as_utc
"""A stored time as an aware UTC datetime."""


def dump_json(value: Any) -> str:
    """Canonical JSON text of a value."""
    return json.dumps(value, sort_keys=True, default=str)


def load_json(raw: str | None) -> Any:
    """Parse stored JSON text (None stays None)."""
    return None if raw is None else json.loads(raw)


# --- engine and transactions -------------------------------------------------------------------


_EXTRAS = {"postgresql": "postgres", "clickhouse": "clickhouse", "chdb": "clickhouse"}
"""The ``vigil`` extra that installs the driver of a backend."""


def redact_url(url: str | URL) -> str:
    """A database URL as it may be printed or logged: its password replaced by ``***``.

    Args:
        url: A SQLAlchemy URL, or a plain ``postgresql://`` connection string.

    Returns:
        The URL with its password hidden; the text unchanged when it is no URL at all.
    """
    from tools.redaction import redact_url as _redact

    return _redact(url)


def _unreachable(what: str, url: URL, exc: BaseException) -> RetryableError:
    """One line naming the database, password hidden, and the driver's first line of why."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    why = reason[0] if reason else type(exc).__name__
    if url.password:
        why = why.replace(str(url.password), "***")
    return RetryableError(f"{what} {redact_url(url)} is unreachable: {why}")


def open_engine(url: str) -> Engine:
    """An engine for the state store; for SQLite, with transactions SQLAlchemy controls.

    In-memory SQLite (``sqlite://``) keeps one shared connection so that every caller sees the
    same database. Any other database is connected to once here, so that a wrong URL fails now.

    Raises:
        ConfigError: The URL does not parse, or its driver is not installed (names the extra).
        RetryableError: The database cannot be reached (one line, password hidden).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError("state_url", redact_url(url), f"not a database URL: {exc}") from exc
    if parsed.get_backend_name() != "sqlite":
        try:
            engine = create_engine(parsed, pool_pre_ping=True)
        except (ImportError, NoSuchModuleError) as exc:
            extra = _EXTRAS.get(parsed.get_backend_name())
            hint = f"pip install 'vigil[{extra}]'" if extra else "install its SQLAlchemy driver"
            raise ConfigError(
                "state_url", redact_url(parsed), f"no driver for {parsed.drivername}: {hint}"
            ) from exc
        try:
            with engine.connect():
                pass
        except DBAPIError as exc:
            engine.dispose()
            raise _unreachable("state database", parsed, exc) from exc
        return engine
    memory = parsed.database in (None, "", ":memory:")
    if not memory and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed,
        connect_args={"timeout": 30, "check_same_thread": False},
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (see the SQLite dialect documentation).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not memory:
            enable_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("vigil_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def enable_wal(cursor: Any, timeout_s: float = 30.0) -> None:
    """Put the database file in WAL mode, waiting for other connections to let it.

    WAL is a property of the file: once one connection has switched it, every later one finds it
    so. The switch needs a moment when no other connection holds a lock, and SQLite answers
    "database is locked" at once rather than after its busy timeout; two processes opening a new
    store together (the server and a CLI) hit that, so the switch is retried until it succeeds.

    Args:
        cursor: A DB-API cursor of a ``sqlite3`` connection to a file.
        timeout_s: How long to keep trying before the error is raised.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on any error."""
    with engine.execution_options(vigil_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise writers of the experiment state on one advisory lock for the transaction.
            conn.execute(text("SELECT pg_advisory_xact_lock(7718001)"))
        yield conn


# --- migrations ----------------------------------------------------------------------------------


def _alembic_config(conn: Connection, scripts: Path, version_table: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = version_table
    return cfg


def _current_revision(conn: Connection, version_table: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": version_table})
    return ctx.get_current_revision()


def run_migrations(target: MetaData, default_version_table: str) -> None:
    """The body of an Alembic ``env.py``: run the chain on the connection :func:`migrate` passes.

    Args:
        target: The metadata the chain's tables are declared in (for autogenerate).
        default_version_table: Where the revision is recorded when :func:`migrate` did not say.
    """
    from alembic import context

    attributes = context.config.attributes
    context.configure(
        connection=attributes["connection"],
        target_metadata=target,
        version_table=attributes.get("version_table", default_version_table),
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def migrate(
    engine: Engine,
    revision: str = "head",
    *,
    scripts: Path = _MIGRATIONS,
    version_table: str = VERSION_TABLE,
) -> str:
    """Upgrade the schema to ``revision`` (the newest by default); a no-op when it is there.

    Args:
        engine: The state store's engine (:func:`open_engine`).
        revision: The revision to upgrade to; ``head`` except in tests of the migrations.
        scripts: The Alembic script directory; the experiment core's by default. The agent
            passes its own, with its own ``version_table``: each package migrates its tables.
        version_table: Where the chain records its revision.

    Returns:
        The revision the schema is at now.
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    with engine.connect() as conn:
        cfg = _alembic_config(conn, scripts, version_table)
        chain = ScriptDirectory.from_config(cfg)
        target = chain.get_current_head() if revision == "head" else revision
        current = _current_revision(conn, version_table)
    if current == target and target is not None:
        return target
    with write(engine) as conn:
        # Checked again under the write lock: another process may have migrated meanwhile.
        if _current_revision(conn, version_table) != target:
            command.upgrade(_alembic_config(conn, scripts, version_table), str(target))
    return str(target)


def state_version(conn: Connection) -> int:
    """The version of the stored state: the id of the latest audit entry (0 when empty)."""
    return int(conn.execute(select(func.coalesce(func.max(audit_log.c.id), 0))).scalar_one())
