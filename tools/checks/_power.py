"""Power of a rate-like check: the smallest effect it could have seen, and what would settle it.

A ✓ must mean "we looked and could have seen it". For each comparison a check makes over its
whole window (an arm against its control, else a group against its own baseline, else against a
known value), the minimal detectable effect at the check's warning level is

    MDE = (z_{1 - α'/s} + z_{power}) · SE,

the textbook two-sample formula: ``SE`` is the comparison's standard error on the scale its
thresholds use (a difference in proportions, a relative change in a mean, a log ratio of rates),
``s`` is 2 for a two-sided comparison, and ``α' = alpha_warn / (segments · family)`` is the
per-comparison level the check really applies (Bonferroni over the scanned time segments, Holm
over the family of comparisons). The check's MDE is the largest over the comparisons that could
blame something (every non-control arm must be visible), never below its ``warn_effect``. When the
MDE exceeds the effect in question (by default the check's ``fail_effect``: the smallest change it
calls a failure) the check cannot say ``ok``; ``SE`` shrinks as one over the square root of the
traffic, so the minutes that would settle it follow from the window's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps
from scipy.special import ndtri

from tools.checks._engine import Comparand, Judgement, RateTest, SubjectFrame, SumsLike
from tools.stats import Comparison

__all__ = ["DEFAULT_POWER", "Power", "check_power", "mde_of", "settle_text"]

DEFAULT_POWER = 0.8
"""Probability of detecting an effect of exactly the MDE."""

_Z95 = float(sps.norm.ppf(0.975))  # the confidence of every Comparison's interval


@dataclass(frozen=True)
class Power:
    """How small an effect one check could have seen.

    Attributes:
        mde: Minimal detectable effect on the test's magnitude scale (pp as a fraction, log ratio,
            relative change), never below the test's ``warn_effect``.
        statistical: The same before that floor (what the sample alone allows).
        question: The effect in question on the same scale.
        alpha: The per-comparison level used (``alpha_warn`` corrected for the family).
        comparand: The comparison the MDE belongs to (the least powerful one).
        minutes: The window's length in minutes.
    """

    mde: float
    statistical: float
    question: float
    alpha: float
    comparand: Comparand
    minutes: int

    @property
    def enough(self) -> bool:
        """Whether an effect of the size in question would have been seen."""
        return self.statistical <= self.question

    @property
    def minutes_to_settle(self) -> float:
        """More minutes of traffic, at the window's rate, until the MDE reaches the question."""
        if self.enough:
            return 0.0
        if self.question <= 0 or not math.isfinite(self.statistical):
            return math.inf
        return self.minutes * ((self.statistical / self.question) ** 2 - 1.0)


def mde_of(se: float, alpha: float, *, two_sided: bool, power: float = DEFAULT_POWER) -> float:
    """Minimal detectable effect of a z test with standard error ``se`` at level ``alpha``.

    Args:
        se: Standard error of the estimate (on the scale the effect is stated in).
        alpha: Significance level of the test.
        two_sided: Whether the test is two-sided.
        power: Probability of detecting an effect of exactly the returned size.

    Returns:
        ``(z_{1-alpha/s} + z_{power}) * se``; infinite when ``se`` is not finite.
    """
    if not math.isfinite(se) or se < 0:
        return math.inf
    # ndtri is what sps.norm.isf / ppf evaluate (isf(q) = -ndtri(q)), without their wrapper.
    z_alpha = -float(ndtri(alpha / (2 if two_sided else 1)))
    return (z_alpha + float(ndtri(power))) * se


def _se(test: RateTest, c: Comparison) -> float:
    """Standard error on the thresholds' scale, read back from the comparison's interval."""
    if not c.valid or not (math.isfinite(c.ci_low) and math.isfinite(c.ci_high)):
        return math.inf
    if test.null == 1.0:  # ratio estimates: thresholds and intervals live on the log scale
        if c.ci_low <= 0 or c.ci_high <= 0:
            return math.inf
        return (math.log(c.ci_high) - math.log(c.ci_low)) / (2 * _Z95)
    return (c.ci_high - c.ci_low) / (2 * _Z95)


def _whole_window(frame: SubjectFrame, comparand: Comparand, test: RateTest) -> Comparison | None:
    w = frame.window
    t = frame.span(comparand.test, w.start, w.end)
    r: SumsLike
    if comparand.expected is not None and test.expected_sums is not None:
        r = test.expected_sums(comparand.expected)
    elif comparand.concurrent:
        r = frame.span(comparand.ref, w.start, w.end)
    else:
        r = frame.span(comparand.ref, w.fetch_start, w.start)
    if t["n"] <= 0 or r["n"] <= 0:
        return None
    return test.compare(t, r, "both" if comparand.concurrent else test.direction)


def check_power(
    frame: SubjectFrame,
    judgement: Judgement,
    alpha_warn: float,
    question: float | None = None,
    power: float = DEFAULT_POWER,
) -> Power | None:
    """The check's power over its whole window (see the module docstring).

    Args:
        frame: The subject's aggregate the check judged.
        judgement: The check's judgement (its findings name the comparisons and the test).
        alpha_warn: The check's family-wise level to warn.
        question: The effect in question on the test's magnitude scale; the test's
            ``fail_effect`` when None.
        power: Probability of detecting an effect of exactly the MDE.

    Returns:
        The least powerful comparison's MDE, or None without findings to judge by.
    """
    found = [f for f in judgement.findings if f is not None]
    if not found:
        return None
    concurrent = [f for f in found if f.comparand.concurrent and f.comparand.test != frame.control]
    own = [f for f in found if not f.comparand.concurrent and f.comparand.expected is None]
    known = [f for f in found if f.comparand.expected is not None]
    chosen = concurrent or own or known
    family = len(found)
    test = found[0].test
    q = test.fail_effect if question is None else question
    if frame.control is not None and frame.control in frame.arms:
        # An arm its control could not be compared with (too few events) could hide anything.
        seen = {f.comparand.test for f in concurrent}
        for arm in frame.arms:
            if arm != frame.control and arm not in seen:
                blind = Comparand(arm, frame.control, concurrent=True)
                return Power(math.inf, math.inf, q, alpha_warn / family, blind, frame.window.length)
    worst: Power | None = None
    for f in chosen:
        c = _whole_window(frame, f.comparand, f.test)
        se = _se(f.test, c) if c is not None else math.inf
        alpha = alpha_warn / (max(f.segments, 1) * family)
        two_sided = f.comparand.concurrent or f.test.direction == "both"
        stat = mde_of(se, alpha, two_sided=two_sided, power=power)
        found_power = Power(
            mde=max(stat, f.test.warn_effect),
            statistical=stat,
            question=q,
            alpha=alpha,
            comparand=f.comparand,
            minutes=frame.window.length,
        )
        if worst is None or found_power.statistical > worst.statistical:
            worst = found_power
    return worst


def settle_text(minutes: float) -> str:
    """What would settle an underpowered check: ``about 25 more minutes of traffic``."""
    if not math.isfinite(minutes):
        return "more traffic"
    if minutes > 24 * 60:
        return "more than a day of traffic at the current rate"
    if minutes >= 120:
        return f"about {minutes / 60:.0f} more hours of traffic at the current rate"
    return f"about {max(1, math.ceil(minutes))} more minutes of traffic at the current rate"
