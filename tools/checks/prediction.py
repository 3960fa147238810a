"""Prediction check: invalid predictions, collapse (variance drop, a stuck constant), shift.

Invalid predictions (NULL/NaN, outside [0, 1]) and a collapse fail; a distribution shift against
control or the baseline only warns, because a new model may legitimately predict differently.
A partial collapse (a share of the requests answered with one constant) is a bin of the histogram
that fills up, scanned over time segments (:mod:`tools.checks._stuck`); a clean result states the
smallest stuck share the window could have shown. Invalid predictions confined to one dimension
value (web only) are scanned slice by slice when the whole subject looks clean
(:mod:`tools.checks._slices`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr

from tools.checks._common import (
    Described,
    arm_table,
    as_verdict,
    fmt_time,
    material_increase,
    params_of,
    reference_rate,
    series_evidence,
    subject_name,
    table,
    to_result,
)
from tools.checks._engine import (
    Comparand,
    Finding,
    RateTest,
    SubjectFrame,
    SumsLike,
    assess,
    judge,
)
from tools.checks._hist import hist_arrays
from tools.checks._slices import diluted_note, judge_with_slices
from tools.checks._stuck import SliceCounts, Stuck, StuckSlice, stuck_mde, stuck_scan, stuck_slices
from tools.checks.fallback import describe_rate, proportion_test
from tools.histograms import PointMass, Shift, point_mass, shift
from tools.result import CheckResult, Effect, Evidence
from tools.stats import Comparison, Direction, epidemic_segment
from tools.telemetry import HistogramSpec, to_datetime

__all__ = ["PredictionParams", "prediction_check"]


@dataclass(frozen=True)
class PredictionParams:
    """Thresholds of the prediction check.

    Attributes:
        alpha_fail: Family-wise error rate to fail.
        alpha_warn: The same, to warn.
        invalid_fail: Increase of the invalid share (absolute) that is always material to fail.
        invalid_warn: The same, to warn.
        invalid_relative: A share this many times its reference is material even below
            ``invalid_fail`` (a healthy model emits no invalid prediction: any rise is a defect).
        invalid_least_fail: The smallest increase of the invalid share ever material to fail
            (0.0002: two requests in ten thousand).
        invalid_least_warn: The same, to warn.
        collapse_ratio_fail: Ratio of the squared coefficient of variation of predictions
            (test ÷ reference) at or below which the check fails.
        collapse_ratio_warn: The same, to warn.
        kurtosis_floor: Smallest kurtosis assumed for the variance test's standard error
            (predictions are skewed; the normal-theory value 3 would overstate significance).
        mass_fail: Growth of one fine bin's share (a constant in part of the predictions) that
            may fail, in any segment of the window's grid (:mod:`tools.checks._stuck`: Bonferroni
            over bins and segments, Holm over comparands).
        mass_warn: The same, to warn.
        mass_ratio: The grown bin must also hold at least this multiple of its reference share.
        ks_max_n: Below this many predictions per side, the shift test is KS; above, PSI.
        psi_warn: PSI at or above which a shift warns (0.2 is the usual "significant shift").
        js_warn: Jensen-Shannon divergence (base 2) at or above which a shift warns.
        min_requests: Fewest requests per side.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    invalid_fail: float = 0.005
    invalid_warn: float = 0.001
    invalid_relative: float = 2.0
    invalid_least_fail: float = 0.0002
    invalid_least_warn: float = 0.0001
    collapse_ratio_fail: float = 0.5
    collapse_ratio_warn: float = 0.75
    kurtosis_floor: float = 10.0
    mass_fail: float = 0.03
    mass_warn: float = 0.015
    mass_ratio: float = 2.0
    ks_max_n: int = 5000
    psi_warn: float = 0.2
    js_warn: float = 0.05
    min_requests: int = 200


