"""The scenario format: loading, errors that name the field, the public suite, conversions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from evals.sim import (
    FAULT_KINDS,
    load_scenario,
    minute_to_ts,
    parse_scenario,
    scenario_to_experiment_file,
    ts_to_minute,
)
from evals.sim.economy import diurnal_traffic
from evals.sim.scenario import FaultSpec, Scenario, fault_arm
from lifecycle.allocation import build_snapshot
from tools.errors import ConfigError, NotFoundError

ROOT = Path(__file__).resolve().parents[2]
SUITE = sorted((ROOT / "evals" / "scenarios").glob("*.yaml"))
DATA = Path(__file__).parent / "data"
EXAMPLE = ROOT / "evals" / "scenarios" / "fallback-spike-879.yaml"


def _example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


# --- errors name the field ------------------------------------------------------------------


def test_unknown_key_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(DATA / "unknown_key.yaml")
    assert err.value.field == "world.experiments[0].colour"
    assert str(err.value).startswith("world.experiments[0].colour: unknown key")


def test_unknown_fault_arm_names_the_arm_field() -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(DATA / "bad_fault_arm.yaml")
    assert err.value.field == "faults[0].arm"
    assert err.value.value == "treatment"


def test_duplicate_yaml_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="duplicate key"):
        load_scenario(DATA / "duplicate_key.yaml")


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_scenario(tmp_path / "nope.yaml")


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert err.value.field == str(path)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["world"].update(dimensions={"os": {"a": 1.0}}), "world.dimensions.os"),
        (lambda d: d["faults"][0].update(kind="gremlins"), "faults[0].kind"),
        (lambda d: d["faults"][0].update(experiment="999"), "faults[0].experiment"),
        (lambda d: d["faults"][0].update(where={"platform": "tv"}), "faults[0].where.platform"),
        (lambda d: d["faults"][0].update(severity=1.5), "faults[0].severity"),
        (lambda d: d["faults"][0].update(model="ctr_v41"), "faults[0].model"),
        (lambda d: d["faults"][0].update(end_minute=100), "faults[0].end_minute"),
        (lambda d: d["faults"][0].update(mode="nan"), "faults[0].mode"),
        (lambda d: d["world"].update(production_model="ctr_v99"), "world.production_model"),
        (
            lambda d: d["world"]["experiments"][0]["arms"]["test"].update(model="nope"),
            "world.experiments[0].arms.test.model",
        ),
        (lambda d: d["world"]["experiments"][0].update(traffic_pct=0), "world.experiments[0]"),
        (lambda d: d["world"]["dimensions"]["country"].update(US=0.9), "world.dimensions.country"),
        (lambda d: d["alert"].update(minute=150), "alert.minute"),
        (lambda d: d["alert"].update(metric="profit"), "alert.metric"),
        (lambda d: d["expect"].update(root_cause="gremlins"), "expect.root_cause"),
        (lambda d: d["expect"].update(mitigation="reboot"), "expect.mitigation"),
    ],
)
def test_bad_values_name_their_field(edit: Any, field: str) -> None:
    data = _example()
    edit(data)
    with pytest.raises(ConfigError) as err:
        parse_scenario(data)
    assert err.value.field.startswith(field), str(err.value)


def test_layer_over_allocation_is_rejected() -> None:
    data = _example()
    second = copy.deepcopy(data["world"]["experiments"][0])
    second.update(id="880", traffic_pct=95)
    data["world"]["experiments"].append(second)
    with pytest.raises(ConfigError, match="over-allocated") as err:
        parse_scenario(data)
    assert err.value.field == "world.experiments[1].traffic_pct"


def test_severity_ranges_per_kind() -> None:
    data = _example()
    data["faults"][0].update(kind="miscalibration", severity=1.0)
    with pytest.raises(ConfigError, match="other than 1"):
        parse_scenario(data)
    data["faults"][0].update(kind="miscalibration", severity=1.4)
    assert parse_scenario(data).faults[0].severity == 1.4


def test_stale_model_needs_a_refreshing_model() -> None:
    data = _example()
    data["faults"][0] = {
        "kind": "stale_model",
        "model": "ctr_v41",
        "start_minute": 100,
        "severity": 0.5,
    }
    with pytest.raises(ConfigError, match="refresh_minutes") as err:
        parse_scenario(data)
    assert err.value.field == "faults[0].kind"


def test_allocation_bug_needs_an_experiment() -> None:
    data = _example()
    data["faults"][0] = {"kind": "allocation_bug", "start_minute": 100, "severity": 0.2}
    with pytest.raises(ConfigError) as err:
        parse_scenario(data)
    assert err.value.field == "faults[0].experiment"


# --- the example of DESIGN §7 and the conversions ------------------------------------------------


def test_design_example_loads() -> None:
    scenario = load_scenario(EXAMPLE)
    assert scenario.name == "fallback-spike-879"
    fault = scenario.faults[0]
    assert (fault.kind, fault.experiment, fault.arm, fault.severity) == (
        "model_fallback",
        "879",
        "test",
        0.35,
    )
    assert fault.where == {"platform": "android"}
    assert scenario.expect.root_cause == "model_fallback"
    assert scenario.world.dimension_mix()["ad_type"] == pytest.approx(
        {"feed": 0.6, "story": 0.25, "video": 0.15}
    )


def test_experiment_file_compiles_in_lifecycle() -> None:
    scenario = load_scenario(ROOT / "evals" / "scenarios" / "busy-global-fallback.yaml")
    file = scenario_to_experiment_file(scenario)
    assert [layer.id for layer in file.layers] == ["ranking", "ads_load", "ui", "pricing"]
    assert {m.id: m.refresh_minutes for m in file.models}["ctr_v44"] == 30
    exp = {e.id: e for e in file.experiments}
    assert len(exp) == 12
    assert exp["880"].arms["test"].model == "ctr_v43"
    assert exp["901"].arms["test"].ad_load == 1.05
    snapshot = build_snapshot(file.layers, file.experiments)
    assert set(snapshot.experiments) == set(exp)


def test_minutes_and_timestamps_round_trip() -> None:
    scenario = load_scenario(EXAMPLE)
    ts = minute_to_ts(scenario, 152)
    assert ts == datetime(2026, 11, 20, 8, 32)
    assert ts.tzinfo is None
    assert ts_to_minute(scenario, ts) == 152.0
    assert ts_to_minute(scenario, datetime(2026, 11, 20, 8, 32, 30, tzinfo=UTC)) == 152.5
    assert minute_to_ts(scenario, 0.5) == datetime(2026, 11, 20, 6, 0, 30)


# --- the public suite ----------------------------------------------------------------------------

SCENARIOS = {p.stem: load_scenario(p) for p in SUITE}


def test_suite_size_and_names() -> None:
    assert len(SCENARIOS) >= 30
    assert all(s.name == stem for stem, s in SCENARIOS.items())


def test_suite_covers_every_fault_kind_obviously_and_subtly() -> None:
    kinds: dict[str, set[str]] = {kind: set() for kind in FAULT_KINDS}
    for s in SCENARIOS.values():
        if s.faults:
            primary = s.faults[0].kind
            kinds[primary].update(t for t in s.tags if t in ("obvious", "subtle"))
            assert s.expect.root_cause == primary, s.name
    assert all(levels == {"obvious", "subtle"} for levels in kinds.values()), kinds


def test_suite_has_the_required_situations() -> None:
    tags = [set(s.tags) for s in SCENARIOS.values()]
    healthy = [s for s in SCENARIOS.values() if s.expect.root_cause == "none"]
    assert len(healthy) >= len(SCENARIOS) / 4
    assert all(not s.faults and s.expect.mitigation == "none" for s in healthy)
    assert sum("red_herring" in t for t in tags) >= 3
    assert sum("two_faults" in t for t in tags) >= 2
    assert sum(any(f.where for f in s.faults) for s in SCENARIOS.values()) >= 5
    production = [s for s in SCENARIOS.values() if s.faults and s.faults[0].model]
    assert {s.expect.mitigation for s in production} == {"rollback_model", "escalate_data"}
    busy = [s for s in SCENARIOS.values() if "busy" in s.tags]
    assert busy
    for s in busy:
        layers = {e.layer for e in s.world.experiments}
        assert len(s.world.experiments) >= 10 and len(layers) >= 3
        assert s.alert.experiment is None


def test_suite_expectations_follow_the_design_vocabulary() -> None:
    for s in SCENARIOS.values():
        expect, faults = s.expect, s.faults
        assert s.alert.minute < s.world.minutes, s.name
        if not faults:
            continue
        primary = faults[0]
        onset = primary.start_minute
        if primary.kind == "stale_model":
            # Harm starts at the first publication the stale model misses.
            model = s.models[_stale_model_id(s, primary)]
            assert model.refresh_minutes is not None
            onset = -(-onset // model.refresh_minutes) * model.refresh_minutes
        assert expect.onset_minute == onset, s.name
        if primary.kind == "infra_outage":
            assert expect.mitigation == "escalate_infra" and expect.experiment is None
        elif primary.kind == "logging_loss":
            assert expect.mitigation == "escalate_data" and expect.experiment is None
        elif primary.experiment is not None:
            assert (expect.mitigation, expect.experiment) == ("kill_experiment", primary.experiment)
        elif primary.kind == "stale_model":
            # Rolling a stale model back serves an older version still: its pipeline is fixed.
            assert expect.mitigation == "escalate_data" and expect.experiment is None
        else:
            assert expect.mitigation == "rollback_model" and expect.experiment is None


def test_suite_worlds_stay_small() -> None:
    for s in SCENARIOS.values():
        w = s.world
        minutes = np.arange(w.minutes, dtype=np.float64)
        rate = np.full(w.minutes, float(w.requests_per_minute))
        if w.diurnal:
            start = s.start.hour * 60 + s.start.minute
            rate = rate * diurnal_traffic((start + minutes) % 1440)
        assert rate.sum() <= 1.1e6, (s.name, rate.sum())


def _stale_model_id(s: Scenario, fault: FaultSpec) -> str:
    """The model a stale fault pins: its arm's, the named one, else the production model."""
    if fault.experiment is not None:
        exp = next(e for e in s.world.experiments if e.id == fault.experiment)
        arm = exp.arms[str(fault_arm(s, fault))]
        return arm.model or s.world.production_model
    return fault.model or s.world.production_model
