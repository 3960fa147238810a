"""The Slack bot: a Bolt app (HTTP mode) answering ``/vigil``, mentions and the Approve buttons.

Bolt verifies every request's signature (``X-Slack-Signature`` over the raw body with the signing
secret, and a timestamp no older than five minutes) before any listener runs. One core,
:meth:`SlackBot.handle_text`, answers both the slash command and mentions; the parser is pure
(:mod:`agent.slack.commands`). Buttons apply the approval policy to the Vigil user the clicking
Slack user maps to (``Settings.slack_users``); an unmapped or unauthorised user changes nothing.
Only mapped users may act or start work (investigate, kill, approve, reject, questions that start
an investigation); read-only commands stay open to everyone unless
``Settings.slack_unmapped_reads`` is off. Starting investigations is rate-limited per user.
Decisions are announced in the thread by the agent's notifier, never by the bot itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slack_bolt import Ack, App, BoltRequest, BoltResponse
from slack_sdk.errors import SlackApiError

from agent.models import Alert, MitigationView
from agent.ports import Experiments, Investigations
from agent.ratelimit import RateLimited, RateLimiter
from agent.settings import Settings
from agent.slack.blocks import APPROVE_ACTION, REJECT_ACTION, escape, status_message
from agent.slack.commands import (
    HELP_TEXT,
    Decide,
    Help,
    Invalid,
    Investigate,
    Kill,
    Question,
    Report,
    Status,
    parse_command,
    question_hints,
)
from agent.slack.notifier import SlackNotifier
from tools.errors import ApprovalError, ConfigError, NotFoundError, RetryableError, VigilError
from tools.vocabulary import VERDICT_MARKS, utc_now

__all__ = ["Reply", "SlackBot"]

_log = logging.getLogger(__name__)


@dataclass
class Reply:
    """What the bot answers: text (and blocks), public or only to the asker."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    public: bool = False


