"""``vigil bench --only checks``: the check battery against one aggregate scan, same table.

A simulated world of at least 10 million requests (``opts.quick``: 1 million) goes into a fresh
DuckDB file. In one process, after a warm-up, the section times

* ``scan_s``: ``SELECT count(*), sum(prediction), sum(label) FROM requests`` (best of three);
* ``battery_s``: every check the agent runs for one experiment — prediction, calibration, NE,
  staleness, fallback, SRM, change point (its arms), infra and attribution (all traffic) — over
  the whole table (window = all of it but the first hour, which is the baseline), from a cold
  reader cache, so every aggregate is fetched once;
* ``window_battery_s``: the same battery over an investigation window (the last two hours and
  its hour of baseline), which is what an investigation reads.

``ratio = battery_s / scan_s``; ``battery_sql_s`` is the part of it spent in SQL (answers fetched
into frames included), the rest is the checks' own arithmetic. ``floor_s`` times the passes no
battery can avoid, stripped to ``count(*)``: the exposure join of the experiment, the join of every
experiment's exposures (attribution's per-experiment effects) and one GROUP BY minute x dimensions
over all requests (infra, attribution); ``floor_ratio = floor_s / scan_s``,
``battery_over_floor = battery_s / floor_s`` and ``python_share`` the part of the battery outside
SQL. ``issue_floor_s`` is issue 17's wording of the floor instead: the experiment's exposure join
grouped by minute and arm with every sum of the checks' cube, plus the ``GROUP BY`` minute x
dimensions over all requests (no attribution join); ``battery_over_issue_floor`` the battery
against it. ``join_ratio`` is the first of them alone: a ``count(*)`` over one experiment's exposure
join, which the telemetry contract (exposures in their own table) makes every experiment check
pay.

``peak_rss_mb`` is the peak resident memory (Linux ``ru_maxrss``) of the spawned process that runs
the scan and the battery and nothing else; the world is simulated in another child process. Only
aggregates leave DuckDB; what remains is DuckDB's own: its cache of the table's column segments
and the join's hash table.
"""

from __future__ import annotations

import resource
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa

from evals.bench import BenchOptions
from evals.sim import Scenario, minute_to_ts, parse_scenario, scenario_toolbox, simulate
from tools._queries import Queries
from tools.aggregates import HistogramSpec, Subject
from tools.schema import TelemetrySchema
from tools.toolbox import Toolbox

__all__ = ["bench_world", "run"]


def bench_world(*, minutes: int, requests_per_minute: int) -> Scenario:
    """Four experiments in two layers, a refreshing production model, a fallback fault."""
    arms = {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}}
    return parse_scenario(
        {
            "name": "bench-checks",
            "seed": 29,
            "world": {
                "start": "2026-11-20T10:00:00Z",
                "minutes": minutes,
                "requests_per_minute": requests_per_minute,
                "diurnal": False,
                "models": [
                    {"id": "ctr_v41", "quality": 0.75, "refresh_minutes": 60},
                    {"id": "ctr_v42", "quality": 0.77, "refresh_minutes": 60},
                ],
                "production_model": "ctr_v41",
                "experiments": [
                    {
                        "id": "879",
                        "name": "Ranker",
                        "layer": "ranking",
                        "traffic_pct": 10,
                        "arms": arms,
                    },
                    {
                        "id": "880",
                        "name": "Ranker A/A",
                        "layer": "ranking",
                        "traffic_pct": 10,
                        "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v41"}},
                    },
                    {
                        "id": "901",
                        "name": "Ad load",
                        "layer": "ads_load",
                        "traffic_pct": 20,
                        "arms": {"control": {}, "test": {"ad_load": 1.05}},
                    },
                    {
                        "id": "902",
                        "name": "Ad load 2",
                        "layer": "ads_load",
                        "traffic_pct": 20,
                        "arms": {"control": {}, "test": {"ad_load": 0.95}},
                    },
                ],
            },
            "faults": [
                {
                    "kind": "model_fallback",
                    "experiment": "879",
                    "severity": 0.3,
                    "start_minute": minutes - 60,
                },
            ],
            "alert": {"metric": "revenue", "minute": minutes - 50, "experiment": "879"},
            "expect": {"root_cause": "model_fallback", "experiment": "879"},
        }
    )


