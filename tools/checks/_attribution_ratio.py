"""Attribution of a prediction-level metric: calibration, Σ prediction ÷ Σ clicks.

A miscalibrated arm of a small experiment barely moves a global business metric, so a global
revenue or calibration alert does not name it through the per-request contributions of
:mod:`tools.checks.attribution`. What it does move is its own calibration against its control.
Per experiment arm, the change of ``log(Σ prediction ÷ Σ clicks)`` against the control's, window
minus baseline (a difference-in-differences: a new model that is steadily calibrated
differently from control does not count, a shift both arms share cancels), with the standard
error of Poisson click counts, ``sqrt(Σ 1/clicks)`` over the four cells; without a baseline the
window's gap alone. Two-sided, Holm over every arm of every experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from tools.checks._common import fmt_p, fmt_time, series_evidence, table
from tools.checks._engine import SubjectFrame, Window
from tools.result import CheckResult, Effect, Evidence, Verdict
from tools.stats import compare_rates, holm, least_events

if TYPE_CHECKING:
    from tools.checks._attribution_ne import NEArm

__all__ = ["RatioArm", "arm_mdes", "arms_table", "ratio_arms", "ratio_attribution"]


@dataclass(frozen=True)
class RatioArm:
    """One experiment arm's calibration change against its control.

    Attributes:
        experiment: Experiment id.
        arm: The (non-control) arm.
        change: Log ratio of the arm's calibration gap to control, window vs baseline.
        se: Its standard error.
        share: The arm's share of the window's predictions times its change, over the global
            log change (how much of the global move it explains; 0 without a global move).
        p: Two-sided p-value.
        p_adjusted: Holm over every arm.
    """

    experiment: str
    arm: str
    change: float
    se: float
    share: float
    p: float
    p_adjusted: float = 1.0


_Cell = tuple[float, float]
"""Σ prediction and Σ clicks of one experiment arm over a span."""


def _cells(rows: pd.DataFrame, span: tuple[int, int]) -> dict[tuple[str, str], _Cell]:
    part = rows[(rows["minute"] >= span[0]) & (rows["minute"] < span[1])]
    sums = part.groupby(["experiment_id", "arm"])[["sum_pred", "sum_label"]].sum()
    return {
        (str(e), str(a)): (float(p), float(c))
        for (e, a), p, c in zip(
            sums.index, sums["sum_pred"].to_numpy(), sums["sum_label"].to_numpy(), strict=True
        )
    }


def _haldane(cell: _Cell) -> _Cell:
    """A cell with no click (every click lost) counts half a click: its log calibration stays
    finite (as in :func:`tools.stats.compare_rates`)."""
    pred, clicks = cell
    return (pred, clicks if clicks > 0 else 0.5)


def arms_table(
    metric: str,
    arms: Sequence[RatioArm] | Sequence[NEArm],
    w: Window,
    changes: Mapping[str, list[float]],
    shares: list[float],
) -> tuple[Evidence, str]:
    """The evidence table of a per-arm attribution (strongest first) and its span's text.

    ``changes``: the relative changes to show per arm, by column name (each arm's log change is
    its ``contribution``); ``shares``: each arm's share of the global change.
    """
    span = (
        f"{fmt_time(w.start)}-{fmt_time(w.end)} vs "
        f"{fmt_time(w.fetch_start)}-{fmt_time(w.start)} UTC"
    )
    ranked = pd.DataFrame(
        {
            "kind": ["experiment"] * len(arms),
            "candidate": [f"{a.experiment}/{a.arm}" for a in arms],
            **changes,
            "contribution": [a.change for a in arms],
            "share_of_change": shares,
            "p_value": [a.p for a in arms],
            "p_adjusted": [a.p_adjusted for a in arms],
        }
    )
    title = f"experiment arms by {metric} change against control (Holm-adjusted p)"
    return table(title, ranked, note=span), span


def arm_mdes(ses: list[float], alpha: float, sides: int) -> tuple[float, float]:
    """The relative change the best- and the worst-measured arm could show at 80 % power at the
    first Holm step (``alpha`` over every arm), from each arm's standard error on the log scale."""
    z = float(ndtri(1 - alpha / (sides * len(ses)))) + float(ndtri(0.8))
    sizes = sorted(float(np.expm1(z * se)) for se in ses)
    return sizes[0], sizes[-1]


