"""Writing the tables: DuckDB and SQLite, byte-for-byte reproducibility, slices, the CLI, bench."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from evals.bench import BenchOptions
from evals.cli import register
from evals.sim import simulate
from evals.sim.engine import simulate_block
from evals.sim.world import build_world
from tests.evals.sim_worlds import ab_world, read_tables, run
from tools.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FAULTS = [
    {"kind": "model_fallback", "experiment": "e1", "start_minute": 3, "severity": 0.3},
    {"kind": "infra_outage", "start_minute": 4, "severity": 0.1},
    {"kind": "prediction_collapse", "model": "m_prod", "start_minute": 2, "severity": 0.2},
]


def _dump(path: Path) -> bytes:
    """Every table, ordered, as Arrow IPC bytes."""
    con = duckdb.connect(str(path), read_only=True)
    out = io.BytesIO()
    try:
        for table, order in (
            ("requests", "request_id"),
            ("exposures", "request_id, experiment_id"),
            ("model_snapshots", "model_id, model_version"),
        ):
            data = con.sql(f"SELECT * FROM {table} ORDER BY {order}").to_arrow_table()
            with pa.ipc.new_stream(out, data.schema) as writer:
                writer.write_table(data)
    finally:
        con.close()
    return out.getvalue()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    scenario = ab_world(faults=FAULTS, minutes=8, rpm=2000)
    first = _dump(run(scenario, tmp_path, "a"))
    assert first == _dump(run(scenario, tmp_path, "b"))
    other = ab_world(faults=FAULTS, minutes=8, rpm=2000, seed=6)
    assert first != _dump(run(other, tmp_path, "c"))
    # The blocks themselves serialise to the same bytes, too.
    blocks = [simulate_block(build_world(scenario), 0, 0, 8) for _ in range(2)]
    sinks = []
    for block in blocks:
        assert block is not None
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, block.requests.schema) as writer:
            writer.write_table(block.requests)
        sinks.append(sink.getvalue())
    assert sinks[0] == sinks[1]


def test_slices_compose(tmp_path: Path) -> None:
    scenario = ab_world(
        faults=FAULTS,
        minutes=12,
        rpm=1500,
        models=[
            {"id": "m_prod", "quality": 0.75, "refresh_minutes": 5},
            {"id": "m_alt", "quality": 0.7},
        ],
    )
    whole = run(scenario, tmp_path, "whole")
    url = f"duckdb:///{tmp_path / 'parts.duckdb'}"
    first = simulate(scenario, url, end_minute=5, replace=True)
    second = simulate(scenario, url, start_minute=5)
    assert first.snapshots + second.snapshots == 4  # 3 versions of m_prod, 1 of m_alt, once each
    assert _dump(whole) == _dump(tmp_path / "parts.duckdb")


def test_world_goes_on_past_its_minutes(tmp_path: Path) -> None:
    scenario = ab_world(minutes=5, rpm=500)
    summary = simulate(scenario, f"duckdb:///{tmp_path / 'x.duckdb'}", start_minute=5, end_minute=8)
    requests, _, _ = read_tables(tmp_path / "x.duckdb")
    assert summary.requests == len(requests) > 0
    assert set(requests.minute) == {5, 6, 7}


def test_duckdb_and_sqlite_hold_the_same_rows(tmp_path: Path) -> None:
    scenario = ab_world(faults=FAULTS, minutes=6, rpm=400)
    duck = run(scenario, tmp_path, "d")
    lite_url = f"sqlite:///{tmp_path / 'lite.db'}"
    summary = simulate(scenario, lite_url, replace=True)
    d_req, d_exp, d_snap = read_tables(duck)
    engine = sa.create_engine(lite_url)
    try:
        l_req = pd.read_sql("SELECT * FROM requests ORDER BY request_id", engine)
        l_exp = pd.read_sql("SELECT * FROM exposures ORDER BY request_id, experiment_id", engine)
        l_snap = pd.read_sql(
            "SELECT * FROM model_snapshots ORDER BY model_id, published_at", engine
        )
    finally:
        engine.dispose()
    assert summary.requests == len(l_req) == len(d_req)
    assert len(l_exp) == len(d_exp) and len(l_snap) == len(d_snap)
    for col in ("request_id", "unit_id", "label"):
        assert np.array_equal(l_req[col].to_numpy(), d_req[col].to_numpy())
    for col in ("country", "platform", "ad_type", "model_id", "model_version"):
        assert list(l_req[col]) == list(d_req[col])
    for col in ("fallback", "error"):
        assert np.array_equal(l_req[col].astype(bool), d_req[col].astype(bool))
    assert np.allclose(l_req.revenue, d_req.revenue) and np.allclose(
        l_req.latency_ms, d_req.latency_ms
    )
    # NaN predictions come back as NULL from SQLite.
    assert np.array_equal(l_req.prediction.isna(), d_req.prediction.isna())
    assert d_req.prediction.isna().any()
    assert np.allclose(l_req.prediction.dropna(), d_req.prediction.dropna())
    assert list(pd.to_datetime(l_req.ts)) == list(d_req.ts)
    assert list(l_exp.arm) == list(d_exp.arm)
    assert list(pd.to_datetime(l_snap.trained_at)) == list(d_snap.trained_at)


def test_telemetry_column_types(tmp_path: Path) -> None:
    path = run(ab_world(minutes=2, rpm=200), tmp_path)
    con = duckdb.connect(str(path), read_only=True)
    try:
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'requests'"
            ).fetchall()
        )
    finally:
        con.close()
    assert types == {
        "ts": "TIMESTAMP",
        "request_id": "BIGINT",
        "unit_id": "BIGINT",
        "country": "VARCHAR",
        "platform": "VARCHAR",
        "ad_type": "VARCHAR",
        "model_id": "VARCHAR",
        "model_version": "VARCHAR",
        "prediction": "DOUBLE",
        "fallback": "BOOLEAN",
        "label": "INTEGER",
        "revenue": "DOUBLE",
        "latency_ms": "DOUBLE",
        "error": "BOOLEAN",
    }


def test_bad_ranges_and_urls(tmp_path: Path) -> None:
    scenario = ab_world(minutes=2, rpm=200)
    with pytest.raises(ConfigError, match="end_minute"):
        simulate(scenario, f"duckdb:///{tmp_path / 'x.duckdb'}", start_minute=2, end_minute=2)
    with pytest.raises(ConfigError, match="db_url"):
        simulate(scenario, "not a url")


def test_cli_sim_writes_and_summarises(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    db = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    scenario = ROOT / "evals" / "scenarios" / "healthy-noise.yaml"
    result = CliRunner().invoke(
        app, ["sim", str(scenario), "--db", db, "--end-minute", "3", "--replace"]
    )
    assert result.exit_code == 0, result.output
    assert "healthy-noise" in result.output and "requests" in result.output
    requests, _, _ = read_tables(tmp_path / "cli.duckdb")
    assert set(requests.minute) == {0, 1, 2}
    bad = CliRunner().invoke(
        app, ["sim", str(ROOT / "tests/evals/data/unknown_key.yaml"), "--db", db]
    )
    assert bad.exit_code == 2 and "colour" in bad.output


def test_bench_section_reports_throughput(tmp_path: Path) -> None:
    from evals.bench import simulation

    scenario = simulation.bench_scenario(minutes=4, requests_per_minute=5000)
    assert len(scenario.world.experiments) == 3
    figures = simulation.run(BenchOptions(workdir=tmp_path, quick=True))
    assert set(figures) >= {"requests", "seconds", "requests_per_s"}
    assert figures["requests"] > 100_000 and figures["requests_per_s"] > 0


def test_chdb_gets_the_same_rows_as_duckdb(tmp_path: Path, chdb_url: str) -> None:
    """chDB (ClickHouse's engine) takes Arrow inserts; its tables hold DuckDB's rows exactly."""
    scenario = ab_world(faults=FAULTS, minutes=4, rpm=1500)
    requests, exposures, snapshots = read_tables(run(scenario, tmp_path))
    summary = simulate(scenario, chdb_url, replace=True)
    assert summary.requests == len(requests) and summary.exposures == len(exposures)
    engine = sa.create_engine(chdb_url)
    try:
        with engine.connect() as conn:
            shown = conn.exec_driver_sql("SHOW CREATE TABLE requests").scalar_one()
            got = {
                name: pd.DataFrame(
                    conn.exec_driver_sql(f"SELECT * FROM {name} ORDER BY {order}").fetchall(),
                    columns=list(want.columns),
                )
                for name, order, want in (
                    ("requests", "request_id", requests.drop(columns="minute")),
                    ("exposures", "request_id, experiment_id", exposures.drop(columns="minute")),
                    ("model_snapshots", "model_id, published_at", snapshots),
                )
            }
    finally:
        engine.dispose()
    assert "DateTime64(6, 'UTC')" in shown  # microseconds, in UTC
    assert requests["prediction"].isna().sum() > 0
    for name, want in (
        ("requests", requests.drop(columns="minute")),
        ("exposures", exposures.drop(columns="minute")),
        ("model_snapshots", snapshots),
    ):
        frame = got[name]
        for col in frame.columns:
            if want[col].dtype.kind == "M":
                frame[col] = pd.to_datetime(frame[col], utc=True).dt.tz_localize(None)
        pd.testing.assert_frame_equal(frame, want, check_dtype=False)