def _battery(box: Toolbox, start: Any, end: Any) -> tuple[float, list[str]]:
    began = time.perf_counter()
    results = [
        getattr(box, check)(start, end, experiment_id="879")
        for check in ("prediction", "calibration", "ne", "staleness", "fallback")
    ]
    results += [
        box.srm(start, end, "879"),
        box.change_point("revenue", start, end, experiment_id="879"),
        box.infra(start, end),
        box.attribution("revenue", start, end),
    ]
    return time.perf_counter() - began, [f"{r.check}:{r.verdict}" for r in results]


def _floor(con: Any, experiment_id: str, start: Any, end: Any) -> list[float]:
    """Seconds of each unavoidable pass, reduced to ``count(*)`` (best of three)."""
    join = "FROM requests r JOIN exposures e ON e.request_id = r.request_id"
    window = "r.ts >= ? AND r.ts < ?"
    passes = [
        (f"SELECT count(*) {join} WHERE e.experiment_id = ? AND {window}", [experiment_id]),
        (f"SELECT count(*) {join} WHERE {window}", []),
        (
            "SELECT count(*) FROM (SELECT epoch_us(ts) // 60000000, country, platform, ad_type "
            "FROM requests WHERE ts >= ? AND ts < ? GROUP BY ALL)",
            [],
        ),
    ]
    seconds = []
    for sql, params in passes:
        args = [*params, start, end]
        con.execute(sql, args).fetchall()
        best = []
        for _ in range(3):
            t = time.perf_counter()
            con.execute(sql, args).fetchall()
            best.append(time.perf_counter() - t)
        seconds.append(min(best))
    return seconds


def _issue_floor(con: Any, experiment_id: str, start: Any, end: Any) -> float:
    """Seconds of issue 17's floor (best of three): the experiment's join by minute x arm with
    every sum of the cube, and the dimensions pass of :func:`_floor`."""
    queries = Queries("duckdb", TelemetrySchema(), HistogramSpec())
    x = queries.base(Subject(experiment_id=experiment_id), start, end)
    aggs = queries.cube_aggregates(x, latency=False, lean=False)
    stmt = sa.select(x.c.minute, x.c.arm, *aggs).group_by(x.c.minute, x.c.arm)
    dialect = sa.create_engine("duckdb:///:memory:").dialect  # the reader's paramstyle
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    dims = (
        "SELECT count(*) FROM (SELECT epoch_us(ts) // 60000000, country, platform, ad_type "
        "FROM requests WHERE ts >= ? AND ts < ? GROUP BY ALL)"
    )
    total = 0.0
    for sql, args in ((str(compiled), params), (dims, [start, end])):
        con.execute(sql, args).fetchall()
        best = []
        for _ in range(3):
            t = time.perf_counter()
            con.execute(sql, args).fetchall()
            best.append(time.perf_counter() - t)
        total += min(best)
    return total


def _simulate(minutes: int, rpm: int, url: str) -> tuple[int, int, float]:
    """Run in a child process, so the parent's peak memory is the checks' alone."""
    began = time.perf_counter()
    summary = simulate(bench_world(minutes=minutes, requests_per_minute=rpm), url, replace=True)
    return summary.requests, summary.exposures, time.perf_counter() - began


