"""An experiment's guardrail looks, read in one grouped statement for every look and metric.

The charts judge each test arm at a few looks, each from the experiment's first exposure to that
look's time. Read one look at a time, that is one join of requests and exposures per look (the
gate's :meth:`tools.unit_stats.UnitStatsReader.arm_unit_sums`) plus a per-minute cube for NE,
calibration and latency: nine scans of the experiment's traffic. Here it is one statement:

1. per arm, unit and *bucket* (the stretch of time between two looks) the unit's requests, its
   revenue, clicks, fallbacks and errors;
2. per arm and unit, running totals over the buckets (a window ``SUM ... OVER``);
3. per arm and bucket, what each bucket adds to the look's sums over units. Sums of requests,
   revenue and clicks simply add up; a unit's squares do not, so each row adds the change of its
   unit's square, ``y (2 Y - y)`` for a running total ``Y`` that grew by ``y`` (and
   ``y N + Y n - y n`` for the cross product), and a unit counts once, in its first bucket;
4. joined to it, per arm and bucket, the request-level sums of NE, calibration and the latency
   ladder (``tools.unit_stats.request_aggregates``, the monitors' own expressions), which add up
   as they are.

Summed over buckets up to a look (in pandas: a few rows per arm), these are exactly the sums the
gate reads for that window, which a test holds to :meth:`UnitStatsReader.arm_unit_sums`.
Looks fall on whole minutes; the window ends at the last complete minute of the telemetry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from agent.console.guardrails import Look
from tools._dialect_sql import as_int
from tools._queries import EXPOSURE_MARGIN, Queries
from tools.aggregates import HistogramSpec, to_datetime, to_minute
from tools.errors import ConfigError
from tools.schema import TelemetrySchema
from tools.telemetry import READ_ERRORS, read_failed
from tools.unit_stats import UNIT_METRICS, request_aggregates, unit_sum_columns
from tools.vocabulary import as_utc

__all__ = ["LOOKS", "LookWindow", "look_window", "looks_statement", "read_looks"]

LOOKS = 8
"""Looks charted per experiment."""


@dataclass(frozen=True)
class LookWindow:
    """Where an experiment's looks fall: from its first exposure's minute to each look's end.

    Attributes:
        experiment_id: The experiment.
        start: The minute of its first exposure (inclusive).
        bounds: Each look's end (exclusive, whole minutes, ascending); the last one is the end of
            the last complete minute of the telemetry.
    """

    experiment_id: str
    start: datetime
    bounds: tuple[datetime, ...]

    @property
    def end(self) -> datetime:
        """The window's end: the last look's."""
        return self.bounds[-1]


def look_window(
    experiment_id: str, first_exposure: datetime, newest: datetime, looks: int = LOOKS
) -> LookWindow | None:
    """The looks of an experiment, up to the last complete minute of the telemetry.

    Args:
        experiment_id: The experiment.
        first_exposure: Its first exposure's time.
        newest: The newest request's time (the telemetry's clock): its minute may still be
            written to, so the window ends where that minute begins.
        looks: At most this many looks, evenly spread over whole minutes.

    Returns:
        None when no complete minute has passed since the first exposure.
    """
    if looks < 1:
        raise ConfigError("looks", looks, "must be at least 1")
    lo = to_minute(as_utc(first_exposure))
    hi = to_minute(as_utc(newest))  # exclusive: the newest minute is not complete
    if hi <= lo:
        return None
    span = hi - lo
    count = min(looks, span)
    bounds = sorted({lo + math.ceil(span * (k + 1) / count) for k in range(count)})
    return LookWindow(
        experiment_id, as_utc(to_datetime(lo)), tuple(as_utc(to_datetime(b)) for b in bounds)
    )


def looks_statement(schema: TelemetrySchema, dialect: str, window: LookWindow) -> sa.Select[Any]:
    """The grouped statement of :func:`read_looks`: per arm and bucket, what it adds to a look.

    Args:
        schema: The telemetry contract's mapping.
        dialect: The warehouse's SQLAlchemy dialect name.
        window: The experiment and its looks.
    """
    sql = Queries(dialect, schema, HistogramSpec())
    r = schema.table("requests", "r")
    e = schema.table("exposures", "e")
    minute = sql.minute(r.c("ts"))
    bounds = [to_minute(b) for b in window.bounds]
    bucket = sa.case(
        *((minute < b, sa.literal(k, sa.Integer)) for k, b in enumerate(bounds[:-1])),
        else_=sa.literal(len(bounds) - 1, sa.Integer),
    )
    values: dict[str, sa.ColumnElement[Any]] = {
        "revenue": sa.func.coalesce(r.c("revenue"), 0.0),
        "label": as_int(r.c("label")),
        "fallback": as_int(r.c("fallback")),
        "error": as_int(r.c("error")),
    }
    joined = r.clause.join(e.clause, e.c("request_id") == r.c("request_id"))
    where = (
        e.c("experiment_id") == window.experiment_id,
        sql.in_window(r.c("ts"), window.start, window.end),
        sql.in_window(e.c("ts"), window.start - EXPOSURE_MARGIN, window.end + EXPOSURE_MARGIN),
    )
    # 1. Per arm, unit and bucket.
    per_bucket = (
        sa.select(
            e.c("arm").label("arm"),
            e.c("unit_id").label("unit_id"),
            bucket.label("bucket"),
            sa.func.count().label("n"),
            *(sa.func.sum(v).label(m) for m, v in values.items()),
        )
        .select_from(joined)
        .where(*where)
        .group_by(e.c("arm"), e.c("unit_id"), bucket)
        .subquery("b")
    )
    b = per_bucket.c

    # 2. Each unit's running totals over the buckets.
    def running(value: sa.ColumnElement[Any], name: str) -> sa.Label[Any]:
        total = sa.func.sum(sa.cast(value, sa.Double))
        # ROWS, not the default RANGE: one row per bucket, and far cheaper to evaluate.
        frame = total.over(partition_by=[b.arm, b.unit_id], order_by=b.bucket, rows=(None, 0))
        return frame.label(name)

    totals = [running(b.n, "cum_n"), *(running(b[m], f"cum_{m}") for m in UNIT_METRICS)]
    cumulative = sa.select(
        b.arm,
        b.bucket,
        sa.cast(b.n, sa.Double).label("n"),
        *(sa.cast(b[m], sa.Double).label(m) for m in UNIT_METRICS),
        *totals,
    ).subquery("c")
    c = cumulative.c
    # 3. What each bucket adds to the sums over units of a look.
    aggs: list[sa.ColumnElement[Any]] = [
        sa.func.sum(sa.case((c.cum_n == c.n, 1), else_=0)).label("units"),
        sa.func.sum(c.n).label("sum_n"),
        sa.func.sum(c.n * (2 * c.cum_n - c.n)).label("sum_n2"),
    ]
    for m in UNIT_METRICS:
        y, total = c[m], c[f"cum_{m}"]
        aggs += [
            sa.func.sum(y).label(f"sum_{m}"),
            sa.func.sum(y * (2 * total - y)).label(f"sum_{m}2"),
            sa.func.sum(y * c.cum_n + total * c.n - y * c.n).label(f"sum_{m}_n"),
        ]
    unit_part = sa.select(c.arm, c.bucket, *aggs).group_by(c.arm, c.bucket).subquery("u")
    # 4. The request-level sums add up as they are: per arm and bucket, straight from the rows
    # (carried through the units' running totals they cost more than this second scan).
    extra = request_aggregates(r.c, request_sums=True, latency=True)
    request_part = (
        sa.select(e.c("arm").label("arm"), bucket.label("bucket"), *extra)
        .select_from(joined)
        .where(*where)
        .group_by(e.c("arm"), bucket)
        .subquery("q")
    )
    u, q = unit_part.c, request_part.c
    return sa.select(
        u.arm,
        u.bucket,
        *(u[name] for name in unit_sum_columns()),
        *(q[str(x.name)] for x in extra),
    ).select_from(unit_part.join(request_part, sa.and_(u.arm == q.arm, u.bucket == q.bucket)))


def read_looks(engine: sa.Engine, schema: TelemetrySchema, window: LookWindow) -> list[Look]:
    """Every look's sums of an experiment, from one statement.

    Args:
        engine: The telemetry warehouse.
        schema: The contract's mapping.
        window: The experiment and its looks.

    Returns:
        One :class:`Look` per bound, oldest first: ``units`` has the columns of
        :meth:`tools.unit_stats.UnitStatsReader.arm_unit_sums` with the request sums and the
        latency ladder, one row per arm with traffic by then; ``requests`` is the same rows
        without ``experiment_id`` (NE, calibration and latency are judged on its request-level
        sums).

    Raises:
        TelemetryQueryError: The warehouse refused the statement (a missing table or column).
        TelemetryUnavailable: The warehouse could not be reached (trying again may help).
    """
    query = looks_statement(schema, str(engine.dialect.name), window)
    try:
        with engine.connect() as conn:
            result = conn.execute(query)
            rows = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except READ_ERRORS as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        why = first[0][:200] if first else type(exc).__name__
        raise read_failed(exc)(f"the charts' looks of {window.experiment_id}: {why}") from exc
    columns = unit_sum_columns(request_sums=True, latency=True)
    if rows.empty:
        empty = pd.DataFrame(columns=["experiment_id", "arm", *columns])
        return [Look(at, empty, empty.drop(columns="experiment_id")) for at in window.bounds]
    # Every arm at every bucket (zeros where it had no traffic), summed up to each look: a few
    # rows, in numpy (pandas' per-call costs would outweigh the arithmetic).
    arms = sorted({str(a) for a in rows["arm"]})
    at_arm = {a: i for i, a in enumerate(arms)}
    per_bucket = np.zeros((len(arms), len(window.bounds), len(columns)))
    np.add.at(
        per_bucket,
        (
            np.array([at_arm[str(a)] for a in rows["arm"]]),
            pd.to_numeric(rows["bucket"]).to_numpy(dtype=int),
        ),
        rows[columns].apply(pd.to_numeric).to_numpy(dtype="float64", na_value=0.0),
    )
    running = per_bucket.cumsum(axis=1)
    served = columns.index("sum_n")
    out = []
    for k, at in enumerate(window.bounds):
        kept = np.flatnonzero(running[:, k, served] > 0)
        sums = pd.DataFrame(running[kept, k, :], columns=columns)
        sums.insert(0, "arm", [arms[i] for i in kept])
        units = sums.copy()
        units.insert(0, "experiment_id", window.experiment_id)
        out.append(Look(at, units, sums))
    return out
