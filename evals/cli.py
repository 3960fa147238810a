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


def register(app: typer.Typer) -> None:
    """Attach the evals commands to the root CLI."""
    app.command("bench")(bench)
