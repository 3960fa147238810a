"""Scenario plumbing for the CLI (the composition root may use ``evals``; the agent may not).

A scenario becomes a real world for the agent in three steps: its telemetry is simulated into the
settings' telemetry store (once per scenario content and end minute: a marker file beside the
stores remembers what was simulated); its experiments are created in the state store, at full
rollout as in the simulated world; its alert becomes an :class:`Alert`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.models import Alert
from lifecycle.config import ExperimentFile, RolloutPlan, RolloutStage
from lifecycle.settings import Settings
from tools.errors import ConfigError, NotFoundError

__all__ = [
    "SCENARIO_ACTOR",
    "create_experiments",
    "ensure_telemetry",
    "full_rollout",
    "scenario_alert",
    "scenario_clock",
    "scenario_settings",
]

SCENARIO_ACTOR = "vigil-scenario"


def scenario_settings(settings: Settings, scenario: Any) -> Settings:
    """The settings with the scenario's production model."""
    return settings.model_copy(update={"production_model": scenario.world.production_model})


def scenario_alert(scenario: Any) -> Alert:
    """The scenario's alert as the agent receives it."""
    from evals.sim import minute_to_ts

    spec = scenario.alert
    fired = minute_to_ts(scenario, spec.minute).replace(tzinfo=UTC)
    where = f" in experiment {spec.experiment}" if spec.experiment else ""
    return Alert(
        metric=spec.metric,
        fired_at=fired,
        experiment=spec.experiment,
        source="scenario",
        name=f"{scenario.name}: {spec.metric} regression",
        summary=f"{spec.metric} regressed{where} (scenario {scenario.name}).",
    )


def scenario_clock(scenario: Any, minute: float) -> datetime:
    """Minute ``minute`` of the scenario as an aware UTC datetime."""
    from evals.sim import minute_to_ts

    return minute_to_ts(scenario, minute).replace(tzinfo=UTC)


def _key(scenario: Any, end_minute: int) -> str:
    body = scenario.model_dump_json()
    return hashlib.sha256(f"{body}|{end_minute}".encode()).hexdigest()[:16]


def ensure_telemetry(scenario: Any, settings: Settings, end_minute: int) -> bool:
    """Simulate minutes ``[0, end_minute)`` into the telemetry store unless already there.

    Returns:
        True when it simulated now; False when the store already held this scenario.
    """
    from evals.sim import simulate

    marker = Path(settings.home) / "telemetry.scenario.json"
    key = _key(scenario, end_minute)
    if marker.exists():
        try:
            seen = json.loads(marker.read_text())
        except json.JSONDecodeError:
            seen = {}
        if seen.get("key") == key and seen.get("url") == settings.telemetry_url:
            return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    simulate(scenario, settings.telemetry_url, end_minute=end_minute, replace=True)
    marker.write_text(
        json.dumps({"key": key, "url": settings.telemetry_url, "scenario": scenario.name})
    )
    return True


def full_rollout(file: ExperimentFile) -> ExperimentFile:
    """The file with each experiment at full rollout (one stage, 100 %), as simulated."""
    plan = RolloutPlan(stages=[RolloutStage(percent=100.0, min_minutes=0)])
    return file.model_copy(
        update={"experiments": [e.model_copy(update={"rollout": plan}) for e in file.experiments]}
    )


def create_experiments(scenario: Any, service: Any) -> list[str]:
    """Create (and start) the scenario's experiments unless they exist with the same config.

    Returns:
        Ids created now.

    Raises:
        ConfigError: An experiment id exists with another configuration (use a fresh
            ``VIGIL_HOME``), or the file does not validate.
    """
    from evals.sim import scenario_to_experiment_file

    file = full_rollout(scenario_to_experiment_file(scenario))
    fresh = []
    for i, exp in enumerate(file.experiments):
        try:
            stored = service.get(exp.id)
        except NotFoundError:
            fresh.append(exp)
            continue
        if stored.config.model_dump(exclude={"rollout"}) != exp.model_dump(exclude={"rollout"}):
            raise ConfigError(
                f"world.experiments[{i}].id",
                exp.id,
                "exists in the state store with another configuration; remove .vigil/ "
                "or point VIGIL_STATE_URL at a fresh store",
            )
    if not fresh:
        return []
    todo = file.model_copy(update={"experiments": fresh})
    return list(
        service.create(todo, SCENARIO_ACTOR, start=True, reason=f"scenario {scenario.name}")
    )
