"""What the graph's nodes are given: stores, playbooks, reasoner, checks, policy and clock.

None of it lives in the checkpointed state; a fresh process rebuilds :class:`Deps` from settings
(:mod:`agent.runtime`) and resumes a paused investigation from its checkpoint. Tests build one
from fakes.

Also the :class:`Observer` protocol, through which the agent reports how long each check took
and each LLM call (the server's ``/metrics`` implements it): :class:`ToolboxCache` times every
check of the toolboxes it hands out, wherever the check is called from (localization, the check
fan-out, the LLM's tool calls, verification).
"""

from __future__ import annotations

import functools
import threading
import time
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
from agent.settings import Settings
from agent.store import AgentStore
from tools.registry import CHECKS, Checks

__all__ = ["Catalog", "Deps", "Observer", "ToolboxCache", "ToolboxFactory", "timed_checks"]


class Observer(Protocol):
    """Where the agent reports its work as it happens (``agent.server.metrics.ServerMetrics``).

    Calls come from the investigation's threads; an implementation must be thread-safe and fast.
    """

    def observe_check(self, check: str, seconds: float) -> None:
        """One diagnostic check ran for ``seconds`` (wall time)."""
        ...

    def observe_llm_call(self, model: str, *, failed: bool = False, reason: str = "") -> None:
        """One call to the LLM endpoint (after retries); ``failed`` with why when it failed or
        its answer was rejected."""
        ...


class Catalog(Protocol):
    """What the agent knows of the configuration: experiments and the production model."""

    def experiments(self) -> dict[str, ExperimentMeta]:
        """Every known experiment, by id."""
        ...

    def production_model(self) -> str | None:
        """The model serving traffic outside ranking experiments."""
        ...


ToolboxFactory = Callable[[Alert], Checks]
"""Builds the checks (a ``tools.toolbox.Toolbox`` or a fake) for an alert."""


def _timed(check: str, method: Callable[..., Any], observer: Observer) -> Callable[..., Any]:
    @functools.wraps(method)  # keeps the signature and docstring of the check
    def run(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:  # a check that raises took its time too
            observer.observe_check(check, time.perf_counter() - began)

    run.__dict__["_vigil_timed"] = True
    return run


def timed_checks(toolbox: Checks, observer: Observer | None) -> Checks:
    """Report the wall time of every check ``toolbox`` runs to ``observer``.

    Every check of the registry (:data:`tools.registry.CHECKS`) is shadowed on the instance by a
    wrapper with the same signature, observed under the check's name. The toolbox is returned
    (changed in place; a toolbox timed already is not timed twice); with no observer, or an
    instance without a ``__dict__``, it is left as it is.
    """
    own = getattr(toolbox, "__dict__", None)
    if observer is None or own is None:
        return toolbox
    for name in CHECKS:
        method = getattr(toolbox, name, None)
        if method is None or getattr(own.get(name), "_vigil_timed", False):
            continue
        own[name] = _timed(name, method, observer)
    return toolbox


class ToolboxCache:
    """One toolbox per investigation (its aggregate cache is then shared by all its checks).

    Args:
        factory: Builds a toolbox for an alert.
        size: Investigations kept (least recently used are dropped).
        observer: Told how long each check of the toolboxes handed out takes (None: nobody).
    """

    def __init__(
        self, factory: ToolboxFactory, size: int = 16, observer: Observer | None = None
    ) -> None:
        self._factory = factory
        self._observer = observer
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Checks] = OrderedDict()

    def get(self, investigation_id: str, alert: Alert) -> Checks:
        """The investigation's toolbox, built on first use."""
        with self._lock:
            box = self._items.get(investigation_id)
            if box is not None:
                self._items.move_to_end(investigation_id)
                return box
        box = timed_checks(self._factory(alert), self._observer)
        with self._lock:
            self._items[investigation_id] = box
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return box

    def fresh(self, alert: Alert) -> Checks:
        """A new toolbox with empty caches (verification must read telemetry that arrived since)."""
        return timed_checks(self._factory(alert), self._observer)

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
