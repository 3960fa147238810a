"""Shared fixtures: a service on a temporary SQLite file with a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lifecycle.service import ExperimentService
from lifecycle.validation import parse_experiment_file


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


def world(**overrides: Any) -> dict[str, Any]:
    """A small valid file: one layer, two model versions of ctr_v41, ctr_v42, two experiments."""
    data: dict[str, Any] = {
        "layers": [{"id": "ranking"}, {"id": "ad_load"}],
        "models": [
            {"id": "ctr_v41", "version": "1"},
            {"id": "ctr_v41", "version": "2"},
            {"id": "ctr_v42", "version": "1"},
        ],
        "experiments": [
            {
                "id": "879",
                "name": "Ranking Model Improvements",
                "owner": "alice",
                "layer": "ranking",
                "traffic_pct": 50,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
                "rollout": {
                    "stages": [
                        {"percent": 10, "min_minutes": 60},
                        {"percent": 50, "min_minutes": 60},
                        {"percent": 100, "min_minutes": 120},
                    ]
                },
                "guardrails": [{"metric": "revenue_per_request"}, {"metric": "srm"}],
            },
            {
                "id": "901",
                "name": "Ad load",
                "owner": "bob",
                "layer": "ad_load",
                "traffic_pct": 30,
                "arms": {"control": {"ad_load": 1.0}, "test": {"ad_load": 1.05}},
            },
        ],
    }
    data.update(overrides)
    return data


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def service(state_url: str, clock: Clock) -> Iterator[ExperimentService]:
    svc = ExperimentService(state_url, clock=clock)
    yield svc
    svc.close()


@pytest.fixture
def started(service: ExperimentService) -> ExperimentService:
    service.create(parse_experiment_file(world()), "alice", start=True, reason="launch")
    return service
