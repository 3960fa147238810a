"""Infra check: error rate and latency p99 of all traffic against its own baseline, by dimension.

An outage hits every arm of every experiment alike; when an experiment launched at the same time,
this check is what keeps the blame off it. It also says whether the extra errors sit in one
experiment arm (then that arm owns them) or are spread over all traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tools.checks._common import (
    Described,
    fmt_time,
    material_increase,
    no_data,
    params_of,
    reference_rate,
    series_evidence,
    table,
    to_result,
)
from tools.checks._engine import (
    Comparand,
    Finding,
    Judgement,
    RateTest,
    SubjectFrame,
    assess,
    judge,
)
from tools.checks.fallback import proportion_test
from tools.metrics import metric_array
from tools.result import CheckResult, Evidence
from tools.stats import compare_proportions
from tools.telemetry import LATENCY_LADDER_MS

__all__ = ["InfraParams", "infra_check"]


@dataclass(frozen=True)
class InfraParams:
    """Thresholds of the infra check.

    Attributes:
        alpha_fail: Family-wise error rate to fail.
        alpha_warn: The same, to warn.
        error_increase_fail: Error-rate increase (absolute; 0.005 = 0.5 pp) that is always
            material to fail.
        error_increase_warn: The same, to warn.
        error_relative_fail: An error rate this many times its baseline is material even below
            ``error_increase_fail`` (errors are rare, 0.05 % of requests: 0.5 pp would be eleven
            times the normal rate).
        error_relative_warn: The same, to warn.
        error_least_fail: The smallest error-rate increase ever material to fail (0.0002).
        error_least_warn: The same, to warn.
        slow_increase_fail: Increase of the share of requests slower than the baseline p99
            (1 % by definition) that may fail.
        slow_increase_warn: The same, to warn.
        owner_share: Share of the excess errors one experiment arm must hold to own them.
        min_requests: Fewest requests in window and baseline.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    error_increase_fail: float = 0.005
    error_increase_warn: float = 0.002
    error_relative_fail: float = 2.0
    error_relative_warn: float = 1.5
    error_least_fail: float = 0.0002
    error_least_warn: float = 0.0001
    slow_increase_fail: float = 0.02
    slow_increase_warn: float = 0.005
    owner_share: float = 0.7
    min_requests: int = 1000


def _ladder_at_p99(frame: SubjectFrame) -> tuple[int, float] | None:
    """Index of the first ladder threshold at or above the baseline p99, and that p99."""
    w = frame.window
    total = frame.span_vector("all", w.fetch_start, w.start)
    base = {col: total[j : j + 1] for j, col in enumerate(frame.sum_cols)}  # one row
    if "lat_gt_0" not in base or float(base["n_latency"][0]) <= 0:
        return None
    p99 = float(metric_array(base, "latency_p99")[0])
    k = int(np.searchsorted(np.asarray(LATENCY_LADDER_MS), p99 - 1e-9))
    return min(k, len(LATENCY_LADDER_MS) - 1), p99


def _owner(
    f: Finding,
    experiments: pd.DataFrame | None,
    controls: Mapping[str, str],
    frame: SubjectFrame,
    p: InfraParams,
) -> tuple[tuple[str, str] | None, Evidence | None]:
    """The experiment arm holding most of the excess errors, if any, and a table per arm."""
    if experiments is None or not len(experiments):
        return None, None
    base = frame.span("all", *f.ref_span)
    base_rate = float(base["n_error"] / max(base["n"], 1.0))
    total = frame.span("all", *f.focus)
    excess_total = float(total["n_error"] - total["n"] * base_rate)
    rows = experiments[(experiments["minute"] >= f.focus[0]) & (experiments["minute"] < f.focus[1])]
    per = rows.groupby(["experiment_id", "arm"])[["n", "n_error"]].sum().reset_index()
    if excess_total <= 0 or per.empty:
        return None, None
    per["error_rate"] = per["n_error"] / per["n"].where(per["n"] > 0)
    per["excess_share"] = (per["n_error"] - per["n"] * base_rate) / excess_total
    evidence = table(
        "error rate per experiment arm",
        per[["experiment_id", "arm", "n", "error_rate", "excess_share"]],
        note=f"{fmt_time(f.focus[0])}-{fmt_time(f.focus[1])} UTC; baseline rate {base_rate:.3%}",
    )
    top = per.sort_values("excess_share", ascending=False).iloc[0]
    exp, arm = str(top["experiment_id"]), str(top["arm"])
    control = controls.get(exp)
    if top["excess_share"] < p.owner_share or control is None or control == arm:
        return None, evidence
    ctrl = per[(per["experiment_id"] == exp) & (per["arm"] == control)]
    if ctrl.empty:
        return None, evidence
    c = compare_proportions(
        float(top["n_error"]),
        float(top["n"]),
        float(ctrl["n_error"].iloc[0]),
        float(ctrl["n"].iloc[0]),
        "up",
    )
    return ((exp, arm) if c.p_value < p.alpha_fail else None), evidence


