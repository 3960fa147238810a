"""Monitors: guardrails watched with the health gate's statistics over real telemetry queries.

The telemetry is synthetic with known answers (fixed seed): a multi-arm experiment whose test
arms each carry one fault, and a healthy experiment that must raise no alarm.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.alerts import AlertLedger
from lifecycle.config import Arm, Experiment, Guardrail
from lifecycle.gate import ArmSummary, GateConfig, check_guardrail
from lifecycle.judge import judge_comparisons, metric_sign
from lifecycle.monitors import Monitors, arm_statistics
from lifecycle.views import ExperimentView
from tools.telemetry import Subject, TelemetryReader
from tools.unit_stats import UnitStatsReader

T0 = datetime(2026, 11, 20, 6, 0)
NOW = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
MINUTES = 120
GUARDRAILS = [
    "revenue_per_request",
    "ctr",
    "ne",
    "calibration",
    "fallback_rate",
    "error_rate",
    "latency_p99",
    "srm",
]
# One fault per arm of experiment "879"; "880" is healthy. The fault -> the guardrail it breaks.
FAULT_ARMS = {
    "fallback": "fallback_rate",
    "revenue": "revenue_per_request",
    "errors": "error_rate",
    "slow": "latency_p99",
    "overpredict": "calibration",
    "lost": "srm",
}


def _arm_requests(rng: np.random.Generator, arm: str, n: int, first_id: int) -> pd.DataFrame:
    minute = rng.integers(0, MINUTES, n)
    ts = pd.to_datetime(T0) + pd.to_timedelta(minute * 60 + rng.uniform(0, 59, n), unit="s")
    pred = np.clip(rng.beta(2, 38, n), 1e-4, 0.9)  # mean 5 %, calibrated by construction
    label = (rng.uniform(size=n) < pred).astype(int)
    cpc = rng.lognormal(0.0, 0.5, n)
    revenue = label * cpc
    fallback = rng.uniform(size=n) < 0.01
    error = rng.uniform(size=n) < 0.002
    latency = rng.lognormal(np.log(40), 0.35, n)
    if arm == "fallback":
        fallback = rng.uniform(size=n) < 0.2
    elif arm == "revenue":
        revenue = revenue * 0.6
    elif arm == "errors":
        error = rng.uniform(size=n) < 0.03
    elif arm == "slow":
        latency = latency * 1.6
    elif arm == "overpredict":
        pred = np.clip(pred * 1.5, 0, 1)
    return pd.DataFrame(
        {
            "ts": ts,
            "request_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "unit_id": rng.integers(0, 10**9, n),
            "country": "US",
            "platform": "ios",
            "ad_type": "feed",
            "model_id": "ctr_v41",
            "model_version": "1",
            "prediction": pred,
            "fallback": fallback,
            "label": label,
            "revenue": revenue,
            "latency_ms": latency,
            "error": error,
        }
    )


def write_telemetry(path: Path, seed: int = 7, per_arm: int = 24_000) -> str:
    rng = np.random.default_rng(seed)
    requests, exposures, next_id = [], [], 0
    plan = {"879": ["control", *FAULT_ARMS], "880": ["control", "test"]}
    for experiment_id, arms in plan.items():
        for arm in arms:
            r = _arm_requests(rng, arm, per_arm, next_id)
            next_id += per_arm
            requests.append(r)
            keep = rng.uniform(size=len(r)) >= (0.15 if arm == "lost" else 0.0)
            e = r.loc[keep, ["ts", "request_id", "unit_id"]].assign(
                experiment_id=experiment_id, arm=arm
            )
            exposures.append(e)
    all_requests = pd.concat(requests, ignore_index=True)  # noqa: F841 - read by DuckDB
    all_exposures = pd.concat(exposures, ignore_index=True)  # noqa: F841
    path.mkdir(parents=True, exist_ok=True)
    db = path / "telemetry.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE requests AS SELECT * FROM all_requests")
        con.execute("CREATE TABLE exposures AS SELECT * FROM all_exposures")
    return f"duckdb:///{db}"


def view(
    experiment_id: str, arms: Sequence[str], *, status: str = "running", created: datetime = T0
) -> ExperimentView:
    exp = Experiment(
        id=experiment_id,
        name=f"experiment {experiment_id}",
        owner="alice",
        layer="ranking",
        traffic_pct=10,
        arms={a: Arm() for a in arms},
        guardrails=[Guardrail(metric=m) for m in GUARDRAILS],  # type: ignore[arg-type]
    )
    return ExperimentView(
        id=exp.id,
        name=exp.name,
        description="",
        owner=exp.owner,
        layer=exp.layer,
        traffic_pct=exp.traffic_pct,
        range_start=0,
        range_end=10,
        arms=exp.arms,
        control=exp.control,
        targeting={},
        rollout=exp.rollout,
        guardrails=exp.guardrails,
        status=status,  # type: ignore[arg-type]
        stage=3,
        stage_percent=100,
        stage_started_at=created,
        prior=None,
        created_at=created,
        created_by="alice",
        config=exp,
    )


class Source:
    def __init__(self, views: list[ExperimentView]) -> None:
        self.views = views

    def list(self) -> list[ExperimentView]:
        return self.views


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_telemetry(tmp_path_factory.mktemp("telemetry"))


@pytest.fixture
def source() -> Source:
    return Source([view("879", ["control", *FAULT_ARMS]), view("880", ["control", "test"])])


@pytest.fixture
def ledger(tmp_path: Path) -> AlertLedger:
    return AlertLedger(f"sqlite:///{tmp_path / 'state.db'}")


def test_every_guardrail_is_onboarded(telemetry: str, source: Source, ledger: AlertLedger) -> None:
    monitors = Monitors(source, TelemetryReader(telemetry), ledger)
    keys = {m.key for m in monitors.onboard()}
    assert keys == {f"{e}:{g}" for e in ("879", "880") for g in GUARDRAILS}
    source.views.append(view("881", ["control", "test"], status="paused"))
    source.views.append(view("882", ["control", "test"], status="draft"))
    assert {m.experiment_id for m in monitors.onboard()} == {"879", "880"}


def test_faults_breach_their_guardrail_and_healthy_data_does_not(
    telemetry: str, source: Source, ledger: AlertLedger
) -> None:
    results = Monitors(source, TelemetryReader(telemetry), ledger).check(NOW)
    by_key = {r.monitor.key: r for r in results}
    healthy = [r for r in results if r.monitor.experiment_id == "880"]
    assert len(healthy) == len(GUARDRAILS)
    assert all(r.verdict in ("safe", "inconclusive") for r in healthy), [
        r.summary for r in healthy if r.verdict == "breach"
    ]
    for arm, guardrail in FAULT_ARMS.items():
        r = by_key[f"879:{guardrail}"]
        assert r.verdict == "breach", r.summary
        if guardrail != "srm":
            assert arm in r.labels["arms"].split(","), (guardrail, r.labels)
    # Guardrails nobody broke in 879 hold (the ctr of every arm is untouched).
    assert by_key["879:ctr"].verdict != "breach", by_key["879:ctr"].summary


def test_alerts_fire_once_while_open_and_resolve_when_the_experiment_stops(
    telemetry: str, source: Source, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monitors = Monitors(source, TelemetryReader(telemetry), AlertLedger(url))
    fired = monitors.evaluate(NOW)
    keys = {a.key for a in fired}
    assert {f"879:{g}" for g in FAULT_ARMS.values()} <= keys
    assert not any(k.startswith("880:") for k in keys)
    alert = next(a for a in fired if a.guardrail == "fallback_rate")
    assert alert.metric == "fallback_rate" and alert.experiment_id == "879"
    assert alert.since == T0.replace(tzinfo=UTC) and alert.fired_at == NOW
    assert next(a for a in fired if a.guardrail == "revenue_per_request").metric == "revenue"

    assert monitors.evaluate(NOW + timedelta(minutes=1)) == []  # still open: not fired again
    # A restart (new ledger object, same state database) keeps them open.
    restarted = Monitors(source, TelemetryReader(telemetry), AlertLedger(url))
    assert restarted.evaluate(NOW + timedelta(minutes=2)) == []
    assert {r.key for r in AlertLedger(url).open_alerts("monitor")} == keys

    source.views[0] = view("879", ["control", *FAULT_ARMS], status="killed")
    assert restarted.evaluate(NOW + timedelta(minutes=3)) == []
    assert AlertLedger(url).open_alerts("monitor") == []
    # Running again and still broken: a new alert may fire.
    source.views[0] = view("879", ["control", *FAULT_ARMS])
    assert {a.key for a in restarted.evaluate(NOW + timedelta(minutes=4))} == keys


def test_no_data_raises_no_alarm(telemetry: str, ledger: AlertLedger) -> None:
    # 890 has no telemetry at all; 879 is evaluated before its traffic starts.
    source = Source([view("890", ["control", "test"])])
    results = Monitors(source, TelemetryReader(telemetry), ledger).check(NOW)
    assert {r.verdict for r in results} == {"no_data"}
    source = Source([view("879", ["control", "fallback"])])
    early = Monitors(source, TelemetryReader(telemetry), ledger)
    assert early.evaluate(T0.replace(tzinfo=UTC)) == []


def test_window_starts_at_creation_when_within_the_lookback(
    telemetry: str, ledger: AlertLedger
) -> None:
    created = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    source = Source([view("879", ["control", "fallback"], created=created)])
    (r, *_) = Monitors(source, TelemetryReader(telemetry), ledger).check(NOW)
    assert r.since == created
    # Created after the evaluated time (replayed telemetry): the lookback window is used.
    late = Source([view("879", ["control", "fallback"], created=NOW + timedelta(days=3))])
    (r2, *_) = Monitors(late, TelemetryReader(telemetry), ledger, lookback_minutes=90).check(NOW)
    assert r2.since == NOW - timedelta(minutes=90)


def test_arm_statistics_match_direct_computation(telemetry: str) -> None:
    reader = TelemetryReader(telemetry)
    cube = reader.cube(Subject(experiment_id="880"), T0, NOW, latency=True)
    query = (
        "SELECT e.arm, r.* FROM requests r JOIN exposures e USING (request_id) "
        "WHERE e.experiment_id = '880'"
    )
    with sa.create_engine(telemetry).connect() as conn:
        raw = pd.read_sql(sa.text(query), conn)
    for arm, rows in raw.groupby("arm"):
        fb = arm_statistics(cube, "fallback_rate", "control")[arm]
        assert fb.n == len(rows) and fb.mean == pytest.approx(rows["fallback"].mean())
        ctr = arm_statistics(cube, "ctr", "control")[arm]
        assert ctr.mean == pytest.approx(rows["label"].mean())
        assert ctr.var == pytest.approx(rows["label"].var(), rel=1e-6)
        rev = arm_statistics(cube, "revenue_per_request", "control")[arm]
        assert rev.mean == pytest.approx(rows["revenue"].mean())
        # Batch means estimate the per-request variance within sampling error.
        assert rev.var == pytest.approx(rows["revenue"].var(), rel=0.35)
        cal = arm_statistics(cube, "calibration", "control")[arm]
        assert cal.mean == pytest.approx(rows["prediction"].sum() / rows["label"].sum())


def test_healthy_experiments_across_seeds_stay_quiet(tmp_path: Path) -> None:
    """No false alarm on healthy data over several independent worlds (always-valid level 5 %)."""
    breaches = 0
    for seed in (11, 12, 13):
        url = write_telemetry(tmp_path / str(seed), seed=seed, per_arm=8_000)
        source = Source([view("880", ["control", "test"])])
        ledger = AlertLedger(f"sqlite:///{tmp_path / str(seed) / 'state.db'}")
        results = Monitors(source, TelemetryReader(url), ledger, config=GateConfig()).check(NOW)
        breaches += sum(r.verdict == "breach" for r in results)
    assert breaches == 0


def test_unit_sums_keep_the_fault_breaches_and_the_healthy_experiment_quiet(
    telemetry: str, source: Source, ledger: AlertLedger
) -> None:
    units = UnitStatsReader(telemetry)
    results = Monitors(source, TelemetryReader(telemetry), ledger, units=units).check(NOW)
    assert units.queries == 1  # one grouped statement for every experiment
    by_key = {r.monitor.key: r for r in results}
    for guardrail in ("revenue_per_request", "fallback_rate", "error_rate"):
        assert by_key[f"879:{guardrail}"].verdict == "breach", by_key[f"879:{guardrail}"].summary
        assert by_key[f"880:{guardrail}"].verdict != "breach", by_key[f"880:{guardrail}"].summary
    assert by_key["879:ctr"].verdict != "breach"


def _aa_clustered(path: Path, experiments: int, seed: int = 13) -> str:
    """A/A experiments whose units send many alike requests (per-unit CTR and cost per click)."""
    rng = np.random.default_rng(seed)
    frames, next_id, next_unit = [], 0, 0
    for e in range(experiments):
        for arm in ("control", "test"):
            k = 300
            rate = rng.lognormal(-0.5, 1.0, k)  # requests per minute
            n = rng.poisson(rate * MINUTES)
            unit = np.repeat(np.arange(next_unit, next_unit + k), n)
            next_unit += k
            ctr = np.repeat(np.clip(0.05 * rng.lognormal(-0.3, 0.8, k), 0, 0.9), n)
            cpc = np.repeat(rng.lognormal(0.0, 0.7, k), n)
            size = int(n.sum())
            minute = rng.integers(0, MINUTES, size)
            label = (rng.uniform(size=size) < ctr).astype(int)
            frames.append(
                pd.DataFrame(
                    {
                        "ts": pd.to_datetime(T0) + pd.to_timedelta(minute * 60 + 1, unit="s"),
                        "request_id": np.arange(next_id, next_id + size, dtype=np.int64),
                        "unit_id": unit,
                        "revenue": label * cpc,
                        "label": label,
                        "experiment_id": f"aa{e}",
                        "arm": arm,
                    }
                )
            )
            next_id += size
    rows = pd.concat(frames, ignore_index=True)
    requests = rows.assign(  # noqa: F841 - read by DuckDB
        country="US",
        platform="ios",
        ad_type="feed",
        model_id="ctr_v41",
        model_version="1",
        prediction=0.05,
        fallback=False,
        latency_ms=40.0,
        error=False,
    ).drop(columns=["experiment_id", "arm"])
    exposures = rows[["ts", "request_id", "unit_id", "experiment_id", "arm"]]  # noqa: F841
    db = path / "aa.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE requests AS SELECT * FROM requests")
        con.execute("CREATE TABLE exposures AS SELECT * FROM exposures")
    return f"duckdb:///{db}"


def test_aa_alarms_with_request_variance_and_not_with_unit_clustered_variance(
    tmp_path: Path, ledger: AlertLedger
) -> None:
    """The healthy alarm rate of the monitors against a request-level variance on the same data.

    Twenty A/A experiments whose units send many alike requests, judged with no tolerance
    (``max_regression`` 0): a sequence wholly below 0 is a breach, wholly above 0 is "safe";
    either excludes the true lift 0. Treating requests as independent (the cube's per-request
    sums) excludes it for a large share; the monitors, over units, hold their 5 % level.
    """
    url = _aa_clustered(tmp_path, 20)
    views = []
    for e in range(20):
        v = view(f"aa{e}", ["control", "test"])
        exp = v.config.model_copy(
            update={"guardrails": [Guardrail(metric="revenue_per_request", max_regression=0.0)]}
        )
        views.append(v.model_copy(update={"guardrails": exp.guardrails, "config": exp}))
    source = Source(views)
    cfg = GateConfig(tuning_n=2_000)
    reader = TelemetryReader(url)
    before = []
    for v in views:
        cube = reader.cube(Subject(experiment_id=v.id), T0.replace(tzinfo=UTC), NOW)
        stats = arm_statistics(cube, "revenue_per_request", "control")
        g = v.guardrails[0]
        before.append(check_guardrail(g, "test", stats.get("control"), stats.get("test"), cfg))
    after = Monitors(source, TelemetryReader(url), ledger, config=cfg).check(NOW)
    excluded_before = sum(r.verdict in ("harm", "safe") for r in before)
    excluded_after = sum(r.verdict in ("breach", "safe") for r in after)
    assert excluded_before >= 5, [r.summary for r in before]
    assert excluded_after <= 1, [r.summary for r in after if r.verdict != "inconclusive"]


def test_the_vectorised_judgement_matches_the_gate_on_random_comparisons() -> None:
    """lifecycle.judge gives check_guardrail's verdict and interval for every comparison."""
    rng = np.random.default_rng(3)
    k = 400
    metrics = ["revenue_per_request", "fallback_rate", "calibration", "ne"]
    metric = rng.choice(metrics, k)
    mean_c = np.where(rng.uniform(size=k) < 0.1, 0.0, rng.lognormal(-3, 1.5, k))
    mean_t = mean_c * rng.lognormal(0, 0.3, k) + np.where(mean_c == 0, rng.uniform(0, 0.01, k), 0)
    var_c, var_t = rng.lognormal(-6, 2, k), rng.lognormal(-6, 2, k)
    n_c, n_t = rng.integers(50, 20_000, k), rng.integers(50, 20_000, k)
    tau = rng.choice([0.0, 0.02, 0.1, 0.5], k)
    cfg = GateConfig(tuning_n=5_000)
    got = judge_comparisons(
        n_c, mean_c, var_c, n_t, mean_t, var_t, tau, [metric_sign(m) for m in metric], cfg
    )
    for i in range(k):
        ref = check_guardrail(
            Guardrail(metric=metric[i], max_regression=float(tau[i])),
            "test",
            ArmSummary(n=int(n_c[i]), mean=float(mean_c[i]), var=float(var_c[i])),
            ArmSummary(n=int(n_t[i]), mean=float(mean_t[i]), var=float(var_t[i])),
            cfg,
        )
        assert got["verdict"][i] == ref.verdict, (i, ref.summary)
        if ref.verdict != "no_data":
            assert ref.ci_low is not None and ref.ci_high is not None
            assert got["ci_low"][i] == pytest.approx(ref.ci_low, rel=1e-9, abs=1e-12)
            assert got["ci_high"][i] == pytest.approx(ref.ci_high, rel=1e-9, abs=1e-12)


