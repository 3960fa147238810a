"""Which side of Σ prediction ÷ Σ clicks moved: the predictions (a model) or the clicks (logging).

A miscalibrated model moves its predictions while the clicks per request hold; lost click logs
move the clicks while the predictions hold. Three references, strongest first:

1. **The prediction step.** The mean prediction is measured precisely (every request carries
   one), so a step in it is located by an epidemic change-point model on the subject's own
   minutes (:func:`tools.stats.epidemic_segment`) and compared with the equally long stretch just
   before it: a diurnal drift barely moves over that span, a rescaled model jumps. A step of at
   least half the calibration change, across which the calibration itself moved that much, is a
   model fault (lost logs never move a prediction); no such step means the predictions held.
2. **The rest of the traffic** (models only, which have no control): every other model shares the
   time of day, so the model's prediction change against theirs is what the model alone did; when
   the rest's calibration moved as much, every model's clicks moved (lost logging). When there is
   enough of it, this reference decides over the step.
3. **Its own past** (or, for an arm, the control's same minutes, differenced against the minutes
   before), with the larger side named when it dominates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tools.checks._engine import Finding, SubjectFrame
from tools.stats import epidemic_segment

__all__ = ["Movement", "movement"]


@dataclass(frozen=True)
class Movement:
    """The change of each side of a calibration finding, and which side moved.

    Attributes:
        prediction: Change of the mean prediction over the finding (log ratio; against the
            reference's same change for an arm compared with control).
        ctr: Change of the logged clicks per scored request (log ratio), likewise.
        moved: ``predictions``, ``clicks`` or ``unclear`` (the evidence does not separate them).
        step: The mean prediction's step at ``step_onset`` (log ratio), if one was located.
        step_ctr: The clicks per request's change across that step (log ratio).
        step_onset: Epoch minute of the step.
        step_carries: The step is the predictions' move: large against the calibration's shift,
            and the calibration moved across it (its onset dates the finding).
        against_rest: The prediction change minus the rest of traffic's (models only).
        rest_calibration: The rest of traffic's calibration change (log ratio; models only).
    """

    prediction: float
    ctr: float
    moved: str
    step: float | None = None
    step_ctr: float | None = None
    step_onset: int | None = None
    against_rest: float | None = None
    rest_calibration: float | None = None
    step_carries: bool = False


def _log_levels(s: pd.Series) -> tuple[float, float]:
    n = float(s["n_pred"])
    if n <= 0 or s["sum_pred"] <= 0 or s["sum_label_v"] <= 0:
        return float("nan"), float("nan")
    return float(np.log(s["sum_pred"] / n)), float(np.log(s["sum_label_v"] / n))


def _step(frame: SubjectFrame, arm: str, up: bool) -> tuple[float, float, int] | None:
    """The mean prediction's most likely step in the calibration's direction, with the clicks per
    request's change across it: ``(log step, log ctr change, onset)``."""
    w = frame.window
    m = frame.minute_sums(arm)
    seg = epidemic_segment(
        m["sum_pred"].to_numpy(float),
        m["n_pred"].to_numpy(float),
        "up" if up else "down",
        min_len=3,
    )
    if seg is None:
        return None
    on, end = w.fetch_start + seg[0], w.fetch_start + seg[1]
    before = (max(w.fetch_start, on - (end - on)), on)
    if before[1] - before[0] < 5:
        return None
    p_now, c_now = _log_levels(frame.sums(arm, on, end))
    p_then, c_then = _log_levels(frame.sums(arm, *before))
    out = (p_now - p_then, c_now - c_then)
    return (out[0], out[1], on) if all(np.isfinite(x) for x in out) else None


def _rest_changes(
    frame: SubjectFrame,
    traffic: SubjectFrame,
    arm: str,
    focus: tuple[int, int],
    before: tuple[int, int],
    min_clicks: float,
) -> tuple[float, float] | None:
    """The rest of traffic's (all minus the subject) prediction and CTR changes, log ratios."""
    levels = []
    for span in (focus, before):
        rest = traffic.sums("all", *span) - frame.sums(arm, *span)
        if rest["sum_label_v"] < min_clicks or rest["n_pred"] < 10 * min_clicks:
            return None
        levels.append(_log_levels(rest))
    (p_now, c_now), (p_then, c_then) = levels
    out = (p_now - p_then, c_now - c_then)
    return out if all(np.isfinite(x) for x in out) else None


def movement(
    frame: SubjectFrame,
    f: Finding,
    dominance: float = 2.0,
    traffic: SubjectFrame | None = None,
    min_rest_clicks: float = 100.0,
) -> Movement | None:
    """Split a calibration finding into its prediction and click changes (module docstring).

    Args:
        frame: The subject (or the slice the finding was located in).
        f: The calibration finding.
        dominance: How many times larger one side's change must be to be named the mover.
        traffic: All traffic over the same minutes (and slice), for a model: the rest of the
            traffic is its seasonal reference.
        min_rest_clicks: Fewest clicks the rest needs on each side to serve as the reference.

    Returns:
        The movement, or None when a side has no data.
    """
    c = f.comparand
    before = (frame.window.fetch_start, f.focus[0])

    def change(arm: str) -> tuple[float, float]:
        pred_now, ctr_now = _log_levels(frame.sums(arm, *f.focus))
        if before[1] - before[0] < 5:
            return float("nan"), float("nan")
        pred_then, ctr_then = _log_levels(frame.sums(arm, *before))
        return pred_now - pred_then, ctr_now - ctr_then

    d_pred, d_ctr = change(c.test)
    if c.concurrent:
        ref_pred, ref_ctr = change(c.ref)
        d_pred, d_ctr = d_pred - ref_pred, d_ctr - ref_ctr
    if not (np.isfinite(d_pred) and np.isfinite(d_ctr)):
        return None
    own = "unclear"
    if abs(d_pred) >= dominance * abs(d_ctr):
        own = "predictions"
    elif abs(d_ctr) >= dominance * abs(d_pred):
        own = "clicks"
    if c.concurrent:
        # The control's same minutes already remove the time of day.
        return Movement(prediction=d_pred, ctr=d_ctr, moved=own)
    estimate = f.decisive.estimate
    # The change to explain is the calibration's over the same minutes the sides are measured on
    # (the finding's focus against the minutes before it): the scanned segment's estimate can be
    # diluted over a longer span, and a small prediction step elsewhere would then outweigh a
    # collapse of the clicks.
    shift = abs(d_pred - d_ctr)
    if estimate > 0:
        shift = max(shift, abs(float(np.log(estimate))))
    step = _step(frame, c.test, up=estimate > 1.0)
    rest = None
    if traffic is not None and before[1] - before[0] >= 5:
        rest = _rest_changes(frame, traffic, c.test, f.focus, before, min_rest_clicks)
    sign = 1.0 if estimate > 1.0 else -1.0
    # Lost logs do not move predictions at all: a step this large, across which the calibration
    # itself moved, is the model's whatever the clicks did (worse-priced ads may lose clicks too).
    # A step the clicks followed (a change of traffic mix) left the calibration where it was.
    carried = step is not None and (step[0] - step[1]) * sign >= 0.5 * shift
    moved_step = step is not None and carried and abs(step[0]) >= 0.5 * shift
    held = step is None or abs(step[0]) < 0.25 * shift or (step[0] - step[1]) * sign < 0.25 * shift
    rel_pred = rest_cal = None
    moved_rest = clicks_rest = False
    if rest is not None:
        rel_pred, rest_cal = d_pred - rest[0], rest[0] - rest[1]
        moved_rest = abs(rel_pred) >= 0.5 * shift and abs(rel_pred) >= dominance * abs(
            d_ctr - rest[1]
        )
        clicks_rest = abs(rel_pred) < 0.25 * shift and rest_cal * sign >= 0.5 * shift
    # The rest of the traffic shares the minutes: the strongest reference when there is one.
    moved = "unclear"
    if moved_rest or (moved_step and not clicks_rest):
        moved = "predictions"
    elif clicks_rest or (held and own == "clicks"):
        moved = "clicks"
    return Movement(
        d_pred,
        d_ctr,
        moved,
        step=step[0] if step else None,
        step_ctr=step[1] if step else None,
        step_onset=step[2] if step else None,
        against_rest=rel_pred,
        rest_calibration=rest_cal,
        step_carries=moved_step,
    )
