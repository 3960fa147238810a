"""Allocation in the simulated world: the real lifecycle allocation, its shares, kill switches,
launch windows, rollbacks; and the economy's basic promises (A/A changes nothing, a worse model
earns less, ad load moves revenue only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evals.sim import simulate
from evals.sim.bridge import world_snapshot
from lifecycle.allocation import assign
from tests.evals.sim_worlds import ab_world, read_tables, run

P_FLOOR = 0.001  # a healthy world must not look like an SRM at the SRM check's threshold


def _per_unit(requests: pd.DataFrame, exposures: pd.DataFrame, exp: str) -> pd.DataFrame:
    arms = exposures[exposures.experiment_id == exp].drop_duplicates("unit_id")
    df = requests.merge(arms[["unit_id", "arm"]], on="unit_id")
    return df.groupby(["arm", "unit_id"]).agg(
        requests=("request_id", "size"),
        clicks=("label", "sum"),
        revenue=("revenue", "sum"),
        fallback=("fallback", "sum"),
        errors=("error", "sum"),
        latency=("latency_ms", "mean"),
    )


def _t(units: pd.DataFrame, metric: str, a: str = "test", b: str = "control") -> float:
    """z of the difference of a per-request ratio metric between arms, clustered by unit
    (delta method: var R = Σ(x_i − R·n_i)² / (Σ n_i)²)."""
    out = []
    for arm in (a, b):
        x, n = units.loc[arm][metric].to_numpy(), units.loc[arm].requests.to_numpy()
        ratio = x.sum() / n.sum()
        out.append((ratio, float(np.sum((x - ratio * n) ** 2)) / n.sum() ** 2))
    return float((out[0][0] - out[1][0]) / np.sqrt(out[0][1] + out[1][1]))


def test_shares_follow_traffic_pct_and_arm_weights(tmp_path: Path) -> None:
    experiments = [
        {
            "id": "a",
            "name": "A",
            "layer": "ranking",
            "traffic_pct": 10,
            "arms": {"control": {"model": "m_prod"}, "test": {"model": "m_alt"}},
        },
        {
            "id": "b",
            "name": "B",
            "layer": "ranking",
            "traffic_pct": 30,
            "arms": {"control": {"model": "m_prod"}, "test": {"model": "m_alt", "weight": 3}},
        },
        {
            "id": "c",
            "name": "C",
            "layer": "ads_load",
            "traffic_pct": 50,
            "arms": {"control": {}, "low": {"ad_load": 0.9, "weight": 2}, "high": {"ad_load": 1.1}},
        },
    ]
    scenario = ab_world(experiments=experiments, minutes=30, rpm=4000, units=20_000)
    requests, exposures, _ = read_tables(run(scenario, tmp_path))
    units = requests.unit_id.nunique()
    seen = exposures.groupby(["experiment_id", "arm"]).unit_id.nunique()
    layers = {
        "ranking": {
            ("a", "control"): 0.05,
            ("a", "test"): 0.05,
            ("b", "control"): 0.075,
            ("b", "test"): 0.225,
        },
        "ads_load": {("c", "control"): 0.125, ("c", "low"): 0.25, ("c", "high"): 0.125},
    }
    for shares in layers.values():
        observed = [seen[key] for key in shares]
        observed.append(units - sum(observed))
        expected = [units * s for s in shares.values()]
        expected.append(units - sum(expected))
        assert stats.chisquare(observed, expected).pvalue > P_FLOOR, (observed, expected)
    # Each exposure is exactly what the lifecycle's own per-request allocation answers.
    snapshot = world_snapshot(scenario)
    sample = exposures.drop_duplicates(["experiment_id", "unit_id"]).sample(300, random_state=1)
    for unit, exp, arm in zip(sample.unit_id, sample.experiment_id, sample.arm, strict=True):
        assert assign(snapshot, {"unit_id": int(unit)}, str(exp)) == arm
    # Routing follows the arm: b's test units are served m_alt.
    b_test = exposures[(exposures.experiment_id == "b") & (exposures.arm == "test")]
    served = requests.set_index("request_id").loc[b_test.request_id, "model_id"]
    assert set(served) == {"m_alt"}


def test_aa_world_shows_no_difference(tmp_path: Path) -> None:
    requests, exposures, _ = read_tables(run(ab_world(minutes=60, rpm=4000), tmp_path))
    for exp in ("e1", "e2"):
        units = _per_unit(requests, exposures, exp)
        for metric in ("clicks", "revenue", "fallback", "errors", "latency"):
            assert abs(_t(units, metric)) < 4, (exp, metric)
        calibration = requests.merge(
            exposures[exposures.experiment_id == exp][["request_id", "arm"]], on="request_id"
        )
        calibration = (
            calibration[~calibration.error]
            .groupby("arm")
            .agg(p=("prediction", "sum"), y=("label", "sum"))
        )
        ratio = calibration.p / calibration.y
        se = ratio / np.sqrt(calibration.y)
        assert abs(ratio["test"] - ratio["control"]) < 4 * np.hypot(*se), ratio
        counts = exposures[exposures.experiment_id == exp].groupby("arm").unit_id.nunique()
        assert stats.chisquare(counts).pvalue > P_FLOOR


def _paired_z(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> float:
    """z of the difference between two worlds on the same requests (same seed), by unit."""
    diff = (a[metric].astype(float) - b[metric].astype(float)).groupby(a.unit_id).sum()
    return float(diff.sum() / np.sqrt(np.sum(diff.to_numpy() ** 2)))


def test_worse_model_lowers_ctr_and_revenue_better_raises_them(tmp_path: Path) -> None:
    models = [
        {"id": "m_prod", "quality": 0.6},
        {"id": "m_bad", "quality": 0.2},
        {"id": "m_good", "quality": 1.0},
    ]
    served: dict[str, pd.DataFrame] = {}
    for model in ("m_prod", "m_bad", "m_good"):
        experiments = [
            {
                "id": "q",
                "name": "Quality",
                "layer": "ranking",
                "traffic_pct": 50,
                "arms": {"control": {"model": "m_prod"}, "test": {"model": model}},
            },
            {
                "id": "load",
                "name": "Ad load",
                "layer": "ads_load",
                "traffic_pct": 100,
                "arms": {"control": {}, "test": {"ad_load": 1.2}},
            },
        ]
        scenario = ab_world(experiments=experiments, models=models, minutes=30)
        requests, exposures, snapshots = read_tables(run(scenario, tmp_path, model))
        test = exposures[(exposures.experiment_id == "q") & (exposures.arm == "test")]
        served[model] = requests[requests.request_id.isin(test.request_id)].reset_index()
    # The same requests, served by a worse / a better model than m_prod.
    assert _paired_z(served["m_bad"], served["m_prod"], "label") < -4
    assert _paired_z(served["m_bad"], served["m_prod"], "revenue") < -4
    assert _paired_z(served["m_good"], served["m_prod"], "label") > 4
    assert _paired_z(served["m_good"], served["m_prod"], "revenue") > 4
    ne = snapshots.set_index("model_id").training_ne
    assert ne["m_good"] < ne["m_prod"] < ne["m_bad"]
    load = _per_unit(requests, exposures, "load")
    lift = load.loc["test"].revenue.sum() / load.loc["control"].revenue.sum()
    assert lift == pytest.approx(1.2, rel=0.1)
    assert abs(_t(load, "clicks")) < 4  # ad load moves revenue, not the model's clicks


def test_kill_switch_stops_allocation_and_the_fault(tmp_path: Path) -> None:
    fault = {"kind": "model_fallback", "experiment": "e1", "start_minute": 10, "severity": 0.5}
    scenario = ab_world(faults=[fault], minutes=40, rpm=2000)
    url = f"duckdb:///{tmp_path / 'kill.duckdb'}"
    simulate(scenario, url, end_minute=20, replace=True)
    after = simulate(scenario, url, start_minute=20, kill_switches=[("experiment", "e1")])
    assert after.start_minute == 20 and after.end_minute == 40
    requests, exposures, _ = read_tables(tmp_path / "kill.duckdb")
    e1 = exposures[exposures.experiment_id == "e1"]
    assert e1.minute.max() < 20 and (exposures[exposures.experiment_id == "e2"].minute >= 20).any()
    before = requests[(requests.minute >= 10) & (requests.minute < 20)]
    assert before.fallback.mean() > 0.1
    assert requests[requests.minute >= 20].fallback.mean() < 0.005  # recovered


@pytest.mark.parametrize(
    ("kill", "blocked"),
    [
        (("layer", "ranking"), {"e1"}),
        (("global", "*"), {"e1", "e2"}),
        (("model", "m_prod"), {"e1"}),
    ],
)
def test_kill_scopes(tmp_path: Path, kill: tuple[str, str], blocked: set[str]) -> None:
    path = run(ab_world(minutes=4, rpm=1000), tmp_path, kill_switches=[kill])
    _, exposures, _ = read_tables(path)
    assert set(exposures.experiment_id) == {"e1", "e2"} - blocked


def test_rollback_ends_model_faults(tmp_path: Path) -> None:
    fault = {"kind": "ne_regression", "model": "m_prod", "start_minute": 0, "severity": 1.0}
    healthy = read_tables(run(ab_world(minutes=10, rpm=1000), tmp_path, "healthy"))[0]
    rolled = read_tables(
        run(
            ab_world(faults=[fault], minutes=10, rpm=1000),
            tmp_path,
            "rolled",
            rolled_back=["m_prod"],
        )
    )[0]
    assert np.array_equal(healthy.prediction.fillna(-1), rolled.prediction.fillna(-1))


def test_launch_and_stop_minutes(tmp_path: Path) -> None:
    experiments = [
        {
            "id": "late",
            "name": "Late launch",
            "layer": "ranking",
            "traffic_pct": 50,
            "start_minute": 10,
            "end_minute": 20,
            "arms": {"control": {"model": "m_prod"}, "test": {"model": "m_alt"}},
        },
    ]
    requests, exposures, _ = read_tables(
        run(ab_world(experiments=experiments, minutes=30, rpm=1000), tmp_path)
    )
    assert exposures.minute.min() >= 10 and exposures.minute.max() < 20
    test_units = set(exposures[exposures.arm == "test"].unit_id)
    theirs = requests[requests.unit_id.isin(test_units)]
    inside = (theirs.minute >= 10) & (theirs.minute < 20)
    assert set(theirs[inside].model_id) == {"m_alt"}
    assert set(theirs[~inside].model_id) == {"m_prod"}
