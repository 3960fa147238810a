"""Attribution: which experiments and which dimension values explain a global metric change.

Per experiment, the contribution to the change of the global per-request metric is the exposed
share times the (arm − control) effect, in the window minus in the baseline (an experiment whose
effect did not change did not cause the drop): a difference-in-differences whose control arm
absorbs seasonality and whatever moves all traffic. Each arm's contribution gets a one-sided
z-test in the metric's bad direction, and the p-values are Holm-adjusted over every arm of every
experiment, so that a busy layer of a dozen experiments does not name one by chance. Candidates
are ranked by that evidence (adjusted p-value, then share), not by share alone: the share of a
change that is mostly noise says little, while a significant arm-vs-control shift does. Per
dimension, Adtributor (Bhagwan et al. 2014):
each value's explanatory power and surprise (:func:`tools.localize.adtributor`), and the slice
that significantly explains the change (:func:`tools.localize.localize`, a ripple-consistent scan).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr

from tools.checks._common import fmt_p, fmt_time, no_data, params_of, series_evidence, table
from tools.checks._engine import SubjectFrame
from tools.errors import ConfigError
from tools.localize import Direction as LocalizeDirection
from tools.localize import RootCause, adtributor
from tools.localize import localize as localize_scan
from tools.metrics import metric_spec
from tools.result import CheckResult, Effect, Evidence
from tools.stats import compare_means, holm

__all__ = ["ATTRIBUTABLE", "AttributionParams", "attribution_check"]

# metric -> (sum column, sum-of-squares column); binary events are their own squares.
ATTRIBUTABLE: Mapping[str, tuple[str, ...]] = {
    "revenue": ("sum_revenue", "sum_revenue2"),
    "revenue_per_request": ("sum_revenue", "sum_revenue2"),
    "ctr": ("sum_label", "sum_label"),
    "error_rate": ("n_error", "n_error"),
    "fallback_rate": ("n_fallback", "n_fallback"),
    "invalid_rate": ("n_invalid", "n_invalid"),
    # A ratio of sums (Σ prediction ÷ Σ clicks): each arm's change against its control
    # (:mod:`tools.checks._attribution_ratio`), not a per-request contribution.
    "calibration": ("sum_pred", "sum_label"),
    # NE: each arm's mean log loss and its predictions' spread against its control
    # (:mod:`tools.checks._attribution_ne`).
    "ne": ("sum_ll", "sum_ll2", "n_pred", "sum_lp", "sum_lp2", "sum_lp3", "sum_lp4"),
}
_RATIOS = frozenset({"calibration"})


@dataclass(frozen=True)
class AttributionParams:
    """Thresholds of the attribution check.

    Attributes:
        alpha_fail: p-value of the global change below which the check fails.
        alpha_warn: The same, to warn.
        min_change_fail: Smallest relative change of the global metric that fails (0.02 = 2 %).
        min_change_warn: The same, to warn.
        min_share: Share of the change an experiment must explain to be named.
        alpha_experiment: Family-wise p-value (Holm over every experiment arm) to name one.
        ep_value: Adtributor: smallest explanatory power of a value to be a candidate.
        ep_dimension: Adtributor: explanatory power the candidates of a dimension must reach.
            (``where`` comes from :func:`tools.localize.localize`, whose cause must explain at
            least ``min_share`` of the change.)
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
    p_adjusted: float = 1.0


