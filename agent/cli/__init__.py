"""The ``vigil`` command line: the composition root of all front doors.

Each command group lives in its own module with a ``register(app)`` function. The CLI is the one
place allowed to reach into ``evals`` (simulation, evals, benchmarks), and only lazily, so that
``agent`` itself never depends on ``evals``.
"""

from __future__ import annotations

import importlib
import logging

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="vigil",
    help="Vigil keeps AI-driven experiments safe: experiment core and investigation agent.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Command modules, in help order. A module missing from a partial install is skipped.
_COMMAND_MODULES = (
    "agent.cli.core",
    "agent.cli.investigate",
    "agent.cli.demo",
    "agent.cli.serve",
    "evals.cli",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


def main() -> None:
    """Entry point of the ``vigil`` console script."""
    _register_all()
    app()
