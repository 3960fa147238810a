"""Sample ratio mismatch: chi-square goodness of fit of units per arm against configured weights."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from tools.checks._common import fmt_p, fmt_time, params_of, series_evidence, table
from tools.checks._engine import Comparand, Finding, RateTest, SubjectFrame, SumsLike
from tools.checks._localize import localize
from tools.result import CheckResult, Effect
from tools.stats import (
    Comparison,
    Direction,
    chi2_goodness_of_fit,
    epidemic_segment,
    holm,
    p_from_z,
)
from tools.telemetry import to_datetime

__all__ = ["SRMParams", "srm_check", "srm_mde", "srm_scan"]


@dataclass(frozen=True)
class SRMParams:
    """Thresholds of the SRM check.

    Attributes:
        alpha_fail: Chi-square p-value below which the check fails (the usual 0.001).
        alpha_warn: The same, to warn.
        min_units: Fewest units in the experiment for a verdict.
        min_expected: Fewest expected units in every arm (chi-square validity).
        question_share: The share deficit in question (2 pp: an arm of a 50/50 split losing
            about 8 % of its units); a matching split is ``ok`` only when the chi-square test
            could have seen a deficit this large, else ``inconclusive``.
        power: Probability of detecting a deficit of exactly the minimal detectable size.
        recent_minutes: A matching split is ``ok`` only when the test of the window's last this
            many minutes (a reader suffix) could also have seen a deficit of ``question_share``:
            an allocation bug behind an SRM alert is young, and over the whole window it is
            diluted by the units seen before it began.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    min_units: int = 100
    min_expected: float = 5.0
    question_share: float = 0.02
    power: float = 0.8
    recent_minutes: int = 20


def srm_mde(total: float, shares: Sequence[float], alpha: float, power: float = 0.8) -> float:
    """Smallest share deficit of one arm the chi-square test sees with ``power`` at ``alpha``.

    One arm's share falls from ``q`` to ``q - d`` and the others gain in proportion; Pearson's
    statistic is then noncentral chi-square with ``k - 1`` degrees of freedom and noncentrality
    ``total * d**2 / (q * (1 - q))``. The deficit returned is the largest over the arms (every arm
    must be visible).

    Args:
        total: Units tested.
        shares: Configured share of each arm (summing to 1).
        alpha: Level of the test.
        power: Probability of rejecting at that deficit.

    Returns:
        The deficit as a fraction (0.012 = 1.2 pp); infinite without units or arms.
    """
    k = len(shares)
    if total <= 0 or k < 2:
        return float("inf")
    lam = _noncentrality(k - 1, alpha, power)
    return max(float(np.sqrt(lam * q * (1 - q) / total)) for q in shares if 0 < q < 1)


@functools.lru_cache(maxsize=64)
def _noncentrality(df: int, alpha: float, power: float) -> float:
    """The noncentrality at which Pearson's test at ``alpha`` rejects with ``power`` (a root
    search over the noncentral chi-square: computed once per level)."""
    crit = float(sps.chi2.isf(alpha, df))
    return float(
        optimize.brentq(lambda x: float(sps.ncx2.sf(crit, df, x)) - power, 1e-9, 1e6, xtol=1e-9)
    )


def _share_test(q: float, deff: float) -> RateTest:
    """Share of the test arm among test + reference requests against its expected share ``q``.

    Requests cluster by unit, so the binomial variance is inflated by the design effect ``deff``
    (requests per unit): a conservative correction used only to localise, never to fail.
    """

    def compare(t: SumsLike, r: SumsLike, d: Direction) -> Comparison:
        n = float(t["n"] + r["n"])
        if n <= 0:
            return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), 1.0)
        share = float(t["n"]) / n
        se = float(np.sqrt(q * (1 - q) * deff / n))
        z = (share - q) / se
        return Comparison(
            share - q, share - q - 1.96 * se, share - q + 1.96 * se, z, p_from_z(z, d)
        )

    return RateTest(
        name="arm share of requests",
        compare=compare,
        direction="down",
        null=0.0,
        badness=lambda s: 0.0,
        events="n",
        exposure="n",
        rate_direction="down",
        magnitude=abs,
        fail_effect=0.0,
        warn_effect=0.0,
        unit="pp",
        reads=("n",),
    )