def _contributions(
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    spans: tuple[tuple[int, int], tuple[int, int]],
    totals: tuple[float, float],
    delta: float,
    cols: tuple[str, str],
    direction: str,
) -> list[_Contribution]:
    """Every experiment arm's difference-in-differences contribution, in one vectorised pass.

    The rows (experiment × arm × minute sums) are coded once into (experiment, arm) groups; each
    span is one weighted ``bincount`` per sum, each treatment arm is paired with its control's
    group by index, and the spans are added per arm: window minus baseline. Arms are reported
    experiment by experiment in the order of ``controls``, then by the first span that has them,
    then by name.
    """
    total, squares = cols
    e_codes, e_uniques = pd.factorize(experiments["experiment_id"])
    a_codes, a_uniques = pd.factorize(experiments["arm"].astype(str), sort=True)
    e_ids, a_names = [str(e) for e in e_uniques], [str(a) for a in a_uniques]
    n_arms = max(len(a_names), 1)
    g_codes, g_keys = pd.factorize(
        e_codes.astype(np.int64) * n_arms + np.asarray(a_codes), sort=True
    )
    g_exp, g_arm = g_keys // n_arms, g_keys % n_arms
    n_groups = len(g_keys)
    arm_code = {a: i for i, a in enumerate(a_names)}
    rank = {str(e): i for i, e in enumerate(controls)}
    # Per experiment: its rank in ``controls`` (-1: not asked for) and its control's group.
    exp_rank = np.array([rank.get(e, -1) for e in e_ids], dtype=np.int64)
    wanted_ctrl = np.array(
        [arm_code.get(str(controls.get(e, "")), -1) for e in e_ids], dtype=np.int64
    )
    ctrl_key = np.arange(len(e_ids), dtype=np.int64) * n_arms + wanted_ctrl
    where = np.searchsorted(g_keys, ctrl_key).clip(0, max(n_groups - 1, 0))
    has_ctrl = (wanted_ctrl >= 0) & (n_groups > 0)
    if n_groups:
        has_ctrl &= g_keys[where] == ctrl_key
    ctrl_group = np.where(has_ctrl, where, -1)[g_exp] if n_groups else np.zeros(0, np.int64)
    is_treatment = (exp_rank[g_exp] >= 0) & (ctrl_group >= 0) & (g_arm != wanted_ctrl[g_exp])

    minute = experiments["minute"].to_numpy()
    sums = {c: experiments[c].to_numpy(dtype=float) for c in dict.fromkeys(["n", total, squares])}
    contribution = np.zeros(n_groups)
    variance = np.zeros(n_groups)
    first_span = np.full(n_groups, len(spans))
    for k, ((a, b), n_total) in enumerate(zip(spans, totals, strict=True)):
        rows = (minute >= a) & (minute < b)
        codes = g_codes[rows]
        present = np.bincount(codes, minlength=n_groups) > 0
        n, t, q = (
            np.bincount(codes, weights=sums[c][rows], minlength=n_groups)
            for c in ("n", total, squares)
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, t / n, np.nan)
            var = np.clip(np.where(n > 0, q / n, np.nan) - mean**2, 0, None)
        if n_total <= 0:
            continue
        ctrl = ctrl_group.clip(0)
        use = is_treatment & present & present[ctrl]
        weight = n / n_total
        effect = mean - mean[ctrl]
        term_var = weight**2 * (var / np.maximum(n, 1.0) + var[ctrl] / np.maximum(n[ctrl], 1.0))
        sign = 1.0 if k == 0 else -1.0
        contribution[use] += sign * weight[use] * effect[use]
        variance[use] += term_var[use]
        first_span[use] = np.minimum(first_span[use], k)
    picked = np.flatnonzero(first_span < len(spans))
    picked = picked[np.lexsort((g_arm[picked], first_span[picked], exp_rank[g_exp[picked]]))]
    contribution, variance = contribution[picked], variance[picked]
    se = np.sqrt(variance)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, contribution / se, 0.0)
    share = contribution / delta if delta != 0 else np.zeros_like(contribution)
    # p_from_z over the array: the normal tail in the bad direction, 1 for a non-finite z.
    tail = ndtr(z) if direction == "down" else ndtr(-z)
    p_values = np.where(np.isfinite(z), tail, 1.0)
    adjusted = holm(p_values.tolist())
    ranked = [
        _Contribution(e_ids[e], a_names[arm], x, s, sh, pv, q)
        for e, arm, x, s, sh, pv, q in zip(
            g_exp[picked].tolist(),
            g_arm[picked].tolist(),
            contribution.tolist(),
            se.tolist(),
            share.tolist(),
            p_values.tolist(),
            adjusted.tolist(),
            strict=True,
        )
    ]
    return sorted(ranked, key=lambda c: (c.p_adjusted, c.p, -c.share))


