"""End to end, with every real part: a simulated world, the real Investigator and experiment core,
a real uvicorn server on loopback, the real Bolt app fed signed requests, and a fake Slack API.

alert -> investigation -> Slack message with buttons -> an unauthorised click changes nothing ->
approve by the experiment's owner -> kill switch active -> audit log -> thread updated (executed,
then recovery verified) -> a second approval acts not again.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.server import create_app, slack_notifier
from agent.service import Investigator
from agent.slack.blocks import APPROVE_ACTION
from evals.sim import minute_to_ts, parse_scenario, scenario_to_experiment_file, simulate
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import AUTH
from tests.agent.server.fakes import FakeSlack, button_body, kills, signed_headers
from tests.agent.slack.conftest import slack_settings
from tests.loopback import LoopbackServer

SCENARIO: dict[str, Any] = {
    "name": "e2e-fallback-879",
    "description": "Test arm of 879 falls back for a third of its Android requests.",
    "seed": 5,
    "world": {
        "start": "2026-11-20T06:00:00Z",
        "minutes": 240,
        "requests_per_minute": 2000,
        "models": [
            {"id": "ctr_v41", "quality": 0.75},
            {"id": "ctr_v42", "quality": 0.77, "refresh_minutes": 60},
        ],
        "production_model": "ctr_v41",
        "experiments": [
            {
                "id": "879",
                "name": "Ranking Model Improvements",
                "owner": "alice",
                "layer": "ranking",
                "traffic_pct": 10,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
            }
        ],
    },
    "faults": [
        {
            "kind": "model_fallback",
            "experiment": "879",
            "arm": "test",
            "where": {"platform": "android"},
            "start_minute": 152,
            "severity": 0.35,
        }
    ],
    "alert": {"metric": "revenue", "minute": 158, "experiment": "879"},
    "expect": {
        "root_cause": "model_fallback",
        "experiment": "879",
        "mitigation": "kill_experiment",
    },
}
KILL_MINUTE = 170


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    scenario = parse_scenario(SCENARIO)
    url = f"duckdb:///{tmp_path_factory.mktemp('world') / 'telemetry.duckdb'}"
    simulate(scenario, url, end_minute=KILL_MINUTE)
    # What happens after the kill: the real allocation skips the killed experiment.
    simulate(
        scenario,
        url,
        start_minute=KILL_MINUTE,
        end_minute=KILL_MINUTE + 60,
        kill_switches=[("experiment", "879")],
    )
    return scenario, url


@pytest.fixture
def stack(
    tmp_path: Path, world: tuple[Any, str], fake_slack: FakeSlack
) -> Iterator[tuple[LoopbackServer, Investigator, ExperimentService]]:
    scenario, telemetry = world
    settings = slack_settings(
        tmp_path, fake_slack, telemetry_url=telemetry, production_model="ctr_v41", workers=1
    )
    experiments = ExperimentService.from_settings(settings)
    experiments.create(scenario_to_experiment_file(scenario), "setup", start=True)
    notifier = slack_notifier(settings)
    now = minute_to_ts(scenario, KILL_MINUTE)
    investigator = Investigator(settings, notifier=notifier, clock=lambda: now)
    app = create_app(
        settings, investigator=investigator, experiments=experiments, notifier=notifier
    )
    with LoopbackServer(app) as server:
        yield server, investigator, experiments
    investigator.close()
    experiments.close()


def _alert(starts: datetime) -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "vigil",
        "groupKey": '{}:{alertname="RevenueDrop"}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "RevenueDrop", "metric": "revenue", "experiment_id": "879"},
                "annotations": {"summary": "Revenue per request down in experiment 879"},
                "startsAt": starts.isoformat(),
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "e2e879",
            }
        ],
    }


def _click(http: httpx.Client, user: str, mitigation_id: str, ts: str) -> None:
    body = button_body(APPROVE_ACTION, mitigation_id, user=user, channel="C_ALERTS", ts=ts)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(body)}
    assert http.post("/slack/events", content=body, headers=headers).status_code == 200


def test_alert_to_kill_switch_through_slack(
    stack: tuple[LoopbackServer, Investigator, ExperimentService],
    world: tuple[Any, str],
    fake_slack: FakeSlack,
) -> None:
    server, investigator, experiments = stack
    scenario, _ = world
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # 1. Alertmanager fires; the investigation runs in the background.
        r = http.post("/alerts/alertmanager", json=_alert(minute_to_ts(scenario, 158)))
        assert r.status_code == 202, r.text
        (ident,) = r.json()["investigations"]
        again = http.post("/alerts/alertmanager", json=_alert(minute_to_ts(scenario, 158)))
        assert again.json()["investigations"] == [] and again.json()["duplicates"] == [ident]

        # 2. The verdicts, the cause, the report link and the buttons reach the alert channel.
        assert fake_slack.wait_for(lambda: fake_slack.of("chat.postMessage"), timeout=60)
        post = fake_slack.of("chat.postMessage")[0]
        assert post["channel"] == "C_ALERTS"
        text = "\n".join(b["text"]["text"] for b in post["blocks"] if b["type"] == "section")
        assert "✗ *fallback*" in text and "✓" in text
        assert "*Cause:* `model_fallback`" in text
        assert f"/investigations/{ident}/report|Full report>" in text
        view = http.get(f"/investigations/{ident}").json()
        assert view["status"] == "awaiting_approval"
        assert view["root_causes"][0]["cause"] == "model_fallback"
        (m,) = [m for m in view["mitigations"] if m["action"] == "kill_experiment"]
        assert m["target"] == "879" and m["status"] == "proposed"
        buttons = next(b for b in post["blocks"] if b["type"] == "actions")["elements"]
        assert buttons[0]["value"] == m["id"]
        report = http.get(f"/investigations/{ident}/report")
        assert report.status_code == 200 and "879" in report.text
        message_ts = "1700000001.000100"  # the fake Slack's first message

        # 3. An unauthorised click changes nothing.
        _click(http, "U_BOB", m["id"], message_ts)
        assert fake_slack.wait_for(lambda: fake_slack.of("chat.postEphemeral"))
        assert "not allowed" in fake_slack.of("chat.postEphemeral")[0]["text"]
        assert not experiments.get("879").killed and kills(experiments) == []
        assert investigator.get(ident).mitigations[0].status == "proposed"
        assert http.post(f"/mitigations/{m['id']}/approve").status_code == 401
        r = http.post(f"/mitigations/{m['id']}/approve", headers=AUTH["bob"])
        assert r.status_code == 403 and kills(experiments) == []

        # 4. The owner approves: kill switch, audit log, thread updated twice.
        _click(http, "U_ALICE", m["id"], message_ts)

        def thread() -> list[str]:
            return [
                p["text"]
                for p in fake_slack.of("chat.postMessage")
                if p.get("thread_ts") == message_ts
            ]

        def done() -> bool:
            texts = thread()
            return any("Verification" in t for t in texts) and any(
                "approved by" in t for t in texts
            )

        assert fake_slack.wait_for(done, timeout=60), thread()
        assert experiments.get("879").blocked_by == [("experiment", "879")]
        shown = http.get("/experiments/879").json()
        assert shown["killed"] and shown["status"] == "killed"
        assert [k["activated_by"] for k in shown["kill_switches"]] == ["alice"]
        assert kills(experiments) == [("kill", "alice")]
        texts = thread()
        assert any("Executed" in t for t in texts)
        assert any("approved by alice" in t for t in texts)
        assert any("metric recovered" in t for t in texts), texts
        updates = fake_slack.of("chat.update")
        assert updates and all(b["type"] != "actions" for b in updates[-1]["blocks"])
        final = http.get(f"/investigations/{ident}").json()
        assert final["mitigations"][0]["status"] == "verified"
        assert final["mitigations"][0]["approved_by"] == "alice"

        # 5. Approving again (on-call, over HTTP) acts not again.
        r = http.post(f"/mitigations/{m['id']}/approve", headers=AUTH["carol"])
        assert r.status_code == 200 and r.json()["status"] == "verified"
        assert kills(experiments) == [("kill", "alice")]
        metrics = http.get("/metrics").text
        assert 'vigil_investigations{status="completed"} 1.0' in metrics
