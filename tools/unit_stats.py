"""Per-unit sufficient statistics of per-request metrics, for unit-clustered variance.

A unit (a user) sends many requests, and its requests are alike: a heavy clicker clicks on many of
them. Treating requests as independent then understates the variance of a per-request mean (by
the design effect ``1 + (m - 1) * rho``) and a sequential test alarms far more often than its
level. Experiment platforms (Deng et al., "Applying the delta method in metric analytics", 2018)
compute such ratio metrics over units instead: per unit, the number of requests ``n_i`` and the
metric's sum ``y_i``; per arm, the sums of ``n_i``, ``y_i`` and their squares and cross product,
from which the delta method gives the variance of ``sum y / sum n``.

The aggregation is pushed down to SQL in one statement for any number of experiments, each with
its own window start (the start of its rollout stage, at minute resolution, rounded up):
``GROUP BY experiment, arm, unit`` first, then ``GROUP BY experiment, arm``. Only one row per
experiment and arm comes back. The same statement can carry the request-level sums of the
guardrails that have no per-unit form (NE, calibration, latency above a ladder of thresholds), so
the monitors and the rollout controller read everything they judge in one scan for all
experiments.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import duckdb
import pandas as pd
import sqlalchemy as sa

from tools._dialect_sql import as_int
from tools._queries import EXPOSURE_MARGIN, Queries
from tools.aggregates import LATENCY_LADDER_MS, LOGLOSS_EPS, HistogramSpec, naive_utc, to_minute
from tools.errors import ConfigError, TelemetryQueryError
from tools.schema import TelemetrySchema

__all__ = [
    "REQUEST_SUMS",
    "UNIT_METRICS",
    "UnitStatsReader",
    "request_aggregates",
    "unit_sum_columns",
]

UNIT_METRICS: tuple[str, ...] = ("revenue", "label", "fallback", "error")
"""Per-request metrics summed per unit: revenue, clicks, fallbacks, errors."""

REQUEST_SUMS: tuple[str, ...] = (
    "n_pred",
    "sum_pred",
    "sum_pred2",
    "sum_label_v",
    "n_ll",
    "sum_ll",
    "sum_ll2",
    "n_latency",
)
"""Request-level sums (the cube's names) for guardrails without per-unit sums: NE, calibration,
latency (``lat_gt_<k>`` follow with ``latency=True``)."""


def unit_sum_columns(request_sums: bool = False, latency: bool = False) -> list[str]:
    """Columns of :meth:`UnitStatsReader.arm_unit_sums` after ``experiment_id`` and ``arm``.

    Args:
        request_sums: Include :data:`REQUEST_SUMS`.
        latency: Include ``lat_gt_<k>`` per :data:`~tools.aggregates.LATENCY_LADDER_MS` step.
    """
    cols = ["units", "sum_n", "sum_n2"]
    for m in UNIT_METRICS:
        cols += [f"sum_{m}", f"sum_{m}2", f"sum_{m}_n"]
    if request_sums or latency:
        cols += list(REQUEST_SUMS)
    if latency:
        cols += [f"lat_gt_{k}" for k in range(len(LATENCY_LADDER_MS))]
    return cols


def request_aggregates(c: Any, *, request_sums: bool, latency: bool) -> list[sa.ColumnElement[Any]]:
    """Per-unit request-level sums (summed again per arm): the cube's NE, calibration, latency.

    Args:
        c: The requests table's column accessor (``TelemetrySchema.table(...).c``).
        request_sums: Include :data:`REQUEST_SUMS`.
        latency: Include ``lat_gt_<k>`` per latency ladder step (and the request sums).
    """
    out: list[sa.ColumnElement[Any]] = []
    if request_sums or latency:
        p = c("prediction")
        pv = sa.case((sa.and_(p >= 0.0, p <= 1.0), p), else_=sa.null())
        y = as_int(c("label"))
        pc = sa.case(
            (pv < LOGLOSS_EPS, LOGLOSS_EPS), (pv > 1 - LOGLOSS_EPS, 1 - LOGLOSS_EPS), else_=pv
        )
        ll = -(y * sa.func.ln(pc) + (1 - y) * sa.func.ln(1 - pc))
        out += [
            sa.func.count(pv).label("n_pred"),
            sa.func.sum(pv).label("sum_pred"),
            sa.func.sum(pv * pv).label("sum_pred2"),
            sa.func.sum(sa.case((pv.is_not(None), y), else_=sa.null())).label("sum_label_v"),
            sa.func.count(ll).label("n_ll"),
            sa.func.sum(ll).label("sum_ll"),
            sa.func.sum(ll * ll).label("sum_ll2"),
            sa.func.count(c("latency_ms")).label("n_latency"),
        ]
    if latency:
        out += [
            sa.func.sum(sa.case((c("latency_ms") > t, 1), else_=0)).label(f"lat_gt_{k}")
            for k, t in enumerate(LATENCY_LADDER_MS)
        ]
    return out


def _brief(exc: BaseException) -> str:
    """The database's own first line, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


class UnitStatsReader:
    """Reads per-arm sums over units for many experiments in one grouped statement.

    Args:
        engine: An engine or a SQLAlchemy URL of the telemetry warehouse.
        schema: Table/column mapping; the contract's names by default.
    """

    def __init__(self, engine: sa.Engine | str, schema: TelemetrySchema | None = None) -> None:
        self._engine = sa.create_engine(engine) if isinstance(engine, str) else engine
        self.schema = schema or TelemetrySchema()
        self._sql = Queries(str(self._engine.dialect.name), self.schema, HistogramSpec())
        self.queries = 0
        """How many statements this reader has run."""
        self.query_seconds = 0.0
        """Wall time those statements took."""

    def statement(
        self,
        starts: Mapping[str, datetime],
        end: datetime,
        *,
        request_sums: bool = False,
        latency: bool = False,
    ) -> sa.Select[Any]:
        """The grouped statement of :meth:`arm_unit_sums` (exposed for tests and benches)."""
        if not starts:
            raise ConfigError("starts", {}, "needs at least one experiment")
        for experiment_id, lo in starts.items():
            if naive_utc(lo) >= naive_utc(end):
                raise ConfigError(f"starts.{experiment_id}", lo, f"must be before the end {end}")
        r = self.schema.table("requests", "r")
        e = self.schema.table("exposures", "e")
        earliest = min(starts.values(), key=naive_utc)
        exp_col = e.c("experiment_id")
        # Each experiment's own start, joined as a small table: one hash join, not a predicate
        # per experiment. Minute resolution, rounded up: no request of the previous stage counts.
        rows = [
            sa.select(
                sa.literal(k, sa.String).label("experiment_id"),
                sa.literal(to_minute(lo, ceil=True), sa.BigInteger).label("lo_minute"),
            )
            for k, lo in starts.items()
        ]
        # UNION ALL of one-row selects: every dialect has it (SQLite has no VALUES column list).
        windows = (rows[0] if len(rows) == 1 else sa.union_all(*rows)).subquery("w")
        values: dict[str, sa.ColumnElement[Any]] = {
            "revenue": sa.func.coalesce(r.c("revenue"), 0.0),
            "label": as_int(r.c("label")),
            "fallback": as_int(r.c("fallback")),
            "error": as_int(r.c("error")),
        }
        extra = request_aggregates(r.c, request_sums=request_sums, latency=latency)
        per_unit = (
            sa.select(
                exp_col.label("experiment_id"),
                e.c("arm").label("arm"),
                e.c("unit_id").label("unit_id"),
                sa.func.count().label("n"),
                *(sa.func.sum(v).label(m) for m, v in values.items()),
                *extra,
            )
            .select_from(
                r.clause.join(e.clause, e.c("request_id") == r.c("request_id")).join(
                    windows, windows.c.experiment_id == exp_col
                )
            )
            .where(
                self._sql.in_window(r.c("ts"), earliest, end),
                self._sql.in_window(e.c("ts"), earliest - EXPOSURE_MARGIN, end + EXPOSURE_MARGIN),
                self._sql.minute(r.c("ts")) >= windows.c.lo_minute,
            )
            .group_by(exp_col, e.c("arm"), e.c("unit_id"))
            .subquery("u")
        )
        u = per_unit.c
        n = sa.cast(u.n, sa.Double)
        aggs: list[sa.ColumnElement[Any]] = [
            sa.func.count().label("units"),
            sa.func.sum(n).label("sum_n"),
            sa.func.sum(n * n).label("sum_n2"),
        ]
        for m in UNIT_METRICS:
            y = sa.cast(u[m], sa.Double)
            aggs += [
                sa.func.sum(y).label(f"sum_{m}"),
                sa.func.sum(y * y).label(f"sum_{m}2"),
                sa.func.sum(y * n).label(f"sum_{m}_n"),
            ]
        aggs += [sa.func.sum(sa.cast(u[str(x.name)], sa.Double)).label(str(x.name)) for x in extra]
        return sa.select(u.experiment_id, u.arm, *aggs).group_by(u.experiment_id, u.arm)

    def arm_unit_sums(
        self,
        starts: Mapping[str, datetime],
        end: datetime,
        *,
        request_sums: bool = False,
        latency: bool = False,
    ) -> pd.DataFrame:
        """Per experiment and arm: units, and sums over units of per-unit totals.

        Args:
            starts: Experiment id -> window start (inclusive, UTC), e.g. its stage's start.
            end: Window end (exclusive, UTC), the same for every experiment.
            request_sums: Also the request-level sums of :data:`REQUEST_SUMS` (NE, calibration
                and latency guardrails), in the same statement.
            latency: Also ``lat_gt_<k>``: requests slower than each latency ladder step (and
                the request sums).

        Returns:
            Columns ``experiment_id, arm`` and :func:`unit_sum_columns`: ``units`` (distinct
            units with a request in the window), ``sum_n`` / ``sum_n2`` (requests per unit and
            their squares), and per metric ``m`` of :data:`UNIT_METRICS` ``sum_m``, ``sum_m2``
            and ``sum_m_n`` (the per-unit total, its square, its product with the unit's
            requests). Empty (same columns) when no experiment has traffic.
        """
        query = self.statement(starts, end, request_sums=request_sums, latency=latency)
        self.queries += 1
        began = time.perf_counter()
        try:
            with self._engine.connect() as conn:
                result = conn.execute(query)
                frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        except (sa.exc.SQLAlchemyError, duckdb.Error) as exc:
            raise TelemetryQueryError(f"per-unit statistics query failed: {_brief(exc)}") from exc
        finally:
            self.query_seconds += time.perf_counter() - began
        out = pd.DataFrame(
            {
                "experiment_id": frame["experiment_id"].astype(str),
                "arm": frame["arm"].astype(str),
            }
        )
        for col in unit_sum_columns(request_sums, latency):
            out[col] = pd.to_numeric(frame[col]).to_numpy(dtype="float64", na_value=0.0)
        return out

    def latest(self) -> datetime | None:
        """The telemetry clock: the newest request's timestamp (UTC), None when there is none.

        A simulated or replayed world runs on its own time; the rollout controller and the
        monitors read "now" from here instead of the wall clock.
        """
        r = self.schema.table("requests", "r")
        try:
            with self._engine.connect() as conn:
                value = conn.execute(sa.select(sa.func.max(r.c("ts")))).scalar()
        except (sa.exc.SQLAlchemyError, duckdb.Error) as exc:
            raise TelemetryQueryError(f"telemetry clock query failed: {_brief(exc)}") from exc
        if value is None:
            return None
        ts = pd.Timestamp(value).to_pydatetime()
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
