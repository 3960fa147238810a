"""Commands of ``evals``: ``vigil sim``, ``vigil eval`` and ``vigil bench``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

__all__ = ["register"]

_console = Console()


def bench(
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here (merged)."),
    only: list[str] | None = typer.Option(None, "--only", help="Run only these sections."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes, for a smoke run."),
    shared_data: Path = typer.Option(Path("../shared/data"), help="External benchmark data."),
) -> None:
    """Run the benchmarks and write their figures to JSON."""
    from evals.bench import BenchOptions, run_bench

    try:
        figures = run_bench(only, BenchOptions(quick=quick, shared_data=shared_data), json_path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--only") from exc
    _console.print_json(json.dumps(figures, default=str))


def sim(
    scenario: Path = typer.Argument(..., help="Scenario YAML (DESIGN §7).", dir_okay=False),
    db: str | None = typer.Option(
        None, "--db", help="Telemetry SQLAlchemy URL; default: the settings' telemetry_url."
    ),
    start_minute: int = typer.Option(0, "--start-minute", help="First minute to write."),
    end_minute: int | None = typer.Option(
        None, "--end-minute", help="Minute after the last one; default: the world's length."
    ),
    replace: bool = typer.Option(False, "--replace", help="Drop the telemetry tables first."),
) -> None:
    """Simulate a scenario's world and write its telemetry tables."""
    from evals.sim import load_scenario, simulate
    from lifecycle.settings import get_settings
    from tools.errors import VigilError

    url = db or get_settings().telemetry_url
    try:
        world = load_scenario(scenario)
        summary = simulate(
            world,
            url,
            start_minute=start_minute,
            end_minute=end_minute,
            replace=replace,
            progress=True,
        )
    except VigilError as exc:
        _console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    kinds = ", ".join(f.kind for f in world.faults) or "none"
    _console.print(
        f"[bold]{summary.scenario}[/bold]: minutes {summary.start_minute}-{summary.end_minute} "
        f"-> {url}\n"
        f"  requests {summary.requests:,}  exposures {summary.exposures:,}  "
        f"model snapshots {summary.snapshots:,}\n"
        f"  experiments {summary.experiments}  faults {summary.faults} ({kinds})\n"
        f"  {summary.seconds:.2f} s ({summary.requests_per_s:,.0f} requests/s)"
    )


def register(app: typer.Typer) -> None:
    """Attach the evals commands to the root CLI: ``sim``, ``eval`` (evals.runner), ``bench``."""
    from evals.runner import eval_command

    app.command("sim")(sim)
    app.command("eval")(eval_command)
    app.command("bench")(bench)