def _variance_test(p: PredictionParams, kurtosis: float) -> RateTest:
    """Collapse as a drop of the squared coefficient of variation (variance ÷ mean²).

    Scale-free on purpose: a miscalibrated model (every prediction × c) is not a collapse, while
    predictions stuck at a constant or a model emitting ever-fewer distinct values are.
    """
    k = max(kurtosis, p.kurtosis_floor)

    def cv2(s: SumsLike) -> float:
        n = float(s["n_pred"])
        if n < 2 or s["sum_pred"] <= 0:
            return float("nan")
        m = s["sum_pred"] / n
        return float(max(s["sum_pred2"] / n - m * m, 0.0) * n / (n - 1) / (m * m))

    def compare(t: SumsLike, r: SumsLike, d: Direction) -> Comparison:
        vt, vr = cv2(t), cv2(r)
        if not (vt > 0 and vr > 0):
            return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), 1.0)
        # Standard error of a log variance ratio with heavy tails: (kurtosis - 1) / n per side.
        se = float(np.sqrt((k - 1) * (1 / t["n_pred"] + 1 / r["n_pred"])))
        lr = float(np.log(vt / vr))
        z = lr / se
        # ndtr is what sps.norm.cdf / sf evaluate, without their wrapper.
        if d == "down":
            p_val = float(ndtr(z))
        elif d == "up":
            p_val = float(ndtr(-z))
        else:
            p_val = float(2 * ndtr(-abs(z)))
        return Comparison(
            float(np.exp(lr)),
            float(np.exp(lr - 1.96 * se)),
            float(np.exp(lr + 1.96 * se)),
            z,
            p_val,
        )

    return RateTest(
        name="prediction spread (squared coefficient of variation)",
        compare=compare,
        direction="down",
        null=1.0,
        badness=lambda s: -cv2(s) if np.isfinite(cv2(s)) else 0.0,
        events="sum_pred2",
        exposure="n_pred",
        rate_direction="down",
        magnitude=lambda x: abs(float(np.log(x))) if x > 0 else float("inf"),
        fail_effect=float(-np.log(p.collapse_ratio_fail)),
        warn_effect=float(-np.log(p.collapse_ratio_warn)),
        unit="ratio",
        min_n=p.min_requests,
    )


def _kurtosis(hist: pd.DataFrame | None, spec: HistogramSpec | None) -> float:
    if hist is None or spec is None or not len(hist):
        return 3.0
    by_bin = hist.groupby("bin")[["n", "sum_pred"]].sum()
    n = by_bin["n"].to_numpy(float)
    mean_b = np.divide(by_bin["sum_pred"].to_numpy(float), n, out=np.zeros_like(n), where=n > 0)
    total = n.sum()
    mu = float((n * mean_b).sum() / total)
    m2 = float((n * (mean_b - mu) ** 2).sum() / total)
    m4 = float((n * (mean_b - mu) ** 4).sum() / total)
    return m4 / (m2 * m2) if m2 > 0 else 3.0


@dataclass(frozen=True)
class _Blocked:
    comparand: Comparand
    mass: PointMass | None
    shift: Shift


