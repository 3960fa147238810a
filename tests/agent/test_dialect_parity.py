"""The same scenarios investigated on DuckDB, PostgreSQL and ClickHouse (chDB): the same answers.

Two scenarios: the suite's fallback scenario (an experiment's alert) and a small world whose
global revenue alert comes from NaN predictions in one experiment (the all-traffic path, the
attribution's localisation and invalid predictions, which ClickHouse's NULL casts once broke).
Each is simulated into DuckDB and investigated as ``vigil eval`` does; the same telemetry is then
copied into PostgreSQL (``timestamptz`` columns, a database whose ``TimeZone`` is
America/New_York; the state and checkpoints there too) and into chDB, and the same alert
investigated on each. Verdicts, causes, onset and mitigations must be DuckDB's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from agent.models import InvestigationView
from agent.settings import Settings
from evals.harness import create_experiments, eval_settings, investigate, prepare
from evals.harness import scenario_settings as with_scenario
from evals.sim import load_scenario, parse_scenario
from lifecycle.service import ExperimentService
from tests.chdb import load_frames as load_chdb
from tests.pg import PgServer
from tests.pg import load_frames as load_pg

SCENARIO = Path(__file__).resolve().parents[2] / "evals" / "scenarios" / "fallback-spike-879.yaml"
GLOBAL_NAN = {
    "name": "parity-global-nan",
    "seed": 8,
    "world": {
        "start": "2026-11-20T06:00:00Z",
        "minutes": 40,
        "requests_per_minute": 1500,
        "models": [
            {"id": "m1", "quality": 0.75, "refresh_minutes": 30},
            {"id": "m2", "quality": 0.77, "refresh_minutes": 30},
        ],
        "production_model": "m1",
        "experiments": [
            {
                "id": "7",
                "name": "E",
                "layer": "ranking",
                "traffic_pct": 40,
                "arms": {"control": {"model": "m1"}, "test": {"model": "m2"}},
            }
        ],
    },
    "faults": [
        {
            "kind": "prediction_collapse",
            "experiment": "7",
            "start_minute": 25,
            "severity": 0.3,
            "mode": "nan",
        }
    ],
    "alert": {"metric": "revenue", "minute": 36},
    "expect": {"root_cause": "prediction_collapse", "experiment": "7"},
}
TABLES = ("requests", "exposures", "model_snapshots")
SECONDS: dict[str, float] = {}


def _answer(view: InvestigationView) -> dict[str, Any]:
    top = view.root_causes[0] if view.root_causes else None
    return {
        "status": view.status,
        "cause": None if top is None else (top.cause, top.experiment),
        "onset": view.onset,
        "verdicts": sorted((c, v) for c, v, _ in view.verdicts),
        "mitigations": [(m.action, m.target, m.status) for m in view.mitigations],
    }


def _timed(name: str, scenario: Any, settings: Settings) -> InvestigationView:
    began = time.perf_counter()
    view = investigate(scenario, settings)
    SECONDS[f"{scenario.name}/{name}"] = time.perf_counter() - began
    return view


@pytest.fixture(scope="module", params=["fallback-spike-879", "global-nan"])
def duck(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The scenario, DuckDB's answer, and its telemetry as frames."""
    if request.param == "global-nan":
        scenario = parse_scenario(GLOBAL_NAN)
    else:
        scenario = load_scenario(SCENARIO)
    folder = tmp_path_factory.mktemp("parity")
    settings = prepare(scenario, eval_settings(folder / "duck"))
    answer = _answer(_timed("duckdb", scenario, settings))
    # Through SQLAlchemy, as the reader (still open on the file) does: the same configuration.
    engine = sa.create_engine(settings.telemetry_url)
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        frames = {name: raw.execute(f"SELECT * FROM {name}").df() for name in TABLES}
    engine.dispose()
    expect = scenario.expect
    assert answer["cause"] == (expect.root_cause, expect.experiment)  # the expected answer
    assert answer["mitigations"]  # a cause with a mitigation: there is something to compare
    return scenario, answer, {"frames": frames, "folder": folder}


def _on(scenario: Any, settings: Settings) -> Settings:
    settings = with_scenario(settings, scenario)
    with ExperimentService.from_settings(settings) as service:
        create_experiments(scenario, service, settings)
    return settings


def test_postgres_in_new_york_time_gives_duckdbs_investigation(duck, pg_server: PgServer):
    scenario, want, data = duck
    state = pg_server.url(pg_server.create_database("parity_state"))
    name = pg_server.create_database("parity_telemetry")
    telemetry = pg_server.url(name)
    load_pg(telemetry, data["frames"], ts_type="timestamptz")
    with psycopg.connect(pg_server.url(driver="postgresql"), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'America/New_York'")  # type: ignore[arg-type]
    engine = sa.create_engine(telemetry)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW TimeZone")).scalar_one() == "America/New_York"
    engine.dispose()
    base = eval_settings(data["folder"] / "pg")
    settings = base.model_copy(
        update={"state_url": state, "telemetry_url": telemetry, "checkpoint_url": state}
    )
    got = _answer(_timed("postgresql", scenario, _on(scenario, settings)))
    assert got == want


def test_chdb_gives_duckdbs_investigation(duck, chdb_url: str):
    scenario, want, data = duck
    engine = sa.create_engine(chdb_url)
    try:
        load_chdb(engine, "parity", data["frames"], data["folder"])
    finally:
        engine.dispose()
    base = eval_settings(data["folder"] / "chdb")
    settings = base.model_copy(
        update={
            "telemetry_url": chdb_url,
            "telemetry_tables": {name: f"parity.{name}" for name in TABLES},
        }
    )
    got = _answer(_timed("chdb", scenario, _on(scenario, settings)))
    assert got == want


@pytest.fixture(scope="module", autouse=True)
def _report_seconds():
    """Investigation seconds per store, printed at the end (``pytest -s`` shows them)."""
    yield
    print("investigation seconds:", {k: round(v, 2) for k, v in SECONDS.items()})
