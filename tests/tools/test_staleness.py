"""Staleness vs NE regression on small worlds with known answers.

A stale model keeps serving one snapshot (in the whole arm, or pinned in one slice while the rest
moves on) and its NE degrades as a ramp; a worse model steps up at once with fresh snapshots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tools.checks import SubjectFrame, Window, staleness_check
from tools.checks._shape import block_slopes, series_shape
from tools.telemetry import CUBE_SUMS, HistogramSpec, Subject, to_datetime

M0 = 29_919_240  # 2026-11-20 06:00 UTC in epoch minutes
DIMS = ("country", "platform", "ad_type")
MINUTES = 150
CADENCE = 30
LAG = 30


def _version(k: int) -> str:
    return f"v{k}"


def _snapshots(last_k: int) -> pd.DataFrame:
    """Versions k = -2..last_k: version k is published at M0 + k·30, trained 30 min before."""
    ks = range(-2, last_k + 1)
    published = [to_datetime(M0 + k * CADENCE) for k in ks]
    return pd.DataFrame(
        {
            "model_id": "m",
            "model_version": [_version(k) for k in ks],
            "trained_at": pd.to_datetime([p - pd.Timedelta(minutes=LAG) for p in published]),
            "published_at": pd.to_datetime(published),
            "training_ne": 0.9,
            "training_calibration": 1.0,
        }
    )


def _sums(rng: np.random.Generator, n: int, ctr: float, noise: float) -> dict[str, float]:
    """Sums of ``n`` requests whose predictions miss the true CTR by a factor e^(±noise)."""
    clicks = float(rng.binomial(n, ctr))
    out = dict.fromkeys(CUBE_SUMS, 0.0)
    ll = ll2 = 0.0
    for p, share in ((ctr * np.exp(noise), 0.5), (ctr * np.exp(-noise), 0.5)):
        k, m = clicks * share, n * share
        ll += -(k * np.log(p) + (m - k) * np.log(1 - p))
        ll2 += k * np.log(p) ** 2 + (m - k) * np.log(1 - p) ** 2
    out.update(
        n=n, n_pred=n, sum_pred=n * ctr, sum_label=clicks, sum_label_v=clicks, n_ll=n,
        sum_ll=ll, sum_ll2=ll2,
    )  # fmt: skip
    return out


def world(
    *,
    pinned: tuple[str, int] | None = None,
    noise: dict[str, list[float]] | None = None,
    stop_at: int | None = None,
    seed: int = 0,
    minutes: int = MINUTES,
    volume: int = 2000,
) -> tuple[SubjectFrame, pd.DataFrame]:
    """A two-arm experiment on a model refreshing every 30 minutes, 4000 requests per minute.

    Args:
        pinned: ``(ad_type, k)``: the test arm's requests of that ad type keep version ``k``.
        noise: Arm -> per-minute logit miss of its predictions (0: a sound model).
        stop_at: The model stops refreshing at this minute in the test arm (all of it).
        seed: Clicks' random seed.
        minutes: Minutes of data (the window is their last 60).
        volume: Requests per arm and minute.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(minutes):
        due = m // CADENCE
        for arm in ("control", "test"):
            for ad_type, share in (("feed", 0.7), ("video", 0.3)):
                k = due
                if arm == "test" and pinned is not None and ad_type == pinned[0]:
                    k = min(due, pinned[1])
                if arm == "test" and stop_at is not None:
                    k = min(due, (stop_at - 1) // CADENCE)
                miss = (noise or {}).get(arm, [0.0] * minutes)[m]
                rows.append(
                    {
                        "minute": M0 + m,
                        "arm": arm,
                        "model_id": "m",
                        "model_version": _version(k),
                        "country": "US",
                        "platform": "ios",
                        "ad_type": ad_type,
                        **_sums(rng, int(volume * share), 0.03, miss),
                    }
                )
    cube = pd.DataFrame(rows).astype(dict.fromkeys(CUBE_SUMS, float))
    frame = SubjectFrame(
        cube,
        Window(M0, M0 + minutes - 60, M0 + minutes),
        Subject(experiment_id="e"),
        DIMS,
        "control",
    )
    return frame, _snapshots(minutes // CADENCE)


REFRESH = {"m": CADENCE}


def test_fresh_snapshots_are_ok_and_say_when_the_next_is_due() -> None:
    frame, snaps = world()
    result = staleness_check(frame, snaps, refresh=REFRESH)
    assert result.verdict == "ok", result.summary
    assert "fresh" in result.summary and "next refresh due by" in result.summary


def test_a_static_model_another_layer_serves_is_judged_on_its_own_cadence() -> None:
    # Another layer's experiment serves a static candidate model (one snapshot, trained two
    # days ago, no refresh) on every video request; "m" refreshes every 30 minutes. The static
    # model is not overdue against m's cadence: it has none. m's snapshots are fresh.
    frame, snaps = world()
    cube = frame.cube.copy()
    video = cube["ad_type"] == "video"
    cube.loc[video, "model_id"], cube.loc[video, "model_version"] = "static", "s1"
    frame = SubjectFrame(cube, frame.window, frame.subject, DIMS, "control")
    published = to_datetime(M0 - 2 * 24 * 60)
    static = pd.DataFrame(
        {
            "model_id": ["static"],
            "model_version": ["s1"],
            "trained_at": pd.to_datetime([published - pd.Timedelta(minutes=LAG)]),
            "published_at": pd.to_datetime([published]),
            "training_ne": [0.9],
            "training_calibration": [1.0],
        }
    )
    result = staleness_check(frame, pd.concat([snaps, static]), refresh=REFRESH)
    assert result.verdict == "ok", result.summary
    table = next(e for e in result.evidence if "refresh_minutes" in e.columns)
    at = {c: table.columns.index(c) for c in ("model_id", "refresh_minutes")}
    cadences = {row[at["model_id"]]: row[at["refresh_minutes"]] for row in table.rows}
    assert cadences == {"m": CADENCE, "static": None}


def test_a_snapshot_pinned_in_one_ad_type_is_found_and_located() -> None:
    # The test arm's video traffic keeps v2 (published at minute 60) while feed moves on to v3
    # and v4: by minute 150 v2 is 120 min old against 30 + 30; the dominant version is fresh.
    frame, snaps = world(pinned=("video", 2))
    result = staleness_check(frame, snaps, refresh=REFRESH)
    assert result.verdict == "fail", result.summary
    assert result.arm == "test" and result.where == {"ad_type": "video"}
    assert "ad_type video" in result.summary and "v2" in result.summary
    assert "serves the rest of the arm" in result.summary
    # The stale model is named (an arm may serve another layer's model on some of its units).
    assert result.params["stale_by"] == "age" and result.params["model"] == "m"


def test_a_snapshot_just_past_its_due_time_is_inconclusive_and_says_what_settles_it() -> None:
    # The test arm stops refreshing at minute 121: v4 (trained at minute 90) keeps serving past
    # minute 150, when v5 was due. At minute 151, the last of the data, v4 is 62 min old: 2
    # minutes past cadence + lag, under the 3-minute margin (10 % of the cadence).
    frame, snaps = world(stop_at=121, minutes=152)
    result = staleness_check(frame, snaps, refresh=REFRESH)
    assert result.verdict == "inconclusive", result.summary
    assert "Stale unless a new snapshot serves by 08:33 UTC" in result.summary
    assert "would settle it" in result.summary
    # Four minutes later the margin is passed: the same world fails.
    later, snaps = world(stop_at=121, minutes=156)
    assert staleness_check(later, snaps, refresh=REFRESH).verdict == "fail"


def _ramp(start: int, per_minute: float) -> list[float]:
    """A logit miss whose log-loss cost grows linearly (the miss squared) from ``start``."""
    return [float(np.sqrt(max(0.0, m - start) * per_minute)) for m in range(MINUTES)]


def _step(start: int, size: float) -> list[float]:
    return [size if m >= start else 0.0 for m in range(MINUTES)]


def test_ne_ramping_up_with_no_new_snapshot_is_a_stale_model() -> None:
    # The test arm stops refreshing at minute 121: v4 (published at 120) is not yet late at the
    # end (minute 149), but the world drifts away from it since: NE degrades as a ramp.
    frame, snaps = world(noise={"test": _ramp(121, 0.06)}, stop_at=121, seed=1, volume=20_000)
    result = staleness_check(frame, snaps, refresh=REFRESH)
    assert result.verdict == "fail", result.summary
    assert result.params["shape"] == "ramp"
    assert "gradually" in result.summary and "not a worse model" in result.summary
    assert result.mde is not None and result.p_value is not None and result.p_value < 1e-3


def test_ne_stepping_up_with_fresh_snapshots_is_not_a_stale_model() -> None:
    # A worse model: NE of the test arm steps up at minute 85 and holds; snapshots are fresh.
    frame, snaps = world(noise={"test": _step(85, 1.5)}, seed=2, volume=20_000)
    result = staleness_check(frame, snaps, refresh=REFRESH)
    assert result.verdict == "ok", result.summary
    assert result.params["shape"] == "step"
    assert "a worse model rather than a stale one" in result.summary
    assert "would have shown" in result.summary  # the ramp test's power is stated


@pytest.mark.parametrize("trend", [False, True])
def test_the_ramp_test_holds_its_level_on_steps_of_any_size(trend: bool) -> None:
    # The one-sided test of a slope after the best step: on pure steps (and no change) it calls a
    # ramp at 1 % about 1 % of the time, whatever the step's size or place.
    rng = np.random.default_rng(7)
    hits = trials = 0
    for size in (0.0, 1.0, 3.0, 10.0):
        for _ in range(60):
            at = int(rng.integers(40, 140))
            y = np.where(np.arange(150) >= at, size, 0.0) + rng.normal(0, 1, 150)
            shape = series_shape(y + 20, np.ones(150), trend=trend, scale=20.0)
            assert shape is not None
            hits += shape.p_value < 0.01
            trials += 1
    assert hits / trials < 0.03


def test_the_ramp_test_sees_a_ramp_and_states_its_power() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(150)
    y = 20 + 0.15 * np.maximum(t - 100, 0) + rng.normal(0, 1, 150)
    shape = series_shape(y, np.ones(150), trend=False, scale=20.0)
    assert shape is not None and shape.p_value < 1e-3 and shape.slope > 0
    assert 0 < shape.mde_per_hour(1e-3) < shape.slope_per_hour()
    # A step at the very end cannot pass for a ramp: too few points after it to fit a slope.
    late = 20 + np.where(t >= 146, 5.0, 0.0) + rng.normal(0, 1, 150)
    recent = series_shape(late, np.ones(150), trend=False, scale=20.0)
    assert recent is not None and recent.p_value == 1.0 and not recent.held(1e-3)


def test_block_slopes_match_the_one_block_fit() -> None:
    from tools.histograms import reliability

    rng = np.random.default_rng(5)
    n = rng.integers(50, 400, size=(3, 12)).astype(float)
    p = np.geomspace(0.005, 0.2, 12)
    sum_pred = n * p
    sum_label = rng.binomial(n.astype(int), np.clip(p * 1.1, 0, 1)).astype(float)
    sum_label[2] = 0.0  # a block without clicks has no fit
    slope, var = block_slopes(n, sum_pred, sum_label)
    for b in range(2):
        one = reliability(
            pd.DataFrame({"n": n[b], "sum_pred": sum_pred[b], "sum_label": sum_label[b]})
        )
        assert one is not None
        assert slope[b] == pytest.approx(one.slope, rel=1e-6)
        assert var[b] == pytest.approx(one.slope_se**2, rel=1e-6)
    assert np.isnan(slope[2]) and np.isinf(var[2])


def _model_world(miss: list[float], seed: int) -> tuple[SubjectFrame, pd.DataFrame, pd.DataFrame]:
    """A refreshing production model, request by request: its logit misses the truth by ``miss``
    (sd) per minute, unrecalibrated; the cube and the prediction histogram of the checks."""
    rng = np.random.default_rng(seed)
    spec = HistogramSpec()
    edges = spec.edges()
    cubes, hists = [], []
    for m in range(MINUTES):
        z = rng.normal(np.log(0.03 / 0.97), 0.6, 3000)
        truth = 1 / (1 + np.exp(-z))
        pred = 1 / (1 + np.exp(-(z + rng.normal(0, 0.3, 3000) + rng.normal(0, miss[m], 3000))))
        y = (rng.random(3000) < truth).astype(float)
        ll = -(y * np.log(pred) + (1 - y) * np.log(1 - pred))
        sums = dict.fromkeys(CUBE_SUMS, 0.0)
        sums.update(
            n=3000.0, n_pred=3000.0, sum_pred=pred.sum(), sum_pred2=(pred**2).sum(),
            sum_label=y.sum(), sum_label_v=y.sum(), n_ll=3000.0, sum_ll=ll.sum(),
            sum_ll2=(ll**2).sum(),
        )  # fmt: skip
        version = _version(min(m // CADENCE, 4))  # stops refreshing after v4 (minute 120)
        cubes.append(
            {"minute": M0 + m, "arm": "all", "model_id": "m", "model_version": version,
             "country": "US", "platform": "ios", "ad_type": "feed", **sums}
        )  # fmt: skip
        b = np.clip(np.digitize(pred, edges) - 1, 0, spec.n_bins - 1)
        for col, vals in (("n", np.ones_like(pred)), ("sum_pred", pred), ("sum_label", y)):
            hists.append(pd.DataFrame({"arm": "all", "block": m, "bin": b, "col": col, "v": vals}))
    cube = pd.DataFrame(cubes).astype(dict.fromkeys(CUBE_SUMS, float))
    long = pd.concat(hists, ignore_index=True)
    hist = long.pivot_table(index=["arm", "block", "bin"], columns="col", values="v", aggfunc="sum")
    frame = SubjectFrame(
        cube, Window(M0, M0 + MINUTES - 60, M0 + MINUTES), Subject(model_id="m"), DIMS, None
    )
    return frame, hist.reset_index(), _snapshots(4)


@pytest.mark.parametrize(("kind", "verdict"), [("ramp", "fail"), ("step", "ok")])
def test_the_reliability_slope_tells_a_drifting_model_from_a_worse_one(
    kind: str, verdict: str
) -> None:
    # Both snapshots are fresh at the end (v4, published at minute 120, is 30 min old). One model
    # drifts from the world since minute 121 (its miss grows); the other got worse at minute 100.
    miss = _ramp(121, 0.05) if kind == "ramp" else _step(100, 1.0)
    frame, hist, snaps = _model_world(miss, seed=4)
    result = staleness_check(
        frame, snaps, refresh={"m": CADENCE}, hist=hist, histogram=HistogramSpec(),
        block_minutes=1,
    )  # fmt: skip
    assert result.verdict == verdict, result.summary
    assert result.params["shape"] == kind
