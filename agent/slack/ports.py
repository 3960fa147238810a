"""Moved to :mod:`agent.ports` (the server needs them without importing Slack); re-exported."""

from agent.ports import Experiments, Investigations

__all__ = ["Experiments", "Investigations"]
