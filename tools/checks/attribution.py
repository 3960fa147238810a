"""Attribution: which experiments and which dimension values explain a global metric change.

Per experiment, the contribution to the change of the global per-request metric is the exposed
share times the (arm − control) effect, in the window minus in the baseline (an experiment whose
effect did not change did not cause the drop). Per dimension, Adtributor (Bhagwan et al. 2014):
each value's explanatory power (its share of the mix-adjusted change) and surprise (how much its
share of the metric moved), dimensions ranked by the surprise of the values that explain ≥ 67 %.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tools.checks._common import fmt_p, fmt_time, no_data, params_of, series_evidence, table
from tools.checks._engine import SubjectFrame
from tools.errors import ConfigError
from tools.metrics import metric_spec
from tools.result import CheckResult, Effect, Evidence
from tools.stats import compare_means, p_from_z

__all__ = ["ATTRIBUTABLE", "AttributionParams", "attribution_check"]

# metric -> (sum column, sum-of-squares column); binary events are their own squares.
ATTRIBUTABLE: Mapping[str, tuple[str, str]] = {
    "revenue": ("sum_revenue", "sum_revenue2"),
    "revenue_per_request": ("sum_revenue", "sum_revenue2"),
    "ctr": ("sum_label", "sum_label"),
    "error_rate": ("n_error", "n_error"),
    "fallback_rate": ("n_fallback", "n_fallback"),
}


@dataclass(frozen=True)
class AttributionParams:
    """Thresholds of the attribution check.

    Attributes:
        alpha_fail: p-value of the global change below which the check fails.
        alpha_warn: The same, to warn.
        min_change_fail: Smallest relative change of the global metric that fails (0.02 = 2 %).
        min_change_warn: The same, to warn.
        min_share: Share of the change an experiment must explain to be named.
        alpha_experiment: Family-wise p-value (Bonferroni over experiments) to name one.
        ep_value: Adtributor: smallest explanatory power of a value to be a candidate.
        ep_dimension: Adtributor: explanatory power the candidates of a dimension must reach.
        min_requests: Fewest requests in window and baseline.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    min_change_fail: float = 0.02
    min_change_warn: float = 0.01
    min_share: float = 0.5
    alpha_experiment: float = 1e-3
    ep_value: float = 0.1
    ep_dimension: float = 0.67
    min_requests: int = 1000


@dataclass(frozen=True)
class _Contribution:
    experiment: str
    arm: str
    contribution: float
    se: float
    share: float
    p: float


def _arm_stats(rows: pd.DataFrame, total: str, squares: str) -> pd.DataFrame:
    g = rows.groupby(["experiment_id", "arm"])[list(dict.fromkeys(["n", total, squares]))].sum()
    g["mean"] = g[total] / g["n"].where(g["n"] > 0)
    g["var"] = (g[squares] / g["n"].where(g["n"] > 0) - g["mean"] ** 2).clip(lower=0)
    return g


def _contributions(
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    spans: tuple[tuple[int, int], tuple[int, int]],
    totals: tuple[float, float],
    delta: float,
    cols: tuple[str, str],
    direction: str,
) -> list[_Contribution]:
    out = []
    parts = []
    for (a, b), n_total in zip(spans, totals, strict=True):
        rows = experiments[(experiments["minute"] >= a) & (experiments["minute"] < b)]
        parts.append((_arm_stats(rows, *cols), n_total))
    for exp, control in controls.items():
        per_arm: dict[str, list[float]] = {}
        for k, (stats, n_total) in enumerate(parts):
            if exp not in stats.index.get_level_values(0):
                continue
            sub = stats[stats.index.get_level_values(0) == exp].reset_index()
            s: dict[str, dict[str, float]] = {
                str(row["arm"]): {k2: float(row[k2]) for k2 in ("n", "mean", "var")}
                for _, row in sub.iterrows()
            }
            if control not in s or n_total <= 0:
                continue
            c = s[control]
            for arm, t in s.items():
                if arm == control:
                    continue
                weight = t["n"] / n_total
                effect = t["mean"] - c["mean"]
                var = weight**2 * (t["var"] / max(t["n"], 1.0) + c["var"] / max(c["n"], 1.0))
                sign = 1.0 if k == 0 else -1.0
                acc = per_arm.setdefault(str(arm), [0.0, 0.0])
                acc[0] += sign * weight * effect
                acc[1] += var
        for arm, (contribution, var) in per_arm.items():
            se = float(np.sqrt(var))
            z = contribution / se if se > 0 else 0.0
            share = contribution / delta if delta != 0 else 0.0
            p = p_from_z(z, "down" if direction == "down" else "up")
            out.append(_Contribution(exp, arm, contribution, se, share, p))
    return sorted(out, key=lambda c: -c.share)


