"""The Slack notifier: where it posts, how it rewrites, and that Slack being down fails nothing."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from slack_sdk import WebClient

from agent.models import Alert, InvestigationView, MitigationView, RootCause
from agent.slack.blocks import escape, investigation_message
from agent.slack.notifier import SlackNotifier
from tests.agent.server.fakes import BOT_TOKEN, FakeSlack

NOW = datetime(2026, 11, 20, 8, 40, tzinfo=UTC)


def view(source: str = "alertmanager", status: str = "awaiting_approval") -> InvestigationView:
    mitigation = MitigationView(
        id="m1",
        investigation_id="inv1",
        action="kill_experiment",
        target="879",
        status="proposed",
        blast_radius=0.1,
    )
    return InvestigationView(
        id="inv1",
        status=status,  # type: ignore[arg-type]
        alert=Alert(metric="revenue", fired_at=NOW, experiment="879", source=source),  # type: ignore[arg-type]
        created_at=NOW,
        onset=NOW,
        verdicts=[("prediction", "ok", "fine"), ("fallback", "fail", "34% <b>")],
        root_causes=[
            RootCause(
                cause="model_fallback",
                experiment="879",
                arm="test",
                where={"platform": "android"},
                confidence=0.9,
                evidence=["fallback"],
            )
        ],
        mitigations=[mitigation],
    )


def notifier(fake: FakeSlack, channel: str | None = "C_ALERTS") -> SlackNotifier:
    client = WebClient(token=BOT_TOKEN, base_url=fake.url)
    return SlackNotifier(client, channel=channel, public_url="https://vigil.example.com/")


def test_message_shape() -> None:
    text, blocks = investigation_message(view(), "https://vigil.example.com/")
    assert text == (
        "Vigil investigated the revenue alert on experiment 879 (awaiting_approval): model_fallback"
    )
    body = str(blocks)
    assert "✓ *prediction* — fine" in body and "✗ *fallback* — 34% &lt;b&gt;" in body
    assert "in experiment 879, arm test, platform=android (confidence 90%)" in body
    assert "<https://vigil.example.com/investigations/inv1/report|Full report>" in body
    assert "Onset: 2026-11-20 08:40 UTC" in body
    assert escape("<!channel> & co") == "&lt;!channel&gt; &amp; co"


def test_posts_once_then_rewrites_in_place(fake_slack: FakeSlack) -> None:
    n = notifier(fake_slack)
    n.awaiting_approval(view())
    n.investigation_finished(view(status="completed"))
    assert len(fake_slack.of("chat.postMessage")) == 1
    (update,) = fake_slack.of("chat.update")
    assert update["ts"] == "1700000001.000100" and update["channel"] == "C_ALERTS"
    executed = view().mitigations[0].model_copy(update={"status": "executed", "approved_by": "a"})
    n.mitigation_executed(executed)
    reply = fake_slack.of("chat.postMessage")[-1]
    assert reply["thread_ts"] == "1700000001.000100" and "Executed" in reply["text"]
    assert all(b["type"] != "actions" for b in fake_slack.of("chat.update")[-1]["blocks"])


def test_only_alert_investigations_go_to_the_channel(fake_slack: FakeSlack) -> None:
    n = notifier(fake_slack)
    n.awaiting_approval(view(source="cli"))
    assert fake_slack.of("chat.postMessage") == []
    notifier(fake_slack, channel=None).awaiting_approval(view())
    assert fake_slack.of("chat.postMessage") == []
    n.route("inv1", "C_OPS", "111.222")
    n.awaiting_approval(view(source="slack"))
    (post,) = fake_slack.of("chat.postMessage")
    assert post["channel"] == "C_OPS" and post["thread_ts"] == "111.222"


def test_slack_down_fails_nothing() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = WebClient(token=BOT_TOKEN, base_url=f"http://127.0.0.1:{port}/api/", timeout=2)
    n = SlackNotifier(client, channel="C_ALERTS", public_url="http://x")
    assert n.post_investigation(view()) is None
    n.mitigation_executed(view().mitigations[0])  # no thread known, channel unreachable
    n.recovery_verified(view().mitigations[0])


def test_rejection_names_the_user_in_the_thread(fake_slack: FakeSlack) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=fake_slack.url)
    n = SlackNotifier(client, channel="C_ALERTS", public_url="http://x", users={"U_C": "carol"})
    n.awaiting_approval(view())
    rejected = view().mitigations[0].model_copy(update={"status": "rejected"})
    n.mitigation_rejected(rejected, "carol")
    n.mitigation_rejected(rejected, "<!channel> eve")  # unmapped: the name, escaped
    first, second = (p for p in fake_slack.of("chat.postMessage") if p.get("thread_ts"))
    assert first["thread_ts"] == "1700000001.000100"
    assert first["text"] == ":no_entry_sign: Rejected by <@U_C>: nothing was executed."
    assert "Rejected by &lt;!channel&gt; eve" in second["text"]
    blocks = fake_slack.of("chat.update")[-1]["blocks"]
    assert all(b["type"] != "actions" for b in blocks) and "rejected" in str(blocks)
