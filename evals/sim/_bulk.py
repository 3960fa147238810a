"""Bulk writes per dialect: PostgreSQL binary ``COPY`` and ClickHouse (chDB) Arrow inserts.

PostgreSQL: the Arrow table is encoded into ``COPY ... (FORMAT binary)`` bytes by numpy, with no
per-row Python. A row of the binary format is a field count, then per field its length and its
big-endian bytes. Runs of fixed-width columns become one big-endian structured array; runs of
string columns (dictionary-encoded by the simulator, so few distinct values) become one code per
distinct combination of values, whose encoded bytes are built once. Every row is then three or so
pieces laid at offsets computed by a cumulative sum. Measured on this machine: the encoding is
several times faster than Arrow's CSV writer and the server parses binary values for less CPU
than CSV text, so both ends of the pipe do less work (see ``vigil bench --only stores``).

A table whose columns are not the contract's types (a warehouse's own table, say ``timestamptz``
times or ``integer`` ids) or data with NULLs falls back to CSV ``COPY``, which the server converts
(times are sent in UTC with a ``Z``).

chDB: the Arrow table is inserted through chDB's own connection with ``INSERT INTO t SELECT *
FROM Python(table)``, ClickHouse's Arrow reader, instead of SQL text.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa

__all__ = [
    "binary_ready",
    "clickhouse_ddl",
    "copy_payload",
    "copy_postgres",
    "insert_chdb",
    "pg_binary_copy",
    "pg_column_types",
    "send_copy",
]

_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since the Unix epoch
_ROWS_PER_PIECE = 131_072  # rows encoded at a time: bounds the encoder's temporary arrays

# Arrow type -> (PostgreSQL type the contract's table has, big-endian numpy dtype).
_FIXED: dict[str, tuple[str, str]] = {
    "timestamp": ("timestamp without time zone", ">i8"),
    "int64": ("bigint", ">i8"),
    "int32": ("integer", ">i4"),
    "double": ("double precision", ">f8"),
    "bool": ("boolean", "u1"),
}


def _kind(field: pa.Field) -> str:
    """The column's encoding: a key of :data:`_FIXED`, ``text``, or ``other``."""
    t = field.type
    if pa.types.is_timestamp(t) and t.unit == "us" and t.tz is None:
        return "timestamp"
    if pa.types.is_int64(t):
        return "int64"
    if pa.types.is_int32(t):
        return "int32"
    if pa.types.is_float64(t):
        return "double"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type)):
        return "text"
    return "other"


def _pg_type(kind: str) -> str:
    return "text" if kind == "text" else _FIXED[kind][0]


def pg_column_types(raw: Any, table: str) -> dict[str, str]:
    """Column name -> type (``format_type``) of a PostgreSQL table, through a psycopg connection."""
    rows = raw.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (f'"{table}"',),
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def binary_ready(data: pa.Table, columns: dict[str, str]) -> bool:
    """Whether ``data`` can go as binary ``COPY`` into a table of these column types."""
    for field in data.schema:
        kind = _kind(field)
        if kind == "other" or data[field.name].null_count:
            return False
        accepted = ("text", "character varying") if kind == "text" else (_pg_type(kind),)
        if columns.get(field.name) not in accepted:
            return False
    return True


@dataclass(frozen=True)
class _Piece:
    """One run of columns of every row: fixed bytes ``(n, width)`` or coded variable bytes."""

    fixed: npt.NDArray[np.uint8] | None = None
    codes: npt.NDArray[np.int64] | None = None
    values: tuple[bytes, ...] = ()


def _fixed_run(data: pa.Table, names: list[str], kinds: list[str]) -> _Piece:
    """A run of fixed-width columns: per field its length then its big-endian value, packed."""
    fields: list[tuple[str, str]] = []
    for i, kind in enumerate(kinds):
        fields += [(f"l{i}", ">i4"), (f"v{i}", _FIXED[kind][1])]
    dtype = np.dtype(fields)
    out = np.empty(data.num_rows, dtype=dtype)
    for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        col = data[name]
        out[f"l{i}"] = np.dtype(_FIXED[kind][1]).itemsize
        if kind == "timestamp":
            us = col.cast(pa.int64()).to_numpy()
            out[f"v{i}"] = us - _PG_EPOCH_US
        elif kind == "bool":
            out[f"v{i}"] = col.to_numpy(zero_copy_only=False)
        else:
            out[f"v{i}"] = col.to_numpy()
    return _Piece(fixed=out.view(np.uint8).reshape(data.num_rows, dtype.itemsize))


