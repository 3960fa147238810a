"""The rollout health gate: advance, hold or roll back, from per-arm sufficient statistics.

Pure functions, no I/O. The gate is checked again and again while a stage runs (every minute), so a
fixed-horizon interval would raise false alarms far above its nominal rate. Each guardrail is judged
instead with an always-valid confidence sequence: the asymptotic normal-mixture sequence of
Waudby-Smith et al. ("Time-uniform central limit theory and asymptotic confidence sequences",
2021), built on Robbins' normal mixture as in Howard et al. (2021), the same construction GrowthBook
and Eppo use for sequential testing. With probability at least ``1 - alpha`` the sequence covers the
true effect at every sample size at once, however often it is looked at.

Decision order (rollbacks are protective and come before holds):

1. Sample ratio mismatch (always-valid p-value, fail at ``p < srm_alpha``) -> rollback.
2. Any guardrail confidently harmed beyond its tolerance -> rollback.
3. The stage's minimum duration has not elapsed -> hold.
4. Any guardrail not yet shown non-inferior (or without data), or a suspicious sample ratio
   (``p < srm_hold_alpha``) -> hold.
5. Otherwise -> advance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lifecycle.config import Experiment, Guardrail, GuardrailMetric
from lifecycle.sequential import (
    confidence_sequence,
    lift_and_se,
    lift_interval,
    mixture_margin,
    srm_always_valid_p,
    tuning_rho2,
    unit_ratio_moments,
)

__all__ = [
    "METRIC_DIRECTION",
    "ArmSummary",
    "Decision",
    "Direction",
    "GateConfig",
    "GateInput",
    "GateReport",
    "GuardrailResult",
    "SrmResult",
    "check_guardrail",
    "chi2_sf",
    "confidence_sequence",
    "evaluate_gate",
    "lift_and_se",
    "lift_interval",
    "mixture_margin",
    "relative_lift",
    "srm_test",
    "tuning_rho2",
    "unit_ratio_moments",
]

Decision = Literal["advance", "hold", "rollback"]
Direction = Literal["increase", "decrease", "two_sided"]
GuardrailVerdict = Literal["harm", "safe", "inconclusive", "no_data"]

METRIC_DIRECTION: Mapping[str, Direction] = {
    "revenue_per_request": "increase",
    "ctr": "increase",
    "ne": "decrease",
    "calibration": "two_sided",
    "fallback_rate": "decrease",
    "error_rate": "decrease",
    "latency_p99": "decrease",
}
"""Which way is good for each guardrail metric (``two_sided``: any departure is bad)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmSummary(_Frozen):
    """Sufficient statistics of one arm's observations of a metric.

    ``n`` observations (requests or units) with sample ``mean`` and sample variance ``var``
    (``ddof=1``) of the per-observation value.
    """

    n: int = Field(ge=0)
    mean: float = Field(allow_inf_nan=False)
    var: float = Field(ge=0, allow_inf_nan=False)

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> ArmSummary:
        """Build from a count, a sum and a sum of squares (what SQL aggregates return)."""
        if n <= 0:
            return cls(n=0, mean=0.0, var=0.0)
        mean = total / n
        var = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return cls(n=n, mean=mean, var=var)

    @classmethod
    def from_unit_sums(
        cls,
        units: int,
        sum_n: float,
        sum_n2: float,
        sum_y: float,
        sum_y2: float,
        sum_yn: float,
    ) -> ArmSummary:
        """A per-request ratio metric ``sum y / sum n`` with unit-clustered variance.

        Units are the independent observations: unit ``i`` sent ``n_i`` requests whose metric
        sums to ``y_i``. The delta method (Deng et al. 2018) linearises the ratio ``R`` as
        ``(y_i - R n_i) / mean(n)``; the summary has ``n = units``, ``mean = R`` and ``var`` =
        the sample variance of that over units, so many alike requests of one unit no longer
        shrink the interval as if they were independent.

        Args:
            units: Number of units.
            sum_n: Sum over units of their requests.
            sum_n2: Sum over units of their requests squared.
            sum_y: Sum over units of the metric's per-unit total.
            sum_y2: Sum over units of that total squared.
            sum_yn: Sum over units of the total times the unit's requests.
        """
        if units <= 0 or sum_n <= 0:
            return cls(n=0, mean=0.0, var=0.0)
        ratio, var = unit_ratio_moments(units, sum_n, sum_n2, sum_y, sum_y2, sum_yn)
        return cls(n=units, mean=float(ratio), var=float(var))

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> ArmSummary:
        """Build from raw observations."""
        arr = np.asarray(values, dtype=float)
        if arr.size == 0:
            return cls(n=0, mean=0.0, var=0.0)
        var = float(arr.var(ddof=1)) if arr.size > 1 else 0.0
        return cls(n=int(arr.size), mean=float(arr.mean()), var=var)


