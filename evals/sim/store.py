"""Writing the telemetry tables (DESIGN §3) to any SQLAlchemy URL, each store its bulk way.

* DuckDB (``duckdb:///file.duckdb``, the default warehouse): Arrow tables go straight into the
  table through the raw DuckDB connection (``INSERT ... SELECT`` over a registered Arrow table).
* PostgreSQL (``postgresql+psycopg://``): binary ``COPY`` encoded by numpy, or CSV ``COPY`` into
  a table whose column types are not the contract's (:mod:`evals.sim._bulk`), sent by a thread of
  its own so that the server parses one block while the next is simulated and encoded; the
  tables are analysed (a small sample) before the commit.
* chDB (``chdb:///path``): ``INSERT ... SELECT * FROM Python(arrow)`` into ``MergeTree`` tables
  with ``DateTime64(6, 'UTC')`` times (ClickHouse's DDL, for the ClickHouse dialects); string
  columns go as Arrow dictionaries, ClickHouse's ``LowCardinality``.
* Any other dialect (SQLite ...): chunked ``executemany`` inserts through SQLAlchemy Core.

All of it in one transaction where the store has them. Tables are created when missing, with the
types of the contract; a SQLite column stores NaN as NULL (readers treat NULL predictions as
invalid)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from evals.sim._bulk import (
    binary_ready,
    clickhouse_ddl,
    copy_payload,
    insert_chdb,
    pg_column_types,
    send_copy,
)
from tools._dialect_sql import CLICKHOUSE_DIALECTS
from tools.errors import ConfigError, TelemetryError
from tools.redaction import hide_passwords, redact_url

__all__ = ["TABLES", "TelemetryWriter", "metadata", "open_writer"]

_CHUNK_ROWS = 20_000
# DuckDB writes a table in row groups of 122 880 rows; one large INSERT compresses and writes far
# faster than many small ones, so Arrow tables are buffered until this many rows are waiting.
_FLUSH_ROWS = 8 * 122_880

# The contract's columns (DESIGN §3), ``name:kind`` in order; a kind is one SQLAlchemy type.
_KINDS: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "time": sa.DateTime,
    "id": sa.BigInteger,
    "int": sa.Integer,
    "text": sa.String,
    "real": sa.Double,
    "bool": sa.Boolean,
}
_EVENT = "ts:time request_id:id unit_id:id"  # what a request and its exposures share
_CONTRACT = {
    "requests": f"{_EVENT} country:text platform:text ad_type:text model_id:text "
    "model_version:text prediction:real fallback:bool label:int revenue:real latency_ms:real "
    "error:bool",
    "exposures": f"{_EVENT} experiment_id:text arm:text",
    "model_snapshots": "model_id:text model_version:text trained_at:time published_at:time "
    "training_ne:real training_calibration:real",
}

# Encoded PostgreSQL COPY streams waiting for the sender thread: about 35 MB per block of the
# simulator; two let the encoder run one block ahead of the server without unbounded memory.
_COPY_QUEUE = 2

# Statistics target of the ANALYZE after a load: the planner needs the tables' sizes and their
# few distinct ids at once, which a 3 000-row sample gives for an eighth of the server's CPU of
# the default (300 x 100 rows: about 15 % of a load's server CPU, measured); autovacuum analyses
# again later with the server's own target.
_ANALYZE_TARGET = 10

metadata = sa.MetaData()
TABLES: dict[str, sa.Table] = {
    name: sa.Table(
        name,
        metadata,
        *(
            sa.Column(column, _KINDS[kind]())
            for column, kind in (pair.split(":") for pair in spec.split())
        ),
    )
    for name, spec in _CONTRACT.items()
}


class _CopySender:
    """Sends encoded ``COPY`` streams through one psycopg connection from a thread of its own.

    The server parses rows in its own process: while it does, the caller simulates and encodes
    the next block instead of waiting on the socket, so both cores work (the sender thread
    mostly waits in libpq's I/O, which releases the GIL). Errors are raised to the caller at
    its next :meth:`put` or at :meth:`close`.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._queue: queue.Queue[tuple[str, list[str], list[bytes | memoryview], bool] | None]
        self._queue = queue.Queue(maxsize=_COPY_QUEUE)
        self._error: BaseException | None = None
        self._failed = ""  # the table whose COPY failed
        self._thread = threading.Thread(target=self._run, name="vigil-pg-copy", daemon=True)
        self._thread.start()

    def put(
        self, table: str, columns: list[str], payload: list[bytes | memoryview], *, binary: bool
    ) -> None:
        """Queue one ``COPY`` (blocks while the queue is full)."""
        self._raise()
        self._queue.put((table, columns, payload, binary))

    def close(self) -> None:
        """Wait for every queued ``COPY``; raise the first error."""
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so that a blocked put() returns and sees the error
            table, columns, payload, binary = item
            try:
                send_copy(self._raw, table, columns, payload, binary=binary)
            except BaseException as exc:  # raised again in the caller's thread
                self._error, self._failed = exc, table

    def _raise(self) -> None:
        if self._error is not None:
            first = (str(self._error).strip().splitlines() or [type(self._error).__name__])[0]
            why = hide_passwords(first)
            raise TelemetryError(f"COPY into {self._failed} failed: {why}") from self._error


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
        self._sender: _CopySender | None = None
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
            if (
                not self._pg_types
            ):  # every table's now: the sender thread holds the connection later
                self._pg_types = {name: pg_column_types(raw, name) for name in TABLES}
            binary = binary_ready(data, self._pg_types[table])
            if self._sender is None:
                self._sender = _CopySender(raw)
            self._sender.put(table, columns, copy_payload(data, binary=binary), binary=binary)
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
        self._close_sender()
        if self.dialect == "postgresql" and any(self.rows.values()):
            names = ", ".join(f'"{t}"' for t, n in self.rows.items() if n)
            self._conn.exec_driver_sql(f"SET LOCAL default_statistics_target = {_ANALYZE_TARGET}")
            self._conn.exec_driver_sql(f"ANALYZE {names}")

    def _close_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()

    def restore(self) -> None:
        """Stop the ``COPY`` thread; give the database its own thread count back.

        Called on the way out, after an error too: a ``COPY`` error then is not news (the
        transaction rolls back), so it is not raised over the error already on its way.
        """
        with suppress(TelemetryError):
            self._close_sender()
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