def _text_run(data: pa.Table, names: list[str]) -> _Piece:
    """Strings of several columns: one code per row for its combination of values."""
    combined = np.zeros(data.num_rows, dtype=np.int64)
    columns: list[tuple[list[bytes], npt.NDArray[np.int64]]] = []
    for name in names:
        col = data[name].combine_chunks()
        if not pa.types.is_dictionary(col.type):
            col = col.dictionary_encode()
        words = [str(v).encode() for v in col.dictionary.to_pylist()]
        codes = col.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if combined.size and int(combined.max()) > 2**40:
            combined = np.unique(combined, return_inverse=True)[1]  # renumber: no overflow
        combined = combined * max(len(words), 1) + codes
        columns.append((words, codes))
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    values = tuple(
        b"".join(len(w).to_bytes(4, "big") + w for w in (ws[cs[row]] for ws, cs in columns))
        for row in first.tolist()
    )
    return _Piece(codes=inverse.astype(np.int64), values=values)


def _pieces(data: pa.Table) -> list[_Piece]:
    pieces: list[_Piece] = []
    run: list[str] = []
    run_kind: str | None = None
    kinds = {f.name: _kind(f) for f in data.schema}

    def close() -> None:
        if not run:
            return
        if run_kind == "text":
            pieces.append(_text_run(data, run))
        else:
            pieces.append(_fixed_run(data, run, [kinds[n] for n in run]))
        run.clear()

    for name in data.column_names:
        group = "text" if kinds[name] == "text" else "fixed"
        if group != run_kind:
            close()
            run_kind = group
        run.append(name)
    close()
    return pieces


def _encode(data: pa.Table) -> Iterator[bytes | memoryview]:
    """The rows of ``data`` as binary ``COPY`` tuples (no header or trailer).

    Rows are emitted grouped by the byte lengths of their string runs (a handful of groups), in
    their original order within a group: each group is then one ``(rows, row length)`` array
    built from whole-row copies, where keeping the exact order would scatter every byte through
    a 2-D index (measured several times slower). A table's row order carries no meaning.
    """
    n = data.num_rows
    count = np.full((n, 1), len(data.column_names), dtype=">i2").view(np.uint8)
    pieces = [_Piece(fixed=count.reshape(n, 2)), *_pieces(data)]
    texts = [p for p in pieces if p.codes is not None]
    key = np.zeros(n, dtype=np.int64)
    padded: list[npt.NDArray[np.uint8]] = []
    sizes: list[npt.NDArray[np.int64]] = []
    for piece in texts:
        assert piece.codes is not None
        size = np.array([len(v) for v in piece.values], dtype=np.int64)
        table = np.zeros((len(piece.values), int(size.max())), dtype=np.uint8)
        for i, value in enumerate(piece.values):
            table[i, : len(value)] = np.frombuffer(value, dtype=np.uint8)
        key = key * (int(size.max()) + 1) + size[piece.codes]
        padded.append(table)
        sizes.append(size)
    for group in np.unique(key).tolist():
        rows = np.flatnonzero(key == group) if texts else np.arange(n)
        parts: list[npt.NDArray[np.uint8]] = []
        t = 0
        for piece in pieces:
            if piece.fixed is not None:
                parts.append(piece.fixed[rows])
                continue
            assert piece.codes is not None
            codes = piece.codes[rows]
            width = int(sizes[t][codes[0]])
            parts.append(padded[t][codes, :width])
            t += 1
        yield np.concatenate(parts, axis=1).reshape(-1).data
        if not texts:
            break


def pg_binary_copy(data: pa.Table) -> Iterator[bytes | memoryview]:
    """The whole ``COPY ... (FORMAT binary)`` stream of ``data``, in pieces of bounded size.

    Args:
        data: Columns of the kinds :func:`binary_ready` accepts, no NULLs.
    """
    yield _HEADER
    for start in range(0, data.num_rows, _ROWS_PER_PIECE):
        yield from _encode(data.slice(start, _ROWS_PER_PIECE))
    yield _TRAILER


def _csv(data: pa.Table) -> bytes:
    for i, field in enumerate(data.schema):
        if pa.types.is_timestamp(field.type):
            utc = data[i].cast(pa.timestamp("us", tz="UTC"), safe=False)
            data = data.set_column(i, field.name, utc)
    out = io.BytesIO()
    pa_csv.write_csv(data, out, pa_csv.WriteOptions(include_header=False))
    return out.getvalue()


