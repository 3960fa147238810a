"""Approvals with bearer tokens, experiments, kill proposals, reports, health and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agent.models import InvestigationStatus
from agent.server import create_app
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import AUTH, make_settings
from tests.agent.server.fakes import FakeInvestigator, kills, make_experiments
from tests.agent.server.test_alertmanager import am_alert, payload

STATUSES = get_args(InvestigationStatus)


def _mitigation(client: TestClient, experiment: str = "879") -> tuple[str, str]:
    r = client.post(
        "/alerts/alertmanager", json=payload(am_alert(f"fp-{experiment}", experiment=experiment))
    )
    (ident,) = r.json()["investigations"]
    assert client.app.state.vigil.pool.wait_idle(10)
    view = client.get(f"/investigations/{ident}").json()
    return ident, view["mitigations"][0]["id"]


def test_approval_needs_a_valid_token(
    client: TestClient, investigator: FakeInvestigator, experiments: ExperimentService
) -> None:
    _, mid = _mitigation(client)
    r = client.post(f"/mitigations/{mid}/approve")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = client.post(f"/mitigations/{mid}/approve", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = client.post(f"/mitigations/{mid}/approve", headers={"Authorization": "Basic dG9r"})
    assert r.status_code == 401
    assert investigator.executions == [] and kills(experiments) == []


def test_only_owner_or_oncall_may_approve(
    client: TestClient, investigator: FakeInvestigator, experiments: ExperimentService
) -> None:
    ident, mid = _mitigation(client)
    r = client.post(f"/mitigations/{mid}/approve", headers=AUTH["bob"])
    assert r.status_code == 403, r.text
    assert "bob" in r.json()["detail"][0]["message"]
    assert investigator.executions == [] and not experiments.get("879").killed
    r = client.post(f"/mitigations/{mid}/reject", headers=AUTH["bob"])
    assert r.status_code == 403

    r = client.post(f"/mitigations/{mid}/approve", headers=AUTH["alice"])  # the owner
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "verified" and r.json()["approved_by"] == "alice"
    again = client.post(f"/mitigations/{mid}/approve", headers=AUTH["carol"])
    assert again.status_code == 200
    assert investigator.executions == [mid]  # approving twice acts once
    assert kills(experiments) == [("kill", "alice")]
    view = client.get(f"/investigations/{ident}").json()
    assert view["mitigations"][0]["status"] == "verified"


def test_oncall_may_approve_and_reject(client: TestClient, investigator: FakeInvestigator) -> None:
    _, mid = _mitigation(client, "880")  # owned by dave
    r = client.post(f"/mitigations/{mid}/reject", headers=AUTH["carol"])
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    r = client.post(f"/mitigations/{mid}/approve", headers=AUTH["carol"])
    assert r.json()["status"] == "rejected"
    assert investigator.executions == []


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert client.get("/investigations/nope").status_code == 404
    assert client.get("/investigations/nope/report").status_code == 404
    assert client.post("/mitigations/nope/approve", headers=AUTH["carol"]).status_code == 404
    r = client.get("/experiments/999")
    assert r.status_code == 404 and "999" in r.json()["detail"][0]["message"]


def test_experiment_view_and_kill_proposal(
    client: TestClient, investigator: FakeInvestigator, experiments: ExperimentService
) -> None:
    r = client.get("/experiments/879")
    assert r.status_code == 200
    assert r.json()["status"] == "ramping" and r.json()["kill_switches"] == []
    assert r.json()["owner"] == "alice" and r.json()["stage_percent"] == 5.0

    assert client.post("/experiments/879/kill").status_code == 401
    assert client.post("/experiments/999/kill", headers=AUTH["bob"]).status_code == 404
    r = client.post("/experiments/879/kill", headers=AUTH["bob"], json={"reason": "looks bad"})
    assert r.status_code == 202, r.text
    proposal = r.json()
    assert proposal["action"] == "kill_experiment" and proposal["status"] == "proposed"
    assert proposal["proposed_by"] == "bob" and proposal["reason"] == "looks bad"
    assert not experiments.get("879").killed  # a proposal changes nothing
    r = client.post("/experiments/879/kill", headers=AUTH["bob"], json={"reason": 1, "x": 2})
    assert r.status_code == 422
    assert {d["field"] for d in r.json()["detail"]} >= {"x"}

    assert (
        client.post(f"/mitigations/{proposal['id']}/approve", headers=AUTH["bob"]).status_code
        == 403
    )
    r = client.post(f"/mitigations/{proposal['id']}/approve", headers=AUTH["carol"])
    assert r.status_code == 200
    after = client.get("/experiments/879").json()
    assert after["killed"] and after["status"] == "killed"
    assert [(k["scope"], k["activated_by"]) for k in after["kill_switches"]] == [
        ("experiment", "carol")
    ]
    assert kills(experiments) == [("kill", "carol")]


def test_report_health_and_metrics(client: TestClient) -> None:
    ident, _ = _mitigation(client)
    r = client.get(f"/investigations/{ident}/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert ident in r.text
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["capacity"] == 5

    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    by_status = {s.labels["status"]: s.value for s in families["vigil_investigations"].samples}
    assert by_status == {s: (1 if s == "awaiting_approval" else 0) for s in STATUSES}
    assert "vigil_queue_depth" in families
    assert "vigil_check_duration_seconds" in families
    assert "vigil_llm_calls" in families and "vigil_llm_failures" in families
    started = [
        s.value
        for s in families["vigil_alerts"].samples
        if s.name == "vigil_alerts_total"
        and s.labels == {"source": "alertmanager", "outcome": "started"}
    ]
    assert started == [1.0]


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    settings = [make_settings(tmp_path / str(i)) for i in range(2)]
    exps = [make_experiments(s.state_url) for s in settings]
    apps = [
        create_app(s, investigator=FakeInvestigator(e), experiments=e)
        for s, e in zip(settings, exps, strict=True)
    ]
    a, b = (x.state.vigil.metrics for x in apps)
    a.observe_check("fallback", 0.2)
    assert a.registry is not b.registry
    assert b"fallback" in a.render() and b"fallback" not in b.render()
