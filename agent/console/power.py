"""The builder's expected duration: a power analysis from the telemetry's variance and an MDE.

As Statsig and GrowthBook size an experiment: the guardrail metric's mean and per-unit variance
over the last days (units are the randomisation unit, so the variance of a per-request ratio is
the delta method's over units, as the rollout gate computes it), the minimal detectable effect
the user sets (relative, 0.02 = 2 %), a two-sided level and a power. The units needed for one
test arm against control, with arm shares ``w_c`` and ``w_t`` of the experiment's units::

    N = (z_{1-alpha/2} + z_{power})^2 * (var / mean^2) * (1/w_c + 1/w_t) / mde^2

and the time to enrol them at the rate new units reached the whole traffic over the window,
times the experiment's share of its layer. The gate judges stages with an always-valid
confidence sequence, which needs more units than this fixed-horizon figure; the builder shows
the figure as the classic lower bound, beside the rollout plan's minimum stage times.

Pure functions; :mod:`agent.console.telemetry` reads the moments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy.stats import norm

from lifecycle.gate import unit_ratio_moments
from tools.errors import ConfigError

__all__ = ["PowerEstimate", "UnitMoments", "estimate_duration", "required_units"]


@dataclass(frozen=True)
class UnitMoments:
    """Sums over units of per-unit totals of one metric, over a window of the telemetry.

    Attributes:
        metric: The guardrail metric.
        units: Distinct units with a request in the window.
        sum_n: Requests (sum over units of each unit's requests).
        sum_n2: Sum over units of the squared request counts.
        sum_y: Sum over units of the metric's per-unit total.
        sum_y2: Sum over units of its square.
        sum_yn: Sum over units of its product with the unit's requests.
        hours: Length of the window the units arrived in.
    """

    metric: str
    units: int
    sum_n: float
    sum_n2: float
    sum_y: float
    sum_y2: float
    sum_yn: float
    hours: float

    def mean_and_variance(self) -> tuple[float, float]:
        """The metric per request and the per-unit variance of that ratio (delta method)."""
        ratio, var = unit_ratio_moments(
            self.units, self.sum_n, self.sum_n2, self.sum_y, self.sum_y2, self.sum_yn
        )
        return float(ratio), float(var)


@dataclass(frozen=True)
class PowerEstimate:
    """What the builder shows beside the MDE.

    Attributes:
        metric: The metric sized on.
        mean: Its mean per request over the window.
        sd: Per-unit standard deviation of the ratio.
        mde: The relative minimal detectable effect.
        units_needed: Experiment units for every test arm to detect ``mde``.
        units_per_hour: New units per hour the experiment would enrol at full size.
        hours: Hours at full size to enrol ``units_needed``.
        ramp_hours: Minimum hours of the rollout plan's stages.
        days_of_data: Days of telemetry the variance was read from.
    """

    metric: str
    mean: float
    sd: float
    mde: float
    units_needed: int
    units_per_hour: float
    hours: float
    ramp_hours: float
    days_of_data: float

    @property
    def total_hours(self) -> float:
        """The expected duration: enrolment at full size, at least the ramp's stages."""
        return max(self.hours, self.ramp_hours)

    def describe(self) -> str:
        """One sentence for the page."""
        return (
            f"≈ {_duration(self.total_hours)} to detect a {self.mde:.1%} change of {self.metric} "
            f"({self.units_needed:,} units at {self.units_per_hour:,.0f} new units/h; "
            f"variance from {self.days_of_data:.2g} days of telemetry)"
        )


def _duration(hours: float) -> str:
    if not math.isfinite(hours):
        return "forever"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def required_units(
    mean: float,
    variance: float,
    mde: float,
    weights: Mapping[str, float],
    control: str,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Experiment units for every test arm to detect a relative change ``mde`` against control.

    Args:
        mean: The metric's mean per request (control's expected value).
        variance: Per-unit variance of the per-request ratio.
        mde: Relative minimal detectable effect (0.02 = 2 %), > 0.
        weights: Arm -> relative weight.
        control: The control arm.
        alpha: Two-sided level.
        power: Probability of detecting an effect of size ``mde``.

    Raises:
        ConfigError: ``mde`` not positive, ``control`` not an arm, a zero mean, or fewer than two
            arms.
    """
    if not mde > 0:
        raise ConfigError("mde", mde, "the minimal detectable effect must be above 0")
    if control not in weights or len(weights) < 2:
        raise ConfigError("control", control, f"must be one of two or more arms {list(weights)}")
    if mean == 0 or not math.isfinite(mean):
        raise ConfigError("mean", mean, "a relative effect needs a non-zero mean")
    total = sum(weights.values())
    w_c = weights[control] / total
    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    cv2 = variance / (mean * mean)
    worst = max(1.0 / w_c + total / w for arm, w in weights.items() if arm != control)
    return math.ceil(z * z * cv2 * worst / (mde * mde))


def estimate_duration(
    moments: UnitMoments,
    mde: float,
    weights: Mapping[str, float],
    control: str,
    traffic_pct: float,
    ramp_minutes: float,
    days_of_data: float,
) -> PowerEstimate:
    """The expected duration of an experiment from the telemetry's moments.

    Args:
        moments: The metric's unit moments over the window.
        mde: Relative minimal detectable effect.
        weights: Arm -> weight.
        control: The control arm.
        traffic_pct: The experiment's share of its layer, percent.
        ramp_minutes: The rollout plan's minimum stage minutes, summed.
        days_of_data: Days the window covered (for the sentence).

    Raises:
        ConfigError: No units in the window (``telemetry``), or a bad MDE or arms.
    """
    if moments.units < 2 or moments.hours <= 0:
        raise ConfigError("telemetry", moments.units, "too few units in the window to size on")
    mean, var = moments.mean_and_variance()
    needed = required_units(mean, var, mde, weights, control)
    rate = moments.units / moments.hours * traffic_pct / 100.0
    hours = needed / rate if rate > 0 else math.inf
    return PowerEstimate(
        metric=moments.metric,
        mean=mean,
        sd=math.sqrt(max(var, 0.0)),
        mde=mde,
        units_needed=needed,
        units_per_hour=rate,
        hours=hours,
        ramp_hours=ramp_minutes / 60.0,
        days_of_data=days_of_data,
    )