def copy_postgres(
    raw: Any, table: str, columns: list[str], data: pa.Table, *, binary: bool
) -> None:
    """``COPY`` Arrow rows into a PostgreSQL table through a psycopg connection.

    Args:
        raw: The psycopg connection (inside the writer's transaction).
        table: Table name.
        columns: Its columns, in the order of ``data``'s.
        data: The rows.
        binary: Binary format (see :func:`binary_ready`); else CSV, times in UTC with a ``Z``
            so a ``timestamptz`` column reads them right in any session time zone.
    """
    send_copy(raw, table, columns, copy_payload(data, binary=binary), binary=binary)


def copy_payload(data: pa.Table, *, binary: bool) -> list[bytes | memoryview]:
    """The whole ``COPY`` stream of ``data`` (see :func:`copy_postgres`), encoded now."""
    return list(pg_binary_copy(data)) if binary else [_csv(data)]


def send_copy(
    raw: Any,
    table: str,
    columns: list[str],
    payload: Iterable[bytes | memoryview],
    *,
    binary: bool,
) -> None:
    """``COPY`` an encoded stream (:func:`copy_payload`) into a table through psycopg."""
    names = ", ".join(f'"{c}"' for c in columns)
    fmt = "binary" if binary else "csv"
    with raw.cursor() as cur, cur.copy(f'COPY "{table}" ({names}) FROM STDIN (FORMAT {fmt})') as cp:
        for chunk in payload:
            cp.write(chunk)


def clickhouse_ddl(table: sa.Table) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a contract table on ClickHouse (chDB included).

    Times are ``DateTime64(6, 'UTC')`` (a plain ``DateTime`` would drop the microseconds and take
    the server's zone), strings ``LowCardinality``, floats ``Nullable`` (a missing prediction is
    invalid, not an error); rows are ordered by ``ts`` so a window reads only its parts.
    """
    cols: list[str] = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, sa.DateTime):
            ch = "DateTime64(6, 'UTC')"
        elif isinstance(kind, sa.BigInteger):
            ch = "Int64"
        elif isinstance(kind, sa.Integer):
            ch = "Int32"
        elif isinstance(kind, sa.Boolean):
            ch = "Bool"
        elif isinstance(kind, sa.Double):
            ch = "Nullable(Float64)"
        elif isinstance(kind, sa.String):
            ch = "LowCardinality(String)"
        else:
            raise TypeError(f"{table.name}.{column.name}: no ClickHouse type for {kind!r}")
        cols.append(f"`{column.name}` {ch}")
    order = "ts" if "ts" in table.c else "tuple()"
    return (
        f"CREATE TABLE IF NOT EXISTS `{table.name}` ({', '.join(cols)}) "
        f"ENGINE = MergeTree ORDER BY {order}"
    )


def _unique_dictionary(column: pa.Array) -> pa.Array:
    """A dictionary column whose dictionary holds each value once (or the column unchanged)."""
    if not pa.types.is_dictionary(column.type):
        return column
    values = column.dictionary.to_pylist()
    unique = list(dict.fromkeys(values))
    if len(unique) == len(values):
        return column
    if column.null_count:
        return column.cast(column.type.value_type)
    where = {v: i for i, v in enumerate(unique)}
    remap = np.array([where[v] for v in values], dtype=np.int32)
    indices = remap[column.indices.to_numpy(zero_copy_only=False)]
    return pa.DictionaryArray.from_arrays(
        pa.array(indices), pa.array(unique, type=column.type.value_type)
    )


def _one_dictionary(data: pa.Table) -> pa.Table:
    """One chunk per column and one dictionary per string column, each value in it once.

    chDB's Arrow reader takes a dictionary column as ClickHouse's ``LowCardinality`` directly
    (no string hashing) but wants one dictionary per column without repeats; the simulator's
    chunks each have their own, and two models may publish the same version string. Measured on
    the stores benchmark's world: a quarter less CPU than casting to plain strings.
    """
    data = data.unify_dictionaries().combine_chunks()
    columns = [_unique_dictionary(c.chunk(0)) if c.num_chunks else c for c in data.columns]
    return pa.Table.from_arrays(columns, names=data.column_names)


def insert_chdb(conn: sa.Connection, table: str, columns: list[str], data: pa.Table) -> None:
    """Insert an Arrow table into a chDB table through ClickHouse's Arrow reader.

    ``Python(name)`` is chDB's table function over a Python object, found by its name in the
    caller's frames: the local below.
    """
    vigil_arrow_rows = _one_dictionary(data)  # noqa: F841  (read by chDB through its name)
    names = ", ".join(f"`{c}`" for c in columns)
    conn.exec_driver_sql(f"INSERT INTO `{table}` ({names}) SELECT * FROM Python(vigil_arrow_rows)")
