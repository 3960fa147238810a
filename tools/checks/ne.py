"""Normalized entropy check (He et al. 2014): mean log loss ÷ entropy of the background CTR.

Serving NE per arm is compared with the control arm (or the subject's own baseline) and with the
served model's ``training_ne``. Predictions are clamped to [1e-12, 1 − 1e-12] in the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tools.checks._common import (
    Described,
    arm_table,
    as_verdict,
    fmt_p,
    fmt_time,
    params_of,
    series_evidence,
    subject_name,
    table,
    to_result,
)
from tools.checks._engine import Finding, RateTest, SubjectFrame, SumsLike, assess, judge
from tools.checks._reliability import (
    SlopeFinding,
    rescaled_slope,
    slope_findings,
    slope_ratio,
)
from tools.result import CheckResult, Effect, Evidence
from tools.stats import Comparison, Direction, binary_entropy, compare_means, epidemic_segment
from tools.telemetry import HistogramSpec, to_datetime

__all__ = ["NEParams", "ne_check", "ne_test", "normalized_entropy"]


@dataclass(frozen=True)
class NEParams:
    """Thresholds of the NE check.

    Attributes:
        alpha_fail: Family-wise error rate to fail.
        alpha_warn: The same, to warn.
        rel_increase_fail: Relative NE increase over the reference (0.03 = +3 %) that may fail.
        rel_increase_warn: The same, to warn.
        training_tolerance: Relative gap to ``training_ne`` above which a steady NE still warns.
        question_increase: The NE rise in question (+20 %, a model no better than a much weaker
            one): a steady NE is ``ok`` only when the sample could have seen a rise this large.
        min_requests: Fewest requests with a valid prediction per side.
        min_clicks: Fewest clicks per side (the background entropy needs some).
        slope_drop_fail: Relative drop of the reliability slope (0.15 = 15 %) that may fail.
        slope_drop_warn: The same, to warn.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    rel_increase_fail: float = 0.03
    rel_increase_warn: float = 0.015
    training_tolerance: float = 0.15
    question_increase: float = 0.2
    min_requests: int = 500
    min_clicks: int = 20
    slope_drop_fail: float = 0.15
    slope_drop_warn: float = 0.08


def normalized_entropy(sum_ll: float, n: float, clicks: float) -> float:
    """NE = (sum_ll / n) ÷ H(clicks / n); NaN when undefined (no requests, no clicks)."""
    if n <= 0:
        return float("nan")
    h = binary_entropy(clicks / n)
    return float(sum_ll / n / h) if np.isfinite(h) and h > 0 else float("nan")


def _entropy_of(s: SumsLike) -> float:
    n = float(s["n_ll"])
    return binary_entropy(float(s["sum_label_v"]) / n) if n > 0 else float("nan")


def ne_test(p: NEParams) -> RateTest:
    """The relative NE change test with the thresholds of ``p``."""

    def compare(t: SumsLike, r: SumsLike, d: Direction) -> Comparison:
        if min(t["sum_label_v"], r["sum_label_v"]) < p.min_clicks:
            return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), 1.0)
        ht, hr = _entropy_of(t), _entropy_of(r)
        if not (ht > 0 and hr > 0):
            return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), 1.0)
        c = compare_means(
            t["sum_ll"],
            t["sum_ll2"],
            t["n_ll"],
            r["sum_ll"],
            r["sum_ll2"],
            r["n_ll"],
            d,
            scale1=1 / ht,
            scale0=1 / hr,
        )
        ne_r = float(r["sum_ll"] / r["n_ll"] / hr)
        # Relative change of NE: the interval scales with the reference NE.
        return Comparison(c.estimate / ne_r, c.ci_low / ne_r, c.ci_high / ne_r, c.z, c.p_value)

    def badness(s: SumsLike) -> float:
        return normalized_entropy(float(s["sum_ll"]), float(s["n_ll"]), float(s["sum_label_v"]))

    return RateTest(
        name="normalized entropy",
        compare=compare,
        direction="up",
        null=0.0,
        badness=badness,
        events="sum_ll",
        exposure="n_ll",
        rate_direction="up",
        magnitude=abs,
        fail_effect=p.rel_increase_fail,
        warn_effect=p.rel_increase_warn,
        unit="%",
        min_n=p.min_requests,
        reads=("sum_label_v", "n_ll", "sum_ll", "sum_ll2"),
    )


