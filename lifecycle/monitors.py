"""Monitors that watch every running experiment's guardrails and fire alerts.

Every running experiment is onboarded automatically: one monitor per guardrail it declares
(revenue per request, CTR, NE, calibration, fallback rate, error rate, latency, SRM). A monitor
reads per-arm aggregates from the telemetry and asks the sequential health gate
(:mod:`lifecycle.gate`) whether the test arm regressed beyond the guardrail's tolerance. A breach
becomes an :class:`AlertSpec` — plain data, since :mod:`lifecycle` must not import the agent; the
caller (the serve loop, ``vigil monitor --once``) turns it into an investigation.

Open alerts live in the :class:`~lifecycle.alerts.AlertLedger` (state database): an alert for
the same experiment and guardrail is not fired again while one is open, across restarts and
processes; it resolves when the guardrail is shown safe again or the experiment stops running.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import pandas as pd

from lifecycle.alerts import AlertLedger
from lifecycle.allocation import ACTIVE_STATUSES
from lifecycle.config import Guardrail
from lifecycle.gate import ArmSummary, GateConfig, check_guardrail, srm_test
from lifecycle.views import ExperimentView
from tools.errors import ConfigError
from tools.telemetry import LATENCY_LADDER_MS, Subject, TelemetryReader
from tools.unit_stats import UnitStatsReader
from tools.vocabulary import as_utc as _aware_utc
from tools.vocabulary import utc_now

__all__ = [
    "GUARDRAIL_ALERT_METRIC",
    "UNIT_METRIC",
    "AlertSpec",
    "ExperimentSource",
    "Monitor",
    "MonitorResult",
    "MonitorVerdict",
    "Monitors",
    "arm_statistics",
    "unit_statistics",
]


@dataclass(frozen=True)
class AlertSpec:
    """An alert a monitor fired, already opened in the ledger, for the caller to investigate.

    Attributes:
        ledger_id: Its ledger row (attach the investigation to it, or discard it if refused).
        key: Its ledger key (``experiment:guardrail``).
        experiment_id: The experiment whose guardrail was breached.
        guardrail: The guardrail metric (``revenue_per_request``, ``srm``...).
        metric: The alert metric in the agent's vocabulary (``revenue``, ``srm``...).
        fired_at: When the monitor fired (UTC).
        since: Start of the window the monitor looked at.
        summary: One sentence a human reads.
        labels: Extra facts (arm, effect, bound) as strings.
    """

    ledger_id: int
    key: str
    experiment_id: str
    guardrail: str
    metric: str
    fired_at: datetime
    since: datetime | None
    summary: str
    labels: Mapping[str, str] = field(default_factory=dict)


# --- monitors --------------------------------------------------------------------------------

GUARDRAIL_ALERT_METRIC: Mapping[str, str] = {
    "revenue_per_request": "revenue",
    "ctr": "ctr",
    "ne": "ne",
    "calibration": "calibration",
    "fallback_rate": "fallback_rate",
    "error_rate": "error_rate",
    "latency_p99": "latency_p99",
    "srm": "srm",
}
"""Guardrail metric -> the alert metric an investigation starts from."""

UNIT_METRIC: Mapping[str, str] = {
    "revenue_per_request": "revenue",
    "ctr": "label",
    "fallback_rate": "fallback",
    "error_rate": "error",
}
"""Per-request guardrails judged with unit-clustered variance -> their per-unit sum."""

_TAIL = 0.01  # latency_p99 is watched as the share of requests slower than control's p99
MonitorVerdict = Literal["breach", "safe", "inconclusive", "no_data"]


class ExperimentSource(Protocol):
    """Where the monitors learn which experiments run (``lifecycle.service.ExperimentService``)."""

    def list(self) -> Sequence[ExperimentView]:
        """Every experiment's view."""
        ...


@dataclass(frozen=True)
class Monitor:
    """One guardrail of one running experiment, watched automatically.

    Attributes:
        experiment_id: The experiment.
        guardrail: The guardrail (metric and tolerated regression).
        control: The control arm.
        weights: Arm -> configured weight (for SRM).
        created_at: When the experiment was created (the window starts there when it can).
    """

    experiment_id: str
    guardrail: Guardrail
    control: str
    weights: Mapping[str, float]
    created_at: datetime

    @property
    def key(self) -> str:
        """Ledger key: one open alert per experiment and guardrail."""
        return f"{self.experiment_id}:{self.guardrail.metric}"


