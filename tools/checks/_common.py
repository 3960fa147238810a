"""Turning a judgement into the one result shape: summary, effect, evidence, params."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from tools.checks._engine import Finding, Judgement, RateTest, SubjectFrame, ended
from tools.checks._localize import localize, refine
from tools.checks._power import DEFAULT_POWER, Power, check_power, settle_text
from tools.metrics import metric_array
from tools.result import CheckResult, Effect, Evidence, Scalar, Verdict
from tools.telemetry import to_datetime

__all__ = [
    "Described",
    "arm_table",
    "as_verdict",
    "fmt_p",
    "fmt_time",
    "material_increase",
    "no_data",
    "params_of",
    "reference_rate",
    "series_evidence",
    "subject_name",
    "to_result",
    "too_little",
]


def params_of(params: Any, **extra: Any) -> dict[str, Any]:
    """A params dataclass as a plain dict, plus extra settings."""
    out = asdict(params)
    out.update(extra)
    return out


def reference_rate(frame: SubjectFrame, events: str, exposure: str = "n") -> float:
    """The rate ``events / exposure`` a subject's changes are judged against.

    The higher of the subject's own baseline rate (every arm, before the window) and, for an
    experiment, its control arm's rate over the window: the conservative choice, so a floor
    derived from it is never lower than either reference allows. 0 without any reference traffic.
    """
    w = frame.window
    rates = []
    base = frame.span_vector("all", w.fetch_start, w.start) if "all" in frame.arms else None
    if base is None:
        parts = [frame.span_vector(a, w.fetch_start, w.start) for a in frame.arms]
        base = sum(parts[1:], parts[0]) if parts else None
    at = {name: j for j, name in enumerate(frame.sum_cols)}
    if base is not None and float(base[at[exposure]]) > 0:
        rates.append(float(base[at[events]]) / float(base[at[exposure]]))
    if frame.control is not None and frame.control in frame.arms:
        ctrl = frame.span(frame.control, w.start, w.end)
        if float(ctrl[exposure]) > 0:
            rates.append(float(ctrl[events]) / float(ctrl[exposure]))
    return max(rates, default=0.0)


def material_increase(base: float, absolute: float, relative: float, least: float) -> float:
    """The smallest increase of a rare-event rate that is material, given its reference rate.

    An absolute floor alone (0.5 pp) makes a rare defect invisible when its base rate is tiny: an
    error rate going from 0.05 % to 0.4 % is eight times the normal rate, and any invalid
    prediction is a defect when a healthy model emits none. So an increase is material when it
    reaches the absolute floor **or** multiplies the reference rate by ``relative`` (a doubling
    for ``relative=2``), but never below ``least`` (the practical floor: a few requests in ten
    thousand). Significance is tested separately at the check's α; this is only the size.

    Args:
        base: The reference rate (:func:`reference_rate`).
        absolute: The absolute floor (a fraction: 0.005 = 0.5 pp).
        relative: The multiple of ``base`` that is material (``> 1``).
        least: The smallest increase ever material.

    Returns:
        ``min(absolute, max(least, (relative - 1) * base))``.
    """
    return min(absolute, max(least, (relative - 1.0) * max(base, 0.0)))


def as_verdict(value: str) -> Verdict:
    """Narrow a string to the verdict vocabulary."""
    if value == "ok":
        return "ok"
    if value == "warn":
        return "warn"
    if value == "fail":
        return "fail"
    if value == "inconclusive":
        return "inconclusive"
    return "no_data"


def fmt_p(p: float | None) -> str:
    """A p-value for a sentence."""
    if p is None or not np.isfinite(p):
        return "p n/a"
    return "p<1e-9" if p < 1e-9 else f"p={p:.2g}"


def fmt_time(minute: int | None) -> str:
    """An epoch minute as ``HH:MM`` UTC."""
    return "?" if minute is None else to_datetime(minute).strftime("%H:%M")


def subject_name(frame: SubjectFrame) -> str:
    """``experiment 879``, ``model ctr_v41`` or ``all traffic``."""
    return str(frame.subject)


def no_data(
    check: str, frame: SubjectFrame | None, reason: str, params: dict[str, Any]
) -> CheckResult:
    """A ``no_data`` result: never a crash, never a false fail."""
    experiment = frame.subject.experiment_id if frame is not None else None
    return CheckResult(
        check=check, verdict="no_data", summary=reason, experiment=experiment, params=params
    )


def _scalar(v: Any) -> Scalar:
    if v is None or isinstance(v, str | bool | int):
        return v
    if isinstance(v, float | np.floating):
        f = float(v)
        return round(f, 6) if np.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return str(v)


def _scalars(values: np.ndarray) -> list[Scalar]:
    """A float array as :func:`_scalar` would give each value."""
    return [round(v, 6) if math.isfinite(v) else None for v in values.tolist()]


@functools.lru_cache(maxsize=16)
def _stamps(first: int, end: int) -> tuple[str, ...]:
    """ISO timestamps of the epoch minutes ``[first, end)``."""
    return tuple(to_datetime(m).isoformat() for m in range(first, end))


def table(name: str, frame: pd.DataFrame, note: str = "") -> Evidence:
    """A small frame as table evidence (values rounded, NaN as null)."""
    rows = [[_scalar(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    return Evidence(
        name=name, kind="table", columns=[str(c) for c in frame.columns], rows=rows, note=note
    )


def series_evidence(
    frame: SubjectFrame, metric: str, name: str | None = None, note: str = ""
) -> Evidence:
    """Per-minute values of ``metric`` per arm over the fetched range, for plots."""
    w = frame.window
    columns = ["minute"]
    values: list[list[Scalar]] = []
    for arm in frame.arms:
        sums = frame.minute_matrix(arm)
        named = {col: sums[:, j] for j, col in enumerate(frame.sum_cols)}
        values.append(_scalars(metric_array(named, metric)))
        columns.append(arm)
    stamps = _stamps(w.fetch_start, w.end)
    rows: list[list[Scalar]] = list(map(list, zip(stamps, *values, strict=True)))
    # Built here from ISO strings and rounded floats or None, so already valid: validating a
    # series of a few hundred minutes per arm cell by cell was 60 % of the check battery's
    # Python time (tests/tools/test_evidence.py checks it round-trips through validation).
    return Evidence.model_construct(
        name=name or f"{metric} per minute", kind="series", columns=columns, rows=rows, note=note
    )


def arm_table(
    frame: SubjectFrame, metrics: Sequence[str], span: tuple[int, int], name: str
) -> Evidence:
    """Per arm over ``span``: requests and each metric."""
    rows = []
    for arm in frame.arms:
        total = frame.span_vector(arm, *span)
        sums = {col: total[j : j + 1] for j, col in enumerate(frame.sum_cols)}
        row: dict[str, Any] = {"arm": arm, "requests": float(sums["n"][0])}
        for metric in metrics:
            row[metric] = float(metric_array(sums, metric)[0])
        rows.append(row)
    note = f"{fmt_time(span[0])}-{fmt_time(span[1])} UTC"
    return table(name, pd.DataFrame(rows), note)


def too_little(check: str, frame: SubjectFrame, params: dict[str, Any]) -> CheckResult:
    """No comparison could be tested: ``no_data`` without rows, else ``inconclusive``.

    A subject with some traffic in the window but too little to test could still hide a fault:
    that is not "nothing to look at", and never a ✓.
    """
    w = frame.window
    counts = {str(arm): float(frame.span(arm, w.start, w.end)["n"]) for arm in frame.arms}
    span = f"{fmt_time(w.start)}-{fmt_time(w.end)} UTC"
    if sum(counts.values()) <= 0:
        return no_data(check, frame, f"No telemetry for {subject_name(frame)} in {span}.", params)
    arm, fewest = min(counts.items(), key=lambda kv: kv[1])
    need = float(params.get("min_requests", 200))
    more = w.length * (need / max(fewest, 1.0) - 1.0) if fewest < need else None
    where = f"arm {arm} of " if len(counts) > 1 else ""
    summary = (
        f"Too little traffic to test {check} ({fewest:.0f} requests in {where}"
        f"{subject_name(frame)}, {span}): a fault could hide here"
    )
    summary += f"; {settle_text(more)} would settle it." if more is not None else "."
    return CheckResult(
        check=check,
        verdict="inconclusive",
        summary=summary,
        experiment=frame.subject.experiment_id,
        params={**params, "requests_in_window": counts},
    )


def _in_unit(size: float, test: RateTest, words: Described) -> float:
    """A magnitude on the test's scale in the effect's unit (a ratio for ratio effects)."""
    if test.null == 1.0:
        return float(np.exp(size))
    return float(size * words.scale)


def _fmt_size(size: float, test: RateTest, words: Described) -> str:
    if not np.isfinite(size):
        return "any size"
    if test.null == 1.0:
        return f"±{np.expm1(size):.0%} ({words.effect_name.split(' (')[0]})"
    value = size * words.scale
    unit = f" {words.unit}" if words.unit else ""
    return f"{value:.2g}{unit}"


def _power_params(power: Power, test: RateTest, words: Described) -> dict[str, Any]:
    return {
        "mde_alpha": float(power.alpha),
        "mde_power": DEFAULT_POWER,
        "mde_statistical": (
            _in_unit(power.statistical, test, words) if np.isfinite(power.statistical) else None
        ),
        "question_effect_size": _in_unit(power.question, test, words),
        "mde_comparison": power.comparand.label,
        "minutes_to_settle": (
            round(float(power.minutes_to_settle), 1)
            if np.isfinite(power.minutes_to_settle)
            else None
        ),
    }


@dataclass(frozen=True)
class Described:
    """How a check words its findings."""

    effect_name: str
    unit: str
    scale: float = 1.0
    describe: Callable[[Finding, SubjectFrame], str] | None = None


ENDED_MINUTES = 10
"""A finding whose focus stops this many minutes or more before the window's end, those minutes
back near the reference (:func:`tools.checks._engine.ended`), is over."""


def to_result(
    check: str,
    judgement: Judgement,
    frame: SubjectFrame,
    words: Described,
    params: dict[str, Any],
    evidence: list[Evidence],
    *,
    ok_summary: str,
) -> CheckResult:
    """Assemble the CheckResult of a rate-like check from its judgement."""
    f = judgement.finding
    experiment = frame.subject.experiment_id
    if judgement.verdict == "no_data" or f is None:
        return too_little(check, frame, params)
    c = f.comparison
    effect = Effect(
        name=words.effect_name,
        estimate=float(c.estimate * words.scale),
        ci_low=float(c.ci_low * words.scale),
        ci_high=float(c.ci_high * words.scale),
        unit=words.unit,
    )
    if judgement.verdict == "ok":
        power = check_power(
            frame, judgement, float(params.get("alpha_warn", 0.01)), params.get("question_effect")
        )
        verdict: Verdict = "ok"
        summary = ok_summary
        mde: float | None = None
        if power is not None:
            mde = _in_unit(power.mde, f.test, words) if np.isfinite(power.mde) else None
            params = {**params, **_power_params(power, f.test, words)}
            # Whether a *material* change (the smallest the check fails on) would have shown,
            # not only one of the size in question: the alert's own check needs it to clear.
            material = f.test.fail_effect
            params["sees_material"] = bool(power.statistical <= material)
            params["material_effect_size"] = _in_unit(material, f.test, words)
            params["material_effect_text"] = _fmt_size(material, f.test, words)
            if not params["sees_material"] and material > 0 and np.isfinite(power.statistical):
                more = power.minutes * ((power.statistical / material) ** 2 - 1.0)
                params["minutes_to_material"] = round(float(more), 1)
                params["material_settle_text"] = settle_text(more)
            if power.enough:
                seen = _fmt_size(power.mde, f.test, words)
                summary = f"{ok_summary.rstrip('.')}: a change of {seen} or more would have shown."
            else:
                verdict = "inconclusive"
                shows = (
                    f"only {_fmt_size(power.mde, f.test, words)} or more would show"
                    if np.isfinite(power.mde)
                    else f"too few events to compare {power.comparand.label}"
                )
                summary = (
                    f"{f.test.name[:1].upper()}{f.test.name[1:]} of {subject_name(frame)} could "
                    f"not rule out a change of {_fmt_size(power.question, f.test, words)}: with "
                    f"this traffic {shows}; {settle_text(power.minutes_to_settle)} would settle it."
                )
        return CheckResult(
            check=check,
            verdict=verdict,
            summary=summary,
            effect=effect,
            p_value=f.adjusted_p,
            mde=mde,
            experiment=experiment,
            evidence=evidence,
            params=params,
        )
    where = localize(frame, f)
    level = judgement.verdict
    shown = frame
    if where and judgement.scope in ("arm", "subject"):
        # Inside its slice the fault is undiluted: a sharper onset and effect, maybe a fail.
        refined = refine(frame, f, where, frame.dim_values())
        if refined is not None and refined.culprit is not None:
            family = max(len(judgement.findings), 1)
            refined = replace(refined, adjusted_p=min(1.0, refined.p_value * family))
            alpha = float(params.get("alpha_fail", 0.0))
            if refined.significant(alpha, f.test.fail_effect):
                level = "fail"
            if refined.adjusted_p <= f.adjusted_p or level == "fail":
                f, shown = refined, frame.slice(where)
                c = f.comparison
                effect = Effect(
                    name=words.effect_name,
                    estimate=float(c.estimate * words.scale),
                    ci_low=float(c.ci_low * words.scale),
                    ci_high=float(c.ci_high * words.scale),
                    unit=words.unit,
                )
    if judgement.scope == "all_arms":
        size = f"{f.comparison.estimate * words.scale:.3g}{' ' + words.unit if words.unit else ''}"
        sentence = (
            f"{f.test.name} moved in every arm of {subject_name(frame)} at once "
            f"(arm {f.comparand.test} vs its baseline: {size}), a shared cause rather than one arm"
        )
    else:
        sentence = words.describe(f, shown) if words.describe else f.test.name
    if where:
        sentence += " on " + ", ".join(f"{k}={v}" for k, v in where.items())
    over = frame.window.end - f.focus[1]
    if judgement.scope != "all_arms" and ended(frame, f, ENDED_MINUTES):
        # The departure ended inside the window: its last minutes are back near the reference.
        # Said, so no one mistakes it for a live fault.
        sentence += (
            f" from {fmt_time(f.onset)} to {fmt_time(f.focus[1])} UTC, over for the last "
            f"{over} minutes ({fmt_p(f.adjusted_p)})."
        )
        params = {**params, "ended": to_datetime(f.focus[1]).isoformat()}
    else:
        sentence += f" since {fmt_time(f.onset)} UTC ({fmt_p(f.adjusted_p)})."
    return CheckResult(
        check=check,
        verdict=as_verdict(level),
        summary=sentence[0].upper() + sentence[1:],
        effect=effect,
        p_value=f.adjusted_p,
        onset=to_datetime(f.onset) if f.onset is not None else None,
        experiment=experiment,
        arm=judgement.arm,
        where=where,
        evidence=evidence,
        params={
            **params,
            "scope": judgement.scope,
            "segments_scanned": f.segments,
            **({"control_moved": True} if judgement.control_moved else {}),
        },
    )
