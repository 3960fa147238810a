"""The ``vigil`` command line: the composition root of all front doors.

Each command group of the product lives in its own module with a ``register(app)`` function.
Plug-ins add theirs through the ``vigil.commands`` entry point group (``evals`` adds ``sim``,
``eval``, ``bench``, ``demo`` and the scenario worlds this way), so that the product never imports
``evals``: the arrow points from ``evals`` to ``agent``, never back.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

import typer

__all__ = ["ENTRY_POINT_GROUP", "app", "main"]

ENTRY_POINT_GROUP = "vigil.commands"

app = typer.Typer(
    name="vigil",
    help="Vigil keeps AI-driven experiments safe: experiment core and investigation agent.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# The product's command modules, in help order.
_COMMAND_MODULES = (
    "agent.cli.core",
    "agent.cli.investigate",
    "agent.cli.serve",
    "agent.cli.ops",
    "agent.cli.preflight",
)
_registered: list[str] = []


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail to stderr."),
) -> None:
    from agent.cli._console import err
    from agent.settings import unknown_env_settings

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from tools.redaction import install_log_redaction

    install_log_redaction()  # no password of a URL in any log line
    if ctx.invoked_subcommand == "doctor":
        return  # the doctor reports them itself
    for name, nearest in unknown_env_settings():
        hint = f"did you mean {nearest}?" if nearest else "see `vigil config show`"
        err().print(
            f"[yellow]warning:[/yellow] {name} is not a Vigil setting and is ignored; {hint}",
            highlight=False,
        )


def _register_all() -> None:
    """Register the product's commands, then every ``vigil.commands`` plug-in (once)."""
    if _registered:
        return
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)
        _registered.append(name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()(app)
        _registered.append(ep.value)


def main() -> None:
    """Entry point of the ``vigil`` console script."""
    _register_all()
    app()
