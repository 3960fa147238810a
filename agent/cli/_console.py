"""The consoles and the error handler every ``vigil`` command shares.

Consoles are built per use so the terminal width (``COLUMNS``) is read when printing, not at
import. A command wrapped in :func:`handle_errors` prints one line for a Vigil error: exit code 2
for bad input (a :class:`ConfigError` naming the field), 1 for a refusal.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

import typer
from rich.console import Console

from tools.errors import ConfigError, ConfigProblems, VigilError
from tools.redaction import hide_passwords

__all__ = ["err", "handle_errors", "out", "print_problems"]

F = TypeVar("F", bound=Callable[..., Any])


# Output that is not a terminal (a file, a pipe) is not cut to a terminal's 80 columns.
_UNWRAPPED = 1000


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        return Console(stderr=stderr, width=_UNWRAPPED)
    return console


def out() -> Console:
    """A console on standard output (as wide as needed when it is not a terminal)."""
    return _console(stderr=False)


def err() -> Console:
    """A console on standard error (as wide as needed when it is not a terminal)."""
    return _console(stderr=True)


def print_problems(exc: VigilError) -> None:
    """Print a Vigil error on standard error: every configuration problem on a line of its own.

    One style for every command: ``invalid: <field path>: <what is wrong> (got <value>)`` for bad
    input, ``refused: <why>`` for anything else Vigil refuses.
    """
    if isinstance(exc, ConfigError):
        problems = exc.problems if isinstance(exc, ConfigProblems) else [exc]
        for problem in problems:
            shown = hide_passwords(str(problem))
            err().print(f"[red]invalid:[/red] {shown}", highlight=False, soft_wrap=True)
        if len(problems) > 1:
            err().print(f"{len(problems)} problems", highlight=False)
        return
    err().print(f"[red]refused:[/red] {hide_passwords(str(exc))}", highlight=False, soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn Vigil errors raised by a command into one printed line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            print_problems(exc)
            raise typer.Exit(2) from None
        except VigilError as exc:
            print_problems(exc)
            raise typer.Exit(1) from None

    return cast(F, wrapper)