class GateConfig(_Frozen):
    """Thresholds of the gate."""

    alpha: float = Field(default=0.05, gt=0, lt=1, description="Confidence sequence level.")
    srm_alpha: float = Field(default=0.001, gt=0, lt=1, description="SRM fails below this p.")
    srm_hold_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="A chi-square p-value of the current look below this holds the stage: a "
        "suspicious split is not advanced on before it clears or the always-valid test fails "
        "it (holding is no alarm, so the per-look test is allowed here).",
    )
    tuning_n: int = Field(
        default=10_000, gt=0, description="Sample size at which the sequence is tightest."
    )
    min_n: int = Field(default=100, ge=1, description="Observations per arm before judging.")

    @model_validator(mode="after")
    def _hold_above_fail(self) -> GateConfig:
        if self.srm_hold_alpha < self.srm_alpha:
            raise ValueError(
                f"srm_hold_alpha ({self.srm_hold_alpha:g}) must be at least srm_alpha "
                f"({self.srm_alpha:g})"
            )
        return self


class GateInput(_Frozen):
    """What the gate reads: units per arm (for SRM) and per-arm statistics per guardrail metric."""

    units: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    metrics: dict[GuardrailMetric, dict[str, ArmSummary]] = Field(default_factory=dict)


class SrmResult(_Frozen):
    """Units per arm against the configured weights: an always-valid p-value and the chi-square."""

    verdict: Literal["ok", "fail", "no_data"]
    p_value: float | None = Field(description="Always-valid: safe to read at every look.")
    chi2: float | None
    look_p: float | None = Field(
        default=None, description="The chi-square p-value of this look alone (not peek-safe)."
    )
    observed: dict[str, int]
    expected: dict[str, float]


class GuardrailResult(_Frozen):
    """One guardrail for one test arm against control, with its confidence sequence."""

    metric: str
    arm: str
    verdict: GuardrailVerdict
    estimate: float | None = Field(description="Relative lift of test on control (0.01 = +1 %).")
    ci_low: float | None
    ci_high: float | None
    relative: bool = Field(description="False when the control mean is 0: absolute difference.")
    max_regression: float
    n_control: int
    n_test: int
    summary: str


class GateReport(_Frozen):
    """The gate's decision with every comparison that led to it."""

    decision: Decision
    reasons: list[str]
    srm: SrmResult | None
    guardrails: list[GuardrailResult]
    elapsed_minutes: float
    min_minutes: float