def _describe(f: Finding, frame: SubjectFrame) -> str:
    c = f.comparand
    t = frame.span(c.test, *f.focus)
    r = frame.span(c.ref, *f.ref_span)
    ne_t = normalized_entropy(float(t["sum_ll"]), float(t["n_ll"]), float(t["sum_label_v"]))
    ne_r = normalized_entropy(float(r["sum_ll"]), float(r["n_ll"]), float(r["sum_label_v"]))
    if c.concurrent:
        return f"NE of {subject_name(frame)}: arm {c.test} {ne_t:.3f} vs {c.ref} {ne_r:.3f}"
    who = f"arm {c.test} of " if frame.control is not None else ""
    return (
        f"NE of {who}{subject_name(frame)} rose to {ne_t:.3f} from {ne_r:.3f} "
        f"before {fmt_time(f.ref_span[1])}"
    )


def _training_table(
    frame: SubjectFrame, training: Mapping[str, float], tolerance: float
) -> tuple[Evidence, list[str]]:
    w = frame.window
    rows, off = [], []
    for arm in frame.arms:
        s = frame.span(arm, w.start, w.end)
        ne = normalized_entropy(float(s["sum_ll"]), float(s["n_ll"]), float(s["sum_label_v"]))
        train = training.get(arm, float("nan"))
        gap = ne / train - 1 if np.isfinite(train) and train > 0 else float("nan")
        rows.append({"arm": arm, "serving_ne": ne, "training_ne": train, "gap": gap})
        if np.isfinite(gap) and gap > tolerance:
            off.append(arm)
    return table("serving vs training NE (window)", pd.DataFrame(rows)), off


def _drop(f: SlopeFinding) -> float:
    ratio = f.ratio if f.culprit == f.comparand.test else 1 / f.ratio if f.ratio > 0 else 0.0
    return 1 - ratio if np.isfinite(ratio) else 0.0


def _slope_result(
    findings: list[SlopeFinding], frame: SubjectFrame, p: NEParams
) -> tuple[str, SlopeFinding | None, str, bool]:
    """Verdict, finding and scope of the reliability-slope findings (rules as for rates), and
    whether the culprit is the control arm alone leaving its own baseline (``control_moved``:
    else a gap whose worse side is the control is a sharper test arm)."""
    control = frame.control
    for level, alpha, size in (
        ("fail", p.alpha_fail, p.slope_drop_fail),
        ("warn", p.alpha_warn, p.slope_drop_warn),
    ):
        hits = [f for f in findings if f.culprit and f.adjusted_p < alpha and _drop(f) >= size]
        rel = [f for f in hits if f.comparand.concurrent]
        own = {f.comparand.test for f in hits if not f.comparand.concurrent}
        if rel:
            top = min(rel, key=lambda f: f.adjusted_p)
            alone = control is not None and top.culprit == control and own == {control}
            return level, top, "arm", alone
        if hits:
            top = min(hits, key=lambda f: f.adjusted_p)
            if control is None:
                return level, top, "subject", False
            arms = {f.comparand.test for f in findings if not f.comparand.concurrent}
            if len(arms) > 1 and own == arms:
                return "warn", top, "all_arms", False
            if own == {top.comparand.test}:
                return level, top, "arm", own == {control}
            return "warn", top, "arm", False
    return "ok", None, "none", False


