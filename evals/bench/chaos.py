"""``vigil bench --only chaos``: ``kill -9`` the real server at random moments, then check.

One simulated world (a fallback fault in experiment 879, whose every investigation proposes to
kill it) is served by a real ``vigil serve`` process on loopback. Each trial drives it over HTTP
as Alertmanager and the on-call engineer would: a stream of alerts, approvals and rejections of
whatever is proposed, and approvals by a user who may not approve. At a moment drawn from the
trial's seed the process gets ``SIGKILL``; a new server starts on the same stores, and once it
has caught up the invariants are checked on the stores themselves:

1. every approved mitigation executed exactly once (``executed``/``verified``, its idempotency
   key in the audit log once; none left ``approved`` or ``executing``);
2. nothing executed without an authorised approval (every audit entry keyed by a mitigation
   belongs to one approved by an authorised user);
3. every alert answered 202 is in an investigation, and no investigation is left ``running``;
   one ``awaiting_approval`` still has an undecided proposal;
4. no answer was a 5xx.

Between trials the bench releases the kill switch (as the owner would), so each trial's approvals
act again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from evals.bench import BenchOptions

__all__ = ["ChaosFigures", "run", "run_chaos"]

_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "fallback-spike-879.yaml"
_ONCALL = "carol"
_TOKENS = {"tok-carol": _ONCALL, "tok-mallory": "mallory"}
_START_S = 240.0  # a loaded 2-core machine can take minutes to import and migrate


@dataclass
class ChaosFigures:
    """What the trials saw."""

    trials: int = 0
    alerts_sent: int = 0
    alerts_accepted: int = 0
    approvals: int = 0
    rejections: int = 0
    refused_unauthorised: int = 0
    executed: int = 0
    http_5xx: int = 0
    violations: list[str] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON figures (violations counted, the first ten shown)."""
        return {
            "trials": self.trials,
            "alerts_sent": self.alerts_sent,
            "alerts_accepted": self.alerts_accepted,
            "approvals": self.approvals,
            "rejections": self.rejections,
            "refused_unauthorised": self.refused_unauthorised,
            "mitigations_executed": self.executed,
            "http_5xx": self.http_5xx,
            "invariant_violations": len(self.violations),
            "violation_examples": self.violations[:10],
            "median_recovery_s": round(statistics.median(self.restart_s), 2)
            if self.restart_s
            else None,
            "seconds": round(self.seconds, 1),
        }


def run(opts: BenchOptions) -> dict[str, Any]:
    """The bench section: 50 trials (10 with ``--quick``)."""
    trials = int(opts.extra.get("chaos_trials", 10 if opts.quick else 50))
    return run_chaos(opts.workdir / "chaos", trials=trials, seed=2026, queue_size=3).as_dict()


def run_chaos(
    folder: Path,
    *,
    trials: int,
    seed: int,
    kill_window_s: tuple[float, float] = (0.3, 3.0),
    queue_size: int = 6,
    settle_s: float = 180.0,
) -> ChaosFigures:
    """Run ``trials`` kill-and-restart trials on a fresh world in ``folder``.

    Args:
        folder: Where the world's stores go (emptied first).
        trials: How many times the server is killed.
        seed: Seeds every draw (when to kill, what to decide), so a run can be repeated.
        kill_window_s: The kill comes this many seconds (uniform) after the trial's start.
        queue_size: The server's investigation queue (past it, alerts are answered 429).
        settle_s: How long the restarted server may take to finish what was left half-done.
    """
    import shutil

    from evals.harness import eval_settings, prepare
    from evals.sim.scenario import load_scenario

    started = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    scenario = load_scenario(_SCENARIO)
    settings = prepare(scenario, eval_settings(folder))
    env = _server_env(settings, folder, queue_size)
    figures = ChaosFigures()
    accepted: set[str] = set()
    port = _free_port()
    server = _Server(env, port, folder / "server.log")
    server.start()
    try:
        for trial in range(trials):
            rng = random.Random(seed * 1000 + trial)
            driver = _Driver(f"http://127.0.0.1:{port}", rng, trial, scenario, figures)
            driver.start()
            time.sleep(rng.uniform(*kill_window_s))
            server.kill()
            driver.stop()
            accepted |= driver.accepted
            began = time.monotonic()
            server.start()
            stuck = _settle(settings, timeout_s=settle_s)
            figures.restart_s.append(time.monotonic() - began)
            found = stuck or _violations(settings, accepted)
            figures.violations += [f"trial {trial}: {v}" for v in found]
            _release(settings)
            figures.trials += 1
    finally:
        server.stop()
    figures.executed = _count_executed(settings)
    figures.seconds = time.monotonic() - started
    return figures