def relative_lift(control: ArmSummary, test: ArmSummary) -> tuple[float, float, bool]:
    """Lift of test on control and its standard error (delta method).

    Returns:
        ``(lift, se, relative)``; when the control mean is 0 the lift is the absolute difference
        of the means and ``relative`` is False.
    """
    var_c = control.var / control.n
    var_t = test.var / test.n
    if abs(control.mean) < 1e-12:
        return test.mean - control.mean, math.sqrt(var_c + var_t), False
    lift, se = lift_and_se(control.mean, control.var, control.n, test.mean, test.var, test.n)
    return float(lift), float(se), True


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution (exact closed form for integer dof).

    Kept free of SciPy so that importing :mod:`lifecycle` stays light; the tests check it
    against ``scipy.stats.chi2.sf``.
    """
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if x <= 0:
        return 1.0
    half = x / 2.0
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, dof // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    if dof > 1:
        term = math.sqrt(2.0 * x / math.pi) * math.exp(-half)
        acc = term
        for i in range(1, (dof - 1) // 2):
            term *= x / (2 * i + 1)
            acc += term
        total += acc
    return min(1.0, total)


# --- the checks ------------------------------------------------------------------------------


def srm_test(
    units: Mapping[str, int], weights: Mapping[str, float], srm_alpha: float = 0.001
) -> SrmResult:
    """Sample ratio mismatch of units per arm against the arms' weights, safe to peek at.

    The verdict rests on the always-valid p-value of
    :func:`lifecycle.sequential.srm_always_valid_p` (the gate and the monitors read the same
    experiment every minute: a chi-square p-value read at each look would fail healthy
    experiments far more often than ``srm_alpha``); the chi-square statistic is reported beside
    it. Arms missing from ``units`` count zero units. ``no_data`` while any arm expects fewer than
    5 units.
    """
    arms = list(weights)
    total_w = sum(weights.values())
    observed = {a: int(units.get(a, 0)) for a in arms}
    total = sum(observed.values())
    expected = {a: total * weights[a] / total_w for a in arms}
    if total == 0 or min(expected.values()) < 5:
        return SrmResult(
            verdict="no_data", p_value=None, chi2=None, observed=observed, expected=expected
        )
    chi2 = sum((observed[a] - expected[a]) ** 2 / expected[a] for a in arms)
    p = srm_always_valid_p([observed[a] for a in arms], [weights[a] for a in arms])
    return SrmResult(
        verdict="fail" if p < srm_alpha else "ok",
        p_value=p,
        chi2=chi2,
        look_p=chi2_sf(chi2, len(arms) - 1),
        observed=observed,
        expected=expected,
    )


def check_guardrail(
    guardrail: Guardrail,
    arm: str,
    control: ArmSummary | None,
    test: ArmSummary | None,
    config: GateConfig | None = None,
) -> GuardrailResult:
    """Judge one guardrail for one test arm against control with a confidence sequence.

    With ``g`` the lift signed so that positive is good and ``tau`` the tolerated regression:
    ``harm`` when the sequence lies wholly below 0 and the estimate is beyond ``-tau`` (for a
    two-sided metric: wholly on one side of 0 and ``|estimate| > tau``; against a control mean
    of 0, whose relative lift is unbounded, wholly on the bad side suffices); ``safe`` when its
    lower bound is above ``-tau`` (two-sided: it lies within ``[-tau, tau]``); else
    ``inconclusive``.
    """
    cfg = config or GateConfig()
    metric, tau = guardrail.metric, guardrail.max_regression
    n_c = control.n if control else 0
    n_t = test.n if test else 0
    if control is None or test is None or n_c < cfg.min_n or n_t < cfg.min_n:
        return GuardrailResult(
            metric=metric,
            arm=arm,
            verdict="no_data",
            estimate=None,
            ci_low=None,
            ci_high=None,
            relative=True,
            max_regression=tau,
            n_control=n_c,
            n_test=n_t,
            summary=f"{metric}: too little data ({n_c} control, {n_t} {arm}; need {cfg.min_n})",
        )
    lift, se, relative = relative_lift(control, test)
    if relative:  # on the log scale where both means are positive (see lift_interval)
        _, lo_arr, hi_arr = lift_interval(
            control.mean, control.var, n_c, test.mean, test.var, n_t, cfg.alpha, cfg.tuning_n
        )
    else:
        lo_arr, hi_arr = confidence_sequence(lift, se, n_c + n_t, cfg.alpha, cfg.tuning_n)
    low, high = float(lo_arr), float(hi_arr)
    direction = METRIC_DIRECTION.get(metric, "two_sided")
    verdict: GuardrailVerdict
    # Against a control mean of 0 the relative lift is unbounded: any confident departure on
    # the bad side exceeds every relative tolerance (0 fallbacks in control, 30 % in test).
    beyond = abs(lift) > tau or not relative
    if direction == "two_sided":
        if (high < 0 or low > 0) and beyond:
            verdict = "harm"
        elif low > -tau and high < tau:
            verdict = "safe"
        else:
            verdict = "inconclusive"
    else:
        sign = 1.0 if direction == "increase" else -1.0
        g, g_low, g_high = sign * lift, min(sign * low, sign * high), max(sign * low, sign * high)
        if g_high < 0 and (g < -tau or not relative):
            verdict = "harm"
        elif g_low > -tau:
            verdict = "safe"
        else:
            verdict = "inconclusive"
    unit, scale = ("%", 100.0) if relative else ("", 1.0)
    summary = (
        f"{metric}: {arm} vs control {lift * scale:+.3g}{unit} "
        f"[{low * scale:+.3g}{unit}, {high * scale:+.3g}{unit}] "
        f"(always-valid {1 - cfg.alpha:.0%}, tolerance {tau * scale:.3g}{unit}"
        f"{'' if relative else ', absolute: control mean is 0'}) -> {verdict}"
    )
    return GuardrailResult(
        metric=metric,
        arm=arm,
        verdict=verdict,
        estimate=lift,
        ci_low=low,
        ci_high=high,
        relative=relative,
        max_regression=tau,
        n_control=n_c,
        n_test=n_t,
        summary=summary,
    )


def evaluate_gate(
    experiment: Experiment,
    stats: GateInput,
    *,
    elapsed_minutes: float,
    min_minutes: float,
    config: GateConfig | None = None,
) -> GateReport:
    """Decide advance / hold / rollback for an experiment's current stage.

    Args:
        experiment: The experiment (arms, weights, control, guardrails).
        stats: Units per arm and per-arm statistics per guardrail metric, cumulative since the
            experiment started (the confidence sequences are valid at every look).
        elapsed_minutes: Time spent at the current stage.
        min_minutes: The stage's minimum duration.
        config: Gate thresholds.
    """
    cfg = config or GateConfig()
    reasons: list[str] = []
    weights = {name: arm.weight for name, arm in experiment.arms.items()}
    metrics = [g for g in experiment.guardrails if g.metric != "srm"]
    wants_srm = any(g.metric == "srm" for g in experiment.guardrails)
    srm = srm_test(stats.units, weights, cfg.srm_alpha) if stats.units or wants_srm else None
    results: list[GuardrailResult] = []
    for guardrail in metrics:
        per_arm = stats.metrics.get(guardrail.metric, {})
        control = per_arm.get(experiment.control)
        for arm in experiment.arms:
            if arm != experiment.control:
                results.append(check_guardrail(guardrail, arm, control, per_arm.get(arm), cfg))

    # 1. A sample ratio mismatch means the comparison itself cannot be trusted.
    if srm is not None and srm.verdict == "fail":
        reasons.append(f"sample ratio mismatch: p = {srm.p_value:.2g} < {cfg.srm_alpha:g}")
    # 2. Any confident harm beyond tolerance.
    reasons.extend(r.summary for r in results if r.verdict == "harm")
    if reasons:
        return GateReport(
            decision="rollback",
            reasons=reasons,
            srm=srm,
            guardrails=results,
            elapsed_minutes=elapsed_minutes,
            min_minutes=min_minutes,
        )
    # 3. The stage must run its minimum time.
    if elapsed_minutes < min_minutes:
        reasons.append(f"stage has run {elapsed_minutes:.1f} of its {min_minutes:g} minutes")
    # 4. Every guardrail must be shown non-inferior, and SRM checkable when it is a guardrail.
    if wants_srm and (srm is None or srm.verdict == "no_data"):
        reasons.append("srm: too few units per arm to test the sample ratio")
    elif srm is not None and srm.look_p is not None and srm.look_p < cfg.srm_hold_alpha:
        reasons.append(
            f"srm: units per arm look skewed at this look (chi-square p = {srm.look_p:.2g} < "
            f"{cfg.srm_hold_alpha:g}); holding until the split clears or fails"
        )
    reasons.extend(r.summary for r in results if r.verdict in ("no_data", "inconclusive"))
    decision: Decision = "hold" if reasons else "advance"
    if not reasons:
        reasons.append("every guardrail is non-inferior and the stage ran its minimum time")
    return GateReport(
        decision=decision,
        reasons=reasons,
        srm=srm,
        guardrails=results,
        elapsed_minutes=elapsed_minutes,
        min_minutes=min_minutes,
    )
