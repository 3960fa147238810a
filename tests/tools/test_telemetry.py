"""The telemetry reader on DuckDB and SQLite: sums against pandas, NaN, empty windows, mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.tools.synth import T0, Fault, World, at, build, write
from tools._queries import Queries
from tools.aggregates import HistogramSpec
from tools.errors import ConfigError, TelemetryError
from tools.schema import TelemetrySchema
from tools.telemetry import LOGLOSS_EPS, Subject, TelemetryReader, to_datetime, to_minute

WORLD = World(minutes=30, rpm=400, units=2000, seed=3, faults=[Fault("nan", 20, 0.2)])


@pytest.fixture(scope="module", params=["duckdb", "sqlite"])
def telemetry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    requests, exposures, snapshots = build(WORLD)
    path = tmp_path_factory.mktemp(request.param) / f"t.{request.param}"
    engine = write(f"{request.param}:///{path}", requests, exposures, snapshots)
    return TelemetryReader(engine), requests, exposures


def _expected(requests: pd.DataFrame, exposures: pd.DataFrame) -> pd.DataFrame:
    joined = requests.merge(exposures[["request_id", "arm"]], on="request_id")
    p = joined["prediction"]
    valid = p.between(0, 1)
    pc = p.clip(LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    y = joined["label"]
    ll = -(y * np.log(pc) + (1 - y) * np.log(1 - pc))
    return (
        pd.DataFrame(
            {
                "arm": joined["arm"],
                "n": 1.0,
                "n_pred": valid.astype(float),
                "n_invalid": (~valid & ~joined["error"]).astype(float),
                "sum_pred": p.where(valid, 0.0),
                "sum_label": y.astype(float),
                "sum_ll": ll.where(valid, 0.0),
                "n_fallback": joined["fallback"].astype(float),
                "sum_revenue": joined["revenue"],
            }
        )
        .groupby("arm")
        .sum()
    )


def test_cube_sums_match_pandas(telemetry) -> None:
    reader, requests, exposures = telemetry
    cube = reader.cube(Subject(experiment_id="e1"), at(0), at(30))
    got = cube.groupby("arm")[list(_expected(requests, exposures).columns)].sum()
    want = _expected(requests, exposures)
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index(), rtol=1e-9, check_names=False)
    # NaN predictions (SQLite stores them as NULL) are invalid, never summed.
    assert got.loc["test", "n_invalid"] > 0.1 * 10 * 400 * 0.25
    assert got.loc["control", "n_invalid"] == 0


def test_experiment_spans_sum_the_minutes_of_each_span(telemetry) -> None:
    # Attribution reads per-span sums: the same numbers as the per-minute rows, summed.
    reader, _requests, _exposures = telemetry
    m0 = to_minute(at(0))
    spans = ((m0 + 20, m0 + 30), (m0 + 5, m0 + 20))
    got = reader.experiments(at(0), at(30), spans=spans)
    assert set(got["minute"]) == {m0 + 20, m0 + 5}
    rows = reader.experiments(at(0), at(30))
    rows = rows[rows["minute"] >= m0 + 5]
    rows["minute"] = np.where(rows["minute"] >= m0 + 20, m0 + 20, m0 + 5)
    keys = ["experiment_id", "arm", "minute"]
    cols = ["n", "n_pred", "n_invalid", "sum_pred", "sum_label", "sum_revenue", "sum_revenue2"]
    want = rows.groupby(keys)[cols].sum().sort_index()
    pd.testing.assert_frame_equal(got.set_index(keys)[cols].sort_index(), want, rtol=1e-9)
    with pytest.raises(ConfigError, match="spans"):
        reader.experiments(at(0), at(30), spans=((m0 + 3, m0 + 3),))


def test_experiment_sums_read_only_what_is_asked_and_reuse_a_wider_answer(telemetry) -> None:
    # Attribution of revenue asks for three sums; each sum it skips is a pass over the join.
    reader, _requests, _exposures = telemetry
    m0 = to_minute(at(0))
    spans = ((m0 + 20, m0 + 30), (m0 + 10, m0 + 20))
    keys = ["experiment_id", "arm", "minute"]
    full = reader.experiments(at(0), at(30), spans=spans)
    narrow = reader.experiments(at(0), at(30), spans=spans, sums=("sum_revenue2", "sum_revenue"))
    assert list(narrow.columns) == [*keys, "n", "sum_revenue", "sum_revenue2"]
    pd.testing.assert_frame_equal(
        narrow.set_index(keys).sort_index(),
        full.set_index(keys)[["n", "sum_revenue", "sum_revenue2"]].sort_index(),
    )
    # Answered from the wider answer already fetched: no query.
    before = reader.queries
    again = reader.experiments(at(0), at(30), spans=spans, sums=("n_error",))
    assert reader.queries == before and list(again.columns) == [*keys, "n", "n_error"]
    # A narrow answer does not serve a wider question.
    other = ((m0 + 25, m0 + 30), (m0 + 5, m0 + 25))
    reader.experiments(at(0), at(30), spans=other, sums=("n_error",))
    wider = reader.experiments(at(0), at(30), spans=other, sums=("n_error", "sum_pred"))
    assert reader.queries == before + 2 and "sum_pred" in wider.columns
    with pytest.raises(ConfigError, match="sums"):
        reader.experiments(at(0), at(30), sums=("revenue",))


def test_experiment_statement_reads_only_the_columns_of_its_sums() -> None:
    q = Queries("duckdb", TelemetrySchema(), HistogramSpec())
    m0 = to_minute(at(0))
    sql = str(q.experiments(at(0), at(30), ((m0 + 20, m0 + 30), (m0, m0 + 20)), ("n",)))
    assert "revenue" in str(q.experiments(at(0), at(30), (), ("n", "sum_revenue")))
    for column in ("revenue", "prediction", "label", "fallback", "error"):
        assert f"r.{column}" not in sql


def test_experiment_sums_match_pandas_and_the_cube(telemetry) -> None:
    reader, requests, exposures = telemetry
    rows = reader.experiments(at(0), at(30))
    assert set(rows["experiment_id"]) == set(exposures["experiment_id"])
    want = _expected(requests, exposures[exposures["experiment_id"] == "e1"])
    cols = ["n", "n_pred", "n_invalid", "sum_pred", "sum_label", "n_fallback", "sum_revenue"]
    got = rows[rows["experiment_id"] == "e1"].groupby("arm")[cols].sum()
    pd.testing.assert_frame_equal(
        got.sort_index(), want[cols].sort_index(), rtol=1e-9, check_names=False
    )
    # Attribution's invalid rate and the checks' count invalid predictions the same way.
    cube = reader.cube(Subject(experiment_id="e1"), at(0), at(30)).groupby("arm")["n_invalid"]
    pd.testing.assert_series_equal(
        got["n_invalid"].sort_index(), cube.sum().sort_index(), check_names=False
    )


def test_experiment_log_loss_sums_match_the_cube_and_come_only_when_asked(telemetry) -> None:
    # NE attribution reads each arm's log loss from the join of every experiment; the cube's
    # log loss of the same requests (valid predictions only) is the reference.
    reader, requests, exposures = telemetry
    assert "sum_ll" not in reader.experiments(at(0), at(30)).columns
    rows = reader.experiments(at(0), at(30), sums=("sum_ll2", "sum_ll"))
    assert list(rows.columns)[3:] == ["n", "sum_ll", "sum_ll2"]
    got = rows[rows["experiment_id"] == "e1"].groupby("arm")[["sum_ll", "sum_ll2"]].sum()
    cube = reader.cube(Subject(experiment_id="e1"), at(0), at(30)).groupby("arm")
    want = cube[["sum_ll", "sum_ll2"]].sum()
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index(), rtol=1e-9)
    # The log predictions' power sums (the spread NE attribution tests), against pandas.
    powers = ("sum_lp", "sum_lp2", "sum_lp3", "sum_lp4")
    rows = reader.experiments(at(0), at(30), sums=powers)
    got = rows[rows["experiment_id"] == "e1"].groupby("arm")[list(powers)].sum()
    joined = requests.merge(exposures[exposures["experiment_id"] == "e1"], on="request_id")
    p = joined["prediction"]
    lp = np.log(p.where(p.between(0, 1)).clip(lower=LOGLOSS_EPS))
    want = pd.DataFrame({f"sum_lp{k if k > 1 else ''}": lp**k for k in range(1, 5)})
    want = want.fillna(0.0).groupby(joined["arm"]).sum()
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index(), rtol=1e-9)


def test_histogram_sums_equal_valid_cube_sums(telemetry) -> None:
    reader, _, _ = telemetry
    subject = Subject(experiment_id="e1")
    cube = reader.cube(subject, at(0), at(30))
    hist = reader.histogram(subject, at(0), at(30), block_minutes=5)
    assert hist["block"].between(0, 5).all()
    assert hist["bin"].between(0, reader.histogram_spec.n_bins - 1).all()
    by_arm = hist.groupby("arm")[["n", "sum_pred", "sum_ll"]].sum()
    cube_arm = cube.groupby("arm")[["n_pred", "sum_pred", "sum_ll"]].sum()
    np.testing.assert_allclose(by_arm["n"], cube_arm["n_pred"])
    np.testing.assert_allclose(by_arm["sum_pred"], cube_arm["sum_pred"], rtol=1e-9)
    np.testing.assert_allclose(by_arm["sum_ll"], cube_arm["sum_ll"], rtol=1e-9)


def test_slice_histogram_splits_the_histogram_by_dimension_values(telemetry) -> None:
    reader, _, _ = telemetry
    subject = Subject(experiment_id="e1")
    hist = reader.histogram(subject, at(0), at(30), block_minutes=5)
    k = int(hist.groupby("bin")["n"].sum().idxmax())
    sliced = reader.slice_histogram(subject, at(0), at(30), block_minutes=5, bins=(k - 1, k + 1))
    assert set(sliced["bin"]) <= {-1, k - 1, k, k + 1}
    # Each block's total is kept (the other bins pooled as -1), and the near bins are exact.
    got = sliced.groupby(["arm", "block"])["n"].sum()
    want = hist.groupby(["arm", "block"])["n"].sum()
    pd.testing.assert_series_equal(got, want, check_dtype=False)
    near = sliced[sliced["bin"] >= 0].groupby(["arm", "block", "bin"])["n"].sum()
    whole = hist[hist["bin"].between(k - 1, k + 1)].set_index(["arm", "block", "bin"])["n"]
    pd.testing.assert_series_equal(near, whole.sort_index(), check_dtype=False)
    # Per dimension value, the predictions the cube counts there.
    cube = reader.cube(subject, at(0), at(30))
    for dim in reader.schema.dimensions:
        by_value = sliced.groupby(dim)["n"].sum()
        np.testing.assert_allclose(by_value, cube.groupby(dim)["n_pred"].sum()[by_value.index])
    with pytest.raises(ConfigError, match="bins"):
        reader.slice_histogram(subject, at(0), at(30), block_minutes=5, bins=(3, 2))


def test_model_and_all_traffic_subjects(telemetry) -> None:
    reader, requests, _ = telemetry
    all_rows = reader.cube(Subject(), at(0), at(30), latency=True)
    assert set(all_rows["arm"]) == {"all"}
    assert all_rows["n"].sum() == len(requests)
    # Ladder counts fall as the threshold rises and never exceed the latencies counted.
    ladder = all_rows[[c for c in all_rows.columns if c.startswith("lat_gt_")]].sum()
    assert (np.diff(ladder.to_numpy()) <= 0).all()
    assert ladder.iloc[0] <= all_rows["n_latency"].sum()
    model = reader.cube(Subject(model_id="m_test"), at(0), at(30))
    assert model["n"].sum() == (requests["model_id"] == "m_test").sum()


def test_empty_window_gives_typed_empty_frames(telemetry) -> None:
    reader, _, _ = telemetry
    later = T0 + timedelta(days=3)
    cube = reader.cube(Subject(experiment_id="e1"), later, later + timedelta(hours=1))
    assert cube.empty and "sum_ll" in cube.columns and cube["minute"].dtype == np.int64
    hist = reader.histogram(Subject(), later, later + timedelta(hours=1), block_minutes=3)
    assert hist.empty and list(hist.columns)[:3] == ["arm", "block", "bin"]
    units = reader.units("e1", later, later + timedelta(hours=1))
    assert units.empty and "units_10" in units.columns


def test_units_and_suffixes(telemetry) -> None:
    reader, _, exposures = telemetry
    units = reader.units("e1", at(0), at(30)).set_index("arm")
    want = exposures.groupby("arm")["unit_id"].nunique()
    assert units["units"].to_dict() == want.astype(float).to_dict()
    last10 = exposures[exposures["ts"] >= pd.Timestamp(at(20))].groupby("arm")["unit_id"].nunique()
    assert units["units_10"].to_dict() == last10.astype(float).to_dict()


def test_cache_runs_each_query_once(telemetry) -> None:
    reader, _, _ = telemetry
    reader.clear_cache()
    before = reader.queries
    for _ in range(3):
        reader.cube(Subject(experiment_id="e1"), at(5), at(25))
    assert reader.queries == before + 1


def test_snapshots_are_typed(telemetry) -> None:
    reader, _, _ = telemetry
    snaps = reader.snapshots(["m_prod"])
    assert list(snaps["model_id"]) == ["m_prod"]
    assert snaps["trained_at"].iloc[0] == pd.Timestamp(T0 - timedelta(minutes=30))


def test_mapped_tables_and_columns(tmp_path: Path) -> None:
    requests, exposures, snapshots = build(World(minutes=5, rpm=100, units=300, seed=1))
    path = tmp_path / "mapped.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA ads")
    for name, frame in (("req_log", requests), ("exp_log", exposures), ("models", snapshots)):
        con.register("f", frame.rename(columns={"prediction": "pctr", "ts": "event_time"}))
        con.execute(f"CREATE TABLE ads.{name} AS SELECT * FROM f")
        con.unregister("f")
    con.close()
    schema = TelemetrySchema.from_mappings(
        {"requests": "ads.req_log", "exposures": "ads.exp_log", "model_snapshots": "ads.models"},
        {"requests": {"prediction": "pctr", "ts": "event_time"}, "exposures": {"ts": "event_time"}},
    )
    reader = TelemetryReader(f"duckdb:///{path}", schema)
    cube = reader.cube(Subject(experiment_id="e1"), at(0), at(5))
    assert cube["n"].sum() == len(exposures)
    assert cube["sum_pred"].sum() == pytest.approx(
        requests.loc[requests["request_id"].isin(exposures["request_id"]), "prediction"].sum()
    )


def test_bad_mapping_and_missing_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"telemetry_tables\.reqs"):
        TelemetrySchema.from_mappings({"reqs": "x"})
    with pytest.raises(ConfigError, match=r"telemetry_columns\.requests\.pctr"):
        TelemetrySchema.from_mappings(columns={"requests": {"pctr": "p"}})
    reader = TelemetryReader(f"duckdb:///{tmp_path / 'empty.duckdb'}")
    with pytest.raises(TelemetryError, match="requests"):
        reader.cube(Subject(), at(0), at(5))
    with pytest.raises(ConfigError, match="end"):
        reader.cube(Subject(), at(5), at(0))


def test_minutes_round_trip_and_aware_times() -> None:
    aware = datetime(2026, 11, 20, 7, 30, 59, tzinfo=UTC)
    assert to_datetime(to_minute(aware)) == datetime(2026, 11, 20, 7, 30)
    assert to_minute(aware, ceil=True) == to_minute(aware) + 1
    assert to_minute(datetime(2026, 11, 20, 7, 30), ceil=True) == to_minute(aware)
