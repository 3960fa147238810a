"""Each fault's signature appears where it should — arm, window, dimension, model — and nowhere else.

The world: an A/A ranking experiment ``e1`` (50 %, both arms serve ``m_prod``) and an A/A UI
experiment ``e2`` in another layer. Faults hit ``e1``'s test arm in minutes [20, 60) (iOS only
where a ``where`` is used), so the target cell is compared with ``e1``'s control in the same
window, with the test arm before the onset, with the other platforms, and with ``e2``'s arms,
which see the faulted units equally on both sides.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.evals.sim_worlds import ab_world, read_tables, run

ONSET = 20
IOS = {"platform": "ios"}


def _frame(tmp_path: Path, fault: dict[str, Any], **world: Any) -> pd.DataFrame:
    path = run(ab_world(faults=[fault], **world), tmp_path)
    requests, exposures, _ = read_tables(path)
    for exp in ("e1", "e2"):
        arms = exposures[exposures.experiment_id == exp].set_index("request_id").arm
        requests[exp] = requests.request_id.map(arms)
    requests["late"] = requests.minute >= ONSET
    requests["ios"] = requests.platform == "ios"
    return requests


def _stats(df: pd.DataFrame) -> dict[str, float]:
    valid = ~df.error & df.prediction.between(0, 1)
    p = df.prediction[valid].clip(1e-12, 1 - 1e-12)
    y = df.label[valid]
    ctr = y.mean()
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    return {
        "n": float(len(df)),
        "clicks": float(df.label.sum()),
        "ctr": float(df.label.mean()),
        "revenue": float(df.revenue.mean()),
        "fallback": float(df.fallback.mean()),
        "error": float(df.error.mean()),
        "invalid": float((~df.error & ~df.prediction.between(0, 1)).mean()),
        "calibration": float(p.sum() / y.sum()),
        "ne": float(loss / -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))),
        "latency": float(df.latency_ms.median()),
    }


def _cells(df: pd.DataFrame, where_ios: bool) -> dict[str, dict[str, float]]:
    """The target cell and its comparisons."""
    dim = df.ios if where_ios else pd.Series(True, index=df.index)
    return {
        "target": _stats(df[(df.e1 == "test") & df.late & dim]),
        "control": _stats(df[(df.e1 == "control") & df.late & dim]),
        "before": _stats(df[(df.e1 == "test") & ~df.late]),
        "other_dim": _stats(df[(df.e1 == "test") & df.late & ~df.ios]) if where_ios else {},
        "e2_test": _stats(df[(df.e2 == "test") & df.late & dim]),
        "e2_control": _stats(df[(df.e2 == "control") & df.late & dim]),
        "outside": _stats(df[df.e1.isna() & df.late]),
    }


def _z(p1: float, n1: float, p2: float, n2: float) -> float:
    p = (p1 * n1 + p2 * n2) / (n1 + n2)
    return (p1 - p2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))


def _same_rate(cells: dict[str, dict[str, float]], key: str, a: str, b: str) -> None:
    z = _z(cells[a][key], cells[a]["n"], cells[b][key], cells[b]["n"])
    assert abs(z) < 4, (key, a, b, cells[a][key], cells[b][key])


def _quiet(cells: dict[str, dict[str, float]], key: str, limit: float) -> None:
    """Cells outside the fault's scope stay at baseline (e2's arms share e1's units: skipped)."""
    for name, stats in cells.items():
        if name != "target" and not name.startswith("e2") and stats:
            assert stats[key] < limit, (key, name, stats[key])


def test_model_fallback(tmp_path: Path) -> None:
    df = _frame(tmp_path, {"kind": "model_fallback", "experiment": "e1", "where": IOS,
                           "start_minute": ONSET, "severity": 0.3})
    cells = _cells(df, where_ios=True)
    assert cells["target"]["fallback"] == pytest.approx(0.3, abs=0.02)
    _quiet(cells, "fallback", 0.01)
    assert cells["target"]["ctr"] < cells["control"]["ctr"]
    assert cells["target"]["revenue"] < 0.95 * cells["control"]["revenue"]
    assert cells["target"]["latency"] < cells["control"]["latency"]
    _same_rate(cells, "fallback", "e2_test", "e2_control")
    # model_id still names the routed model.
    assert set(df[df.fallback].model_id) == {"m_prod"}