def ratio_arms(
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    window: tuple[int, int],
    baseline: tuple[int, int],
    *,
    global_change: float = 0.0,
    min_clicks: float = 5.0,
) -> list[RatioArm]:
    """Every arm's calibration difference-in-differences against its control (module docstring).

    Args:
        experiments: Per experiment × arm × minute (or span) sums with ``sum_pred``, ``sum_label``.
        controls: Control arm per experiment id (only these experiments are scanned).
        window: Epoch minutes ``[a, b)`` of the window.
        baseline: The baseline's.
        global_change: The global log calibration change, for each arm's share of it.
        min_clicks: Fewest clicks a cell must hold, logged or expected at its pair's pooled
            rate, to count.

    Returns:
        The arms, strongest evidence first (adjusted p, then p, then the larger |change|).
    """
    if experiments.empty or not {"sum_pred", "sum_label"} <= set(experiments.columns):
        return []
    now, before = _cells(experiments, window), _cells(experiments, baseline)
    total_pred = sum(pred for pred, _ in now.values())
    raw: list[RatioArm] = []
    for exp_key, control_key in controls.items():
        exp, control = str(exp_key), str(control_key)
        if (exp, control) not in now:
            continue
        arms = [a for (e, a) in now if e == exp and a != control]
        for arm in arms:
            cells = [(now[(exp, arm)], now[(exp, control)])]
            if (exp, arm) in before and (exp, control) in before:
                cells.append((before[(exp, arm)], before[(exp, control)]))
            # Enough clicks, logged or as the predictions expected them (a loss still counts).
            if any(least_events(t[1], t[0], c[1], c[0]) < min_clicks for t, c in cells):
                continue
            cells = [(_haldane(t), _haldane(c)) for t, c in cells]
            logs = [float(np.log(t[0] / t[1]) - np.log(c[0] / c[1])) for t, c in cells]
            var = sum(1.0 / t[1] + 1.0 / c[1] for t, c in cells)
            change = logs[0] - (logs[1] if len(logs) > 1 else 0.0)
            se = float(np.sqrt(var))
            z = change / se if se > 0 else 0.0
            p = float(2 * ndtr(-abs(z)))
            weight = now[(exp, arm)][0] / total_pred if total_pred > 0 else 0.0
            share = weight * change / global_change if global_change != 0 else 0.0
            raw.append(RatioArm(exp, arm, change, se, share, p))
    adjusted = holm([a.p for a in raw])
    ranked = [
        RatioArm(a.experiment, a.arm, a.change, a.se, a.share, a.p, float(q))
        for a, q in zip(raw, adjusted, strict=True)
    ]
    return sorted(ranked, key=lambda a: (a.p_adjusted, a.p, -abs(a.change)))


def ratio_attribution(
    frame: SubjectFrame,
    *,
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    alpha_fail: float,
    alpha_warn: float,
    alpha_experiment: float,
    min_change_fail: float,
    min_change_warn: float,
    settings: dict[str, object],
) -> CheckResult:
    """Attribution of a calibration change: all traffic's move and the arms that own one.

    Args:
        frame: All traffic, baseline ``[fetch_start, start)`` and window ``[start, end)``.
        experiments: Per experiment × arm sums over the same range.
        controls: Control arm per experiment id.
        alpha_fail: p-value of the global change below which the check fails.
        alpha_warn: The same, to warn.
        alpha_experiment: Holm-adjusted p-value to name an arm.
        min_change_fail: Smallest relative calibration change of all traffic that fails.
        min_change_warn: The same, to warn.
        settings: The result's params.

    Returns:
        ``fail``/``warn`` when all traffic's calibration moved; ``experiment``/``arm`` name an arm
        whose calibration moved against its control (whatever all traffic did: a small
        experiment's miscalibration hides in the global figure), ``ok`` otherwise.
    """
    w = frame.window
    cur, base = frame.span("all", w.start, w.end), frame.span("all", w.fetch_start, w.start)
    c = compare_rates(
        float(base["sum_label"]),
        float(base["sum_pred"]),
        float(cur["sum_label"]),
        float(cur["sum_pred"]),
        "both",
    )
    rel = c.estimate - 1.0 if c.valid else 0.0
    global_change = float(np.log(c.estimate)) if c.valid and c.estimate > 0 else 0.0
    arms = ratio_arms(
        experiments,
        controls,
        (w.start, w.end),
        (w.fetch_start, w.start),
        global_change=global_change,
    )
    arms_evidence, span = arms_table(
        "calibration",
        arms,
        w,
        {"calibration_change": [float(np.expm1(a.change)) for a in arms]},
        [a.share for a in arms],
    )
    evidence: list[Evidence] = [arms_evidence, series_evidence(frame, "calibration")]
    effect = Effect(
        name="relative change of calibration (Σ prediction ÷ Σ clicks)",
        estimate=100 * rel,
        ci_low=100 * (c.ci_low - 1.0) if c.valid else None,
        ci_high=100 * (c.ci_high - 1.0) if c.valid else None,
        unit="%",
    )
    top = next((a for a in arms if a.p_adjusted < alpha_experiment), None)
    size = abs(rel)
    verdict: Verdict = "ok"
    if c.valid and c.p_value < alpha_warn and size >= min_change_warn:
        verdict = "fail" if c.p_value < alpha_fail and size >= min_change_fail else "warn"
    text = f"Calibration of all traffic changed {100 * rel:+.1f}% ({fmt_p(c.p_value)}) in {span}"
    if top is not None:
        text += (
            f"; experiment {top.experiment} arm {top.arm} moved {np.expm1(top.change):+.0%} "
            f"against its control (adjusted {fmt_p(top.p_adjusted)})"
        )
        verdict = verdict if verdict != "ok" else "warn"
    else:
        text += "; no experiment arm's calibration moved against its control"
        if arms:
            # What "moved" could have meant: the change each arm's clicks could show (two-sided).
            best, worst = arm_mdes([a.se for a in arms], alpha_experiment, 2)
            settings = {
                **settings,
                "arm_mde_best": round(best, 4),
                "arm_mde_worst": round(worst, 4),
            }
            text += (
                f" (a change of ±{best:.0%} would have shown in the best-measured arm, "
                f"±{worst:.0%} in the least)"
            )
    return CheckResult(
        check="attribution",
        verdict=verdict,
        summary=text + ".",
        effect=effect,
        p_value=c.p_value,
        experiment=top.experiment if top else None,
        arm=top.arm if top else None,
        evidence=evidence,
        params=settings,
    )
