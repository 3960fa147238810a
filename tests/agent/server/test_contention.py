"""Concurrent approvals and rejections of one mitigation at the HTTP door: no 5xx, one winner.

A real uvicorn server on loopback with the real ``Investigator`` and experiment core on one
SQLite state file; twenty clients decide the same kill proposal at once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.server import create_app
from agent.service import Investigator
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import AUTH, make_settings
from tests.agent.server.fakes import kills, make_experiments
from tests.loopback import LoopbackServer


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[LoopbackServer, ExperimentService]]:
    settings = make_settings(tmp_path, oncall=["carol", "alice"])
    experiments = make_experiments(settings.state_url)
    investigator = Investigator(settings)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    with LoopbackServer(app) as server:
        yield server, experiments
    investigator.close()
    experiments.close()


def test_concurrent_decisions_have_one_winner_and_no_5xx(
    stack: tuple[LoopbackServer, ExperimentService],
) -> None:
    server, experiments = stack
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/experiments/879/kill", headers=AUTH["bob"], json={"reason": "race"})
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    go = threading.Barrier(20)

    def decide(verb: str, user: str) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            go.wait()
            r = client.post(f"/mitigations/{mid}/{verb}", headers=AUTH[user])
            status = r.json().get("status", "") if r.status_code == 200 else ""
            with lock:
                answers.append((verb, r.status_code, status))

    threads = [
        threading.Thread(target=decide, args=(verb, user))
        for verb in ("approve", "reject")
        for user in ("carol", "alice") * 5
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = Counter(code for _, code, _ in answers)
    assert len(answers) == 20
    assert not [a for a in answers if a[1] >= 500], answers
    assert set(codes) <= {200, 409}, answers
    with httpx.Client(base_url=server.url, timeout=60) as http:
        final = http.get("/investigations").json()  # the store still answers
        assert final == []
    executed = kills(experiments)
    # Every 200 tells the one outcome that won (a losing call answers where it stands, or 409):
    # never a rejection answered after the kill ran, nor a kill after a rejection.
    outcomes = {status for _, code, status in answers if code == 200}
    acted = {"approved", "executing", "executed", "verified"}
    assert outcomes == {"rejected"} or (outcomes and outcomes <= acted), answers
    if outcomes == {"rejected"}:
        assert executed == [] and not experiments.get("879").killed
    else:
        assert len(executed) == 1 and experiments.get("879").killed