@dataclass(frozen=True)
class MonitorResult:
    """What one monitor concluded at one look.

    Attributes:
        monitor: The monitor.
        verdict: ``breach`` (harm beyond tolerance, or SRM), ``safe`` (shown non-inferior),
            ``inconclusive`` or ``no_data``.
        summary: One sentence a human reads.
        arm: The breaching arm, if any.
        since: Start of the window evaluated.
        labels: Facts for the alert (arm, estimate, interval, p-value) as strings.
    """

    monitor: Monitor
    verdict: MonitorVerdict
    summary: str
    since: datetime
    arm: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _bernoulli(n: float, events: float) -> ArmSummary:
    return ArmSummary.from_sums(int(n), float(events), float(events))


def _revenue(per_minute: pd.DataFrame) -> ArmSummary:
    """Revenue per request with its variance from batch means over minutes.

    The reader sums revenue but not its square; the spread of per-minute means, weighted by
    requests, estimates the per-request variance (``sum n_i (m_i - m)^2 / (k - 1)``), and is
    conservative when the level drifts within the window.
    """
    rows = per_minute[per_minute["n"] > 0]
    n_total = float(rows["n"].sum())
    if n_total <= 0 or len(rows) < 2:
        return ArmSummary(n=int(n_total), mean=0.0, var=0.0)
    if "sum_revenue2" in rows.columns:
        return ArmSummary.from_sums(
            int(n_total), float(rows["sum_revenue"].sum()), float(rows["sum_revenue2"].sum())
        )
    mean = float(rows["sum_revenue"].sum()) / n_total
    minute_means = rows["sum_revenue"] / rows["n"]
    var = float((rows["n"] * (minute_means - mean) ** 2).sum()) / (len(rows) - 1)
    return ArmSummary(n=int(n_total), mean=mean, var=max(var, 0.0))


def _ne(s: pd.Series) -> ArmSummary:
    n = float(s["n_ll"])
    if n < 2 or float(s["n_pred"]) <= 0:
        return ArmSummary(n=int(n), mean=0.0, var=0.0)
    ll = ArmSummary.from_sums(int(n), float(s["sum_ll"]), float(s["sum_ll2"]))
    ctr = min(max(float(s["sum_label_v"]) / float(s["n_pred"]), 1e-12), 1 - 1e-12)
    entropy = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    return ArmSummary(n=ll.n, mean=ll.mean / entropy, var=ll.var / entropy**2)


def _calibration(s: pd.Series) -> ArmSummary:
    """Sum of predictions over clicks, with a delta-method variance that ignores cov(p, y).

    Predictions and clicks correlate positively for any useful model, so leaving the covariance
    out overstates the variance: the monitor errs towards not alarming.
    """
    n, clicks = float(s["n_pred"]), float(s["sum_label_v"])
    if n < 2 or clicks <= 0:
        return ArmSummary(n=int(n), mean=0.0, var=0.0)
    pred = ArmSummary.from_sums(int(n), float(s["sum_pred"]), float(s["sum_pred2"]))
    ybar = clicks / n
    ratio = pred.mean / ybar
    var = (pred.var + ratio * ratio * ybar * (1 - ybar)) / (ybar * ybar)
    return ArmSummary(n=int(n), mean=ratio, var=var)


def _tail_threshold(control: pd.Series) -> str | None:
    """The ladder column just above control's p99 (share of slower requests at most 1 %)."""
    n = float(control.get("n_latency", 0.0))
    if n <= 0:
        return None
    for k in range(len(LATENCY_LADDER_MS)):
        if float(control[f"lat_gt_{k}"]) / n <= _TAIL:
            return f"lat_gt_{k}"
    return None


def arm_statistics(cube: pd.DataFrame, metric: str, control: str) -> dict[str, ArmSummary]:
    """Per-arm sufficient statistics of a guardrail metric from the reader's cube.

    Args:
        cube: :meth:`TelemetryReader.cube` rows of one experiment (``latency=True`` for
            ``latency_p99``).
        metric: A guardrail metric other than ``srm``.
        control: The control arm (``latency_p99`` is judged above control's p99).

    Returns:
        Arm -> statistics; empty when the window holds no traffic.
    """
    if cube.empty:
        return {}
    if metric == "revenue_per_request":
        cols = ["n", "sum_revenue"] + (["sum_revenue2"] if "sum_revenue2" in cube else [])
        per_minute = cube.groupby(["arm", "minute"])[cols].sum().reset_index()
        return {str(a): _revenue(g) for a, g in per_minute.groupby("arm")}
    sums = cube.groupby("arm").sum(numeric_only=True)
    out: dict[str, ArmSummary] = {}
    if metric == "latency_p99":
        row = sums.loc[control] if control in sums.index else None
        column = _tail_threshold(row) if isinstance(row, pd.Series) else None
        if column is None:
            return {}
        return {str(a): _bernoulli(s["n_latency"], s[column]) for a, s in sums.iterrows()}
    for arm, s in sums.iterrows():
        match metric:
            case "ctr":
                out[str(arm)] = _bernoulli(s["n"], s["sum_label"])
            case "fallback_rate":
                out[str(arm)] = _bernoulli(s["n"], s["n_fallback"])
            case "error_rate":
                out[str(arm)] = _bernoulli(s["n"], s["n_error"])
            case "ne":
                out[str(arm)] = _ne(s)
            case "calibration":
                out[str(arm)] = _calibration(s)
            case _:
                raise ConfigError("guardrails.metric", metric, "no monitor for this metric")
    return out


