"""Calibration check: Σ prediction ÷ Σ label per arm, against control, own baseline and training.

A miscalibrated model moves its own arm (or, for a production model, the control and everything
it serves). Lost click logs move every arm at once by the same factor: the judgement's
``all_arms`` scope, which the summary names as a shared (measurement) cause.

A fault confined to one dimension value (lost click logs on one ad type, a miscalibration in one
country) is diluted over the whole subject; when the whole looks steady, the family is run again
slice by slice (:mod:`tools.checks._slices`, Bonferroni over the slices). Every finding says
which side of the ratio moved (:class:`Movement`): the predictions (a model fault) or the logged
clicks per request (a measurement fault); that is the evidence that rules the rival out.
"""

from __future__ import annotations

import functools
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
from tools.checks._engine import (
    Finding,
    Judgement,
    RateTest,
    SubjectFrame,
    SumsLike,
    assess,
)
from tools.checks._frame import Sums
from tools.checks._hist import hist_arrays
from tools.checks._movement import movement
from tools.checks._slices import diluted_note, judge_with_slices
from tools.histograms import calibration_buckets
from tools.result import CheckResult, Evidence
from tools.stats import Comparison, Direction, compare_rates, least_events, poisson_interval
from tools.telemetry import HistogramSpec, to_datetime, to_minute

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
        min_clicks: Fewest clicks per side for a verdict, logged or expected from the side's
            predictions at the pooled rate, whichever is more (clicks a fault lost still count,
            and so do predictions it shrank: :func:`~tools.stats.least_events`).
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

    def compare(t: SumsLike, r: SumsLike, d: Direction) -> Comparison:
        tc, tp, rc, rp = t["sum_label_v"], t["sum_pred"], r["sum_label_v"], r["sum_pred"]
        if least_events(tc, tp, rc, rp) < p.min_clicks:
            return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), 1.0)
        # (r clicks / r pred) / (t clicks / t pred) = calibration(t) / calibration(r).
        return compare_rates(rc, rp, tc, tp, d)

    def badness(s: SumsLike) -> float:
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
        reads=("sum_label_v", "sum_pred"),
    )


@functools.lru_cache(maxsize=64)
def _expected(calibration: float) -> Sums:
    # A reference with so many clicks that its noise vanishes: the test arm's own counts decide.
    # (Read-only, so one per value serves every comparison.)
    clicks = 1e12
    return Sums(("n", "sum_label_v", "sum_pred"), np.array([clicks, clicks, clicks * calibration]))


def _describe(f: Finding, frame: SubjectFrame) -> str:
    c = f.comparand
    t = frame.span(c.test, *f.focus)
    r = frame.span(c.ref, *f.ref_span)
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


def _with_movement(
    result: CheckResult, frame: SubjectFrame, f: Finding, traffic: SubjectFrame | None
) -> CheckResult:
    shown = frame.slice(result.where) if result.where else frame
    if traffic is not None and result.where:
        traffic = traffic.slice(result.where)
    m = movement(shown, f, traffic=traffic)
    if m is None:
        return result
    words = {
        "predictions": "the predictions moved (lost click logs never move a prediction)",
        "clicks": "the logged clicks per request moved, the predictions held",
        "unclear": "the evidence does not separate the predictions from the logged clicks",
    }[m.moved]
    detail = (
        f" Mean prediction {np.expm1(m.prediction):+.0%}, clicks per request {np.expm1(m.ctr):+.0%}"
    )
    if m.step is not None and m.step_ctr is not None:
        detail += (
            f"; the mean prediction's largest step was {np.expm1(m.step):+.0%} at "
            f"{fmt_time(m.step_onset)} (clicks per request {np.expm1(m.step_ctr):+.0%} across it)"
        )
    if m.against_rest is not None and m.rest_calibration is not None:
        detail += (
            f"; against the rest of traffic the predictions moved {np.expm1(m.against_rest):+.0%}"
            f" and its calibration {np.expm1(m.rest_calibration):+.0%}"
        )
    detail += f": {words}."
    params = {
        **result.params,
        "moved": m.moved,
        "prediction_change": round(float(np.expm1(m.prediction)), 4),
        "ctr_change": round(float(np.expm1(m.ctr)), 4),
        "prediction_step": None if m.step is None else round(float(np.expm1(m.step)), 4),
    }
    update: dict[str, object] = {"summary": result.summary + detail, "params": params}
    if m.moved == "predictions" and m.step_carries and m.step_onset is not None and result.onset:
        # The predictions' step dates the shift: thousands of predictions a minute locate it
        # where the ratio over sparse clicks (a night's) may have drifted off by half an hour.
        was = to_minute(result.onset)
        if m.step_onset != was:
            update["onset"] = to_datetime(m.step_onset)
            update["summary"] = str(update["summary"]).replace(
                f"since {fmt_time(was)} UTC", f"since {fmt_time(m.step_onset)} UTC", 1
            )
    return result.model_copy(update=update)


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
        s = frame.span(arm, w.start, w.end)
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
    arrays = hist_arrays(hist, last, spec.n_bins)
    for arm in frame.arms:
        binned = arrays.frame(arm, range(first, last))
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
    traffic: SubjectFrame | None = None,
    params: CalibrationParams | None = None,
) -> CheckResult:
    """Calibration per arm vs control, vs its own baseline and vs training, with bucket evidence.

    Args:
        frame: The subject's wide aggregate.
        hist: The subject's prediction histogram (for equal-count buckets), if fetched.
        histogram: The histogram's bins.
        block_minutes: The histogram's time block.
        training: Expected calibration per arm (``training_calibration`` of the served model).
        traffic: All traffic over the same minutes, for a model subject: the rest of traffic is
            the seasonal reference that tells moved predictions from moved clicks.
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
    judgement, hit = judge_with_slices(
        frame, findings, test, alpha_fail=p.alpha_fail, alpha_warn=p.alpha_warn, min_n=test.min_n
    )
    per_arm, off = _arm_calibration(frame, training or {}, p.training_tolerance)
    evidence = [per_arm, series_evidence(frame, "calibration")]
    if hist is not None and histogram is not None and len(hist):
        evidence.append(_bucket_evidence(frame, hist, histogram, block_minutes, p.buckets))
    shown, used = (hit.frame, hit.judgement) if hit is not None else (frame, judgement)
    result = to_result(
        "calibration",
        used,
        shown,
        Described("calibration ratio (test ÷ reference)", "ratio", 1.0, _describe),
        params_of(p, question_effect=float(np.log(p.question_ratio))),
        evidence,
        ok_summary=f"Calibration of {subject_name(frame)} is steady.",
    )
    if result.verdict in ("fail", "warn") and used.finding is not None:
        seen = traffic.slice(hit.where) if traffic is not None and hit is not None else traffic
        result = _with_movement(result, shown, used.finding, seen)
        result = _shared_label_loss(result, used, p)
        if hit is not None:
            result = result.model_copy(
                update={
                    "where": {**hit.where, **result.where},
                    "summary": result.summary + diluted_note(hit.where, hit.slices),
                }
            )
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
