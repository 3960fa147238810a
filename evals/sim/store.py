"""Writing the telemetry tables (DESIGN §3) to any SQLAlchemy URL, each store its bulk way.

* DuckDB (``duckdb:///file.duckdb``, the default warehouse): Arrow tables go straight into the
  table through the raw DuckDB connection (``INSERT ... SELECT`` over a registered Arrow table).
* PostgreSQL (``postgresql+psycopg://``): binary ``COPY`` encoded by numpy, or CSV ``COPY`` into
  a table whose column types are not the contract's (:mod:`evals.sim._bulk`); the tables are
  analysed before the commit.
* chDB (``chdb:///path``): ``INSERT ... SELECT * FROM Python(arrow)`` into ``MergeTree`` tables
  with ``DateTime64(6, 'UTC')`` times (ClickHouse's DDL, for the ClickHouse dialects).
* Any other dialect (SQLite ...): chunked ``executemany`` inserts through SQLAlchemy Core.

All of it in one transaction where the store has them. Tables are created when missing, with the
types of the contract; a SQLite column stores NaN as NULL (readers treat NULL predictions as
invalid)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from evals.sim._bulk import (
    binary_ready,
    clickhouse_ddl,
    copy_postgres,
    insert_chdb,
    pg_column_types,
)
from tools._dialect_sql import CLICKHOUSE_DIALECTS
from tools.errors import ConfigError, TelemetryError
from tools.redaction import hide_passwords, redact_url

__all__ = ["TABLES", "TelemetryWriter", "metadata", "open_writer"]

_CHUNK_ROWS = 20_000
# DuckDB writes a table in row groups of 122 880 rows; one large INSERT compresses and writes far
# faster than many small ones, so Arrow tables are buffered until this many rows are waiting.
_FLUSH_ROWS = 8 * 122_880

metadata = sa.MetaData()
TABLES: dict[str, sa.Table] = {
    "requests": sa.Table(
        "requests",
        metadata,
        sa.Column("ts", sa.DateTime),
        sa.Column("request_id", sa.BigInteger),
        sa.Column("unit_id", sa.BigInteger),
        sa.Column("country", sa.String),
        sa.Column("platform", sa.String),
        sa.Column("ad_type", sa.String),
        sa.Column("model_id", sa.String),
        sa.Column("model_version", sa.String),
        sa.Column("prediction", sa.Double),
        sa.Column("fallback", sa.Boolean),
        sa.Column("label", sa.Integer),
        sa.Column("revenue", sa.Double),
        sa.Column("latency_ms", sa.Double),
        sa.Column("error", sa.Boolean),
    ),
    "exposures": sa.Table(
        "exposures",
        metadata,
        sa.Column("ts", sa.DateTime),
        sa.Column("request_id", sa.BigInteger),
        sa.Column("unit_id", sa.BigInteger),
        sa.Column("experiment_id", sa.String),
        sa.Column("arm", sa.String),
    ),
    "model_snapshots": sa.Table(
        "model_snapshots",
        metadata,
        sa.Column("model_id", sa.String),
        sa.Column("model_version", sa.String),
        sa.Column("trained_at", sa.DateTime),
        sa.Column("published_at", sa.DateTime),
        sa.Column("training_ne", sa.Double),
        sa.Column("training_calibration", sa.Double),
    ),
}


def _prepare_path(url: str) -> sa.URL:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError("db_url", redact_url(url), f"not a SQLAlchemy URL: {exc}") from None
    if parsed.get_backend_name() in ("duckdb", "sqlite") and parsed.database not in (
        None,
        "",
        ":memory:",
    ):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    return parsed


class TelemetryWriter:
    """Appends Arrow tables to the telemetry tables of one database, in one transaction.

    Use through :func:`open_writer`, which commits on success and rolls back on error.
    """

    def __init__(self, engine: sa.Engine, connection: sa.Connection) -> None:
        self._engine = engine
        self._conn = connection
        self._duck: Any = None
        self._threads: int | None = None
        if engine.dialect.name == "duckdb":
            self._duck = connection.connection.driver_connection
            # The simulator's numpy thread keeps one core busy; a second DuckDB thread only
            # contends with it (measured: twice the CPU for the same inserts on two cores).
            # The setting is the database instance's, which a reader in this process may share,
            # so it is restored when the writer is done.
            self._threads = int(
                self._duck.execute("SELECT current_setting('threads')").fetchall()[0][0]
            )
            self._duck.execute("SET threads = 1")
        self.rows: dict[str, int] = dict.fromkeys(TABLES, 0)
        self._pg_types: dict[str, dict[str, str]] = {}
        self._buffer: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
        self._buffered: dict[str, int] = dict.fromkeys(TABLES, 0)

    @property
    def dialect(self) -> str:
        """The database's dialect name."""
        return self._engine.dialect.name

    def write(self, table: str, data: pa.Table) -> None:
        """Append rows (columns in the contract's order) to ``table``."""
        if data.num_rows == 0:
            return
        columns = [c.name for c in TABLES[table].columns]
        if data.column_names != columns:
            raise TelemetryError(f"{table}: columns {data.column_names} are not {columns}")
        self.rows[table] += data.num_rows
        if self._conn.dialect.name == "postgresql" and self._conn.dialect.driver == "psycopg":
            raw = self._conn.connection.driver_connection
            if table not in self._pg_types:
                self._pg_types[table] = pg_column_types(raw, table)
            binary = binary_ready(data, self._pg_types[table])
            copy_postgres(raw, table, columns, data, binary=binary)
            return
        if self.dialect == "chdb":
            insert_chdb(self._conn, table, columns, data)
            return
        if self._duck is None:
            stmt = TABLES[table].insert()
            for batch in data.to_batches(max_chunksize=_CHUNK_ROWS):
                self._conn.execute(stmt, batch.to_pylist())
            return
        self._buffer[table].append(data)
        self._buffered[table] += data.num_rows
        if self._buffered[table] >= _FLUSH_ROWS:
            self._flush(table)

    def flush(self) -> None:
        """Insert whatever is buffered (called before the transaction commits).

        On PostgreSQL the written tables are analysed too, as a loading job would: without
        statistics the planner guesses the exposure join's size.
        """
        for table in TABLES:
            self._flush(table)
        if self.dialect == "postgresql" and any(self.rows.values()):
            names = ", ".join(f'"{t}"' for t, n in self.rows.items() if n)
            self._conn.exec_driver_sql(f"ANALYZE {names}")

    def restore(self) -> None:
        """Give the database its own thread count back."""
        if self._duck is not None and self._threads is not None:
            self._duck.execute(f"SET threads = {self._threads}")
            self._threads = None

    def _flush(self, table: str) -> None:
        if not self._buffer[table]:
            return
        data = pa.concat_tables(self._buffer[table])
        self._buffer[table].clear()
        self._buffered[table] = 0
        name = f"_vigil_sim_{table}"
        columns = ", ".join(c.name for c in TABLES[table].columns)
        self._duck.register(name, data)
        try:
            # DuckDB 2 streams results: fetch the row count so the insert has finished before
            # the Arrow table is unregistered.
            self._duck.execute(f"INSERT INTO {table} ({columns}) SELECT * FROM {name}").fetchall()
        finally:
            self._duck.unregister(name)

    def existing_snapshots(self) -> set[tuple[str, str]]:
        """``(model_id, model_version)`` pairs already in ``model_snapshots``."""
        t = TABLES["model_snapshots"]
        result = self._conn.execute(sa.select(t.c.model_id, t.c.model_version))
        return {(str(m), str(v)) for m, v in result}


