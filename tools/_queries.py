"""The SQL of the telemetry reader, built with SQLAlchemy Core for any dialect.

Every statement aggregates in the database; :mod:`tools.telemetry` runs them, types the answers
and caches them. One statement can serve two frames: on dialects with ``GROUPING SETS``,
:meth:`Queries.cube_and_histogram` reads the subject's rows (the exposure join included) once and
groups them both per minute x arm x model x dimensions (the cube) and per arm x time block x
prediction bin (the histogram); on DuckDB the rows are a materialized CTE under two ``GROUP BY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from tools._dialect_sql import CLICKHOUSE_DIALECTS, as_int, epoch_minute
from tools.aggregates import (
    ALL_ARM,
    LATENCY_LADDER_MS,
    LOGLOSS_EPS,
    HistogramSpec,
    Subject,
    to_minute,
)
from tools.schema import TelemetrySchema
from tools.vocabulary import as_utc as _utc

__all__ = [
    "CLICKHOUSE_DIALECTS",
    "EXPOSURE_MARGIN",
    "GROUPING_SETS_DIALECTS",
    "GROUPING_SETS_SLOWER",
    "HIST_SET",
    "LEAN_SKIPPED",
    "Queries",
    "log_loss_of",
]

EXPOSURE_MARGIN = timedelta(minutes=5)
"""Exposures are read a little past the window: an exposure may be logged after its request."""

GROUPING_SETS_DIALECTS = frozenset(
    {"duckdb", "postgresql", "trino", "bigquery", "snowflake", "clickhouse", "clickhousedb", "chdb"}
    | {"mssql", "oracle"}
)
"""Dialects whose SQL has ``GROUPING SETS`` and ``GROUPING()`` (SQLite and MySQL do not)."""

GROUPING_SETS_SLOWER = frozenset({"postgresql"})
"""Dialects where the one ``GROUPING SETS`` statement was measured slower than two plain ones,
so the reader does not use it by default. PostgreSQL 15, the check battery over 360 k requests:
11.4 s and 13.6 s of queries with it, 10.1 s and 9.0 s without (it groups the second set by
sorting). DuckDB (1.6/1.3 s vs 1.2/1.1 s of queries, but 3.8/3.4 s vs 4.0/3.9 s for the whole
battery) and chDB (10.3/9.1 s vs 8.1/9.9 s) are even within noise, and read the rows once."""


LEAN_SKIPPED = ("sum_pred2", "n_ll", "sum_ll", "sum_ll2")
"""Cube sums a lean cube does not compute (NaN in its frame)."""

Rows = sa.Subquery | sa.CTE
"""The per-request rows of :meth:`Queries.base` (a subquery, or a CTE read twice)."""

HIST_SET = "_set"
"""Column of :meth:`Queries.cube_and_histogram`: 0 on cube rows, 1 on histogram rows."""


def _invalid(pv: sa.ColumnElement[Any], err: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """Requests served without a valid prediction (``pv`` NULL); an errored request has none
    by design, so only requests that did not error count."""
    return _count_if(sa.and_(pv.is_(None), sa.func.coalesce(err, 0) == 0))


def log_loss_of(pv: sa.ColumnElement[Any], y: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """One request's log loss: its valid prediction ``pv`` clipped to ``[ε, 1 − ε]``
    (:data:`tools.aggregates.LOGLOSS_EPS`) against its label ``y`` (NULL without a prediction).
    The NE check's cube and attribution's all-experiments join both read it, so they agree."""
    pc = sa.case((pv < LOGLOSS_EPS, LOGLOSS_EPS), (pv > 1 - LOGLOSS_EPS, 1 - LOGLOSS_EPS), else_=pv)
    return -(y * sa.func.ln(pc) + (1 - y) * sa.func.ln(1 - pc))


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    """Rows where ``condition`` holds, as ``count(CASE WHEN ... THEN 1 END)``: the same on every
    dialect, a 64-bit count (``sum(CASE ... ELSE 0 END)`` is a 128-bit integer on DuckDB)."""
    return sa.func.count(sa.case((condition, 1), else_=sa.null()))


@dataclass(frozen=True)
class Queries:
    """Builds the reader's statements for one dialect, table mapping and histogram."""

    dialect: str
    schema: TelemetrySchema
    spec: HistogramSpec

    # -- expressions --------------------------------------------------------------------------

    def minute(self, ts: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
        """Whole minutes since the Unix epoch of a timestamp column (compiled per dialect)."""
        return epoch_minute(ts)

    def in_window(
        self, ts: sa.ColumnElement[Any], lo: datetime, hi: datetime
    ) -> sa.ColumnElement[bool]:
        """``lo <= ts < hi`` (range predicates, so a columnar store prunes by zone maps)."""
        if self.dialect == "sqlite":
            epoch = _sqlite_epoch(ts)
            lo_s = int(_utc(lo).timestamp())
            hi_s = int(_utc(hi).timestamp())
            return sa.and_(epoch >= lo_s, epoch < hi_s)
        return sa.and_(ts >= self.bound(lo), ts < self.bound(hi))

    def bound(self, value: datetime) -> sa.ColumnElement[Any]:
        """A window bound as a timezone-aware UTC value, rendered for the dialect.

        A naive bound would be read in the session's time zone wherever the column is
        ``timestamptz``, and the window would miss the data. On PostgreSQL and DuckDB the bound
        is an untyped literal with its ``+00:00`` offset: it takes the column's type, so a
        ``timestamptz`` column reads the offset and a plain ``timestamp`` column (UTC by the
        contract) drops it; neither depends on the session. ClickHouse gets a ``DateTime64`` in
        UTC; other dialects an aware parameter.
        """
        utc = _utc(value)
        if self.dialect in ("postgresql", "duckdb"):
            # Built from a datetime, never from user text: nothing to escape.
            return sa.literal_column(f"'{utc.isoformat(sep=' ')}'")
        if self.dialect in CLICKHOUSE_DIALECTS:
            text = utc.strftime("%Y-%m-%d %H:%M:%S.%f")
            return sa.func.toDateTime64(sa.literal(text), 6, sa.literal("UTC"))
        return sa.bindparam(None, utc, type_=sa.DateTime(timezone=True))

    def base(self, subject: Subject, lo: datetime, hi: datetime) -> sa.Subquery:
        """Per request: minute, arm, model, dimensions and the valid prediction ``pv``."""
        return self._base_rows(subject, lo, hi).subquery("x")

    def _base_rows(self, subject: Subject, lo: datetime, hi: datetime) -> sa.Select[Any]:
        """The statement of :meth:`base`."""
        r = self.schema.table("requests", "r")
        p = r.c("prediction")
        pv = sa.case((sa.and_(p >= 0.0, p <= 1.0), p), else_=sa.null())
        cols: list[sa.ColumnElement[Any]] = [
            self.minute(r.c("ts")).label("minute"),
            r.c("model_id").label("model_id"),
            r.c("model_version").label("model_version"),
            *(r.c(d).label(d) for d in self.schema.dimensions),
            pv.label("pv"),
            as_int(r.c("label")).label("y"),
            as_int(r.c("fallback")).label("fb"),
            as_int(r.c("error")).label("err"),
            r.c("revenue").label("revenue"),
            r.c("latency_ms").label("latency"),
        ]
        where = [self.in_window(r.c("ts"), lo, hi)]
        if subject.kind == "experiment":
            e = self.schema.table("exposures", "e")
            cols.insert(1, e.c("arm").label("arm"))
            src: sa.FromClause = r.clause.join(e.clause, e.c("request_id") == r.c("request_id"))
            where += [
                e.c("experiment_id") == subject.experiment_id,
                self.in_window(e.c("ts"), lo - EXPOSURE_MARGIN, hi + EXPOSURE_MARGIN),
            ]
        else:
            cols.insert(1, sa.literal(ALL_ARM, sa.String).label("arm"))
            src = r.clause
            if subject.kind == "model":
                where.append(r.c("model_id") == subject.model_id)
        return sa.select(*cols).select_from(src).where(*where)

    def tables(self, subject: Subject) -> str:
        """The warehouse tables a subject's statement reads, for error messages."""
        names = [self.schema.tables.get("requests", "requests")]
        if subject.kind == "experiment":
            names.append(self.schema.tables.get("exposures", "exposures"))
        return " + ".join(names)

    def cube_keys(self, lean: bool) -> list[str]:
        """Group keys of the cube."""
        models = [] if lean else ["model_id", "model_version"]
        return ["minute", "arm", *models, *self.schema.dimensions]

    def _log_loss(self, x: Rows) -> sa.ColumnElement[Any]:
        return log_loss_of(x.c.pv, x.c.y)

    def cube_aggregates(self, x: Rows, *, latency: bool, lean: bool) -> list[sa.ColumnElement[Any]]:
        """The cube's sums over rows of :meth:`base` (:data:`tools.aggregates.CUBE_SUMS`)."""
        pv, y = x.c.pv, x.c.y
        ll = self._log_loss(x)
        aggs: list[sa.ColumnElement[Any]] = [
            sa.func.count().label("n"),
            sa.func.count(pv).label("n_pred"),
            _invalid(pv, x.c.err).label("n_invalid"),
            sa.func.sum(pv).label("sum_pred"),
            sa.func.sum(pv * pv).label("sum_pred2"),
            sa.func.sum(y).label("sum_label"),
            sa.func.sum(sa.case((pv.is_not(None), y), else_=sa.null())).label("sum_label_v"),
            sa.func.count(ll).label("n_ll"),
            sa.func.sum(ll).label("sum_ll"),
            sa.func.sum(ll * ll).label("sum_ll2"),
            sa.func.sum(x.c.fb).label("n_fallback"),
            sa.func.sum(x.c.err).label("n_error"),
            sa.func.sum(x.c.revenue).label("sum_revenue"),
            sa.func.sum(x.c.revenue * x.c.revenue).label("sum_revenue2"),
            sa.func.count(x.c.latency).label("n_latency"),
            sa.func.sum(x.c.latency).label("sum_latency"),
        ]
        if lean:
            aggs = [a for a in aggs if a.name not in LEAN_SKIPPED]
        if latency:
            aggs += [
                _count_if(x.c.latency > t).label(f"lat_gt_{k}")
                for k, t in enumerate(LATENCY_LADDER_MS)
            ]
        return aggs

    def _histogram_keys(
        self, x: Rows, lo: datetime, block_minutes: int
    ) -> tuple[sa.ColumnElement[int], sa.ColumnElement[int]]:
        """Time block and fine log-spaced bin of a row's valid prediction (NULL when invalid)."""
        spec = self.spec
        pv = x.c.pv
        pmin = 10.0**spec.min_log10
        raw_bin = sa.func.floor(
            (sa.func.ln(pv) - float(np.log(pmin))) * spec.bins_per_decade / float(np.log(10))
        )
        # NULL for an invalid prediction: as_int keeps it NULL on ClickHouse too.
        bin_ = as_int(sa.case((pv <= pmin, 0), else_=raw_bin))
        block = as_int(sa.func.floor((x.c.minute - to_minute(lo)) / float(block_minutes)))
        return block, bin_

    # -- statements ---------------------------------------------------------------------------

    def cube(
        self, subject: Subject, lo: datetime, hi: datetime, *, latency: bool, lean: bool
    ) -> sa.Select[Any]:
        """Additive sums per minute x arm [x model] x dimension values."""
        x = self.base(subject, lo, hi)
        keys = [x.c[k] for k in self.cube_keys(lean)]
        aggs = self.cube_aggregates(x, latency=latency, lean=lean)
        return sa.select(*keys, *aggs).group_by(*keys)

    def histogram(
        self, subject: Subject, lo: datetime, hi: datetime, block_minutes: int
    ) -> sa.Select[Any]:
        """Valid predictions per arm x time block x bin."""
        x = self.base(subject, lo, hi)
        pv = x.c.pv
        block, bin_ = self._histogram_keys(x, lo, block_minutes)
        return (
            sa.select(
                x.c.arm,
                block.label("block"),
                bin_.label("bin"),
                sa.func.count().label("n"),
                sa.func.sum(pv).label("sum_pred"),
                sa.func.sum(pv * pv).label("sum_pred2"),
                sa.func.sum(x.c.y).label("sum_label"),
                sa.func.sum(self._log_loss(x)).label("sum_ll"),
            )
            .where(pv.is_not(None))
            .group_by(x.c.arm, block, bin_)
        )

    def slice_histogram(
        self,
        subject: Subject,
        lo: datetime,
        hi: datetime,
        block_minutes: int,
        bins: tuple[int, int],
    ) -> sa.Select[Any]:
        """Valid predictions per arm x time block x dimension values x bin, the bins outside
        ``bins`` (inclusive) pooled as bin -1: where a stuck bin lives, read only when one grew."""
        x = self.base(subject, lo, hi)
        pv = x.c.pv
        block, bin_ = self._histogram_keys(x, lo, block_minutes)
        near = as_int(sa.case((bin_.between(_int(bins[0]), _int(bins[1])), bin_), else_=_int(-1)))
        dims = [x.c[d] for d in self.schema.dimensions]
        keys = [x.c.arm, block.label("block"), *dims, near.label("bin")]
        return (
            sa.select(*keys, sa.func.count().label("n"))
            .where(pv.is_not(None))
            .group_by(x.c.arm, block, *dims, near)
        )

    def cube_and_histogram(
        self, subject: Subject, lo: datetime, hi: datetime, *, latency: bool, block_minutes: int
    ) -> sa.Select[Any]:
        """The full cube and the histogram from one read of the subject's rows.

        Rows with :data:`HIST_SET` 0 are the cube's (``block``/``bin`` NULL); rows with 1 are
        the histogram's (``minute``, models and dimensions NULL), where ``n_pred``,
        ``sum_label_v`` are the histogram's ``n``, ``sum_label``; the bin NULL holds the invalid
        predictions, which the histogram leaves out.
        """
        if self.dialect == "duckdb":
            return self._cube_and_histogram_union(subject, lo, hi, latency, block_minutes)
        x = self.base(subject, lo, hi)
        keys = [x.c[k] for k in self.cube_keys(lean=False)]
        block, bin_ = self._histogram_keys(x, lo, block_minutes)
        aggs = self.cube_aggregates(x, latency=latency, lean=False)
        sets = sa.func.grouping_sets(sa.tuple_(*keys), sa.tuple_(x.c.arm, block, bin_))
        return sa.select(
            sa.func.grouping(x.c.minute).label(HIST_SET),
            *keys,
            block.label("block"),
            bin_.label("bin"),
            *aggs,
        ).group_by(sets)

    def _cube_and_histogram_union(
        self, subject: Subject, lo: datetime, hi: datetime, latency: bool, block_minutes: int
    ) -> sa.Select[Any]:
        """:meth:`cube_and_histogram` on DuckDB: the rows once (a materialized CTE), then two
        ``GROUP BY`` under ``UNION ALL``, the histogram's with only its own sums.

        DuckDB runs ``GROUPING SETS`` the same way but with every aggregate in every set; this
        form skips the cube's other sums on the histogram's side (the checks bench, 1 M exposed
        requests: 1.2 s of CPU instead of 1.3 s). The histogram's rows hold valid predictions
        only, and NULL in the sums it does not compute.
        """
        x = self._base_rows(subject, lo, hi).cte("x").prefix_with("MATERIALIZED")
        names = self.cube_keys(lean=False)
        keys = [x.c[k] for k in names]
        block, bin_ = self._histogram_keys(x, lo, block_minutes)
        aggs = self.cube_aggregates(x, latency=latency, lean=False)
        cube = sa.select(
            sa.literal_column("0").label(HIST_SET),
            *keys,
            sa.null().label("block"),
            sa.null().label("bin"),
            *aggs,
        ).group_by(*keys)
        pv = x.c.pv
        own: dict[str, sa.ColumnElement[Any]] = {
            "n": sa.func.count(),
            "n_pred": sa.func.count(pv),
            "sum_pred": sa.func.sum(pv),
            "sum_pred2": sa.func.sum(pv * pv),
            "sum_label_v": sa.func.sum(x.c.y),
            "sum_ll": sa.func.sum(self._log_loss(x)),
        }
        hist = (
            sa.select(
                sa.literal_column("1").label(HIST_SET),
                *(x.c.arm if k == "arm" else sa.null().label(k) for k in names),
                block.label("block"),
                bin_.label("bin"),
                *(own.get(str(a.name), sa.null()).label(str(a.name)) for a in aggs),
            )
            .where(pv.is_not(None))
            .group_by(x.c.arm, block, bin_)
        )
        both = sa.union_all(cube, hist).subquery("u")
        return sa.select(*both.c)

    def units(
        self, experiment_id: str | None, lo: datetime, hi: datetime, suffixes: Sequence[int]
    ) -> sa.Select[Any]:
        """Distinct units and exposures per arm, also over the window's last minutes (every
        experiment's, per experiment and arm, when ``experiment_id`` is None)."""
        e = self.schema.table("exposures", "e")
        unit = e.c("unit_id")
        recent = [
            sa.func.count(
                sa.distinct(
                    sa.case(
                        (self.in_window(e.c("ts"), hi - timedelta(minutes=m), hi), unit),
                        else_=sa.null(),
                    )
                )
            ).label(f"units_{m}")
            for m in suffixes
        ]
        counts = [
            sa.func.count(sa.distinct(unit)).label("units"),
            sa.func.count().label("exposures"),
            *recent,
        ]
        window = self.in_window(e.c("ts"), lo, hi)
        if experiment_id is None:
            keys = [e.c("experiment_id").label("experiment_id"), e.c("arm").label("arm")]
            return sa.select(*keys, *counts).where(window).group_by(*keys)
        return (
            sa.select(e.c("arm").label("arm"), *counts)
            .where(e.c("experiment_id") == experiment_id, window)
            .group_by(e.c("arm"))
        )

    def experiments(
        self,
        lo: datetime,
        hi: datetime,
        spans: Sequence[tuple[int, int]] = (),
        sums: Sequence[str] | None = None,
    ) -> sa.Select[Any]:
        """Sums per experiment x arm x minute over every experiment's exposed requests.

        With ``spans`` (epoch-minute ranges ``[a, b)``), per experiment x arm x span instead:
        ``minute`` is the first minute of the span a row's minute falls in (the first that
        holds it), and rows in no span are left out. ``sums``: only these of
        :data:`tools._experiments_sql.EXPERIMENT_SUMS` (None: all). Built by
        :func:`tools._experiments_sql.experiments_statement` (on DuckDB, in pieces).
        """
        # It imports this module.
        from tools._experiments_sql import EXPERIMENT_SUMS, experiments_statement

        return experiments_statement(self, lo, hi, spans, EXPERIMENT_SUMS if sums is None else sums)

    def snapshots(self, ids: tuple[str, ...] | None) -> sa.Select[Any]:
        """Rows of the model registry, optionally for some models only."""
        s = self.schema.table("model_snapshots", "s")
        cols = [
            "model_id",
            "model_version",
            "trained_at",
            "published_at",
            "training_ne",
            "training_calibration",
        ]
        query = sa.select(*(s.c(c).label(c) for c in cols))
        if ids is not None:
            query = query.where(s.c("model_id").in_(ids))
        return query


def _int(value: int) -> sa.ColumnElement[int]:
    return sa.literal_column(str(int(value)), sa.BigInteger)


def _sqlite_epoch(ts: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    # Text timestamps go through strftime; numeric ones are taken as epoch seconds already.
    text = sa.cast(sa.func.strftime("%s", ts), sa.Integer)
    is_num = sa.func.typeof(ts).in_(["integer", "real"])
    return sa.case((is_num, sa.cast(ts, sa.Integer)), else_=text)