def test_prediction_collapse(tmp_path: Path) -> None:
    df = _frame(tmp_path, {"kind": "prediction_collapse", "experiment": "e1", "where": IOS,
                           "start_minute": ONSET, "severity": 0.45})
    cells = _cells(df, where_ios=True)
    assert cells["target"]["invalid"] == pytest.approx(0.3, abs=0.02)  # NaN + out of range
    _quiet(cells, "invalid", 1e-9)
    target = df[(df.e1 == "test") & df.late & df.ios & ~df.error]
    constant = (target.prediction == target.prediction.mode().iloc[0]).mean()
    assert constant == pytest.approx(0.15, abs=0.02)
    assert (target.prediction < 0).any() and target.prediction.isna().any()
    assert cells["target"]["ctr"] < 0.95 * cells["control"]["ctr"]
    assert cells["target"]["revenue"] < 0.9 * cells["control"]["revenue"]  # NaN: unbillable
    _same_rate(cells, "invalid", "e2_test", "e2_control")


def test_miscalibration(tmp_path: Path) -> None:
    df = _frame(tmp_path, {"kind": "miscalibration", "experiment": "e1", "where": IOS,
                           "start_minute": ONSET, "severity": 2.0})
    cells = _cells(df, where_ios=True)
    for name in ("control", "before", "other_dim", "outside"):
        se = cells[name]["calibration"] / math.sqrt(cells[name]["clicks"])
        assert abs(cells[name]["calibration"] - 1) < 4 * se, (name, cells[name])
    ratio = cells["target"]["calibration"] / cells["control"]["calibration"]
    assert ratio == pytest.approx(2.0, rel=0.15)
    assert cells["target"]["revenue"] / cells["control"]["revenue"] == pytest.approx(2.0, rel=0.1)
    _same_rate(cells, "ctr", "target", "control")  # the ranking did not change


def test_ne_regression(tmp_path: Path) -> None:
    df = _frame(tmp_path, {"kind": "ne_regression", "experiment": "e1", "start_minute": ONSET,
                           "severity": 2.0})
    cells = _cells(df, where_ios=False)
    assert cells["target"]["ne"] > cells["control"]["ne"] + 0.1
    assert cells["target"]["ne"] > cells["before"]["ne"] + 0.1
    assert abs(cells["e2_test"]["ne"] - cells["e2_control"]["ne"]) < 0.05
    se = cells["target"]["calibration"] / math.sqrt(cells["target"]["clicks"])
    assert abs(cells["target"]["calibration"] - 1) < 4 * se  # recalibrated
    assert cells["target"]["ctr"] < 0.93 * cells["control"]["ctr"]
    assert cells["target"]["revenue"] < 0.8 * cells["control"]["revenue"]
    assert cells["target"]["invalid"] == 0 and cells["target"]["fallback"] < 0.01


def test_stale_model_in_an_arm(tmp_path: Path) -> None:
    path = run(
        ab_world(faults=[{"kind": "stale_model", "experiment": "e1", "start_minute": ONSET + 10,
                          "severity": 3.0}]),
        tmp_path,
    )
    requests, exposures, snapshots = read_tables(path)
    arm = requests.request_id.map(
        exposures[exposures.experiment_id == "e1"].set_index("request_id").arm
    )
    late = requests.minute >= ONSET + 10
    # The version due at minute 30 never reaches the arm; everyone else gets it.
    assert set(requests[(arm == "test") & late].model_version) == {"261120.0600"}
    assert set(requests[(arm == "control") & late].model_version) == {"261120.0630"}
    assert set(requests[arm.isna() & late].model_version) == {"261120.0630"}
    assert list(snapshots.model_version[snapshots.model_id == "m_prod"]) == [
        "261120.0600", "261120.0630"
    ]
    last = requests.minute >= 50  # 20 to 30 minutes of drift at 3/h: sd 1 to 1.5
    test = _stats(requests[(arm == "test") & last])
    control = _stats(requests[(arm == "control") & last])
    assert test["calibration"] > control["calibration"] + 0.15
    assert test["ne"] > control["ne"]
    assert test["fallback"] < 0.01 and test["invalid"] == 0


def test_stale_production_model_stops_publication(tmp_path: Path) -> None:
    path = run(
        ab_world(faults=[{"kind": "stale_model", "model": "m_prod", "start_minute": 30,
                          "severity": 0.5}], minutes=90),
        tmp_path,
    )
    requests, _, snapshots = read_tables(path)
    prod = snapshots[snapshots.model_id == "m_prod"]
    alt = snapshots[snapshots.model_id == "m_alt"]
    assert list(prod.model_version) == ["261120.0600"]  # 06:30, 07:00 never published
    assert len(alt) == 3
    late = requests[requests.minute >= 30]
    assert set(late.model_version) == {"261120.0600"}
    trained = prod.trained_at.iloc[0]
    assert trained == pd.Timestamp("2026-11-20 05:30")


