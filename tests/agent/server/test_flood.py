"""A flood of alerts: the bounded queue holds, nothing accepted is lost, 429 past the bound."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from agent.models import Alert
from agent.server.pool import InvestigationPool, PoolFull
from lifecycle.service import ExperimentService
from tests.agent.server.fakes import FakeInvestigator
from tests.agent.server.test_alertmanager import am_alert, payload
from tools.errors import ConfigError


def test_flood_holds_the_bound_and_loses_nothing(
    client: TestClient, investigator: FakeInvestigator, gate: threading.Event
) -> None:
    gate.clear()  # workers block: every accepted investigation stays outstanding
    parts = client.app.state.vigil
    capacity = parts.settings.workers + parts.settings.queue_size
    bodies = [payload(am_alert(f"flood-{i}")) for i in range(4 * capacity)]

    with ThreadPoolExecutor(8) as ex:
        responses = list(ex.map(lambda b: client.post("/alerts/alertmanager", json=b), bodies))

    accepted = [r for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 429]
    assert len(accepted) == capacity
    assert len(refused) == len(bodies) - capacity
    assert all(r.headers["Retry-After"] for r in refused)
    assert refused[0].json()["refused"] == 1
    assert parts.pool.depth + parts.pool.running == capacity
    assert parts.pool.depth <= parts.settings.queue_size
    metrics = client.get("/metrics").text
    assert f"vigil_queue_depth {float(parts.pool.depth)}" in metrics
    assert 'vigil_alerts_total{outcome="refused",source="alertmanager"}' in metrics

    gate.set()
    assert parts.pool.wait_idle(10)
    started = sorted(i for r in accepted for i in r.json()["investigations"])
    assert sorted(investigator.runs) == started

    # Alertmanager retries what was refused: every alert ends up investigated exactly once.
    retried = [client.post("/alerts/alertmanager", json=b) for b in bodies]
    assert all(r.status_code == 202 for r in retried)
    assert parts.pool.wait_idle(10)
    assert len(investigator.runs) == len(bodies)
    assert len(set(investigator.runs)) == len(bodies)
    fingerprints = {investigator.get(i).alert.fingerprint for i in investigator.runs}
    assert fingerprints == {f"flood-{i}" for i in range(len(bodies))}


def test_pool_refuses_before_creating_anything() -> None:
    gate = threading.Event()
    inv = FakeInvestigator(ExperimentService("sqlite://"), gate=gate)
    pool = InvestigationPool(inv, workers=1, queue_size=1)
    pool.start()
    try:
        alert = Alert(metric="ctr", fired_at="2026-11-20T08:00:00Z")  # type: ignore[arg-type]
        pool.submit(alert)
        pool.submit(alert)
        with pytest.raises(PoolFull):
            pool.submit(alert)
        assert len(inv.views) == 2  # the refused alert created no investigation
        gate.set()
        assert pool.wait_idle(10)
        assert pool.submit(alert)  # room again
        assert pool.wait_idle(10)
        assert len(inv.runs) == 3
    finally:
        gate.set()
        pool.close()


def test_pool_rejects_bad_sizes() -> None:
    inv = FakeInvestigator(ExperimentService("sqlite://"))
    with pytest.raises(ConfigError, match="workers"):
        InvestigationPool(inv, workers=0, queue_size=1)
    with pytest.raises(ConfigError, match="queue_size"):
        InvestigationPool(inv, workers=1, queue_size=-1)
