"""Attribution of normalized entropy: which experiment arm's predictions got worse.

A new ranking model that predicts worse in one arm of a small experiment barely moves the NE of
all traffic, and NE has no per-request contribution to split by experiment. What the arm does
move is its own, against its control's, in two ways:

- its **mean log loss**: the change of ``log(mean log loss of the arm ÷ of its control)``, window
  minus baseline (a difference in differences: a new model steadily worse or better than
  control does not count, a shift every arm shares cancels, and so does the base CTR both arms
  see, which NE's normalisation divides out); standard error by the delta method from each
  cell's sum of squared log losses; one-sided (worse);
- the **spread of its predictions**: the same difference in differences of the log variance of
  the predictions' logarithms (a CTR model's predictions are near log-normal; their raw
  variance is ruled by a few high ones), with the standard error ``sqrt((kurtosis − 1) / n)``
  of a log sample variance (the kurtosis from each cell's third and fourth power sums);
  two-sided: predictions stuck at a constant lose their spread (and their log loss may even
  fall, when the constant sits near the base CTR), a noisier model gains spread.

Each arm's p-value is the smaller of the two, times two (Bonferroni), then Holm over every arm of
every experiment. Without a baseline the window's gap alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.special import ndtr

from tools.checks._attribution_ratio import arm_mdes, arms_table
from tools.checks._common import fmt_p, no_data
from tools.checks._engine import SubjectFrame
from tools.result import CheckResult, Verdict
from tools.stats import holm

__all__ = ["NEArm", "ne_arms", "ne_attribution"]


@dataclass(frozen=True)
class NEArm:
    """One experiment arm's log-loss change against its control.

    Attributes:
        experiment: Experiment id.
        arm: The (non-control) arm.
        change: Log ratio of the arm's mean log loss to control's, window minus baseline.
        se: Its standard error.
        spread: Log ratio of the arm's prediction variance to control's, window minus baseline
            (NaN when the cells lack the power sums).
        p: The smaller of the log loss's one-sided and the spread's two-sided p-value, times two.
        p_adjusted: Holm over every arm.
    """

    experiment: str
    arm: str
    change: float
    se: float
    spread: float
    p: float
    p_adjusted: float = 1.0


_Cell = tuple[float, float]
"""A log statistic of one experiment arm over a span (its mean log loss, its predictions'
variance) and that log's variance."""

_POWERS = ("n_pred", "sum_lp", "sum_lp2", "sum_lp3", "sum_lp4")


def _cells(
    rows: pd.DataFrame, span: tuple[int, int], min_n: float
) -> tuple[dict[tuple[str, str], _Cell], dict[tuple[str, str], _Cell]]:
    """Per experiment arm over ``span``: its log mean log loss, and its log prediction variance."""
    part = rows[(rows["minute"] >= span[0]) & (rows["minute"] < span[1])]
    cols = ["n", "sum_ll", "sum_ll2", *(c for c in _POWERS if c in rows.columns)]
    sums = part.groupby(["experiment_id", "arm"])[cols].sum()
    loss: dict[tuple[str, str], _Cell] = {}
    spread: dict[tuple[str, str], _Cell] = {}
    for key, row in zip(sums.index, sums.to_dict("records"), strict=True):
        e, a = (str(k) for k in key)
        n, s = float(row["n"]), float(row["sum_ll"])
        if n >= min_n and s > 0:
            mean = s / n
            var = max(float(row["sum_ll2"]) / n - mean * mean, 0.0)
            loss[(e, a)] = (float(np.log(mean)), var / (n * mean * mean))
        m = float(row.get("n_pred", 0.0))
        if m < min_n or "sum_lp4" not in row:
            continue
        mu, e2, e3, e4 = (float(row[c]) / m for c in _POWERS[1:])
        v = e2 - mu * mu
        if v <= 0:
            continue
        m4 = e4 - 4 * mu * e3 + 6 * mu * mu * e2 - 3 * mu**4
        kurtosis = max(m4 / (v * v), 1.0)
        spread[(e, a)] = (float(np.log(v)), (kurtosis - 1.0) / m)
    return loss, spread


def _did(
    now: dict[tuple[str, str], _Cell],
    before: dict[tuple[str, str], _Cell],
    arm: tuple[str, str],
    control: tuple[str, str],
) -> tuple[float, float] | None:
    """The arm's log gap to control, window minus baseline (the window alone without a
    baseline), and its standard error; None when the window lacks either."""
    if arm not in now or control not in now:
        return None
    cells = [(now[arm], now[control])]
    if arm in before and control in before:
        cells.append((before[arm], before[control]))
    gaps = [t[0] - c[0] for t, c in cells]
    change = gaps[0] - (gaps[1] if len(gaps) > 1 else 0.0)
    return change, float(np.sqrt(sum(t[1] + c[1] for t, c in cells)))


