"""The Notifier protocol: callbacks the front doors (Slack) hang their posts and updates on.

Callbacks run on the investigation's thread after the state they report is stored. A notifier
that fails never fails the investigation: :class:`SafeNotifier` logs its errors and goes on.

Two callbacks are optional (:class:`IncidentNotifier`; a notifier written before them simply does
not get them): a follow-up of a watching investigation finished, and an alert joined an open
investigation. Slack answers both in the investigation's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from agent.models import Alert, FollowUp, InvestigationView, MitigationView

__all__ = ["FanoutNotifier", "IncidentNotifier", "Notifier", "NullNotifier", "SafeNotifier"]

_log = logging.getLogger(__name__)


@runtime_checkable
class Notifier(Protocol):
    """What the agent tells the outside world, and when."""

    def investigation_finished(self, view: InvestigationView) -> None:
        """The investigation reached its end (no proposal, rejected, or executed)."""
        ...

    def awaiting_approval(self, view: InvestigationView) -> None:
        """The investigation proposed mitigations and waits for a human decision."""
        ...

    def mitigation_approved(self, mitigation: MitigationView, user: str) -> None:
        """``user``'s approval was stored (told once, by the call that recorded it)."""
        ...

    def mitigation_executed(self, mitigation: MitigationView) -> None:
        """An approved mitigation was executed through the experiment core."""
        ...

    def mitigation_rejected(self, mitigation: MitigationView, user: str) -> None:
        """``user`` rejected a proposed mitigation (nothing was executed)."""
        ...

    def recovery_verified(self, mitigation: MitigationView) -> None:
        """Verification judged whether the metric recovered (``mitigation.recovered``)."""
        ...


class IncidentNotifier(Protocol):
    """The optional callbacks of a notifier: follow-ups and joined alerts."""

    def followup_finished(self, view: InvestigationView, entry: FollowUp) -> None:
        """A follow-up of a watching investigation ran (``entry``: what it found, what changed)."""
        ...

    def alert_joined(self, view: InvestigationView, alert: Alert) -> None:
        """``alert`` joined the open investigation ``view`` instead of starting another."""
        ...


class NullNotifier:
    """Tells nobody."""

    def investigation_finished(self, view: InvestigationView) -> None:
        """Do nothing."""

    def awaiting_approval(self, view: InvestigationView) -> None:
        """Do nothing."""

    def mitigation_approved(self, mitigation: MitigationView, user: str) -> None:
        """Do nothing."""

    def mitigation_executed(self, mitigation: MitigationView) -> None:
        """Do nothing."""

    def mitigation_rejected(self, mitigation: MitigationView, user: str) -> None:
        """Do nothing."""

    def recovery_verified(self, mitigation: MitigationView) -> None:
        """Do nothing."""


class FanoutNotifier:
    """Calls several notifiers in turn (e.g. Slack and a test recorder)."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self._notifiers = list(notifiers)

    def investigation_finished(self, view: InvestigationView) -> None:
        """Tell every notifier."""
        for n in self._notifiers:
            n.investigation_finished(view)

    def awaiting_approval(self, view: InvestigationView) -> None:
        """Tell every notifier."""
        for n in self._notifiers:
            n.awaiting_approval(view)

    def mitigation_approved(self, mitigation: MitigationView, user: str) -> None:
        """Tell every notifier."""
        for n in self._notifiers:
            n.mitigation_approved(mitigation, user)

    def mitigation_executed(self, mitigation: MitigationView) -> None:
        """Tell every notifier."""
        for n in self._notifiers:
            n.mitigation_executed(mitigation)

    def mitigation_rejected(self, mitigation: MitigationView, user: str) -> None:
        """Tell every notifier."""
        for n in self._notifiers:
            n.mitigation_rejected(mitigation, user)

    def recovery_verified(self, mitigation: MitigationView) -> None:
        """Tell every notifier."""
        for n in self._notifiers:
            n.recovery_verified(mitigation)

    def followup_finished(self, view: InvestigationView, entry: FollowUp) -> None:
        """Tell every notifier that has the callback."""
        for n in self._notifiers:
            method = getattr(n, "followup_finished", None)
            if method is not None:
                method(view, entry)

    def alert_joined(self, view: InvestigationView, alert: Alert) -> None:
        """Tell every notifier that has the callback."""
        for n in self._notifiers:
            method = getattr(n, "alert_joined", None)
            if method is not None:
                method(view, alert)


class SafeNotifier:
    """Wraps a notifier so that its failures are logged, never raised into the agent."""

    def __init__(self, inner: Notifier | None) -> None:
        self.inner: Notifier = inner if inner is not None else NullNotifier()

    def _call(self, name: str, arg: InvestigationView | MitigationView, *more: Any) -> None:
        method = getattr(self.inner, name, None)
        if method is None:  # a notifier written before this callback existed
            return
        try:
            method(arg, *more)
        except Exception:  # a notifier (Slack) being down must not fail an investigation
            _log.exception("notifier %s failed for %s", name, arg.id)

    def investigation_finished(self, view: InvestigationView) -> None:
        """Forward, logging failures."""
        self._call("investigation_finished", view)

    def awaiting_approval(self, view: InvestigationView) -> None:
        """Forward, logging failures."""
        self._call("awaiting_approval", view)

    def mitigation_approved(self, mitigation: MitigationView, user: str) -> None:
        """Forward, logging failures."""
        self._call("mitigation_approved", mitigation, user)

    def mitigation_executed(self, mitigation: MitigationView) -> None:
        """Forward, logging failures."""
        self._call("mitigation_executed", mitigation)

    def mitigation_rejected(self, mitigation: MitigationView, user: str) -> None:
        """Forward, logging failures."""
        self._call("mitigation_rejected", mitigation, user)

    def recovery_verified(self, mitigation: MitigationView) -> None:
        """Forward, logging failures."""
        self._call("recovery_verified", mitigation)

    def followup_finished(self, view: InvestigationView, entry: FollowUp) -> None:
        """Forward (when the notifier has the callback), logging failures."""
        self._call("followup_finished", view, entry)

    def alert_joined(self, view: InvestigationView, alert: Alert) -> None:
        """Forward (when the notifier has the callback), logging failures."""
        self._call("alert_joined", view, alert)
