"""After a crash: a new app on the same state files investigates everything accepted before it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from agent.models import Alert, InvestigationView
from agent.server import create_app
from agent.service import Investigator
from agent.settings import Settings
from lifecycle.alerts import AlertLedger
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import make_settings
from tests.agent.server.fakes import FakeInvestigator, make_experiments
from tests.agent.server.test_alertmanager import am_alert, payload
from tools.errors import StoreBusy

STARTS = "2026-11-20T08:38:00Z"
FIRED = datetime(2026, 11, 20, 8, 38, tzinfo=UTC)


def _claim_without_investigation(ledger: AlertLedger, fingerprint: str) -> str:
    """What a crash between the ledger claim and the investigation's creation leaves."""
    key = f"{fingerprint}@{FIRED.isoformat()}"
    record = ledger.open(
        "alertmanager",
        key,
        metric="revenue",
        fired_at=FIRED,
        experiment_id="879",
        detail="Revenue down",
        once=True,
    )
    assert record is not None and record.investigation_id is None
    return key


def test_restart_requeues_running_and_unattached_work(tmp_path: Path) -> None:
    # No telemetry: the real investigations fail fast, which is all this test needs.
    settings = make_settings(tmp_path)
    experiments = make_experiments(settings.state_url)
    crashed = Investigator(settings)
    stranded = crashed.start(
        Alert(metric="revenue", fired_at=FIRED, experiment="879", source="alertmanager")
    )
    crashed.close()  # the process died before a worker ran it
    ledger = AlertLedger(settings.state_url)
    key = _claim_without_investigation(ledger, "fp-lost")

    investigator = Investigator(settings)
    app = create_app(settings, investigator=investigator, experiments=experiments, ledger=ledger)
    try:
        with TestClient(app) as client:
            parts = app.state.vigil
            assert parts.pool.wait_idle(60)
            resumed = client.get(f"/investigations/{stranded}").json()
            assert resumed["status"] not in ("running",), resumed
            record = ledger.find("alertmanager", key)
            assert record is not None and record.investigation_id
            recovered = client.get(f"/investigations/{record.investigation_id}").json()
            assert recovered["alert"]["experiment"] == "879"
            assert recovered["alert"]["metric"] == "revenue"
            assert recovered["status"] != "running"
            # Alertmanager re-sends the alert. Its investigation failed (no telemetry): the
            # resend starts a new one rather than pointing at the dead id.
            assert recovered["status"] == "failed"
            r = client.post("/alerts/alertmanager", json=payload(am_alert("fp-lost")))
            assert r.status_code == 202, r.text
            (fresh,) = r.json()["investigations"]
            assert r.json()["duplicates"] == []
            assert fresh != record.investigation_id
            again = ledger.find("alertmanager", key)
            assert again is not None and again.investigation_id == fresh
            assert parts.pool.wait_idle(60)
    finally:
        investigator.close()
        ledger.close()
        experiments.close()


def test_requeue_ignores_capacity_and_sweeps_periodically(
    tmp_path: Path, experiments: ExperimentService
) -> None:
    settings: Settings = make_settings(tmp_path, workers=1, queue_size=1, recovery_interval_s=0.05)
    gate = threading.Event()
    investigator = FakeInvestigator(experiments, gate=gate)
    alert = Alert(metric="ctr", fired_at=FIRED, experiment="879", source="alertmanager")
    stranded = [investigator.start(alert) for _ in range(4)]  # twice the capacity
    sweeps: list[float] = []

    def recover() -> list[str]:
        sweeps.append(time.monotonic())
        return []

    investigator.recover = recover  # type: ignore[method-assign]
    app = create_app(settings, investigator=investigator, experiments=experiments)
    with TestClient(app):
        pool = app.state.vigil.pool
        assert pool.depth + pool.running == 4
        gate.set()
        assert pool.wait_idle(10)
        assert sorted(investigator.runs) == sorted(stranded)
        deadline = time.monotonic() + 5
        while len(sweeps) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(sweeps) >= 3  # at start-up, then every recovery_interval_s
    count = len(sweeps)
    time.sleep(0.2)
    assert len(sweeps) == count  # stopped with the app


def test_a_sweep_with_nothing_stranded_resumes_nothing(client: TestClient) -> None:
    recovery = client.app.state.vigil.recovery
    assert recovery.sweep() == []
    assert recovery.sweeps >= 1


class _BusyOnce(FakeInvestigator):
    """The store is locked when the app starts, and free a moment later."""

    busy = True

    def list(self, limit: int = 50) -> list[InvestigationView]:
        if self.busy:
            self.busy = False
            raise StoreBusy("the state store stayed locked")
        return super().list(limit)


def test_a_busy_store_at_start_up_is_retried_by_the_sweep(
    tmp_path: Path, experiments: ExperimentService
) -> None:
    settings = make_settings(tmp_path, recovery_interval_s=0.05)
    investigator = _BusyOnce(experiments)
    alert = Alert(metric="ctr", fired_at=FIRED, experiment="879", source="alertmanager")
    stranded = investigator.start(alert)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    with TestClient(app) as client:  # the app serves although start-up recovery failed
        assert client.get("/healthz").status_code == 200
        deadline = time.monotonic() + 10
        while investigator.runs != [stranded] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert investigator.runs == [stranded]
