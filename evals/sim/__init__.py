"""The simulated ads-ranking world: scenarios in, telemetry tables out (see docs/simulator.md).

``load_scenario`` reads a scenario YAML (DESIGN §7); ``simulate`` writes minutes of its world —
requests, exposures and model snapshots (DESIGN §3) — to any SQLAlchemy URL, assigning units
through the real lifecycle allocation; ``scenario_to_experiment_file`` hands the world's
experiments to the lifecycle as configuration; ``minute_to_ts`` / ``ts_to_minute`` convert between
scenario minutes and telemetry timestamps.
"""

from evals.sim.bridge import (
    minute_to_ts,
    scenario_to_experiment_file,
    scenario_toolbox,
    ts_to_minute,
)
from evals.sim.runner import SimSummary, simulate
from evals.sim.scenario import (
    DIMENSIONS,
    FAULT_KINDS,
    AlertSpec,
    ExpectSpec,
    ExperimentSpec,
    FaultSpec,
    ModelSpec,
    Scenario,
    WorldSpec,
    load_scenario,
    parse_scenario,
)

__all__ = [
    "DIMENSIONS",
    "FAULT_KINDS",
    "AlertSpec",
    "ExpectSpec",
    "ExperimentSpec",
    "FaultSpec",
    "ModelSpec",
    "Scenario",
    "SimSummary",
    "WorldSpec",
    "load_scenario",
    "minute_to_ts",
    "parse_scenario",
    "scenario_to_experiment_file",
    "scenario_toolbox",
    "simulate",
    "ts_to_minute",
]