def _blocks(frame: SubjectFrame, span: tuple[int, int], block_minutes: int) -> range:
    fs = frame.window.fetch_start
    return range((span[0] - fs) // block_minutes, -(-(span[1] - fs) // block_minutes))


def _histogram_tests(
    frame: SubjectFrame,
    hist: pd.DataFrame,
    spec: HistogramSpec,
    block_minutes: int,
    focus: tuple[int, int],
) -> list[_Blocked]:
    w = frame.window
    out = []
    edges = spec.edges()
    arrays = hist_arrays(hist, -(-(w.end - w.fetch_start) // block_minutes), spec.n_bins)
    for comp in frame.comparands():
        t = arrays.frame(comp.test, _blocks(frame, focus, block_minutes))
        ref_span = focus if comp.concurrent else (w.fetch_start, min(w.start, focus[0]))
        if ref_span[1] <= ref_span[0]:
            continue
        r = arrays.frame(comp.ref, _blocks(frame, ref_span, block_minutes))
        if t["n"].sum() < 50 or r["n"].sum() < 50:
            continue
        out.append(_Blocked(comp, point_mass(t, r), shift(t, r, edges)))
    return out


def _mass_verdict(
    frame: SubjectFrame,
    hist: pd.DataFrame | None,
    spec: HistogramSpec | None,
    block_minutes: int,
    p: PredictionParams,
    slices: SliceCounts | None = None,
) -> tuple[str, Stuck | None, StuckSlice | None]:
    """A constant in part of the predictions: the time-scanned bin growth of :mod:`._stuck`,
    and the dimension values it is confined to (read through ``slices``) when one is."""
    if hist is None or spec is None or not len(hist):
        return "ok", None, None
    levels = (("fail", p.alpha_fail, p.mass_fail), ("warn", p.alpha_warn, p.mass_warn))
    level, mass = "ok", None
    for name, alpha, size in levels:
        found = stuck_scan(frame, hist, spec.n_bins, block_minutes, mass=size, ratio=p.mass_ratio)
        hits = [s for s in found if s.adjusted_p < alpha]
        if hits:
            level, mass = name, max(hits, key=lambda s: (s.growth, -s.adjusted_p))
            break
    if slices is None:
        return level, mass, None
    seed = mass
    if seed is None:
        # Immaterial over the whole subject, but significant: a constant in part of one slice.
        found = stuck_scan(frame, hist, spec.n_bins, block_minutes, mass=0.0, ratio=1.0)
        hits = [s for s in found if s.adjusted_p < p.alpha_warn]
        seed = min(hits, key=lambda s: s.adjusted_p) if hits else None
    if seed is None:
        return level, mass, None
    for name, alpha, size in levels:
        if name == "warn" and level == "fail":
            break
        where = stuck_slices(
            frame,
            seed,
            slices,
            spec.n_bins,
            block_minutes,
            mass=size,
            ratio=p.mass_ratio,
            alpha=alpha,
            min_n=p.min_requests,
        )
        if where is not None:
            return name, where.stuck, where
    return level, mass, None


def _shift_warns(b: _Blocked, p: PredictionParams) -> bool:
    s = b.shift
    if min(s.n_test, s.n_ref) < p.ks_max_n:
        return s.ks_p < p.alpha_warn
    return s.psi >= p.psi_warn or s.js >= p.js_warn


def _shift_table(tests: list[_Blocked]) -> Evidence:
    rows = [
        {
            "comparison": b.comparand.label,
            "n_test": b.shift.n_test,
            "n_ref": b.shift.n_ref,
            "ks": b.shift.ks,
            "ks_p": b.shift.ks_p,
            "psi": b.shift.psi,
            "js": b.shift.js,
            "wasserstein_rel": b.shift.wasserstein_rel,
            "top_bin_value": b.mass.value if b.mass else None,
            "top_bin_share_test": b.mass.share_test if b.mass else None,
            "top_bin_share_ref": b.mass.share_ref if b.mass else None,
        }
        for b in tests
    ]
    return table("prediction distribution vs reference", pd.DataFrame(rows))


def prediction_check(
    frame: SubjectFrame,
    *,
    hist: pd.DataFrame | None = None,
    histogram: HistogramSpec | None = None,
    block_minutes: int = 1,
    slices: SliceCounts | None = None,
    params: PredictionParams | None = None,
) -> CheckResult:
    """Invalid predictions, collapse and distribution shift per arm vs control or baseline.

    Args:
        frame: The subject's wide aggregate.
        hist: The subject's prediction histogram (point mass and shift need it).
        histogram: The histogram's bins.
        block_minutes: The histogram's time block.
        slices: Reads the histogram's bin counts per dimension value (a stuck constant's slice);
            without it a stuck constant is judged over the whole subject only.
        params: Thresholds.

    Returns:
        ``fail`` on a material, significant rise of invalid predictions, a variance collapse or a
        prediction stuck at a constant; ``warn`` on smaller ones or a distribution shift.
    """
    p = params or PredictionParams()
    comparands = frame.comparands()
    base_share = reference_rate(frame, "n_invalid", "n_served")
    invalid = proportion_test(
        "invalid prediction share",
        "n_invalid",
        exposure="n_served",
        fail=material_increase(
            base_share, p.invalid_fail, p.invalid_relative, p.invalid_least_fail
        ),
        warn=material_increase(
            base_share, p.invalid_warn, p.invalid_relative, p.invalid_least_warn
        ),
        min_n=p.min_requests,
    )
    variance = _variance_test(p, _kurtosis(hist, histogram))
    # Invalid predictions confined to one platform or ad type are scanned slice by slice when
    # the whole subject looks clean (as fallbacks are: tools.checks._slices).
    j_invalid, invalid_hit = judge_with_slices(
        frame,
        [assess(frame, c, invalid) for c in comparands],
        invalid,
        alpha_fail=p.alpha_fail,
        alpha_warn=p.alpha_warn,
        min_n=p.min_requests,
    )
    if invalid_hit is not None:
        j_invalid = invalid_hit.judgement
    # Spread is compared over time only: two different models legitimately differ in spread.
    j_var = judge(
        [assess(frame, c, variance) for c in comparands if not c.concurrent],
        control=frame.control,
        alpha_fail=p.alpha_fail,
        alpha_warn=p.alpha_warn,
    )
    w = frame.window
    evidence = [
        arm_table(frame, ["invalid_rate"], (w.start, w.end), "invalid predictions per arm"),
        series_evidence(frame, "invalid_rate"),
    ]
    settings = params_of(p, reference_invalid_share=base_share, material_fail=invalid.fail_effect)
    rank = {"fail": 2, "warn": 1}
    best = max((j_invalid, j_var), key=lambda j: rank.get(j.verdict, 0))
    flagged = best.finding is not None and best.verdict in rank
    focus = best.finding.focus if flagged and best.finding else (w.start, w.end)
    blocked: list[_Blocked] = []
    if hist is not None and histogram is not None and len(hist):
        blocked = _histogram_tests(frame, hist, histogram, block_minutes, focus)
        evidence.append(_shift_table(blocked))
    mass_level, mass, mass_where = _mass_verdict(frame, hist, histogram, block_minutes, p, slices)

    def invalid_result() -> CheckResult:
        words = Described(
            "invalid share difference", "pp", 100.0, describe_rate("invalid prediction share")
        )
        if invalid_hit is None:
            return to_result(
                "prediction", j_invalid, frame, words, settings, evidence, ok_summary=""
            )
        hit = invalid_hit
        result = to_result(
            "prediction", j_invalid, hit.frame, words, settings, evidence, ok_summary=""
        )
        return result.model_copy(
            update={
                "where": {**hit.where, **result.where},
                "summary": result.summary + diluted_note(hit.where, hit.slices),
            }
        )

    def variance_result() -> CheckResult:
        words = Described("prediction variance ratio", "ratio", 1.0, _describe_variance)
        return to_result("prediction", j_var, frame, words, settings, evidence, ok_summary="")

    def mass_result() -> CheckResult:
        assert mass is not None and hist is not None
        onset = _mass_onset(frame, hist, mass, block_minutes)
        return _mass_result(frame, mass, mass_level, onset, evidence, settings, mass_where)

    # Highest verdict wins; on a tie invalid predictions, then a stuck constant, then variance.
    options: list[tuple[int, int, Callable[[], CheckResult]]] = []
    if j_invalid.verdict in rank:
        options.append((rank[j_invalid.verdict], 3, invalid_result))
    if mass_level in rank and mass is not None:
        options.append((rank[mass_level], 2, mass_result))
    if j_var.verdict in rank:
        options.append((rank[j_var.verdict], 1, variance_result))
    if options:
        return max(options, key=lambda o: (o[0], o[1]))[2]()
    shifted = [b for b in blocked if _shift_warns(b, p)]
    if shifted:
        return _shift_result(frame, max(shifted, key=lambda x: x.shift.psi), evidence, settings)
    base = j_invalid if j_invalid.verdict != "no_data" else j_var
    result = to_result(
        "prediction",
        base,
        frame,
        Described("invalid share difference", "pp", 100.0),
        settings,
        evidence,
        ok_summary=f"Predictions of {subject_name(frame)} are valid, varied and stable.",
    )
    if result.verdict not in ("ok", "inconclusive") or hist is None or histogram is None:
        return result
    mde = stuck_mde(
        frame,
        hist,
        histogram.n_bins,
        block_minutes,
        alpha=p.alpha_fail,
        mass=p.mass_fail,
        ratio=p.mass_ratio,
    )
    if mde is None:
        return result
    return result.model_copy(
        update={
            "summary": f"{result.summary} A constant in {mde:.1%} of the predictions or more "
            "would have shown.",
            "params": {**result.params, "stuck_share_mde": round(mde, 4)},
        }
    )


def _describe_variance(f: Finding, frame: SubjectFrame) -> str:
    c = f.comparand
    ratio = f.comparison.estimate
    who = f"arm {c.test} of " if frame.control is not None else ""
    ref = c.ref if c.concurrent else "its baseline"
    return f"prediction variance of {who}{subject_name(frame)} collapsed to {ratio:.0%} of {ref}'s"


def _mass_result(
    frame: SubjectFrame,
    m: Stuck,
    level: str,
    onset: int | None,
    evidence: list[Evidence],
    params: dict[str, Any],
    located: StuckSlice | None = None,
) -> CheckResult:
    comp = m.comparand
    who = f"arm {comp.test} of " if frame.control is not None else ""
    ref = comp.ref if comp.concurrent else "its baseline"
    stuck = m.growth / max(1 - m.share_ref, 1e-9)
    where = located.where if located is not None else {}
    on = ", ".join(f"{d}={v}" for d, v in where.items())
    there = f" on {on}" if on else ""
    confined = (
        f" Confined to {on} (one of {located.slices} slices tested, Bonferroni)."
        if located is not None
        else ""
    )
    return CheckResult(
        check="prediction",
        verdict=as_verdict(level),
        where=where,
        summary=(
            f"Predictions of {who}{subject_name(frame)} are partly stuck at a constant: "
            f"{m.share_test:.1%}{there} fall in one bin around {m.value:.4g} (vs "
            f"{m.share_ref:.1%} in {ref}) from {fmt_time(m.span[0])} to {fmt_time(m.span[1])} "
            f"UTC, about {stuck:.1%} of the predictions{there}.{confined}"
        ),
        effect=Effect(
            name="share in the most grown prediction bin (test − reference)",
            estimate=100 * m.growth,
            unit="pp",
        ),
        p_value=m.adjusted_p,
        onset=to_datetime(onset) if onset is not None else None,
        experiment=frame.subject.experiment_id,
        arm=comp.test if frame.control is not None else None,
        evidence=evidence,
        params=params,
    )


def _mass_onset(
    frame: SubjectFrame, hist: pd.DataFrame, mass: Stuck, block_minutes: int
) -> int | None:
    """When the stuck bin started filling: an epidemic change in its share, block by block."""
    rows = hist[hist["arm"] == mass.comparand.test]
    per_block = rows.groupby("block")["n"].sum()
    in_bin = rows[rows["bin"] == mass.bin].groupby("block")["n"].sum()
    w = frame.window
    blocks = range(0, -(-(w.end - w.fetch_start) // block_minutes))
    totals = per_block.reindex(blocks, fill_value=0.0).to_numpy(float)
    counts = in_bin.reindex(blocks, fill_value=0.0).to_numpy(float)
    into_window = (w.start - w.fetch_start) // block_minutes + 1
    seg = epidemic_segment(counts, totals, "up", min_len=1, min_end=into_window)
    return None if seg is None else w.fetch_start + seg[0] * block_minutes


def _shift_result(
    frame: SubjectFrame, b: _Blocked, evidence: list[Evidence], params: dict[str, Any]
) -> CheckResult:
    return CheckResult(
        check="prediction",
        verdict="warn",
        summary=(
            f"Prediction distribution of {subject_name(frame)} shifted ({b.comparand.label}: "
            f"PSI {b.shift.psi:.2f}, JS {b.shift.js:.3f}, KS {b.shift.ks:.3f}); "
            f"predictions are valid and not collapsed."
        ),
        effect=Effect(name="population stability index", estimate=b.shift.psi, unit="psi"),
        p_value=b.shift.ks_p,
        experiment=frame.subject.experiment_id,
        arm=b.comparand.test if frame.control is not None else None,
        evidence=evidence,
        params=params,
    )
