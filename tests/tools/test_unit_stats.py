"""Per-unit sums pushed down to SQL: same answer as pandas, on DuckDB and SQLite, one statement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tools.errors import ConfigError, TelemetryQueryError
from tools.unit_stats import UNIT_METRICS, UnitStatsReader

T0 = datetime(2026, 11, 20, 6, 0)
END = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
STARTS = {
    "a": datetime(2026, 11, 20, 6, 0, tzinfo=UTC),
    "b": datetime(2026, 11, 20, 7, 0, 30, tzinfo=UTC),
}


def _frames(n: int = 20_000, seed: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ts = pd.to_datetime(T0) + pd.to_timedelta(rng.uniform(0, 130 * 60, n), unit="s")
    unit = rng.integers(0, 400, n)
    requests = pd.DataFrame(
        {
            "ts": ts,
            "request_id": np.arange(n, dtype=np.int64),
            "unit_id": unit,
            "country": "US",
            "platform": "ios",
            "ad_type": "feed",
            "model_id": "m",
            "model_version": "1",
            "prediction": 0.05,
            "fallback": rng.uniform(size=n) < 0.1,
            "label": (rng.uniform(size=n) < 0.2).astype(np.int64),
            "revenue": rng.lognormal(0, 1, n),
            "latency_ms": 40.0,
            "error": rng.uniform(size=n) < 0.05,
        }
    )
    exposures = pd.DataFrame(
        {
            "ts": ts,
            "request_id": requests["request_id"],
            "unit_id": unit,
            "experiment_id": np.where(unit % 3 == 0, "a", np.where(unit % 3 == 1, "b", "c")),
            "arm": np.where(unit % 2 == 0, "control", "test"),
        }
    )
    return requests, exposures


def _expected(requests: pd.DataFrame, exposures: pd.DataFrame) -> pd.DataFrame:
    x = requests.merge(exposures[["request_id", "experiment_id", "arm"]], on="request_id")
    x = x[x["experiment_id"].isin(list(STARTS))]
    lo_minute = x["experiment_id"].map(
        {k: pd.Timestamp(v.replace(tzinfo=None)).ceil("min") for k, v in STARTS.items()}
    )
    x = x[(x["ts"] >= lo_minute) & (x["ts"] < pd.Timestamp(END.replace(tzinfo=None)))]
    x = x.assign(
        n=1,
        fallback=x["fallback"].astype(float),
        error=x["error"].astype(float),
        label=x["label"].astype(float),
    )
    per_unit = x.groupby(["experiment_id", "arm", "unit_id"])[["n", *UNIT_METRICS]].sum()
    rows = []
    for (exp, arm), g in per_unit.groupby(level=[0, 1]):
        row = {"experiment_id": exp, "arm": arm, "units": float(len(g))}
        row |= {"sum_n": g["n"].sum(), "sum_n2": (g["n"] ** 2).sum()}
        for m in UNIT_METRICS:
            row |= {
                f"sum_{m}": g[m].sum(),
                f"sum_{m}2": (g[m] ** 2).sum(),
                f"sum_{m}_n": (g[m] * g["n"]).sum(),
            }
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("dialect", ["duckdb", "sqlite"])
def test_sums_over_units_match_pandas_with_each_experiment_from_its_own_start(
    tmp_path: Path, dialect: str
) -> None:
    requests, exposures = _frames()
    engine = sa.create_engine(
        f"duckdb:///{tmp_path / 't.duckdb'}"
        if dialect == "duckdb"
        else f"sqlite:///{tmp_path / 't.db'}"
    )
    with engine.begin() as conn:
        requests.to_sql("requests", conn, index=False)
        exposures.to_sql("exposures", conn, index=False)
    reader = UnitStatsReader(engine)
    got = reader.arm_unit_sums(STARTS, END).sort_values(["experiment_id", "arm"])
    want = _expected(requests, exposures).sort_values(["experiment_id", "arm"])
    assert reader.queries == 1
    assert list(got["experiment_id"]) == ["a", "a", "b", "b"]  # "c" was not asked for
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True),
        want[got.columns].reset_index(drop=True),
        rtol=1e-9,
        check_dtype=False,
    )
    newest = pd.Timestamp(requests["ts"].max()).tz_localize(UTC)
    latest = reader.latest()
    assert latest is not None and abs(pd.Timestamp(latest) - newest) < pd.Timedelta(microseconds=2)


def test_bad_windows_and_missing_tables_are_named(tmp_path: Path) -> None:
    reader = UnitStatsReader(f"duckdb:///{tmp_path / 'empty.duckdb'}")
    with pytest.raises(ConfigError) as err:
        reader.arm_unit_sums({"a": END}, END)
    assert err.value.field == "starts.a"
    with pytest.raises(ConfigError):
        reader.arm_unit_sums({}, END)
    with pytest.raises(TelemetryQueryError, match="requests"):
        reader.arm_unit_sums({"a": END - timedelta(hours=1)}, END)
