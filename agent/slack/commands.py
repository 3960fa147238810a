"""The Slack command grammar, parsed by pure functions (no Slack, no clock, no I/O).

Grammar (case-insensitive; a leading bot mention is ignored)::

    investigate [EXPERIMENT] METRIC [since|from|at TIME]
    status EXPERIMENT
    report INVESTIGATION_ID
    kill EXPERIMENT [REASON...]
    approve MITIGATION_ID | reject MITIGATION_ID
    help

``TIME`` is ``HH:MM`` (UTC; the latest such moment not after now) or an ISO date-time. Anything
else is a free-form :class:`Question`; :func:`question_hints` pulls an experiment, a metric and a
time out of one so that it can be investigated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast, get_args

from agent.models import AlertMetric
from tools.vocabulary import METRIC_ALIASES

__all__ = [
    "HELP_TEXT",
    "Command",
    "Decide",
    "Help",
    "Invalid",
    "Investigate",
    "Kill",
    "Question",
    "Report",
    "Status",
    "parse_command",
    "parse_time",
    "question_hints",
]

HELP_TEXT = (
    "*Vigil commands*\n"
    "• `investigate 879 revenue since 08:32` — investigate a metric of an experiment "
    "(omit the experiment for a global metric)\n"
    "• `status 879` — an experiment's status, rollout stage and kill switches\n"
    "• `report ID` — an investigation's verdicts and a link to its report\n"
    "• `kill 879 [reason]` — propose the kill switch for an experiment (needs approval)\n"
    "• `approve ID` / `reject ID` — decide a proposed mitigation\n"
    "• `help` — this message\n"
    "Metrics: " + ", ".join(get_args(AlertMetric)) + "."
)

_METRICS: tuple[str, ...] = get_args(AlertMetric)
_METRIC_WORDS = {
    **{m: m for m in _METRICS},
    **METRIC_ALIASES,
    "money": "revenue",
    "clicks": "ctr",
    "click-through": "ctr",
    "entropy": "ne",
    "fallbacks": "fallback_rate",
    "error": "error_rate",
    "calibrated": "calibration",
}
_MENTION = re.compile(r"<@[^>\s]+>")
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
_TIME_WORDS = ("since", "from", "at")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class Investigate:
    """``investigate [EXPERIMENT] METRIC [since TIME]``."""

    metric: AlertMetric
    experiment: str | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class Status:
    """``status EXPERIMENT``."""

    experiment: str


@dataclass(frozen=True)
class Report:
    """``report INVESTIGATION_ID``."""

    investigation_id: str


@dataclass(frozen=True)
class Kill:
    """``kill EXPERIMENT [REASON]``: a proposal that needs approval."""

    experiment: str
    reason: str = ""


@dataclass(frozen=True)
class Decide:
    """``approve ID`` or ``reject ID``."""

    mitigation_id: str
    approve: bool


@dataclass(frozen=True)
class Help:
    """``help`` (or nothing at all)."""


@dataclass(frozen=True)
class Invalid:
    """A known command word used wrongly; ``problem`` says how to fix it."""

    verb: str
    problem: str


@dataclass(frozen=True)
class Question:
    """Free-form text that is not a command."""

    text: str


Command = Investigate | Status | Report | Kill | Decide | Help | Invalid | Question


def _metric(word: str) -> AlertMetric | None:
    name = _METRIC_WORDS.get(word.lower().strip(".,?!"))
    return cast(AlertMetric, name) if name is not None else None


def parse_time(text: str, now: datetime) -> datetime | None:
    """Read ``HH:MM[:SS]`` (UTC, the latest such moment not after ``now``) or an ISO date-time.

    Args:
        text: The time as typed.
        now: The current time (UTC) that a bare clock time is resolved against.

    Returns:
        An aware UTC datetime, or None when ``text`` is not a time.
    """
    text = text.strip().rstrip(".,?!")
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    clock = _CLOCK.match(text)
    if clock:
        hour, minute, second = int(clock[1]), int(clock[2]), int(clock[3] or 0)
        ts = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
        return ts - timedelta(days=1) if ts > now else ts
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def _words(text: str) -> list[str]:
    return _MENTION.sub(" ", text).split()


def _parse_investigate(args: list[str], now: datetime) -> Investigate | Invalid:
    since: datetime | None = None
    for i, word in enumerate(args):
        if word.lower() in _TIME_WORDS:
            if i + 1 >= len(args):
                return Invalid("investigate", f"`{word}` needs a time, e.g. `{word} 08:32`")
            since = parse_time(args[i + 1], now)
            if since is None:
                return Invalid(
                    "investigate", f"`{args[i + 1]}` is not a time; use HH:MM (UTC) or ISO 8601"
                )
            if i + 2 != len(args):
                return Invalid("investigate", f"unexpected words after the time: {args[i + 2 :]}")
            args = args[:i]
            break
    metrics = [(i, m) for i, w in enumerate(args) if (m := _metric(w)) is not None]
    if not metrics:
        return Invalid(
            "investigate",
            "which metric? e.g. `investigate 879 revenue since 08:32`; metrics: "
            + ", ".join(_METRICS),
        )
    if len(metrics) > 1:
        return Invalid("investigate", "name one metric per investigation")
    idx, metric = metrics[0]
    rest = [w for i, w in enumerate(args) if i != idx and w.lower() != "experiment"]
    if len(rest) > 1:
        return Invalid("investigate", f"expected one experiment id, got {rest}")
    experiment = rest[0] if rest else None
    if experiment is not None and not _ID.match(experiment):
        return Invalid("investigate", f"`{experiment}` is not an experiment id")
    return Investigate(metric=metric, experiment=experiment, since=since)


def _one_id(verb: str, args: list[str], what: str) -> str | Invalid:
    if len(args) != 1 or not _ID.match(args[0]):
        return Invalid(verb, f"usage: `{verb} {what}`")
    return args[0]


def parse_command(text: str, *, now: datetime) -> Command:
    """Parse one message or slash-command text.

    Args:
        text: What the user typed (a leading ``<@BOT>`` mention is ignored).
        now: The current time (UTC), for bare clock times.

    Returns:
        The command; a :class:`Question` when the text is not a command at all.
    """
    words = _words(text)
    if not words:
        return Help()
    verb, args = words[0].lower(), words[1:]
    if verb in ("help", "?"):
        return Help()
    if verb == "investigate":
        return _parse_investigate(args, now)
    if verb == "status":
        ident = _one_id(verb, [a for a in args if a.lower() != "experiment"], "EXPERIMENT")
        return ident if isinstance(ident, Invalid) else Status(experiment=ident)
    if verb == "report":
        ident = _one_id(verb, args, "INVESTIGATION_ID")
        return ident if isinstance(ident, Invalid) else Report(investigation_id=ident)
    if verb in ("approve", "reject"):
        ident = _one_id(verb, args, "MITIGATION_ID")
        return ident if isinstance(ident, Invalid) else Decide(ident, approve=verb == "approve")
    if verb == "kill":
        if args and args[0].lower() == "experiment":
            args = args[1:]
        if not args or not _ID.match(args[0]):
            return Invalid(verb, "usage: `kill EXPERIMENT [reason]`")
        return Kill(experiment=args[0], reason=" ".join(args[1:]))
    return Question(text=_MENTION.sub(" ", text).strip())


_EXPERIMENT_IN_TEXT = re.compile(r"\b(?:experiment|exp|#)\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)", re.I)
_CLOCK_IN_TEXT = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")
_NUMBER = re.compile(r"(?<![\d:.])(\d{2,})(?![\d:])")


def question_hints(text: str, now: datetime) -> Investigate | None:
    """Pull what to investigate out of a free-form question.

    "why did revenue drop at 08:32 in 879?" gives revenue, experiment 879, since 08:32.

    Args:
        text: The question.
        now: The current time (UTC), for bare clock times.

    Returns:
        What to investigate, or None when no metric is named.
    """
    words = _words(text)
    metric = next((m for w in words if (m := _metric(w)) is not None), None)
    if metric is None:
        return None
    clocks = [w for w in words if _CLOCK.match(w.rstrip(".,?!"))]
    since = parse_time(clocks[0], now) if clocks else None
    named = _EXPERIMENT_IN_TEXT.search(text)
    number = _NUMBER.search(_CLOCK_IN_TEXT.sub(" ", text))
    experiment = named[1].rstrip(".,?!") if named else (number[1] if number else None)
    return Investigate(metric=metric, experiment=experiment, since=since)
