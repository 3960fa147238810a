"""A throwaway PostgreSQL server for the test suite (:mod:`evals.pg_server`), and loading frames.

One server per test session (per xdist worker). A missing installation fails the tests with what
to run; it never skips them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv

from evals.pg_server import INSTALL_HINT, PgServer, find_bin_dir

__all__ = ["INSTALL_HINT", "PgServer", "find_bin_dir", "load_frames"]


def _pg_type(series: pd.Series, ts_type: str) -> str:
    kind = series.dtype.kind
    if kind == "M":
        return ts_type
    if kind == "b":
        return "boolean"
    if kind in "iu":
        return "bigint"
    if kind == "f":
        return "double precision"
    return "text"


def _csv(frame: pd.DataFrame) -> bytes:
    """The frame as CSV by Arrow's writer (pandas' is ten times slower); times as UTC with a Z."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            utc = table[i].cast(pa.timestamp("us", tz="UTC"), safe=False)  # to microseconds
            table = table.set_column(i, field.name, utc)
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False))
    return out.getvalue()


def load_frames(
    url: str, tables: Mapping[str, pd.DataFrame], *, ts_type: str = "timestamptz"
) -> None:
    """Create ``tables`` in the database ``url`` names and fill them with ``COPY``.

    Args:
        url: A ``postgresql+psycopg://`` or ``postgresql://`` URL.
        tables: Table name -> frame; naive datetime columns hold UTC.
        ts_type: ``timestamptz`` or ``timestamp`` for the datetime columns. Values are sent in UTC
            with a ``Z``, so the session's time zone does not move them.
    """
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        for name, frame in tables.items():
            cols = ", ".join(f'"{c}" {_pg_type(frame[c], ts_type)}' for c in frame.columns)
            names = ", ".join(f'"{c}"' for c in frame.columns)
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')  # type: ignore[arg-type]
            conn.execute(f'CREATE TABLE "{name}" ({cols})')  # type: ignore[arg-type]
            with conn.cursor().copy(
                f'COPY "{name}" ({names}) FROM STDIN WITH (FORMAT csv)'  # type: ignore[arg-type]
            ) as copy:
                copy.write(_csv(frame))
            # Statistics now, as a loading job would: without them the planner guesses a join.
            conn.execute(f'ANALYZE "{name}"')  # type: ignore[arg-type]
