"""Fakes that script and record: a Slack Web API server on loopback, signed Slack requests, and
an in-memory investigator / experiment store implementing the published contracts.

The fake investigator exists to test the front doors in isolation (queueing, HTTP codes, Slack
flows); the end-to-end tests use the real ``agent.service.Investigator``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.models import Alert, InvestigationView, MitigationView, RootCause
from lifecycle.config import Arm, Experiment, ExperimentFile, Layer, ModelEntry
from lifecycle.service import ExperimentService
from tools.errors import ApprovalError, NotFoundError

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-test-token"


# -- Slack -----------------------------------------------------------------------------------


def signed_headers(body: str, *, secret: str = SIGNING_SECRET, ts: int | None = None) -> dict:
    """Headers Slack sends: timestamp and v0 HMAC-SHA256 signature over ``v0:ts:body``."""
    stamp = str(int(time.time()) if ts is None else ts)
    base = f"v0:{stamp}:{body}".encode()
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


def slash_body(text: str, *, user: str = "U_ALICE", channel: str = "C_OPS") -> str:
    """A ``/vigil`` slash-command body, form-encoded as Slack sends it."""
    return urllib.parse.urlencode(
        {
            "token": "legacy",
            "team_id": "T1",
            "team_domain": "acme",
            "channel_id": channel,
            "channel_name": "ops",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/vigil",
            "text": text,
            "api_app_id": "A1",
            "response_url": "http://127.0.0.1:9/unused",
            "trigger_id": "1.2.3",
        }
    )


def button_body(action_id: str, value: str, *, user: str, channel: str, ts: str) -> str:
    """A ``block_actions`` interaction body (a button click), form-encoded."""
    payload = {
        "type": "block_actions",
        "team": {"id": "T1", "domain": "acme"},
        "user": {"id": user, "username": user.lower(), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "container": {"type": "message", "message_ts": ts, "channel_id": channel},
        "trigger_id": "1.2.3",
        "channel": {"id": channel, "name": "ops"},
        "message": {"type": "message", "ts": ts, "text": "", "blocks": []},
        "response_url": "http://127.0.0.1:9/unused",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": f"mitigation:{value}",
                "value": value,
                "action_ts": str(time.time()),
            }
        ],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


def mention_body(text: str, *, user: str = "U_ALICE", channel: str = "C_OPS") -> str:
    """An ``app_mention`` Events API body (JSON)."""
    return json.dumps(
        {
            "token": "legacy",
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": f"Ev{time.time_ns()}",
            "event_time": int(time.time()),
            "event": {
                "type": "app_mention",
                "user": user,
                "text": f"<@U_BOT> {text}",
                "ts": "1700000000.000100",
                "channel": channel,
                "event_ts": "1700000000.000100",
            },
        }
    )


class FakeSlack:
    """A Slack Web API on loopback: answers like Slack and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if "json" in (self.headers.get("Content-Type") or ""):
                    params = json.loads(raw or "{}")
                else:
                    params = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                    for key in ("blocks",):
                        if isinstance(params.get(key), str):
                            params[key] = json.loads(params[key])
                method = self.path.rsplit("/", 1)[-1]
                answer = fake._answer(method, params)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def _answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append((method, params))
            if method == "auth.test":
                return {"ok": True, "user_id": "U_BOT", "bot_id": "B1", "team_id": "T1"}
            if method == "chat.postMessage":
                ts = f"1700000{next(self._ts):03d}.000100"
                return {"ok": True, "channel": params.get("channel"), "ts": ts}
            return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts")}

    def of(self, method: str) -> list[dict[str, Any]]:
        """Parameters of every call to ``method``, in order."""
        with self._lock:
            return [p for m, p in self.calls if m == method]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll until ``predicate`` holds (Bolt runs listeners after acknowledging)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the experiment core and the agent, in memory ---------------------------------------------


def make_experiments(state_url: str) -> ExperimentService:
    """The real experiment core with two running experiments: 879 (alice) and 880 (dave)."""
    service = ExperimentService(state_url)
    arms = {"control": Arm(model="ctr_v41"), "test": Arm(model="ctr_v42")}
    file = ExperimentFile(
        layers=[Layer(id="ranking")],
        models=[ModelEntry(id="ctr_v41"), ModelEntry(id="ctr_v42")],
        experiments=[
            Experiment(
                id="879",
                name="Ranking Model Improvements",
                owner="alice",
                layer="ranking",
                traffic_pct=10,
                arms=arms,
            ),
            Experiment(
                id="880", name="Ad load", owner="dave", layer="ranking", traffic_pct=10, arms=arms
            ),
        ],
    )
    service.create(file, "setup", start=True)
    return service


def kills(service: ExperimentService, experiment_id: str = "879") -> list[tuple[str, str]]:
    """(action, actor) of the kill entries of an experiment's audit log."""
    return [(e.action, e.actor) for e in service.audit(experiment_id) if e.action == "kill"]


