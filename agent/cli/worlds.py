"""The port through which a plug-in (``evals``) offers simulated scenario worlds to the CLI.

The product never imports ``evals``: ``evals`` registers its commands through the ``vigil.commands``
entry point group and, in the same call, hands the CLI an object implementing :class:`Worlds`
(:func:`provide`). ``vigil investigate --scenario`` and ``--world NAME`` on ``approve``, ``reject``,
``investigations`` and ``report`` go through it; without the plug-in they say what is missing.

A scenario world keeps every store of its own (state, telemetry, checkpoints, reports) under
``<VIGIL_HOME>/worlds/<scenario name>/``, so it never collides with the experiments of the default
state store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agent.models import InvestigationView
from agent.settings import Settings
from tools.errors import ConfigError

__all__ = ["Worlds", "provide", "worlds"]


class Worlds(Protocol):
    """Simulated scenario worlds, each in its own stores."""

    def investigate(
        self, scenario: Path, base: Settings, *, fresh: bool, say: Callable[[str], None]
    ) -> tuple[str, InvestigationView]:
        """Build the scenario's world (unless built already) and investigate its alert.

        Returns:
            The world's name (for ``--world``) and the investigation, stopped at the approval.
        """
        ...

    def settings(self, name: str, base: Settings) -> Settings:
        """The settings whose stores are world ``name``'s.

        Raises:
            ConfigError: No world of that name was built.
        """
        ...

    def clock(self, settings: Settings) -> Callable[[], datetime]:
        """The world's "now": when an action taken now takes effect."""
        ...

    def go_on(self, settings: Settings, minutes: int) -> str:
        """Simulate ``minutes`` more of the world as the state store now stands; says what ran."""
        ...


_provided: list[Worlds] = []


def provide(port: Worlds) -> None:
    """Offer scenario worlds to the CLI (called by the plug-in's ``register``)."""
    _provided[:] = [port]


def worlds(option: str, value: object) -> Worlds:
    """The scenario worlds on offer.

    Raises:
        ConfigError: No plug-in offers them (``evals`` is not installed), naming ``option``.
    """
    if not _provided:
        raise ConfigError(
            option,
            value,
            "scenario worlds come with Vigil's evals package, which is not installed "
            "(no 'vigil.commands' entry point offers them); run `make setup`",
        )
    return _provided[0]