def _ranked_table(
    contributions: list[_Contribution], causes: list[RootCause], delta: float
) -> pd.DataFrame:
    """Experiment arms by evidence, then dimension slices: built by column (a thousand
    experiments make thousands of rows, and a dict per row is most of the cost)."""
    if not contributions and not causes:
        return pd.DataFrame()
    none: list[float | None] = [None] * len(causes)
    return pd.DataFrame(
        {
            "kind": ["experiment"] * len(contributions) + ["dimension"] * len(causes),
            "candidate": [f"{x.experiment}/{x.arm}" for x in contributions]
            + [cause.key() for cause in causes],
            "contribution": [x.contribution for x in contributions]
            + [cause.share * delta for cause in causes],
            "share_of_change": [x.share for x in contributions] + [c.share for c in causes],
            "p_value": [x.p for x in contributions] + none,
            "p_adjusted": [x.p_adjusted for x in contributions] + none,
        }
    )


_LEAF_SUMS = sorted({sums[0] for m, sums in ATTRIBUTABLE.items() if m != "ne"} | {"n"})
"""Every attributable metric's sum and the request count: one grouping serves them all."""


@dataclass(frozen=True)
class _LeafSums:
    """Per combination of dimension values with rows now or in the baseline (sorted by value):
    the values, and every :data:`_LEAF_SUMS` column now and in the baseline (0 where none)."""

    values: dict[str, pd.Index]
    now: dict[str, np.ndarray]
    before: dict[str, np.ndarray]


def _leaf_sums(frame: SubjectFrame) -> _LeafSums:
    """:class:`_LeafSums` of the frame: an outer join of the window's and the baseline's sums
    per combination; computed once per frame, however many metrics are attributed."""
    w = frame.window
    dims = list(frame.dims)
    cols = [col for col in _LEAF_SUMS if col in frame.sum_cols]
    seen_w, now = frame.group_sums(dims, (w.start, w.end), cols, arm="all")
    seen_b, before = frame.group_sums(dims, (w.fetch_start, w.start), cols, arm="all")
    union = np.union1d(seen_w, seen_b)
    spread_w, spread_b = np.zeros((len(cols), union.size)), np.zeros((len(cols), union.size))
    spread_w[:, np.searchsorted(union, seen_w)] = now
    spread_b[:, np.searchsorted(union, seen_b)] = before
    return _LeafSums(
        frame.key_values(dims, union),
        dict(zip(cols, spread_w, strict=True)),
        dict(zip(cols, spread_b, strict=True)),
    )


def _leaves(frame: SubjectFrame, cols: tuple[str, str]) -> pd.DataFrame:
    """One row per combination of dimension values: the metric's sums now and in the baseline."""
    dims = list(frame.dims)
    both = frame.derived("attribution_leaves", lambda: _leaf_sums(frame))
    return pd.DataFrame(
        {
            **{d: both.values[d].astype(str) for d in dims},
            "real": both.now[cols[0]],
            "real_den": both.now["n"],
            "forecast": both.before[cols[0]],
            "forecast_den": both.before["n"],
        }
    )


