"""NE attribution: the experiment arm whose log loss rose against its control, and no other.

Each arm's requests are drawn with a true CTR per request and a model's prediction of it; the
sums (requests, log loss, squared log loss) per experiment arm over a baseline and a window are
what the all-experiments join returns. A worse model in one arm is found; twenty healthy
experiments name no arm beyond the family-wise level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tools.checks._attribution_ne import ne_arms

BASELINE, WINDOW = (0, 60), (60, 90)


def _sums(rng: np.random.Generator, n: int, noise: float) -> tuple[float, float, float]:
    """Requests, Σ log loss and Σ log loss² of ``n`` requests predicted with extra logit noise
    (a worse model: its predictions stray further from each request's true CTR)."""
    logit = rng.normal(-3.6, 0.8, n)
    truth = 1 / (1 + np.exp(-logit))
    pred = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.3 + noise, n))))
    y = rng.random(n) < truth
    ll = -np.where(y, np.log(pred), np.log(1 - pred))
    return float(n), float(ll.sum()), float((ll * ll).sum())


def _world(
    rng: np.random.Generator, experiments: int, worse: str | None, n: int = 60_000
) -> pd.DataFrame:
    """Every experiment's two arms, ``n`` requests per arm in the window, twice that before."""
    rows = []
    for e in range(experiments):
        for arm in ("control", "test"):
            for (a, _b), count in ((BASELINE, 2 * n), (WINDOW, n)):
                bad = f"e{e}/{arm}" == worse and a == WINDOW[0]
                rows.append((f"e{e}", arm, a, *_sums(rng, count, 1.0 if bad else 0.0)))
    return pd.DataFrame(rows, columns=["experiment_id", "arm", "minute", "n", "sum_ll", "sum_ll2"])


def test_the_arm_whose_model_got_worse_is_named_first() -> None:
    rng = np.random.default_rng(3)
    rows = _world(rng, 20, worse="e7/test")
    arms = ne_arms(rows, {f"e{e}": "control" for e in range(20)}, WINDOW, BASELINE)
    assert len(arms) == 20
    top = arms[0]
    assert (top.experiment, top.arm) == ("e7", "test")
    assert top.p_adjusted < 1e-3 and np.expm1(top.change) > 0.02
    assert all(a.p_adjusted > 0.01 for a in arms[1:])


def test_healthy_experiments_name_no_arm_beyond_the_family_level() -> None:
    # 100 worlds of 20 healthy experiments (600 clicks per arm in the window): an arm named at
    # 0.01 (Holm-adjusted) in about 1 % of them by definition; 3 allows for the draw.
    rng = np.random.default_rng(11)
    controls = {f"e{e}": "control" for e in range(20)}
    named = sum(
        ne_arms(_world(rng, 20, None, n=20_000), controls, WINDOW, BASELINE)[0].p_adjusted < 0.01
        for _ in range(100)
    )
    assert named <= 3
