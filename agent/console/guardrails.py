"""An experiment's guardrail charts: each metric per test arm with the gate's confidence sequence.

Pure: the telemetry reader hands over the sums of a few looks, each from the first exposure to
that time: the unit-clustered sums per arm (one grouped statement a look,
:meth:`tools.unit_stats.UnitStatsReader.arm_unit_sums`) and the request-level sums of NE,
calibration and the latency ladder (summed from one per-minute cube read once for all looks).
Every look is judged by the gate's own function, :func:`lifecycle.gate.check_guardrail`, with the
statistics the monitors use: revenue per request, CTR, fallback and error rate over units (delta
method); NE, calibration and latency over requests. The band drawn is the band that decides.

Which metrics: the experiment's guardrails (but SRM, a split and not a lift), each with its
tolerated regression drawn on the side the gate judges; and NE, calibration and latency whether
they are guardrails or not (drawn without a tolerance then, and said to be watched only), since
they are the model's health an investigation looks at first.

Latency is charted as the gate judges ``latency_p99``: the share of the arm's requests slower than
control's p99 (read on the 8 ms .. 16 s ladder), as a relative change on control's share (1 %)
with its always-valid interval. A mean would hide a tail regression and a quantile has no
sequence from sums; the p50, p95 and p99 of each arm, interpolated on the same ladder, are listed
beside the charts (:class:`ArmLevels`), without an interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from agent._svg import line_chart
from lifecycle.config import Guardrail, GuardrailMetric
from lifecycle.gate import (
    METRIC_DIRECTION,
    ArmSummary,
    Direction,
    GateConfig,
    check_guardrail,
    confidence_sequence,
)
from lifecycle.judge import UNIT_COLUMN, arm_statistics, unit_statistics
from lifecycle.views import ExperimentView
from tools.metrics import latency_quantile

__all__ = [
    "ALWAYS_CHARTED",
    "ArmLevels",
    "GuardrailCharts",
    "GuardrailSeries",
    "Interval",
    "Look",
    "arm_levels",
    "chart",
    "charted_metrics",
    "guardrail_charts",
]

ALWAYS_CHARTED: tuple[GuardrailMetric, ...] = ("ne", "calibration", "latency_p99")
"""Charted for every experiment, guardrail or not: the model's health."""

LABELS: dict[str, str] = {
    "revenue_per_request": "revenue per request",
    "ctr": "CTR",
    "ne": "NE (lower is better)",
    "calibration": "calibration (Σ predicted / Σ clicks)",
    "fallback_rate": "fallback rate",
    "error_rate": "error rate",
    "latency_p99": "latency: share slower than control's p99",
}
"""How each charted metric is named on the page."""


@dataclass(frozen=True)
class Look:
    """The experiment's sums from its first exposure to ``at``.

    Attributes:
        at: The window's end.
        units: Per-arm unit-clustered sums (:func:`tools.unit_stats.unit_sum_columns`).
        requests: Request-level sums with an ``arm`` column (:meth:`TelemetryReader.cube` rows,
            with the latency ladder): NE, calibration, latency.
    """

    at: datetime
    units: pd.DataFrame
    requests: pd.DataFrame


@dataclass
class GuardrailSeries:
    """One metric of one test arm against control over time, with its confidence sequence.

    Attributes:
        metric: The guardrail metric.
        arm: The test arm.
        max_regression: The tolerated relative regression (a guardrail's), else 0.
        gated: Whether the experiment declares it as a guardrail (the gate judges it).
        direction: Which way is good (``two_sided``: any departure is bad).
        times: Epoch seconds of each look.
        lift: Relative change of the arm on control at each look (NaN: no data, or a control
            mean of 0, where the gate judges the absolute difference instead).
        low: Lower bound of the always-valid interval.
        high: Upper bound.
        verdicts: The gate's verdict at each look (for a guardrail's tolerance).
        absolute_looks: Looks not drawn because control's mean was 0.
    """

    metric: GuardrailMetric
    arm: str
    max_regression: float
    gated: bool
    direction: Direction
    times: list[float] = field(default_factory=list)
    lift: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    absolute_looks: int = 0

    @property
    def label(self) -> str:
        """The metric's name on the page."""
        return LABELS.get(self.metric, self.metric)

    @property
    def verdict(self) -> str:
        """The gate's verdict at the last look ("" before any)."""
        return self.verdicts[-1] if self.verdicts else ""


