"""The telemetry reader on a real PostgreSQL server, with sessions that are not in UTC.

The same synthetic world goes into DuckDB and into PostgreSQL (``timestamptz`` columns, and plain
``timestamp`` ones); a session whose ``TimeZone`` is America/New_York or Asia/Kolkata must give
the check battery's answers on DuckDB: window bounds are timezone-aware, so the session's zone
cannot move the window off the data.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.pg import load_frames
from tests.tools.synth import Fault, World, at, build, toolbox, write
from tests.tools.test_single_pass import _battery, _same
from tools.errors import ConfigError
from tools.result import CheckResult
from tools.telemetry import Subject, TelemetryReader

WORLD = World(seed=23, rpm=400, faults=[Fault("fallback", 95, 0.3), Fault("nan", 100, 0.05)])
ZONES = ["America/New_York", "Asia/Kolkata"]


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return build(WORLD)


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory, frames) -> TelemetryReader:
    path = tmp_path_factory.mktemp("pg_telemetry") / "t.duckdb"
    return TelemetryReader(write(f"duckdb:///{path}", *frames))


@pytest.fixture(scope="module")
def duck_battery(duck: TelemetryReader) -> list[CheckResult]:
    return _battery(toolbox(duck))


@pytest.fixture(scope="module")
def pg_world(pg_server, frames) -> Callable[[str], str]:
    """The URL of a database holding the world with ``ts`` columns of a type (made once)."""
    made: dict[str, str] = {}

    def get(ts_type: str) -> str:
        if ts_type not in made:
            url = pg_server.url(pg_server.create_database(f"telemetry_{ts_type}"))
            names = ("requests", "exposures", "model_snapshots")
            load_frames(url, dict(zip(names, frames, strict=True)), ts_type=ts_type)
            made[ts_type] = url
        return made[ts_type]

    return get


def _reader(url: str, zone: str, **kwargs) -> TelemetryReader:
    engine = sa.create_engine(url, connect_args={"options": f"-c TimeZone={zone}"})
    return TelemetryReader(engine, **kwargs)


@pytest.mark.parametrize("ts_type", ["timestamptz", "timestamp"])
@pytest.mark.parametrize("zone", ZONES)
def test_the_session_zone_does_not_move_the_window(pg_world, duck, zone: str, ts_type: str) -> None:
    url = pg_world(ts_type)
    reader = _reader(url, zone, grouping_sets=True)  # the one-statement path, off by default
    assert not _reader(url, zone).grouping_sets  # measured slower on PostgreSQL
    with reader._engine.connect() as conn:  # the session really is in that zone
        assert conn.execute(sa.text("SHOW TimeZone")).scalar_one() == zone
        kind = conn.execute(sa.text("SELECT pg_typeof(ts)::text FROM requests LIMIT 1"))
        want_kind = "timestamp with" if ts_type == "timestamptz" else "timestamp without"
        assert kind.scalar_one().startswith(want_kind)
    subject = Subject(experiment_id="e1")
    keys = ["minute", "arm", "model_id", "model_version", "country", "platform", "ad_type"]
    got = reader.cube(subject, at(60), at(120), histogram_block=7)
    want = duck.cube(subject, at(60), at(120))
    assert len(want) > 100 and got["n"].sum() == want["n"].sum()
    pd.testing.assert_frame_equal(
        got.sort_values(keys).reset_index(drop=True),
        want.sort_values(keys).reset_index(drop=True),
        rtol=1e-9,
        check_dtype=False,
    )
    queries = reader.queries
    hist = reader.histogram(subject, at(60), at(120), block_minutes=7)
    assert reader.queries == queries  # it came with the cube
    pd.testing.assert_frame_equal(
        hist, duck.histogram(subject, at(60), at(120), block_minutes=7), rtol=1e-9
    )
    args = {"block_minutes": 7, "bins": (160, 170)}
    pd.testing.assert_frame_equal(
        _sorted(reader.slice_histogram(subject, at(60), at(120), **args)),
        _sorted(duck.slice_histogram(subject, at(60), at(120), **args)),
        check_dtype=False,
    )
    units = reader.units("e1", at(60), at(120)).sort_values("arm").reset_index(drop=True)
    pd.testing.assert_frame_equal(
        units, duck.units("e1", at(60), at(120)).sort_values("arm").reset_index(drop=True)
    )
    snaps = reader.snapshots().sort_values(["model_id", "model_version"]).reset_index(drop=True)
    ref = duck.snapshots().sort_values(["model_id", "model_version"]).reset_index(drop=True)
    assert snaps["trained_at"].tolist() == ref["trained_at"].tolist()


@pytest.mark.parametrize("zone", ZONES)
def test_the_battery_finds_the_fault_as_on_duckdb(pg_world, duck_battery, zone: str) -> None:
    url = pg_world("timestamptz")  # the columns whose reading depends on the session's zone
    got, want = _battery(toolbox(_reader(url, zone))), duck_battery
    for a, b in zip(got, want, strict=True):
        _same(a.model_dump(mode="json"), b.model_dump(mode="json"), a.check)
    verdicts = {r.check: r.verdict for r in got[:5]}
    assert verdicts["fallback"] == "fail" and verdicts["prediction"] == "fail"


def test_a_missing_driver_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as without the `postgres` extra
    with pytest.raises(ConfigError) as err:
        TelemetryReader("postgresql+psycopg://vigil:s3cret@127.0.0.1:9/warehouse")
    text = str(err.value)
    assert err.value.field == "telemetry_url" and "vigil[postgres]" in text
    assert "s3cret" not in text and "\n" not in text


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    assert len(frame) > 10
    return frame.sort_values(list(frame.columns[:-1])).reset_index(drop=True)
