"""What the console reads from the telemetry: table sizes, the registry, moments and gate series.

Everything goes through the telemetry contract's mapping (``telemetry_tables`` and
``telemetry_columns``) and aggregates in the warehouse: row counts and time ranges for the Data
page, per-unit moments of a guardrail metric for the builder's power analysis, and the per-arm
sums at a few looks for an experiment's guardrail charts (:mod:`.looks`: the monitors' sums, in
one statement for every look; judged by :mod:`lifecycle.gate` in :mod:`.guardrails`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from agent.console.guardrails import GuardrailCharts, guardrail_charts
from agent.console.looks import LOOKS, LookWindow, look_window, read_looks
from agent.console.power import UnitMoments
from agent.settings import Settings
from lifecycle.gate import GateConfig
from lifecycle.monitors import UNIT_METRIC
from lifecycle.views import ExperimentView
from tools._dialect_sql import as_int
from tools._queries import Queries
from tools.aggregates import HistogramSpec
from tools.errors import ConfigError, TelemetryError
from tools.redaction import hide_passwords, redact_url
from tools.schema import CONTRACT_COLUMNS
from tools.telemetry import TelemetryReader
from tools.vocabulary import as_utc

__all__ = ["ConsoleTelemetry", "TableStats"]

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


class ConsoleTelemetry:
    """The console's reads of the telemetry warehouse (engine opened on first use).

    Args:
        settings: ``telemetry_url`` and the table/column mapping.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.schema = settings.telemetry_schema()
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

    def chart_clock(self, experiment_id: str) -> tuple[datetime | None, datetime | None]:
        """An experiment's first exposure and the telemetry's newest request, in one statement.

        Charts start at the first exposure in the telemetry: a replayed or simulated world keeps
        its own clock, which the audit log's launch time need not share.
        """
        e = self.schema.table("exposures", "e")
        r = self.schema.table("requests", "r")
        first = sa.select(sa.func.min(e.c("ts"))).where(e.c("experiment_id") == experiment_id)
        newest = sa.select(sa.func.max(r.c("ts")))
        with self.engine().connect() as conn:
            row = conn.execute(sa.select(first.scalar_subquery(), newest.scalar_subquery())).one()
        return _aware(row[0]), _aware(row[1])

    def chart_window(self, view: ExperimentView, looks: int = LOOKS) -> LookWindow | None:
        """Where an experiment's looks fall now (None: a draft, or no complete minute yet)."""
        if view.status == "draft":
            return None
        first, newest = self.chart_clock(view.id)
        if first is None or newest is None:
            return None
        return look_window(view.id, first, newest, looks)

    def guardrail_charts(
        self,
        view: ExperimentView,
        window: LookWindow | None = None,
        gate: GateConfig | None = None,
    ) -> GuardrailCharts:
        """Every charted metric of each test arm at each look since its first exposure.

        All looks and metrics come from one grouped statement (:func:`.looks.read_looks`);
        :func:`agent.console.guardrails.guardrail_charts` judges each look with the gate's
        confidence sequence.

        Args:
            view: The experiment.
            window: Its looks; :meth:`chart_window` by default.
            gate: The gate's level and tuning.
        """
        window = window if window is not None else self.chart_window(view)
        if window is None:
            return GuardrailCharts([], [])
        return guardrail_charts(view, read_looks(self.engine(), self.schema, window), gate)


def _aware(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str) and value:
        return as_utc(datetime.fromisoformat(value))
    return None
