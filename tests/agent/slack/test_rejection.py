"""A rejection reaches the Slack thread, whichever door it came through (HTTP or a button).

The real app and the real ``Investigator`` (on the agent's fake checks, catalog and actions), its
notifier the app's ``SlackNotifier`` talking to the fake Slack API on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.server import create_app, slack_notifier
from agent.service import Investigator
from agent.slack.blocks import REJECT_ACTION
from tests.agent.fakes import FakeActions, FakeCatalog, FakeToolbox, at, fail
from tests.agent.server.conftest import AUTH
from tests.agent.server.fakes import FakeSlack, make_experiments
from tests.agent.server.test_alertmanager import am_alert, payload
from tests.agent.slack.conftest import slack_settings
from tests.agent.slack.test_bot import click

FIRST_TS, SECOND_TS = "1700000001.000100", "1700000002.000100"  # the fake Slack's first posts


class Stack:
    def __init__(self, client: TestClient, actions: FakeActions, investigator: Investigator):
        self.client, self.actions, self.investigator = client, actions, investigator


@pytest.fixture
def stack(tmp_path: Path, fake_slack: FakeSlack) -> Iterator[Stack]:
    # Two alerts of 879 make two investigations here (no incident grouping): one per decision.
    settings = slack_settings(
        tmp_path, fake_slack, production_model="ctr_v41", workers=1, incident_window_minutes=0
    )
    experiments = make_experiments(settings.state_url)
    notifier = slack_notifier(settings)
    actions = FakeActions()
    box = FakeToolbox(
        {"fallback@experiment:879": fail("fallback", "Fallback 33% vs 0.4%.", experiment="879")},
        onset=at(150),
    )
    investigator = Investigator(
        settings,
        notifier=notifier,
        toolbox_factory=lambda _alert: box,
        catalog=FakeCatalog(),
        actions=actions,
        clock=lambda: at(159),
    )
    app = create_app(
        settings, investigator=investigator, experiments=experiments, notifier=notifier
    )
    with TestClient(app) as client:
        yield Stack(client, actions, investigator)
    investigator.close()
    experiments.close()


def _investigate(stack: Stack, fingerprint: str) -> tuple[str, str]:
    r = stack.client.post("/alerts/alertmanager", json=payload(am_alert(fingerprint)))
    (ident,) = r.json()["investigations"]
    assert stack.client.app.state.vigil.pool.wait_idle(30)
    view = stack.client.get(f"/investigations/{ident}").json()
    assert view["status"] == "awaiting_approval", view
    (m,) = view["mitigations"]
    return ident, m["id"]


def _thread(fake_slack: FakeSlack, ts: str) -> list[str]:
    return [str(p["text"]) for p in fake_slack.of("chat.postMessage") if p.get("thread_ts") == ts]


def _last_update(fake_slack: FakeSlack, ts: str) -> dict[str, Any]:
    return [u for u in fake_slack.of("chat.update") if u["ts"] == ts][-1]


def test_rejection_over_http_and_by_button_updates_the_thread(
    stack: Stack, fake_slack: FakeSlack
) -> None:
    first, first_mid = _investigate(stack, "fp-reject-http")
    second, second_mid = _investigate(stack, "fp-reject-slack")
    posts = [p for p in fake_slack.of("chat.postMessage") if not p.get("thread_ts")]
    assert len(posts) == 2 and all(p["channel"] == "C_ALERTS" for p in posts)

    # 1. Over HTTP, by the on-call engineer.
    r = stack.client.post(f"/mitigations/{first_mid}/reject", headers=AUTH["carol"])
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert _thread(fake_slack, FIRST_TS) == [
        ":no_entry_sign: Rejected by <@U_CAROL>: nothing was executed."
    ]

    # 2. By the Reject button, by the experiment's owner.
    click(stack.client, REJECT_ACTION, second_mid, "U_ALICE", SECOND_TS)
    assert fake_slack.wait_for(lambda: bool(_thread(fake_slack, SECOND_TS)))
    assert _thread(fake_slack, SECOND_TS) == [
        ":no_entry_sign: Rejected by <@U_ALICE>: nothing was executed."
    ]
    assert fake_slack.wait_for(lambda: bool(fake_slack.of("chat.postEphemeral")))
    assert "rejected by alice" in fake_slack.of("chat.postEphemeral")[0]["text"]

    for ident, ts in ((first, FIRST_TS), (second, SECOND_TS)):
        assert fake_slack.wait_for(lambda i=ident: stack.investigator.get(i).status == "completed")
        view = stack.client.get(f"/investigations/{ident}").json()
        assert view["status"] == "completed"
        assert view["mitigations"][0]["status"] == "rejected"
        blocks = _last_update(fake_slack, ts)["blocks"]
        assert all(b["type"] != "actions" for b in blocks)  # the buttons are gone
        assert "rejected" in str(blocks)
    assert stack.actions.calls == []  # nothing executed

    # 3. Rejecting again, or approving a rejected mitigation, adds nothing to the threads.
    r = stack.client.post(f"/mitigations/{first_mid}/reject", headers=AUTH["carol"])
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    r = stack.client.post(f"/mitigations/{first_mid}/approve", headers=AUTH["carol"])
    assert r.status_code == 409, r.text
    assert len(_thread(fake_slack, FIRST_TS)) == 1 and len(_thread(fake_slack, SECOND_TS)) == 1
    assert stack.actions.calls == []