class FakeInvestigator:
    """The agent's ``Investigator`` contract, scripted: every alert with an experiment finds
    ``model_fallback`` and proposes ``kill_experiment``; approval follows owner / on-call."""

    def __init__(
        self,
        experiments: ExperimentService,
        *,
        oncall: list[str] = (),  # type: ignore[assignment]
        notifier: Any = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.experiments = experiments
        self.oncall = list(oncall)
        self.notifier = notifier
        self.gate = gate
        self.views: dict[str, InvestigationView] = {}
        self.mitigations: dict[str, MitigationView] = {}
        self.runs: list[str] = []
        self.executions: list[str] = []
        self.joins = False
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def start(self, alert: Alert) -> str:
        with self._lock:
            ident = f"inv{next(self._ids)}"
            self.views[ident] = InvestigationView(
                id=ident, status="running", alert=alert, created_at=datetime.now(UTC)
            )
        return ident

    def running(self) -> list[str]:
        with self._lock:
            return [i for i, v in self.views.items() if v.status == "running"]

    def recover(self) -> list[str]:
        return []  # the fake strands nothing: every decision acts at once

    def join(self, alert: Alert) -> str | None:
        """Same experiment, still open: the alert joins it (the real rule, without the window);
        only when ``joins`` is set (the other tests count one investigation per alert)."""
        if not self.joins:
            return None
        with self._lock:
            for ident, view in self.views.items():
                open_ = view.status in ("running", "awaiting_approval", "watching")
                if open_ and alert.experiment and view.alert.experiment == alert.experiment:
                    return ident
        return None

    def follow_up(self, now: Any = None) -> list[Any]:
        return []  # the fake never watches

    def run(self, investigation_id: str) -> InvestigationView:
        if self.gate is not None:
            self.gate.wait(30)
        view = self.get(investigation_id)
        with self._lock:
            self.runs.append(investigation_id)
        mitigations = []
        if view.alert.experiment:
            m = self._new_mitigation(
                "kill_experiment", view.alert.experiment, "vigil", "fallback", investigation_id
            )
            mitigations.append(m)
        done = view.model_copy(
            update={
                "status": "awaiting_approval" if mitigations else "completed",
                "verdicts": [
                    ("prediction", "ok", "No issues with model prediction."),
                    ("fallback", "fail", "Fallback rose from 1% to 34% in arm test."),
                ],
                "root_causes": [
                    RootCause(
                        cause="model_fallback",
                        experiment=view.alert.experiment,
                        arm="test",
                        confidence=0.9,
                        evidence=["fallback"],
                    )
                ],
                "mitigations": mitigations,
            }
        )
        with self._lock:
            self.views[investigation_id] = done
        if self.notifier is not None:
            self.notifier.awaiting_approval(done)
        return done

    def investigate(self, alert: Alert) -> InvestigationView:
        return self.run(self.start(alert))

    def get(self, investigation_id: str) -> InvestigationView:
        with self._lock:
            if investigation_id not in self.views:
                raise NotFoundError("investigation", investigation_id)
            view = self.views[investigation_id]
            mitigations = [self.mitigations[m.id] for m in view.mitigations]
            return view.model_copy(update={"mitigations": mitigations})

    def list(self, limit: int = 50) -> list[InvestigationView]:
        ids = list(self.views)[::-1][:limit]
        return [self.get(i) for i in ids]

    def _new_mitigation(
        self, action: Any, target: str | None, by: str, reason: str, inv: str | None
    ) -> MitigationView:
        with self._lock:
            m = MitigationView(
                id=f"m{next(self._ids)}",
                investigation_id=inv,
                action=action,
                target=target,
                status="proposed",
                blast_radius=0.1,
                reason=reason,
                proposed_by=by,
            )
            self.mitigations[m.id] = m
        return m

    def propose(self, action: Any, target: str | None, user: str, reason: str) -> MitigationView:
        return self._new_mitigation(action, target, user, reason, None)

    def _check(self, mitigation_id: str, user: str) -> MitigationView:
        if mitigation_id not in self.mitigations:
            raise NotFoundError("mitigation", mitigation_id)
        m = self.mitigations[mitigation_id]
        owner = self.experiments.get(m.target).owner if m.target else None
        if user not in self.oncall and user != owner:
            raise ApprovalError(f"{user} is neither on call nor the owner of {m.target}")
        return m

    def approve(self, mitigation_id: str, user: str) -> MitigationView:
        with self._lock:
            m = self._check(mitigation_id, user)
            if m.status != "proposed":
                return m
            approved = m.model_copy(update={"status": "approved", "approved_by": user})
            m = approved.model_copy(update={"status": "executed"})
            self.mitigations[mitigation_id] = m
            self.executions.append(mitigation_id)
        if self.notifier is not None:  # as the real agent does, once, after the decision
            self.notifier.mitigation_approved(approved, user)
        assert m.target is not None
        self.experiments.kill(m.target, user, m.reason or "approved")
        if self.notifier is not None:
            self.notifier.mitigation_executed(m)
        verified = m.model_copy(update={"status": "verified", "recovered": True})
        with self._lock:
            self.mitigations[mitigation_id] = verified
        if self.notifier is not None:
            self.notifier.recovery_verified(verified)
        return verified

    def reject(self, mitigation_id: str, user: str) -> MitigationView:
        with self._lock:
            m = self._check(mitigation_id, user)
            if m.status != "proposed":
                return m
            m = m.model_copy(update={"status": "rejected"})
            self.mitigations[mitigation_id] = m
        if self.notifier is not None:  # as the real agent does, once, after the decision
            self.notifier.mitigation_rejected(m, user)
        return m

    def report_html(self, investigation_id: str) -> str:
        view = self.get(investigation_id)
        return f"<html><body><h1>Investigation {view.id}</h1></body></html>"
