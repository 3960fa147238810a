"""Fallback check: is an arm (or a model) served by the fallback model more than it should be?

Fallbacks confined to one dimension value (android only) are scanned slice by slice when the
whole subject looks clean (:mod:`tools.checks._slices`). A finding also reports the error rate of
the same requests over the same minutes: a fallback serves the request with the fallback model,
an outage fails it, so an error rate that held is what tells a fallback from an infra outage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tools.checks._common import (
    Described,
    arm_table,
    fmt_time,
    material_increase,
    params_of,
    reference_rate,
    series_evidence,
    subject_name,
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
from tools.checks._slices import diluted_note, judge_with_slices
from tools.result import CheckResult
from tools.stats import Comparison, Direction, compare_proportions

__all__ = ["FallbackParams", "describe_rate", "fallback_check", "proportion_test"]


@dataclass(frozen=True)
class FallbackParams:
    """Thresholds of the fallback check.

    Attributes:
        alpha_fail: Family-wise error rate (Holm over arms, Bonferroni over time segments) to fail.
        alpha_warn: The same, to warn.
        min_increase_fail: Fallback-rate increase (absolute, 0.01 = 1 pp) that is always
            material enough to fail.
        min_increase_warn: The same, to warn.
        relative_fail: A rate this many times its reference (control, else its own baseline) is
            material to fail even below ``min_increase_fail`` (a doubling: fallbacks are rare,
            0.1 % of requests, so 1 pp would be ten times the normal rate).
        relative_warn: The same, to warn.
        least_increase_fail: The smallest increase ever material to fail (0.0002: two requests
            in ten thousand).
        least_increase_warn: The same, to warn.
        min_requests: Fewest requests per side for a verdict.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    min_increase_fail: float = 0.01
    min_increase_warn: float = 0.003
    relative_fail: float = 2.0
    relative_warn: float = 1.5
    least_increase_fail: float = 0.0002
    least_increase_warn: float = 0.0001
    min_requests: int = 200


def proportion_test(
    name: str,
    events: str,
    *,
    fail: float,
    warn: float,
    min_n: float,
    exposure: str = "n",
    direction: Direction = "up",
) -> RateTest:
    """A :class:`RateTest` on the proportion ``events / exposure`` (two-proportion z test)."""

    def compare(t: SumsLike, r: SumsLike, d: Direction) -> Comparison:
        return compare_proportions(t[events], t[exposure], r[events], r[exposure], d)

    def badness(s: SumsLike) -> float:
        rate = float(s[events] / s[exposure]) if s[exposure] > 0 else 0.0
        return rate if direction == "up" else -rate

    return RateTest(
        name=name,
        compare=compare,
        direction=direction,
        null=0.0,
        badness=badness,
        events=events,
        exposure=exposure,
        rate_direction=direction,
        magnitude=abs,
        fail_effect=fail,
        warn_effect=warn,
        unit="pp",
        min_n=min_n,
        reads=(events, exposure),
    )


def describe_rate(metric: str) -> Callable[[Finding, SubjectFrame], str]:
    """Words for a proportion finding: the two rates side by side."""

    def describe(f: Finding, frame: SubjectFrame) -> str:
        c = f.comparand
        t = frame.span(c.test, *f.focus)
        r = frame.span(c.ref, *f.ref_span)
        rate_t = t[f.test.events] / max(t[f.test.exposure], 1.0)
        rate_r = r[f.test.events] / max(r[f.test.exposure], 1.0)
        if c.concurrent:
            return (
                f"{metric} of {subject_name(frame)}: arm {c.test} {rate_t:.2%} "
                f"vs {c.ref} {rate_r:.2%}"
            )
        where = f"arm {c.test} of " if frame.control is not None else ""
        return (
            f"{metric} of {where}{subject_name(frame)} rose to {rate_t:.2%} from "
            f"{rate_r:.2%} before {fmt_time(f.ref_span[1])}"
        )

    return describe


def fallback_check(frame: SubjectFrame, params: FallbackParams | None = None) -> CheckResult:
    """Fallback rate per arm vs control (and vs each arm's own baseline), two-proportion test.

    Args:
        frame: The subject's wide aggregate (an experiment, a model, or all traffic).
        params: Thresholds.

    Returns:
        ``fail`` when an arm (or the model) falls back significantly and materially more than its
        reference, with the onset, the arm and the dimension values it is confined to.
    """
    p = params or FallbackParams()
    base = reference_rate(frame, "n_fallback")
    test = proportion_test(
        "fallback rate",
        "n_fallback",
        fail=material_increase(base, p.min_increase_fail, p.relative_fail, p.least_increase_fail),
        warn=material_increase(base, p.min_increase_warn, p.relative_warn, p.least_increase_warn),
        min_n=p.min_requests,
    )
    comparands = frame.comparands()
    findings = [assess(frame, c, test) for c in comparands]
    judgement, hit = judge_with_slices(
        frame,
        findings,
        test,
        alpha_fail=p.alpha_fail,
        alpha_warn=p.alpha_warn,
        min_n=p.min_requests,
    )
    w = frame.window
    evidence = [
        arm_table(frame, ["fallback_rate"], (w.start, w.end), "fallback rate per arm"),
        series_evidence(frame, "fallback_rate"),
    ]
    words = Described("fallback rate difference", "pp", 100.0, describe_rate("fallback rate"))
    settings = params_of(p, reference_rate=base, material_fail=test.fail_effect)
    ok_summary = f"No fallback increase for {subject_name(frame)}."
    if hit is not None:
        result = to_result(
            "fallback", hit.judgement, hit.frame, words, settings, evidence, ok_summary=ok_summary
        )
        result = result.model_copy(
            update={
                "where": {**hit.where, **result.where},
                "summary": result.summary + diluted_note(hit.where, hit.slices),
            }
        )
        return _with_errors(result, hit.frame, hit.judgement)
    result = to_result(
        "fallback", judgement, frame, words, settings, evidence, ok_summary=ok_summary
    )
    return _with_errors(result, frame.slice(result.where) if result.where else frame, judgement)


def _with_errors(result: CheckResult, frame: SubjectFrame, judgement: Judgement) -> CheckResult:
    """Add the error rate of the fallen-back requests' group: held for a fallback, up for infra."""
    f = judgement.finding
    if result.verdict not in ("fail", "warn") or f is None:
        return result
    t = frame.span(f.comparand.test, *f.focus)
    r = frame.span(f.comparand.ref, *f.ref_span)
    if t["n"] <= 0 or r["n"] <= 0:
        return result
    err_t, err_r = float(t["n_error"] / t["n"]), float(r["n_error"] / r["n"])
    c = compare_proportions(t["n_error"], t["n"], r["n_error"], r["n"], "up")
    held = c.p_value >= 0.01
    words = (
        "held: the requests were served by the fallback model, not failed (not an outage)"
        if held
        else "rose too: failing requests, which an infrastructure outage also explains"
    )
    return result.model_copy(
        update={
            "summary": f"{result.summary} Error rate of the same requests {err_t:.2%} vs "
            f"{err_r:.2%}: {words}.",
            "params": {
                **result.params,
                "error_rate_test": round(err_t, 6),
                "error_rate_ref": round(err_r, 6),
                "errors_held": held,
            },
        }
    )
