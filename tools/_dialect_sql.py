"""SQL expressions whose text differs per dialect, compiled with SQLAlchemy's ``@compiles``.

:func:`epoch_minute` is the minute bucket of a timestamp (whole minutes since the Unix epoch, UTC);
:func:`as_int` an integer cast that keeps NULL. Each has a portable default and a form per dialect
where the default is slow or invalid: ClickHouse (and chDB, its embedded engine) has no
``EXTRACT(epoch ...)`` and refuses ``CAST(NULL AS Int32)``, which the histogram bin of an invalid
prediction is.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["CLICKHOUSE_DIALECTS", "as_int", "epoch_minute"]

CLICKHOUSE_DIALECTS = ("clickhouse", "clickhousedb", "chdb")
"""SQLAlchemy dialect names of ClickHouse (``clickhouse-sqlalchemy``, ``clickhouse-connect``) and
of chDB (``chdb-sqlalchemy``)."""


class _EpochMinute(FunctionElement[int]):
    """Whole minutes since the Unix epoch of a timestamp column."""

    type = sa.BigInteger()
    name = "epoch_minute"
    inherit_cache = True


class _AsInt(FunctionElement[int]):
    """An integer cast of a numeric expression; NULL stays NULL."""

    type = sa.Integer()
    name = "as_int"
    inherit_cache = True


def epoch_minute(ts: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """The minute bucket of ``ts``: whole minutes since 1970-01-01 00:00 UTC, per dialect.

    A ``timestamp with time zone`` counts from its instant; a plain timestamp is taken as UTC (the
    telemetry contract), whatever the session's time zone.
    """
    return _EpochMinute(ts)


def as_int(expr: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """``expr`` (a number or boolean) as an integer; NULL stays NULL on every dialect."""
    return _AsInt(expr)


def _arg(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = element.clauses.clauses
    return str(compiler.process(arg, **kw))


@compiles(_EpochMinute)
def _minute_default(element: _EpochMinute, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {_arg(element, compiler, **kw)}) / 60) AS BIGINT)"


@compiles(_EpochMinute, "duckdb")
def _minute_duckdb(element: _EpochMinute, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(epoch_us({_arg(element, compiler, **kw)}) // 60000000 AS BIGINT)"


@compiles(_EpochMinute, "postgresql")
def _minute_postgresql(element: _EpochMinute, compiler: SQLCompiler, **kw: Any) -> str:
    # date_part is double precision; EXTRACT is numeric there, several times slower.
    return f"CAST(FLOOR(date_part('epoch', {_arg(element, compiler, **kw)}) / 60.0) AS BIGINT)"


@compiles(_EpochMinute, "sqlite")
def _minute_sqlite(element: _EpochMinute, compiler: SQLCompiler, **kw: Any) -> str:
    # Text timestamps go through strftime; numeric ones are taken as epoch seconds already.
    ts = _arg(element, compiler, **kw)
    return (
        f"CAST(CASE WHEN typeof({ts}) IN ('integer', 'real') THEN CAST({ts} AS INTEGER) "
        f"ELSE CAST(strftime('%s', {ts}) AS INTEGER) END / 60 AS BIGINT)"
    )


def _minute_clickhouse(element: _EpochMinute, compiler: SQLCompiler, **kw: Any) -> str:
    return f"intDiv(toUnixTimestamp({_arg(element, compiler, **kw)}), 60)"


@compiles(_AsInt)
def _int_default(element: _AsInt, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({_arg(element, compiler, **kw)} AS INTEGER)"


def _int_clickhouse(element: _AsInt, compiler: SQLCompiler, **kw: Any) -> str:
    # The nested values under a NULL mask are computed too (ln(0) = -inf there): a plain CAST
    # raises on them, accurateCastOrNull gives NULL.
    return f"accurateCastOrNull({_arg(element, compiler, **kw)}, 'Int64')"


for _name in CLICKHOUSE_DIALECTS:
    compiles(_EpochMinute, _name)(_minute_clickhouse)
    compiles(_AsInt, _name)(_int_clickhouse)
