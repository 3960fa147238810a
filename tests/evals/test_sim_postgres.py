"""Simulating into a real PostgreSQL server (``COPY``) writes DuckDB's rows, NaN included.

The contract's own tables get binary ``COPY`` (encoded by numpy); a warehouse's table with other
column types (``timestamptz`` times) gets CSV ``COPY``, read right in any session time zone.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from evals.pg_server import PgServer
from evals.sim import simulate
from evals.sim._bulk import binary_ready, copy_postgres, pg_column_types
from evals.sim.engine import simulate_block
from evals.sim.store import metadata
from evals.sim.world import build_world
from tests.evals.sim_worlds import ab_world, read_tables, run
from tools.errors import TelemetryError

FAULTS = [
    {"kind": "model_fallback", "experiment": "e1", "start_minute": 3, "severity": 0.3},
    {"kind": "prediction_collapse", "model": "m_prod", "start_minute": 2, "severity": 0.2},
]


def _read(url: str, zone: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    engine = sa.create_engine(url, connect_args={"options": f"-c TimeZone={zone}"})
    try:
        with engine.connect() as conn:
            req = pd.read_sql("SELECT * FROM requests ORDER BY request_id", conn)
            exp = pd.read_sql("SELECT * FROM exposures ORDER BY request_id, experiment_id", conn)
            snap = pd.read_sql(
                "SELECT * FROM model_snapshots ORDER BY model_id, published_at", conn
            )
    finally:
        engine.dispose()
    return req, exp, snap


def test_postgres_gets_the_same_rows_as_duckdb(tmp_path: Path, pg_url: str) -> None:
    scenario = ab_world(faults=FAULTS, minutes=6, rpm=2000)
    requests, exposures, snapshots = read_tables(run(scenario, tmp_path))
    summary = simulate(scenario, pg_url, replace=True)
    assert summary.requests == len(requests) and summary.exposures == len(exposures)
    got, got_exp, got_snap = _read(pg_url, "Asia/Kolkata")
    want = requests.drop(columns="minute")
    assert want["prediction"].isna().sum() > 0  # the collapse's NaN predictions made the trip
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    pd.testing.assert_frame_equal(got_exp, exposures.drop(columns="minute"), check_dtype=False)
    pd.testing.assert_frame_equal(got_snap, snapshots, check_dtype=False)
    # The contract's tables took the binary path (no fallback to CSV).
    block = simulate_block(build_world(scenario), 0, 0, 6)
    assert block is not None
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as raw:
        assert binary_ready(block.requests, pg_column_types(raw, "requests"))
        assert binary_ready(block.exposures, pg_column_types(raw, "exposures"))


def test_a_warehouse_table_with_timestamptz_gets_the_same_instants(
    tmp_path: Path, pg_server: PgServer
) -> None:
    url = pg_server.url(pg_server.create_database("sim_tz"))
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as raw:
        raw.execute(
            "CREATE TABLE requests (ts timestamptz, request_id bigint, unit_id bigint, "
            "country text, platform text, ad_type text, model_id text, model_version text, "
            "prediction double precision, fallback boolean, label integer, revenue double "
            "precision, latency_ms double precision, error boolean)"
        )
        raw.execute("SET TimeZone = 'America/New_York'")
    scenario = ab_world(faults=FAULTS, minutes=3, rpm=1000)
    requests, _, _ = read_tables(run(scenario, tmp_path))
    simulate(scenario, url)
    got, _, _ = _read(url, "America/New_York")
    assert str(got["ts"].dt.tz) != "None"  # an aware column came back
    got["ts"] = got["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
    pd.testing.assert_frame_equal(got, requests.drop(columns="minute"), check_dtype=False)


def test_binary_copy_keeps_every_value(pg_url: str) -> None:
    """Edge values of every column kind survive the numpy encoder and PostgreSQL's parser."""
    big = 2**62 + 12345
    data = pa.table(
        {
            "ts": pa.array(
                [datetime(1999, 12, 31, 23, 59, 59, 999999), datetime(2026, 11, 20, 6, 0, 0, 1)],
                type=pa.timestamp("us"),
            ),
            "id": pa.array([-big, big], type=pa.int64()),
            "word": pa.array(["", "Zürich ✓"], type=pa.string()).dictionary_encode(),
            "other": pa.array(["a", "bb"], type=pa.string()),
            "x": pa.array([math.nan, -1.5e-300], type=pa.float64()),
            "flag": pa.array([True, False]),
            "n": pa.array([-(2**31), 2**31 - 1], type=pa.int32()),
        }
    )
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as raw:
        raw.execute(
            "CREATE TABLE edge (ts timestamp, id bigint, word varchar, other text, "
            "x double precision, flag boolean, n integer)"
        )
        assert binary_ready(data, pg_column_types(raw, "edge"))
        copy_postgres(raw, "edge", data.column_names, data, binary=True)
        rows = raw.execute("SELECT * FROM edge ORDER BY id").fetchall()
    assert rows[0][:4] == (datetime(1999, 12, 31, 23, 59, 59, 999999), -big, "", "a")
    assert math.isnan(rows[0][4]) and rows[0][5:] == (True, -(2**31))
    last = (datetime(2026, 11, 20, 6, 0, 0, 1), big, "Zürich ✓", "bb", -1.5e-300, False, 2**31 - 1)
    assert rows[1] == last


def test_nulls_or_other_types_go_as_csv() -> None:
    types = {"a": "bigint", "b": "text"}
    ok = pa.table({"a": pa.array([1], pa.int64()), "b": ["x"]})
    assert binary_ready(ok, types)
    assert not binary_ready(pa.table({"a": pa.array([None], pa.int64()), "b": ["x"]}), types)
    assert not binary_ready(ok, {"a": "integer", "b": "text"})
    assert not binary_ready(ok, {"a": "bigint"})


def test_binary_copy_of_many_distinct_strings(pg_url: str) -> None:
    """Every row its own string (no dictionary to lean on) next to a dictionary column."""
    n = 3000
    names = [f"unit-{i}-{'é' * (i % 7)}" for i in range(n)]
    data = pa.table(
        {
            "id": pa.array(range(n), type=pa.int64()),
            "name": pa.array(names),
            "kind": pa.array([("a", "bb", "ccc")[i % 3] for i in range(n)]).dictionary_encode(),
        }
    )
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as raw:
        raw.execute("CREATE TABLE many (id bigint, name text, kind text)")
        assert binary_ready(data, pg_column_types(raw, "many"))
        copy_postgres(raw, "many", data.column_names, data, binary=True)
        rows = raw.execute("SELECT id, name, kind FROM many ORDER BY id").fetchall()
    assert rows == [(i, names[i], ("a", "bb", "ccc")[i % 3]) for i in range(n)]


def test_a_failed_copy_is_one_line_and_writes_nothing(pg_server: PgServer) -> None:
    """``COPY`` runs on a thread of its own; its error reaches the caller and rolls back all."""
    url = pg_server.url(pg_server.create_database("sim_fail"))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
            conn.exec_driver_sql(
                "ALTER TABLE requests ADD CONSTRAINT latency_known CHECK (latency_ms < 0)"
            )
        scenario = ab_world(faults=FAULTS, minutes=3, rpm=1000)
        with pytest.raises(TelemetryError) as caught:
            simulate(scenario, url)
        assert "latency_known" in str(caught.value) and "\n" not in str(caught.value)
        with engine.connect() as conn:
            counts = [
                conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                for t in ("requests", "exposures", "model_snapshots")
            ]
    finally:
        engine.dispose()
    assert counts == [0, 0, 0]
