"""The consoles and the error handler every ``vigil`` command shares.

Consoles are built per use so the terminal width (``COLUMNS``) is read when printing, not at
import. A command wrapped in :func:`handle_errors` prints one line for a Vigil error: exit code 2
for bad input (a :class:`ConfigError` naming the field), 1 for a refusal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import typer
from rich.console import Console

from tools.errors import ConfigError, VigilError

__all__ = ["err", "handle_errors", "out"]

F = TypeVar("F", bound=Callable[..., Any])


def out() -> Console:
    """A console on standard output."""
    return Console()


def err() -> Console:
    """A console on standard error."""
    return Console(stderr=True)


def handle_errors(fn: F) -> F:
    """Turn Vigil errors raised by a command into one printed line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            err().print(f"[red]invalid:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except VigilError as exc:
            err().print(f"[red]refused:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None

    return cast(F, wrapper)
