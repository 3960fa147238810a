"""End to end on simulated worlds: the real simulator, lifecycle, toolbox and agent.

Each world is small (1,500 requests a minute, 180 minutes) and built once per module. The faults
are clear enough that the question is the agent's reasoning, not the checks' power: which cause,
which subject, which mitigation, and that nothing acts without approval.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.models import Alert, InvestigationView
from agent.service import Investigator
from evals.harness import (
    create_experiments,
    ensure_telemetry,
    scenario_alert,
    scenario_clock,
    scenario_settings,
)
from evals.sim import parse_scenario, simulate
from lifecycle.service import ExperimentService
from tests.agent.conftest import make_settings

ALERT_MINUTE = 170
WORLD: dict[str, Any] = {
    "seed": 5,
    "world": {
        "start": "2026-11-20T06:00:00Z",
        "minutes": 180,
        "requests_per_minute": 1500,
        "models": [
            {"id": "ctr_v41", "quality": 0.75},
            {"id": "ctr_v42", "quality": 0.77, "refresh_minutes": 60},
            {"id": "ctr_v43", "quality": 0.76},
        ],
        "production_model": "ctr_v41",
        "experiments": [
            {
                "id": "879",
                "name": "Ranking Model Improvements",
                "owner": "alice",
                "layer": "ranking",
                "traffic_pct": 25,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
            },
            {
                "id": "880",
                "name": "Deeper Crosses",
                "owner": "bob",
                "layer": "ranking",
                "traffic_pct": 25,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v43"}},
            },
            {
                "id": "884",
                "name": "Ad Load Plus Two",
                "owner": "erin",
                "layer": "ad_load",
                "traffic_pct": 25,
                "arms": {"control": {"ad_load": 1.0}, "test": {"ad_load": 1.02}},
            },
        ],
    },
}


def scenario(
    name: str, faults: list[dict[str, Any]], metric: str, experiment: str | None, cause: str
) -> Any:
    data = copy.deepcopy(WORLD)
    data["name"] = name
    data["faults"] = faults
    data["alert"] = {"metric": metric, "minute": ALERT_MINUTE}
    if experiment is not None:
        data["alert"]["experiment"] = experiment
    data["expect"] = {"root_cause": cause}
    return parse_scenario(data)


class World:
    """A simulated scenario with its stores and an investigator on them."""

    def __init__(self, folder: Path, spec: Any) -> None:
        self.spec = spec
        self.settings = scenario_settings(make_settings(folder, oncall=["carol"]), spec)
        ensure_telemetry(spec, self.settings, end_minute=ALERT_MINUTE + 1)
        self.service = ExperimentService.from_settings(self.settings)
        create_experiments(spec, self.service, self.settings)
        self.acted = ALERT_MINUTE + 1
        self.investigator = Investigator(
            self.settings, clock=lambda: scenario_clock(spec, self.acted)
        )

    def investigate(self, alert: Alert | None = None) -> InvestigationView:
        return self.investigator.investigate(alert or scenario_alert(self.spec))

    def close(self) -> None:
        self.investigator.close()
        self.service.close()


def world(tmp_path_factory: pytest.TempPathFactory, spec: Any) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp(spec.name), spec)
    yield w
    w.close()


def _top(view: InvestigationView) -> tuple[str, str | None, str | None]:
    top = view.root_causes[0]
    return top.cause, top.experiment, top.model


def _no_action(w: World, view: InvestigationView) -> None:
    assert all(m.status == "proposed" for m in view.mitigations)
    assert not any(e.action in ("kill", "ramp_down", "rollback_model") for e in w.service.audit())
    assert w.service.kill_switches() == []


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    fault = {"kind": "model_fallback", "experiment": "879", "start_minute": 150, "severity": 0.35}
    yield from world(
        tmp_path_factory, scenario("e2e-fallback", [fault], "revenue", "879", "model_fallback")
    )


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    yield from world(tmp_path_factory, scenario("e2e-healthy", [], "revenue", "879", "none"))


def test_fallback_found_killed_on_approval_and_recovers(fallback):
    w = fallback
    view = w.investigate()
    assert view.status == "awaiting_approval"
    assert _top(view) == ("model_fallback", "879", None)
    assert view.onset is not None and abs((view.onset - scenario_clock(w.spec, 150)).seconds) <= 300
    proposal = view.mitigations[0]
    assert (proposal.action, proposal.target) == ("kill_experiment", "879")
    assert proposal.blast_radius == pytest.approx(0.25)
    assert "✗ Issue identified with increased model fallback" in view.report_markdown
    _no_action(w, view)
    allocator = w.service.allocator()
    unit = next(u for u in range(1, 10_000) if allocator.assign({"unit_id": u}, "879") == "test")

    done = w.investigator.approve(proposal.id, "alice")
    assert done.status == "executed" and done.recovered is None  # no telemetry after it yet
    assert w.investigator.approve(proposal.id, "alice").status == "executed"
    kills = [e for e in w.service.audit("879") if e.action == "kill"]
    assert len(kills) == 1 and kills[0].actor == "alice" and proposal.id in kills[0].reason
    w.service.refresh()
    assert allocator.is_enabled({"unit_id": unit}, "879") is False

    switches = [(s.scope, s.target) for s in w.service.kill_switches()]
    simulate(
        w.spec,
        w.settings.telemetry_url,
        start_minute=w.acted,
        end_minute=w.acted + 25,
        kill_switches=switches,
    )
    verified = w.investigator.verify(proposal.id)
    assert verified.status == "verified" and verified.recovered is True
    final = w.investigator.get(view.id)
    assert "executed and verified by alice, metric recovered" in final.report_markdown


def test_healthy_world_has_no_cause_and_no_action(healthy):
    view = healthy.investigate()
    assert [c.cause for c in view.root_causes] == ["none"]
    assert view.mitigations == [] and view.status == "completed"
    _no_action(healthy, view)


def test_healthy_world_global_alert_has_no_cause(healthy):
    alert = scenario_alert(healthy.spec).model_copy(update={"experiment": None})
    view = healthy.investigate(alert)
    assert [c.cause for c in view.root_causes] == ["none"]
    assert view.mitigations == []


@pytest.mark.parametrize(
    ("name", "fault", "metric", "experiment", "expected", "action"),
    [
        (
            "e2e-collapse",
            {
                "kind": "prediction_collapse",
                "experiment": "879",
                "start_minute": 150,
                "severity": 0.3,
            },
            "revenue",
            "879",
            ("prediction_collapse", "879", None),
            ("kill_experiment", "879"),
        ),
        (
            "e2e-stale",
            {"kind": "stale_model", "experiment": "879", "start_minute": 60, "severity": 0.1},
            "ne",
            "879",
            ("stale_model", "879", None),
            ("kill_experiment", "879"),
        ),
        (
            "e2e-infra",
            {"kind": "infra_outage", "start_minute": 150, "severity": 0.2},
            "error_rate",
            None,
            ("infra_outage", None, None),
            ("escalate_infra", None),
        ),
        (
            "e2e-global-fallback",
            {"kind": "model_fallback", "experiment": "880", "start_minute": 150, "severity": 0.5},
            "revenue",
            None,
            ("model_fallback", "880", None),
            ("kill_experiment", "880"),
        ),
        (
            "e2e-production-model",
            {
                "kind": "prediction_collapse",
                "model": "ctr_v41",
                "start_minute": 150,
                "severity": 0.3,
            },
            "revenue",
            None,
            ("prediction_collapse", None, "ctr_v41"),
            ("rollback_model", "ctr_v41"),
        ),
    ],
)
def test_each_cause_on_its_world(
    tmp_path_factory, name, fault, metric, experiment, expected, action
):
    for w in world(tmp_path_factory, scenario(name, [fault], metric, experiment, expected[0])):
        view = w.investigate()
        assert _top(view) == expected, view.report_markdown
        assert [(m.action, m.target) for m in view.mitigations] == [action]
        _no_action(w, view)
