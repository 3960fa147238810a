"""``vigil bench --only rollout``: the gradual rollout's error rates and the fleet-scale ticks.

Figures (issues 14 and 17):

- ``monitor_alarm_rate``: 1,000 healthy experiments looked at every minute for three hours. A
  cheap synthetic path: per-unit requests and revenue are drawn in numpy (units of unequal
  activity and value, so requests of a unit are alike) and cumulated; every look judges every
  experiment with the very functions :meth:`lifecycle.monitors.Monitors.check` calls
  (:func:`lifecycle.judge.judge_unit_guardrails` on the same per-arm unit sums the grouped query
  returns, :func:`lifecycle.gate.srm_test`). The rate is the share of experiments that alarmed at
  least once over the whole run (the sequences' level is over the run, not per look).
- ``launches``: controller-driven launches in the simulated world (:mod:`evals.sim.ramp`), ten
  ramped experiments per world in ten layers: the share of faulty launches stopped before more
  than 10 % of traffic, the false rollbacks over the healthy launches, the median traffic-minutes
  of exposure to a fault before the rollback.
- ``fleet``: a synthetic warehouse of 10 M requests with 1,000 experiments (one with a planted
  fallback fault): the controller's tick over 1,000 ramping experiments and ``Monitors.check``
  at 100 and 1,000 experiments, each timed, with the SQL statements counted by an event listener
  (and how many of them read the exposures table), and what the monitors flagged.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from evals.bench import BenchOptions

__all__ = ["alarm_rate", "fleet", "launches", "run"]

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


# -- 1. the monitors' alarm rate over the whole run ---------------------------------------------


def alarm_rate(
    experiments: int = 1000, minutes: int = 180, units: int = 400, seed: int = 0
) -> dict[str, Any]:
    """Share of healthy experiments the monitors ever flag over ``minutes`` looks."""
    from lifecycle.gate import GateConfig, lift_and_se, srm_test
    from lifecycle.judge import COMPARISON_COLUMNS, arm_ratios, judge_unit_guardrails
    from lifecycle.monitors import fleet_srm_alpha

    rng = np.random.default_rng(seed)
    cfg = GateConfig()
    shape = (experiments, 2, units)
    rate = np.exp(rng.normal(0.0, 1.0, shape)) * 0.05  # requests per minute, heavy-tailed
    value = np.exp(rng.normal(0.0, 0.8, shape)) * 0.02  # a unit's revenue per request
    n = np.zeros(shape)
    y = np.zeros(shape)
    ids = np.repeat(np.array([f"e{i}" for i in range(experiments)]), 2)
    arms = np.tile(np.array(["control", "test"]), experiments)
    comparisons = {
        tau: pd.DataFrame(
            [(f"e{i}", "revenue_per_request", "test", "control", tau) for i in range(experiments)],
            columns=list(COMPARISON_COLUMNS),
        )
        for tau in (0.02, 0.0)
    }
    ever = {"revenue_per_request": np.zeros(experiments, bool), "srm": np.zeros(experiments, bool)}
    ever_strict = np.zeros(experiments, bool)
    ever_naive = np.zeros(experiments, bool)  # a fixed-horizon 95 % interval peeked every look
    looks_flagged = 0
    weights = {"control": 1.0, "test": 1.0}
    srm_alpha = fleet_srm_alpha(cfg, experiments)  # as Monitors.check sets it for the fleet
    began = time.perf_counter()
    for _ in range(minutes):
        new = rng.poisson(rate)
        n += new
        # The sum of ``new`` requests of a unit: gamma with the unit's mean per request.
        y += np.where(new > 0, rng.gamma(np.maximum(new, 1) * 2.0, value / 2.0), 0.0)
        seen = n > 0
        sums = pd.DataFrame(
            {
                "experiment_id": ids,
                "arm": arms,
                "units": seen.sum(axis=2).ravel(),
                "sum_n": n.sum(axis=2).ravel(),
                "sum_n2": (n * n).sum(axis=2).ravel(),
                "sum_revenue": y.sum(axis=2).ravel(),
                "sum_revenue2": (y * y).sum(axis=2).ravel(),
                "sum_revenue_n": (y * n).sum(axis=2).ravel(),
            }
        )
        judged = judge_unit_guardrails(sums, comparisons[0.02], cfg)
        harm = (judged["verdict"] == "harm").to_numpy()
        strict = judge_unit_guardrails(sums, comparisons[0.0], cfg)
        ever_strict |= strict["verdict"].isin(["harm", "safe"]).to_numpy()  # 0 excluded
        r = arm_ratios(sums, "revenue_per_request")
        c, t = r.iloc[0::2], r.iloc[1::2]
        lift, se = lift_and_se(c["mean"], c["var"], c["n"], t["mean"], t["var"], t["n"])
        ever_naive |= np.abs(lift) > 1.96 * se
        counts = seen.sum(axis=2)
        srm = np.array(
            [
                srm_test({"control": int(c), "test": int(t)}, weights, srm_alpha).verdict == "fail"
                for c, t in counts
            ]
        )
        ever["revenue_per_request"] |= harm
        ever["srm"] |= srm
        looks_flagged += int((harm | srm).sum())
    any_alarm = ever["revenue_per_request"] | ever["srm"]
    return {
        "path": "synthetic unit-level data; lifecycle.judge.judge_unit_guardrails + gate.srm_test "
        "(what Monitors.check runs on the grouped query's sums)",
        "experiments": experiments,
        "looks_per_experiment": minutes,
        "units_per_arm": units,
        "alpha": cfg.alpha,
        "srm_alpha_fleet": cfg.srm_alpha,
        "srm_alpha_per_experiment": srm_alpha,
        "alarm_rate_over_run": float(any_alarm.mean()),
        "alarm_rate_revenue_over_run": float(ever["revenue_per_request"].mean()),
        "alarm_rate_srm_over_run": float(ever["srm"].mean()),
        "alarm_rate_per_look": looks_flagged / (experiments * minutes),
        "cs_excludes_true_lift_over_run": float(ever_strict.mean()),
        "fixed_horizon_95_excludes_true_lift_over_run": float(ever_naive.mean()),
        "seconds": time.perf_counter() - began,
    }


# -- 2. controller-driven launches in the simulated world ---------------------------------------


def _launch_world(seed: int, faults: list[dict[str, Any]], n: int) -> dict[str, Any]:
    experiments = []
    for i in range(n):
        experiments.append(
            {
                "id": f"L{i}",
                "name": f"launch {i}",
                "layer": f"layer{i}",
                "rollout": {
                    "stages": [
                        {"percent": 2, "min_minutes": 10},
                        {"percent": 10, "min_minutes": 10},
                        {"percent": 50, "min_minutes": 10},
                        {"percent": 100, "min_minutes": 10},
                    ],
                    "on_harm": "ramp_down",
                    "tick_minutes": 5,
                    "guardrails": [
                        {"metric": "revenue_per_request", "max_regression": 0.5},
                        {"metric": "fallback_rate", "max_regression": 0.5},
                        {"metric": "calibration", "max_regression": 0.2},
                        {"metric": "srm"},
                    ],
                },
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
            }
        )
    return {
        "name": f"bench-rollout-{seed}",
        "seed": seed,
        "world": {
            "start": "2026-11-20T06:00:00Z",
            "minutes": 90,
            "requests_per_minute": 3000,
            "base_ctr": 0.1,  # clicks enough for calibration to be judged at a small stage
            "models": [{"id": "ctr_v41", "quality": 0.75}, {"id": "ctr_v42", "quality": 0.76}],
            "production_model": "ctr_v41",
            "experiments": experiments,
        },
        "faults": faults,
        "alert": {"metric": "revenue", "minute": 89},
        "expect": {"root_cause": "none"},
    }


def launches(workdir: Path, healthy_worlds: int = 5, faulty_worlds: int = 2) -> dict[str, Any]:
    """Healthy and faulty launches, ten per world, each ramped by the real controller."""
    from evals.sim import parse_scenario
    from evals.sim.ramp import simulate_ramp

    per_world = 10
    kinds = [
        ("model_fallback", 0.3),
        ("miscalibration", 1.5),
        ("allocation_bug", 0.3),
        ("model_fallback", 0.1),
        ("miscalibration", 0.6),
    ]
    healthy: list[Any] = []
    faulty: list[Any] = []
    details: list[dict[str, Any]] = []
    began = time.perf_counter()
    for w in range(healthy_worlds + faulty_worlds):
        bad = w >= healthy_worlds
        faults = []
        if bad:
            for i in range(per_world):
                kind, severity = kinds[(i + w) % len(kinds)]
                faults.append(
                    {"kind": kind, "experiment": f"L{i}", "start_minute": 0, "severity": severity}
                )
        scenario = parse_scenario(_launch_world(100 + w, faults, per_world))
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            summary = simulate_ramp(
                scenario, f"duckdb:///{d}/t.duckdb", f"sqlite:///{d}/s.db", replace=True
            )
        (faulty if bad else healthy).extend(summary.outcomes.values())
        if bad:
            details += [
                {
                    "fault": f"{f['kind']} {f['severity']}",
                    "rolled_back_minute": summary.outcomes[str(f["experiment"])].rollback_minute,
                    "max_coverage_pct": summary.outcomes[str(f["experiment"])].max_coverage_pct,
                }
                for f in faults
            ]
    stopped = [o for o in faulty if o.rolled_back and o.max_coverage_pct <= 10.0]
    contained = [o for o in faulty if o.max_coverage_pct <= 10.0]
    exposure = [o.exposure_traffic_minutes for o in faulty if o.rolled_back]
    return {
        "healthy_launches": len(healthy),
        "false_rollbacks": sum(o.rolled_back for o in healthy),
        "healthy_reached_full": sum(o.final_state == "running" for o in healthy),
        "faulty_launches": len(faulty),
        "faulty_stopped_by_10pct": len(stopped),
        "share_faulty_stopped_by_10pct": len(stopped) / len(faulty) if faulty else None,
        "share_faulty_never_above_10pct": len(contained) / len(faulty) if faulty else None,
        "median_exposure_traffic_minutes_before_rollback": (
            statistics.median(exposure) if exposure else None
        ),
        "faulty_detail": details,
        "seconds": time.perf_counter() - began,
    }


# -- 3. the fleet: 1,000 experiments over 10 M requests ------------------------------------------


def _uniform(column: str, stream: int) -> str:
    """SQL for a deterministic uniform draw in [0, 1) per row (a hash, so runs repeat)."""
    return f"((hash({column} * 7919 + {stream}) % 1000003) / 1000003.0)"


def _fleet_db(path: Path, requests: int, experiments: int, fault: int) -> str:
    """Requests and exposures (each request in one experiment); ``fault``'s test arm falls back."""
    import duckdb

    minutes = 180
    with duckdb.connect(str(path)) as con:
        con.execute("SET threads = 2")
        con.execute(
            f"""
            CREATE TABLE base AS
            SELECT i AS request_id, (hash(i * 7 + 1) % 2000000)::BIGINT AS unit_id,
                   TIMESTAMP '2026-11-20 06:00:00'
                     + to_microseconds((i * {minutes} * 60000000 // {requests})::BIGINT) AS ts
            FROM range({requests}) t(i)
            """
        )
        con.execute(
            f"""
            CREATE TABLE exposures AS
            SELECT ts, request_id, unit_id,
                   ((hash(unit_id) % {experiments}))::VARCHAR AS experiment_id,
                   CASE WHEN hash(unit_id + 99) % 2 = 0 THEN 'control' ELSE 'test' END AS arm
            FROM base
            """
        )
        con.execute(
            f"""
            CREATE TABLE requests AS
            SELECT b.ts, b.request_id, b.unit_id, 'US' AS country, 'ios' AS platform,
                   'feed' AS ad_type, 'ctr_v41' AS model_id, '1' AS model_version,
                   0.02 AS prediction,
                   ({_uniform("b.request_id", 1)} < CASE WHEN e.experiment_id = '{fault}'
                       AND e.arm = 'test' THEN 0.3 ELSE 0.001 END) AS fallback,
                   ({_uniform("b.request_id", 2)} < 0.02)::INTEGER AS label,
                   0.04 * exp(0.8 * ({_uniform("b.unit_id", 3)} - 0.5))
                     * {_uniform("b.request_id", 4)} AS revenue,
                   40.0 AS latency_ms, false AS error
            FROM base b JOIN exposures e USING (request_id)
            """
        )
        con.execute("DROP TABLE base")
    return f"duckdb:///{path}"


