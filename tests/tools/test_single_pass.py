"""One statement per subject (GROUPING SETS) gives the same frames and verdicts as one per frame."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.tools.synth import Fault, World, at, build, toolbox, write
from tools.result import CheckResult
from tools.telemetry import Subject, TelemetryReader
from tools.toolbox import Toolbox

WORLD = World(
    seed=21,
    rpm=1200,
    faults=[Fault("fallback", 95, 0.3, where={"platform": "android"}), Fault("nan", 100, 0.05)],
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> sa.Engine:
    path = tmp_path_factory.mktemp("single_pass") / "t.duckdb"
    return write(f"duckdb:///{path}", *build(WORLD))


def _battery(box: Toolbox) -> list[CheckResult]:
    start, end = at(60), at(120)
    results = [
        getattr(box, name)(start, end, experiment_id="e1")
        for name in ("prediction", "calibration", "ne", "staleness", "fallback")
    ]
    results += [
        getattr(box, name)(start, end, model_id="m_prod")
        for name in ("prediction", "calibration", "ne")
    ]
    results += [
        box.srm(start, end, "e1"),
        box.change_point("ctr", start, end, experiment_id="e1"),
        box.infra(start, end),
        box.attribution("revenue", start, end),
    ]
    return results


def _same(a: Any, b: Any, path: str = "") -> None:
    """Equal up to float summation order (the database may add in another order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{k}]")
    elif isinstance(a, float) and isinstance(b, float):
        both_nan = math.isnan(a) and math.isnan(b)
        assert both_nan or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_cube_and_histogram_frames_match_separate_statements(engine: sa.Engine) -> None:
    one = TelemetryReader(engine)
    two = TelemetryReader(engine, grouping_sets=False)
    assert one.grouping_sets and not two.grouping_sets
    for subject in (Subject(experiment_id="e1"), Subject(model_id="m_prod"), Subject()):
        frames = []
        for reader in (one, two):
            before = reader.queries
            cube = reader.cube(subject, at(0), at(120), latency=True, histogram_block=7)
            hist = reader.histogram(subject, at(0), at(120), block_minutes=7)
            frames.append((cube, hist, reader.queries - before))
        (cube1, hist1, q1), (cube2, hist2, q2) = frames
        assert (q1, q2) == (1, 2)
        keys = ["minute", "arm", "model_id", "model_version", "country", "platform", "ad_type"]
        pd.testing.assert_frame_equal(
            cube1.sort_values(keys).reset_index(drop=True),
            cube2.sort_values(keys).reset_index(drop=True),
            rtol=1e-9,
        )
        pd.testing.assert_frame_equal(hist1, hist2, rtol=1e-9)
        assert len(hist1) > 50 and float(hist1["n"].sum()) == float(cube1["n_pred"].sum())


def test_single_pass_battery_gives_the_same_results(engine: sa.Engine) -> None:
    single = toolbox(TelemetryReader(engine))
    separate = toolbox(TelemetryReader(engine, grouping_sets=False))
    got, want = _battery(single), _battery(separate)
    assert single.reader.queries < separate.reader.queries
    for a, b in zip(got, want, strict=True):
        _same(a.model_dump(mode="json"), b.model_dump(mode="json"), a.check)
    verdicts = {r.check: r.verdict for r in got[:5]}
    assert verdicts["fallback"] == "fail" and verdicts["prediction"] == "fail"