def _onset(frame: SubjectFrame, arm: str, other: str, q: float) -> int | None:
    a = frame.minute_sums(arm)["n"].to_numpy(float)
    b = frame.minute_sums(other)["n"].to_numpy(float)
    seg = epidemic_segment(a, (a + b) * q, "down")
    return None if seg is None else frame.window.fetch_start + seg[0]


def srm_check(
    units: pd.DataFrame,
    weights: Mapping[str, float],
    *,
    experiment_id: str | None = None,
    frame: SubjectFrame | None = None,
    params: SRMParams | None = None,
) -> CheckResult:
    """Chi-square goodness of fit of distinct units per arm against the configured weights.

    Args:
        units: :meth:`tools.telemetry.TelemetryReader.units` rows (``arm, units, exposures``).
        weights: Configured arm weights (need not sum to 1).
        experiment_id: The experiment, for the result.
        frame: The experiment's wide aggregate, to locate the onset and the dimension values.
        params: Thresholds.

    Returns:
        ``fail`` at p < ``alpha_fail``; the arm is the one short of units (the usual mechanism:
        exposures lost), ``where`` the dimension values the deficit is confined to.
    """
    p = params or SRMParams()
    settings = params_of(p, weights=dict(weights))
    arms = list(weights)
    w = np.array([float(weights[a]) for a in arms])
    indexed = units.set_index("arm") if len(units) else pd.DataFrame()
    unknown = sorted(str(a) for a in set(indexed.index) - set(arms))
    # The whole window, and its recent suffixes (a late bug is diluted in the whole window);
    # Bonferroni over the windows tested.
    recent = [c for c in indexed.columns if str(c).startswith("units_")]
    columns = ["units", *sorted(recent, key=lambda c: -int(str(c)[6:]))]
    tests: list[tuple[str, np.ndarray, float, float]] = []
    for col in columns:
        obs = (
            np.array([float(indexed[col].get(a, 0.0)) for a in arms])
            if len(indexed)
            else np.zeros(len(arms))
        )
        exp_counts = obs.sum() * w / w.sum()
        if obs.sum() < p.min_units or (exp_counts < p.min_expected).any():
            continue
        stat, p_raw = chi2_goodness_of_fit(obs.tolist(), w.tolist())
        tests.append((col, obs, stat, p_raw))
    if not tests:
        total = float(indexed["units"].sum()) if len(indexed) else 0.0
        return CheckResult(
            check="srm",
            verdict="no_data",
            summary=f"Too few units ({total:.0f}) in experiment {experiment_id} to test SRM.",
            experiment=experiment_id,
            params=settings,
        )
    col, observed, stat, p_raw = min(tests, key=lambda t: t[3])
    p_value = min(1.0, p_raw * len(tests))
    settings["windows_tested"] = [t[0] for t in tests]
    total = observed.sum()
    expected = total * w / w.sum()
    resid = (observed - expected) / np.sqrt(expected)
    short = int(np.argmin(resid))
    arm = arms[short]
    share = observed[short] / total
    q = w[short] / w.sum()
    se = float(np.sqrt(q * (1 - q) / total))
    effect = Effect(
        name=f"unit share of arm {arm} − configured",
        estimate=100 * (share - q),
        ci_low=100 * (share - q - 1.96 * se),
        ci_high=100 * (share - q + 1.96 * se),
        unit="pp",
    )
    rows = pd.DataFrame(
        {
            "arm": arms,
            "units": observed,
            "expected": expected,
            "share": observed / total,
            "configured_share": w / w.sum(),
        }
    )
    span = "the whole window" if col == "units" else f"the last {col[6:]} minutes"
    evidence = [table("units per arm", rows, note=f"{span}: chi2={stat:.2f}, df={len(arms) - 1}")]
    if frame is not None and len(frame.cube):
        evidence.append(series_evidence(frame, "srm", "request share per arm per minute"))
    verdict = "fail" if p_value < p.alpha_fail else "warn" if p_value < p.alpha_warn else "ok"
    if unknown and verdict == "ok":
        verdict = "warn"
    if verdict == "ok":
        whole = max(t[1].sum() for t in tests)
        shares = list(w / w.sum())
        mde = srm_mde(whole, shares, p.alpha_warn / len(tests), p.power)
        settings.update(mde_alpha=p.alpha_warn / len(tests), mde_power=p.power)
        # The recent suffix's own power (none when the reader gave no suffixes; infinite when it
        # held too few units to test).
        recent_col = f"units_{p.recent_minutes}"
        young = next((t for t in tests if t[0] == recent_col), None)
        recent_mde = (
            srm_mde(young[1].sum(), shares, p.alpha_warn / len(tests), p.power)
            if young is not None
            else float("inf")
            if recent_col in indexed.columns
            else None
        )
        if recent_mde is not None:
            settings["recent_mde"] = round(100 * recent_mde, 3) if np.isfinite(recent_mde) else None
        seen_whole = mde <= p.question_share
        seen_young = recent_mde is None or recent_mde <= p.question_share
        shown = mde  # the power the summary states
        if seen_whole and seen_young:
            summary = (
                f"Units per arm match the configured weights ({fmt_p(p_value)}): a share "
                f"deficit of {100 * mde:.2g} pp or more would have shown"
            )
            if recent_mde is not None:
                summary += f" ({100 * recent_mde:.2g} pp in the last {p.recent_minutes} minutes)"
            summary += "."
        elif seen_whole:
            assert recent_mde is not None
            shown = recent_mde
            seen = (
                f"only {100 * recent_mde:.2g} pp or more would show there"
                if np.isfinite(recent_mde)
                else "too few units there to test"
            )
            summary = (
                f"Units per arm of experiment {experiment_id} match the configured weights "
                f"({fmt_p(p_value)}), but a share deficit of {100 * p.question_share:.2g} pp "
                f"that began in the last {p.recent_minutes} minutes could not be ruled out "
                f"({seen}); a follow-up once it is older would settle it."
            )
        else:
            more = (mde / p.question_share) ** 2 - 1.0
            summary = (
                f"Units per arm of experiment {experiment_id} match the configured weights "
                f"({fmt_p(p_value)}), but {whole:.0f} units could not rule out a share deficit "
                f"of {100 * p.question_share:.2g} pp (only {100 * mde:.2g} pp or more would "
                f"show); about {more:.1f} times the window's traffic again would settle it."
            )
        return CheckResult(
            check="srm",
            verdict="ok" if seen_whole and seen_young else "inconclusive",
            summary=summary,
            effect=effect,
            p_value=p_value,
            mde=100 * shown if np.isfinite(shown) else None,
            experiment=experiment_id,
            evidence=evidence,
            params=settings,
        )
    onset, where = None, {}
    control = frame.control if frame is not None else None
    other = control if control is not None and control != arm else next(a for a in arms if a != arm)
    if frame is not None and len(frame.cube) and other in frame.arms and arm in frame.arms:
        q_pair = float(weights[arm] / (weights[arm] + weights[other]))
        onset = _onset(frame, arm, other, q_pair)
        deff = float(indexed["exposures"].sum() / max(float(indexed["units"].sum()), 1.0))
        test = _share_test(q_pair, max(deff, 1.0))
        focus = (max(onset or frame.window.start, frame.window.fetch_start), frame.window.end)
        c = test.compare(frame.span(arm, *focus), frame.span(other, *focus), "down")
        finding = Finding(Comparand(arm, other, True), test, c, p_value, focus, onset, focus, arm)
        where = localize(frame, finding)
    text = (
        f"Sample ratio mismatch in experiment {experiment_id}: arm {arm} has "
        f"{share:.1%} of {total:.0f} units in {span}, configured {q:.1%} (chi2 {fmt_p(p_value)})"
    )
    if where:
        text += ", concentrated on " + ", ".join(f"{k}={v}" for k, v in where.items())
    if onset is not None:
        text += f", since {fmt_time(onset)} UTC"
    if unknown:
        text += f"; units logged in unconfigured arm(s) {unknown}"
    return CheckResult(
        check="srm",
        verdict="fail" if verdict == "fail" else "warn",
        summary=text + ".",
        effect=effect,
        p_value=p_value,
        onset=to_datetime(onset) if onset is not None else None,
        experiment=experiment_id,
        arm=arm,
        where=where,
        evidence=evidence,
        params=settings,
    )