def _describe_slope(f: SlopeFinding, frame: SubjectFrame, scope: str) -> str:
    c = f.comparand
    culprit = f.culprit or c.test
    low, high = (f.test, f.ref) if culprit == c.test else (f.ref, f.test)
    other = (c.ref if culprit == c.test else c.test) if c.concurrent else "its baseline"
    who = f"arm {culprit} of " if frame.control is not None and scope != "all_arms" else ""
    text = (
        f"Predictions of {who}{subject_name(frame)} became over-confident (a noisier model): "
        f"reliability slope {low.slope:.2f} vs {high.slope:.2f} in {other}"
    )
    if scope == "all_arms":
        text += ", in every arm at once (a shared cause rather than one arm)"
    return text + f" since {fmt_time(f.onset)} UTC ({fmt_p(f.adjusted_p)})."


def ne_check(
    frame: SubjectFrame,
    *,
    training: Mapping[str, float] | None = None,
    hist: pd.DataFrame | None = None,
    histogram: HistogramSpec | None = None,
    block_minutes: int = 1,
    params: NEParams | None = None,
) -> CheckResult:
    """Serving NE per arm vs control (or own baseline) and vs training NE, and its sharpness.

    NE itself needs very many clicks to move significantly; its refinement half — the logistic
    reliability slope fitted on the prediction histogram — sees a noisier model much sooner, so
    the check also fails when that slope drops materially and significantly.

    Args:
        frame: The subject's wide aggregate.
        training: ``training_ne`` of the model each arm serves.
        hist: The subject's prediction histogram (for the reliability slope), if fetched.
        histogram: The histogram's bins.
        block_minutes: The histogram's time block.
        params: Thresholds.

    Returns:
        ``fail`` when an arm's NE rises by at least ``rel_increase_fail`` or its reliability slope
        falls by at least ``slope_drop_fail`` over its reference, significantly; ``warn`` for
        smaller changes or a serving NE far above the training NE.
    """
    p = params or NEParams()
    test = ne_test(p)
    findings = [assess(frame, c, test) for c in frame.comparands()]
    judgement = judge(
        findings, control=frame.control, alpha_fail=p.alpha_fail, alpha_warn=p.alpha_warn
    )
    w = frame.window
    train_table, off = _training_table(frame, training or {}, p.training_tolerance)
    evidence = [
        arm_table(frame, ["ne", "ctr"], (w.start, w.end), "NE per arm"),
        train_table,
        series_evidence(frame, "ne"),
    ]
    slopes: list[SlopeFinding] = []
    if hist is not None and histogram is not None and len(hist):
        slopes = slope_findings(frame, hist, histogram, block_minutes)
        evidence.append(_slope_table(slopes))
    result = to_result(
        "ne",
        judgement,
        frame,
        Described("relative NE change", "%", 100.0, _describe),
        params_of(p, question_effect=p.question_increase),
        evidence,
        ok_summary=f"NE of {subject_name(frame)} is steady.",
    )
    rank = {"fail": 2, "warn": 1, "ok": 0, "inconclusive": 0, "no_data": -1}
    level, top, scope, control_moved = _slope_result(slopes, frame, p)
    # The slope speaks first at equal verdicts: it is the sharper test and locates the onset.
    if top is not None and rank[level] >= max(rank[result.verdict], 1):
        assert hist is not None and histogram is not None  # a slope finding is fitted on them
        culprit = top.culprit if scope != "all_arms" else None
        return CheckResult(
            check="ne",
            verdict=as_verdict(level),
            summary=_describe_slope(top, frame, scope),
            effect=Effect(
                name="reliability slope ratio (test ÷ reference)",
                estimate=top.ratio,
                unit="ratio",
            ),
            p_value=top.adjusted_p,
            onset=to_datetime(top.onset) if top.onset is not None else None,
            experiment=frame.subject.experiment_id,
            arm=culprit if frame.control is not None else None,
            evidence=evidence,
            params={
                **params_of(p),
                "scope": scope,
                "beyond_rescaling": _beyond_rescaling(top, frame, hist, histogram, block_minutes),
                **({"control_moved": True} if control_moved else {}),
            },
        )
    if result.verdict == "ok" and off:
        return result.model_copy(
            update={
                "verdict": "warn",
                "arm": off[0] if len(off) == 1 else None,
                "summary": (
                    f"NE of {subject_name(frame)} is steady but more than "
                    f"{p.training_tolerance:.0%} above training NE in arm(s) {', '.join(off)}."
                ),
            }
        )
    return result


