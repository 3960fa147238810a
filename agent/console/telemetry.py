"""What the console reads from the telemetry: table sizes, the registry, moments and gate series.

Everything goes through the telemetry contract's mapping (``telemetry_tables`` and
``telemetry_columns``) and aggregates in the warehouse: row counts and time ranges for the Data
page, per-unit moments of a guardrail metric for the builder's power analysis, and the rollout
gate's per-arm statistics at a few points in time for an experiment's guardrail charts (the same
unit-clustered sums and confidence sequence as :mod:`lifecycle.gate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from agent.console.power import UnitMoments
from lifecycle.gate import GateConfig, confidence_sequence, relative_lift
from lifecycle.monitors import UNIT_METRIC, unit_statistics
from lifecycle.settings import Settings
from lifecycle.views import ExperimentView
from tools._dialect_sql import as_int
from tools._queries import Queries
from tools.aggregates import HistogramSpec
from tools.errors import ConfigError, TelemetryError
from tools.redaction import hide_passwords, redact_url
from tools.schema import CONTRACT_COLUMNS, TelemetrySchema
from tools.telemetry import TelemetryReader
from tools.unit_stats import UnitStatsReader
from tools.vocabulary import as_utc

__all__ = ["ConsoleTelemetry", "GuardrailSeries", "TableStats"]

_TIME_COLUMN = {"model_snapshots": "published_at"}


@dataclass(frozen=True)
class TableStats:
    """One telemetry table: where it lives, its rows and the time they span (None: absent)."""

    name: str
    mapped_to: str
    rows: int | None
    first: datetime | None
    last: datetime | None
    error: str = ""


@dataclass(frozen=True)
class GuardrailSeries:
    """One guardrail of one test arm against control over time, with its confidence sequence.

    Attributes:
        metric: The guardrail metric.
        arm: The test arm.
        max_regression: The tolerated relative regression.
        times: Epoch seconds of each look.
        lift: Relative lift of the arm on control at each look (NaN: no data).
        low: Lower bound of the always-valid interval.
        high: Upper bound.
    """

    metric: str
    arm: str
    max_regression: float
    times: list[float]
    lift: list[float]
    low: list[float]
    high: list[float]


class ConsoleTelemetry:
    """The console's reads of the telemetry warehouse (engine opened on first use).

    Args:
        settings: ``telemetry_url`` and the table/column mapping.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.schema = TelemetrySchema.from_mappings(
            settings.telemetry_tables, settings.telemetry_columns
        )
        self._engine: sa.Engine | None = None

    def engine(self) -> sa.Engine:
        """The warehouse's engine (ConfigError for a URL without a driver)."""
        if self._engine is None:
            url = self._settings.telemetry_url
            try:
                self._engine = sa.create_engine(url)
            except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
                why = hide_passwords(str(exc))
                raise ConfigError("telemetry_url", redact_url(url), f"cannot open: {why}") from None
        return self._engine

    def close(self) -> None:
        """Release the engine's connections."""
        if self._engine is not None:
            self._engine.dispose()

    def _queries(self) -> Queries:
        return Queries(str(self.engine().dialect.name), self.schema, HistogramSpec())

    # -- the Data page ------------------------------------------------------------------------

    def tables(self) -> list[TableStats]:
        """Row count and time range of every contract table (and ``shadow_predictions``)."""
        out = []
        for name in (*CONTRACT_COLUMNS, "shadow_predictions"):
            mapped = self._settings.telemetry_tables.get(name, name)
            try:
                if name in CONTRACT_COLUMNS:
                    table = self.schema.table(name)
                    ts = table.c(_TIME_COLUMN.get(name, "ts"))
                    clause: Any = table.clause
                else:
                    clause = sa.table(mapped, sa.column("ts"))
                    ts = clause.c.ts
                query = sa.select(sa.func.count(), sa.func.min(ts), sa.func.max(ts)).select_from(
                    clause
                )
                with self.engine().connect() as conn:
                    rows, first, last = conn.execute(query).one()
                out.append(TableStats(name, mapped, int(rows), _aware(first), _aware(last)))
            except (sa.exc.SQLAlchemyError, ConfigError, TelemetryError) as exc:
                brief = str(exc).splitlines()[0][:160]
                out.append(TableStats(name, mapped, None, None, None, brief))
            except Exception as exc:  # a driver's own error (DuckDB's CatalogException)
                brief = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                out.append(TableStats(name, mapped, None, None, None, brief))
        return out

    def snapshots(self) -> pd.DataFrame:
        """The registry's snapshots: model, version, trained/published, training NE/calibration."""
        return TelemetryReader(self.engine(), self.schema).snapshots()

    # -- the builder's power analysis ---------------------------------------------------------

    def unit_moments(self, metric: str, days: float) -> tuple[UnitMoments, float]:
        """Per-unit moments of a guardrail metric over the last ``days`` of requests.

        Returns:
            The moments and the days the window really covered (less when the telemetry is
            younger).

        Raises:
            ConfigError: ``metric`` has no per-unit sum (one of :data:`UNIT_METRIC`).
        """
        if metric not in UNIT_METRIC:
            raise ConfigError("metric", metric, f"one of {sorted(UNIT_METRIC)}")
        r = self.schema.table("requests", "r")
        column = UNIT_METRIC[metric]
        value = (
            sa.func.coalesce(r.c("revenue"), 0.0) if column == "revenue" else as_int(r.c(column))
        )
        with self.engine().connect() as conn:
            last = conn.execute(sa.select(sa.func.max(r.c("ts")))).scalar()
            first_seen = conn.execute(sa.select(sa.func.min(r.c("ts")))).scalar()
            if last is None or first_seen is None:
                return UnitMoments(metric, 0, 0, 0, 0, 0, 0, 0.0), 0.0
            end = as_utc(last) + timedelta(seconds=1)
            start = max(as_utc(first_seen), end - timedelta(days=days))
            per_unit = (
                sa.select(
                    r.c("unit_id").label("unit"),
                    sa.cast(sa.func.count(), sa.Double).label("n"),
                    sa.cast(sa.func.sum(value), sa.Double).label("y"),
                )
                .where(self._queries().in_window(r.c("ts"), start, end))
                .group_by(r.c("unit_id"))
                .subquery("u")
            )
            u = per_unit.c
            row = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.sum(u.n),
                    sa.func.sum(u.n * u.n),
                    sa.func.sum(u.y),
                    sa.func.sum(u.y * u.y),
                    sa.func.sum(u.y * u.n),
                )
            ).one()
        hours = (end - start).total_seconds() / 3600.0
        units, n, n2, y, y2, yn = (0.0 if v is None else float(v) for v in row)
        moments = UnitMoments(metric, int(units), n, n2, y, y2, yn, hours)
        return moments, hours / 24.0

    # -- an experiment's guardrail charts -----------------------------------------------------

    def guardrail_series(
        self, view: ExperimentView, looks: int = 8, gate: GateConfig | None = None
    ) -> list[GuardrailSeries]:
        """Each per-unit guardrail of each test arm at ``looks`` times since its first exposure.

        Every look reads the unit-clustered sums from the start to that time (as the gate does
        for a stage) and draws the confidence sequence at that sample size.
        """
        gate = gate or GateConfig()
        guardrails = [g for g in view.guardrails if g.metric in UNIT_METRIC]
        if not guardrails or view.status == "draft":
            return []
        # From its first exposure in the telemetry: a replayed or simulated world keeps its own
        # clock, which the audit log's launch time need not share.
        e = self.schema.table("exposures", "e")
        with self.engine().connect() as conn:
            began = conn.execute(
                sa.select(sa.func.min(e.c("ts"))).where(e.c("experiment_id") == view.id)
            ).scalar()
        units = UnitStatsReader(self.engine(), self.schema)
        latest = units.latest()
        if began is None or latest is None or as_utc(latest) <= as_utc(began):
            return []
        start, end = as_utc(began), as_utc(latest) + timedelta(minutes=1)
        step = (end - start) / looks
        times = [start + step * (k + 1) for k in range(looks)]
        tests = [a for a in view.arms if a != view.control]
        out: dict[tuple[str, str], GuardrailSeries] = {
            (g.metric, arm): GuardrailSeries(g.metric, arm, g.max_regression, [], [], [], [])
            for g in guardrails
            for arm in tests
        }
        for t in times:
            sums = units.arm_unit_sums({view.id: start}, t)
            for g in guardrails:
                stats = unit_statistics(sums, g.metric) if not sums.empty else {}
                control = stats.get(view.control)
                for arm in tests:
                    series = out[(g.metric, arm)]
                    series.times.append(t.timestamp())
                    test = stats.get(arm)
                    if control is None or test is None or min(control.n, test.n) < gate.min_n:
                        series.lift.append(math.nan)
                        series.low.append(math.nan)
                        series.high.append(math.nan)
                        continue
                    lift, se, _ = relative_lift(control, test)
                    lo, hi = confidence_sequence(
                        lift, se, control.n + test.n, gate.alpha, gate.tuning_n
                    )
                    series.lift.append(lift)
                    series.low.append(float(lo))
                    series.high.append(float(hi))
        return list(out.values())


def _aware(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str) and value:
        return as_utc(datetime.fromisoformat(value))
    return None