def srm_scan(
    units: pd.DataFrame,
    weights: Mapping[str, Mapping[str, float]],
    *,
    params: SRMParams | None = None,
) -> CheckResult:
    """Every experiment's split at once: what an SRM alert naming no experiment asks.

    Each experiment's units per arm are tested as :func:`srm_check` tests them (the window and
    its recent suffixes), then Holm over the experiments tested: a thousand healthy splits raise
    no alarm, and the one short of units stands out.

    Args:
        units: :meth:`tools.telemetry.TelemetryReader.units` of every experiment
            (``experiment_id, arm, units, exposures, units_<L>``).
        weights: Configured arm weights per experiment id; experiments without are skipped.
        params: Thresholds (the SRM check's).

    Returns:
        ``fail`` when an experiment's adjusted p is below ``alpha_fail`` (it is named), with
        every experiment tested in the evidence, most significant first (``p_adjusted``);
        ``no_data`` when no experiment had the units to test.
    """
    p = params or SRMParams()
    settings = params_of(p)
    rows: list[tuple[str, str | None, float, float]] = []
    if len(units):
        for exp, part in units.groupby("experiment_id", sort=True):
            arms = weights.get(str(exp))
            if not arms:
                continue
            own = part.drop(columns="experiment_id")
            r = srm_check(own, arms, experiment_id=str(exp), params=p)
            if r.p_value is None or r.verdict == "no_data":
                continue
            deficit = abs(r.effect.estimate) / 100 if r.effect is not None else 0.0
            rows.append((str(exp), r.arm, deficit, float(r.p_value)))
    if not rows:
        return CheckResult(
            check="srm",
            verdict="no_data",
            summary="No experiment had enough units in the window to test its split.",
            params=settings,
        )
    adjusted = holm([r[3] for r in rows])
    ranked = pd.DataFrame(
        {
            "experiment_id": [r[0] for r in rows],
            "arm": [r[1] for r in rows],
            "share": [r[2] for r in rows],
            "p_value": [r[3] for r in rows],
            "p_adjusted": adjusted,
        }
    ).sort_values(["p_adjusted", "p_value", "share"], ascending=[True, True, False])
    top = ranked.iloc[0]
    best = float(top["p_adjusted"])
    settings["experiments_tested"] = len(rows)
    evidence = [table("experiments by sample ratio mismatch (Holm-adjusted p)", ranked)]
    if best >= p.alpha_warn:
        return CheckResult(
            check="srm",
            verdict="ok",
            summary=(
                f"The splits of all {len(rows)} experiments tested match their configured "
                f"weights (smallest adjusted p={best:.2g})."
            ),
            p_value=best,
            evidence=evidence,
            params=settings,
        )
    verdict = "fail" if best < p.alpha_fail else "warn"
    return CheckResult(
        check="srm",
        verdict=verdict,
        summary=(
            f"Experiment {top['experiment_id']}'s split is off its configured weights "
            f"(arm {top['arm']} short by {100 * float(top['share']):.2g} pp, "
            f"{fmt_p(best)} after Holm over {len(rows)} experiments)."
        ),
        p_value=best,
        experiment=str(top["experiment_id"]),
        evidence=evidence,
        params=settings,
    )
