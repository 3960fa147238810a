"""Telemetry frames into chDB (ClickHouse's engine, embedded) for the tests.

chDB runs one embedded server per process, on one path: every test of a session shares the path
of the ``chdb_url`` fixture (tests/conftest.py) and keeps its tables in a database of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

__all__ = ["ch_type", "load_frames"]


def ch_type(series: pd.Series) -> str:
    """The ClickHouse column type for a frame column (timestamps as UTC ``DateTime64``)."""
    kind = series.dtype.kind
    if kind == "M":
        return "DateTime64(6, 'UTC')"
    if kind == "b":
        return "Bool"
    if kind in "iu":
        return "Int64"
    if kind == "f":
        return "Nullable(Float64)"
    return "String"


def load_frames(
    engine: sa.Engine, database: str, tables: Mapping[str, pd.DataFrame], folder: Path
) -> None:
    """Create ``database`` and a MergeTree table per frame in it, filled from Parquet files.

    Args:
        engine: A ``chdb://`` engine.
        database: The database to (re)create.
        tables: Table name -> frame; naive datetime columns hold UTC.
        folder: Where the Parquet files are written.
    """
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {database}"))
        conn.execute(sa.text(f"CREATE DATABASE {database}"))
        for name, frame in tables.items():
            path = folder / f"{database}_{name}.parquet"
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
            cols = ", ".join(f"`{c}` {ch_type(frame[c])}" for c in frame.columns)
            order = "ts" if "ts" in frame.columns else "tuple()"
            conn.execute(
                sa.text(
                    f"CREATE TABLE {database}.{name} ({cols}) ENGINE = MergeTree ORDER BY {order}"
                )
            )
            conn.execute(
                sa.text(f"INSERT INTO {database}.{name} SELECT * FROM file('{path}', Parquet)")
            )
