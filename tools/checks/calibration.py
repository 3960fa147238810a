"""Calibration check: Σ prediction ÷ Σ label per arm, against control, own baseline and training.

A miscalibrated model moves its own arm (or, for a production model, the control and everything
it serves). Lost click logs move every arm at once by the same factor: the judgement's
``all_arms`` scope, which the summary names as a shared (measurement) cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tools.checks._common import (
    Described,
    fmt_time,
    params_of,
    series_evidence,
    subject_name,
    table,
    to_result,
)
from tools.checks._engine import Finding, Judgement, RateTest, SubjectFrame, assess, judge
from tools.histograms import bin_sums, calibration_buckets
from tools.result import CheckResult, Evidence
from tools.stats import Comparison, Direction, compare_rates, poisson_interval
from tools.telemetry import HistogramSpec

__all__ = ["CalibrationParams", "calibration_check", "calibration_interval", "calibration_test"]


@dataclass(frozen=True)
class CalibrationParams:
    """Thresholds of the calibration check.

    Attributes:
        alpha_fail: Family-wise error rate to fail (Holm over arms, Bonferroni over segments).
        alpha_warn: The same, to warn.
        ratio_fail: Calibration ratio change (test ÷ reference) beyond ``[1/r, r]`` that fails.
        ratio_warn: The same, to warn.
        training_tolerance: Allowed |serving ÷ training calibration − 1| before a warn.
        min_clicks: Fewest clicks per side for a verdict.
        buckets: Equal-count prediction buckets in the evidence.
        question_ratio: The calibration change in question (±25 %: predictions that far off
            misprice auctions whatever the alert): ``ok`` only when the sample could have seen a
            change this large, else ``inconclusive``.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    ratio_fail: float = 1.1
    ratio_warn: float = 1.05
    training_tolerance: float = 0.15
    min_clicks: int = 30
    buckets: int = 10
    question_ratio: float = 1.25


