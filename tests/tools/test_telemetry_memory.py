"""The embedded DuckDB store gets a memory limit by default, which its URL can raise."""

from __future__ import annotations

from pathlib import Path

import duckdb
import sqlalchemy as sa

from tools.telemetry import DUCKDB_MEMORY_LIMIT, TelemetryReader


def _setting(reader: TelemetryReader, name: str) -> str:
    with reader.engine.connect() as conn:
        return str(conn.exec_driver_sql(f"SELECT current_setting('{name}')").scalar_one())


def _bytes(text: str) -> float:
    number, unit = text.split()
    scale = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    return float(number) * scale[unit]


def test_a_default_limit_applies_and_the_url_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    duckdb.connect(str(path)).close()
    default = TelemetryReader(f"duckdb:///{path}")
    limit = _bytes(_setting(default, "memory_limit"))
    assert abs(limit - _bytes(DUCKDB_MEMORY_LIMIT.replace("MB", " MB"))) / limit < 0.05
    default.engine.dispose()
    raised = TelemetryReader(f"duckdb:///{path}?memory_limit=3GB")
    assert abs(_bytes(_setting(raised, "memory_limit")) - 3e9) / 3e9 < 0.05
    raised.engine.dispose()
    memory = TelemetryReader("duckdb:///:memory:")
    assert "vigil-duckdb-spill" in _setting(memory, "temp_directory")


def test_another_engine_on_the_same_file_still_opens(tmp_path: Path) -> None:
    # The limit is SET on connect, not passed as connection config, so a writer engine that
    # opened the file without it (the simulator's) does not lock the reader out, nor the reverse.
    path = tmp_path / "t.duckdb"
    writer = sa.create_engine(f"duckdb:///{path}")
    with writer.connect() as conn:  # held open while the reader connects
        conn.exec_driver_sql("CREATE TABLE x AS SELECT 1 AS v")
        conn.commit()
        reader = TelemetryReader(f"duckdb:///{path}")
        with reader.engine.connect() as read:
            assert read.exec_driver_sql("SELECT v FROM x").scalar_one() == 1
    reader.engine.dispose()
    writer.dispose()
