"""What the graph's nodes are given: stores, playbooks, reasoner, checks, policy and clock.

None of it lives in the checkpointed state; a fresh process rebuilds :class:`Deps` from settings
(:mod:`agent.runtime`) and resumes a paused investigation from its checkpoint. Tests build one
from fakes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from agent.mitigation import ApprovalPolicy, Executor
from agent.models import Alert
from agent.notify import SafeNotifier
from agent.playbook import PlaybookSet
from agent.reasoning import ExperimentMeta, Reasoner
from agent.store import AgentStore
from lifecycle.settings import Settings

__all__ = ["Catalog", "Deps", "ToolboxCache", "ToolboxFactory"]


class Catalog(Protocol):
    """What the agent knows of the configuration: experiments and the production model."""

    def experiments(self) -> dict[str, ExperimentMeta]:
        """Every known experiment, by id."""
        ...

    def production_model(self) -> str | None:
        """The model serving traffic outside ranking experiments."""
        ...


ToolboxFactory = Callable[[Alert], Any]
"""Builds the checks (a ``tools.toolbox.Toolbox`` or a fake with its methods) for an alert."""


class ToolboxCache:
    """One toolbox per investigation (its aggregate cache is then shared by all its checks).

    Args:
        factory: Builds a toolbox for an alert.
        size: Investigations kept (least recently used are dropped).
    """

    def __init__(self, factory: ToolboxFactory, size: int = 16) -> None:
        self._factory = factory
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, investigation_id: str, alert: Alert) -> Any:
        """The investigation's toolbox, built on first use."""
        with self._lock:
            box = self._items.get(investigation_id)
            if box is not None:
                self._items.move_to_end(investigation_id)
                return box
        box = self._factory(alert)
        with self._lock:
            self._items[investigation_id] = box
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return box

    def fresh(self, alert: Alert) -> Any:
        """A new toolbox with empty caches (verification must read telemetry that arrived since)."""
        return self._factory(alert)

    def drop(self, investigation_id: str) -> None:
        """Forget an investigation's toolbox (after it finished)."""
        with self._lock:
            self._items.pop(investigation_id, None)


@dataclass
class Deps:
    """Everything the nodes use.

    Attributes:
        settings: Vigil's settings (reports folder, LLM budget, approval policy).
        store: Investigations and mitigations.
        playbooks: Every alert metric's playbook.
        reasoner: Ranks causes (deterministic by default).
        catalog: Experiments and the production model.
        toolboxes: The checks, per investigation.
        policy: Who may approve.
        executor: Executes approved mitigations exactly once.
        notifier: Callbacks (never raises).
        clock: "Now" on the telemetry's clock.
    """

    settings: Settings
    store: AgentStore
    playbooks: PlaybookSet
    reasoner: Reasoner
    catalog: Catalog
    toolboxes: ToolboxCache
    policy: ApprovalPolicy
    executor: Executor
    notifier: SafeNotifier
    clock: Callable[[], datetime]