# -- the server process -------------------------------------------------------------------------


def _server_env(settings: Any, folder: Path, queue_size: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        {
            "VIGIL_HOME": str(folder),
            "VIGIL_STATE_URL": settings.state_url,
            "VIGIL_TELEMETRY_URL": settings.telemetry_url,
            "VIGIL_CHECKPOINT_URL": str(settings.checkpoint_url),
            "VIGIL_REPORTS_DIR": str(settings.reports_dir),
            "VIGIL_ONCALL": json.dumps([_ONCALL]),
            "VIGIL_API_TOKENS": json.dumps(_TOKENS),
            "VIGIL_WORKERS": "2",
            "VIGIL_QUEUE_SIZE": str(queue_size),
            "VIGIL_RECOVERY_INTERVAL_S": "1",
        }
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """``vigil serve`` in a child process; killed with SIGKILL, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self._env, self._port, self._log = env, port, log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        vigil = Path(sys.executable).with_name("vigil")
        command = [str(vigil), "serve", "--port", str(self._port), "--no-monitor"]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(command, env=self._env, stdout=log, stderr=log)
        deadline = time.monotonic() + _START_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"vigil serve exited {self._proc.returncode}; see {self._log}")
            try:
                if httpx.get(f"http://127.0.0.1:{self._port}/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"vigil serve did not answer /healthz in {_START_S:g} s; see {self._log}"
        )

    def kill(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


# -- the driver ---------------------------------------------------------------------------------


class _Driver:
    """Alertmanager and the on-call engineer, until the server dies under them."""

    def __init__(
        self, base: str, rng: random.Random, trial: int, scenario: Any, figures: ChaosFigures
    ) -> None:
        self._base, self._rng, self._trial = base, rng, trial
        self._figures = figures
        self._starts_at = _alert_time(scenario)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.accepted: set[str] = set()
        self._threads = [
            threading.Thread(target=self._alerts, daemon=True),
            threading.Thread(target=self._decisions, daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _count(self, response: httpx.Response) -> None:
        if response.status_code >= 500:
            with self._lock:
                self._figures.http_5xx += 1

    def _alerts(self) -> None:
        k = 0
        with httpx.Client(base_url=self._base, timeout=10) as client:
            while not self._stop.is_set():
                fingerprint = f"chaos-{self._trial}-{k}"
                k += 1
                body = _payload(fingerprint, self._starts_at)
                with self._lock:
                    self._figures.alerts_sent += 1
                try:
                    r = client.post("/alerts/alertmanager", json=body)
                except httpx.HTTPError:
                    return  # the server died mid-request: the alert was not answered
                self._count(r)
                if r.status_code == 202:
                    with self._lock:
                        self.accepted.add(fingerprint)
                        self._figures.alerts_accepted += 1
                self._stop.wait(self._rng.uniform(0.05, 0.4))

    def _decisions(self) -> None:
        carol = {"Authorization": "Bearer tok-carol"}
        mallory = {"Authorization": "Bearer tok-mallory"}
        with httpx.Client(base_url=self._base, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.get("/investigations", params={"limit": 50}, headers=carol)
                    self._count(r)
                    views = r.json() if r.is_success else []
                    for view in views:
                        for m in view.get("mitigations", []):
                            if m["status"] != "proposed":
                                continue
                            self._decide(client, m["id"], carol, mallory)
                except httpx.HTTPError:
                    return
                self._stop.wait(0.05)

    def _decide(
        self, client: httpx.Client, mid: str, carol: dict[str, str], mallory: dict[str, str]
    ) -> None:
        if self._rng.random() < 0.3:
            r = client.post(f"/mitigations/{mid}/approve", headers=mallory)
            self._count(r)
            if r.status_code == 403:
                with self._lock:
                    self._figures.refused_unauthorised += 1
        approve = self._rng.random() < 0.7
        r = client.post(f"/mitigations/{mid}/{'approve' if approve else 'reject'}", headers=carol)
        self._count(r)
        if r.is_success:
            with self._lock:
                if approve:
                    self._figures.approvals += 1
                else:
                    self._figures.rejections += 1


def _alert_time(scenario: Any) -> str:
    from evals.harness import scenario_alert

    return scenario_alert(scenario).fired_at.isoformat().replace("+00:00", "Z")


def _payload(fingerprint: str, starts_at: str) -> dict[str, Any]:
    alert = {
        "status": "firing",
        "labels": {"alertname": "RevenueDrop", "metric": "revenue", "experiment": "879"},
        "annotations": {"summary": "revenue regression in experiment 879"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": f"{{}}:{{fingerprint={fingerprint!r}}}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "vigil",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": [alert],
    }


# -- checking the stores ------------------------------------------------------------------------


@contextmanager
def _store(settings: Any) -> Iterator[Any]:
    from agent.store import AgentStore

    store = AgentStore(settings.state_url)
    try:
        yield store
    finally:
        store.engine.dispose()


def _settle(settings: Any, timeout_s: float) -> list[str]:
    """Wait until the restarted server has nothing half-done; what is still busy at the end."""
    deadline = time.monotonic() + timeout_s
    busy: list[str] = []
    with _store(settings) as store:
        while time.monotonic() < deadline:
            busy = [f"investigation {v.id} running" for v in store.investigations_in(["running"])]
            busy += [
                f"mitigation {m.id} {m.status}"
                for m in store.list_mitigations(["approved", "executing"])
            ]
            # Its action decided (or run) but its graph not yet finished: the recovery sweep
            # continues it once it is past its grace (``Investigator.recover``).
            busy += [
                f"investigation {v.id} decided, not finished"
                for v in store.investigations_in(["awaiting_approval"])
                if not any(m.status == "proposed" for m in v.mitigations)
            ]
            if not busy:
                return []
            time.sleep(0.2)
    return [f"not settled {timeout_s:g} s after the restart: {', '.join(busy[:3])}"]


def _violations(settings: Any, accepted: set[str]) -> list[str]:
    from sqlalchemy import select

    from lifecycle.store import audit_log

    found: list[str] = []
    with _store(settings) as store:
        mitigations = {m.id: m for m in store.list_mitigations()}
        views = store.investigations_in(
            ["running", "awaiting_approval", "watching", "inconclusive", "completed", "failed"]
        )
        with store.engine.connect() as conn:
            keyed = conn.execute(
                select(audit_log.c.idem_key, audit_log.c.actor).where(
                    audit_log.c.idem_key.is_not(None)
                )
            ).all()
    keys: dict[str, int] = {}
    for key, actor in keyed:
        keys[key] = keys.get(key, 0) + 1
        m = mitigations.get(key)
        if m is None:
            continue
        if m.approved_by != _ONCALL or m.status not in ("executed", "verified"):
            found.append(f"{key} acted ({actor}) but is {m.status}, approved by {m.approved_by}")
    for m in mitigations.values():
        if m.status in ("approved", "executing"):
            found.append(f"{m.id} stranded {m.status}")
        if keys.get(m.id, 0) > 1:
            found.append(f"{m.id} acted {keys[m.id]} times")
        if m.status == "failed":
            found.append(f"{m.id} failed")
    for v in views:
        if v.status == "running":
            found.append(f"investigation {v.id} left running")
        if v.status == "awaiting_approval" and not any(
            m.status == "proposed" for m in v.mitigations
        ):
            found.append(f"investigation {v.id} awaiting approval with nothing to decide")
    # An alert that joined an open investigation of its scope was investigated there.
    seen = {a.fingerprint for v in views for a in (v.alert, *v.joined_alerts)}
    lost = sorted(accepted - seen)
    if lost:
        found.append(f"{len(lost)} accepted alert(s) never investigated: {lost[:3]}")
    return found


def _count_executed(settings: Any) -> int:
    with _store(settings) as store:
        return len(store.list_mitigations(["executed", "verified"]))


def _release(settings: Any) -> None:
    from lifecycle.service import ExperimentService

    with ExperimentService.from_settings(settings) as service:
        service.release("879", actor="chaos-bench", reason="next trial")
