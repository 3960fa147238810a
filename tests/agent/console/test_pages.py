"""The console's rules without a browser: login, CSRF, the API's approval policy, kill proposals."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from agent.service import Investigator
from lifecycle.service import ExperimentService
from tests.agent.console.conftest import AUTH, csrf_of


def test_every_page_needs_a_login_and_root_leads_to_the_console(app_client: TestClient) -> None:
    assert app_client.get("/").headers["location"] == "/console/"
    for path in ("/console/", "/console/experiments/879", "/console/audit", "/console/data"):
        r = app_client.get(path)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/console/login?next=")


def test_forged_or_stale_cookies_are_not_sessions(
    app_client: TestClient, sign_in: Callable[[str], TestClient]
) -> None:
    client = sign_in("alice")
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    value = client.cookies["vigil_console"]
    client.cookies.clear()
    client.cookies.set("vigil_console", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
    assert client.get("/console/").status_code == 303  # a tampered signature: signed out


def test_login_only_redirects_inside_the_console(app_client: TestClient) -> None:
    page = app_client.get("/console/login")
    r = app_client.post(
        "/console/login",
        data={"csrf": csrf_of(page.text), "token": "tok-bob", "next": "https://evil.example/"},
    )
    assert r.headers["location"] == "/console/"


def test_posts_without_the_sessions_csrf_token_are_refused(
    sign_in: Callable[[str], TestClient], parts: tuple[Investigator, ExperimentService]
) -> None:
    client = sign_in("alice")
    r = client.post("/console/experiments/879/kill", data={"reason": "x"})
    assert r.status_code == 403
    r = client.post("/console/experiments/879/kill", data={"csrf": "guess", "reason": "x"})
    assert r.status_code == 403
    investigator, _ = parts
    assert [m for m in investigator.store.list_mitigations() if m.target == "879"] == []


def test_kill_files_a_proposal_and_the_api_policy_decides_it(
    sign_in: Callable[[str], TestClient], parts: tuple[Investigator, ExperimentService]
) -> None:
    investigator, experiments = parts
    client = sign_in("bob")
    page = client.get("/console/experiments/880")
    r = client.post(
        "/console/experiments/880/kill", data={"csrf": csrf_of(page.text), "reason": "odd"}
    )
    assert r.status_code == 303
    (proposal,) = [m for m in investigator.store.list_mitigations() if m.target == "880"]
    assert proposal.status == "proposed" and proposal.proposed_by == "bob"
    assert not experiments.get("880").killed  # a proposal, not a kill

    # bob (neither owner nor on call) sees no button, and the API and the console both refuse.
    page = client.get("/console/experiments/880")
    assert 'class="approve"' not in page.text and "awaiting carol, dave" in page.text
    via_api = client.post(f"/mitigations/{proposal.id}/approve", headers=AUTH["bob"])
    via_console = client.post(
        f"/console/mitigations/{proposal.id}/approve", data={"csrf": csrf_of(page.text)}
    )
    assert via_api.status_code == via_console.status_code == 403
    assert "may not approve" in via_console.text

    # alice owns 879, not 880: the same answer as the API's.
    client = sign_in("alice")
    page = client.get("/console/experiments/880")
    assert 'class="approve"' not in page.text
    refused = client.post(f"/mitigations/{proposal.id}/approve", headers=AUTH["alice"])
    assert refused.status_code == 403

    # carol is on call: she sees the button and her approval kills 880, once, audited.
    client = sign_in("carol")
    page = client.get("/console/experiments/880")
    assert f'data-mitigation="{proposal.id}"' in page.text
    r = client.post(
        f"/console/mitigations/{proposal.id}/approve",
        data={"csrf": csrf_of(page.text), "back": "/console/experiments/880"},
    )
    assert r.status_code == 303 and "executed" in r.headers["location"]
    assert experiments.get("880").killed
    kills = [e for e in experiments.audit("880") if e.action == "kill"]
    assert [e.actor for e in kills] == ["carol"]
    audit = client.get("/console/audit?experiment=880&action=kill")
    assert proposal.id in audit.text and "carol" in audit.text


def test_builder_shows_lifecycles_errors_beside_their_fields(
    sign_in: Callable[[str], TestClient], parts: tuple[Investigator, ExperimentService]
) -> None:
    client = sign_in("alice")
    page = client.get("/console/builder?template=ad_load")
    assert "80.0 % free" in page.text  # 879 and 880 hold 10 % each
    form = {
        "csrf": csrf_of(page.text),
        "action": "save",
        "id": "879",  # exists
        "name": "",
        "owner": "alice",
        "layer": "ranking",
        "traffic_pct": "10",
        "arm_name_0": "control",
        "arm_model_0": "ctr_v41",
        "arm_name_1": "test",
        "arm_model_1": "no_such_model",
        "stages": "50:60, 25:60",
        "guardrail_srm": "on",
    }
    r = client.post("/console/builder", data=form)
    assert r.status_code == 422
    for field in ("name", "rollout"):
        assert f'data-error-for="{field}"' in r.text, field
    form |= {"name": "Bigger ads", "stages": "25:60, 50:60"}
    r = client.post("/console/builder", data=form)
    assert r.status_code == 422
    assert 'data-error-for="id"' in r.text and "experiment id exists" in r.text
    assert 'data-error-for="arms"' in r.text and "not in the model registry" in r.text
    _, experiments = parts
    assert [v.id for v in experiments.list()] == ["879", "880"]  # nothing stored

    form |= {"id": "881", "arm_model_1": "ctr_v42"}
    r = client.post("/console/builder", data=form)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/experiments/881/")
    stored = experiments.get("881")
    assert stored.status == "draft" and stored.created_by == "alice"
    assert [s.percent for s in stored.rollout.stages] == [25.0, 50.0]
    start = client.get("/console/experiments/881/start")
    assert "No preflight is configured" in start.text or "Decision" in start.text


def test_every_page_answers_without_telemetry(sign_in: Callable[[str], TestClient]) -> None:
    client = sign_in("carol")
    pages = {
        "/console/": "Running and ramping",
        "/console/fragments/dashboard": "Running and ramping",
        "/console/experiments?layer=ranking&owner=alice": "Ranking Model Improvements",
        "/console/experiments/879": "Audit trail",
        "/console/builder": "No estimate",
        "/console/templates": "A/A test",
        "/console/data": "absent",
        "/console/investigations": "No investigations yet",
        "/console/audit?actor=setup": "create",
    }
    for path, text in pages.items():
        r = client.get(path)
        assert r.status_code == 200, path
        assert text in r.text, path
    assert client.get("/console/experiments/nope").status_code == 404
    assert client.get("/console/investigations/inv-nope").status_code == 404