def unit_statistics(
    sums: pd.DataFrame | Sequence[Mapping[str, Any]], metric: str
) -> dict[str, ArmSummary]:
    """Per-arm statistics of a per-request guardrail with unit-clustered variance.

    Args:
        sums: :meth:`tools.unit_stats.UnitStatsReader.arm_unit_sums` rows of one experiment
            (the frame, or its rows as records).
        metric: A guardrail metric of :data:`UNIT_METRIC`.

    Returns:
        Arm -> statistics over units (delta method for the per-request ratio); empty when the
        window holds no traffic.
    """
    if metric not in UNIT_METRIC:
        raise ConfigError(
            "guardrails.metric", metric, f"no per-unit sums; one of {list(UNIT_METRIC)}"
        )
    m = UNIT_METRIC[metric]
    out: dict[str, ArmSummary] = {}
    rows = sums.to_dict("records") if isinstance(sums, pd.DataFrame) else sums
    for r in rows:
        out[str(r["arm"])] = ArmSummary.from_unit_sums(
            int(r["units"]),
            float(r["sum_n"]),
            float(r["sum_n2"]),
            float(r[f"sum_{m}"]),
            float(r[f"sum_{m}2"]),
            float(r[f"sum_{m}_n"]),
        )
    return out


class Monitors:
    """Every running experiment's guardrails, onboarded automatically and evaluated together.

    Args:
        experiments: Where the running experiments come from.
        reader: The telemetry reader (aggregates pushed down to the warehouse).
        ledger: Where open alerts are kept (one per experiment and guardrail).
        lookback_minutes: The longest window evaluated; the window starts at the experiment's
            creation when that lies within it (the sequences are valid at every look).
        config: The health gate's thresholds (level, SRM alpha, minimum sample).
        units: Per-unit sums (one grouped query for every experiment): per-request guardrails
            (:data:`UNIT_METRIC`) are then judged with unit-clustered variance. Without it they
            fall back to the cube, which treats requests as independent and alarms too often
            when units send many alike requests.
    """

    def __init__(
        self,
        experiments: ExperimentSource,
        reader: TelemetryReader,
        ledger: AlertLedger,
        *,
        lookback_minutes: int = 24 * 60,
        config: GateConfig | None = None,
        units: UnitStatsReader | None = None,
    ) -> None:
        if lookback_minutes < 1:
            raise ConfigError("monitor_lookback_minutes", lookback_minutes, "must be at least 1")
        self._experiments = experiments
        self._reader = reader
        self._ledger = ledger
        self._lookback = timedelta(minutes=lookback_minutes)
        self._config = config or GateConfig()
        self._units = units

    def onboard(self) -> list[Monitor]:
        """One monitor per guardrail of every live (ramping or running, not killed) experiment."""
        monitors = []
        for view in self._experiments.list():
            if view.status not in ACTIVE_STATUSES or view.killed:
                continue
            weights = {name: arm.weight for name, arm in view.arms.items()}
            for guardrail in view.guardrails:
                monitors.append(
                    Monitor(view.id, guardrail, view.control, weights, _aware_utc(view.created_at))
                )
        return monitors

    def check(self, now: datetime | None = None) -> list[MonitorResult]:
        """Evaluate every monitor over the telemetry up to ``now``; writes nothing.

        Args:
            now: End of the window (UTC); the current time by default.

        Returns:
            One result per monitor, grouped by experiment.
        """
        end = _aware_utc(now or utc_now())
        self._reader.clear_cache()  # new telemetry arrived since the last look
        by_experiment: dict[str, list[Monitor]] = {}
        for monitor in self.onboard():
            by_experiment.setdefault(monitor.experiment_id, []).append(monitor)
        starts: dict[str, datetime] = {}
        for experiment_id, monitors in by_experiment.items():
            start = end - self._lookback
            if start < monitors[0].created_at < end:
                start = monitors[0].created_at
            starts[experiment_id] = start
        unit_sums: pd.DataFrame | None = None
        if self._units is not None and any(
            m.guardrail.metric in UNIT_METRIC for ms in by_experiment.values() for m in ms
        ):
            unit_sums = self._units.arm_unit_sums(starts, end)
        results = []
        for experiment_id, monitors in by_experiment.items():
            start = starts[experiment_id]
            metrics = {m.guardrail.metric for m in monitors}
            if unit_sums is not None:
                metrics -= set(UNIT_METRIC)
            cube = pd.DataFrame()
            if metrics - {"srm"}:
                cube = self._reader.cube(
                    Subject(experiment_id=experiment_id),
                    start,
                    end,
                    latency="latency_p99" in metrics,
                )
            own = None
            if unit_sums is not None:
                own = unit_sums[unit_sums["experiment_id"] == experiment_id]
            for monitor in monitors:
                results.append(self._judge(monitor, cube, start, end, own))
        return results

    def evaluate(self, now: datetime | None = None) -> list[AlertSpec]:
        """Check every monitor, open alerts for new breaches and resolve the ones that ended.

        An alert stays open (and is not fired again) until its guardrail is shown safe again or
        its experiment stops running.

        Args:
            now: End of the window (UTC); the current time by default.

        Returns:
            The alerts newly opened, for the caller to investigate.
        """
        end = _aware_utc(now or utc_now())
        results = self.check(end)
        fired: list[AlertSpec] = []
        for r in results:
            m = r.monitor
            if r.verdict == "safe":
                self._ledger.resolve_open("monitor", m.key, end)
            if r.verdict != "breach":
                continue
            metric = GUARDRAIL_ALERT_METRIC[m.guardrail.metric]
            record = self._ledger.open(
                "monitor",
                m.key,
                metric=metric,
                fired_at=end,
                experiment_id=m.experiment_id,
                detail=r.summary,
            )
            if record is None:
                continue
            fired.append(
                AlertSpec(
                    ledger_id=record.id,
                    key=m.key,
                    experiment_id=m.experiment_id,
                    guardrail=m.guardrail.metric,
                    metric=metric,
                    fired_at=end,
                    since=r.since,
                    summary=r.summary,
                    labels={"guardrail": m.guardrail.metric, **r.labels},
                )
            )
        watched = {r.monitor.key for r in results}
        for record in self._ledger.open_alerts("monitor"):
            if record.key not in watched:  # its experiment stopped (killed, paused, completed)
                self._ledger.resolve_open("monitor", record.key, end)
        return fired

    def _judge(
        self,
        monitor: Monitor,
        cube: pd.DataFrame,
        start: datetime,
        end: datetime,
        unit_sums: pd.DataFrame | None = None,
    ) -> MonitorResult:
        cfg, g = self._config, monitor.guardrail
        if g.metric == "srm":
            frame = self._reader.units(monitor.experiment_id, start, end)
            units = {str(a): int(u) for a, u in zip(frame["arm"], frame["units"], strict=True)}
            srm = srm_test(units, monitor.weights, cfg.srm_alpha)
            verdict: MonitorVerdict = (
                "breach" if srm.verdict == "fail" else "safe" if srm.verdict == "ok" else "no_data"
            )
            p = "n/a" if srm.p_value is None else f"{srm.p_value:.2g}"
            summary = f"srm: units per arm {srm.observed} vs weights (chi-square p = {p})"
            return MonitorResult(monitor, verdict, summary, start, labels={"p_value": p})
        if unit_sums is not None and g.metric in UNIT_METRIC:
            stats = unit_statistics(unit_sums, g.metric)
        else:
            stats = arm_statistics(cube, g.metric, monitor.control)
        control = stats.get(monitor.control)
        checks = [
            check_guardrail(g, arm, control, stats.get(arm), cfg)
            for arm in monitor.weights
            if arm != monitor.control
        ]
        harmed = [c for c in checks if c.verdict == "harm"]
        if harmed:
            worst = harmed[0]
            labels = {
                "arm": worst.arm,
                "arms": ",".join(c.arm for c in harmed),
                "estimate": f"{worst.estimate:.4g}",
                "ci_low": f"{worst.ci_low:.4g}",
                "ci_high": f"{worst.ci_high:.4g}",
            }
            return MonitorResult(monitor, "breach", worst.summary, start, worst.arm, labels)
        if checks and all(c.verdict == "safe" for c in checks):
            verdict = "safe"
        elif all(c.verdict == "no_data" for c in checks):
            verdict = "no_data"
        else:
            verdict = "inconclusive"
        summary = "; ".join(c.summary for c in checks) or f"{g.metric}: no test arm"
        return MonitorResult(monitor, verdict, summary, start)
