"""The experiment page's guardrail charts: NE, calibration and latency beside the per-unit metrics.

Requests are drawn with numpy for two arms (fixed seed): the test arm over-predicts by 40 % and
is 50 % slower; the sums the warehouse would return are computed from them, and the charts must
find what was put in, with the gate's own confidence sequences.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from agent.console.guardrails import Look, chart, charted_metrics, guardrail_charts
from lifecycle.config import Arm, Experiment, Guardrail
from lifecycle.views import ExperimentView
from tools.aggregates import LATENCY_LADDER_MS
from tools.unit_stats import UNIT_METRICS

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


def _view(guardrails: list[Guardrail] | None = None) -> ExperimentView:
    arms = {"control": Arm(model="ctr_v41"), "test": Arm(model="ctr_v42")}
    extra = {} if guardrails is None else {"guardrails": guardrails}
    exp = Experiment(
        id="879", name="Ranking", owner="alice", layer="ranking", traffic_pct=10, arms=arms, **extra
    )
    return ExperimentView(
        id=exp.id,
        name=exp.name,
        description="",
        owner=exp.owner,
        layer=exp.layer,
        traffic_pct=exp.traffic_pct,
        range_start=0.0,
        range_end=10.0,
        arms=dict(exp.arms),
        control=exp.control,
        targeting={},
        rollout=exp.rollout,
        guardrails=list(exp.guardrails),
        status="running",
        stage=0,
        stage_percent=100.0,
        stage_started_at=T0,
        prior=None,
        created_at=T0,
        created_by="alice",
        config=exp,
    )


def _requests(
    rng: np.random.Generator, units: int, per_unit: int, over: float, slower: float
) -> pd.DataFrame:
    n = units * per_unit
    truth = rng.beta(2.0, 98.0, n)  # CTR about 2 %
    clicks = (rng.random(n) < truth).astype(float)
    return pd.DataFrame(
        {
            "unit": np.tile(np.arange(units), per_unit),  # every unit in every chunk of time
            "prediction": np.clip(truth * over, 1e-9, 1 - 1e-9),
            "label": clicks,
            "revenue": clicks * rng.gamma(2.0, 0.25, n),
            "fallback": 0.0,
            "error": 0.0,
            "latency_ms": rng.lognormal(math.log(40.0), 0.35, n) * slower,
        }
    )


def _request_sums(arm: str, r: pd.DataFrame) -> dict[str, float | str]:
    p, y = r["prediction"], r["label"]
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    row: dict[str, float | str] = {
        "arm": arm,
        "n": len(r),
        "n_pred": len(r),
        "sum_pred": p.sum(),
        "sum_pred2": (p * p).sum(),
        "sum_label_v": y.sum(),
        "n_ll": len(r),
        "sum_ll": ll.sum(),
        "sum_ll2": (ll * ll).sum(),
        "n_latency": len(r),
    }
    for k, threshold in enumerate(LATENCY_LADDER_MS):
        row[f"lat_gt_{k}"] = float((r["latency_ms"] > threshold).sum())
    return row


def _unit_sums(arm: str, r: pd.DataFrame) -> dict[str, float | str]:
    per_unit = r.groupby("unit").agg(n=("label", "size"), **{m: (m, "sum") for m in UNIT_METRICS})
    n = per_unit["n"].astype(float)
    row: dict[str, float | str] = {
        "experiment_id": "879",
        "arm": arm,
        "units": len(per_unit),
        "sum_n": n.sum(),
        "sum_n2": (n * n).sum(),
    }
    for m in UNIT_METRICS:
        y = per_unit[m]
        row.update({f"sum_{m}": y.sum(), f"sum_{m}2": (y * y).sum(), f"sum_{m}_n": (y * n).sum()})
    return row


def _looks(over: float = 1.4, slower: float = 1.5, chunks: int = 4) -> list[Look]:
    rng = np.random.default_rng(7)
    arms = {
        "control": _requests(rng, 2000, 12, 1.0, 1.0),
        "test": _requests(rng, 2000, 12, over, slower),
    }
    looks = []
    for k in range(1, chunks + 1):
        upto = {arm: r.iloc[: len(r) * k // chunks] for arm, r in arms.items()}
        looks.append(
            Look(
                T0 + timedelta(minutes=30 * k),
                pd.DataFrame([_unit_sums(a, r) for a, r in upto.items()]),
                pd.DataFrame([_request_sums(a, r) for a, r in upto.items()]),
            )
        )
    return looks


def test_ne_calibration_and_latency_are_charted_for_every_experiment() -> None:
    default = charted_metrics(_view())  # revenue per request and SRM by default
    assert [(m, gated) for m, _, gated in default] == [
        ("revenue_per_request", True),
        ("ne", False),
        ("calibration", False),
        ("latency_p99", False),
    ]
    declared = charted_metrics(_view([Guardrail(metric="ne", max_regression=0.05)]))
    assert [(m, tau, gated) for m, tau, gated in declared] == [
        ("ne", 0.05, True),
        ("calibration", 0.0, False),
        ("latency_p99", 0.0, False),
    ]


def test_the_charts_find_an_over_predicting_slower_arm_with_the_gates_sequences() -> None:
    view = _view(
        [
            Guardrail(metric="calibration", max_regression=0.1),
            Guardrail(metric="latency_p99", max_regression=0.5),
            Guardrail(metric="ctr", max_regression=0.02),
        ]
    )
    charts = guardrail_charts(view, _looks())
    series = {s.metric: s for s in charts.series}
    assert set(series) == {"calibration", "latency_p99", "ctr", "ne"}
    assert all(len(s.times) == 4 for s in series.values())

    calibration = series["calibration"]  # Σp/Σy of test over control's: 1.4
    assert calibration.low[-1] > 0 and abs(calibration.lift[-1] - 0.4) < 0.1
    assert calibration.low[-1] <= calibration.lift[-1] <= calibration.high[-1]
    assert calibration.verdict == "harm"  # two-sided: too high is as bad as too low
    # Always-valid intervals narrow as data comes in.
    widths = [h - lo for lo, h in zip(calibration.low, calibration.high, strict=True)]
    assert widths == sorted(widths, reverse=True)

    latency = series["latency_p99"]  # 1.5x slower: far more than 1 % beyond control's p99
    assert latency.low[-1] > 1.0 and latency.verdict == "harm"
    assert series["ne"].lift[-1] > 0 and not series["ne"].gated  # worse log loss, watched
    ctr = series["ctr"]  # the clicks come from the same truth in both arms
    assert ctr.low[-1] < 0 < ctr.high[-1] and ctr.verdict != "harm"

    control, test = charts.levels
    assert control.control and control.arm == "control" and test.arm == "test"
    assert control.calibration is not None and test.calibration is not None
    assert abs(control.calibration.estimate - 1.0) < 0.08  # control predicts the truth
    assert control.calibration.low < 1.0 < control.calibration.high
    assert test.calibration.estimate / control.calibration.estimate == pytest.approx(1.4, rel=0.08)
    assert test.calibration.low > control.calibration.estimate
    assert test.p50_ms / control.p50_ms == pytest.approx(1.5, rel=0.12)
    assert control.p50_ms < control.p95_ms < control.p99_ms
    assert control.ne is not None and test.ne is not None and test.ne.estimate > control.ne.estimate


def test_each_tolerance_is_drawn_on_the_side_the_gate_watches() -> None:
    view = _view(
        [
            Guardrail(metric="revenue_per_request", max_regression=0.03),
            Guardrail(metric="fallback_rate", max_regression=0.03),
            Guardrail(metric="calibration", max_regression=0.03),
        ]
    )
    charts = guardrail_charts(view, _looks(over=1.0, slower=1.0))
    drawn = {s.metric: chart(s) or "" for s in charts.series}
    assert "tolerance -3.0%" in drawn["revenue_per_request"]  # should rise: a fall is bad
    assert "tolerance +3.0%" not in drawn["revenue_per_request"]
    assert "tolerance -3.0%" in drawn["calibration"] and "tolerance +3.0%" in drawn["calibration"]
    assert "tolerance" not in drawn["ne"]  # watched, not a guardrail
    # No fallbacks in either arm: the gate judges a difference of 0 against 0, nothing drawn.
    fallback = next(s for s in charts.series if s.metric == "fallback_rate")
    assert fallback.absolute_looks == 4 and chart(fallback) is None
