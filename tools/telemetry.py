"""The telemetry reader: SQL aggregation pushed down, only small aggregate frames come back.

Every query groups in the database (per minute x arm x model version x dimension values, or per
arm x time block x prediction bin) so memory does not grow with the number of requests. Each
distinct query runs once per reader and is cached: an investigation asks for one wide aggregate per
(subject, window) and every check reads it. Where the dialect has ``GROUPING SETS``, the cube and
the histogram of a subject come from one read of its rows (one exposure join, not two).

Frames use ``minute`` = whole minutes since the Unix epoch (UTC); :func:`to_datetime` converts.
Invalid predictions (NULL, NaN, outside [0, 1]) count in ``n`` but not in ``n_pred``; calibration,
NE and the histogram only use valid ones. ``n_invalid`` counts invalid predictions of requests that
did not error (an errored request has no prediction by design). SQLite stores NaN as NULL, which
the same rule covers.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa

from tools._experiments_sql import EXPERIMENT_SUMS, LOG_LOSS_SUMS
from tools._queries import (
    GROUPING_SETS_DIALECTS,
    GROUPING_SETS_SLOWER,
    HIST_SET,
    LEAN_SKIPPED,
    Queries,
)
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
from tools.errors import ConfigError, TelemetryError, TelemetryQueryError, TelemetryUnavailable
from tools.redaction import redact_url
from tools.schema import TelemetrySchema

__all__ = [
    "ALL_ARM",
    "CUBE_SUMS",
    "DUCKDB_MEMORY_LIMIT",
    "LATENCY_LADDER_MS",
    "LOGLOSS_EPS",
    "READ_ERRORS",
    "HistogramSpec",
    "Subject",
    "TelemetryReader",
    "read_failed",
    "to_datetime",
    "to_minute",
]


_PASSING = ("locked", "timeout", "timed out", "could not connect", "connection refused")


def _unavailable(exc: BaseException) -> bool:
    """Whether a failed read may succeed later: no connection, a timeout, a lock."""
    if isinstance(
        exc,
        sa.exc.DisconnectionError
        | sa.exc.TimeoutError
        | duckdb.IOException
        | duckdb.ConnectionException,
    ):
        return True
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    text = str(exc).lower()
    return isinstance(exc, sa.exc.OperationalError) and any(w in text for w in _PASSING)


READ_ERRORS = (sa.exc.SQLAlchemyError, duckdb.Error)
"""What a failed warehouse read raises; :func:`read_failed` says which of ours it is."""


def read_failed(exc: BaseException) -> type[TelemetryError]:
    """The error class for a failed warehouse read: :class:`TelemetryUnavailable` when trying
    again may help (no connection, a timeout, a lock), else :class:`TelemetryQueryError` (a
    missing table or column, a statement refused)."""
    return TelemetryUnavailable if _unavailable(exc) else TelemetryQueryError


class TelemetryReader:
    """Reads aggregates of the telemetry tables through SQLAlchemy Core (DuckDB, SQLite, ...).

    Args:
        engine: An engine or a SQLAlchemy URL (``duckdb:///telemetry.duckdb``).
        schema: Table/column mapping; the contract's names by default.
        histogram: The prediction bins of :meth:`histogram`.
        cache_size: How many query results to keep.
        grouping_sets: Fetch a cube and its histogram in one statement (``GROUPING SETS``);
            by default wherever the dialect has them and they were not measured slower
            (:data:`tools._queries.GROUPING_SETS_SLOWER`). False runs one statement per frame.
    """

    def __init__(
        self,
        engine: sa.Engine | str,
        schema: TelemetrySchema | None = None,
        *,
        histogram: HistogramSpec | None = None,
        cache_size: int = 64,
        grouping_sets: bool | None = None,
    ) -> None:
        self._engine = _create_engine(engine) if isinstance(engine, str) else engine
        self.schema = schema or TelemetrySchema()
        self.histogram_spec = histogram or HistogramSpec()
        self._sql = Queries(self.dialect, self.schema, self.histogram_spec)
        if grouping_sets is None:
            dialect = self.dialect
            grouping_sets = (
                dialect in GROUPING_SETS_DIALECTS and dialect not in GROUPING_SETS_SLOWER
            )
        self.grouping_sets = grouping_sets
        self._cache: OrderedDict[tuple[Any, ...], pd.DataFrame] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.RLock()
        self.queries = 0
        """How many SQL queries this reader has run (cached answers do not count)."""
        self.query_seconds = 0.0
        """Wall time those queries took, answers fetched into frames included."""
        self.recent_queries: deque[tuple[str, float]] = deque(maxlen=32)
        """The latest queries (at most 32): the tables each read and its seconds, oldest first."""

    @property
    def engine(self) -> sa.Engine:
        """The warehouse's engine (other readers of the same warehouse share it)."""
        return self._engine

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
        histogram_block: int | None = None,
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
            histogram_block: The caller will also want :meth:`histogram` of the same subject and
                window with these ``block_minutes``: read both in one statement (not lean; with
                :attr:`grouping_sets`), so that call is answered from the cache.

        Returns:
            One row per group: ``minute, arm, model_id, model_version, <dimensions>`` and the
            :data:`CUBE_SUMS` columns. Empty (same columns) when the window holds nothing.
        """
        lo, hi = _window(start, end)
        key = ("cube", subject, lo, hi, latency, lean)
        if histogram_block is not None and histogram_block < 1:
            raise ConfigError("histogram_block", histogram_block, "must be at least 1")

        def run() -> pd.DataFrame:
            hist_key = ("histogram", subject, lo, hi, histogram_block)
            if lean or histogram_block is None or not self.grouping_sets or hist_key in self._cache:
                return self._query_cube(subject, lo, hi, latency, lean)
            cube, hist = self._query_cube_and_histogram(subject, lo, hi, latency, histogram_block)
            self._store(hist_key, hist)
            return cube

        return self._cached(key, run)

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

    def slice_histogram(
        self,
        subject: Subject,
        start: datetime,
        end: datetime,
        *,
        block_minutes: int,
        bins: tuple[int, int],
    ) -> pd.DataFrame:
        """:meth:`histogram`'s counts per dimension values, for the bins ``bins`` (inclusive)
        alone: the others are pooled in bin -1, which keeps each block's total.

        Returns:
            Columns ``arm, block, <dimensions>, bin, n``.
        """
        if block_minutes < 1:
            raise ConfigError("block_minutes", block_minutes, "must be at least 1")
        if bins[0] > bins[1]:
            raise ConfigError("bins", bins, "the first bin must not follow the last")
        lo, hi = _window(start, end)
        key = ("slice_histogram", subject, lo, hi, block_minutes, bins)

        def run() -> pd.DataFrame:
            query = self._sql.slice_histogram(subject, lo, hi, block_minutes, bins)
            frame = self._fetch(query, self._sql.tables(subject))
            return _typed(
                frame,
                ints=["block", "bin"],
                strs=["arm", *self.schema.dimensions],
                floats=["n"],
            )

        return self._cached(key, run)

    def units(
        self,
        experiment_id: str | None,
        start: datetime,
        end: datetime,
        *,
        suffixes: Sequence[int] = (10, 20, 40),
    ) -> pd.DataFrame:
        """Distinct units and exposures per arm of one experiment (from exposures alone).

        Args:
            experiment_id: The experiment; None: every experiment in one statement (what an SRM
                alert naming no experiment scans).
            start: Window start (inclusive, UTC).
            end: Window end (exclusive, UTC).
            suffixes: Also count distinct units in the last ``L`` minutes of the window, for each
                ``L`` (an allocation bug that began late is diluted in the whole window).

        Returns:
            Columns ``arm, units, exposures`` and ``units_<L>`` per suffix (``experiment_id``
            first for every experiment).
        """
        lo, hi = _window(start, end)
        key = ("units", experiment_id, lo, hi, tuple(suffixes))
        return self._cached(key, lambda: self._query_units(experiment_id, lo, hi, suffixes))

    def experiments(
        self,
        start: datetime,
        end: datetime,
        *,
        spans: Sequence[tuple[int, int]] = (),
        sums: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Sums per experiment x arm x minute over every experiment's exposed requests.

        Args:
            start: Window start (inclusive, UTC).
            end: Window end (exclusive, UTC).
            spans: Epoch-minute ranges ``[a, b)``: sum per span instead of per minute (``minute``
                is then the span's ``a``; rows whose minute is in no span are left out). What
                attribution reads: the same sums over its window and baseline, without a row
                per experiment arm and minute.
            sums: Only these sums (``n`` always comes along); None: all of the default ones
                (:data:`~tools._experiments_sql.LOG_LOSS_SUMS`, the log loss and the powers of
                the log prediction, only when named). Each sum is a pass over the joined rows; a
                cached answer with more sums serves fewer.

        Returns:
            Columns ``experiment_id, arm, minute`` and the sums, in this order: ``n, sum_label,
            sum_revenue, sum_revenue2, n_error, n_fallback, n_pred, n_invalid, sum_pred``, then
            those of ``LOG_LOSS_SUMS`` named: ``sum_ll, sum_ll2, sum_lp, sum_lp2, sum_lp3,
            sum_lp4``.
        """
        lo, hi = _window(start, end)
        chosen = tuple((int(a), int(b)) for a, b in spans)
        for a, b in chosen:
            if b <= a:
                raise ConfigError("spans", chosen, f"span [{a}, {b}) is empty")
        if sums is None:
            names = EXPERIMENT_SUMS
        else:
            known = (*EXPERIMENT_SUMS, *LOG_LOSS_SUMS)
            unknown = sorted(set(sums) - set(known))
            if unknown:
                raise ConfigError("sums", unknown, f"unknown sums; choose from {known}")
            names = tuple(n for n in known if n == "n" or n in sums)
        with self._lock:
            for key, frame in self._cache.items():
                if key[:4] == ("experiments", lo, hi, chosen) and set(names) <= set(key[4]):
                    self._cache.move_to_end(key)
                    return frame[["experiment_id", "arm", "minute", *names]].copy()
            return self._cached(
                ("experiments", lo, hi, chosen, names),
                lambda: self._query_experiments(lo, hi, chosen, names),
            )

    def sample_requests(
        self, start: datetime, end: datetime, *, model_id: str | None = None, limit: int = 20_000
    ) -> pd.DataFrame:
        """The latest ``limit`` logged requests of a window (of one model), raw, newest first.

        A preflight replays them through a candidate model (issue 18); the only raw read.

        Returns:
            The ``requests`` contract's columns (and the schema's dimensions), contract names.
        """
        if limit <= 0:
            raise ConfigError("limit", limit, "must be positive")
        lo, hi = _window(start, end)
        t = self.schema.table("requests")
        cols = [t.c(name).label(name) for name in t.names]
        where = [self._sql.in_window(t.c("ts"), lo, hi)]
        if model_id is not None:
            where.append(t.c("model_id") == model_id)
        query = sa.select(*cols).where(*where).order_by(t.c("ts").desc()).limit(limit)
        return self._fetch(query, "requests")

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
                self._store(key, hit)
            else:
                self._cache.move_to_end(key)
            # Copy-on-write (pandas 3): a caller's change to its frame never reaches the cache,
            # so a shallow copy protects it without copying the columns.
            return hit.copy(deep=False)

    def _store(self, key: tuple[Any, ...], frame: pd.DataFrame) -> None:
        with self._lock:
            self._cache[key] = frame
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _fetch(self, query: sa.Select[Any], tables: str) -> pd.DataFrame:
        self.queries += 1
        began = time.perf_counter()
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
                if self.dialect == "chdb":
                    return _fetch_chdb(conn, query)
                result = conn.execute(query)
                return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        except READ_ERRORS as exc:
            raise read_failed(exc)(f"telemetry query on {tables} failed: {exc}") from exc
        finally:
            took = time.perf_counter() - began
            self.query_seconds += took
            self.recent_queries.append((tables, took))

    def _query_cube(
        self, subject: Subject, lo: datetime, hi: datetime, latency: bool, lean: bool
    ) -> pd.DataFrame:
        query = self._sql.cube(subject, lo, hi, latency=latency, lean=lean)
        frame = self._fetch(query, self._sql.tables(subject))
        return self._typed_cube(frame, latency=latency, lean=lean)

    def _query_cube_and_histogram(
        self, subject: Subject, lo: datetime, hi: datetime, latency: bool, block_minutes: int
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        query = self._sql.cube_and_histogram(
            subject, lo, hi, latency=latency, block_minutes=block_minutes
        )
        frame = self._fetch(query, self._sql.tables(subject))
        on_hist = pd.to_numeric(frame[HIST_SET]).to_numpy() == 1
        # Columns first (no copy), then each part's rows as its columns are typed.
        cube = frame.drop(columns=[HIST_SET, "block", "bin"])
        cols = {"n_pred": "n", "sum_pred": "sum_pred", "sum_pred2": "sum_pred2"}
        cols |= {"sum_label_v": "sum_label", "sum_ll": "sum_ll"}
        # The NULL bin holds the invalid predictions, which the histogram leaves out.
        keep = on_hist & frame["bin"].notna().to_numpy()
        hist = frame[["arm", "block", "bin", *cols]].rename(columns=cols)
        return (
            self._typed_cube(cube, latency=latency, lean=False, rows=~on_hist),
            self._typed_histogram(hist, rows=keep),
        )

    def _typed_cube(
        self,
        frame: pd.DataFrame,
        *,
        latency: bool,
        lean: bool,
        rows: npt.NDArray[np.bool_] | None = None,
    ) -> pd.DataFrame:
        keys = self._sql.cube_keys(lean)
        sums = [c for c in frame.columns if c not in keys]
        out = _typed(frame, ints=["minute"], strs=keys[1:], floats=sums, rows=rows)
        if lean:
            out.insert(2, "model_id", "*")
            out.insert(3, "model_version", "*")
            for col in LEAN_SKIPPED:
                out[col] = np.nan
        return out

    def _query_histogram(
        self, subject: Subject, lo: datetime, hi: datetime, block_minutes: int
    ) -> pd.DataFrame:
        query = self._sql.histogram(subject, lo, hi, block_minutes)
        return self._typed_histogram(self._fetch(query, self._sql.tables(subject)))

    def _typed_histogram(
        self, frame: pd.DataFrame, rows: npt.NDArray[np.bool_] | None = None
    ) -> pd.DataFrame:
        frame = _typed(
            frame,
            ints=["block", "bin"],
            strs=["arm"],
            floats=["n", "sum_pred", "sum_pred2", "sum_label", "sum_ll"],
            rows=rows,
        )
        # Rounding can put p == 1 one bin past the end; fold it back.
        last_bin = self.histogram_spec.n_bins - 1
        raw_bins = frame["bin"].to_numpy()
        if ((raw_bins < 0) | (raw_bins > last_bin)).any():  # (a column write copies its block)
            frame["bin"] = frame["bin"].clip(0, last_bin)
        keys = ["arm", "block", "bin"]
        # Sorted by the keys, as the group-by below gives it; without a repeated key (a folded
        # bin meeting its neighbour), sorting is all the group-by would do.
        arm, _ = pd.factorize(frame["arm"], sort=True)
        block, bins = frame["block"].to_numpy(), frame["bin"].to_numpy()
        order = np.lexsort((bins, block, arm))
        a, b, k = arm[order], block[order], bins[order]
        if not ((a[1:] == a[:-1]) & (b[1:] == b[:-1]) & (k[1:] == k[:-1])).any():
            rest = [c for c in frame.columns if c not in keys]
            return frame[keys + rest].take(order).reset_index(drop=True)
        return frame.groupby(keys, as_index=False).sum()

    def _query_units(
        self, experiment_id: str | None, lo: datetime, hi: datetime, suffixes: Sequence[int]
    ) -> pd.DataFrame:
        query = self._sql.units(experiment_id, lo, hi, suffixes)
        frame = self._fetch(query, self.schema.tables.get("exposures", "exposures"))
        floats = ["units", "exposures", *(f"units_{m}" for m in suffixes)]
        keys = ["arm"] if experiment_id is not None else ["experiment_id", "arm"]
        return _typed(frame, ints=[], strs=keys, floats=floats)

    def _query_experiments(
        self,
        lo: datetime,
        hi: datetime,
        spans: tuple[tuple[int, int], ...],
        sums: tuple[str, ...],
    ) -> pd.DataFrame:
        query = self._sql.experiments(lo, hi, spans, sums)
        frame = self._fetch(query, self._sql.tables(Subject(experiment_id="*")))
        return _typed(frame, ints=["minute"], strs=["experiment_id", "arm"], floats=list(sums))

    def _query_snapshots(self, ids: tuple[str, ...] | None) -> pd.DataFrame:
        query = self._sql.snapshots(ids)
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


_EXTRAS = {"postgresql": "postgres", "chdb": "clickhouse", "clickhouse": "clickhouse"}
"""The ``vigil`` extra that installs the driver of a backend."""


def _fetch_chdb(conn: sa.Connection, query: sa.Select[Any]) -> pd.DataFrame:
    """A chDB answer as a frame straight from ClickHouse's own output, not row by row.

    The DB-API path parses every row from JSON and coerces each value in Python (measured: 85 %
    of an investigation's query time on chDB). Values are rendered inline: the statements'
    values are numbers, dates and ids of Vigil's own, never free text from a request.
    """
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    raw: Any = conn.connection.driver_connection
    try:
        frame: pd.DataFrame = raw.query(str(compiled), "DataFrame")
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError(str(compiled), None, exc) from exc
    for col in frame.columns:
        # Nullable numbers arrive as pandas' masked dtypes: NaN, as the other dialects give.
        kind = frame[col].dtype
        if isinstance(kind, pd.api.extensions.ExtensionDtype) and kind.kind in "iufb":
            frame[col] = frame[col].astype("float64")
    return frame


def _create_engine(url: str) -> sa.Engine:
    """An engine for a telemetry URL; a missing driver is one line naming the extra to install.

    Raises:
        ConfigError: The URL does not parse or its driver is not installed (password hidden).
    """
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError("telemetry_url", redact_url(url), f"not a database URL: {exc}") from None
    shown = redact_url(parsed)
    try:
        engine = sa.create_engine(parsed)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        extra = _EXTRAS.get(parsed.get_backend_name())
        hint = f"pip install 'vigil[{extra}]'" if extra else "install its SQLAlchemy driver"
        raise ConfigError(
            "telemetry_url", shown, f"no driver for {parsed.drivername} ({exc}): {hint}"
        ) from None
    if parsed.get_backend_name() == "duckdb":
        _bound_duckdb(engine, parsed)
    return engine


DUCKDB_MEMORY_LIMIT = "400MB"
"""DuckDB's memory limit for the embedded telemetry store unless its URL sets ``memory_limit``.

DuckDB's own default is 80 % of the machine's memory, which an investigation's joins (exposures
x requests) fill as the data grows: 2.7 GB of peak RSS at 30 M requests. With this limit its
buffers (join and aggregate tables, cached column segments) stay within it and the rest spills
to its temporary directory; the peak of a whole investigation stays under 1 GB (measured in
``vigil bench --only fleet``). Raise it in the URL: ``duckdb:///telemetry.duckdb?memory_limit=4GB``.
"""


def _bound_duckdb(engine: sa.Engine, url: sa.URL) -> None:
    """Apply the default memory limit and spill directory to each new DuckDB connection.

    ``SET`` on connect rather than connection config: DuckDB refuses a second connection to a
    file open in the same process with another config (the simulator's writer, say). A file
    database spills to ``<file>.tmp`` (DuckDB's default); an in-memory one to the system's
    temporary folder. Options given in the URL's query win.
    """
    chosen: dict[str, str] = {}
    if "memory_limit" not in url.query:
        chosen["memory_limit"] = DUCKDB_MEMORY_LIMIT
    if "temp_directory" not in url.query and url.database in (None, "", ":memory:"):
        chosen["temp_directory"] = str(Path(tempfile.gettempdir()) / "vigil-duckdb-spill")
    if not chosen:
        return

    def bound(dbapi_connection: Any, _record: Any) -> None:
        for name, value in chosen.items():
            dbapi_connection.execute(f"SET {name} = '{value}'")

    sa.event.listen(engine, "connect", bound)


def _window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    lo, hi = naive_utc(start), naive_utc(end)
    if hi <= lo:
        raise ConfigError("end", end, f"window end must be after its start {start}")
    return lo, hi


def _typed(
    frame: pd.DataFrame,
    *,
    ints: list[str],
    strs: list[str],
    floats: list[str],
    rows: npt.NDArray[np.bool_] | None = None,
) -> pd.DataFrame:
    """Give every column a fixed dtype, also on an empty answer (NULL sums become 0).

    ``rows``: keep only these rows, taken column by column (no intermediate frame).
    """
    if rows is None:
        frame = frame.reset_index(drop=True)
        index = frame.index
    else:
        index = pd.RangeIndex(int(np.count_nonzero(rows)))

    def column(col: str) -> pd.Series:
        values = frame[col]
        return values if rows is None else pd.Series(values.array[rows], index=index, name=col)

    cols: dict[str, Any] = {}
    for col in ints:
        cols[col] = pd.to_numeric(column(col)).to_numpy(dtype="int64")
    for col in strs:
        values = column(col)
        if values.isna().any():
            values = values.astype(object).where(values.notna(), "(null)")
        cols[col] = values.astype(str)
    for col in floats:
        if frame[col].dtype == np.float64:  # the common case, without pandas' NA machinery
            out = frame[col].to_numpy(copy=True) if rows is None else frame[col].to_numpy()[rows]
            out[np.isnan(out)] = 0.0
            cols[col] = out
        else:
            cols[col] = pd.to_numeric(column(col)).to_numpy(dtype="float64", na_value=0.0)
    for col in frame.columns:
        if col not in cols:
            cols[col] = column(col)
    return pd.DataFrame(cols, index=index)
