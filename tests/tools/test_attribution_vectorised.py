"""Attribution's vectorised contributions equal the per-experiment definition, arm by arm.

The reference below is the definition written as a loop (the shape of the code before it was
vectorised): per span, per experiment, per treatment arm, exposed share × (arm − control) mean,
window minus baseline, variances added, then a one-sided z-test and Holm over every arm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from tools.checks.attribution import _contributions
from tools.stats import holm

SPANS = ((60, 120), (0, 60))
COLS = ("sum_revenue", "sum_revenue2")


def _reference(
    frame: pd.DataFrame,
    controls: Mapping[str, str],
    totals: tuple[float, float],
    delta: float,
    direction: str,
) -> list[tuple[str, str, float, float, float, float, float]]:
    acc: dict[tuple[str, str], list[float]] = {}
    for k, ((a, b), n_total) in enumerate(zip(SPANS, totals, strict=True)):
        rows = frame[(frame["minute"] >= a) & (frame["minute"] < b)]
        for exp, control in controls.items():
            arms: dict[str, tuple[float, float, float]] = {}
            for arm, g in rows[rows["experiment_id"] == exp].groupby("arm"):
                n, t, q = g["n"].sum(), g[COLS[0]].sum(), g[COLS[1]].sum()
                mean = t / n if n > 0 else math.nan
                var = max(q / n - mean**2, 0.0) if n > 0 else math.nan
                arms[str(arm)] = (float(n), mean, var)
            if control not in arms or n_total <= 0:
                continue
            cn, cm, cv = arms[control]
            for arm in sorted(arms):
                if arm == control:
                    continue
                n, m, v = arms[arm]
                w = n / n_total
                slot = acc.setdefault((exp, arm), [0.0, 0.0])
                slot[0] += (1.0 if k == 0 else -1.0) * w * (m - cm)
                slot[1] += w * w * (v / max(n, 1.0) + cv / max(cn, 1.0))
    rows_out = []
    for (exp, arm), (x, var) in acc.items():
        se = math.sqrt(var)
        z = x / se if se > 0 else 0.0
        p = (
            1.0
            if not math.isfinite(z)
            else float(norm.cdf(z) if direction == "down" else norm.sf(z))
        )
        rows_out.append((exp, arm, x, se, x / delta if delta else 0.0, p))
    adjusted = holm([r[-1] for r in rows_out])
    return [(*r, float(q)) for r, q in zip(rows_out, adjusted, strict=True)]


def _frame(rng: np.random.Generator, n_exps: int) -> pd.DataFrame:
    rows = []
    for e in range(n_exps):
        arms = ["control", "test", *(["b"] if e % 3 == 0 else [])]
        for arm in arms:
            step = int(rng.integers(1, 25))
            for minute in range(int(rng.integers(0, 70)), 120, step):
                n = int(rng.integers(0, 60))
                total = float(rng.random() * n * 0.3)
                rows.append((f"x{e}", arm, minute, n, total, total * float(rng.random() + 0.5)))
    return pd.DataFrame(rows, columns=["experiment_id", "arm", "minute", "n", *COLS])


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_contributions_equal_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = _frame(rng, int(rng.integers(1, 30)))
    controls = {f"x{e}": "control" for e in range(0, 32)}
    controls["x1"] = "test"  # another control arm
    controls.pop("x2", None)  # an experiment nobody asked about
    direction = ["down", "up"][seed % 2]
    totals = (float(rng.integers(5_000, 20_000)), float(rng.integers(0, 2) * 12_000))
    delta = [-0.01, 0.0, 0.02][seed % 3]
    got = _contributions(frame, controls, SPANS, totals, delta, COLS, direction)
    want = _reference(frame, controls, totals, delta, direction)
    assert sorted((c.experiment, c.arm) for c in got) == sorted((w[0], w[1]) for w in want)
    by_arm = {(w[0], w[1]): w for w in want}
    for c in got:
        w = by_arm[(c.experiment, c.arm)]
        values = (c.contribution, c.se, c.share, c.p, c.p_adjusted)
        assert values == pytest.approx(w[2:], rel=1e-9, abs=1e-15, nan_ok=True)
    keys = [(c.p_adjusted, c.p, -c.share) for c in got]
    assert keys == sorted(keys)


def test_a_thousand_experiments_take_a_fraction_of_a_second() -> None:
    # 1,000 experiments x 2 arms x 120 minutes: the shape of a fleet investigation's frame.
    e = np.repeat(np.arange(1000), 240)
    arm = np.tile(np.repeat(["control", "test"], 120), 1000)
    minute = np.tile(np.arange(120), 2000)
    dropped = (e == 7) & (arm == "test") & (minute >= 60)  # x7's test arm, in the window only
    frame = pd.DataFrame(
        {
            "experiment_id": [f"x{i}" for i in e],
            "arm": arm,
            "minute": minute,
            "n": 100.0,
            COLS[0]: np.where(dropped, 1.0, 2.0) + np.sin(np.arange(e.size)) * 0.1,
            COLS[1]: 9.0,
        }
    )
    controls = {f"x{i}": "control" for i in range(1000)}
    began = time.process_time()
    got = _contributions(frame, controls, SPANS, (1e6, 1e6), -0.01, COLS, "down")
    assert time.process_time() - began < 2.0  # the loop over experiments took ~20 s here
    assert len(got) == 1000
    assert (got[0].experiment, got[0].arm) == ("x7", "test")