def _create_tables(conn: sa.Connection, *, replace: bool) -> None:
    """The three tables, dropped first when ``replace``; ClickHouse's with its own DDL."""
    if conn.dialect.name not in CLICKHOUSE_DIALECTS:
        if replace:
            metadata.drop_all(conn)
        metadata.create_all(conn)
        return
    for table in TABLES.values():
        if replace:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{table.name}`")
        conn.exec_driver_sql(clickhouse_ddl(table))


@contextmanager
def open_writer(url: str, *, replace: bool = False) -> Iterator[TelemetryWriter]:
    """Open the database, create the tables if missing and yield a writer in a transaction.

    Args:
        url: SQLAlchemy URL (``duckdb:///...``, ``sqlite:///...``, ...).
        replace: Drop the three tables first (start an empty world).

    Raises:
        ConfigError: For a URL SQLAlchemy cannot parse.
        TelemetryError: When the database cannot be opened or written.
    """
    parsed = _prepare_path(url)
    try:
        engine = sa.create_engine(parsed)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        why = hide_passwords(str(exc))
        raise ConfigError("db_url", redact_url(url), f"cannot open: {why}") from None
    try:
        with engine.begin() as conn:
            _create_tables(conn, replace=replace)
        with engine.begin() as conn:
            writer = TelemetryWriter(engine, conn)
            try:
                yield writer
                writer.flush()
            finally:
                writer.restore()
    except sa.exc.SQLAlchemyError as exc:
        # One line: the driver's first (its hints and SQLAlchemy's link are noise here).
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        why = hide_passwords(lines[0])
        raise TelemetryError(f"telemetry store {redact_url(parsed)}: {why}") from exc
    finally:
        engine.dispose()
