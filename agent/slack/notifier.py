"""Slack side of the agent's ``Notifier`` protocol: posts investigations and updates threads.

An investigation started by an alert is posted to ``Settings.slack_channel``; one started from
Slack is answered where it was asked. The message's ``ts`` is remembered per investigation and
per mitigation, so that later events (a decision, the execution, the verified recovery) update
the same message and reply in its thread. Slack being down never fails an investigation: errors
are logged and the investigation goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from agent.models import Alert, FollowUp, InvestigationView, MitigationView
from agent.slack.blocks import (
    Message,
    decision_blocks,
    escape,
    investigation_message,
    mitigation_update,
    proposal_message,
)

__all__ = ["SlackNotifier", "Thread"]

_log = logging.getLogger(__name__)


@dataclass
class Thread:
    """A posted message: where it is, and its blocks (to rewrite when something changes)."""

    channel: str
    ts: str | None = None
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""


class SlackNotifier:
    """Posts to Slack on the agent's callbacks.

    Args:
        client: A Web API client (its ``base_url`` points at Slack, or a fake in tests).
        channel: Channel for alert-started investigations; None posts nothing for them.
        public_url: Where the server is reachable, for report links.
        users: Slack user id -> Vigil user (``Settings.slack_users``): a decision by a mapped
            user names them with a Slack mention.
    """

    def __init__(
        self,
        client: WebClient,
        *,
        channel: str | None,
        public_url: str,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.public_url = public_url
        self._slack_ids = {vigil: slack for slack, vigil in (users or {}).items()}
        self._lock = threading.Lock()
        self._routes: dict[str, Thread] = {}
        self._investigations: dict[str, Thread] = {}
        self._mitigations: dict[str, Thread] = {}

    # -- routing -------------------------------------------------------------------------------

    def route(self, investigation_id: str, channel: str, thread_ts: str | None = None) -> None:
        """Answer an investigation started from Slack where it was asked."""
        with self._lock:
            self._routes[investigation_id] = Thread(channel=channel, thread_ts=thread_ts)

    def thread_of_mitigation(self, mitigation_id: str) -> Thread | None:
        """The message a mitigation was posted in, if this process posted it."""
        with self._lock:
            return self._mitigations.get(mitigation_id)

    # -- the agent's Notifier protocol ---------------------------------------------------------

    def investigation_finished(self, view: InvestigationView) -> None:
        """Post the investigation's verdicts, cause, report link (and buttons, if any)."""
        self.post_investigation(view)

    def awaiting_approval(self, view: InvestigationView) -> None:
        """Post the investigation with Approve / Reject buttons on its proposals."""
        self.post_investigation(view)

    def mitigation_approved(self, mitigation: MitigationView, user: str) -> None:
        """Replace the buttons by where it stands and say in the thread who approved it."""
        self.decided(mitigation)
        target = (
            f"{mitigation.action} {mitigation.target}" if mitigation.target else mitigation.action
        )
        who = escape(user) + (f" ({self.mention(user)})" if user in self._slack_ids else "")
        self._reply(
            mitigation,
            f":ballot_box_with_check: `{escape(target)}` approved by {who}: "
            f"now *{mitigation.status}*.",
        )

    def mitigation_executed(self, mitigation: MitigationView) -> None:
        """Replace the buttons by the outcome and say so in the thread."""
        self.decided(mitigation)
        if mitigation.effect == "already_in_effect":
            self._reply(
                mitigation,
                f":information_source: Already in effect, nothing changed: "
                f"{mitigation_update(mitigation)}",
            )
            return
        self._reply(mitigation, f":white_check_mark: Executed {mitigation_update(mitigation)}")

    def mitigation_rejected(self, mitigation: MitigationView, user: str) -> None:
        """Replace the buttons by the outcome and say in the thread who rejected it."""
        self.decided(mitigation)
        self._reply(
            mitigation, f":no_entry_sign: Rejected by {self.mention(user)}: nothing was executed."
        )

    def recovery_verified(self, mitigation: MitigationView) -> None:
        """Report in the thread whether the metric recovered after the mitigation."""
        self.decided(mitigation)
        mark = ":chart_with_upwards_trend:" if mitigation.recovered else ":warning:"
        self._reply(mitigation, f"{mark} Verification: {mitigation_update(mitigation)}")

    def followup_finished(self, view: InvestigationView, entry: FollowUp) -> None:
        """Say in the investigation's thread what a follow-up found (and what changed)."""
        when = f"{entry.ran_at:%H:%M} UTC"
        mark = ":mag:" if view.status == "watching" else ":bell:"
        self._in_thread(
            view, f"{mark} Follow-up {entry.n} on data up to {when}: {escape(entry.summary)}"
        )

    def alert_joined(self, view: InvestigationView, alert: Alert) -> None:
        """Say in the investigation's thread that another alert of its scope joined it."""
        scope = f"experiment {alert.experiment}" if alert.experiment else "all traffic"
        name = f" `{escape(alert.name)}`" if alert.name else ""
        self._in_thread(
            view,
            f":link: Alert{name} on {escape(alert.metric)} for {escape(scope)} joined this "
            f"investigation (one incident, one investigation).",
        )

    # -- front doors ---------------------------------------------------------------------------

    def post_investigation(self, view: InvestigationView) -> Thread | None:
        """Post (or, if already posted, rewrite) an investigation's message."""
        with self._lock:
            target = self._investigations.get(view.id) or self._routes.get(view.id)
        if target is None:
            if view.alert.source not in ("alertmanager", "monitor", "http") or not self.channel:
                return None
            target = Thread(channel=self.channel)
        text, blocks = investigation_message(view, self.public_url)
        posted = self._send(target, (text, blocks))
        if posted is not None:
            with self._lock:
                self._investigations[view.id] = posted
                for m in view.mitigations:
                    self._mitigations[m.id] = posted
        return posted

    def post_proposal(
        self, mitigation: MitigationView, channel: str, thread_ts: str | None = None
    ) -> Thread | None:
        """Post a manual proposal with its buttons."""
        posted = self._send(
            Thread(channel=channel, thread_ts=thread_ts), proposal_message(mitigation)
        )
        if posted is not None:
            with self._lock:
                self._mitigations[mitigation.id] = posted
        return posted

    def decided(self, mitigation: MitigationView) -> None:
        """Rewrite the mitigation's message: its buttons give way to where it stands."""
        thread = self.thread_of_mitigation(mitigation.id)
        if thread is None or thread.ts is None:
            return
        with self._lock:
            thread.blocks = decision_blocks(thread.blocks, mitigation)
            blocks = list(thread.blocks)
        self._call(
            "chat_update", channel=thread.channel, ts=thread.ts, text=thread.text, blocks=blocks
        )

    def mention(self, user: str) -> str:
        """A Vigil user as Slack shows them: a mention when mapped, else the escaped name."""
        slack_id = self._slack_ids.get(user)
        return f"<@{slack_id}>" if slack_id else escape(user)

    def say(self, channel: str, text: str, thread_ts: str | None = None) -> None:
        """Post plain text."""
        self._call("chat_postMessage", channel=channel, text=text, thread_ts=thread_ts)

    # -- internals ------------------------------------------------------------------------------

    def _in_thread(self, view: InvestigationView, text: str) -> None:
        """Reply in the investigation's thread (posting the investigation first if needed)."""
        with self._lock:
            thread = self._investigations.get(view.id)
        if thread is None or thread.ts is None:
            thread = self.post_investigation(view)
        if thread is not None and thread.ts is not None:
            self.say(thread.channel, text, thread_ts=thread.thread_ts or thread.ts)

    def _reply(self, mitigation: MitigationView, text: str) -> None:
        thread = self.thread_of_mitigation(mitigation.id)
        if thread is not None and thread.ts is not None:
            self.say(thread.channel, text, thread_ts=thread.thread_ts or thread.ts)
        elif self.channel:
            self.say(self.channel, text)

    def _send(self, target: Thread, message: Message) -> Thread | None:
        text, blocks = message
        if target.ts is not None:
            ok = self._call(
                "chat_update", channel=target.channel, ts=target.ts, text=text, blocks=blocks
            )
            if ok is None:
                return None
            return Thread(target.channel, target.ts, target.thread_ts, blocks, text)
        response = self._call(
            "chat_postMessage",
            channel=target.channel,
            text=text,
            blocks=blocks,
            thread_ts=target.thread_ts,
            unfurl_links=False,
        )
        if response is None:
            return None
        channel = str(response.get("channel") or target.channel)
        return Thread(channel, str(response.get("ts")), target.thread_ts, blocks, text)

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            response = getattr(self.client, method)(**kwargs)
        except (SlackApiError, OSError):
            _log.exception("Slack %s failed", method)
            return None
        return dict(response.data) if isinstance(response.data, dict) else {}