class SlackBot:
    """Vigil in Slack.

    Args:
        settings: Signing secret, bot token, user mapping, LLM and public URL settings.
        investigator: The agent.
        experiments: The experiment core (for ``status``).
        notifier: Posts messages and remembers their threads (shares the Web API client).
        submit: Starts an investigation in the background and returns its id, calling the
            callback with the id before any worker may run it (raises ``RetryableError`` when the
            queue is full).
        clock: The current time (UTC); injectable for tests.
        on_decision: Called with ``approve`` or ``reject`` after each decision taken (metrics).
        limiter: Per-user rate of starting investigations (shared with the HTTP app); from the
            settings if None.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        investigator: Investigations,
        experiments: Experiments | None,
        notifier: SlackNotifier,
        submit: Callable[[Alert, Callable[[str], None]], str],
        clock: Callable[[], datetime] = utc_now,
        on_decision: Callable[[str], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        if not settings.slack_signing_secret:
            raise ConfigError("slack_signing_secret", None, "required to serve Slack")
        self._settings = settings
        self._investigator = investigator
        self._experiments = experiments
        self._notifier = notifier
        self._submit = submit
        self._clock = clock
        self._on_decision = on_decision
        self._limiter = limiter or RateLimiter(
            settings.user_investigations_per_window,
            settings.user_rate_window_s,
            what="investigations",
        )
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vigil-slack")
        self.app = App(
            name="vigil",
            signing_secret=settings.slack_signing_secret,
            client=notifier.client,  # carries the bot token
            token_verification_enabled=False,
            listener_executor=self._executor,
        )
        self.app.command("/vigil")(self._on_command)
        self.app.event("app_mention")(self._on_mention)
        self.app.action(APPROVE_ACTION)(self._on_approve)
        self.app.action(REJECT_ACTION)(self._on_reject)

    def dispatch(self, request: BoltRequest) -> BoltResponse:
        """Verify and handle one HTTP request from Slack (blocking; call from a thread)."""
        return self.app.dispatch(request)

    def close(self) -> None:
        """Stop the listener threads after the work in hand."""
        self._executor.shutdown(wait=True)

    def user(self, slack_user: str) -> str | None:
        """The Vigil user a Slack user maps to, or None when unmapped."""
        return self._settings.slack_users.get(slack_user)

    # -- the core: text in, reply out ----------------------------------------------------------

    def handle_text(
        self, text: str, slack_user: str, channel: str, thread_ts: str | None = None
    ) -> Reply:
        """Answer one command or question.

        Args:
            text: What the user typed.
            slack_user: Slack id of the asker.
            channel: Where it was asked (replies and investigation results go there).
            thread_ts: The thread to answer in, if any.

        Returns:
            The reply.
        """
        command = parse_command(text, now=self._clock())
        try:
            return self._handle(command, slack_user, channel, thread_ts)
        except NotFoundError as exc:
            return Reply(f"Sorry: {escape(str(exc))}.")
        except RateLimited as exc:
            return Reply(f"Not now: {escape(str(exc))}.")
        except RetryableError as exc:
            return Reply(f"Vigil is busy, please try again shortly ({escape(str(exc))}).")
        except VigilError as exc:  # refused by policy, state or configuration: say why
            return Reply(f"Not done: {escape(str(exc))}.")

    def _handle(
        self,
        command: Investigate | Status | Report | Kill | Decide | Help | Invalid | Question,
        slack_user: str,
        channel: str,
        thread_ts: str | None,
    ) -> Reply:
        refusal = self._refusal(command, slack_user)
        if refusal is not None:
            return refusal
        match command:
            case Help():
                return Reply(HELP_TEXT)
            case Invalid(verb=verb, problem=problem):
                return Reply(f"`{verb}`: {problem}\nSay `help` for the commands.")
            case Investigate():
                return self._investigate(command, "", slack_user, channel, thread_ts)
            case Status(experiment=experiment):
                return self._status(experiment)
            case Report(investigation_id=ident):
                return self._report(ident)
            case Kill(experiment=experiment, reason=reason):
                return self._kill(experiment, reason, slack_user, channel, thread_ts)
            case Decide(mitigation_id=ident, approve=approve):
                return Reply(self._decide(ident, slack_user, approve=approve)[1])
            case Question(text=text):
                return self._question(text, slack_user, channel, thread_ts)

    def _refusal(
        self,
        command: Investigate | Status | Report | Kill | Decide | Help | Invalid | Question,
        slack_user: str,
    ) -> Reply | None:
        """Why an unmapped Slack user may not run ``command`` (None when they may)."""
        if self.user(slack_user) is not None:
            return None
        read_only = isinstance(command, Status | Report | Help | Invalid)
        if read_only and self._settings.slack_unmapped_reads:
            return None
        if isinstance(command, Question) and not self._settings.llm_base_url:
            return None  # answered with the help text; starts nothing
        _log.warning("unmapped Slack user %s refused: %s", slack_user, type(command).__name__)
        return Reply(
            "You are not mapped to a Vigil user (VIGIL_SLACK_USERS), so you can only read here."
            if self._settings.slack_unmapped_reads
            else "You are not mapped to a Vigil user (VIGIL_SLACK_USERS)."
        )

    def _investigate(
        self,
        command: Investigate,
        question: str,
        slack_user: str,
        channel: str,
        thread_ts: str | None,
    ) -> Reply:
        alert = Alert(
            metric=command.metric,
            fired_at=self._clock(),
            experiment=command.experiment,
            since=command.since,
            source="slack",
            name="slack",
            summary=question,
            labels={"slack_user": slack_user, "requested_by": self.user(slack_user) or ""},
        )
        user = self.user(slack_user) or f"slack:{slack_user}"
        self._limiter.acquire(user)
        try:
            investigation_id = self._submit(
                alert, lambda ident: self._notifier.route(ident, channel, thread_ts)
            )
        except RetryableError:
            self._limiter.release(user)  # refused work does not count against the user
            raise
        where = f"experiment {command.experiment}" if command.experiment else "all traffic"
        since = f" since {command.since:%Y-%m-%d %H:%M} UTC" if command.since else ""
        return Reply(
            f"Investigating {command.metric} on {escape(where)}{since} "
            f"(investigation `{investigation_id}`); I will post the verdicts here.",
            public=True,
        )

    def _status(self, experiment: str) -> Reply:
        if self._experiments is None:
            return Reply("The experiment store is not connected to this server.")
        view = self._experiments.get(experiment)
        blocked = set(view.blocked_by)
        switches = [
            k
            for k in self._experiments.kill_switches(active_only=True)
            if (k.scope, k.target) in blocked
        ]
        recent = [
            v for v in self._investigator.list(limit=200) if v.alert.experiment == experiment
        ][:3]
        return Reply(status_message(view, switches, recent))

    def _report(self, investigation_id: str) -> Reply:
        view = self._investigator.get(investigation_id)
        url = f"{self._settings.public_url.rstrip('/')}/investigations/{view.id}/report"
        marks = VERDICT_MARKS
        lines = [f"*Investigation `{view.id}`* ({view.status}) — <{url}|full report>"]
        lines += [f"{marks.get(v, '?')} {escape(c)} — {escape(s)}" for c, v, s in view.verdicts]
        if view.root_causes:
            lines.append(f"*Cause:* `{view.root_causes[0].cause}`")
        lines += [f"• `{m.id}` {m.action} {m.target or ''}: {m.status}" for m in view.mitigations]
        return Reply("\n".join(lines))

    def _kill(
        self, experiment: str, reason: str, slack_user: str, channel: str, thread_ts: str | None
    ) -> Reply:
        if self._experiments is not None:
            self._experiments.get(experiment)  # NotFoundError for an unknown id
        proposer = self.user(slack_user) or f"slack:{slack_user}"
        mitigation = self._investigator.propose(
            "kill_experiment", experiment, proposer, reason or f"requested in Slack by {proposer}"
        )
        self._notifier.post_proposal(mitigation, channel, thread_ts)
        return Reply(
            f"Proposed `kill_experiment {escape(experiment)}` (mitigation `{mitigation.id}`); "
            "it runs once an authorised approver presses Approve."
        )

    def _question(self, text: str, slack_user: str, channel: str, thread_ts: str | None) -> Reply:
        if not self._settings.llm_base_url:
            return Reply("I only understand commands without an LLM configured.\n" + HELP_TEXT)
        hints = question_hints(text, self._clock())
        if hints is None:
            return Reply(
                "Which metric should I look at? Ask e.g. "
                "_why did revenue drop at 08:32 in experiment 879?_"
            )
        return self._investigate(hints, text, slack_user, channel, thread_ts)

    def _decide(self, mitigation_id: str, slack_user: str, *, approve: bool) -> tuple[bool, str]:
        """Approve or reject as the Vigil user ``slack_user`` maps to: (done, what to say)."""
        user = self.user(slack_user)
        if user is None:
            _log.warning("unmapped Slack user %s tried to decide %s", slack_user, mitigation_id)
            return False, "You are not mapped to a Vigil user, so you cannot approve or reject."
        try:
            if approve:
                view = self._investigator.approve(mitigation_id, user)
            else:
                view = self._investigator.reject(mitigation_id, user)
        except ApprovalError as exc:
            _log.warning("%s may not decide %s: %s", user, mitigation_id, exc)
            return False, f"{escape(user)}: not allowed — {escape(str(exc))}"
        # The thread hears of the decision from the agent's notifier (mitigation_approved,
        # mitigation_rejected), told once by the call that stored it: not from here.
        if self._on_decision is not None:
            self._on_decision("approve" if approve else "reject")
        return True, self._decision_text(view, user, approve)

    @staticmethod
    def _decision_text(view: MitigationView, user: str, approve: bool) -> str:
        verb = "approved" if approve else "rejected"
        target = f"{view.action} {view.target}" if view.target else view.action
        return f"`{escape(target)}` {verb} by {escape(user)}: now *{view.status}*."

    # -- Bolt listeners ------------------------------------------------------------------------

    def _on_command(self, ack: Ack, body: dict[str, Any]) -> None:
        reply = self.handle_text(
            str(body.get("text", "")), str(body.get("user_id", "")), str(body.get("channel_id"))
        )
        ack(
            text=reply.text,
            blocks=reply.blocks or None,
            response_type="in_channel" if reply.public else "ephemeral",
        )

    def _on_mention(self, event: dict[str, Any]) -> None:
        channel, ts = str(event.get("channel")), event.get("thread_ts") or event.get("ts")
        reply = self.handle_text(
            str(event.get("text", "")), str(event.get("user", "")), channel, ts
        )
        self._notifier.say(channel, reply.text, thread_ts=ts)

    def _on_approve(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        self._on_button(body, action, approve=True)

    def _on_reject(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        self._on_button(body, action, approve=False)

    def _on_button(self, body: dict[str, Any], action: dict[str, Any], *, approve: bool) -> None:
        slack_user = str(body.get("user", {}).get("id", ""))
        channel = str(body.get("channel", {}).get("id") or self._notifier.channel or "")
        try:
            _, text = self._decide(str(action.get("value", "")), slack_user, approve=approve)
        except VigilError as exc:
            text = f"Not done: {escape(str(exc))}"
        # Only the clicker hears the outcome here; the thread hears of a decision from the
        # agent's notifier, so that a decision taken over HTTP or the CLI reads the same.
        self._ephemeral(channel, slack_user, text)

    def _ephemeral(self, channel: str, slack_user: str, text: str) -> None:
        if not channel or not slack_user:
            return
        try:
            self._notifier.client.chat_postEphemeral(channel=channel, user=slack_user, text=text)
        except (SlackApiError, OSError):
            _log.exception("could not tell %s in %s: %s", slack_user, channel, text)