@contextmanager
def _counting(engine: sa.Engine) -> Iterator[dict[str, int]]:
    counts = {"statements": 0, "exposure_statements": 0}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts["statements"] += 1
        counts["exposure_statements"] += "exposures" in statement

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield counts
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def _fleet_state(state_url: str, experiments: int, start: bool) -> None:
    from lifecycle.config import Arm, Experiment, ExperimentFile, Guardrail, Layer
    from lifecycle.service import ExperimentService

    guardrails = [
        Guardrail(metric="revenue_per_request", max_regression=0.5),
        Guardrail(metric="fallback_rate", max_regression=0.5),
        Guardrail(metric="srm"),
    ]
    exps = [
        Experiment(
            id=str(i),
            name=f"fleet {i}",
            owner="bench",
            layer=f"l{i % 20}",
            traffic_pct=2.0,
            arms={"control": Arm(), "test": Arm()},
            guardrails=guardrails,
        )
        for i in range(experiments)
    ]
    file = ExperimentFile(layers=[Layer(id=f"l{k}") for k in range(20)], experiments=exps)
    with ExperimentService(state_url, clock=lambda: T0) as service:
        service.create(file, "bench", start=start)


def fleet(workdir: Path, requests: int = 10_000_000, experiments: int = 1000) -> dict[str, Any]:
    """Controller tick and monitor checks over a synthetic warehouse of ``requests``."""
    from lifecycle.alerts import AlertLedger
    from lifecycle.controller import RolloutController
    from lifecycle.monitors import Monitors
    from lifecycle.service import ExperimentService
    from tools.telemetry import TelemetryReader
    from tools.unit_stats import UnitStatsReader

    fault = 17
    out: dict[str, Any] = {"requests": requests, "experiments": experiments, "fault": str(fault)}
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        began = time.perf_counter()
        url = _fleet_db(Path(d) / "fleet.duckdb", requests, experiments, fault)
        out["build_seconds"] = time.perf_counter() - began
        engine = sa.create_engine(url)
        now = T0 + timedelta(minutes=180)
        state = f"sqlite:///{d}/ramping.db"
        _fleet_state(state, experiments, start=True)
        units = UnitStatsReader(engine)
        controller = RolloutController(state, units)
        with _counting(engine) as counts:
            t = time.perf_counter()
            looks = controller.evaluate(now)
            out["controller_tick_seconds"] = time.perf_counter() - t
        out["controller_query_seconds"] = units.query_seconds
        out["controller_statements"] = counts["statements"]
        out["controller_exposure_scans"] = counts["exposure_statements"]
        out["controller_rollbacks"] = sorted(
            lk.view.id for lk in looks if lk.report.decision == "rollback"
        )
        controller.close()
        for k in sorted({min(100, experiments), experiments}):
            state_k = f"sqlite:///{d}/running{k}.db"
            _fleet_state(state_k, k, start=True)
            service = ExperimentService(state_k)
            ledger = AlertLedger(state_k)
            units_k = UnitStatsReader(engine)
            monitors = Monitors(
                service, TelemetryReader(engine), ledger, lookback_minutes=24 * 60, units=units_k
            )
            with _counting(engine) as counts:
                t = time.perf_counter()
                results = monitors.check(now)
                seconds = time.perf_counter() - t
            out[f"monitor_{k}"] = {
                "seconds": seconds,
                "query_seconds": units_k.query_seconds,
                "statements": counts["statements"],
                "exposure_scans": counts["exposure_statements"],
                "breaches": sorted(
                    f"{r.monitor.experiment_id}:{r.monitor.guardrail.metric}"
                    for r in results
                    if r.verdict == "breach"
                ),
            }
            service.close()
            ledger.close()
        out["before"] = _per_experiment_path(engine, now, sample=20)
        engine.dispose()
    return out


