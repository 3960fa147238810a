"""The experiment page's charts: one statement for every look, kept per complete minute, a fragment.

A small simulated world (experiment 879, the browser tests' ranking model, 400 requests a minute
for an hour) in DuckDB. The one statement must return, at every look, exactly the sums the gate
reads for that window one look at a time; the page must come without its charts and the
fragment with them, as of the last complete minute, computed once per minute.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from agent.console.charts import ChartCache
from agent.console.looks import look_window, read_looks
from agent.console.telemetry import ConsoleTelemetry
from agent.server import create_app
from agent.service import Investigator
from evals.sim import parse_scenario, scenario_to_experiment_file, simulate
from lifecycle.service import ExperimentService
from tests.agent.console.conftest import csrf_of
from tests.agent.console.world import SCENARIO, console_settings
from tools.unit_stats import UnitStatsReader, unit_sum_columns

MINUTES = 60
START = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, str]:
    folder = tmp_path_factory.mktemp("looks")
    scenario = parse_scenario(
        {**SCENARIO, "world": {**SCENARIO["world"], "requests_per_minute": 400}}
    )
    url = f"duckdb:///{folder / 'telemetry.duckdb'}"
    simulate(scenario, url, end_minute=MINUTES)
    return scenario, folder, url


def test_the_window_ends_where_the_newest_minute_begins() -> None:
    newest = START + timedelta(minutes=59, seconds=58)
    window = look_window("879", START + timedelta(seconds=3), newest, looks=8)
    assert window is not None
    assert window.start == START
    assert window.end == START + timedelta(minutes=59)  # minute 59 may still be written to
    assert len(window.bounds) == 8
    assert all(b.second == 0 and b.microsecond == 0 for b in window.bounds)
    assert list(window.bounds) == sorted(set(window.bounds))
    # Three complete minutes give three looks; none complete, no window.
    short = look_window("879", START, START + timedelta(minutes=3, seconds=1), looks=8)
    assert short is not None and len(short.bounds) == 3
    assert look_window("879", START, START + timedelta(seconds=50)) is None


def test_one_statement_gives_every_look_the_sums_the_gate_reads_one_look_at_a_time(
    world: tuple[Any, Path, str],
) -> None:
    _, folder, url = world
    telemetry = ConsoleTelemetry(console_settings(folder, url))
    try:
        first, newest = telemetry.chart_clock("879")
        assert first is not None and newest is not None
        window = look_window("879", first, newest)
        assert window is not None
        looks = read_looks(telemetry.engine(), telemetry.schema, window)
        gate = UnitStatsReader(telemetry.engine(), telemetry.schema)
        columns = unit_sum_columns(request_sums=True, latency=True)
        assert [look.at for look in looks] == list(window.bounds)
        for look in looks:
            ref = gate.arm_unit_sums(
                {"879": window.start}, look.at, request_sums=True, latency=True
            )
            ref = ref.sort_values("arm").reset_index(drop=True)
            got = look.units.sort_values("arm").reset_index(drop=True)
            assert list(got["arm"]) == list(ref["arm"]) == ["control", "test"]
            assert list(got["experiment_id"]) == ["879", "879"]
            np.testing.assert_allclose(
                got[columns].to_numpy(float), ref[columns].to_numpy(float), rtol=1e-9
            )
            assert list(look.requests["arm"]) == list(got["arm"])
        # The looks grow: more units and requests at each.
        units = [float(look.units["units"].sum()) for look in looks]
        assert units == sorted(units) and units[0] < units[-1]
    finally:
        telemetry.close()


def test_the_charts_are_computed_once_per_complete_minute(
    world: tuple[Any, Path, str], tmp_path: Path
) -> None:
    scenario = world[0]
    # A copy of the world this test may append to.
    url = f"duckdb:///{tmp_path / 'telemetry.duckdb'}"
    simulate(scenario, url, end_minute=MINUTES)
    settings = console_settings(tmp_path, url)
    experiments = ExperimentService.from_settings(settings)
    telemetry = ConsoleTelemetry(settings)
    try:
        experiments.create(scenario_to_experiment_file(scenario), "setup", start=True)
        view = experiments.get("879")
        cache = ChartCache(telemetry)
        panel = cache.panel(view)
        assert not panel.cached and cache.computed == 1
        assert panel.as_of == START + timedelta(minutes=MINUTES - 1)
        assert [s.metric for s, _ in panel.drawn] == [
            "revenue_per_request",
            "ne",
            "calibration",
            "latency_p99",
        ]
        again = cache.panel(view)
        assert again.cached and cache.computed == 1 and again.as_of == panel.as_of
        # A minute more of telemetry: the last complete minute moved, the charts are read again.
        simulate(scenario, url, start_minute=MINUTES, end_minute=MINUTES + 1)
        moved = cache.panel(view)
        assert not moved.cached and cache.computed == 2
        assert moved.as_of == START + timedelta(minutes=MINUTES)
        assert moved.charts.levels[0].requests > panel.charts.levels[0].requests
        # Two pages at once after the copy is dropped: one read, both answered.
        cache.clear()
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: cache.panel(view), range(2)))
        assert cache.computed == 3
        assert sorted(p.cached for p in both) == [False, True]
    finally:
        telemetry.close()
        experiments.close()


@pytest.fixture
def client(world: tuple[Any, Path, str], tmp_path: Path) -> Iterator[TestClient]:
    scenario, _, url = world
    settings = console_settings(tmp_path, url)
    experiments = ExperimentService.from_settings(settings)
    experiments.create(scenario_to_experiment_file(scenario), "setup", start=True)
    investigator = Investigator(settings)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    try:
        with TestClient(app, follow_redirects=False) as c:
            login = c.get("/console/login")
            signed = c.post(
                "/console/login",
                data={"csrf": csrf_of(login.text), "token": "tok-bob", "next": "/console/"},
            )
            assert signed.status_code == 303
            yield c
    finally:
        investigator.close()
        experiments.close()


def test_the_page_comes_without_its_charts_and_the_fragment_brings_them(
    client: TestClient,
) -> None:
    page = client.get("/console/experiments/879")
    assert page.status_code == 200
    assert 'id="charts-pending"' in page.text and 'class="chart"' not in page.text
    assert 'data-refresh="/console/fragments/experiments/879/charts"' in page.text
    assert "Ranking Model Improvements" in page.text  # the rest is there at once

    first = client.get("/console/fragments/experiments/879/charts")
    assert first.status_code == 200
    assert len(re.findall(r'<figure class="chart"', first.text)) == 4
    assert "Charts as of 2026-11-20 06:59 UTC" in first.text
    assert "data-pending" not in first.text  # the region stops asking every half second
    assert "kept until the next minute completes" not in first.text
    second = client.get("/console/fragments/experiments/879/charts")
    assert "kept until the next minute completes" in second.text
    assert (
        re.sub(r"\d\d:\d\d:\d\d UTC", "", first.text).split('id="charts-as-of"')[0]
        == (re.sub(r"\d\d:\d\d:\d\d UTC", "", second.text).split('id="charts-as-of"')[0])
    )


def test_the_fragment_needs_a_login_and_a_known_experiment(client: TestClient) -> None:
    assert client.get("/console/fragments/experiments/nope/charts").status_code == 404
    client.cookies.clear()
    anonymous = client.get("/console/fragments/experiments/879/charts")
    assert anonymous.status_code == 303 and "/console/login" in anonymous.headers["location"]


def test_a_warehouse_without_exposures_is_said_in_place_of_the_charts(
    world: tuple[Any, Path, str], tmp_path: Path
) -> None:
    scenario = world[0]
    copy = tmp_path / "broken.duckdb"
    engine = sa.create_engine(f"duckdb:///{copy}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE requests (ts TIMESTAMP)"))
    engine.dispose()
    settings = console_settings(tmp_path, f"duckdb:///{copy}")
    experiments = ExperimentService.from_settings(settings)
    experiments.create(scenario_to_experiment_file(scenario), "setup", start=True)
    investigator = Investigator(settings)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    try:
        with TestClient(app) as c:
            login = c.get("/console/login")
            c.post(
                "/console/login",
                data={"csrf": csrf_of(login.text), "token": "tok-bob", "next": "/console/"},
            )
            got = c.get("/console/fragments/experiments/879/charts")
            assert got.status_code == 200
            assert "No charts:" in got.text and "exposures" in got.text.lower()
    finally:
        investigator.close()
        experiments.close()
