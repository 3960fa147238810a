"""Attribution ranks experiments by the evidence of their arm-vs-control shift, Holm-adjusted.

Hand-made worlds: a dozen experiments whose arms are pure noise, and (in the faulted world) one
whose test arm loses 30 % of its clicks after the window opens. Fixed seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tools.checks import SubjectFrame, Window, attribution_check
from tools.result import CheckResult
from tools.telemetry import CUBE_SUMS, Subject

M0 = 29_919_240  # 2026-11-20 06:00 UTC in epoch minutes
DIMS = ("country", "platform", "ad_type")
CTR = 0.05
N_ARM = 400  # requests per arm per minute


def _world(
    seed: int, faulted: str | None, drop: float = 0.3, outside_lift: float = 0.0
) -> tuple[SubjectFrame, pd.DataFrame]:
    """A global cube and per-experiment rows over 120 minutes (window: the last 60).

    ``outside_lift`` raises the CTR of traffic outside every experiment in the window (a global
    rise that no experiment owns).
    """
    rng = np.random.default_rng(seed)
    exp_rows = []
    for k in range(12):
        exp = f"{900 + k}"
        for arm in ("control", "test"):
            for m in range(120):
                p = CTR
                if exp == faulted and arm == "test" and m >= 60:
                    p = CTR * (1 - drop)
                clicks = float(rng.binomial(N_ARM, p))
                exp_rows.append(
                    {
                        "experiment_id": exp,
                        "arm": arm,
                        "minute": M0 + m,
                        "n": float(N_ARM),
                        "sum_label": clicks,
                        "sum_revenue": clicks * 0.5,
                        "sum_revenue2": clicks * 0.25,
                        "n_error": 0.0,
                        "n_fallback": 0.0,
                        "n_pred": float(N_ARM),
                        "n_invalid": 0.0,
                        "sum_pred": N_ARM * CTR,
                    }
                )
    experiments = pd.DataFrame(exp_rows)
    per_minute = experiments.groupby("minute")[["n", "sum_label", "sum_revenue"]].sum()
    outside_n = 20 * N_ARM
    lift = np.where(per_minute.index >= M0 + 60, 1 + outside_lift, 1.0)
    outside_clicks = rng.binomial(outside_n, CTR * lift).astype(float)
    per_minute["n"] += outside_n
    per_minute["sum_label"] += outside_clicks
    per_minute["sum_revenue"] += outside_clicks * 0.5
    rows = []
    for minute, sums in per_minute.iterrows():
        row = dict.fromkeys(CUBE_SUMS, 0.0)
        row.update(
            n=sums["n"],
            n_pred=sums["n"],
            sum_pred=sums["n"] * CTR,
            sum_label=sums["sum_label"],
            sum_label_v=sums["sum_label"],
            sum_revenue=sums["sum_revenue"],
            sum_revenue2=sums["sum_revenue"] * 0.5,
        )
        rows.append(
            {
                "minute": minute,
                "arm": "all",
                "model_id": "*",
                "model_version": "*",
                "country": "US",
                "platform": "ios",
                "ad_type": "feed",
                **row,
            }
        )
    cube = pd.DataFrame(rows).astype({c: float for c in CUBE_SUMS})
    frame = SubjectFrame(cube, Window(M0, M0 + 60, M0 + 120), Subject(), DIMS)
    return frame, experiments


def _experiment_rows(result: CheckResult) -> pd.DataFrame:
    ev = result.evidence[0]
    table = pd.DataFrame(ev.rows, columns=ev.columns)
    return table[table["kind"] == "experiment"].reset_index(drop=True)


def _controls() -> dict[str, str]:
    return {f"{900 + k}": "control" for k in range(12)}


def test_the_faulted_experiment_ranks_first_by_adjusted_evidence() -> None:
    frame, experiments = _world(seed=7, faulted="905")
    result = attribution_check("ctr", frame, experiments=experiments, controls=_controls())
    rows = _experiment_rows(result)
    assert rows.loc[0, "candidate"] == "905/test"
    assert rows.loc[0, "p_adjusted"] < 1e-4
    # Holm: adjusted p-values are at least the raw ones, and the noise stays unremarkable.
    assert (rows["p_adjusted"] >= rows["p_value"] - 1e-15).all()
    assert (rows.loc[1:, "p_adjusted"] > 0.01).all()
    assert list(rows["p_adjusted"]) == sorted(rows["p_adjusted"])


def test_ranking_ignores_the_sign_of_the_global_change() -> None:
    # Traffic outside the experiments rises while one test arm drops: the global CTR goes up,
    # so the faulted arm's share of the change is negative; its own arm-vs-control shift is
    # what singles it out, and it still ranks first.
    frame, experiments = _world(seed=3, faulted="902", outside_lift=0.1)
    result = attribution_check("ctr", frame, experiments=experiments, controls=_controls())
    rows = _experiment_rows(result)
    assert result.effect is not None and result.effect.estimate > 0
    assert rows.loc[0, "candidate"] == "902/test"
    assert rows.loc[0, "share_of_change"] < 0
    assert rows.loc[0, "p_adjusted"] < 1e-4


def test_healthy_experiments_are_not_significant() -> None:
    for seed in (1, 2, 3):
        frame, experiments = _world(seed=seed, faulted=None)
        result = attribution_check("ctr", frame, experiments=experiments, controls=_controls())
        rows = _experiment_rows(result)
        assert (rows["p_adjusted"] > 0.01).all(), seed
        assert result.experiment is None


def test_invalid_rate_is_attributable_from_experiment_rows() -> None:
    frame, experiments = _world(seed=5, faulted=None)
    bad = (experiments["experiment_id"] == "904") & (experiments["arm"] == "test")
    late = experiments["minute"] >= M0 + 60
    experiments.loc[bad & late, "n_pred"] = N_ARM * 0.8  # a fifth of predictions are NaN
    experiments.loc[bad & late, "n_invalid"] = N_ARM * 0.2
    result = attribution_check("invalid_rate", frame, experiments=experiments, controls=_controls())
    rows = _experiment_rows(result)
    assert rows.loc[0, "candidate"] == "904/test"
    assert rows.loc[0, "p_adjusted"] < 1e-4
