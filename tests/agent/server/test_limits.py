"""Limits at the HTTP door: page size, authenticated reads, starting investigations over HTTP,
and store contention answered 503 with Retry-After, never 500."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from agent.ratelimit import RateLimited, RateLimiter
from agent.server import create_app
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import AUTH, make_settings
from tests.agent.server.fakes import FakeInvestigator
from tools.errors import StoreBusy


def test_page_size_is_bounded(client: TestClient) -> None:
    cap = client.app.state.vigil.settings.max_page_size
    assert client.get("/investigations", params={"limit": cap}).status_code == 200
    r = client.get("/investigations", params={"limit": cap + 1})
    assert r.status_code == 422
    assert r.json()["error"] == "invalid" and r.json()["detail"][0]["field"] == "limit"
    assert client.get("/investigations", params={"limit": 0}).status_code == 422


def test_reads_need_a_token_when_configured(
    tmp_path: Path, investigator: FakeInvestigator, experiments: ExperimentService
) -> None:
    settings = make_settings(tmp_path, auth_reads=True)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    with TestClient(app) as client:
        for path in ("/investigations", "/investigations/x", "/experiments/879"):
            r = client.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"] == "unauthorized"
        assert client.get("/investigations", headers=AUTH["bob"]).json() == []
        assert client.get("/experiments/879", headers=AUTH["bob"]).json()["id"] == "879"
        assert client.get("/healthz").status_code == 200  # probes stay open
        documented = app.openapi()["paths"]["/investigations"]["get"]["responses"]
        assert "401" in documented


def test_start_an_investigation_over_http(
    client: TestClient, investigator: FakeInvestigator
) -> None:
    body = {"metric": "revenue", "experiment": "879", "summary": "revenue looks off"}
    assert client.post("/investigations", json=body).status_code == 401
    r = client.post("/investigations", json=body, headers=AUTH["bob"])
    assert r.status_code == 202, r.text
    view = r.json()
    assert view["alert"]["source"] == "http"
    assert view["alert"]["labels"] == {"requested_by": "bob"}
    assert client.app.state.vigil.pool.wait_idle(10)
    assert investigator.runs == [view["id"]]
    unknown = {"metric": "revenue", "experiment": "999"}
    assert client.post("/investigations", json=unknown, headers=AUTH["bob"]).status_code == 404
    r = client.post("/investigations", json={"metric": "happiness"}, headers=AUTH["bob"])
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "metric"


class _Locked(FakeInvestigator):
    """An agent whose store stays locked: the lead's store raises StoreBusy, an older one
    let SQLite's ``database is locked`` escape."""

    def approve(self, mitigation_id: str, user: str):  # type: ignore[no-untyped-def]
        raise StoreBusy("the state store stayed locked")

    def reject(self, mitigation_id: str, user: str):  # type: ignore[no-untyped-def]
        raise OperationalError(
            "UPDATE mitigations", {}, sqlite3.OperationalError("database is locked")
        )


def test_contention_is_503_with_retry_after(tmp_path: Path, experiments: ExperimentService) -> None:
    app = create_app(
        make_settings(tmp_path), investigator=_Locked(experiments), experiments=experiments
    )
    with TestClient(app) as client:
        for verb in ("approve", "reject"):
            r = client.post(f"/mitigations/m1/{verb}", headers=AUTH["carol"])
            assert r.status_code == 503, (verb, r.text)
            assert int(r.headers["Retry-After"]) > 0
            assert r.json()["error"] == "busy"


def test_rate_limiter_slides_and_gives_back() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 60.0, what="investigations", clock=lambda: now[0])
    limiter.acquire("alice")
    now[0] = 30.0
    limiter.acquire("alice")
    limiter.acquire("bob")  # each user has a budget of their own
    with pytest.raises(RateLimited) as refused:
        limiter.acquire("alice")
    assert refused.value.retry_after_s == pytest.approx(30.0)
    limiter.release("alice")  # the refused work's slot is given back by the caller
    limiter.acquire("alice")
    now[0] = 60.5  # the first event left the window
    limiter.acquire("alice")
    with pytest.raises(RateLimited):
        limiter.acquire("alice")