def infra_check(
    frame: SubjectFrame,
    *,
    experiments: pd.DataFrame | None = None,
    controls: Mapping[str, str] | None = None,
    params: InfraParams | None = None,
) -> CheckResult:
    """Error rate and latency p99 of all traffic vs its baseline, by dimension and by arm.

    Args:
        frame: The all-traffic wide aggregate with the latency ladder, window plus baseline.
        experiments: :meth:`tools.telemetry.TelemetryReader.experiments` rows over the same range,
            to tell an infrastructure problem from one experiment arm's.
        controls: Control arm per experiment id.
        params: Thresholds.

    Returns:
        ``fail`` when errors or slow requests rise significantly and materially; ``experiment``
        and ``arm`` are set only when one experiment arm owns the excess errors.
    """
    p = params or InfraParams()
    settings = params_of(p)
    w = frame.window
    if frame.span("all", w.fetch_start, w.start)["n"] < p.min_requests:
        return no_data(
            "infra", frame, "No baseline traffic before the window to compare with.", settings
        )
    base = reference_rate(frame, "n_error")
    errors = proportion_test(
        "error rate",
        "n_error",
        fail=material_increase(
            base, p.error_increase_fail, p.error_relative_fail, p.error_least_fail
        ),
        warn=material_increase(
            base, p.error_increase_warn, p.error_relative_warn, p.error_least_warn
        ),
        min_n=p.min_requests,
    )
    comparand = frame.comparands()[0]
    j_err = judge(
        [assess(frame, comparand, errors)],
        control=None,
        alpha_fail=p.alpha_fail,
        alpha_warn=p.alpha_warn,
    )
    slice_where: dict[str, str] = {}
    if j_err.verdict in ("ok", "inconclusive"):
        j_err, slice_where = _slice_scan(frame, comparand, errors, p, j_err)
    ladder = _ladder_at_p99(frame)
    j_lat: Judgement | None = None
    lat_frame = frame
    if ladder is not None:
        k, base_p99 = ladder
        lat_frame = frame.with_alias("lat_gt_p99", f"lat_gt_{k}")
        slow = proportion_test(
            f"share slower than {LATENCY_LADDER_MS[k]:.0f} ms (baseline p99 {base_p99:.0f} ms)",
            "lat_gt_p99",
            exposure="n_latency",
            fail=p.slow_increase_fail,
            warn=p.slow_increase_warn,
            min_n=p.min_requests,
        )
        j_lat = judge(
            [assess(lat_frame, comparand, slow)],
            control=None,
            alpha_fail=p.alpha_fail,
            alpha_warn=p.alpha_warn,
        )
    evidence: list[Evidence] = [
        series_evidence(frame, "error_rate"),
        series_evidence(frame, "latency_p99"),
    ]
    rank = {"fail": 2, "warn": 1, "ok": 0, "inconclusive": 0, "no_data": -1}
    use_lat = j_lat is not None and rank[j_lat.verdict] > rank[j_err.verdict]
    judgement = j_lat if use_lat and j_lat is not None else j_err
    target = lat_frame if use_lat else (frame.slice(slice_where) if slice_where else frame)
    unit_name = "slow-request share difference" if use_lat else "error rate difference"
    result = to_result(
        "infra",
        judgement,
        target,
        Described(unit_name, "pp", 100.0, _describe),
        settings,
        evidence,
        ok_summary="Error rate and latency p99 of all traffic are at their baseline.",
    )
    if slice_where and not use_lat and result.verdict in ("fail", "warn"):
        on = ", ".join(f"{k}={v}" for k, v in slice_where.items())
        result = result.model_copy(
            update={
                "where": slice_where,
                "summary": result.summary.rstrip(".").replace("of all traffic", f"on {on}", 1)
                + " (diluted below the threshold over all traffic).",
            }
        )
    if result.verdict not in ("fail", "warn") or judgement.finding is None:
        return result
    owner, per_arm = (
        _owner(judgement.finding, experiments, controls or {}, frame, p)
        if not use_lat
        else (None, None)
    )
    if per_arm is not None:
        result = result.model_copy(update={"evidence": [*result.evidence, per_arm]})
    if owner is not None:
        exp, arm = owner
        return result.model_copy(
            update={
                "experiment": exp,
                "arm": arm,
                "summary": result.summary.rstrip(".")
                + f"; the excess errors sit in experiment {exp} arm {arm}, not in all traffic.",
            }
        )
    return result.model_copy(
        update={"summary": result.summary.rstrip(".") + "; no experiment arm owns it."}
    )


def _slice_scan(
    frame: SubjectFrame,
    comparand: Comparand,
    errors: RateTest,
    p: InfraParams,
    overall: Judgement,
) -> tuple[Judgement, dict[str, str]]:
    """The error rate per dimension value: an outage of one country or one ad type.

    Over all traffic such an outage is diluted below the materiality threshold; inside its own
    slice it is not. Every slice with enough traffic is one more test of the family (Holm over
    the slices), so scanning them does not raise the false-alarm rate.

    Returns:
        The slice's judgement and its ``where`` when one slice is flagged, else ``overall``.
    """
    findings: list[Finding | None] = []
    wheres: list[dict[str, str]] = []
    w = frame.window
    small = errors.lean(frame)  # the slices' sums of what the error test reads alone
    for dim in frame.dims:
        for value in small.values(dim):
            part = small.slice({dim: value})
            if part.span("all", w.fetch_start, w.start)["n"] < p.min_requests:
                continue
            findings.append(assess(part, comparand, errors))
            wheres.append({dim: value})
    if len(findings) < 2:
        return overall, {}
    judged = judge(findings, control=None, alpha_fail=p.alpha_fail, alpha_warn=p.alpha_warn)
    if judged.verdict not in ("fail", "warn") or judged.finding is None:
        return overall, {}
    top = judged.finding
    for f, where in zip(findings, wheres, strict=True):
        if f is not None and (f.focus, f.comparison) == (top.focus, top.comparison):
            return judged, where
    return overall, {}


def _describe(f: Finding, frame: SubjectFrame) -> str:
    t = frame.span("all", *f.focus)
    r = frame.span("all", *f.ref_span)
    rate_t = t[f.test.events] / max(t[f.test.exposure], 1.0)
    rate_r = r[f.test.events] / max(r[f.test.exposure], 1.0)
    return f"{f.test.name} of all traffic rose to {rate_t:.2%} from {rate_r:.2%}"
