"""Fixtures: the real app (real Investigator, real experiment core, no telemetry) in TestClient."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.server import create_app
from agent.service import Investigator
from agent.settings import Settings
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import AUTH, TOKENS, make_settings
from tests.agent.server.fakes import make_experiments

__all__ = ["AUTH", "TOKENS", "csrf_of"]


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, recovery_interval_s=3600)


@pytest.fixture
def parts(settings: Settings) -> Iterator[tuple[Investigator, ExperimentService]]:
    experiments = make_experiments(settings.state_url)  # alice owns 879, dave 880; carol on call
    investigator = Investigator(settings)
    yield investigator, experiments
    investigator.close()
    experiments.close()


@pytest.fixture
def app_client(
    settings: Settings, parts: tuple[Investigator, ExperimentService]
) -> Iterator[TestClient]:
    investigator, experiments = parts
    app = create_app(settings, investigator=investigator, experiments=experiments)
    with TestClient(app, follow_redirects=False) as client:
        yield client


@pytest.fixture
def sign_in(app_client: TestClient) -> Callable[[str], TestClient]:
    """Sign ``app_client`` in with a user's token (its cookie jar then holds the session)."""

    def run(user: str) -> TestClient:
        token = next(t for t, name in TOKENS.items() if name == user)
        app_client.cookies.clear()
        page = app_client.get("/console/login")
        r = app_client.post(
            "/console/login",
            data={"csrf": csrf_of(page.text), "token": token, "next": "/console/"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        return app_client

    return run
