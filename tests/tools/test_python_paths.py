"""The battery's faster Python paths give exactly the numbers of the reads they replace.

Histogram arrays against the row filters, a frame's column selection against the full frame, the
light ``Sums`` against a Series, typing the rows of an answer against typing a filtered copy, the
key-sorted histogram against the group-by, PELT in chunks of any size, and the checks' lean slice
scans against scans of every column.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tests.tools.synth import random_cube
from tools import changepoint
from tools.checks import SubjectFrame, Window
from tools.checks._engine import Comparand, Finding, assess, judge
from tools.checks._frame import Sums
from tools.checks._hist import hist_arrays
from tools.checks._localize import localize
from tools.checks._slices import slice_scan
from tools.checks._snapshots import top_served, versions
from tools.checks._stuck import _matrices
from tools.checks.calibration import CalibrationParams, calibration_test
from tools.checks.fallback import proportion_test
from tools.histograms import BINNED_SUMS, bin_sums
from tools.telemetry import Subject, TelemetryReader, _typed

M0 = 29_919_240
WINDOW = Window(M0, M0 + 40, M0 + 90)
DIMS = ("country", "platform", "ad_type")


def _hist(seed: int, n_blocks: int, n_bins: int) -> pd.DataFrame:
    """A reader-shaped histogram: one row per (arm, block, bin), sorted by them."""
    rng = np.random.default_rng(seed)
    keys = pd.MultiIndex.from_product(
        [["control", "test"], range(n_blocks), range(n_bins)], names=["arm", "block", "bin"]
    ).to_frame(index=False)
    rows = keys[rng.random(len(keys)) < 0.4].reset_index(drop=True)
    for col in BINNED_SUMS:
        rows[col] = rng.gamma(1.5, 3.0, len(rows))
    return rows


def test_hist_arrays_match_the_row_filters() -> None:
    n_blocks, n_bins = 12, 30
    hist = _hist(1, n_blocks, n_bins)
    arrays = hist_arrays(hist, n_blocks, n_bins)
    assert hist_arrays(hist, n_blocks, n_bins) is arrays  # built once per histogram
    assert hist_arrays(hist.copy(), n_blocks, n_bins) is not arrays
    for arm in ("control", "test", "absent"):
        for blocks in (range(0, n_blocks), range(3, 7), range(5, 5), range(-2, 40), None):
            want = bin_sums(hist, arm, blocks, n_bins)
            pd.testing.assert_frame_equal(arrays.frame(arm, blocks), want, check_exact=True)
        rows = hist[hist["arm"] == arm]
        for col in ("n", "sum_pred", "sum_label"):
            want_m = np.zeros((n_blocks, n_bins))
            np.add.at(want_m, (rows["block"], rows["bin"]), rows[col].to_numpy(float))
            np.testing.assert_array_equal(arrays.matrix(arm, col), want_m)
    n, s = _matrices(hist, "test", n_blocks, n_bins)
    np.testing.assert_array_equal(n, arrays.matrix("test", "n"))
    np.testing.assert_array_equal(s, arrays.matrix("test", "sum_pred"))


def _cube(seed: int = 3, rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    models = {"model_id": ["m1", "m1", "m2"], "model_version": ["1", "2", "3"]}
    frame = random_cube(rng, rows, (M0, M0 + 90), {"control": 0.5, "test": 0.5}, models)
    frame["sum_label_v"] = rng.integers(0, 4, rows).astype(float)
    frame["n_fallback"] = rng.binomial(frame["n"].astype(int), 0.02).astype(float)
    return frame


@pytest.mark.parametrize("parent_first", [True, False])
def test_a_selection_keeps_every_sum_of_the_full_frame(parent_first: bool) -> None:
    frame = SubjectFrame(_cube(), WINDOW, Subject(experiment_id="e"), DIMS, "control")
    cols = ["n", "sum_pred", "n_fallback"]
    if parent_first:
        frame.minute_matrix("test")  # the selection then takes the parent's minute sums
    small = frame.select(cols)
    assert small is frame.select(cols) and small.sum_cols == cols
    assert small.arms == frame.arms and small.values("country") == frame.values("country")
    at = [frame.column_at[c] for c in cols]
    for arm in frame.arms:
        np.testing.assert_array_equal(small.minute_matrix(arm), frame.minute_matrix(arm)[:, at])
        for dim in DIMS:
            got_v, got = small.dim_arrays(arm, M0 + 5, M0 + 77, dim)
            want_v, want = frame.dim_arrays(arm, M0 + 5, M0 + 77, dim)
            assert list(got_v) == list(want_v)
            np.testing.assert_array_equal(got, want[:, at])
            for value in want_v:
                part, full = small.slice({dim: value}), frame.slice({dim: value})
                np.testing.assert_array_equal(
                    part.minute_matrix(arm), full.minute_matrix(arm)[:, at]
                )
    pd.testing.assert_frame_equal(
        small.grouped(["platform"], (M0, M0 + 90), ["n", "sum_pred"]),
        frame.grouped(["platform"], (M0, M0 + 90), ["n", "sum_pred"]),
        check_exact=True,
    )


def test_sums_read_like_the_series_they_stand_for() -> None:
    frame = SubjectFrame(_cube(seed=4), WINDOW, Subject(experiment_id="e"), DIMS, "control")
    light, series = frame.span("test", M0, M0 + 60), frame.sums("test", M0, M0 + 60)
    assert list(light) == list(series.index) and len(light) == len(series)
    for key in series.index:
        assert type(light[key]) is type(series[key]) and light[key] == series[key]
    with pytest.raises(KeyError):
        light["nope"]
    with pytest.raises(ValueError, match="3 sums for 2 columns"):
        Sums(["a", "b"], np.zeros(3))


def _answer() -> pd.DataFrame:
    """A raw answer as DuckDB gives it: nullable ints, strings with NULLs, float NaN."""
    return pd.DataFrame(
        {
            "minute": pd.array([5, None, 7, 8, None, 10], dtype="Int64"),
            "arm": pd.array(["a", "b", None, "a", "b", "c"], dtype="str"),
            "n": pd.array([1, 2, None, 4, 5, 6], dtype="Int64"),
            "sum_pred": [0.5, np.nan, 1.5, np.nan, 2.5, 3.0],
            "extra": ["x", "y", "z", "u", "v", "w"],
        }
    )


def test_typing_the_rows_of_an_answer_is_typing_a_filtered_copy() -> None:
    raw = _answer()
    rows = raw["minute"].notna().to_numpy()
    want = _typed(raw[rows], ints=["minute"], strs=["arm"], floats=["n", "sum_pred"])
    got = _typed(raw, ints=["minute"], strs=["arm"], floats=["n", "sum_pred"], rows=rows)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got["arm"].tolist() == ["a", "(null)", "a", "c"]
    assert got["sum_pred"].tolist() == [0.5, 1.5, 0.0, 3.0]


@pytest.mark.parametrize("fold", [False, True])
def test_the_key_sorted_histogram_is_the_group_by(fold: bool) -> None:
    reader = TelemetryReader("duckdb:///:memory:")
    n_bins = reader.histogram_spec.n_bins
    rng = np.random.default_rng(5)
    raw = _hist(6, 4, n_bins).sample(frac=1.0, random_state=2).reset_index(drop=True)
    if fold:  # a prediction of 1 lands one bin past the end, next to a row of the last bin
        raw = pd.concat([raw, raw.iloc[:3].assign(bin=n_bins)], ignore_index=True)
    raw["sum_pred"] = rng.random(len(raw))
    floats = list(BINNED_SUMS)
    want = _typed(raw, ints=["block", "bin"], strs=["arm"], floats=floats)
    want["bin"] = want["bin"].clip(0, n_bins - 1)
    want = want.groupby(["arm", "block", "bin"], as_index=False).sum()
    pd.testing.assert_frame_equal(reader._typed_histogram(raw), want, check_exact=True)
    empty = reader._typed_histogram(raw.iloc[:0])
    assert list(empty.columns) == list(want.columns) and empty.empty


@pytest.mark.parametrize("chunk", [1, 3, 16, 10_000])
def test_pelt_in_chunks_of_any_size(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(chunk)
    monkeypatch.setattr(changepoint, "PELT_CHUNK", chunk)
    for n, min_size in ((60, 2), (200, 5), (9, 4)):
        y = rng.normal(0, 1, n) + np.where(np.arange(n) > n // 3, 1.2, 0.0)
        monkeypatch.setattr(changepoint, "PELT_CHUNK", 10**9)
        want = changepoint.detect_change_points(y, min_size=min_size)
        want_onset = changepoint.regression_onset(y, direction="increase", min_duration=min_size)
        monkeypatch.setattr(changepoint, "PELT_CHUNK", chunk)
        assert changepoint.detect_change_points(y, min_size=min_size) == want
        got_onset = changepoint.regression_onset(y, direction="increase", min_duration=min_size)
        assert repr(got_onset) == repr(want_onset)


def test_served_versions_and_the_top_one_per_arm() -> None:
    cube = _cube(seed=8)
    cube.loc[cube["minute"] < M0 + 20, "n"] = 0.0  # rows without requests do not serve
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    keys = ["model_id", "model_version"]
    for arm in ("control", "test"):
        rows = cube[(cube["arm"] == arm) & (cube["n"] > 0)]
        want = rows.groupby(keys)["minute"].min().to_dict()
        assert versions(frame, arm).first_served() == want
    in_window = cube[(cube["minute"] >= WINDOW.start) & (cube["minute"] < WINDOW.end)]
    by = in_window.groupby(["arm", *keys])["n"].sum().reset_index()
    top, ids = top_served(frame, tuple(keys))
    for arm, group in by.groupby("arm"):
        best = group.sort_values("n").iloc[-1]
        assert top[str(arm)] == (best["model_id"], best["model_version"])
    assert ids == sorted(by["model_id"].unique())


def test_lean_localize_and_slice_scan_match_every_column() -> None:
    cube = _cube(seed=9)
    android = (cube["platform"] == "android") & (cube["arm"] == "test")
    late = cube["minute"] >= M0 + 60
    cube.loc[android & late, "n_fallback"] = cube.loc[android & late, "n"] * 0.3
    brazil = (cube["country"] == "BR") & (cube["arm"] == "test") & late
    cube.loc[brazil, "sum_pred"] *= 8.0
    frame = SubjectFrame(cube, WINDOW, Subject(experiment_id="e"), DIMS, "control")
    for test in (
        proportion_test("fallback rate", "n_fallback", fail=0.01, warn=0.003, min_n=200),
        calibration_test(CalibrationParams()),
    ):
        assert test.reads is not None
        every = dataclasses.replace(test, reads=None)
        comparand = Comparand("test", "control", concurrent=True)
        found = assess(frame, comparand, test)
        assert found is not None
        finding = Finding(
            comparand,
            test,
            found.comparison,
            found.p_value,
            (M0 + 60, M0 + 90),
            M0 + 60,
            (M0 + 60, M0 + 90),
            "test",
        )
        assert localize(frame, finding) == localize(frame, dataclasses.replace(finding, test=every))
        findings = [assess(frame, c, test) for c in frame.comparands()]
        overall = judge(findings, control="control", alpha_fail=1e-3, alpha_warn=1e-2)
        kwargs = {"alpha_fail": 1e-3, "alpha_warn": 1e-2, "min_n": 50.0, "hint_p": 1.0}
        lean, full = (
            slice_scan(frame, overall, test, **kwargs),
            slice_scan(frame, overall, every, **kwargs),
        )
        assert (lean is None) == (full is None)
        if lean is not None and full is not None:
            assert lean.where == full.where and lean.slices == full.slices
            assert lean.judgement.verdict == full.judgement.verdict
            lf, ff = lean.judgement.finding, full.judgement.finding
            assert lf is not None and ff is not None
            assert (lf.comparison, lf.focus, lf.onset) == (ff.comparison, ff.focus, ff.onset)
            assert lean.frame.sum_cols == frame.sum_cols  # the hit reads every column