def _dimensions(
    frame: SubjectFrame, cols: tuple[str, str], direction: str, p: AttributionParams
) -> tuple[list[RootCause], list[RootCause]]:
    """Root causes by the ripple-consistent scan and Adtributor's ranked elements."""
    leaves = _leaves(frame, cols)
    leaves = leaves[(leaves["real_den"] > 0) & (leaves["forecast_den"] > 0)]
    if len(leaves) < 2:
        return [], []
    way: LocalizeDirection = "decrease" if direction == "down" else "increase"
    dims = list(frame.dims)
    scan = localize_scan(
        leaves, dims, real_den="real_den", forecast_den="forecast_den", direction=way
    )
    ranked = adtributor(
        leaves,
        dims,
        real_den="real_den",
        forecast_den="forecast_den",
        teep=p.ep_value,
        tep=p.ep_dimension,
    )
    return scan, ranked


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
        metric: ``revenue``, ``revenue_per_request``, ``ctr``, ``error_rate``,
            ``fallback_rate`` or ``invalid_rate`` (revenue is taken per request, so traffic
            volume does not count as a drop); ``calibration`` and ``ne`` per experiment arm
            against its control only.
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
    if metric in _RATIOS:
        return _ratio(frame, experiments, controls, p, settings)
    if metric == "ne":
        from tools.checks._attribution_ne import ne_attribution

        return ne_attribution(
            frame,
            experiments=experiments,
            controls=controls,
            alpha_experiment=p.alpha_experiment,
            min_change=p.min_change_warn,
            settings=settings,
        )
    spec = metric_spec(metric)
    sums = ATTRIBUTABLE[metric]
    cols = (sums[0], sums[1])
    w = frame.window
    cur, base = frame.span("all", w.start, w.end), frame.span("all", w.fetch_start, w.start)
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
    causes, ranked = _dimensions(frame, cols, spec.direction, p)
    evidence: list[Evidence] = [
        table(
            "experiments ranked by evidence (Holm-adjusted p), then dimension slices",
            _ranked_table(contributions, causes, delta),
            note=span,
        )
    ]
    if ranked:
        evidence.append(
            table(
                "Adtributor: explanatory power and surprise per dimension value",
                pd.DataFrame(
                    [
                        {
                            "element": cause.key(),
                            "explanatory_power": cause.share,
                            "surprise": cause.score,
                            "real": cause.real,
                            "forecast": cause.forecast,
                        }
                        for cause in ranked
                    ]
                ),
            )
        )
    evidence.append(
        series_evidence(frame, metric if metric != "revenue" else "revenue_per_request")
    )
    bad = (delta < 0) if spec.direction == "down" else (delta > 0)
    # From a zero baseline (no invalid prediction before) any rise is a whole new symptom.
    size = abs(rel) if m_b != 0 else (float("inf") if delta != 0 else 0.0)
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
    top = next(
        (x for x in contributions if x.share >= p.min_share and x.p_adjusted < p.alpha_experiment),
        None,
    )
    top_cause = causes[0] if causes and causes[0].share >= p.min_share else None
    where = dict(top_cause.elements) if top_cause is not None else {}
    text = (
        f"{metric.replace('_', ' ').capitalize()} changed {100 * rel:+.1f}% "
        f"({m_b:.4g} → {m_w:.4g} per request, {fmt_p(c.p_value)}) in {span}"
    )
    if top is not None:
        text += f"; experiment {top.experiment} arm {top.arm} explains {top.share:.0%} of it"
    else:
        best = max((x.share for x in contributions), default=0.0)
        text += f"; no experiment explains it (largest share {best:.0%})"
    if top_cause is not None:
        text += f"; by dimension {top_cause.key()} explains {top_cause.share:.0%}"
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


def _ratio(
    frame: SubjectFrame,
    experiments: pd.DataFrame,
    controls: Mapping[str, str],
    p: AttributionParams,
    settings: dict[str, object],
) -> CheckResult:
    from tools.checks._attribution_ratio import ratio_attribution

    w = frame.window
    cur, base = frame.span("all", w.start, w.end), frame.span("all", w.fetch_start, w.start)
    if cur["n"] < p.min_requests or base["n"] < p.min_requests:
        return no_data(
            "attribution", frame, "Too little traffic in the window or baseline.", settings
        )
    return ratio_attribution(
        frame,
        experiments=experiments,
        controls=controls,
        alpha_fail=p.alpha_fail,
        alpha_warn=p.alpha_warn,
        alpha_experiment=p.alpha_experiment,
        min_change_fail=p.min_change_fail,
        min_change_warn=p.min_change_warn,
        settings=settings,
    )