def _adtributor(
    frame: SubjectFrame, cols: tuple[str, str], p: AttributionParams
) -> tuple[list[tuple[str, list[tuple[str, float, float]], float]], Evidence | None]:
    """Per dimension: the explaining values ``(value, EP, surprise)`` and the dimension's score."""
    w = frame.window
    total, _ = cols
    ranked: list[tuple[str, list[tuple[str, float, float]], float]] = []
    rows = []
    for dim in frame.dims:
        cur = frame.dim_sums("all", w.start, w.end, dim)
        base = frame.dim_sums("all", w.fetch_start, w.start, dim)
        both = cur.join(base, lsuffix="_w", rsuffix="_b", how="outer").fillna(0.0)
        if len(both) < 2 or both[f"{total}_b"].sum() <= 0:
            continue
        rate_b = both[f"{total}_b"] / both["n_b"].where(both["n_b"] > 0)
        forecast = (rate_b.fillna(0.0) * both["n_w"]).to_numpy(float)
        actual = both[f"{total}_w"].to_numpy(float)
        change = actual.sum() - forecast.sum()
        if change == 0 or forecast.sum() <= 0 or actual.sum() <= 0:
            continue
        ep = (actual - forecast) / change
        pf, qa = forecast / forecast.sum(), actual / actual.sum()
        m = (pf + qa) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            surprise = 0.5 * (
                np.where(pf > 0, pf * np.log(pf / m), 0.0)
                + np.where(qa > 0, qa * np.log(qa / m), 0.0)
            )
        order = np.argsort(-surprise)
        picked, cum = [], 0.0
        for i in order:
            if ep[i] < p.ep_value:
                continue
            picked.append((str(both.index[i]), float(ep[i]), float(surprise[i])))
            cum += float(ep[i])
            if cum >= p.ep_dimension:
                break
        for i, value in enumerate(both.index):
            rows.append(
                {
                    "dimension": dim,
                    "value": str(value),
                    "explanatory_power": float(ep[i]),
                    "surprise": float(surprise[i]),
                }
            )
        if cum >= p.ep_dimension:
            ranked.append((dim, picked, float(sum(s for _, _, s in picked))))
    ranked.sort(key=lambda r: -r[2])
    evidence = (
        table("Adtributor: explanatory power and surprise per value", pd.DataFrame(rows))
        if rows
        else None
    )
    return ranked, evidence


