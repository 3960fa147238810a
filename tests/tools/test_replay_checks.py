"""Replay / shadow checks: a healthy candidate passes, each broken kind fails its own check."""

from __future__ import annotations

import numpy as np
import pytest

from tools.checks.replay import ReplayParams, ReplaySample, Source, replay_checks

N = 40_000


def _world(seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    logit = np.log(0.02 / 0.98) + rng.normal(0, 0.8, N)
    truth = 1 / (1 + np.exp(-logit))
    labels = (rng.random(N) < truth).astype(float)
    return logit, labels, rng


def _model(logit: np.ndarray, rng: np.random.Generator, sd: float) -> np.ndarray:
    noisy = logit + rng.normal(0, sd, logit.shape)
    # Recalibrate to the truth's mean so that a noisier model is not also miscalibrated.
    p = 1 / (1 + np.exp(-noisy))
    truth = 1 / (1 + np.exp(-logit))
    return np.asarray(p * truth.mean() / p.mean())


def _verdicts(sample: ReplaySample) -> dict[str, str]:
    return {r.check: r.verdict for r in replay_checks(sample)}


def _sample(
    candidate: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    *,
    candidate_ms: np.ndarray | None = None,
    source: Source = "replay",
    experiment: str | None = None,
    arm: str | None = None,
) -> ReplaySample:
    ms = np.full(N, 2.0)
    return ReplaySample(
        candidate,
        reference,
        labels,
        ms if candidate_ms is None else candidate_ms,
        ms,
        source=source,
        experiment=experiment,
        arm=arm,
    )


def test_healthy_candidate_passes_every_check() -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.3)
    cand = _model(logit, rng, 0.28)
    results = replay_checks(_sample(cand, labels, ref, experiment="879", arm="test"))
    assert {r.check: r.verdict for r in results} == {
        "calibration": "ok",
        "ne": "ok",
        "prediction": "ok",
        "latency": "ok",
    }
    assert all(r.experiment == "879" and r.params["source"] == "replay" for r in results)


@pytest.mark.parametrize("factor", [1.4, 0.7])
def test_miscalibrated_candidate_fails_calibration(factor: float) -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.3)
    cand = _model(logit, rng, 0.3) * factor
    result = replay_checks(_sample(cand, labels, ref))[0]
    assert result.check == "calibration" and result.verdict == "fail"
    assert result.effect is not None
    assert result.effect.ci_low is not None and result.effect.ci_high is not None
    assert result.effect.ci_low <= factor <= result.effect.ci_high * 1.05


def test_nan_producing_candidate_fails_prediction() -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.3)
    cand = _model(logit, rng, 0.3)
    cand[rng.random(N) < 0.05] = np.nan
    verdicts = _verdicts(_sample(cand, labels, ref))
    assert verdicts["prediction"] == "fail"
    assert verdicts["calibration"] == "ok"  # the valid ones are fine


def test_constant_candidate_fails_prediction() -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.3)
    cand = _model(logit, rng, 0.3)
    cand[rng.random(N) < 0.3] = 0.02
    assert _verdicts(_sample(cand, labels, ref))["prediction"] == "fail"


def test_noisier_candidate_fails_ne() -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.2)
    cand = _model(logit, rng, 1.2)
    assert _verdicts(_sample(cand, labels, ref, source="shadow"))["ne"] == "fail"


def test_slow_candidate_fails_latency_and_budget() -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.3)
    slow = replay_checks(_sample(ref.copy(), labels, ref, candidate_ms=np.full(N, 7.0)))
    fast = replay_checks(_sample(ref.copy(), labels, ref, candidate_ms=np.full(N, 0.5)))
    assert fast[3].verdict == "ok"  # 4x faster than the reference
    assert slow[3].verdict == "fail"
    budget = ReplayParams(latency_budget_ms=1.5)
    tight = replay_checks(_sample(ref.copy(), labels, ref), budget)
    assert tight[3].verdict == "fail" and "budget" in tight[3].summary


def test_few_clicks_is_inconclusive_not_ok() -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.3)
    k = 500
    s = ReplaySample(ref[:k] * 1.02, ref[:k], labels[:k])
    verdicts = _verdicts(s)
    assert verdicts["calibration"] == "inconclusive"
    assert verdicts["ne"] == "inconclusive"
    assert verdicts["latency"] == "no_data"


def test_timer_noise_below_the_floor_is_not_slow() -> None:
    logit, labels, rng = _world()
    ref = _model(logit, rng, 0.3)
    s = ReplaySample(ref.copy(), ref, labels, np.full(N, 0.02), np.full(N, 0.001))
    assert replay_checks(s)[3].verdict == "ok"