def _measure(minutes: int, rpm: int, url: str) -> dict[str, Any]:
    """Scan, warm-up, battery and window battery, in a fresh process so its peak is theirs."""
    scenario = bench_world(minutes=minutes, requests_per_minute=rpm)
    start_all, end = minute_to_ts(scenario, 60), minute_to_ts(scenario, minutes)
    path = url.removeprefix("duckdb:///")
    con = duckdb.connect(path, read_only=True)
    scan_sql = "SELECT count(*), sum(prediction), sum(label) FROM requests"
    con.execute(scan_sql).fetchall()  # warm
    scans = []
    for _ in range(3):
        t = time.perf_counter()
        con.execute(scan_sql).fetchall()
        scans.append(time.perf_counter() - t)
    con.close()

    # Warm-up on a throwaway toolbox (imports, DuckDB dialect, first-call costs), then cold caches.
    _battery(scenario_toolbox(scenario, url), end - timedelta(minutes=30), end)
    box = scenario_toolbox(scenario, url)
    battery_s, verdicts = _battery(box, start_all, end)
    window_box = scenario_toolbox(scenario, url)
    window_s, _ = _battery(window_box, end - timedelta(minutes=120), end)
    return {
        "scan_s": min(scans),
        "battery_s": battery_s,
        "battery_sql_s": box.reader.query_seconds,
        "window_battery_s": window_s,
        "queries_per_battery": window_box.reader.queries,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "verdicts": verdicts,
    }


def _floor_child(minutes: int, rpm: int, url: str) -> tuple[list[float], float]:
    scenario = bench_world(minutes=minutes, requests_per_minute=rpm)
    start_all, end = minute_to_ts(scenario, 60), minute_to_ts(scenario, minutes)
    baseline = timedelta(minutes=60)  # the toolbox's default baseline before the window
    con = duckdb.connect(url.removeprefix("duckdb:///"), read_only=True)
    try:
        lo = start_all - baseline
        return _floor(con, "879", lo, end), _issue_floor(con, "879", lo, end)
    finally:
        con.close()


def run(opts: BenchOptions) -> dict[str, Any]:
    """Simulate the world, then time the scan and the battery (full table and a window).

    Each step runs in its own spawned process: the simulation, the measurement (scan and battery
    in one process, so the ratio compares like with like and ``peak_rss_mb`` is the battery's own
    peak, not that of an earlier bench section), and the diagnostic floor.
    """
    rpm = int(opts.extra.get("checks_rpm", 2_000 if opts.quick else 20_000))
    minutes = 510
    path = Path(opts.workdir) / ("checks-quick.duckdb" if opts.quick else "checks.duckdb")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    url = f"duckdb:///{path}"
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        rows, exposures, simulate_s = pool.submit(_simulate, minutes, rpm, url).result()
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        got = pool.submit(_measure, minutes, rpm, url).result()
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        floor, issue_floor = pool.submit(_floor_child, minutes, rpm, url).result()
    scan_s = got["scan_s"]
    return {
        "rows": rows,
        "exposures": exposures,
        "simulate_s": round(simulate_s, 2),
        "scan_s": round(scan_s, 4),
        "battery_s": round(got["battery_s"], 3),
        "ratio": round(got["battery_s"] / scan_s, 1),
        "battery_sql_s": round(got["battery_sql_s"], 3),
        "floor_s": round(sum(floor), 3),
        "floor_ratio": round(sum(floor) / scan_s, 1),
        # Issue 17's goal: the battery within 1.5x its floor, Python under 10 % of it.
        "battery_over_floor": round(got["battery_s"] / sum(floor), 2),
        "python_share": round(1 - got["battery_sql_s"] / got["battery_s"], 3),
        "issue_floor_s": round(issue_floor, 3),
        "battery_over_issue_floor": round(got["battery_s"] / issue_floor, 2),
        "join_ratio": round(floor[0] / scan_s, 1),
        "window_battery_s": round(got["window_battery_s"], 3),
        "window_ratio": round(got["window_battery_s"] / scan_s, 1),
        "window_minutes": 120,
        "queries_per_battery": got["queries_per_battery"],
        "peak_rss_mb": round(got["peak_rss_mb"], 1),
        "verdicts": got["verdicts"],
    }
