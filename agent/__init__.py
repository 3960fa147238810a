"""The investigation agent and Vigil's front doors (CLI, HTTP server, Slack).

The public face: the data shapes of :mod:`agent.models`, and — imported on first use, so that a
front door importing ``agent.models`` does not pay for LangGraph — the
:class:`~agent.service.Investigator`, the :class:`~agent.reasoning.Reasoner` protocol with its two
reasoners, and the :class:`~agent.notify.Notifier` protocol.
"""

from __future__ import annotations

import importlib
from typing import Any

from agent.models import Alert, InvestigationView, MitigationView, RootCause

__all__ = [
    "Alert",
    "DeterministicReasoner",
    "InvestigationView",
    "Investigator",
    "LLMReasoner",
    "MitigationView",
    "Notifier",
    "Reasoner",
    "RootCause",
]

_LAZY = {
    "Investigator": "agent.service",
    "Notifier": "agent.notify",
    "Reasoner": "agent.reasoning",
    "DeterministicReasoner": "agent.deterministic",
    "LLMReasoner": "agent.llm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
