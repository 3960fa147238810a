"""The real Bolt app fed signed requests; its Web API calls land on a fake Slack on loopback."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from agent.slack.blocks import APPROVE_ACTION, REJECT_ACTION
from lifecycle.service import ExperimentService
from tests.agent.server.fakes import (
    FakeInvestigator,
    FakeSlack,
    button_body,
    kills,
    mention_body,
    signed_headers,
    slash_body,
)
from tests.agent.server.test_alertmanager import am_alert, payload

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def slash(client: TestClient, text: str, user: str = "U_ALICE") -> dict:
    body = slash_body(text, user=user)
    r = client.post("/slack/events", content=body, headers={**FORM, **signed_headers(body)})
    assert r.status_code == 200, r.text
    return r.json()


def click(client: TestClient, action: str, mitigation_id: str, user: str, ts: str) -> None:
    body = button_body(action, mitigation_id, user=user, channel="C_ALERTS", ts=ts)
    r = client.post("/slack/events", content=body, headers={**FORM, **signed_headers(body)})
    assert r.status_code == 200, r.text


def test_unsigned_stale_and_forged_requests_are_refused(
    client: TestClient, fake_slack: FakeSlack, investigator: FakeInvestigator
) -> None:
    body = slash_body("kill 879")
    assert client.post("/slack/events", content=body, headers=FORM).status_code == 401
    stale = signed_headers(body, ts=int(time.time()) - 600)
    assert client.post("/slack/events", content=body, headers={**FORM, **stale}).status_code == 401
    forged = signed_headers(body, secret="not-the-secret")
    assert client.post("/slack/events", content=body, headers={**FORM, **forged}).status_code == 401
    tampered = signed_headers(body)
    other = slash_body("kill 880")
    assert (
        client.post("/slack/events", content=other, headers={**FORM, **tampered}).status_code == 401
    )
    time.sleep(0.2)
    assert investigator.mitigations == {}
    assert fake_slack.calls == []


def test_help_status_and_unknown_text(client: TestClient, experiments: ExperimentService) -> None:
    assert "investigate 879 revenue since 08:32" in slash(client, "help")["text"]
    status = slash(client, "status 879")
    assert status["response_type"] == "ephemeral"
    assert "Experiment `879`" in status["text"] and "*ramping*" in status["text"]
    assert "stage 1 of 4" in status["text"] and "kill switches: none active" in status["text"]
    experiments.kill("879", "carol", "fallback spike")
    killed = slash(client, "status 879")["text"]
    assert "*killed*" in killed and "kill switch: experiment 879 by carol" in killed
    assert "unknown experiment '999'" in slash(client, "status 999")["text"]
    confused = slash(client, "what's up with the weather")
    assert "only understand commands" in confused["text"] and "`help`" in confused["text"]
    assert "which metric" in slash(client, "investigate 879")["text"]


def test_investigate_posts_verdicts_and_buttons_where_asked(
    client: TestClient, fake_slack: FakeSlack, investigator: FakeInvestigator
) -> None:
    reply = slash(client, "investigate 879 revenue since 08:32")
    assert reply["response_type"] == "in_channel"
    assert "Investigating revenue on experiment 879" in reply["text"]
    assert client.app.state.vigil.pool.wait_idle(10)
    (ident,) = investigator.runs
    alert = investigator.get(ident).alert
    assert alert.source == "slack" and alert.experiment == "879" and alert.since is not None
    assert (alert.since.hour, alert.since.minute) == (8, 32)
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postMessage")) == 1)
    (post,) = fake_slack.of("chat.postMessage")
    assert post["channel"] == "C_OPS"  # answered where it was asked, not in the alert channel
    actions = [b for b in post["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == [APPROVE_ACTION, REJECT_ACTION]


def test_kill_is_a_proposal_with_buttons(
    client: TestClient,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> None:
    reply = slash(client, "kill 879 fallback spike", user="U_BOB")
    assert "Proposed `kill_experiment 879`" in reply["text"]
    (m,) = investigator.mitigations.values()
    assert m.proposed_by == "bob" and m.reason == "fallback spike" and m.status == "proposed"
    assert not experiments.get("879").killed
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postMessage")) == 1)
    post = fake_slack.of("chat.postMessage")[0]
    buttons = next(b for b in post["blocks"] if b["type"] == "actions")["elements"]
    assert {b["value"] for b in buttons} == {m.id}
    assert "unknown experiment" in slash(client, "kill 999")["text"]


def test_mention_answers_in_thread(client: TestClient, fake_slack: FakeSlack) -> None:
    body = mention_body("status 879")
    headers = {"Content-Type": "application/json", **signed_headers(body)}
    assert client.post("/slack/events", content=body, headers=headers).status_code == 200
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postMessage")) == 1)
    (post,) = fake_slack.of("chat.postMessage")
    assert post["channel"] == "C_OPS" and post["thread_ts"] == "1700000000.000100"
    assert "Experiment `879`" in post["text"]


def test_url_verification_challenge(client: TestClient) -> None:
    body = '{"type": "url_verification", "challenge": "abc123", "token": "x"}'
    headers = {"Content-Type": "application/json", **signed_headers(body)}
    r = client.post("/slack/events", content=body, headers=headers)
    assert r.status_code == 200 and r.json() == {"challenge": "abc123"}


def test_free_form_question_with_an_llm_starts_an_investigation(
    llm_client: TestClient, investigator: FakeInvestigator
) -> None:
    reply = slash(llm_client, "why did revenue drop at 08:32 in experiment 879?")
    assert "Investigating revenue on experiment 879" in reply["text"]
    assert llm_client.app.state.vigil.pool.wait_idle(10)
    alert = investigator.get(investigator.runs[0]).alert
    assert alert.summary == "why did revenue drop at 08:32 in experiment 879?"
    assert "which metric" in slash(llm_client, "how are you?")["text"].lower()


def _alert_message(client: TestClient, fake_slack: FakeSlack) -> tuple[dict, str]:
    r = client.post("/alerts/alertmanager", json=payload(am_alert("fp-slack")))
    assert r.status_code == 202
    assert client.app.state.vigil.pool.wait_idle(10)
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postMessage")) == 1)
    post = fake_slack.of("chat.postMessage")[0]
    actions = next(b for b in post["blocks"] if b["type"] == "actions")
    return post, actions["elements"][0]["value"]


def test_alert_investigation_posts_to_the_alert_channel(
    client: TestClient, fake_slack: FakeSlack
) -> None:
    post, _ = _alert_message(client, fake_slack)
    assert post["channel"] == "C_ALERTS"
    text = "\n".join(b["text"]["text"] for b in post["blocks"] if b["type"] == "section")
    assert "✓ *prediction*" in text and "✗ *fallback*" in text
    assert "*Cause:* `model_fallback`" in text
    assert "<https://vigil.example.com/investigations/inv1/report|Full report>" in text
    # Untrusted alert text is escaped: it cannot ping the channel.
    context = "\n".join(
        e["text"] for b in post["blocks"] if b["type"] == "context" for e in b["elements"]
    )
    assert "&lt;!channel&gt;" in context and "<!channel>" not in context


def test_unauthorised_click_changes_nothing(
    client: TestClient,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> None:
    post, mid = _alert_message(client, fake_slack)
    ts = post.get("ts") or "1700000001.000100"
    for user in ("U_BOB", "U_EVE"):  # bob may not approve 879; eve is not a Vigil user
        click(client, APPROVE_ACTION, mid, user, ts)
        assert fake_slack.wait_for(
            lambda u=user: any(p["user"] == u for p in fake_slack.of("chat.postEphemeral"))
        )
    warnings = {p["user"]: p["text"] for p in fake_slack.of("chat.postEphemeral")}
    assert "not allowed" in warnings["U_BOB"] and "not mapped" in warnings["U_EVE"]
    assert investigator.executions == []
    assert investigator.mitigations[mid].status == "proposed"
    assert not experiments.get("879").killed and kills(experiments) == []
    assert fake_slack.of("chat.update") == []


def test_authorised_click_executes_once_and_updates_the_thread(
    client: TestClient,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> None:
    _, mid = _alert_message(client, fake_slack)
    message_ts = "1700000001.000100"
    click(client, APPROVE_ACTION, mid, "U_ALICE", message_ts)
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postMessage")) >= 4)
    click(client, APPROVE_ACTION, mid, "U_CAROL", message_ts)  # a second click acts not again
    time.sleep(0.3)
    assert investigator.executions == [mid]
    assert experiments.get("879").blocked_by == [("experiment", "879")]
    assert kills(experiments) == [("kill", "alice")]
    replies = [p for p in fake_slack.of("chat.postMessage") if p.get("thread_ts") == message_ts]
    texts = [p["text"] for p in replies]
    assert any("Executed" in t for t in texts)
    assert any("Verification" in t and "recovered" in t for t in texts)
    assert any("approved by alice" in t for t in texts)
    updates = fake_slack.of("chat.update")
    assert updates and all(u["ts"] == message_ts for u in updates)
    assert all(b["type"] != "actions" for b in updates[-1]["blocks"])  # buttons gone


def test_reject_click(
    client: TestClient,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> None:
    _, mid = _alert_message(client, fake_slack)
    message_ts = "1700000001.000100"
    click(client, REJECT_ACTION, mid, "U_CAROL", message_ts)
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postEphemeral")) == 1)
    assert investigator.mitigations[mid].status == "rejected"
    assert kills(experiments) == [] and investigator.executions == []
    (update,) = fake_slack.of("chat.update")
    assert update["ts"] == message_ts and "rejected" in str(update["blocks"])
    assert all(b["type"] != "actions" for b in update["blocks"])  # buttons gone
    # The thread says who rejected it, once; the clicker alone gets the confirmation.
    replies = [p["text"] for p in fake_slack.of("chat.postMessage") if p.get("thread_ts")]
    assert replies == [":no_entry_sign: Rejected by <@U_CAROL>: nothing was executed."]
    (confirmation,) = fake_slack.of("chat.postEphemeral")
    assert confirmation["user"] == "U_CAROL" and "rejected by carol" in confirmation["text"]
    click(client, REJECT_ACTION, mid, "U_CAROL", message_ts)  # again: nothing more in the thread
    assert fake_slack.wait_for(lambda: len(fake_slack.of("chat.postEphemeral")) == 2)
    assert len([p for p in fake_slack.of("chat.postMessage") if p.get("thread_ts")]) == 1
