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


def _sums(rng: np.random.Generator, n: int, noise: float, stuck: float = 0.0) -> tuple[float, ...]:
    """The all-experiments join's NE sums of ``n`` requests: requests, Σ log loss, Σ log loss²,
    valid predictions and Σ (ln p)^k for k = 1..4. ``noise``: extra logit noise (a worse model);
    ``stuck``: the share of predictions stuck at the base CTR (a collapsed model)."""
    logit = rng.normal(-3.6, 0.8, n)
    truth = 1 / (1 + np.exp(-logit))
    pred = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.3 + noise, n))))
    pred = np.where(rng.random(n) < stuck, 0.03, pred)
    y = rng.random(n) < truth
    ll = -np.where(y, np.log(pred), np.log(1 - pred))
    lp = np.log(pred)
    powers = [float((lp**k).sum()) for k in range(1, 5)]
    return float(n), float(ll.sum()), float((ll * ll).sum()), float(n), *powers


COLUMNS = ["experiment_id", "arm", "minute", "n", "sum_ll", "sum_ll2", "n_pred"]
COLUMNS += ["sum_lp", "sum_lp2", "sum_lp3", "sum_lp4"]


def _world(
    rng: np.random.Generator,
    experiments: int,
    worse: str | None,
    n: int = 60_000,
    stuck: float = 0.0,
) -> pd.DataFrame:
    """Every experiment's two arms, ``n`` requests per arm in the window, twice that before;
    the ``worse`` arm's model noisier in the window (or, with ``stuck``, partly collapsed)."""
    rows = []
    for e in range(experiments):
        for arm in ("control", "test"):
            for (a, _b), count in ((BASELINE, 2 * n), (WINDOW, n)):
                bad = f"e{e}/{arm}" == worse and a == WINDOW[0]
                noise = 1.0 if bad and not stuck else 0.0
                rows.append((f"e{e}", arm, a, *_sums(rng, count, noise, stuck if bad else 0.0)))
    return pd.DataFrame(rows, columns=COLUMNS)


def test_the_arm_whose_model_got_worse_is_named_first() -> None:
    rng = np.random.default_rng(3)
    rows = _world(rng, 20, worse="e7/test")
    arms = ne_arms(rows, {f"e{e}": "control" for e in range(20)}, WINDOW, BASELINE)
    assert len(arms) == 20
    top = arms[0]
    assert (top.experiment, top.arm) == ("e7", "test")
    assert top.p_adjusted < 1e-3 and np.expm1(top.change) > 0.02
    assert all(a.p_adjusted > 0.01 for a in arms[1:])


def test_an_arm_stuck_at_a_constant_is_named_by_its_lost_spread() -> None:
    # Two thirds of the arm's predictions stuck near the base CTR: its log loss barely moves
    # (it may fall), the spread of its predictions collapses.
    rng = np.random.default_rng(5)
    rows = _world(rng, 20, worse="e4/test", n=5_000, stuck=0.67)
    arms = ne_arms(rows, {f"e{e}": "control" for e in range(20)}, WINDOW, BASELINE)
    top = arms[0]
    assert (top.experiment, top.arm) == ("e4", "test")
    assert top.p_adjusted < 1e-3 and np.expm1(top.spread) < -0.4
    assert all(a.p_adjusted > 0.01 for a in arms[1:])


def test_healthy_experiments_name_no_arm_beyond_the_family_level() -> None:
    # 100 worlds of 20 healthy experiments (300 clicks per arm in the window): an arm named at
    # 0.01 (Holm-adjusted) in about 1 % of them by definition; 3 allows for the draw.
    rng = np.random.default_rng(11)
    controls = {f"e{e}": "control" for e in range(20)}
    named = sum(
        ne_arms(_world(rng, 20, None, n=10_000), controls, WINDOW, BASELINE)[0].p_adjusted < 0.01
        for _ in range(100)
    )
    assert named <= 3


def test_no_comparable_arm_is_no_data_not_an_all_clear() -> None:
    from tests.tools.test_known_answers import _arm, _stepped, frame_of
    from tools.checks._attribution_ne import ne_attribution

    steady = {"all": _arm(1000, 20, 0.02)}
    frame = frame_of(_stepped(steady, steady), control=None)
    # An arm whose control logged nothing (the join lost its exposures): nothing to compare.
    rows = _world(np.random.default_rng(1), 1, None, n=5_000)
    rows = rows[rows["arm"] != "control"]
    for experiments in (rows, rows.iloc[0:0]):
        result = ne_attribution(
            frame,
            experiments=experiments,
            controls={"e0": "control"},
            alpha_experiment=1e-3,
            min_change=0.01,
            settings={},
        )
        assert result.verdict == "no_data" and "enough requests" in result.summary
