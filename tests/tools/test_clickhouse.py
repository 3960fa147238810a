"""ClickHouse SQL for real, on chDB (ClickHouse's engine, embedded): the reader's statements, the
single GROUPING SETS statement included, give the check battery DuckDB's answers.

The world is loaded into MergeTree tables with ``DateTime64(6, 'UTC')`` timestamps and read from
a session whose time zone is Asia/Kolkata: window bounds are sent as UTC ``DateTime64`` values
and the minute bucket is ``toUnixTimestamp``, so the session's zone moves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.chdb import load_frames
from tests.tools.synth import Fault, World, at, build, toolbox, write
from tests.tools.test_single_pass import _battery, _same
from tools.result import CheckResult
from tools.schema import TelemetrySchema
from tools.telemetry import Subject, TelemetryReader

WORLD = World(seed=29, rpm=400, faults=[Fault("fallback", 95, 0.3), Fault("nan", 100, 0.05)])
NAMES = ("requests", "exposures", "model_snapshots")
SESSION_ZONE = "Asia/Kolkata"


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return build(WORLD)


@pytest.fixture(scope="module")
def chdb_engine(
    chdb_url: str, tmp_path_factory: pytest.TempPathFactory, frames: tuple[pd.DataFrame, ...]
) -> Iterator[sa.Engine]:
    """chDB holding the world in database ``synth``, its session in a non-UTC zone."""
    engine = sa.create_engine(chdb_url)
    folder = tmp_path_factory.mktemp("chdb_synth")
    load_frames(engine, "synth", dict(zip(NAMES, frames, strict=True)), folder)
    with engine.connect() as conn:
        conn.execute(sa.text(f"SET session_timezone = '{SESSION_ZONE}'"))
    yield engine
    engine.dispose()


def _reader(engine: sa.Engine, **kwargs: Any) -> TelemetryReader:
    schema = TelemetrySchema.from_mappings({name: f"synth.{name}" for name in NAMES})
    return TelemetryReader(engine, schema, **kwargs)


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory, frames) -> TelemetryReader:
    path = tmp_path_factory.mktemp("chdb_duck") / "t.duckdb"
    return TelemetryReader(write(f"duckdb:///{path}", *frames))


@pytest.fixture(scope="module")
def duck_battery(duck: TelemetryReader) -> list[CheckResult]:
    return _battery(toolbox(duck))


def test_the_session_is_not_in_utc_and_the_tables_are_loaded(chdb_engine: sa.Engine, frames):
    with chdb_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT timezone()")).scalar_one() == SESSION_ZONE
        n = conn.execute(sa.text("SELECT count() FROM synth.requests")).scalar_one()
    assert n == len(frames[0])


@pytest.mark.parametrize("grouping_sets", [True, False])
def test_cube_and_histogram_match_duckdb(chdb_engine, duck, grouping_sets: bool) -> None:
    reader = _reader(chdb_engine, grouping_sets=grouping_sets)
    assert reader.dialect == "chdb"
    keys = ["minute", "arm", "model_id", "model_version", "country", "platform", "ad_type"]
    for subject in (Subject(experiment_id="e1"), Subject(model_id="m_prod"), Subject()):
        got = reader.cube(subject, at(60), at(120), latency=True, histogram_block=7)
        want = duck.cube(subject, at(60), at(120), latency=True, histogram_block=7)
        assert len(want) > 100
        if subject.experiment_id:  # the NaN predictions (NULL bins) are there
            assert float(got["n_invalid"].sum()) > 0
        pd.testing.assert_frame_equal(
            got.sort_values(keys).reset_index(drop=True),
            want.sort_values(keys).reset_index(drop=True),
            rtol=1e-9,
            check_dtype=False,
        )
        hist = reader.histogram(subject, at(60), at(120), block_minutes=7)
        pd.testing.assert_frame_equal(
            hist, duck.histogram(subject, at(60), at(120), block_minutes=7), rtol=1e-9
        )
        args = {"block_minutes": 7, "bins": (160, 170)}
        pd.testing.assert_frame_equal(
            _sorted(reader.slice_histogram(subject, at(60), at(120), **args)),
            _sorted(duck.slice_histogram(subject, at(60), at(120), **args)),
            check_dtype=False,
        )


def test_the_battery_gives_duckdbs_answers(chdb_engine, duck_battery) -> None:
    box = toolbox(_reader(chdb_engine))
    assert box.reader.grouping_sets
    got = _battery(box)
    for a, b in zip(got, duck_battery, strict=True):
        _same(a.model_dump(mode="json"), b.model_dump(mode="json"), a.check)
    verdicts = {r.check: r.verdict for r in got[:5]}
    assert verdicts["fallback"] == "fail" and verdicts["prediction"] == "fail"


def test_a_missing_table_is_a_query_error_naming_it(chdb_engine: sa.Engine) -> None:
    """chDB answers arrive as frames from ClickHouse's own output; its errors stay Vigil's."""
    from datetime import timedelta

    from tools.errors import TelemetryQueryError

    schema = TelemetrySchema.from_mappings({"requests": "synth.no_such_table"})
    reader = TelemetryReader(chdb_engine, schema)
    with pytest.raises(TelemetryQueryError, match=r"synth\.no_such_table"):
        reader.cube(Subject(), at(0), at(0) + timedelta(minutes=30))


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    assert len(frame) > 10
    return frame.sort_values(list(frame.columns[:-1])).reset_index(drop=True)
