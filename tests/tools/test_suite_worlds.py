"""Proof on the simulator's scenario suite: each fault kind's check fails and names arm, where
and onset (±5 min); healthy worlds (one with 12 experiments) raise no fail.

Windows are the agent's (agent/localize.py): the change point of the alert metric over the two
hours before the alert sets the onset; checks read ``[min(onset, alert - 30 min), alert]``, so
they see only what exists when the alert fires. Worlds are simulated up to their alert minute.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from evals.sim import load_scenario, minute_to_ts, scenario_toolbox, simulate, ts_to_minute
from evals.sim.scenario import Scenario
from tools.result import CheckResult
from tools.toolbox import Toolbox

SUITE = Path(__file__).resolve().parents[2] / "evals" / "scenarios"
MATCHING = {
    "prediction_collapse": "prediction",
    "miscalibration": "calibration",
    "ne_regression": "ne",
    "stale_model": "staleness",
    "model_fallback": "fallback",
    "infra_outage": "infra",
    "allocation_bug": "srm",
    "logging_loss": "calibration",
}
# One scenario per fault kind (several with a dimension filter), and healthy ones.
FAULTY = [
    "alloc-bug-obvious",
    "collapse-mixed-web",
    "fallback-spike-879",
    "infra-outage-subtle-br",
    "logging-loss-subtle-android",
    "miscal-under-subtle",
    "ne-regression-obvious",
    "prod-stale-obvious",
]
HEALTHY = ["healthy-noise", "healthy-better-model", "healthy-diurnal-trough", "busy-healthy"]


def _window(scenario: Scenario, box: Toolbox) -> tuple[datetime, datetime]:
    end = minute_to_ts(scenario, scenario.alert.minute)
    search = end - timedelta(minutes=120)
    metric = scenario.alert.metric if scenario.alert.metric != "srm" else "revenue"
    found = box.change_point(metric, search, end, experiment_id=scenario.alert.experiment)
    if found.onset is None:
        return search, end
    return max(search, min(found.onset, end - timedelta(minutes=30))), end


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Scenario, Toolbox]]:
    base = tmp_path_factory.mktemp("suite")
    out = {}
    for name in FAULTY + HEALTHY:
        scenario = load_scenario(SUITE / f"{name}.yaml")
        url = f"duckdb:///{base / name}.duckdb"
        simulate(scenario, url, end_minute=scenario.alert.minute, replace=True)
        out[name] = (scenario, scenario_toolbox(scenario, url))
    return out


@pytest.mark.parametrize("name", FAULTY)
def test_matching_check_fails_with_arm_where_and_onset(worlds, name: str) -> None:
    scenario, box = worlds[name]
    start, end = _window(scenario, box)
    fault = scenario.faults[0]
    check = MATCHING[scenario.expect.root_cause]
    if check == "infra":
        result = box.infra(start, end)
    elif check == "srm":
        result = box.srm(start, end, str(fault.experiment))
    elif fault.experiment is not None:
        result = getattr(box, check)(start, end, experiment_id=fault.experiment)
    else:
        result = getattr(box, check)(start, end, model_id=fault.model or box.production_model)
    assert result.verdict == "fail", result.summary
    want_arm = (fault.arm or "test") if fault.experiment is not None else None
    assert result.arm == want_arm, result.summary
    want_where = {k: v for k, v in fault.where.items() if isinstance(v, str)}
    assert result.where == want_where, result.summary
    assert result.onset is not None and scenario.expect.onset_minute is not None
    assert abs(ts_to_minute(scenario, result.onset) - scenario.expect.onset_minute) <= 5


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_worlds_raise_no_fail(worlds, name: str) -> None:
    scenario, box = worlds[name]
    start, end = _window(scenario, box)
    results: list[CheckResult] = []
    for exp in scenario.world.experiments:
        results += [
            getattr(box, check)(start, end, experiment_id=exp.id)
            for check in ("prediction", "calibration", "ne", "staleness", "fallback")
        ]
        results.append(box.srm(start, end, exp.id))
    results += [
        getattr(box, check)(start, end, model_id=box.production_model)
        for check in ("prediction", "calibration", "ne", "staleness", "fallback")
    ]
    results += [box.infra(start, end), box.attribution("revenue", start, end)]
    assert len(results) >= 13
    assert [r.summary for r in results if r.verdict == "fail"] == []
    warns = sum(r.verdict == "warn" for r in results)
    assert warns <= max(2, len(results) // 10), [r.summary for r in results if r.verdict == "warn"]