@dataclass(frozen=True)
class Interval:
    """An estimate with its always-valid interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class ArmLevels:
    """One arm's own levels over the whole window (the last look).

    Attributes:
        arm: The arm.
        control: Whether it is the control arm.
        requests: Requests with a latency.
        ne: NE with its always-valid interval (None: no valid predictions).
        calibration: Σ prediction / Σ clicks with its interval (None: no clicks).
        p50_ms: Median latency, interpolated on the latency ladder (NaN: none).
        p95_ms: 95th percentile.
        p99_ms: 99th percentile.
    """

    arm: str
    control: bool
    requests: int
    ne: Interval | None
    calibration: Interval | None
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class GuardrailCharts:
    """What the experiment page draws: the series, each arm's levels, the first and last look."""

    series: list[GuardrailSeries]
    levels: list[ArmLevels]
    first_look: datetime | None = None
    last_look: datetime | None = None


def charted_metrics(view: ExperimentView) -> list[tuple[GuardrailMetric, float, bool]]:
    """``(metric, max_regression, gated)``: the guardrails, then NE/calibration/latency if not."""
    declared = [(g.metric, g.max_regression, True) for g in view.guardrails if g.metric != "srm"]
    named = {m for m, _, _ in declared}
    return declared + [(m, 0.0, False) for m in ALWAYS_CHARTED if m not in named]


_POOLED = ("ne", "calibration")
"""Request-level metrics judged per arm alone (latency's threshold is control's, per look)."""


def _statistics(look: Look, metric: str, control: str) -> dict[str, ArmSummary]:
    if metric in UNIT_COLUMN:
        return {} if look.units.empty else unit_statistics(look.units, metric)
    return {} if look.requests.empty else arm_statistics(look.requests, metric, control)


def _pooled(looks: Sequence[Look], metric: str, control: str) -> list[dict[str, ArmSummary]]:
    """``metric``'s statistics of every look from one call: each look's arms told apart."""
    frames = [
        look.requests.assign(arm=[f"{k}\x1f{a}" for a in look.requests["arm"]])
        for k, look in enumerate(looks)
        if not look.requests.empty
    ]
    out: list[dict[str, ArmSummary]] = [{} for _ in looks]
    if not frames:
        return out
    for key, summary in arm_statistics(pd.concat(frames), metric, control).items():
        k, arm = key.split("\x1f", 1)
        out[int(k)][arm] = summary
    return out


def guardrail_charts(
    view: ExperimentView, looks: Sequence[Look], gate: GateConfig | None = None
) -> GuardrailCharts:
    """Every charted metric of every test arm at each look, and each arm's levels at the last.

    Args:
        view: The experiment.
        looks: Its sums from its first exposure to each look's time, oldest first.
        gate: The gate's level, tuning and minimum sample.
    """
    gate = gate or GateConfig()
    tests = [a for a in view.arms if a != view.control]
    metrics = charted_metrics(view)
    out = [
        GuardrailSeries(m, arm, tau, gated, METRIC_DIRECTION.get(m, "two_sided"))
        for m, tau, gated in metrics
        for arm in tests
    ]
    pooled = {m: _pooled(looks, m, view.control) for m, _, _ in metrics if m in _POOLED}
    for k, look in enumerate(looks):
        by_metric = {
            m: pooled[m][k] if m in pooled else _statistics(look, m, view.control)
            for m, _, _ in metrics
        }
        for series in out:
            stats = by_metric[series.metric]
            result = check_guardrail(
                Guardrail(metric=series.metric, max_regression=series.max_regression),
                series.arm,
                stats.get(view.control),
                stats.get(series.arm),
                gate,
            )
            series.times.append(look.at.timestamp())
            series.verdicts.append(result.verdict)
            if result.estimate is None or result.ci_low is None or result.ci_high is None:
                _no_point(series)
            elif not result.relative:  # control's mean is 0: the gate judges a difference
                series.absolute_looks += 1
                _no_point(series)
            else:
                series.lift.append(result.estimate)
                series.low.append(result.ci_low)
                series.high.append(result.ci_high)
    return GuardrailCharts(
        out,
        arm_levels(view, looks[-1].requests, gate) if looks else [],
        looks[0].at if looks else None,
        looks[-1].at if looks else None,
    )


