"""Vigil's HTTP server: the Alertmanager webhook, investigations, approvals, Slack and metrics."""

from agent.server.app import Components, build_investigator, create_app, slack_notifier
from agent.server.pool import InvestigationPool, PoolFull

__all__ = [
    "Components",
    "InvestigationPool",
    "PoolFull",
    "build_investigator",
    "create_app",
    "slack_notifier",
]
