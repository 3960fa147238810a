"""The telemetry reader: SQL aggregation pushed down, only small aggregate frames come back.

Every query groups in the database (per minute x arm x model version x dimension values, or per
arm x time block x prediction bin) so memory does not grow with the number of requests. Each
distinct query runs once per reader and is cached: an investigation asks for one wide aggregate per
(subject, window) and every check reads it.

Frames use ``minute`` = whole minutes since the Unix epoch (UTC); :func:`to_datetime` converts.
Invalid predictions (NULL, NaN, outside [0, 1]) count in ``n`` but not in ``n_pred``; calibration,
NE and the histogram only use valid ones. ``n_invalid`` counts invalid predictions of requests that
did not error (an errored request has no prediction by design). SQLite stores NaN as NULL, which
the same rule covers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import sqlalchemy as sa

from tools.aggregates import (
    ALL_ARM,
    CUBE_SUMS,
    LATENCY_LADDER_MS,
    LOGLOSS_EPS,
    HistogramSpec,
    Subject,
    naive_utc,
    to_datetime,
    to_minute,
)
from tools.errors import ConfigError, TelemetryError
from tools.schema import MappedTable, TelemetrySchema

_EXPOSURE_MARGIN = timedelta(minutes=5)


__all__ = [
    "ALL_ARM",
    "CUBE_SUMS",
    "LATENCY_LADDER_MS",
    "LOGLOSS_EPS",
    "HistogramSpec",
    "Subject",
    "TelemetryReader",
    "to_datetime",
    "to_minute",
]


class TelemetryReader:
    """Reads aggregates of the telemetry tables through SQLAlchemy Core (DuckDB, SQLite, ...).

    Args:
        engine: An engine or a SQLAlchemy URL (``duckdb:///telemetry.duckdb``).
        schema: Table/column mapping; the contract's names by default.
        histogram: The prediction bins of :meth:`histogram`.
        cache_size: How many query results to keep.
    """

    def __init__(
        self,
        engine: sa.Engine | str,
        schema: TelemetrySchema | None = None,
        *,
        histogram: HistogramSpec | None = None,
        cache_size: int = 64,
    ) -> None:
        self._engine = sa.create_engine(engine) if isinstance(engine, str) else engine
        self.schema = schema or TelemetrySchema()
        self.histogram_spec = histogram or HistogramSpec()
        self._cache: OrderedDict[tuple[Any, ...], pd.DataFrame] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.RLock()
        self.queries = 0
        """How many SQL queries this reader has run (cached answers do not count)."""

    @property
    def dialect(self) -> str:
        """The SQLAlchemy dialect name (``duckdb``, ``sqlite``, ``postgresql``, ...)."""
        return str(self._engine.dialect.name)

    def clear_cache(self) -> None:
        """Forget every cached answer (new telemetry arrived)."""
        with self._lock:
            self._cache.clear()

    # -- public queries -----------------------------------------------------------------------

    def cube(
        self,
        subject: Subject,
        start: datetime,
        end: datetime,
        *,
        latency: bool = False,
        lean: bool = False,
    ) -> pd.DataFrame:
        """Additive sums per minute x arm x model_id x model_version x dimension values.

        Args:
            subject: Whose traffic; experiment rows carry their arm, others ``arm == "all"``.
            start: Window start (inclusive, UTC).
            end: Window end (exclusive, UTC).
            latency: Also count requests above each :data:`LATENCY_LADDER_MS` threshold
                (columns ``lat_gt_0`` ...).
            lean: Traffic, business and infra sums only: no model keys (``model_id`` and
                ``model_version`` are ``"*"``) and no log loss or squared prediction (NaN), which
                makes an all-traffic scan markedly cheaper.

        Returns:
            One row per group: ``minute, arm, model_id, model_version, <dimensions>`` and the
            :data:`CUBE_SUMS` columns. Empty (same columns) when the window holds nothing.
        """
        lo, hi = _window(start, end)
        key = ("cube", subject, lo, hi, latency, lean)
        return self._cached(key, lambda: self._query_cube(subject, lo, hi, latency, lean))

    def histogram(
        self, subject: Subject, start: datetime, end: datetime, *, block_minutes: int
    ) -> pd.DataFrame:
        """Valid predictions per arm x time block x fine log-spaced bin.

        Args:
            subject: Whose traffic.
            start: Window start (inclusive, UTC).
            end: Window end (exclusive, UTC).
            block_minutes: Time block length; block ``b`` covers minutes
                ``[to_minute(start) + b * block_minutes, ... + block_minutes)``.

        Returns:
            Columns ``arm, block, bin, n, sum_pred, sum_pred2, sum_label, sum_ll``.
        """
        if block_minutes < 1:
            raise ConfigError("block_minutes", block_minutes, "must be at least 1")
        lo, hi = _window(start, end)
        key = ("histogram", subject, lo, hi, block_minutes)
        return self._cached(key, lambda: self._query_histogram(subject, lo, hi, block_minutes))

    def units(
        self,
        experiment_id: str,
        start: datetime,
        end: datetime,
        *,
        suffixes: Sequence[int] = (10, 20, 40),
    ) -> pd.DataFrame:
        """Distinct units and exposures per arm of one experiment (from exposures alone).

        Args:
            experiment_id: The experiment.
            start: Window start (inclusive, UTC).
            end: Window end (exclusive, UTC).
            suffixes: Also count distinct units in the last ``L`` minutes of the window, for each
                ``L`` (an allocation bug that began late is diluted in the whole window).

        Returns:
            Columns ``arm, units, exposures`` and ``units_<L>`` per suffix.
        """
        lo, hi = _window(start, end)
        key = ("units", experiment_id, lo, hi, tuple(suffixes))
        return self._cached(key, lambda: self._query_units(experiment_id, lo, hi, suffixes))

    def experiments(self, start: datetime, end: datetime) -> pd.DataFrame:
        """Sums per experiment x arm x minute over every experiment's exposed requests.

        Returns:
            Columns ``experiment_id, arm, minute, n, sum_label, sum_revenue, sum_revenue2,
            n_error, n_fallback, n_pred, sum_pred``.
        """
        lo, hi = _window(start, end)
        return self._cached(("experiments", lo, hi), lambda: self._query_experiments(lo, hi))

    def snapshots(self, model_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows of the model registry (``model_snapshots``), optionally for some models only.

        Returns:
            Columns ``model_id, model_version, trained_at, published_at, training_ne,
            training_calibration``.
        """
        ids = tuple(sorted(model_ids)) if model_ids is not None else None
        return self._cached(("snapshots", ids), lambda: self._query_snapshots(ids))

    # -- query building -----------------------------------------------------------------------

    def _cached(self, key: tuple[Any, ...], run: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                hit = run()
                self._cache[key] = hit
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            return hit.copy()

    def _fetch(self, query: sa.Select[Any], tables: str) -> pd.DataFrame:
        self.queries += 1
        try:
            with self._engine.connect() as conn:
                if self.dialect == "duckdb":
                    # DuckDB hands back columns, not rows: skip the per-row Python tuples.
                    compiled = query.compile(
                        dialect=self._engine.dialect,
                        compile_kwargs={"render_postcompile": True},
                    )
                    params = [compiled.params[name] for name in compiled.positiontup or ()]
                    raw: Any = conn.connection.driver_connection
                    frame: pd.DataFrame = raw.execute(str(compiled), params).df()
                    return frame
                result = conn.execute(query)
                return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        except (sa.exc.SQLAlchemyError, duckdb.Error) as exc:
            raise TelemetryError(f"telemetry query on {tables} failed: {exc}") from exc

    def _minute(self, ts: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
        if self.dialect == "duckdb":
            return sa.cast(sa.func.epoch_us(ts).op("//")(60_000_000), sa.BigInteger)
        if self.dialect == "sqlite":
            return sa.cast(self._sqlite_epoch(ts) / 60, sa.BigInteger)
        return sa.cast(sa.func.floor(sa.extract("epoch", ts) / 60), sa.BigInteger)

    @staticmethod
    def _sqlite_epoch(ts: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
        # Text timestamps go through strftime; numeric ones are taken as epoch seconds already.
        text = sa.cast(sa.func.strftime("%s", ts), sa.Integer)
        is_num = sa.func.typeof(ts).in_(["integer", "real"])
        return sa.case((is_num, sa.cast(ts, sa.Integer)), else_=text)

    def _in_window(
        self, ts: sa.ColumnElement[Any], lo: datetime, hi: datetime
    ) -> sa.ColumnElement[bool]:
        if self.dialect == "sqlite":
            epoch = self._sqlite_epoch(ts)
            lo_s = int(lo.replace(tzinfo=UTC).timestamp())
            hi_s = int(hi.replace(tzinfo=UTC).timestamp())
            return sa.and_(epoch >= lo_s, epoch < hi_s)
        return sa.and_(ts >= lo, ts < hi)

    def _base(self, subject: Subject, lo: datetime, hi: datetime) -> sa.Subquery:
        """Per request: minute, arm, model, dimensions and the valid prediction ``pv``."""
        r = self.schema.table("requests", "r")
        p = r.c("prediction")
        pv = sa.case((sa.and_(p >= 0.0, p <= 1.0), p), else_=sa.null())
        cols: list[sa.ColumnElement[Any]] = [
            self._minute(r.c("ts")).label("minute"),
            r.c("model_id").label("model_id"),
            r.c("model_version").label("model_version"),
            *(r.c(d).label(d) for d in self.schema.dimensions),
            pv.label("pv"),
            sa.cast(r.c("label"), sa.Integer).label("y"),
            sa.cast(r.c("fallback"), sa.Integer).label("fb"),
            sa.cast(r.c("error"), sa.Integer).label("err"),
            r.c("revenue").label("revenue"),
            r.c("latency_ms").label("latency"),
        ]
        where = [self._in_window(r.c("ts"), lo, hi)]
        if subject.kind == "experiment":
            e = self.schema.table("exposures", "e")
            cols.insert(1, e.c("arm").label("arm"))
            src: sa.FromClause = r.clause.join(e.clause, e.c("request_id") == r.c("request_id"))
            where += [
                e.c("experiment_id") == subject.experiment_id,
                self._in_window(e.c("ts"), lo - _EXPOSURE_MARGIN, hi + _EXPOSURE_MARGIN),
            ]
        else:
            cols.insert(1, sa.literal(ALL_ARM, sa.String).label("arm"))
            src = r.clause
            if subject.kind == "model":
                where.append(r.c("model_id") == subject.model_id)
        return sa.select(*cols).select_from(src).where(*where).subquery("x")

    def _tables(self, subject: Subject) -> str:
        names = [self.schema.tables.get("requests", "requests")]
        if subject.kind == "experiment":
            names.append(self.schema.tables.get("exposures", "exposures"))
        return " + ".join(names)

    def _query_cube(
        self, subject: Subject, lo: datetime, hi: datetime, latency: bool, lean: bool
    ) -> pd.DataFrame:
        x = self._base(subject, lo, hi)
        models = [] if lean else ["model_id", "model_version"]
        keys = ["minute", "arm", *models, *self.schema.dimensions]
        pv, y = x.c.pv, x.c.y
        pc = sa.case(
            (pv < LOGLOSS_EPS, LOGLOSS_EPS), (pv > 1 - LOGLOSS_EPS, 1 - LOGLOSS_EPS), else_=pv
        )
        ll = -(y * sa.func.ln(pc) + (1 - y) * sa.func.ln(1 - pc))
        aggs: list[sa.ColumnElement[Any]] = [
            sa.func.count().label("n"),
            sa.func.count(pv).label("n_pred"),
            # An errored request has no prediction by design: only served ones can be invalid.
            sa.func.sum(
                sa.case((sa.and_(pv.is_(None), sa.func.coalesce(x.c.err, 0) == 0), 1), else_=0)
            ).label("n_invalid"),
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
        skipped = ("sum_pred2", "n_ll", "sum_ll", "sum_ll2")
        if lean:
            aggs = [a for a in aggs if a.name not in skipped]
        if latency:
            aggs += [
                sa.func.sum(sa.case((x.c.latency > t, 1), else_=0)).label(f"lat_gt_{k}")
                for k, t in enumerate(LATENCY_LADDER_MS)
            ]
        query = sa.select(*(x.c[k] for k in keys), *aggs).group_by(*(x.c[k] for k in keys))
        frame = self._fetch(query, self._tables(subject))
        sums = [str(a.name) for a in aggs]
        out = _typed(frame, ints=["minute"], strs=keys[1:], floats=sums)
        if lean:
            out.insert(2, "model_id", "*")
            out.insert(3, "model_version", "*")
            for col in skipped:
                out[col] = np.nan
        return out

    def _query_histogram(
        self, subject: Subject, lo: datetime, hi: datetime, block_minutes: int
    ) -> pd.DataFrame:
        spec = self.histogram_spec
        x = self._base(subject, lo, hi)
        pv = x.c.pv
        pmin = 10.0**spec.min_log10
        raw_bin = sa.func.floor(
            (sa.func.ln(pv) - float(np.log(pmin))) * spec.bins_per_decade / np.log(10)
        )
        bin_ = sa.cast(sa.case((pv <= pmin, 0), else_=raw_bin), sa.Integer).label("bin")
        block = sa.cast(
            sa.func.floor((x.c.minute - to_minute(lo)) / float(block_minutes)), sa.Integer
        ).label("block")
        pc = sa.case(
            (pv < LOGLOSS_EPS, LOGLOSS_EPS), (pv > 1 - LOGLOSS_EPS, 1 - LOGLOSS_EPS), else_=pv
        )
        ll = -(x.c.y * sa.func.ln(pc) + (1 - x.c.y) * sa.func.ln(1 - pc))
        query = (
            sa.select(
                x.c.arm,
                block,
                bin_,
                sa.func.count().label("n"),
                sa.func.sum(pv).label("sum_pred"),
                sa.func.sum(pv * pv).label("sum_pred2"),
                sa.func.sum(x.c.y).label("sum_label"),
                sa.func.sum(ll).label("sum_ll"),
            )
            .where(pv.is_not(None))
            .group_by(x.c.arm, block, bin_)
        )
        frame = self._fetch(query, self._tables(subject))
        frame = _typed(
            frame,
            ints=["block", "bin"],
            strs=["arm"],
            floats=["n", "sum_pred", "sum_pred2", "sum_label", "sum_ll"],
        )
        # Rounding can put p == 1 one bin past the end; fold it back.
        frame["bin"] = frame["bin"].clip(0, spec.n_bins - 1)
        return frame.groupby(["arm", "block", "bin"], as_index=False).sum()

    def _query_units(
        self, experiment_id: str, lo: datetime, hi: datetime, suffixes: Sequence[int]
    ) -> pd.DataFrame:
        e = self.schema.table("exposures", "e")
        unit = e.c("unit_id")
        recent = [
            sa.func.count(
                sa.distinct(
                    sa.case(
                        (self._in_window(e.c("ts"), hi - timedelta(minutes=m), hi), unit),
                        else_=sa.null(),
                    )
                )
            ).label(f"units_{m}")
            for m in suffixes
        ]
        query = (
            sa.select(
                e.c("arm").label("arm"),
                sa.func.count(sa.distinct(unit)).label("units"),
                sa.func.count().label("exposures"),
                *recent,
            )
            .where(e.c("experiment_id") == experiment_id, self._in_window(e.c("ts"), lo, hi))
            .group_by(e.c("arm"))
        )
        frame = self._fetch(query, self.schema.tables.get("exposures", "exposures"))
        floats = ["units", "exposures", *(f"units_{m}" for m in suffixes)]
        return _typed(frame, ints=[], strs=["arm"], floats=floats)

    def _query_experiments(self, lo: datetime, hi: datetime) -> pd.DataFrame:
        r: MappedTable = self.schema.table("requests", "r")
        e = self.schema.table("exposures", "e")
        p = r.c("prediction")
        pv = sa.case((sa.and_(p >= 0.0, p <= 1.0), p), else_=sa.null())
        minute = self._minute(r.c("ts")).label("minute")
        keys = [e.c("experiment_id").label("experiment_id"), e.c("arm").label("arm"), minute]
        query = (
            sa.select(
                *keys,
                sa.func.count().label("n"),
                sa.func.sum(sa.cast(r.c("label"), sa.Integer)).label("sum_label"),
                sa.func.sum(r.c("revenue")).label("sum_revenue"),
                sa.func.sum(r.c("revenue") * r.c("revenue")).label("sum_revenue2"),
                sa.func.sum(sa.cast(r.c("error"), sa.Integer)).label("n_error"),
                sa.func.sum(sa.cast(r.c("fallback"), sa.Integer)).label("n_fallback"),
                sa.func.count(pv).label("n_pred"),
                sa.func.sum(pv).label("sum_pred"),
            )
            .select_from(r.clause.join(e.clause, e.c("request_id") == r.c("request_id")))
            .where(
                self._in_window(r.c("ts"), lo, hi),
                self._in_window(e.c("ts"), lo - _EXPOSURE_MARGIN, hi + _EXPOSURE_MARGIN),
            )
            .group_by(*keys)
        )
        frame = self._fetch(query, self._tables(Subject(experiment_id="*")))
        return _typed(
            frame,
            ints=["minute"],
            strs=["experiment_id", "arm"],
            floats=[
                "n",
                "sum_label",
                "sum_revenue",
                "sum_revenue2",
                "n_error",
                "n_fallback",
                "n_pred",
                "sum_pred",
            ],
        )

    def _query_snapshots(self, ids: tuple[str, ...] | None) -> pd.DataFrame:
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
        frame = self._fetch(query, self.schema.tables.get("model_snapshots", "model_snapshots"))
        frame = _typed(
            frame,
            ints=[],
            strs=["model_id", "model_version"],
            floats=["training_ne", "training_calibration"],
        )
        for col in ("trained_at", "published_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True).dt.tz_localize(None)
        return frame


def _window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    lo, hi = naive_utc(start), naive_utc(end)
    if hi <= lo:
        raise ConfigError("end", end, f"window end must be after its start {start}")
    return lo, hi


def _typed(
    frame: pd.DataFrame, *, ints: list[str], strs: list[str], floats: list[str]
) -> pd.DataFrame:
    """Give every column a fixed dtype, also on an empty answer (NULL sums become 0)."""
    out = pd.DataFrame(index=range(len(frame)))
    for col in ints:
        out[col] = pd.to_numeric(frame[col]).astype("int64")
    for col in strs:
        out[col] = frame[col].astype(object).where(frame[col].notna(), "(null)").astype(str)
    for col in floats:
        out[col] = pd.to_numeric(frame[col]).astype("float64").fillna(0.0)
    for col in frame.columns:
        if col not in out.columns:
            out[col] = frame[col]
    return out.reset_index(drop=True)
