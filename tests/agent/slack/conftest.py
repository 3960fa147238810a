"""Fixtures: a fake Slack Web API on loopback and a server app with the Bolt bot mounted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.server import create_app
from agent.settings import Settings
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import make_settings
from tests.agent.server.fakes import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeInvestigator,
    FakeSlack,
    make_experiments,
)

SLACK_USERS = {"U_ALICE": "alice", "U_BOB": "bob", "U_CAROL": "carol"}


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    slack = FakeSlack()
    yield slack
    slack.close()


def slack_settings(tmp_path: Path, fake_slack: FakeSlack, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "slack_bot_token": BOT_TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": fake_slack.url,
        "slack_channel": "C_ALERTS",
        "slack_users": SLACK_USERS,
        "public_url": "https://vigil.example.com",
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


@pytest.fixture
def experiments(tmp_path: Path) -> Iterator[ExperimentService]:
    service = make_experiments(f"sqlite:///{tmp_path / 'state.db'}")
    yield service
    service.close()


@pytest.fixture
def investigator(experiments: ExperimentService) -> FakeInvestigator:
    return FakeInvestigator(experiments, oncall=["carol"])


def _client(settings: Settings, investigator: FakeInvestigator, experiments: ExperimentService):
    app = create_app(settings, investigator=investigator, experiments=experiments)
    investigator.notifier = app.state.vigil.notifier
    return TestClient(app)


@pytest.fixture
def client(
    tmp_path: Path,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> Iterator[TestClient]:
    with _client(slack_settings(tmp_path, fake_slack), investigator, experiments) as c:
        yield c


@pytest.fixture
def llm_client(
    tmp_path: Path,
    fake_slack: FakeSlack,
    investigator: FakeInvestigator,
    experiments: ExperimentService,
) -> Iterator[TestClient]:
    # The fake agent never calls the endpoint; the bot only needs to know an LLM is configured.
    settings = slack_settings(tmp_path, fake_slack, llm_base_url="http://127.0.0.1:9/v1")
    with _client(settings, investigator, experiments) as c:
        yield c
