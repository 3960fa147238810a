"""Attribution of normalized entropy: which experiment arm's predictions got worse.

A new ranking model that predicts worse in one arm of a small experiment barely moves the NE of
all traffic, and NE has no per-request contribution to split by experiment. What the arm does
move is its own mean log loss against its control's: per experiment arm, the change of
``log(mean log loss of the arm ÷ mean log loss of its control)``, window minus baseline (a
difference in differences: a new model that is steadily worse or better than control does not
count, a shift every arm shares cancels, and so does the base CTR both arms see, which NE's
normalisation divides out). Its standard error by the delta method from each cell's sum of
squared log losses; one-sided (worse), Holm over every arm of every experiment. Without a
baseline the window's gap alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from tools.checks._common import fmt_p, fmt_time, table
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
        p: One-sided p-value (worse).
        p_adjusted: Holm over every arm.
    """

    experiment: str
    arm: str
    change: float
    se: float
    p: float
    p_adjusted: float = 1.0


_Cell = tuple[float, float]
"""Log of the mean log loss of one experiment arm over a span, and that log's variance."""


def _cells(rows: pd.DataFrame, span: tuple[int, int], min_n: float) -> dict[tuple[str, str], _Cell]:
    part = rows[(rows["minute"] >= span[0]) & (rows["minute"] < span[1])]
    sums = part.groupby(["experiment_id", "arm"])[["n", "sum_ll", "sum_ll2"]].sum()
    out: dict[tuple[str, str], _Cell] = {}
    for (e, a), n, s, s2 in zip(
        sums.index,
        sums["n"].to_numpy(),
        sums["sum_ll"].to_numpy(),
        sums["sum_ll2"].to_numpy(),
        strict=True,
    ):
        if n < min_n or s <= 0:
            continue
        mean = s / n
        var = max(s2 / n - mean * mean, 0.0)
        out[(str(e), str(a))] = (float(np.log(mean)), float(var / (n * mean * mean)))
    return out


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
            ``sum_ll2``.
        controls: Control arm per experiment id (only these experiments are scanned).
        window: Epoch minutes ``[a, b)`` of the window.
        baseline: The baseline's.
        min_requests: Fewest requests in a cell for it to count.

    Returns:
        The arms, strongest evidence first (adjusted p, then p, then the larger change).
    """
    if experiments.empty or not {"n", "sum_ll", "sum_ll2"} <= set(experiments.columns):
        return []
    now = _cells(experiments, window, min_requests)
    before = _cells(experiments, baseline, min_requests)
    raw: list[NEArm] = []
    for exp_key, control_key in controls.items():
        exp, control = str(exp_key), str(control_key)
        if (exp, control) not in now:
            continue
        for e, arm in [k for k in now if k[0] == exp and k[1] != control]:
            cells = [(now[(e, arm)], now[(e, control)])]
            if (e, arm) in before and (e, control) in before:
                cells.append((before[(e, arm)], before[(e, control)]))
            gaps = [t[0] - c[0] for t, c in cells]
            change = gaps[0] - (gaps[1] if len(gaps) > 1 else 0.0)
            se = float(np.sqrt(sum(t[1] + c[1] for t, c in cells)))
            if se <= 0:
                continue
            raw.append(NEArm(e, arm, change, se, float(ndtr(-change / se))))
    adjusted = holm([a.p for a in raw])
    ranked = [
        NEArm(a.experiment, a.arm, a.change, a.se, a.p, float(q))
        for a, q in zip(raw, adjusted, strict=True)
    ]
    return sorted(ranked, key=lambda a: (a.p_adjusted, a.p, -a.change))


def ne_attribution(
    frame: SubjectFrame,
    *,
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    alpha_experiment: float,
    min_change: float,
    settings: dict[str, object],
) -> CheckResult:
    """Attribution of an NE change to the experiment arms whose predictions got worse.

    Args:
        frame: All traffic over the window and its baseline (only its minutes are read).
        experiments: Per experiment × arm sums over the same range, with the log-loss sums.
        controls: Control arm per experiment id.
        alpha_experiment: Holm-adjusted p-value to name an arm.
        min_change: Smallest relative rise of an arm's log loss against control that counts.
        settings: The result's params.

    Returns:
        ``warn`` naming the experiment and arm whose log loss rose against its control (the
        experiment's own NE check then judges it), ``ok`` otherwise, with the rise the
        best- and worst-measured arms could have shown.
    """
    w = frame.window
    arms = ne_arms(experiments, controls, (w.start, w.end), (w.fetch_start, w.start))
    span = (
        f"{fmt_time(w.start)}-{fmt_time(w.end)} vs "
        f"{fmt_time(w.fetch_start)}-{fmt_time(w.start)} UTC"
    )
    ranked = pd.DataFrame(
        {
            "kind": ["experiment"] * len(arms),
            "candidate": [f"{a.experiment}/{a.arm}" for a in arms],
            "log_loss_change": [float(np.expm1(a.change)) for a in arms],
            "contribution": [a.change for a in arms],
            "share_of_change": [0.0] * len(arms),
            "p_value": [a.p for a in arms],
            "p_adjusted": [a.p_adjusted for a in arms],
        }
    )
    evidence = [
        table(
            "experiment arms by log-loss change against control (Holm-adjusted p)",
            ranked,
            note=span,
        )
    ]
    top = next(
        (a for a in arms if a.p_adjusted < alpha_experiment and np.expm1(a.change) >= min_change),
        None,
    )
    verdict: Verdict = "ok"
    if top is not None:
        verdict = "warn"
        text = (
            f"Experiment {top.experiment} arm {top.arm}: log loss {np.expm1(top.change):+.0%} "
            f"against its control in {span} (adjusted {fmt_p(top.p_adjusted)})"
        )
    else:
        text = f"No experiment arm's log loss rose against its control in {span}"
        if arms:
            # What each arm could have shown at 80 % power at the first Holm step (one-sided).
            z = float(ndtri(1 - alpha_experiment / len(arms))) + float(ndtri(0.8))
            sizes = sorted(float(np.expm1(z * a.se)) for a in arms)
            settings = {**settings, "arm_mde_best": round(sizes[0], 4)}
            settings["arm_mde_worst"] = round(sizes[-1], 4)
            text += (
                f" (a rise of {sizes[0]:.0%} would have shown in the best-measured arm, "
                f"{sizes[-1]:.0%} in the least)"
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
