"""Monitors that watch every running experiment's guardrails and fire alerts.

Every running experiment is onboarded automatically: one monitor per guardrail it declares
(revenue per request, CTR, NE, calibration, fallback rate, error rate, latency, SRM). One look
reads every experiment's per-arm sums in one grouped statement
(:meth:`tools.unit_stats.UnitStatsReader.arm_unit_sums`: units, per-unit sums for unit-clustered
variance, request sums for NE, calibration and latency) and judges the per-request guardrails of
all experiments in one vectorised pass (:mod:`lifecycle.judge`) with the sequential health gate's
statistics (:mod:`lifecycle.gate`): did a test arm regress beyond the guardrail's tolerance? The
confidence sequences are cumulative from the experiment's creation (within the lookback), so
their level holds over every look of the run, not per look. A breach
becomes an :class:`AlertSpec` — plain data, since :mod:`lifecycle` must not import the agent; the
caller (the serve loop, ``vigil monitor --once``) turns it into an investigation.

Open alerts live in the :class:`~lifecycle.alerts.AlertLedger` (state database): an alert for
the same experiment and guardrail is not fired again while one is open, across restarts and
processes; it resolves when the guardrail is shown safe again or the experiment stops running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import pandas as pd

from lifecycle.alerts import AlertLedger
from lifecycle.allocation import ACTIVE_STATUSES
from lifecycle.config import Guardrail
from lifecycle.gate import GateConfig, check_guardrail, srm_test
from lifecycle.judge import (
    COMPARISON_COLUMNS,
    UNIT_COLUMN,
    arm_statistics,
    guardrail_summary,
    judge_unit_guardrails,
    unit_statistics,
)
from lifecycle.views import ExperimentView
from tools.errors import ConfigError
from tools.telemetry import TelemetryReader
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
    "fleet_srm_alpha",
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

UNIT_METRIC: Mapping[str, str] = UNIT_COLUMN
"""Per-request guardrails judged with unit-clustered variance -> their per-unit sum."""

_REQUEST_METRICS = frozenset({"ne", "calibration", "latency_p99"})  # request-level sums
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


class Monitors:
    """Every running experiment's guardrails, onboarded automatically and evaluated together.

    Args:
        experiments: Where the running experiments come from.
        reader: The telemetry reader (aggregates pushed down to the warehouse).
        ledger: Where open alerts are kept (one per experiment and guardrail).
        lookback_minutes: The longest window evaluated; the window starts at the experiment's
            creation when that lies within it (the sequences are valid at every look).
        config: The health gate's thresholds (level, SRM alpha, minimum sample).
        units: Per-unit sums reader (one grouped query for every experiment, per-request
            guardrails judged with unit-clustered variance); one over ``reader``'s warehouse
            and schema if None.
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
        self._units = units or UnitStatsReader(reader.engine, reader.schema)

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

        One grouped statement reads every experiment's per-arm sums (units for SRM, per-unit
        sums for the per-request guardrails, request sums for NE, calibration and latency), and
        one vectorised pass judges the per-request guardrails of all experiments together.

        Args:
            now: End of the window (UTC); the current time by default.

        Returns:
            One result per monitor, grouped by experiment.
        """
        end = _aware_utc(now or utc_now())
        by_experiment: dict[str, list[Monitor]] = {}
        for monitor in self.onboard():
            by_experiment.setdefault(monitor.experiment_id, []).append(monitor)
        starts: dict[str, datetime] = {}
        for experiment_id, monitors in by_experiment.items():
            start = end - self._lookback
            if start < monitors[0].created_at < end:
                start = monitors[0].created_at
            starts[experiment_id] = start
        if not starts:
            return []
        metrics = {m.guardrail.metric for ms in by_experiment.values() for m in ms}
        sums = self._units.arm_unit_sums(
            starts,
            end,
            request_sums=bool(metrics & _REQUEST_METRICS),
            latency="latency_p99" in metrics,
        )
        judged = self._judge_unit_metrics(by_experiment, sums)
        units: dict[str, dict[str, int]] = {}
        for exp, arm, n in zip(sums["experiment_id"], sums["arm"], sums["units"], strict=True):
            units.setdefault(str(exp), {})[str(arm)] = int(n)
        frames: dict[str, pd.DataFrame] | None = None
        results = []
        for experiment_id, monitors in by_experiment.items():
            start = starts[experiment_id]
            for monitor in monitors:
                metric = monitor.guardrail.metric
                if metric == "srm":
                    srm_alpha = fleet_srm_alpha(self._config, len(by_experiment))
                    counts = units.get(experiment_id, {})
                    results.append(self._srm(monitor, counts, start, srm_alpha))
                elif metric in UNIT_METRIC:
                    rows = judged.get((experiment_id, metric), [])
                    results.append(self._from_rows(monitor, rows, start))
                else:
                    if frames is None:  # only when an experiment has NE/calibration/latency
                        frames = {str(k): g for k, g in sums.groupby("experiment_id")}
                    own = frames.get(experiment_id, sums.iloc[0:0])
                    results.append(self._judge(monitor, own, start))
        return results

    def _judge_unit_metrics(
        self, by_experiment: Mapping[str, list[Monitor]], sums: pd.DataFrame
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Every per-request guardrail of every experiment in one vectorised pass."""
        rows = [
            (m.experiment_id, m.guardrail.metric, arm, m.control, m.guardrail.max_regression)
            for ms in by_experiment.values()
            for m in ms
            if m.guardrail.metric in UNIT_METRIC
            for arm in m.weights
            if arm != m.control
        ]
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if not rows:
            return out
        comparisons = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
        judged = judge_unit_guardrails(sums, comparisons, self._config)
        for record in judged.to_dict("records"):
            row = {str(k): v for k, v in record.items()}
            out.setdefault((str(row["experiment_id"]), str(row["metric"])), []).append(row)
        return out

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
        open_keys = {record.key for record in self._ledger.open_alerts("monitor")}
        fired: list[AlertSpec] = []
        for r in results:
            m = r.monitor
            if r.verdict == "safe" and m.key in open_keys:
                self._ledger.resolve_open("monitor", m.key, end)
            if r.verdict != "breach" or m.key in open_keys:
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
        for key in open_keys - watched:  # its experiment stopped (killed, paused, completed)
            self._ledger.resolve_open("monitor", key, end)
        return fired

    def _srm(
        self, monitor: Monitor, units: Mapping[str, int], start: datetime, srm_alpha: float
    ) -> MonitorResult:
        srm = srm_test(units, monitor.weights, srm_alpha)
        verdict: MonitorVerdict = (
            "breach" if srm.verdict == "fail" else "safe" if srm.verdict == "ok" else "no_data"
        )
        p = "n/a" if srm.p_value is None else f"{srm.p_value:.2g}"
        summary = f"srm: units per arm {srm.observed} vs weights (chi-square p = {p})"
        return MonitorResult(monitor, verdict, summary, start, labels={"p_value": p})

    def _from_rows(
        self, monitor: Monitor, rows: Sequence[Mapping[str, Any]], start: datetime
    ) -> MonitorResult:
        """A monitor's result from its judged rows (one per test arm)."""
        cfg = self._config
        harmed = [r for r in rows if r["verdict"] == "harm"]
        if harmed:
            worst = harmed[0]
            labels = {
                "arm": str(worst["arm"]),
                "arms": ",".join(str(r["arm"]) for r in harmed),
                "estimate": f"{worst['estimate']:.4g}",
                "ci_low": f"{worst['ci_low']:.4g}",
                "ci_high": f"{worst['ci_high']:.4g}",
            }
            summary = guardrail_summary(worst, cfg)
            return MonitorResult(monitor, "breach", summary, start, str(worst["arm"]), labels)
        verdict = _combined([str(r["verdict"]) for r in rows])
        summary = "; ".join(guardrail_summary(r, cfg) for r in rows)
        return MonitorResult(
            monitor, verdict, summary or f"{monitor.guardrail.metric}: no test arm", start
        )

    def _judge(self, monitor: Monitor, sums: pd.DataFrame, start: datetime) -> MonitorResult:
        """NE, calibration or latency: request-level sums of the experiment's arms."""
        cfg, g = self._config, monitor.guardrail
        stats = arm_statistics(sums, g.metric, monitor.control)
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
        verdict = _combined([c.verdict for c in checks])
        summary = "; ".join(c.summary for c in checks) or f"{g.metric}: no test arm"
        return MonitorResult(monitor, verdict, summary, start)


def fleet_srm_alpha(config: GateConfig, experiments: int) -> float:
    """The SRM level of one monitor when ``experiments`` are watched together (Bonferroni).

    An SRM alert opens an investigation, and a chi-square at ``srm_alpha`` per experiment would
    fire by chance once a look at 1,000 experiments; dividing by their number keeps the chance
    of any false SRM alert per look at ``srm_alpha``. A real mismatch (units lost by a logging
    bug) has p-values far smaller still. The rollout gate keeps ``srm_alpha`` per experiment: it
    decides one owner's launch.
    """
    return config.srm_alpha / max(1, experiments)


def _combined(verdicts: Sequence[str]) -> MonitorVerdict:
    """A monitor's verdict over its test arms when none is harmed."""
    if verdicts and all(v == "safe" for v in verdicts):
        return "safe"
    if all(v == "no_data" for v in verdicts):
        return "no_data"
    return "inconclusive"
