"""Small worlds and readers shared by the simulator tests (``test_sim_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from evals.sim import Scenario, parse_scenario, simulate

__all__ = ["ab_world", "fallback_world", "read_tables", "run"]

START = "2026-11-20T06:00:00Z"


def ab_world(
    *,
    faults: list[dict[str, Any]] | None = None,
    experiments: list[dict[str, Any]] | None = None,
    minutes: int = 60,
    rpm: int = 4000,
    seed: int = 5,
    models: list[dict[str, Any]] | None = None,
    **world: Any,
) -> Scenario:
    """A world with an A/A ranking experiment ``e1`` (50 %) and an A/A UI experiment ``e2``."""
    data: dict[str, Any] = {
        "name": "test-world",
        "seed": seed,
        "world": {
            "start": START,
            "minutes": minutes,
            "requests_per_minute": rpm,
            "models": models
            or [
                {"id": "m_prod", "quality": 0.75, "refresh_minutes": 30},
                {"id": "m_alt", "quality": 0.75, "refresh_minutes": 30},
            ],
            "production_model": "m_prod",
            "experiments": experiments
            if experiments is not None
            else [
                {
                    "id": "e1",
                    "name": "Ranking A/A",
                    "layer": "ranking",
                    "traffic_pct": 50,
                    "arms": {"control": {"model": "m_prod"}, "test": {"model": "m_prod"}},
                },
                {
                    "id": "e2",
                    "name": "UI A/A",
                    "layer": "ui",
                    "traffic_pct": 50,
                    "arms": {"control": {}, "test": {}},
                },
            ],
            **world,
        },
        "faults": faults or [],
        "alert": {"metric": "revenue", "minute": minutes - 1},
        "expect": {"root_cause": "none"},
    }
    return parse_scenario(data)


def fallback_world(name: str, rpm: int) -> dict[str, Any]:
    """A 30-minute world whose experiment ``5`` falls back in its test arm from minute 12 (the
    scenario file's form, alert at 24): small enough to simulate into every store in a test."""
    return {
        "name": name,
        "seed": 3,
        "world": {
            "start": START,
            "minutes": 30,
            "requests_per_minute": rpm,
            "models": [{"id": "m1", "quality": 0.75}, {"id": "m2", "quality": 0.77}],
            "production_model": "m1",
            "experiments": [
                {
                    "id": "5",
                    "name": "E",
                    "layer": "ranking",
                    "traffic_pct": 50,
                    "arms": {"control": {"model": "m1"}, "test": {"model": "m2"}},
                }
            ],
        },
        "faults": [
            {"kind": "model_fallback", "experiment": "5", "start_minute": 12, "severity": 0.6}
        ],
        "alert": {"metric": "fallback_rate", "minute": 24, "experiment": "5"},
        "expect": {
            "root_cause": "model_fallback",
            "experiment": "5",
            "mitigation": "kill_experiment",
        },
    }


def run(scenario: Scenario, tmp_path: Path, name: str = "t", **kwargs: Any) -> Path:
    """Simulate into a fresh DuckDB file and return its path."""
    path = tmp_path / f"{name}.duckdb"
    simulate(scenario, f"duckdb:///{path}", replace=True, **kwargs)
    return path


def read_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``requests`` (with a ``minute`` column), ``exposures`` and ``model_snapshots``."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        requests = con.execute(
            "SELECT *, CAST(request_id // 10000000 AS INTEGER) AS minute FROM requests "
            "ORDER BY request_id"
        ).df()
        exposures = con.execute(
            "SELECT *, CAST(request_id // 10000000 AS INTEGER) AS minute FROM exposures "
            "ORDER BY request_id, experiment_id"
        ).df()
        snapshots = con.execute(
            "SELECT * FROM model_snapshots ORDER BY model_id, published_at"
        ).df()
    finally:
        con.close()
    return requests, exposures, snapshots
