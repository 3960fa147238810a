"""What the front doors need from the agent and from the experiment core, as protocols.

The server and the Slack bot are written against these, so that they depend on the published
surface of ``agent.service.Investigator`` and ``lifecycle.service.ExperimentService`` and on
nothing private.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from agent.models import Alert, FollowUp, InvestigationView, MitigationAction, MitigationView
from lifecycle.views import ExperimentView, KillSwitchView

__all__ = ["Experiments", "Investigations"]


class Investigations(Protocol):
    """The agent's ``Investigator`` as the front doors use it."""

    def investigate(self, alert: Alert) -> InvestigationView:
        """Run an investigation to its approval interrupt or its end."""
        ...

    def start(self, alert: Alert) -> str:
        """Create an investigation (not yet run) and return its id."""
        ...

    def run(self, investigation_id: str) -> InvestigationView:
        """Run a started investigation."""
        ...

    def get(self, investigation_id: str) -> InvestigationView:
        """One investigation (NotFoundError if unknown)."""
        ...

    def list(self, limit: int = 50) -> list[InvestigationView]:
        """The most recent investigations, newest first."""
        ...

    def approve(self, mitigation_id: str, user: str) -> MitigationView:
        """Approve (and execute, once) a mitigation; ApprovalError if ``user`` may not."""
        ...

    def reject(self, mitigation_id: str, user: str) -> MitigationView:
        """Reject a mitigation; ApprovalError if ``user`` may not.

        The call that rejects it tells the notifier it was built with
        (``Notifier.mitigation_rejected``), which updates the Slack thread.
        """
        ...

    def propose(
        self, action: MitigationAction, target: str | None, user: str, reason: str
    ) -> MitigationView:
        """Propose a mitigation by hand (it still needs approval)."""
        ...

    def report_html(self, investigation_id: str) -> str:
        """The investigation's HTML report."""
        ...

    def running(self) -> Sequence[str]:
        """Ids of the investigations in status ``running``, oldest first (after a crash: to
        run again)."""
        ...

    def recover(self) -> Sequence[str]:
        """Finish what a crash or a busy store left half-done; the ids it continued."""
        ...

    def join(self, alert: Alert) -> str | None:
        """Attach ``alert`` to the open investigation of its scope; its id, or None."""
        ...

    def follow_up(self, now: datetime | None = None) -> Sequence[tuple[str, FollowUp]]:
        """Re-run the watching investigations whose follow-up is due (each once)."""
        ...


class Experiments(Protocol):
    """The experiment core's ``ExperimentService`` as the front doors use it."""

    def get(self, experiment_id: str) -> ExperimentView:
        """One experiment's view: status, rollout stage, kill switches (NotFoundError)."""
        ...

    def list(self) -> Sequence[ExperimentView]:
        """Every experiment's view."""
        ...

    def kill_switches(self, active_only: bool = True) -> Sequence[KillSwitchView]:
        """Kill switches, newest first (only the active ones by default)."""
        ...
