"""``vigil bench --only checks`` on a tiny world: the figures are there and consistent."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.bench import BenchOptions
from evals.bench.checks import run


def _rounding(shown: float) -> float:
    """The largest relative error of a figure rounded to 1 ms that reads ``shown``: the true
    value may be as low as ``shown - 0.0005`` (0.006 s may be 0.0055 s, 9 % less)."""
    return 0.0005 / max(shown - 0.0005, 1e-9)


def test_checks_section_on_a_tiny_world(tmp_path: Path) -> None:
    figures = run(BenchOptions(workdir=tmp_path, extra={"checks_rpm": 60}))
    assert 25_000 < figures["rows"] < 36_000
    assert figures["exposures"] > 0
    # The figures are rounded (a tiny scan to 0.1 ms), the ratio is not.
    assert figures["ratio"] > 0 and figures["floor_ratio"] > figures["join_ratio"] > 0
    assert figures["scan_s"] < figures["battery_s"]
    assert 0 < figures["battery_sql_s"] <= figures["battery_s"]
    assert figures["floor_s"] > 0 and figures["window_battery_s"] > 0
    # The earlier protocol's single run beside the best of three, against the same floor (both
    # rounded to 1 ms: the ratio agrees up to that rounding).
    assert figures["battery_cold_s"] > 0
    rounded = _rounding(figures["floor_s"]) + _rounding(figures["battery_cold_s"])
    assert figures["battery_cold_over_floor"] == pytest.approx(
        figures["battery_cold_s"] / figures["floor_s"], rel=rounded + 0.001, abs=0.01
    )
    # Issue 17's floor: the experiment's join with every cube sum, no attribution join.
    assert figures["issue_floor_s"] > 0
    # Both figures are rounded (the floor to 1 ms): the ratio agrees up to that rounding.
    rounding = _rounding(figures["issue_floor_s"]) + _rounding(figures["battery_s"])
    assert figures["battery_over_issue_floor"] == pytest.approx(
        figures["battery_s"] / figures["issue_floor_s"], rel=rounding + 0.001, abs=0.01
    )
    # One statement for the experiment's cube and histogram, then units, all traffic, every
    # experiment's effects and the model registry.
    assert figures["queries_per_battery"] == 5
    # Each statement of the timed battery, with its seconds: together its SQL time.
    statements = figures["battery_statements"]
    assert len(statements) == 5 and all(seconds >= 0 for _, seconds in statements)
    assert sum(s for _, s in statements) == pytest.approx(figures["battery_sql_s"], abs=0.01)
    assert figures["peak_rss_mb"] > 0
    verdicts = dict(v.split(":") for v in figures["verdicts"])
    assert set(verdicts) == {
        "prediction",
        "calibration",
        "ne",
        "staleness",
        "fallback",
        "srm",
        "change_point",
        "infra",
        "attribution",
    }
    assert all(v in ("ok", "warn", "fail", "inconclusive", "no_data") for v in verdicts.values())
