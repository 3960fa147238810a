"""Simulating into a real PostgreSQL server (``COPY``) writes DuckDB's rows, NaN included."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from evals.sim import simulate
from tests.evals.sim_worlds import ab_world, read_tables, run

FAULTS = [
    {"kind": "model_fallback", "experiment": "e1", "start_minute": 3, "severity": 0.3},
    {"kind": "prediction_collapse", "model": "m_prod", "start_minute": 2, "severity": 0.2},
]


def test_postgres_gets_the_same_rows_as_duckdb(tmp_path: Path, pg_url: str) -> None:
    scenario = ab_world(faults=FAULTS, minutes=6, rpm=2000)
    requests, exposures, snapshots = read_tables(run(scenario, tmp_path))
    summary = simulate(scenario, pg_url, replace=True)
    assert summary.requests == len(requests) and summary.exposures == len(exposures)
    engine = sa.create_engine(pg_url, connect_args={"options": "-c TimeZone=Asia/Kolkata"})
    try:
        with engine.connect() as conn:
            got = pd.read_sql("SELECT * FROM requests ORDER BY request_id", conn)
            got_exp = pd.read_sql(
                "SELECT * FROM exposures ORDER BY request_id, experiment_id", conn
            )
            got_snap = pd.read_sql(
                "SELECT * FROM model_snapshots ORDER BY model_id, published_at", conn
            )
    finally:
        engine.dispose()
    want = requests.drop(columns="minute")
    assert want["prediction"].isna().sum() > 0  # the collapse's NaN predictions made the trip
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    pd.testing.assert_frame_equal(got_exp, exposures.drop(columns="minute"), check_dtype=False)
    pd.testing.assert_frame_equal(got_snap, snapshots, check_dtype=False)