def _beyond_rescaling(
    f: SlopeFinding,
    frame: SubjectFrame,
    hist: pd.DataFrame,
    spec: HistogramSpec,
    block: int,
    min_clicks: float = 100.0,
) -> bool:
    """Whether the slope fell more than a rescaling of the predictions could make it fall.

    Multiplying every prediction by ``c`` (a miscalibration) keeps the ranking: at click rates
    well below 1/c the logistic reliability slope moves by a factor ``(1 − c·p)/(1 − p)``, far
    less than ``c`` itself. Extra noise (a worse model) flattens the slope first and drags the
    calibration along only a little. So when ``|log slope ratio|`` exceeds ``|log calibration
    ratio|``, the slope's fall is the primary change: a noisier model.

    Both are compared over the slope's focus and again over its later half and quarter (those
    with ``min_clicks`` in the test group), and the slope must win on each: a rescaling that
    began inside the focus mixes scaled and unscaled minutes, whose pooled slope falls about as
    much as the pooled calibration moves, while after its onset the calibration has moved by
    the whole factor and the slope hardly at all. A noisier model is noisier on every stretch.
    Where the later stretches hold too few clicks to fit, the mean prediction (every request
    carries one) still shows such a rescaling: a step beginning inside the focus at least as
    large as the slope's fall means the fall may be the mixture's, not a noisier model's.
    """
    c = f.comparand
    w = frame.window
    a, b = f.focus
    ref_before = (w.fetch_start, min(w.start, a))

    def calibration_move(span: tuple[int, int]) -> float | None:
        t = frame.span(c.test, *span)
        r = frame.span(c.ref, *(span if c.concurrent else ref_before))
        pred_t, clicks_t = float(t["sum_pred"]), float(t["sum_label_v"])
        pred_r, clicks_r = float(r["sum_pred"]), float(r["sum_label_v"])
        if min(pred_t, clicks_t, pred_r, clicks_r) <= 0:
            return None
        return abs(float(np.log((pred_t / clicks_t) / (pred_r / clicks_r))))

    shift = calibration_move(f.focus)
    if shift is None or not (np.isfinite(f.ratio) and f.ratio > 0):
        return False
    if abs(float(np.log(f.ratio))) <= shift:
        return False
    for start in (b - (b - a) // 2, b - (b - a) // 4):
        if float(frame.span(c.test, start, b)["sum_label_v"]) < min_clicks:
            continue
        moved = calibration_move((start, b))
        ratio = slope_ratio(frame, hist, spec, block, c, (start, b))
        if moved is not None and ratio is not None and abs(float(np.log(ratio))) <= moved:
            return False
    # Too few clicks to fit the later stretches: the mean prediction (every request carries
    # one) still shows a rescaling that began inside the focus as a step at least as large as
    # the slope's fall.
    step = _prediction_step(frame, c.test, f.focus)
    if step is not None and step >= abs(float(np.log(f.ratio))):
        return False
    return not _slice_rescaled(f, frame, hist, spec, block)


def _slice_rescaled(
    f: SlopeFinding, frame: SubjectFrame, hist: pd.DataFrame, spec: HistogramSpec, block: int
) -> bool:
    """Whether a rescaling of one dimension value, by its own calibration move over the focus,
    accounts for the test group's slope there: ×2.5 on one country mixes scaled and unscaled
    predictions in every bin of the arm and bends its slope as extra noise would, yet leaves
    the slope inside that country whole.

    Each value's factor is its calibration (Σ prediction ÷ Σ clicks) in the test group against
    the reference's in the same value, its share its part of the test group's predictions; the
    sound slope is the test group's own before the focus (the reference's, if too few clicks).
    The slope over the focus must fall short of the rescaled one by two standard errors.
    """
    c = f.comparand
    w = frame.window
    a, b = f.focus
    ref_span = f.focus if c.concurrent else (w.fetch_start, min(w.start, a))
    sound = (c.test, (w.fetch_start, a))
    if float(frame.span(c.test, *sound[1])["sum_label_v"]) < 100:
        sound = (c.ref, ref_span)
    at = frame.column_at
    n, pred, clicks = at["n_pred"], at["sum_pred"], at["sum_label_v"]
    rescaled: list[tuple[float, float]] = []
    for dim in frame.dims:
        t_values, t = frame.dim_arrays(c.test, a, b, dim)
        r_values, r = frame.dim_arrays(c.ref, *ref_span, dim)
        r_row = {str(v): j for j, v in enumerate(r_values)}
        total = float(t[:, n].sum()) if len(t) else 0.0
        for i, value in enumerate(t_values):
            j = r_row.get(str(value))
            if (
                j is None
                or total <= 0
                or min(t[i, pred], t[i, clicks], r[j, pred], r[j, clicks]) <= 0
            ):
                continue
            share = float(t[i, n]) / total
            if not 0.0 < share < 1.0:
                continue
            factor = float((t[i, pred] / t[i, clicks]) / (r[j, pred] / r[j, clicks]))
            if abs(np.log(factor)) >= _NEGLIGIBLE_RESCALING:
                rescaled.append((share, factor))
    # The most bending first (a share's rescaling bends the slope about as w(1 − w)·log²c).
    rescaled.sort(key=lambda x: -x[0] * (1 - x[0]) * np.log(x[1]) ** 2)
    for share, factor in rescaled:
        found = rescaled_slope(hist, spec, block, w.fetch_start, *sound, share, factor)
        if found is None:
            continue
        base, slope = found
        se = float(np.hypot(f.test.slope_se, base.slope_se * slope / base.slope))
        if f.test.slope > slope - 2.0 * se:
            return True
    return False


_NEGLIGIBLE_RESCALING = 0.05
"""A slice's calibration move (``|log factor|``) too small to bend the slope: 5 % on any share
flattens it by under 0.1 % where the logits spread as little as 0.25 (variance)."""


def _prediction_step(frame: SubjectFrame, arm: str, focus: tuple[int, int]) -> float | None:
    """The largest step of ``arm``'s mean prediction that begins inside ``focus`` (after its
    first minutes), as ``|log(mean after ÷ mean before)|`` over the focus; None without one."""
    w = frame.window
    m = frame.minute_sums(arm)
    pred, n = m["sum_pred"].to_numpy(float), m["n_pred"].to_numpy(float)
    a, b = focus[0] - w.fetch_start, focus[1] - w.fetch_start
    best = None
    for direction in ("up", "down"):
        seg = epidemic_segment(pred[:b], n[:b], direction, min_len=3, min_start=a + 3)
        if seg is None or n[a : seg[0]].sum() <= 0 or n[seg[0] : seg[1]].sum() <= 0:
            continue
        before = pred[a : seg[0]].sum() / n[a : seg[0]].sum()
        after = pred[seg[0] : seg[1]].sum() / n[seg[0] : seg[1]].sum()
        if before > 0 and after > 0:
            size = abs(float(np.log(after / before)))
            best = size if best is None else max(best, size)
    return best


def _slope_table(slopes: list[SlopeFinding]) -> Evidence:
    rows = [
        {
            "comparison": f.comparand.label,
            "slope_test": f.test.slope,
            "slope_ref": f.ref.slope,
            "ratio": f.ratio,
            "clicks_test": f.test.clicks,
            "clicks_ref": f.ref.clicks,
            "p_value": f.adjusted_p,
        }
        for f in slopes
    ]
    return table("reliability slope (logistic calibration) per comparison", pd.DataFrame(rows))
