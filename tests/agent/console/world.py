"""A real stack for the console: a simulated world, the real agent and experiment core, uvicorn.

Shared by the browser tests and ``scripts/console_screenshots.py``. Experiment 879 (owner alice)
runs in the ``ranking`` layer; its test arm falls back for a third of its Android requests from
minute 152, so an alert at minute 158 starts an investigation that proposes to kill it. Carol
is on call; bob may read but approve nothing.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from agent.server import create_app
from agent.service import Investigator
from agent.settings import Settings
from evals.sim import minute_to_ts, parse_scenario, scenario_to_experiment_file, simulate
from lifecycle.service import ExperimentService
from tests.agent.slack.test_end_to_end import SCENARIO as E2E_SCENARIO
from tests.loopback import LoopbackServer

TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-carol": "carol"}
NOW_MINUTE = 170
# The Slack end-to-end world (879's test arm falls back on Android), a little smaller.
SCENARIO: dict[str, Any] = {
    **E2E_SCENARIO,
    "name": "console-fallback-879",
    "world": {**E2E_SCENARIO["world"], "requests_per_minute": 1500},
}


def build_world(folder: Path) -> tuple[Any, str]:
    """Simulate the world's telemetry up to ``NOW_MINUTE`` into a DuckDB file in ``folder``."""
    scenario = parse_scenario(SCENARIO)
    url = f"duckdb:///{folder / 'telemetry.duckdb'}"
    simulate(scenario, url, end_minute=NOW_MINUTE)
    return scenario, url


def console_settings(folder: Path, telemetry_url: str, **overrides: Any) -> Settings:
    """Settings with every store under ``folder``, three users, carol on call."""
    values: dict[str, Any] = {
        "home": folder,
        "state_url": f"sqlite:///{folder / 'state.db'}",
        "telemetry_url": telemetry_url,
        "checkpoint_url": str(folder / "checkpoints.db"),
        "reports_dir": folder / "reports",
        "api_tokens": TOKENS,
        "oncall": ["carol"],
        "production_model": "ctr_v41",
        "workers": 1,
        "monitor_interval_s": 0,
        "console_refresh_s": 1.0,
        "llm_base_url": None,
        "llm_model": None,
    }
    values.update(overrides)
    return Settings(**values)


class Stack:
    """The app over a world: settings, the real investigator and experiment service, a server."""

    def __init__(self, folder: Path, scenario: Any, telemetry_url: str) -> None:
        self.scenario = scenario
        self.settings = console_settings(folder, telemetry_url)
        self.experiments = ExperimentService.from_settings(self.settings)
        self.experiments.create(scenario_to_experiment_file(scenario), "setup", start=True)
        now = minute_to_ts(scenario, NOW_MINUTE)
        self.investigator = Investigator(self.settings, clock=lambda: now)
        app = create_app(
            self.settings, investigator=self.investigator, experiments=self.experiments
        )
        self.server = LoopbackServer(app)

    def __enter__(self) -> Stack:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
        self.investigator.close()
        self.experiments.close()

    def fire_alert(self, minute: int = 158) -> str:
        """Alertmanager fires on 879; returns the investigation it started."""
        starts: datetime = minute_to_ts(self.scenario, minute)
        body = {
            "version": "4",
            "status": "firing",
            "receiver": "vigil",
            "groupKey": '{}:{alertname="RevenueDrop"}',
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": "RevenueDrop",
                        "metric": "revenue",
                        "experiment_id": "879",
                    },
                    "annotations": {"summary": "Revenue per request down in experiment 879"},
                    "startsAt": starts.isoformat(),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": "console879",
                }
            ],
        }
        r = httpx.post(f"{self.server.url}/alerts/alertmanager", json=body, timeout=30)
        assert r.status_code == 202, r.text
        (investigation_id,) = r.json()["investigations"]
        return str(investigation_id)

    def wait_for(self, investigation_id: str, status: str, timeout: float = 60) -> None:
        """Wait until the investigation reaches ``status``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.investigator.get(investigation_id).status == status:
                return
            time.sleep(0.2)
        raise AssertionError(
            f"{investigation_id} is {self.investigator.get(investigation_id).status}"
        )
