"""Checks on hand-made aggregates with known answers, and on NaN-filled, tiny and empty ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tools.checks import (
    SubjectFrame,
    Window,
    attribution_check,
    calibration_check,
    calibration_interval,
    change_point_check,
    fallback_check,
    infra_check,
    ne_check,
    normalized_entropy,
    prediction_check,
    srm_check,
    staleness_check,
)
from tools.metrics import metric_values
from tools.stats import binary_entropy
from tools.telemetry import CUBE_SUMS, Subject

M0 = 29_919_240  # 2026-11-20 06:00 UTC in epoch minutes
DIMS = ("country", "platform", "ad_type")


def cube(
    arms: dict[str, dict[str, float]], minutes: int = 120, **per_minute: float
) -> pd.DataFrame:
    """A cube with the same sums every minute per arm (one dimension combination)."""
    rows = []
    for arm, sums in arms.items():
        for m in range(minutes):
            row = dict.fromkeys(CUBE_SUMS, 0.0)
            row.update(sums)
            row.update(per_minute)
            rows.append(
                {
                    "minute": M0 + m,
                    "arm": arm,
                    "model_id": "m",
                    "model_version": "1",
                    "country": "US",
                    "platform": "ios",
                    "ad_type": "feed",
                    **row,
                }
            )
    frame = pd.DataFrame(rows)
    return frame.astype({c: float for c in CUBE_SUMS})


def frame_of(data: pd.DataFrame, control: str | None = "control") -> SubjectFrame:
    window = Window(M0, M0 + 60, M0 + 120)
    subject = Subject(experiment_id="e") if control else Subject(model_id="m")
    return SubjectFrame(data, window, subject, DIMS, control)


def _arm(n: float, clicks: float, pred: float, **extra: float) -> dict[str, float]:
    """Sums for n requests with a constant prediction ``pred`` and ``clicks`` clicks."""
    ll = -(clicks * np.log(pred) + (n - clicks) * np.log(1 - pred))
    ll2 = clicks * np.log(pred) ** 2 + (n - clicks) * np.log(1 - pred) ** 2
    sums = {
        "n": n,
        "n_pred": n,
        "sum_pred": n * pred,
        "sum_pred2": n * pred**2,
        "sum_label": clicks,
        "sum_label_v": clicks,
        "n_ll": n,
        "sum_ll": ll,
        "sum_ll2": ll2,
        "n_latency": n,
        "sum_latency": 30.0 * n,
        "sum_revenue": clicks,
        "sum_revenue2": clicks,
    }
    sums.update(extra)
    return sums


def test_calibration_of_exactly_1_3() -> None:
    est, lo, hi = calibration_interval(130.0, 100.0)
    assert est == pytest.approx(1.3)
    assert (lo, hi) == pytest.approx((130 / 121.6269, 130 / 81.3643), rel=1e-4)
    # Test predicts 1.3x the clicks it gets; control is calibrated. 20 clicks a minute.
    data = cube({"control": _arm(1000, 20, 0.02), "test": _arm(1000, 20, 0.026)})
    result = calibration_check(frame_of(data), training={"control": 1.0, "test": 1.0})
    assert result.verdict == "fail" and result.arm == "test"
    assert result.effect is not None and result.effect.estimate == pytest.approx(1.3)
    assert result.effect.ci_low < 1.3 < result.effect.ci_high
    assert metric_values(data[data["arm"] == "test"].head(1), "calibration").iloc[0] == (
        pytest.approx(1.3)
    )


def test_srm_at_a_known_p_value() -> None:
    units = pd.DataFrame(
        {"arm": ["control", "test"], "units": [5200.0, 4800.0], "exposures": [52_000.0, 48_000.0]}
    )
    result = srm_check(units, {"control": 1, "test": 1}, experiment_id="e")
    want = sps.chisquare([5200, 4800]).pvalue
    assert result.p_value == pytest.approx(want) and want == pytest.approx(6.334e-5, rel=1e-3)
    assert result.verdict == "fail" and result.arm == "test"
    fine = units.assign(units=[5050.0, 4950.0])
    assert srm_check(fine, {"control": 1, "test": 1}).verdict == "ok"
    weighted = units.assign(units=[3000.0, 7000.0])
    assert srm_check(weighted, {"control": 3, "test": 7}).p_value == pytest.approx(1.0)


def test_ne_of_a_known_log_loss() -> None:
    # Predicting the background CTR for everyone: NE is exactly 1.
    n, p = 10_000.0, 0.02
    assert normalized_entropy(n * binary_entropy(p), n, n * p) == pytest.approx(1.0)
    # Predicting 0.04 where 2 % click: NE = log loss of 0.04 / H(0.02).
    want = -(0.02 * np.log(0.04) + 0.98 * np.log(0.96)) / binary_entropy(0.02)
    sums = pd.DataFrame([_arm(n, n * p, 0.04)])
    assert metric_values(sums, "ne").iloc[0] == pytest.approx(want)
    assert want == pytest.approx(0.104383 / 0.098039, abs=1e-4)  # = 1.0647


def test_ne_fails_on_a_worse_arm_and_not_on_equal_arms() -> None:
    worse = cube({"control": _arm(3000, 60, 0.02), "test": _arm(3000, 60, 0.05)})
    result = ne_check(frame_of(worse))
    assert result.verdict == "fail" and result.arm == "test"
    same = cube({"control": _arm(3000, 60, 0.02), "test": _arm(3000, 60, 0.02)})
    assert ne_check(frame_of(same)).verdict == "ok"


def test_nan_filled_arm_fails_prediction_only() -> None:
    nan_arm = _arm(
        1000,
        20,
        0.02,
        n_pred=0.0,
        n_invalid=1000.0,
        sum_pred=0.0,
        sum_pred2=0.0,
        sum_label_v=0.0,
        n_ll=0.0,
        sum_ll=0.0,
        sum_ll2=0.0,
    )
    data = cube({"control": _arm(1000, 20, 0.02), "test": nan_arm})
    frame = frame_of(data)
    result = prediction_check(frame)
    assert result.verdict == "fail" and result.arm == "test"
    assert result.effect is not None and result.effect.estimate == pytest.approx(100.0)
    for other in (calibration_check(frame), ne_check(frame), fallback_check(frame)):
        assert other.verdict != "fail", other.summary


def _empty() -> pd.DataFrame:
    return cube({"control": _arm(1, 0, 0.02)}).iloc[0:0]


@pytest.mark.parametrize("tiny", [False, True])
def test_empty_and_tiny_frames_give_no_data(tiny: bool) -> None:
    data = (
        cube({"control": _arm(1, 0, 0.02), "test": _arm(1, 0, 0.02)}, minutes=3)
        if tiny
        else _empty()
    )
    frame = frame_of(data)
    model = frame_of(data.assign(arm="all"), control=None)
    snaps = pd.DataFrame(
        columns=[
            "model_id",
            "model_version",
            "trained_at",
            "published_at",
            "training_ne",
            "training_calibration",
        ]
    )
    results = [
        prediction_check(frame),
        calibration_check(frame),
        ne_check(frame),
        fallback_check(frame),
        staleness_check(
            frame,
            snaps.astype({"trained_at": "datetime64[us]", "published_at": "datetime64[us]"}),
            refresh={},
        ),
        change_point_check("ctr", frame),
        infra_check(model),
        attribution_check(
            "revenue",
            model,
            experiments=pd.DataFrame(
                columns=["experiment_id", "arm", "minute", "n", "sum_revenue", "sum_revenue2"]
            ),
            controls={},
        ),
        srm_check(
            pd.DataFrame(
                {"arm": ["control", "test"], "units": [3.0, 2.0], "exposures": [3.0, 2.0]}
            ),
            {"control": 1, "test": 1},
        ),
    ]
    for result in results:
        assert result.verdict == "no_data", (result.check, result.summary)
        assert result.summary


def _stepped(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> pd.DataFrame:
    """Sums ``before`` for the first 60 minutes, then ``after`` (the window)."""
    first = cube(before, minutes=60)
    second = cube(after, minutes=60)
    second["minute"] += 60
    return pd.concat([first, second], ignore_index=True)


@pytest.mark.parametrize(
    ("test_after", "moved"),
    [
        (_arm(1000, 20, 0.028), "predictions"),  # the model over-predicts by 40 %
        (_arm(1000, 14, 0.02), "clicks"),  # 30 % of the clicks are not logged
    ],
)
def test_calibration_says_which_side_moved(test_after: dict[str, float], moved: str) -> None:
    steady = _arm(1000, 20, 0.02)
    data = _stepped({"control": steady, "test": steady}, {"control": steady, "test": test_after})
    result = calibration_check(frame_of(data), training={"control": 1.0, "test": 1.0})
    assert result.verdict == "fail" and result.arm == "test"
    assert result.params["moved"] == moved
    # Against control, differenced against the minutes before: the shared level cancels.
    change = result.params["prediction_change" if moved == "predictions" else "ctr_change"]
    assert change == pytest.approx(0.4 if moved == "predictions" else -0.3, abs=0.02)


def test_an_outage_of_one_country_is_found_though_diluted_over_all_traffic() -> None:
    from tools.checks import infra_check

    def country(name: str, n: float, errors: float, minutes: range) -> pd.DataFrame:
        part = cube({"all": _arm(n, n * 0.02, 0.02, n_error=errors)}, minutes=len(minutes))
        part["minute"] += minutes.start
        part["country"] = name
        return part

    before, window = range(0, 60), range(60, 120)
    data = pd.concat(
        [
            country("US", 9_500, 5, before),
            country("US", 9_500, 5, window),
            country("BR", 500, 0.25, before),
            country("BR", 500, 15, window),  # 3 % of BR's requests fail: 0.15 pp over all
        ],
        ignore_index=True,
    )
    result = infra_check(frame_of(data, control=None))
    assert result.verdict in ("fail", "warn")
    assert result.where == {"country": "BR"}
    # Healthy slices: the same world without the outage is not flagged.
    calm = data.assign(n_error=np.where(data["country"] == "BR", 0.25, 5.0))
    assert infra_check(frame_of(calm, control=None)).verdict not in ("fail", "warn")
