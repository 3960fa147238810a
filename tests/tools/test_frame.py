"""SubjectFrame's array reads against the pandas filters and group-bys they replace.

Sums are added in another order than pandas' (compensated) group-by, so float sums are compared
to a relative 1e-12 (counts are whole numbers and compare exactly).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from tests.tools.synth import random_cube
from tools.checks import SubjectFrame, Window
from tools.telemetry import Subject

M0 = 29_919_240
WINDOW = Window(M0, M0 + 40, M0 + 90)
DIMS = ("country", "platform", "ad_type")
REL = 1e-12


def _cube(seed: int = 3, rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # a few rows fall outside the fetched range: no read may count them
    arms = {"control": 0.45, "test": 0.45, "test_b": 0.1}
    frame = random_cube(rng, rows, (M0 - 2, M0 + 92), arms, {"model_id": "m", "model_version": "1"})
    frame["sum_revenue"] = rng.gamma(2.0, 1.3, rows)
    frame.loc[frame.sample(frac=0.05, random_state=seed).index, "sum_ll"] = np.nan
    return frame


def _want_minutes(cube: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """The old read: a pandas group-by per minute, zeros where silent."""
    out = cube.groupby("minute")[cols].sum()
    return out.reindex(range(WINDOW.fetch_start, WINDOW.end), fill_value=0.0)


def _served(cube: pd.DataFrame) -> pd.DataFrame:
    return cube.assign(n_served=cube["n"] - cube["n_error"])


def test_minute_and_span_sums_match_pandas() -> None:
    cube = _cube()
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    assert frame.arms == ["control", "test", "test_b"]
    cols = frame.sum_cols
    assert cols[-1] == "n_served" and "country" not in cols
    rng = np.random.default_rng(0)
    for arm in [*frame.arms, "absent"]:
        rows = _served(cube[cube["arm"] == arm])
        got = frame.minute_sums(arm)
        want = _want_minutes(rows, cols)
        assert got.index.equals(want.index) and list(got.columns) == cols
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=REL, atol=0)
        for _ in range(20):
            a = int(rng.integers(M0 - 5, M0 + 95))
            b = int(rng.integers(a - 3, M0 + 100))
            in_range = rows[(rows["minute"] >= max(a, M0)) & (rows["minute"] < min(b, M0 + 90))]
            want_span = in_range[cols].sum()
            np.testing.assert_allclose(frame.sums(arm, a, b), want_span, rtol=REL, atol=0)
            span = frame.span(arm, a, b)
            assert span["n"] == want_span["n"]  # counts: exact
            assert span["sum_pred"] == pytest.approx(want_span["sum_pred"], rel=REL)


def test_dim_sums_and_values_match_pandas() -> None:
    cube = _cube(seed=5)
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    assert frame.values("platform") == ["android", "ios", "web"]
    assert frame.dim_values() == 3 + 3 + 2
    served = _served(cube)
    for dim in DIMS:
        for arm, (a, b) in (("test", (M0 + 40, M0 + 90)), ("control", (M0 + 10, M0 + 12))):
            rows = served[(served["arm"] == arm) & (served["minute"] >= a) & (served["minute"] < b)]
            want = rows.groupby(dim)[frame.sum_cols].sum()
            got = frame.dim_sums(arm, a, b, dim)
            assert list(got.index) == list(want.index) and got.index.name == dim
            np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=REL, atol=0)


@pytest.mark.parametrize(
    "where", [{"platform": "ios"}, {"country": "BR", "ad_type": "story"}, {"country": "XX"}]
)
def test_a_slice_reads_like_a_frame_of_its_rows(where: dict[str, str]) -> None:
    cube = _cube(seed=7)
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    part = frame.slice(where)
    mask = np.ones(len(cube), dtype=bool)
    for dim, value in where.items():
        mask &= (cube[dim] == value).to_numpy()
    rows = _served(cube[mask])
    assert part.arms == sorted(rows["arm"].unique())
    pd.testing.assert_frame_equal(part.cube, rows)
    for arm in ("control", "test_b"):
        want = _want_minutes(rows[rows["arm"] == arm], frame.sum_cols)
        np.testing.assert_allclose(part.minute_sums(arm), want, rtol=REL, atol=0)
    if len(rows):
        got = part.dim_sums("test", M0, M0 + 90, "country")
        test_rows = rows[(rows["arm"] == "test") & rows["minute"].between(M0, M0 + 89)]
        want_dim = test_rows.groupby("country")[frame.sum_cols].sum()
        np.testing.assert_allclose(got.to_numpy(), want_dim.to_numpy(), rtol=REL, atol=0)


def test_an_alias_column_and_a_cube_without_dimensions() -> None:
    cube = _cube(seed=9)
    frame = SubjectFrame(cube, WINDOW, Subject(), DIMS)
    alias = frame.with_alias("lat_gt_p99", "n_error")
    np.testing.assert_array_equal(
        alias.minute_sums("control")["lat_gt_p99"], frame.minute_sums("control")["n_error"]
    )
    assert alias.cube["lat_gt_p99"].equals(cube["n_error"])
    # A cube that lost its dimension columns still reads; it just has no slices.
    lean = SubjectFrame(cube.drop(columns=["platform", "ad_type"]), WINDOW, Subject(), DIMS)
    assert lean.dims == ("country",) and lean.values("platform") == []
    np.testing.assert_allclose(
        lean.minute_sums("test"), frame.minute_sums("test"), rtol=REL, atol=0
    )


def test_nan_sums_count_as_zero_like_pandas() -> None:
    cube = _cube(seed=11)
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    got = frame.sums("control", M0, M0 + 90)["sum_ll"]
    want = cube[(cube["arm"] == "control") & (cube["minute"].between(M0, M0 + 89))]["sum_ll"]
    assert np.isfinite(got) and got == pytest.approx(want.sum(), rel=REL)


def test_grouped_sums_match_a_pandas_group_by() -> None:
    cube = _cube(seed=13)
    cube["model_version"] = np.where(cube["minute"] % 3 == 0, "2", "1")
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    keys = ["arm", "model_id", "model_version"]
    in_window = cube[(cube["minute"] >= WINDOW.start) & (cube["minute"] < WINDOW.end)]
    want = in_window.groupby(keys)["n"].sum().reset_index()
    pd.testing.assert_frame_equal(frame.grouped(keys, (WINDOW.start, WINDOW.end)), want)
    part = frame.slice({"country": "DE"})
    rows = cube[cube["country"] == "DE"]
    want = rows.groupby(["model_version", "platform"])[["n", "sum_pred"]].sum().reset_index()
    got = part.grouped(["model_version", "platform"], columns=["n", "sum_pred"])
    pd.testing.assert_frame_equal(got, want, rtol=REL)


def test_long_ranges_read_slices_from_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the tensor budget (a week-long range) the same numbers come from the rows."""
    monkeypatch.setattr("tools.checks._frame.TENSOR_CELLS", 0)
    cube = _cube(seed=17)
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    served = _served(cube)
    rows = served[(served["arm"] == "test") & served["minute"].between(M0 + 40, M0 + 89)]
    want = rows.groupby("platform")[frame.sum_cols].sum()
    got = frame.dim_sums("test", M0 + 40, M0 + 90, "platform")
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=REL, atol=0)
    part = frame.slice({"ad_type": "feed"})
    feed = served[served["ad_type"] == "feed"]
    assert part.arms == sorted(feed["arm"].unique())
    want_minutes = _want_minutes(feed[feed["arm"] == "control"], frame.sum_cols)
    np.testing.assert_allclose(part.minute_sums("control"), want_minutes, rtol=REL, atol=0)


def test_model_keys_read_first_by_name_or_by_many_threads() -> None:
    # The model keys are factorised on first read; a read by value or by several checks at once
    # (the agent runs its checks in threads on one frame) must see them like any key.
    cube = random_cube(
        np.random.default_rng(19),
        3000,
        (M0, M0 + 90),
        {"control": 0.5, "test": 0.5},
        {"model_id": ["m1", "m2"], "model_version": ["1", "2", "3"]},
    )
    want = cube.groupby(["arm", "model_id", "model_version"])["n"].sum().reset_index()
    fresh = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    assert fresh.code("model_id", "m2") == 1
    assert fresh.code("model_version", "9") == -1
    for _ in range(20):
        frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
        barrier = threading.Barrier(4)

        def read(frame: SubjectFrame = frame, barrier: threading.Barrier = barrier) -> pd.DataFrame:
            barrier.wait()
            return frame.grouped(["arm", "model_id", "model_version"])

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: read(), range(4)))
        for got in answers:
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
