"""The reader's exposure join cut into pieces of request time, and its counted thresholds.

On DuckDB :meth:`TelemetryReader.experiments` joins exposures to requests piece by piece (each
piece's hash table within the memory limit, cut at span bounds); the answers must be the ones a
single join gives (SQLite's statement, one join with a ``CASE`` per row), with and without
spans, whatever the spans' gaps and overlaps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tools._experiments_sql as experiments_sql
from tests.tools.synth import World, at, build, write
from tools._queries import Queries
from tools.aggregates import LATENCY_LADDER_MS, HistogramSpec
from tools.schema import TelemetrySchema
from tools.telemetry import Subject, TelemetryReader, to_minute

WORLD = World(minutes=40, rpm=300, units=1500, seed=5)
KEYS = ["experiment_id", "arm", "minute"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    requests, exposures, snapshots = build(WORLD)
    folder = tmp_path_factory.mktemp("pieces")
    for kind in ("duckdb", "sqlite"):
        write(f"{kind}:///{folder / f't.{kind}'}", requests, exposures, snapshots).dispose()
    return folder, requests


def _read(url: str, spans: tuple[tuple[int, int], ...], *, pieces: bool) -> pd.DataFrame:
    reader = TelemetryReader(url)
    try:
        sql = str(reader._sql.experiments(at(0), at(40), spans))
        assert ("UNION ALL" in sql) == pieces
        rows = reader.experiments(at(0), at(40), spans=spans)
    finally:
        reader.engine.dispose()
    return rows.set_index(KEYS).sort_index()


@pytest.mark.parametrize(
    "offsets",
    [
        (),  # per minute
        ((10, 40), (0, 10)),  # attribution's window and baseline: one range, no gap
        ((25, 33), (3, 12)),  # a gap between and around them
        ((5, 30), (20, 38)),  # overlapping: a minute goes to the first span holding it
    ],
)
def test_pieces_sum_to_the_single_join(
    world: tuple[Path, pd.DataFrame],
    offsets: tuple[tuple[int, int], ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, _ = world
    m0 = to_minute(at(0))
    spans = tuple((m0 + a, m0 + b) for a, b in offsets)
    whole = _read(f"sqlite:///{folder / 't.sqlite'}", spans, pieces=False)
    monkeypatch.setattr(experiments_sql, "JOIN_SLICE_MINUTES", 7)
    pieces = _read(f"duckdb:///{folder / 't.duckdb'}", spans, pieces=True)
    pd.testing.assert_frame_equal(pieces, whole, rtol=1e-9)
    assert whole["n"].sum() > 0
    if offsets:
        assert set(whole.index.get_level_values("minute")) == {m0 + a for a, _ in offsets}
    if offsets == ((5, 30), (20, 38)):
        # Minutes 20..29 are in both spans: counted once, in the first.
        per_minute = _read(f"sqlite:///{folder / 't.sqlite'}", (), pieces=False)
        minute = per_minute.index.get_level_values("minute")
        first = per_minute[(minute >= m0 + 5) & (minute < m0 + 30)]["n"].sum()
        assert whole.xs(m0 + 5, level="minute")["n"].sum() == first


def test_latency_ladder_counts_requests_above_each_threshold(
    world: tuple[Path, pd.DataFrame],
) -> None:
    folder, requests = world
    reader = TelemetryReader(f"duckdb:///{folder / 't.duckdb'}")
    try:
        cube = reader.cube(Subject(), at(0), at(40), latency=True, lean=True)
    finally:
        reader.engine.dispose()
    latency = requests["latency_ms"].to_numpy(float)
    want = [float((latency > t).sum()) for t in LATENCY_LADDER_MS]
    got = [float(cube[f"lat_gt_{k}"].sum()) for k in range(len(LATENCY_LADDER_MS))]
    assert got == want and want[0] > want[-1]
    assert cube["n_invalid"].sum() == float(
        (~requests["prediction"].between(0, 1) & ~requests["error"].astype(bool)).sum()
    )
    assert np.isfinite(cube["sum_latency"].sum())


def test_span_case_is_written_once_where_bounds_are_parameters() -> None:
    # Warehouses given bound parameters (Trino, BigQuery, ...) would see two different
    # placeholders if the span's CASE were repeated in GROUP BY, and refuse the statement.
    m0 = to_minute(at(0))
    q = Queries("trino", TelemetrySchema(), HistogramSpec())
    sql = str(q.experiments(at(0), at(40), ((m0 + 25, m0 + 33), (m0 + 3, m0 + 12))).compile())
    select, group_by = sql.rsplit("GROUP BY", 1)
    assert "CASE" in select and "CASE" not in group_by and "UNION" not in sql
