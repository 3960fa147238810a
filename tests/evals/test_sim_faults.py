"""Each fault's signature shows where it should — arm, window, dimension, model — and nowhere else.

Faults draw from their own random streams, so a faulted world is the healthy world with the same
seed plus the fault: every request outside the fault's scope must be identical, column for column,
and the requests inside it must show the fault's signature. The world: an A/A ranking experiment
``e1`` (50 %, both arms serve ``m_prod``) and an A/A UI experiment ``e2`` in another layer; faults
hit ``e1``'s test arm from minute 20 (on iOS only where a ``where`` is used).
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
COLUMNS = [
    "model_id",
    "model_version",
    "prediction",
    "fallback",
    "label",
    "revenue",
    "latency_ms",
    "error",
]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = run(ab_world(), tmp_path_factory.mktemp("healthy"))
    requests, exposures, _ = read_tables(path)
    return _with_arms(requests, exposures), exposures


def _with_arms(requests: pd.DataFrame, exposures: pd.DataFrame) -> pd.DataFrame:
    for exp in ("e1", "e2"):
        arms = exposures[exposures.experiment_id == exp].set_index("request_id").arm
        requests[exp] = requests.request_id.map(arms)
    return requests


def _faulted(tmp_path: Path, fault: dict[str, Any], **world: Any) -> tuple[pd.DataFrame, ...]:
    requests, exposures, snapshots = read_tables(run(ab_world(faults=[fault], **world), tmp_path))
    return _with_arms(requests, exposures), exposures, snapshots


def _changed(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    """Rows that differ in any served column (NaN equals NaN)."""
    assert (a.request_id.to_numpy() == b.request_id.to_numpy()).all()
    out = np.zeros(len(a), dtype=bool)
    for col in COLUMNS:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        same = x == y
        if x.dtype.kind == "f":
            same |= np.isnan(x) & np.isnan(y)
        out |= ~same
    return pd.Series(out, index=a.index)


def _scope(df: pd.DataFrame, *, where_ios: bool = True, onset: int = ONSET) -> pd.Series:
    scope = (df.e1 == "test") & (df.minute >= onset)
    return scope & (df.platform == "ios") if where_ios else scope


def _only_in_scope(
    base: pd.DataFrame, faulted: pd.DataFrame, scope: pd.Series, least: float = 0.05
) -> None:
    changed = _changed(base, faulted)
    assert not changed[~scope].any(), faulted[changed & ~scope].head()
    assert changed[scope].mean() > least


def _arm_fault(
    tmp_path: Path,
    healthy: tuple[pd.DataFrame, pd.DataFrame],
    kind: str,
    severity: float,
    *,
    ios: bool = True,
    onset: int = ONSET,
    least: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.DataFrame]:
    """The world with ``kind`` on ``e1``'s test arm from ``onset`` (on iOS only if ``ios``).

    Asserts the fault changed requests in its scope only, and returns the healthy requests, the
    faulted ones, the scope and the faulted world's snapshots.
    """
    fault: dict[str, Any] = {
        "kind": kind,
        "experiment": "e1",
        "start_minute": onset,
        "severity": severity,
    }
    if ios:
        fault["where"] = IOS
    df, _, snapshots = _faulted(tmp_path, fault)
    scope = _scope(df, where_ios=ios, onset=onset)
    base = healthy[0]
    _only_in_scope(base, df, scope, least)
    return base, df, scope, snapshots


def _ne(df: pd.DataFrame) -> float:
    valid = ~df.error & df.prediction.between(0, 1)
    p = df.prediction[valid].clip(1e-12, 1 - 1e-12)
    y = df.label[valid]
    ctr = y.mean()
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    return float(loss / -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr)))


def test_model_fallback(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, df, scope, _ = _arm_fault(tmp_path, healthy, "model_fallback", 0.3)
    assert df.fallback[scope].mean() == pytest.approx(0.3, abs=0.02)
    assert df.fallback[~scope].mean() < 0.002
    assert df.revenue[scope].sum() < 0.95 * base.revenue[scope].sum()
    assert df.latency_ms[scope & df.fallback].median() < base.latency_ms[scope].median()
    assert set(df.model_id[scope]) == {"m_prod"}  # still the routed model


def test_prediction_collapse(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, df, scope, _ = _arm_fault(tmp_path, healthy, "prediction_collapse", 0.45)
    served = df[scope & ~df.error]
    assert (~served.prediction.between(0, 1)).mean() == pytest.approx(0.3, abs=0.02)
    assert served.prediction.isna().mean() == pytest.approx(0.15, abs=0.02)
    assert (served.prediction < 0).mean() == pytest.approx(0.15, abs=0.02)  # logits
    constant = served.prediction.mode().iloc[0]
    assert (served.prediction == constant).mean() == pytest.approx(0.15, abs=0.02)
    assert df.label[scope].sum() < 0.95 * base.label[scope].sum()
    assert (df.revenue[scope & df.prediction.isna()] == 0).all()  # unbillable


def test_miscalibration(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, df, scope, _ = _arm_fault(tmp_path, healthy, "miscalibration", 2.0)
    # The ranking is unchanged: same ads, same clicks; every price and prediction of the model
    # doubles (the fallback model's do not; errors have none).
    assert (df.label[scope] == base.label[scope]).all()
    model = scope & ~df.fallback & ~df.error
    ratio = df.prediction[model] / base.prediction[model]
    assert np.allclose(ratio[base.prediction[model] < 0.4], 2.0, rtol=1e-4)  # float32 maths
    assert np.allclose(df.revenue[model], 2.0 * base.revenue[model], rtol=1e-4)
    calibration = df.prediction[scope & ~df.error].sum() / df.label[scope].sum()
    assert calibration == pytest.approx(2.0, rel=4 / math.sqrt(df.label[scope].sum()))


def test_ne_regression(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, df, scope, _ = _arm_fault(tmp_path, healthy, "ne_regression", 2.0, ios=False)
    assert _ne(df[scope]) > _ne(base[scope]) + 0.1
    clicks = df.label[scope].sum()
    calibration = df.prediction[scope & ~df.error].sum() / clicks
    assert calibration == pytest.approx(1.0, abs=4 / math.sqrt(clicks))  # recalibrated
    assert clicks < 0.93 * base.label[scope].sum()
    assert df.revenue[scope].sum() < 0.8 * base.revenue[scope].sum()
    assert df.fallback[scope].mean() < 0.01 and df.prediction[scope & ~df.error].notna().all()


def test_stale_model_in_an_arm(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, df, scope, snapshots = _arm_fault(
        tmp_path, healthy, "stale_model", 3.0, ios=False, onset=30
    )
    # The version due at minute 30 never reaches the arm; everyone else gets it, and it is
    # published (an arm pinned to an old snapshot does not stop the pipeline).
    assert set(df.model_version[scope]) == {"261120.0600"}
    assert set(df.model_version[~scope & (df.minute >= 30)]) == {"261120.0630"}
    assert list(snapshots.model_version[snapshots.model_id == "m_prod"]) == [
        "261120.0600",
        "261120.0630",
    ]
    last = scope & (df.minute >= 50)  # 20 to 30 minutes of drift at 3/h: sd 1 to 1.5
    drifted = df.prediction[last & ~df.error].sum() / df.label[last].sum()
    fresh = base.prediction[last & ~base.error].sum() / base.label[last].sum()
    assert drifted > fresh + 0.15
    assert _ne(df[last]) > _ne(base[last])


def test_stale_production_model_stops_publication(tmp_path: Path) -> None:
    df, _, snapshots = _faulted(
        tmp_path,
        {"kind": "stale_model", "model": "m_prod", "start_minute": 30, "severity": 0.5},
        minutes=90,
    )
    prod = snapshots[snapshots.model_id == "m_prod"]
    assert list(prod.model_version) == ["261120.0600"]  # 06:30, 07:00 never published
    assert prod.trained_at.iloc[0] == pd.Timestamp("2026-11-20 05:30")
    assert len(snapshots[snapshots.model_id == "m_alt"]) == 3
    assert set(df.model_version[df.minute >= 30]) == {"261120.0600"}


def test_infra_outage(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, df, scope, _ = _arm_fault(tmp_path, healthy, "infra_outage", 0.2)
    assert df.error[scope].mean() == pytest.approx(0.2, abs=0.02)
    assert df.error[~scope].mean() < 0.002
    errors = df[df.error]
    assert errors.prediction.isna().all() and (errors.revenue == 0).all()
    assert (errors.label == 0).all() and errors.latency_ms[scope].median() > 200
    served = scope & ~df.error
    slower = df.latency_ms[served] / base.latency_ms[served]
    assert np.allclose(slower[~base.error[served]], 1.4, rtol=1e-4)


def test_allocation_bug(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, base_exposures = healthy
    df, exposures, _ = _faulted(
        tmp_path,
        {"kind": "allocation_bug", "experiment": "e1", "start_minute": ONSET, "severity": 0.3},
    )
    # Requests are served exactly as before: only the exposure log loses rows.
    assert not _changed(base, df).any()
    lost = base_exposures.merge(exposures, how="left", indicator=True)
    lost = lost[lost._merge == "left_only"]
    assert set(zip(lost.experiment_id, lost.arm, strict=True)) == {("e1", "test")}
    assert (lost.minute >= ONSET).all()
    late = exposures[exposures.minute >= ONSET]
    units = late.groupby(["experiment_id", "arm"]).unit_id.nunique()
    assert units["e1", "test"] / units["e1", "control"] == pytest.approx(0.7, abs=0.05)
    # The same units are lost throughout (a hash of the unit id).
    assert not set(lost.unit_id) & set(late[late.experiment_id == "e1"].unit_id)


def test_logging_loss(tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    # Half the clicks of a 2 % CTR: few requests change.
    base, df, scope, _ = _arm_fault(tmp_path, healthy, "logging_loss", 0.5, least=0.005)
    assert ((df.label <= base.label)[scope]).all()  # clicks only disappear
    kept = df.label[scope].sum() / base.label[scope].sum()
    assert kept == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(base.label[scope].sum()))
    assert np.array_equal(df.revenue, base.revenue)  # billing is its own pipeline
    assert np.array_equal(df.prediction.fillna(-9), base.prediction.fillna(-9))


def test_model_scope_hits_every_request_of_that_model(tmp_path: Path) -> None:
    experiments = [
        {
            "id": "e1",
            "name": "New model",
            "layer": "ranking",
            "traffic_pct": 50,
            "arms": {"control": {"model": "m_prod"}, "test": {"model": "m_alt"}},
        },
    ]
    df, _, _ = _faulted(
        tmp_path,
        {"kind": "model_fallback", "model": "m_alt", "start_minute": ONSET, "severity": 0.4},
        experiments=experiments,
    )
    late = df[df.minute >= ONSET]
    by_model = late.groupby("model_id").fallback.mean()
    assert by_model["m_alt"] == pytest.approx(0.4, abs=0.02)
    assert by_model["m_prod"] < 0.01
    assert set(late[late.model_id == "m_alt"].e1) == {"test"}


def test_global_scope_and_window_end(
    tmp_path: Path, healthy: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    base, _ = healthy
    df, _, _ = _faulted(
        tmp_path,
        {"kind": "infra_outage", "start_minute": ONSET, "end_minute": 40, "severity": 0.1},
    )
    window = (df.minute >= ONSET) & (df.minute < 40)
    _only_in_scope(base, df, window)
    assert df.error[window].mean() == pytest.approx(0.1, abs=0.01)
    by_arm = df[window].groupby(df.e1.fillna("none")).error.mean()
    assert by_arm.max() - by_arm.min() < 0.02  # every arm alike
