"""One incident, one investigation: alerts of an open investigation's scope join it.

On the real agent (fakes for checks and actions only): the join rule (scope, window, watching),
an Alertmanager group of two alerts for one experiment through the HTTP webhook giving one
investigation and one mitigation, a monitor's alert joining a watching investigation, and two
mitigations executing the same kill: the second says the kill was already in effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.models import Alert
from agent.server import create_app
from agent.server.intake import AlertIntake
from agent.server.metrics import ServerMetrics
from agent.server.pool import InvestigationPool
from lifecycle.alerts import AlertLedger
from tests.agent.conftest import alert
from tests.agent.fakes import FakeActions, FakeToolbox, at, fail
from tests.agent.server.conftest import AUTH, TOKENS
from tests.agent.server.fakes import make_experiments
from tests.agent.server.test_alertmanager import am_alert, payload
from tools.result import CheckResult

FALLBACK = fail("fallback", "Fallback rate of 879's test arm is 31 %.", experiment="879")
BLIND = CheckResult(
    check="calibration",
    verdict="inconclusive",
    summary="Calibration of experiment 880 could not rule out a change of ±25%.",
    experiment="880",
)


def _box() -> FakeToolbox:
    return FakeToolbox(
        {"fallback@experiment:879": FALLBACK, "calibration@experiment:880": BLIND}, onset=at(150)
    )


def test_an_alert_joins_the_open_investigation_of_its_scope_only(harness: Any) -> None:
    h = harness(_box())
    inv = h.investigator()
    open_ = inv.investigate(alert(metric="revenue"))
    assert open_.status == "awaiting_approval"

    same = alert(metric="fallback_rate", name="FallbackHigh")
    assert inv.join(same) == open_.id
    assert inv.join(same) == open_.id  # a re-sent copy is listed once
    assert inv.join(alert(experiment="880")) is None  # another experiment
    assert inv.join(alert(experiment=None)) is None  # the global scope is another scope
    late = Alert(metric="ctr", fired_at=at(158 + 121), experiment="879")
    assert inv.join(late) is None  # outside incident_window_minutes (120)

    view = inv.get(open_.id)
    assert [(a.metric, a.name) for a in view.joined_alerts] == [("fallback_rate", "FallbackHigh")]
    assert len(view.mitigations) == 1


def test_a_watching_investigation_absorbs_later_alerts_and_lists_them(harness: Any) -> None:
    h = harness(_box(), followup_minutes=[10])
    inv = h.investigator()
    watching = inv.investigate(alert(experiment="880", metric="calibration"))
    assert watching.status == "watching"
    much_later = Alert(metric="calibration", fired_at=at(158 + 500), experiment="880")
    assert inv.join(much_later) == watching.id  # while watching, whenever it fires
    inv.follow_up(watching.next_followup_at)  # the next report lists it
    report = inv.get(watching.id).report_markdown
    assert "**Alerts that joined this investigation:**" in report
    assert "calibration on experiment 880" in report


@pytest.fixture
def served(harness: Any) -> Iterator[tuple[TestClient, Any, FakeActions]]:
    h = harness(_box(), api_tokens=TOKENS, workers=1, queue_size=4, monitor_interval_s=0)
    experiments = make_experiments(h.settings.state_url)
    inv = h.investigator()
    ledger = AlertLedger(h.settings.state_url)
    app = create_app(h.settings, investigator=inv, experiments=experiments, ledger=ledger)
    with TestClient(app) as client:
        yield client, inv, h.actions
    ledger.close()
    experiments.close()


def test_an_alertmanager_group_of_two_alerts_is_one_investigation_one_kill(
    served: tuple[TestClient, Any, FakeActions],
) -> None:
    client, inv, actions = served
    group = payload(
        am_alert("fp-rev", metric="revenue", starts="2026-11-20T08:38:00Z"),
        am_alert("fp-fb", metric="fallback_rate", starts="2026-11-20T08:39:00Z"),
    )
    r = client.post("/alerts/alertmanager", json=group)
    assert r.status_code == 202, r.text
    (ident,) = r.json()["investigations"]
    assert r.json()["joined"] == [ident]
    other = client.post("/alerts/alertmanager", json=payload(am_alert("fp-880", experiment="880")))
    assert other.json()["joined"] == [] and len(other.json()["investigations"]) == 1
    assert client.app.state.vigil.pool.wait_idle(60)

    listed = client.get("/investigations").json()
    assert sorted(v["alert"]["experiment"] for v in listed) == ["879", "880"]
    view = client.get(f"/investigations/{ident}").json()
    assert view["status"] == "awaiting_approval"
    assert [a["metric"] for a in view["joined_alerts"]] == ["fallback_rate"]
    (mitigation,) = view["mitigations"]
    assert (mitigation["action"], mitigation["target"]) == ("kill_experiment", "879")
    approved = client.post(f"/mitigations/{mitigation['id']}/approve", headers=AUTH["carol"])
    assert approved.status_code == 200, approved.text
    assert actions.calls == [("kill_experiment", "879", "carol")]
    assert inv.get(ident).status == "completed"


def test_a_monitor_does_not_open_a_second_investigation_while_one_is_watching(
    harness: Any,
) -> None:
    h = harness(_box())
    inv = h.investigator()
    watching = inv.investigate(alert(experiment="880", metric="calibration"))
    assert watching.status == "watching"
    ledger = AlertLedger(h.settings.state_url)
    pool = InvestigationPool(inv, workers=1, queue_size=2)
    intake = AlertIntake(pool, ledger, ServerMetrics(), join=inv.join)
    try:
        again = Alert(
            metric="calibration",
            fired_at=at(158) + timedelta(minutes=5),
            experiment="880",
            source="monitor",
        )
        assert intake.fire(again, source="monitor", key="880:calibration@08:43") == watching.id
        elsewhere = Alert(
            metric="calibration", fired_at=at(163), experiment="881", source="monitor"
        )
        started = intake.fire(elsewhere, source="monitor", key="881:calibration@08:43")
        assert started not in (None, "", watching.id)
        record = ledger.find("monitor", "880:calibration@08:43")
        assert record is not None and record.investigation_id == watching.id
    finally:
        pool.close()
        ledger.close()
    assert [v.id for v in inv.list() if v.alert.experiment == "880"] == [watching.id]


class _Switches(FakeActions):
    """Kill switches as lifecycle holds them: killing a killed experiment changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.killed: set[str] = set()

    def kill(self, experiment_id: str, actor: str, reason: str, key: str) -> bool:
        super().kill(experiment_id, actor, reason, key)
        if experiment_id in self.killed:
            return False
        self.killed.add(experiment_id)
        return True


def test_a_second_kill_of_the_same_experiment_says_it_was_already_in_effect(
    harness: Any,
) -> None:
    h = harness(_box())
    h.actions = _Switches()
    inv = h.investigator()
    # Two separate investigations (started by hand, not joined) both propose to kill 879.
    first = inv.investigate(alert(metric="revenue"))
    second = inv.investigate(alert(metric="fallback_rate"))
    one = inv.approve(first.mitigations[0].id, "carol")
    two = inv.approve(second.mitigations[0].id, "carol")
    assert one.effect == "acted"
    assert two.effect == "already_in_effect"
    assert h.actions.killed == {"879"}
    report = inv.get(second.id).report_markdown
    assert "already in effect: nothing changed" in report
    assert "already in effect" not in inv.get(first.id).report_markdown