def attribution_check(
    metric: str,
    frame: SubjectFrame,
    *,
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    params: AttributionParams | None = None,
) -> CheckResult:
    """Rank the experiments and dimension values that explain a change of a global metric.

    Args:
        metric: ``revenue``, ``revenue_per_request``, ``ctr``, ``error_rate`` or ``fallback_rate``
            (revenue is taken per request, so traffic volume does not count as a drop).
        frame: All traffic, baseline ``[fetch_start, start)`` and window ``[start, end)``.
        experiments: :meth:`tools.telemetry.TelemetryReader.experiments` rows over the same range.
        controls: Control arm per experiment id.
        params: Thresholds.

    Returns:
        ``fail`` for a significant, material change; ``experiment``/``arm`` name the experiment
        that explains at least ``min_share`` of it, ``where`` the dimension values Adtributor finds.
    """
    if metric not in ATTRIBUTABLE:
        raise ConfigError("metric", metric, f"attribution supports {sorted(ATTRIBUTABLE)}")
    p = params or AttributionParams()
    settings = params_of(p, metric=metric)
    spec = metric_spec(metric)
    cols = ATTRIBUTABLE[metric]
    w = frame.window
    cur, base = frame.sums("all", w.start, w.end), frame.sums("all", w.fetch_start, w.start)
    if cur["n"] < p.min_requests or base["n"] < p.min_requests:
        return no_data(
            "attribution", frame, "Too little traffic in the window or baseline.", settings
        )
    m_w, m_b = float(cur[cols[0]] / cur["n"]), float(base[cols[0]] / base["n"])
    c = compare_means(
        cur[cols[0]],
        cur[cols[1]],
        cur["n"],
        base[cols[0]],
        base[cols[1]],
        base["n"],
        spec.direction,
    )
    delta = m_w - m_b
    rel = delta / m_b if m_b != 0 else 0.0
    span = (
        f"{fmt_time(w.start)}-{fmt_time(w.end)} vs "
        f"{fmt_time(w.fetch_start)}-{fmt_time(w.start)} UTC"
    )
    effect = Effect(
        name=f"relative change of {spec.name} per request"
        if "rate" not in metric and metric != "ctr"
        else f"relative change of {metric}",
        estimate=100 * rel,
        ci_low=100 * c.ci_low / m_b if m_b else None,
        ci_high=100 * c.ci_high / m_b if m_b else None,
        unit="%",
    )
    contributions = _contributions(
        experiments,
        controls,
        ((w.start, w.end), (w.fetch_start, w.start)),
        (float(cur["n"]), float(base["n"])),
        delta,
        cols,
        spec.direction,
    )
    ranked, adtributor = _adtributor(frame, cols, p)
    rows = [
        {
            "kind": "experiment",
            "candidate": f"{x.experiment}/{x.arm}",
            "contribution": x.contribution,
            "share_of_change": x.share,
            "p_value": x.p,
        }
        for x in contributions
    ] + [
        {
            "kind": "dimension",
            "candidate": f"{dim}={value}",
            "contribution": ep * delta,
            "share_of_change": ep,
            "p_value": None,
        }
        for dim, values, _ in ranked
        for value, ep, _ in values
    ]
    evidence: list[Evidence] = [
        table("candidates ranked by share of the change", pd.DataFrame(rows), note=span)
    ]
    if adtributor is not None:
        evidence.append(adtributor)
    evidence.append(
        series_evidence(frame, metric if metric != "revenue" else "revenue_per_request")
    )
    bad = (delta < 0) if spec.direction == "down" else (delta > 0)
    size = abs(rel)
    if not bad or c.p_value >= p.alpha_warn or size < p.min_change_warn:
        return CheckResult(
            check="attribution",
            verdict="ok",
            summary=(
                f"No material change of {metric} to attribute "
                f"({100 * rel:+.1f}%, {fmt_p(c.p_value)})."
            ),
            effect=effect,
            p_value=c.p_value,
            evidence=evidence,
            params=settings,
        )
    verdict = "fail" if c.p_value < p.alpha_fail and size >= p.min_change_fail else "warn"
    n_tests = max(len(contributions), 1)
    top = next(
        (x for x in contributions if x.share >= p.min_share and x.p * n_tests < p.alpha_experiment),
        None,
    )
    where = {dim: values[0][0] for dim, values, _ in ranked[:1] if len(values) == 1}
    text = (
        f"{metric.replace('_', ' ').capitalize()} changed {100 * rel:+.1f}% "
        f"({m_b:.4g} → {m_w:.4g} per request, {fmt_p(c.p_value)}) in {span}"
    )
    if top is not None:
        text += f"; experiment {top.experiment} arm {top.arm} explains {top.share:.0%} of it"
    else:
        best = contributions[0].share if contributions else 0.0
        text += f"; no experiment explains it (largest share {best:.0%})"
    if ranked:
        dim, values, _ = ranked[0]
        text += "; by dimension " + ", ".join(f"{dim}={v} {ep:.0%}" for v, ep, _ in values)
    return CheckResult(
        check="attribution",
        verdict=verdict,
        summary=text + ".",
        effect=effect,
        p_value=c.p_value,
        experiment=top.experiment if top else None,
        arm=top.arm if top else None,
        where=where,
        evidence=evidence,
        params=settings,
    )