def _fleet_telemetry(path: Path, experiments: int, fault: str) -> str:
    """Many two-arm experiments over units of unequal value; ``fault``'s test arm falls back."""
    rng = np.random.default_rng(11)
    n = 200_000
    unit = rng.integers(0, 40_000, n)
    exp = rng.integers(0, experiments, 40_000)[unit]  # a unit's experiment and arm
    arm = np.where(rng.uniform(size=40_000) < 0.5, "control", "test")[unit]
    faulty = (exp.astype(str) == fault) & (arm == "test")
    value = np.exp(rng.normal(0, 0.8, 40_000))[unit]
    requests = pd.DataFrame(  # read by DuckDB
        {
            "ts": pd.to_datetime(T0) + pd.to_timedelta(rng.uniform(0, MINUTES * 60, n), unit="s"),
            "request_id": np.arange(n, dtype=np.int64),
            "unit_id": unit,
            "country": "US",
            "platform": "ios",
            "ad_type": "feed",
            "model_id": "ctr_v41",
            "model_version": "1",
            "prediction": 0.05,
            "fallback": rng.uniform(size=n) < np.where(faulty, 0.3, 0.01),
            "label": (rng.uniform(size=n) < 0.05).astype(int),
            "revenue": value * rng.exponential(0.02, n),
            "latency_ms": 40.0,
            "error": False,
        }
    )
    exposures = requests[["ts", "request_id", "unit_id"]].assign(  # noqa: F841
        experiment_id=exp.astype(str), arm=arm
    )
    db = path / "fleet.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE requests AS SELECT * FROM requests")
        con.execute("CREATE TABLE exposures AS SELECT * FROM exposures")
    return f"duckdb:///{db}"


def test_monitors_judge_many_experiments_with_one_statement(
    tmp_path: Path, ledger: AlertLedger
) -> None:
    """100 experiments: one grouped statement (counted on the engine), one fault flagged."""
    url = _fleet_telemetry(tmp_path, 100, fault="17")
    views = []
    for e in range(100):
        v = view(str(e), ["control", "test"])
        exp = v.config.model_copy(
            update={
                "guardrails": [
                    Guardrail(metric="revenue_per_request", max_regression=0.2),
                    Guardrail(metric="fallback_rate", max_regression=0.5),
                    Guardrail(metric="srm"),
                ]
            }
        )
        views.append(v.model_copy(update={"guardrails": exp.guardrails, "config": exp}))
    reader = TelemetryReader(url)
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(reader.engine, "before_cursor_execute", count)
    results = Monitors(Source(views), reader, ledger).check(NOW)
    sa.event.remove(reader.engine, "before_cursor_execute", count)
    assert len(statements) == 1 and "exposures" in statements[0]
    assert len(results) == 3 * 100
    breaches = {
        (r.monitor.experiment_id, r.monitor.guardrail.metric)
        for r in results
        if r.verdict == "breach"
    }
    assert breaches == {("17", "fallback_rate")}