def test_infra_outage(tmp_path: Path) -> None:
    df = _frame(tmp_path, {"kind": "infra_outage", "experiment": "e1", "where": IOS,
                           "start_minute": ONSET, "severity": 0.2})
    cells = _cells(df, where_ios=True)
    assert cells["target"]["error"] == pytest.approx(0.2, abs=0.02)
    _quiet(cells, "error", 0.005)
    assert cells["target"]["latency"] > 1.3 * cells["control"]["latency"]
    errors = df[df.error]
    assert errors.prediction.isna().all() and (errors.revenue == 0).all()
    assert (errors.label == 0).all() and errors.latency_ms.median() > 200
    _same_rate(cells, "error", "e2_test", "e2_control")


def test_allocation_bug(tmp_path: Path) -> None:
    path = run(
        ab_world(faults=[{"kind": "allocation_bug", "experiment": "e1", "start_minute": ONSET,
                          "severity": 0.3}]),
        tmp_path,
    )
    requests, exposures, _ = read_tables(path)
    late = exposures[exposures.minute >= ONSET]
    units = late.groupby(["experiment_id", "arm"]).unit_id.nunique()
    assert units["e1", "test"] / units["e1", "control"] == pytest.approx(0.7, abs=0.05)
    assert units["e2", "test"] / units["e2", "control"] == pytest.approx(1.0, abs=0.05)
    early = exposures[exposures.minute < ONSET].groupby(["experiment_id", "arm"]).unit_id
    assert early.nunique()["e1", "test"] / early.nunique()["e1", "control"] == pytest.approx(
        1.0, abs=0.05
    )
    # The lost units were still served: every request of the world is in the requests table and
    # each unit keeps one arm.
    assert requests.request_id.is_unique
    assert exposures[exposures.experiment_id == "e1"].groupby("unit_id").arm.nunique().max() == 1


def test_logging_loss(tmp_path: Path) -> None:
    df = _frame(tmp_path, {"kind": "logging_loss", "experiment": "e1", "where": IOS,
                           "start_minute": ONSET, "severity": 0.5})
    cells = _cells(df, where_ios=True)
    assert cells["target"]["ctr"] / cells["control"]["ctr"] == pytest.approx(0.5, abs=0.1)
    assert cells["target"]["calibration"] > 1.6
    assert cells["target"]["revenue"] / cells["control"]["revenue"] == pytest.approx(1, abs=0.1)
    target = df[(df.e1 == "test") & df.late & df.ios]
    control = df[(df.e1 == "control") & df.late & df.ios]
    assert target.prediction.mean() == pytest.approx(control.prediction.mean(), rel=0.05)
    _same_rate(cells, "ctr", "e2_test", "e2_control")
    _same_rate(cells, "ctr", "other_dim", "outside")


def test_model_scope_hits_every_request_of_that_model(tmp_path: Path) -> None:
    experiments = [
        {"id": "e1", "name": "New model", "layer": "ranking", "traffic_pct": 50,
         "arms": {"control": {"model": "m_prod"}, "test": {"model": "m_alt"}}},
    ]
    df = _frame(
        tmp_path,
        {"kind": "model_fallback", "model": "m_alt", "start_minute": ONSET, "severity": 0.4},
        experiments=experiments,
    )
    late = df[df.late]
    by_model = late.groupby("model_id").fallback.mean()
    assert by_model["m_alt"] == pytest.approx(0.4, abs=0.02)
    assert by_model["m_prod"] < 0.01
    assert set(late[late.model_id == "m_alt"].e1) == {"test"}


def test_global_scope_and_window_end(tmp_path: Path) -> None:
    df = _frame(
        tmp_path,
        {"kind": "infra_outage", "start_minute": ONSET, "end_minute": 40, "severity": 0.1},
    )
    during = df[(df.minute >= ONSET) & (df.minute < 40)]
    after = df[df.minute >= 40]
    assert during.error.mean() == pytest.approx(0.1, abs=0.01)
    assert after.error.mean() < 0.002 and df[~df.late].error.mean() < 0.002
    by_arm = during.groupby(during.e1.fillna("none")).error.mean()
    assert by_arm.max() - by_arm.min() < 0.02  # every arm alike
