"""``vigil bench --only simulation``: end-to-end simulator throughput into DuckDB.

Simulates a world of a few million requests (three experiments in two layers, one fault) into a
fresh DuckDB file under the bench workdir and reports requests per second of wall time, from
scenario to committed tables (unit pool allocation, pilot, numpy economy, Arrow, DuckDB insert).
One-off process costs (importing the DuckDB dialect, pyarrow's first call) are paid before the
clock starts; ``cpu_seconds`` is the process CPU time of the call (both threads).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from evals.bench import BenchOptions
from evals.sim import Scenario, parse_scenario, simulate

__all__ = ["bench_scenario", "run"]


def bench_scenario(*, minutes: int, requests_per_minute: int) -> Scenario:
    """The benchmark world: production traffic plus three experiments and one fault."""
    return parse_scenario(
        {
            "name": "bench-simulation",
            "description": "Throughput benchmark world.",
            "seed": 7,
            "world": {
                "start": "2026-11-20T14:20:00Z",  # diurnal curve ≈ its daily mean
                "minutes": minutes,
                "requests_per_minute": requests_per_minute,
                "diurnal": True,
                "models": [
                    {"id": "ctr_v41", "quality": 0.75, "refresh_minutes": 60},
                    {"id": "ctr_v42", "quality": 0.77, "refresh_minutes": 60},
                ],
                "production_model": "ctr_v41",
                "experiments": [
                    {
                        "id": "879",
                        "name": "Ranking Model Improvements",
                        "layer": "ranking",
                        "traffic_pct": 10,
                        "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
                    },
                    {
                        "id": "880",
                        "name": "Ranking A/A",
                        "layer": "ranking",
                        "traffic_pct": 10,
                        "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v41"}},
                    },
                    {
                        "id": "901",
                        "name": "Ad load +5 %",
                        "layer": "ads_load",
                        "traffic_pct": 20,
                        "arms": {"control": {}, "test": {"ad_load": 1.05}},
                    },
                ],
            },
            "faults": [
                {
                    "kind": "model_fallback",
                    "experiment": "879",
                    "start_minute": minutes // 2,
                    "severity": 0.3,
                }
            ],
            "alert": {"metric": "revenue", "minute": minutes - 1, "experiment": "879"},
            "expect": {
                "root_cause": "model_fallback",
                "experiment": "879",
                "mitigation": "kill_experiment",
            },
        }
    )


def run(opts: BenchOptions) -> dict[str, Any]:
    """Simulate the benchmark world into DuckDB and report its throughput."""
    minutes, rpm = (8, 50_000) if opts.quick else (80, 50_000)
    scenario = bench_scenario(minutes=minutes, requests_per_minute=rpm)
    path = opts.workdir / "simulation.duckdb"
    path.unlink(missing_ok=True)
    path.with_suffix(".duckdb.wal").unlink(missing_ok=True)
    import duckdb_engine  # noqa: F401  (the dialect's import is a one-off process cost)

    pa.array([0])  # pyarrow's lazy initialisation, likewise
    cpu = time.process_time()
    summary = simulate(scenario, f"duckdb:///{path}", replace=True)
    return {
        "requests": summary.requests,
        "exposures": summary.exposures,
        "seconds": round(summary.seconds, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "requests_per_s": round(summary.requests_per_s),
    }
