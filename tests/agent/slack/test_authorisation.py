"""Who may do what in Slack: unmapped users only read, per-user rate of investigations, and
decisions announced in the thread once, by the agent's notifier, whichever door took them."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from agent.server import create_app
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import AUTH
from tests.agent.server.fakes import FakeInvestigator, FakeSlack, kills
from tests.agent.server.test_alertmanager import am_alert, payload
from tests.agent.slack.conftest import slack_settings
from tests.agent.slack.test_bot import slash


def _client(
    tmp_path: Path,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
    **overrides: object,
) -> TestClient:
    settings = slack_settings(tmp_path, fake_slack, **overrides)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    investigator.notifier = app.state.vigil.notifier
    return TestClient(app)


def test_unmapped_user_cannot_act_or_start_work(
    client: TestClient,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> None:
    for text in ("kill 879 looks bad", "investigate 879 revenue", "approve m1", "reject m1"):
        reply = slash(client, text, user="U_EVE")
        assert "not mapped to a Vigil user" in reply["text"], (text, reply)
        assert reply["response_type"] == "ephemeral"
    assert investigator.mitigations == {} and investigator.views == {}
    assert fake_slack.of("chat.postMessage") == []
    assert not experiments.get("879").killed and kills(experiments) == []
    # Reading stays open by default.
    assert "Experiment `879`" in slash(client, "status 879", user="U_EVE")["text"]
    # A mapped user may propose the kill.
    reply = slash(client, "kill 879 looks bad", user="U_BOB")
    assert "Proposed `kill_experiment 879`" in reply["text"]
    assert len(investigator.mitigations) == 1


def test_reads_can_be_closed_to_unmapped_users(
    tmp_path: Path,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> None:
    with _client(
        tmp_path, fake_slack, investigator, experiments, slack_unmapped_reads=False
    ) as client:
        reply = slash(client, "status 879", user="U_EVE")
        assert "not mapped" in reply["text"] and "879" not in reply["text"]
        assert "Experiment `879`" in slash(client, "status 879", user="U_BOB")["text"]


def test_investigations_are_rate_limited_per_user(
    tmp_path: Path,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> None:
    with _client(
        tmp_path,
        fake_slack,
        investigator,
        experiments,
        user_investigations_per_window=2,
        user_rate_window_s=600,
        queue_size=10,
    ) as client:
        for _ in range(2):
            assert "Investigating" in slash(client, "investigate 879 revenue")["text"]
        refused = slash(client, "investigate 879 revenue")["text"]
        assert "Not now" in refused and "alice" in refused
        # Another user has a budget of their own; HTTP shares alice's.
        assert "Investigating" in slash(client, "investigate 880 ctr", user="U_BOB")["text"]
        r = client.post("/investigations", json={"metric": "ctr"}, headers=AUTH["alice"])
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert r.json()["error"] == "rate_limited"
        assert client.app.state.vigil.pool.wait_idle(10)
        assert len(investigator.runs) == 3


def test_http_approval_is_announced_in_the_thread_once(
    client: TestClient, fake_slack: FakeSlack, investigator: FakeInvestigator
) -> None:
    r = client.post("/alerts/alertmanager", json=payload(am_alert("fp-thread")))
    (ident,) = r.json()["investigations"]
    assert client.app.state.vigil.pool.wait_idle(10)
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postMessage")) == 1)
    message_ts = "1700000001.000100"  # the fake Slack's first message
    mid = investigator.get(ident).mitigations[0].id
    r = client.post(f"/mitigations/{mid}/approve", headers=AUTH["alice"])
    assert r.status_code == 200, r.text

    def thread() -> list[str]:
        posts = fake_slack.of("chat.postMessage")
        return [p["text"] for p in posts if p.get("thread_ts") == message_ts]

    assert fake_slack.wait_for(lambda: any("Verification" in t for t in thread()))
    approvals = [t for t in thread() if "approved by" in t]
    assert len(approvals) == 1 and "alice (<@U_ALICE>)" in approvals[0]
    assert client.post(f"/mitigations/{mid}/approve", headers=AUTH["carol"]).status_code == 200
    assert len([t for t in thread() if "approved by" in t]) == 1  # not announced again