def ne_arms(
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    window: tuple[int, int],
    baseline: tuple[int, int],
    *,
    min_requests: float = 200.0,
) -> list[NEArm]:
    """Every arm's log-loss difference in differences against its control (module docstring).

    Args:
        experiments: Per experiment × arm × minute (or span) sums with ``n``, ``sum_ll``,
            ``sum_ll2`` (and ``n_pred``, ``sum_lp`` ... ``sum_lp4`` for the spread).
        controls: Control arm per experiment id (only these experiments are scanned).
        window: Epoch minutes ``[a, b)`` of the window.
        baseline: The baseline's.
        min_requests: Fewest requests in a cell for it to count.

    Returns:
        The arms, strongest evidence first (adjusted p, then p, then the larger change).
    """
    if experiments.empty or not {"n", "sum_ll", "sum_ll2"} <= set(experiments.columns):
        return []
    loss_now, spread_now = _cells(experiments, window, min_requests)
    loss_before, spread_before = _cells(experiments, baseline, min_requests)
    raw: list[NEArm] = []
    for exp_key, control_key in controls.items():
        exp, control = str(exp_key), str(control_key)
        if (exp, control) not in loss_now:
            continue
        for key in [k for k in loss_now if k[0] == exp and k[1] != control]:
            loss = _did(loss_now, loss_before, key, (exp, control))
            if loss is None or loss[1] <= 0:
                continue
            p_loss = float(ndtr(-loss[0] / loss[1]))
            spread = _did(spread_now, spread_before, key, (exp, control))
            p_spread = 1.0
            if spread is not None and spread[1] > 0:
                p_spread = float(2 * ndtr(-abs(spread[0]) / spread[1]))
            p = min(1.0, 2 * min(p_loss, p_spread))
            moved = spread[0] if spread is not None else float("nan")
            raw.append(NEArm(key[0], key[1], loss[0], loss[1], moved, p))
    adjusted = holm([a.p for a in raw])
    ranked = [replace(a, p_adjusted=float(q)) for a, q in zip(raw, adjusted, strict=True)]
    return sorted(ranked, key=lambda a: (a.p_adjusted, a.p, -a.change))


def ne_attribution(
    frame: SubjectFrame,
    *,
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    alpha_experiment: float,
    min_change: float,
    settings: dict[str, object],
    min_spread: float = 0.2,
) -> CheckResult:
    """Attribution of an NE change to the experiment arms whose predictions got worse.

    Args:
        frame: All traffic over the window and its baseline (only its minutes are read).
        experiments: Per experiment × arm sums over the same range, with the log-loss sums.
        controls: Control arm per experiment id.
        alpha_experiment: Holm-adjusted p-value to name an arm.
        min_change: Smallest relative rise of an arm's log loss against control that counts.
        min_spread: Smallest relative change of its predictions' variance that counts.
        settings: The result's params.

    Returns:
        ``warn`` naming the experiment and arm whose log loss or spread moved against its
        control (the experiment's own checks then judge it), ``ok`` otherwise, with the rise the
        best- and worst-measured arms could have shown; ``no_data`` when no arm could be
        compared.
    """
    w = frame.window
    arms = ne_arms(experiments, controls, (w.start, w.end), (w.fetch_start, w.start))
    if not arms:
        # No arm with enough requests beside its control: nothing was compared, not "no change".
        return no_data(
            "attribution",
            frame,
            "No experiment arm had enough requests beside its control to compare its log loss.",
            settings,
        )
    arms_evidence, span = arms_table(
        "log-loss",
        arms,
        w,
        {
            "log_loss_change": [float(np.expm1(a.change)) for a in arms],
            "spread_change": [float(np.expm1(a.spread)) for a in arms],
        },
        [0.0] * len(arms),
    )
    evidence = [arms_evidence]
    top = next(
        (
            a
            for a in arms
            if a.p_adjusted < alpha_experiment
            and (np.expm1(a.change) >= min_change or abs(np.expm1(a.spread)) >= min_spread)
        ),
        None,
    )
    verdict: Verdict = "ok"
    if top is not None:
        verdict = "warn"
        text = (
            f"Experiment {top.experiment} arm {top.arm}: log loss {np.expm1(top.change):+.0%}, "
            f"spread of its predictions {np.expm1(top.spread):+.0%} against its control in "
            f"{span} (adjusted {fmt_p(top.p_adjusted)})"
        )
    else:
        text = (
            f"No experiment arm's log loss or prediction spread moved against its control in {span}"
        )
        # What each arm's log loss could have shown (one-sided).
        best, worst = arm_mdes([a.se for a in arms], alpha_experiment, 1)
        settings = {**settings, "arm_mde_best": round(best, 4), "arm_mde_worst": round(worst, 4)}
        text += (
            f" (a rise of {best:.0%} would have shown in the best-measured arm, "
            f"{worst:.0%} in the least)"
        )
    return CheckResult(
        check="attribution",
        verdict=verdict,
        summary=text + ".",
        p_value=top.p_adjusted if top else None,
        experiment=top.experiment if top else None,
        arm=top.arm if top else None,
        evidence=evidence,
        params=settings,
    )
