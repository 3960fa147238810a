"""The risk model: the paper's gating measure, zones by gating share, per-feature explanations,
and its figures on the simulated launch history and on ApacheJIT (2019, trained on 2017-2018)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evals.launch_history import (
    HistoryResult,
    evaluate_apachejit,
    evaluate_history,
    simulate_launches,
)
from lifecycle.risk import LAUNCH_FEATURES, LOG_FEATURES, RiskModel, gating_curve
from tools.errors import ConfigError


def test_gating_curve_known_answers() -> None:
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 1] * 10, dtype=float)  # 30 incidents in 100
    perfect = labels + np.linspace(0, 0.01, labels.size)
    g = gating_curve(perfect, labels)
    assert g.caught == pytest.approx((5 / 30, 10 / 30, 1.0))
    assert g.auc == pytest.approx(1.0)
    worst = gating_curve(-perfect, labels)
    assert worst.caught[:2] == (0.0, 0.0)
    with pytest.raises(ConfigError, match="labels"):
        gating_curve([0.1, 0.2], [0, 0])


def test_random_scores_catch_their_share() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(20_000) < 0.1).astype(float)
    g = gating_curve(rng.random(20_000), labels)
    for share, caught in zip(g.shares, g.caught, strict=True):
        # binomial sd of the caught share is about sqrt(s(1-s)/2000) < 0.012
        assert abs(caught - share) < 0.05


@pytest.fixture(scope="module")
def history_model() -> tuple[HistoryResult, RiskModel]:
    history = simulate_launches(2400, seed=1)
    return evaluate_history(history)


def test_simulated_history_is_documented_size_and_rate() -> None:
    history = simulate_launches(2000, seed=2)
    assert len(history) == 2000
    assert set(LAUNCH_FEATURES) <= set(history.columns)
    assert 0.05 < history["incident"].mean() < 0.3
    assert history["launched_at"].is_monotonic_increasing


def test_model_beats_random_gating_on_the_simulated_history(
    history_model: tuple[HistoryResult, RiskModel],
) -> None:
    result, _ = history_model
    # A random gate catches its own share; the model must do far better at every gate.
    for share, caught in zip(result.model.shares, result.model.caught, strict=True):
        assert caught > share * 1.8 or caught > 0.8
    assert result.model.auc > 0.72
    assert result.chosen in result.cv or result.cv == {}


def test_zones_follow_gating_shares(history_model: tuple[HistoryResult, RiskModel]) -> None:
    _, model = history_model
    history = simulate_launches(2400, seed=1)
    probs = model.predict(history[list(LAUNCH_FEATURES)].iloc[:1600])
    zones = [model.zone(float(p)) for p in probs]
    assert abs(zones.count("red") / len(zones) - 0.05) < 0.01
    assert abs((zones.count("red") + zones.count("yellow")) / len(zones) - 0.25) < 0.01


def test_failures_raise_the_risk_and_are_named(
    history_model: tuple[HistoryResult, RiskModel],
) -> None:
    _, model = history_model
    calm = dict.fromkeys(LAUNCH_FEATURES, 0.0) | {"traffic_share": 0.1}
    risky = calm | {"offline_fail": 1.0, "traffic_share": 0.9, "model_change": 1.0}
    a, b = model.assess(calm), model.assess(risky)
    assert b.probability > a.probability
    assert b.percentile > a.percentile
    top = {c.feature for c in b.top(3)}
    assert {"offline_fail", "traffic_share"} & top
    assert all(c.delta > 0 for c in b.top(3))


def test_save_and_load_round_trip(
    history_model: tuple[HistoryResult, RiskModel], tmp_path: Path
) -> None:
    _, model = history_model
    path = tmp_path / "risk.joblib"
    model.save(path)
    again = RiskModel.load(path)
    row = dict.fromkeys(LAUNCH_FEATURES, 1.0)
    assert again.assess(row).probability == pytest.approx(model.assess(row).probability)
    assert again.log_columns == LOG_FEATURES
    with pytest.raises(ConfigError, match="risk_model_path"):
        RiskModel.load(tmp_path / "missing.joblib")


def test_apachejit_context_model_beats_plain_lr_at_every_gate() -> None:
    result = evaluate_apachejit(kinds=("logistic",))
    assert result.model.changes == 2609 and result.model.incidents == 242
    assert result.train == 2585 + 2332
    # The plain LR on log-scaled change metrics: about 24 / 41 / 93 % (AUC 0.84).
    assert result.plain.caught[0] == pytest.approx(0.236, abs=0.02)
    assert result.plain.auc == pytest.approx(0.84, abs=0.01)
    for mine, plain in zip(result.model.caught, result.plain.caught, strict=True):
        assert mine > plain
