"""``vigil demo``: the whole loop on a simulated world, end to end, in well under a minute.

1. A dozen experiments; the test arm of 879 starts falling back to the weak default model.
2. The world is simulated up to the revenue alert; the agent investigates and writes its report.
3. The owner approves the proposed kill switch; it executes once, through the experiment core.
4. The allocator now says experiment 879 is off for a unit that was in it.
5. The world is simulated on, with the kill switch active; verification finds the metric
   recovered.

Every store lives under ``<VIGIL_HOME>/demo/`` (``./.vigil/demo/``) and is recreated on each run.
``evals.cli`` registers the command through the ``vigil.commands`` entry point.
"""

from __future__ import annotations

import shutil
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel

from agent.settings import Settings, get_settings
from tools.errors import VigilError

__all__ = ["demo", "demo_settings", "run_demo"]

_out = Console()
_AFTER_MINUTES = 30


def demo_settings(base: Settings, folder: Path) -> Settings:
    """Settings with every store under ``folder`` (deterministic reasoner, no Slack)."""
    from evals.harness import eval_settings

    return eval_settings(folder, base).model_copy(
        update={"llm_base_url": None, "slack_bot_token": None}
    )


def _enrolled_unit(allocator: Any, experiment_id: str, arm: str) -> int:
    for unit in range(1, 200_000):
        if allocator.assign({"unit_id": unit}, experiment_id) == arm:
            return unit
    raise VigilError(f"no unit of the first 200,000 is in arm {arm} of {experiment_id}")


def run_demo(folder: Path, scenario_path: Path | None = None, echo: bool = True) -> dict[str, Any]:
    """Run the demo; returns what happened (ids, statuses, recovery, timings)."""
    from agent.service import Investigator
    from evals.harness import (
        create_experiments,
        scenario_alert,
        scenario_clock,
        scenario_settings,
    )
    from evals.sim import load_scenario, simulate
    from lifecycle.service import ExperimentService

    began = time.perf_counter()
    say = _out.print if echo else (lambda *a, **k: None)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = scenario_path or Path(str(files("agent").joinpath("demo_scenario.yaml")))
    scenario = load_scenario(path)
    settings = scenario_settings(demo_settings(get_settings(), folder), scenario)
    alert = scenario_alert(scenario)
    fault = scenario.faults[0]
    exp_id = str(alert.experiment)

    say(Panel(f"[bold]{scenario.name}[/bold]: {scenario.description}", title="Vigil demo"))
    sim = simulate(scenario, settings.telemetry_url, end_minute=scenario.alert.minute + 1)
    say(
        f"1. Simulated minutes 0–{sim.end_minute} ({sim.requests:,} requests, "
        f"{sim.experiments} experiments; {fault.kind} injected in {exp_id} at minute "
        f"{fault.start_minute}) in {sim.seconds:.1f} s"
    )

    service = ExperimentService.from_settings(settings)
    acted_minute = scenario.alert.minute + 1
    inv = Investigator(settings, clock=lambda: scenario_clock(scenario, acted_minute))
    try:
        create_experiments(scenario, service, settings)
        allocator = service.allocator()
        arm = fault.arm or "test"
        unit = _enrolled_unit(allocator, exp_id, arm)
        t0 = time.perf_counter()
        view = inv.investigate(alert)
        took = time.perf_counter() - t0
        say(f"2. Investigated the {alert.metric} alert of {exp_id} in {took:.1f} s:\n")
        say(Markdown(view.report_markdown))
        if not view.mitigations:
            raise VigilError(f"the investigation proposed nothing (status {view.status})")
        proposal = view.mitigations[0]
        owner = service.get(exp_id).owner
        approved = inv.approve(proposal.id, owner)
        again = inv.approve(proposal.id, owner)
        say(
            f"3. {owner} (owner of {exp_id}) approved {proposal.action} {proposal.target}: "
            f"{approved.status}; a second approval changed nothing ({again.status})."
        )
        service.refresh()
        enabled = allocator.is_enabled({"unit_id": unit}, exp_id)
        say(
            f"4. is_enabled(unit {unit}, {exp_id}) → [bold]{enabled}[/bold] "
            f"(the unit was in arm {arm!r} before the kill)"
        )
        switches = [(s.scope, s.target) for s in service.kill_switches()]
        after = simulate(
            scenario,
            settings.telemetry_url,
            start_minute=acted_minute,
            end_minute=acted_minute + _AFTER_MINUTES,
            kill_switches=switches,
        )
        verified = inv.verify(proposal.id)
        detail = inv.store.detail(proposal.id).get("verification", {})
        say(
            f"5. Simulated {after.end_minute - after.start_minute} minutes after the kill: "
            f"{detail.get('summary', 'no verification')} → recovered: "
            f"[bold]{verified.recovered}[/bold]"
        )
        final = inv.get(view.id)
        say(
            f"\nReport: {final.report_path}   (all stores under {folder}/; "
            f"{time.perf_counter() - began:.1f} s in total)"
        )
        return {
            "investigation_id": view.id,
            "top_cause": view.root_causes[0].cause if view.root_causes else None,
            "mitigation_id": proposal.id,
            "action": proposal.action,
            "status": verified.status,
            "is_enabled_after": enabled,
            "recovered": verified.recovered,
            "audit_actions": [e.action for e in service.audit(exp_id)],
            "report_path": final.report_path,
            "seconds": time.perf_counter() - began,
        }
    finally:
        inv.close()
        service.close()


def demo(
    folder: Path | None = typer.Option(
        None, "--dir", help="Where the stores go (default: VIGIL_HOME/demo, ./.vigil/demo)."
    ),
    scenario: Path | None = typer.Option(None, "--scenario", help="Another scenario to demo."),
) -> None:
    """Simulate, investigate, approve the kill switch, and watch the metric recover."""
    try:
        result = run_demo(folder or Path(get_settings().home) / "demo", scenario)
    except VigilError as exc:
        Console(stderr=True).print(f"[red]demo failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if result["is_enabled_after"] or not result["recovered"]:
        raise typer.Exit(1)