def calibration_interval(
    sum_pred: float, clicks: float, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Calibration ``sum_pred / clicks`` with an exact Poisson interval from the click count.

    Returns:
        ``(estimate, low, high)``; NaN estimate without clicks.
    """
    if clicks <= 0:
        return float("nan"), float("nan"), float("inf")
    lo, hi = poisson_interval(clicks, confidence)
    return sum_pred / clicks, sum_pred / hi, (sum_pred / lo if lo > 0 else float("inf"))


def calibration_test(p: CalibrationParams) -> RateTest:
    """The calibration ratio test (test ÷ reference) with the thresholds of ``p``."""

    def compare(t: pd.Series, r: pd.Series, d: Direction) -> Comparison:
        if t["sum_label_v"] < p.min_clicks or r["sum_label_v"] < p.min_clicks:
            return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), 1.0)
        # (r clicks / r pred) / (t clicks / t pred) = calibration(t) / calibration(r).
        return compare_rates(r["sum_label_v"], r["sum_pred"], t["sum_label_v"], t["sum_pred"], d)

    def badness(s: pd.Series) -> float:
        if s["sum_label_v"] <= 0 or s["sum_pred"] <= 0:
            return 0.0
        return abs(float(np.log(s["sum_pred"] / s["sum_label_v"])))

    return RateTest(
        name="calibration",
        compare=compare,
        direction="both",
        null=1.0,
        badness=badness,
        events="sum_label_v",
        exposure="sum_pred",
        rate_direction="both",
        magnitude=lambda x: abs(float(np.log(x))) if x > 0 else float("inf"),
        fail_effect=float(np.log(p.ratio_fail)),
        warn_effect=float(np.log(p.ratio_warn)),
        unit="ratio",
        min_n=200,
        expected_sums=_expected,
        rate_sign=-1,
    )


def _expected(calibration: float) -> pd.Series:
    # A reference with so many clicks that its noise vanishes: the test arm's own counts decide.
    clicks = 1e12
    return pd.Series({"n": clicks, "sum_label_v": clicks, "sum_pred": clicks * calibration})


def _describe(f: Finding, frame: SubjectFrame) -> str:
    c = f.comparand
    t = frame.sums(c.test, *f.focus)
    r = frame.sums(c.ref, *f.ref_span)
    cal_t = t["sum_pred"] / max(t["sum_label_v"], 1.0)
    cal_r = r["sum_pred"] / max(r["sum_label_v"], 1.0)
    if c.concurrent:
        return (
            f"calibration (Σ prediction ÷ Σ label) of {subject_name(frame)}: arm {c.test} "
            f"{cal_t:.2f} vs {c.ref} {cal_r:.2f}"
        )
    who = f"arm {c.test} of " if frame.control is not None else ""
    if c.expected is not None:
        return (
            f"calibration (Σ prediction ÷ Σ label) of {who}{subject_name(frame)} is {cal_t:.2f} "
            f"against its training calibration {c.expected:.2f}"
        )
    return (
        f"calibration of {who}{subject_name(frame)} moved to {cal_t:.2f} from {cal_r:.2f} "
        f"before {fmt_time(f.ref_span[1])}"
    )


@dataclass(frozen=True)
class Movement:
    """Which side of Σ prediction ÷ Σ label moved: the predictions or the logged clicks.

    A miscalibrated model moves its predictions while the clicks per request hold; lost click logs
    move the clicks while the predictions hold. Both changes are log ratios of the finding's
    window against its reference: the same minutes of the control arm, differenced against the
    minutes before (so a seasonal drift shared by both arms cancels), or the subject's own
    minutes before the finding.

    Attributes:
        prediction: Change of the mean prediction (log ratio).
        ctr: Change of the logged clicks per scored request (log ratio).
        moved: ``predictions``, ``clicks`` or ``unclear`` (neither dominates).
    """

    prediction: float
    ctr: float
    moved: str


def _log_levels(s: pd.Series) -> tuple[float, float]:
    n = float(s["n_pred"])
    if n <= 0 or s["sum_pred"] <= 0 or s["sum_label_v"] <= 0:
        return float("nan"), float("nan")
    return float(np.log(s["sum_pred"] / n)), float(np.log(s["sum_label_v"] / n))


def movement(frame: SubjectFrame, f: Finding, dominance: float = 2.0) -> Movement | None:
    """Split a calibration finding into its prediction and click changes (see :class:`Movement`).

    Args:
        frame: The subject (or the slice the finding was located in).
        f: The calibration finding.
        dominance: How many times larger one side's change must be to be named the mover.

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
    moved = "unclear"
    if abs(d_pred) >= dominance * abs(d_ctr):
        moved = "predictions"
    elif abs(d_ctr) >= dominance * abs(d_pred):
        moved = "clicks"
    return Movement(prediction=d_pred, ctr=d_ctr, moved=moved)


def _with_movement(result: CheckResult, frame: SubjectFrame, f: Finding) -> CheckResult:
    shown = frame.slice(result.where) if result.where else frame
    m = movement(shown, f)
    if m is None:
        return result
    words = {
        "predictions": "the predictions moved, the logged clicks per request held",
        "clicks": "the logged clicks per request moved, the predictions held",
        "unclear": "predictions and logged clicks both moved",
    }[m.moved]
    detail = (
        f" Mean prediction {np.expm1(m.prediction):+.0%}, clicks per request "
        f"{np.expm1(m.ctr):+.0%}: {words}."
    )
    params = {
        **result.params,
        "moved": m.moved,
        "prediction_change": round(float(np.expm1(m.prediction)), 4),
        "ctr_change": round(float(np.expm1(m.ctr)), 4),
    }
    return result.model_copy(update={"summary": result.summary + detail, "params": params})


def _shared_label_loss(
    result: CheckResult, judgement: Judgement, p: CalibrationParams
) -> CheckResult:
    """Every arm's clicks fell at once, predictions held: a failure, though not the experiment's.

    The engine keeps a shift of every arm at a warning so that it never blames the experiment;
    when it is significant at ``alpha_fail``, material, and the logged clicks (not the
    predictions) moved, it is strong evidence of lost click logs and fails as such. The result
    names no arm, so no experiment cause can cite it (their signals need a non-control arm).
    """
    f = judgement.finding
    if (
        judgement.scope != "all_arms"
        or result.params.get("moved") != "clicks"
        or f is None
        or not f.significant(p.alpha_fail, f.test.fail_effect)
    ):
        return result
    return result.model_copy(
        update={
            "verdict": "fail",
            "arm": None,
            "summary": result.summary
            + " Every arm lost clicks together: a measurement fault, not this experiment's.",
        }
    )


def _arm_calibration(
    frame: SubjectFrame, training: Mapping[str, float], tolerance: float
) -> tuple[Evidence, list[str]]:
    w = frame.window
    rows, off = [], []
    for arm in frame.arms:
        s = frame.sums(arm, w.start, w.end)
        est, lo, hi = calibration_interval(float(s["sum_pred"]), float(s["sum_label_v"]))
        expected = training.get(arm, float("nan"))
        rows.append(
            {
                "arm": arm,
                "clicks": float(s["sum_label_v"]),
                "calibration": est,
                "ci_low": lo,
                "ci_high": hi,
                "training_calibration": expected,
            }
        )
        # Off only when the whole interval sits outside the tolerance band.
        known = np.isfinite(expected) and expected > 0 and np.isfinite(est)
        if known and (lo > expected * (1 + tolerance) or hi < expected * (1 - tolerance)):
            off.append(arm)
    return table("calibration per arm (window)", pd.DataFrame(rows)), off


def _bucket_evidence(
    frame: SubjectFrame, hist: pd.DataFrame, spec: HistogramSpec, block_minutes: int, k: int
) -> Evidence:
    w = frame.window
    first = (w.start - w.fetch_start) // block_minutes
    last = -(-(w.end - w.fetch_start) // block_minutes)
    parts = []
    for arm in frame.arms:
        binned = bin_sums(hist, arm, range(first, last), spec.n_bins)
        buckets = calibration_buckets(binned, k)
        buckets.insert(0, "arm", arm)
        parts.append(buckets)
    frame_ = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return table("calibration by equal-count prediction bucket", frame_)


def calibration_check(
    frame: SubjectFrame,
    *,
    hist: pd.DataFrame | None = None,
    histogram: HistogramSpec | None = None,
    block_minutes: int = 1,
    training: Mapping[str, float] | None = None,
    params: CalibrationParams | None = None,
) -> CheckResult:
    """Calibration per arm vs control, vs its own baseline and vs training, with bucket evidence.

    Args:
        frame: The subject's wide aggregate.
        hist: The subject's prediction histogram (for equal-count buckets), if fetched.
        histogram: The histogram's bins.
        block_minutes: The histogram's time block.
        training: Expected calibration per arm (``training_calibration`` of the served model).
        params: Thresholds.

    Returns:
        ``fail`` when an arm's calibration departs from control (or all arms from their baseline
        at once) beyond ``ratio_fail`` with significance; ``warn`` on smaller departures or a
        serving calibration outside the training tolerance.
    """
    p = params or CalibrationParams()
    test = calibration_test(p)
    expected = {arm: (training or {}).get(arm, 1.0) for arm in frame.arms}
    findings = [assess(frame, c, test) for c in frame.comparands(expected)]
    judgement = judge(
        findings, control=frame.control, alpha_fail=p.alpha_fail, alpha_warn=p.alpha_warn
    )
    per_arm, off = _arm_calibration(frame, training or {}, p.training_tolerance)
    evidence = [per_arm, series_evidence(frame, "calibration")]
    if hist is not None and histogram is not None and len(hist):
        evidence.append(_bucket_evidence(frame, hist, histogram, block_minutes, p.buckets))
    result = to_result(
        "calibration",
        judgement,
        frame,
        Described("calibration ratio (test ÷ reference)", "ratio", 1.0, _describe),
        params_of(p, question_effect=float(np.log(p.question_ratio))),
        evidence,
        ok_summary=f"Calibration of {subject_name(frame)} is steady.",
    )
    if result.verdict in ("fail", "warn") and judgement.finding is not None:
        result = _with_movement(result, frame, judgement.finding)
        result = _shared_label_loss(result, judgement, p)
    if result.verdict == "ok" and off:
        return result.model_copy(
            update={
                "verdict": "warn",
                "arm": off[0] if len(off) == 1 else None,
                "summary": (
                    f"Calibration of {subject_name(frame)} is steady but outside the training "
                    f"calibration ±{p.training_tolerance:.0%} in arm(s) {', '.join(off)}."
                ),
            }
        )
    return result