def _no_point(series: GuardrailSeries) -> None:
    series.lift.append(math.nan)
    series.low.append(math.nan)
    series.high.append(math.nan)


def _interval(summary: ArmSummary | None, gate: GateConfig) -> Interval | None:
    if summary is None or summary.n < 2 or summary.mean <= 0:
        return None
    se = math.sqrt(summary.var / summary.n)
    lo, hi = confidence_sequence(summary.mean, se, summary.n, gate.alpha, gate.tuning_n)
    return Interval(summary.mean, float(lo), float(hi))


def arm_levels(view: ExperimentView, sums: pd.DataFrame, gate: GateConfig) -> list[ArmLevels]:
    """Each arm's NE and calibration with their intervals, and its latency quantiles.

    Args:
        view: The experiment (its arms, control first).
        sums: Its request-level sums over the window with an ``arm`` column and the ladder.
        gate: The intervals' level and tuning.
    """
    if sums.empty:
        return []
    ne = arm_statistics(sums, "ne", view.control)
    calibration = arm_statistics(sums, "calibration", view.control)
    per_arm = sums.groupby("arm").sum(numeric_only=True)
    requests = per_arm["n_latency"].to_dict()
    quantiles = {q: latency_quantile(per_arm, q) for q in (0.5, 0.95, 0.99)}
    order = [view.control, *(a for a in view.arms if a != view.control)]
    out = []
    for arm in order:
        if arm not in per_arm.index:
            continue
        out.append(
            ArmLevels(
                arm=arm,
                control=arm == view.control,
                requests=int(requests[arm]),
                ne=_interval(ne.get(arm), gate),
                calibration=_interval(calibration.get(arm), gate),
                p50_ms=float(quantiles[0.5][arm]),
                p95_ms=float(quantiles[0.95][arm]),
                p99_ms=float(quantiles[0.99][arm]),
            )
        )
    return out


def chart(series: GuardrailSeries, width: int = 600, height: int = 230) -> str | None:
    """The SVG of one series: the lift, its sequence and (for a guardrail) the tolerance.

    The tolerance is drawn on the side the gate judges: below zero for a metric that should
    rise (revenue, CTR), above for one that should fall (NE, fallback, errors, slow requests),
    both for calibration. None when no look has data.
    """
    lines: list[tuple[str, Sequence[float], Sequence[float]]] = [
        (f"{series.arm} vs control", series.times, series.lift),
        ("confidence sequence (low)", series.times, series.low),
        ("confidence sequence (high)", series.times, series.high),
    ]
    if series.gated:
        tau = series.max_regression
        sides = {"increase": (-1.0,), "decrease": (1.0,), "two_sided": (-1.0, 1.0)}
        for sign in sides[series.direction]:
            lines.append(
                (f"tolerance {sign * tau:+.1%}", series.times, [sign * tau] * len(series.times))
            )
    if not any(math.isfinite(v) for v in series.lift):
        return None
    return line_chart(
        lines,
        f"{series.label}: {series.arm}, relative change on control",
        width=width,
        height=height,
    )
