"""``vigil eval``'s preflight figures: candidates broken in a way the preflight can see are stopped
before start, healthy ones pass (``expect.preflight`` of a scenario).

For each experiment a scenario lists under ``expect.preflight`` the runner runs the preflight
(:mod:`lifecycle.preflight`) as it would run at the alert's minute, on the world's telemetry: the
experiment as a draft in a state store of its own, the last hour's production requests replayed
through the world's models (:class:`evals.replay.WorldRunner`), the shadow run when the experiment
ran in shadow mode. No risk model is trained, so a preflight that fails nothing is yellow (it
passes: it would go to on-call), and one that fails a step is red (stopped).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

__all__ = ["PreflightResult", "preflight_figures", "run_preflights"]


class PreflightResult(BaseModel):
    """One experiment's preflight in an eval scenario, scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str
    expected: Literal["stop", "pass"]
    decision: str
    zone: str
    failed_steps: list[str]
    correct: bool
    seconds: float


class _Row(Protocol):
    @property
    def preflight(self) -> Sequence[PreflightResult]: ...


def run_preflights(scenario: Any, telemetry_url: str, folder: Path) -> list[PreflightResult]:
    """Run the preflight of each experiment in ``scenario.expect.preflight`` and score it.

    Args:
        scenario: The scenario (its telemetry already simulated up to the alert).
        telemetry_url: Where the world's telemetry is.
        folder: A scratch folder for the drafts' state store.
    """
    expects = scenario.expect.preflight
    if not expects:
        return []
    from evals.replay import WorldRunner
    from evals.sim import scenario_to_experiment_file
    from lifecycle.inference import ShadowLog
    from lifecycle.preflight import Preflight
    from lifecycle.service import ExperimentService
    from tools.telemetry import TelemetryReader

    now = (scenario.start + timedelta(minutes=scenario.alert.minute + 1)).replace(tzinfo=UTC)
    state = folder / "preflight-state.db"
    state.unlink(missing_ok=True)
    out = []
    with ExperimentService(f"sqlite:///{state}") as drafts:
        drafts.create(scenario_to_experiment_file(scenario), actor="eval", reason="preflight")
        preflight = Preflight(
            drafts,
            runner=WorldRunner(scenario),
            requests=TelemetryReader(telemetry_url),
            production_model=scenario.world.production_model,
            shadow=ShadowLog(telemetry_url),
            clock=lambda: now,
        )
        for expect in expects:
            began = time.perf_counter()
            report = preflight.run(expect.experiment)
            stopped = report.decision == "refused"
            out.append(
                PreflightResult(
                    experiment=expect.experiment,
                    expected=expect.decision,
                    decision=report.decision,
                    zone=report.zone,
                    failed_steps=[s.name for s in report.failed],
                    correct=stopped == (expect.decision == "stop"),
                    seconds=time.perf_counter() - began,
                )
            )
    return out


def preflight_figures(rows: Sequence[_Row]) -> dict[str, Any] | None:
    """``checked``, ``broken_stopped`` and ``healthy_passed`` over every row's preflights (None
    when no scenario expects one)."""
    results = [p for row in rows for p in row.preflight]
    if not results:
        return None
    broken = [p for p in results if p.expected == "stop"]
    healthy = [p for p in results if p.expected == "pass"]
    return {
        "checked": len(results),
        "accuracy": sum(p.correct for p in results) / len(results),
        "broken_stopped": sum(p.correct for p in broken) / len(broken) if broken else None,
        "healthy_passed": sum(p.correct for p in healthy) / len(healthy) if healthy else None,
        "wrong": sorted(
            f"{p.experiment}: expected {p.expected}, got {p.decision}"
            for p in results
            if not p.correct
        ),
    }
