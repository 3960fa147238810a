"""Fixtures: settings on a temporary state store, the fake agent, and a TestClient."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.server import create_app
from agent.settings import Settings
from lifecycle.alerts import AlertLedger
from lifecycle.service import ExperimentService
from tests.agent.server.fakes import FakeInvestigator, make_experiments

TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-carol": "carol"}
AUTH = {name: {"Authorization": f"Bearer {tok}"} for tok, name in TOKENS.items()}


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path,
        "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "telemetry_url": f"duckdb:///{tmp_path / 'telemetry.duckdb'}",
        "checkpoint_url": str(tmp_path / "checkpoints.db"),
        "reports_dir": tmp_path / "reports",
        "api_tokens": TOKENS,
        "oncall": ["carol"],
        "workers": 2,
        "queue_size": 3,
        "monitor_interval_s": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def experiments(settings: Settings) -> Iterator[ExperimentService]:
    # alice owns 879, dave owns 880; bob owns nothing; carol is on call.
    service = make_experiments(settings.state_url)
    yield service
    service.close()


@pytest.fixture
def gate() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@pytest.fixture
def investigator(experiments: ExperimentService, gate: threading.Event) -> FakeInvestigator:
    return FakeInvestigator(experiments, oncall=["carol"], gate=gate)


@pytest.fixture
def client(
    settings: Settings, investigator: FakeInvestigator, experiments: ExperimentService
) -> Iterator[TestClient]:
    ledger = AlertLedger(settings.state_url)
    app = create_app(settings, investigator=investigator, experiments=experiments, ledger=ledger)
    with TestClient(app) as c:
        yield c
    ledger.close()
