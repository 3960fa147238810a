"""The Toolbox over small synthetic worlds with planted faults, on DuckDB and SQLite."""

from __future__ import annotations

import inspect
import typing
from dataclasses import replace

import pandas as pd
import pytest

from tests.tools.synth import Fault, World, at, build, toolbox, write
from tools.errors import ConfigError, NotFoundError
from tools.result import CheckResult
from tools.telemetry import TelemetryReader, to_minute
from tools.toolbox import CHECKS, Toolbox

WORLDS = {
    "healthy": World(seed=11),
    "fallback": World(seed=12, faults=[Fault("fallback", 95, 0.3, where={"platform": "android"})]),
    "nan": World(seed=13, faults=[Fault("nan", 100, 0.1)]),
    "infra": World(seed=14, faults=[Fault("infra", 90, 0.1, arm=None, where={"country": "BR"})]),
    "units": World(seed=15, faults=[Fault("unit_loss", 80, 0.3)]),
}


# SQLite is the slow dialect: it gets a smaller healthy and fallback pair, DuckDB every world.
SQLITE_WORLDS = ("healthy", "fallback")


def _toolboxes(dialect: str, names: tuple[str, ...], base, rpm: int | None = None):
    out = {}
    for name in names:
        world = WORLDS[name] if rpm is None else replace(WORLDS[name], rpm=rpm)
        engine = write(f"{dialect}:///{base / name}", *build(world))
        out[name] = toolbox(TelemetryReader(engine))
    return out


@pytest.fixture(scope="module")
def toolboxes(tmp_path_factory: pytest.TempPathFactory):
    return _toolboxes("duckdb", tuple(WORLDS), tmp_path_factory.mktemp("duckdb"))


@pytest.fixture(scope="module")
def sqlite_toolboxes(tmp_path_factory: pytest.TempPathFactory):
    return _toolboxes("sqlite", SQLITE_WORLDS, tmp_path_factory.mktemp("sqlite"), rpm=1200)


def _battery(box: Toolbox) -> list[CheckResult]:
    start, end = at(60), at(120)
    results = [
        getattr(box, name)(start, end, experiment_id="e1")
        for name in ("prediction", "calibration", "ne", "staleness", "fallback")
    ]
    results += [
        getattr(box, name)(start, end, model_id="m_prod")
        for name in ("prediction", "calibration", "ne", "fallback")
    ]
    results += [
        box.srm(start, end, "e1"),
        box.change_point("ctr", start, end, experiment_id="e1"),
        box.change_point("error_rate", start, end),
        box.infra(start, end),
        box.attribution("revenue", start, end),
    ]
    return results


def _near(result: CheckResult, minute: int) -> bool:
    return result.onset is not None and abs(to_minute(result.onset) - to_minute(at(minute))) <= 5


def test_healthy_world_raises_no_fail(toolboxes) -> None:
    results = _battery(toolboxes["healthy"])
    assert len(results) == 14
    assert [r.summary for r in results if r.verdict == "fail"] == []


def test_sqlite_agrees_on_healthy_and_fallback(sqlite_toolboxes) -> None:
    results = _battery(sqlite_toolboxes["healthy"])
    assert [r.summary for r in results if r.verdict == "fail"] == []
    result = sqlite_toolboxes["fallback"].fallback(at(60), at(120), experiment_id="e1")
    assert result.verdict == "fail" and result.arm == "test"
    assert result.where == {"platform": "android"} and _near(result, 95)


def test_fallback_on_android_is_named_and_located(toolboxes) -> None:
    result = toolboxes["fallback"].fallback(at(60), at(120), experiment_id="e1")
    assert result.verdict == "fail" and result.arm == "test" and result.experiment == "e1"
    assert result.where == {"platform": "android"} and _near(result, 95)
    assert result.effect is not None and result.effect.ci_low > 0
    assert result.params["alpha_fail"] == 1e-3


def test_nan_predictions_fail_the_prediction_check(toolboxes) -> None:
    result = toolboxes["nan"].prediction(at(60), at(120), experiment_id="e1")
    assert result.verdict == "fail" and result.arm == "test" and _near(result, 100)


def test_infra_outage_on_one_country_is_no_experiments_fault(toolboxes) -> None:
    box = toolboxes["infra"]
    result = box.infra(at(60), at(120))
    assert result.verdict == "fail" and result.where == {"country": "BR"}
    assert result.experiment is None and result.arm is None and _near(result, 90)
    # The experiment's own checks see both arms alike: not its fault.
    assert box.fallback(at(60), at(120), experiment_id="e1").verdict != "fail"


def test_lost_units_fail_srm(toolboxes) -> None:
    result = toolboxes["units"].srm(at(60), at(120), "e1")
    assert result.verdict == "fail" and result.arm == "test" and result.p_value < 1e-3


def test_each_subject_window_is_fetched_once(toolboxes) -> None:
    box = toolboxes["healthy"]
    box.reader.clear_cache()
    box._frames.clear()
    before = box.reader.queries
    for name in ("prediction", "calibration", "ne", "staleness", "fallback"):
        getattr(box, name)(at(60), at(120), experiment_id="e1")
    # One statement for the wide cube and its histogram (GROUPING SETS), one for the snapshots:
    # two queries for five checks.
    assert box.reader.queries - before == 2
    box.refresh()
    box.fallback(at(60), at(120), experiment_id="e1")
    assert box.reader.queries - before == 3


def test_metric_series_and_errors(toolboxes) -> None:
    box = toolboxes["fallback"]
    series = box.metric_series("fallback_rate", at(60), at(120), experiment_id="e1")
    assert list(series.columns) == ["minute", "arm", "value"]
    assert set(series["arm"]) == {"control", "test"} and len(series) == 120
    late = series[(series["arm"] == "test") & (series["minute"] >= pd.Timestamp(at(95)))]
    assert late["value"].mean() > 0.05
    with pytest.raises(NotFoundError, match="nope"):
        box.fallback(at(60), at(120), experiment_id="nope")
    with pytest.raises(ConfigError, match="metric"):
        box.metric_series("clicks", at(60), at(120))


def test_check_methods_are_typed_for_tool_schemas() -> None:
    for name in CHECKS:
        method = getattr(Toolbox, name)
        hints = typing.get_type_hints(method)
        assert hints["return"] is CheckResult
        doc = inspect.getdoc(method) or ""
        assert "Args:" in doc and "Returns:" in doc
        for param in inspect.signature(method).parameters:
            if param != "self":
                assert param in hints and f"{param}:" in doc, (name, param)