def _per_experiment_path(engine: sa.Engine, now: datetime, sample: int) -> dict[str, Any]:
    """The monitors' previous path, timed on ``sample`` experiments in the same run.

    Before issue 17, ``Monitors.check`` read an exposure-join cube and a distinct-units query per
    experiment; these are those two reader calls, per experiment.
    """
    from tools.telemetry import Subject, TelemetryReader

    reader = TelemetryReader(engine)  # counts its own queries (it may bypass the cursor events)
    t = time.perf_counter()
    for i in range(sample):
        reader.cube(Subject(experiment_id=str(i)), T0, now)
        reader.units(str(i), T0, now)
    seconds = time.perf_counter() - t
    return {
        "path": "TelemetryReader.cube + units per experiment (Monitors.check before issue 17)",
        "experiments_timed": sample,
        "seconds_per_experiment": seconds / sample,
        "statements_per_experiment": reader.queries / sample,
        "estimated_seconds_at_1000": 1000 * seconds / sample,
    }


def run(opts: BenchOptions) -> dict[str, Any]:
    """The section's figures (``quick``: smaller runs for a smoke test)."""
    workdir = opts.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    quick = opts.quick
    return {
        "monitor_alarm_rate": alarm_rate(
            experiments=100 if quick else 1000, minutes=30 if quick else 180
        ),
        "launches": launches(
            workdir, healthy_worlds=1 if quick else 5, faulty_worlds=1 if quick else 2
        ),
        "fleet": fleet(
            workdir,
            requests=200_000 if quick else 10_000_000,
            experiments=100 if quick else 1000,
        ),
    }
