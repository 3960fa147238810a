"""The pure command parser: the grammar, times, and hints pulled out of free-form questions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.slack.commands import (
    Decide,
    Help,
    Invalid,
    Investigate,
    Kill,
    Question,
    Report,
    Status,
    parse_command,
    parse_time,
    question_hints,
)

NOW = datetime(2026, 11, 20, 9, 15, tzinfo=UTC)


def at(hour: int, minute: int, day: int = 20) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("investigate 879 revenue since 08:32", Investigate("revenue", "879", at(8, 32))),
        ("<@U0BOT> investigate 879 revenue since 08:32", Investigate("revenue", "879", at(8, 32))),
        ("Investigate revenue 879", Investigate("revenue", "879", None)),
        (
            "investigate experiment 879 fallback from 8:05",
            Investigate("fallback_rate", "879", at(8, 5)),
        ),
        ("investigate ctr", Investigate("ctr", None, None)),
        ("investigate latency since 10:00", Investigate("latency_p99", None, at(10, 0, day=19))),
        (
            "investigate 879 ne since 2026-11-20T07:00:00Z",
            Investigate("ne", "879", at(7, 0)),
        ),
        ("status 879", Status("879")),
        ("status experiment 879", Status("879")),
        ("report inv-3f2a", Report("inv-3f2a")),
        ("kill 879", Kill("879", "")),
        ("kill experiment 879 fallback spike on android", Kill("879", "fallback spike on android")),
        ("approve m-12", Decide("m-12", approve=True)),
        ("reject m-12", Decide("m-12", approve=False)),
        ("help", Help()),
        ("", Help()),
        ("<@U0BOT>", Help()),
    ],
)
def test_grammar(text: str, expected: object) -> None:
    assert parse_command(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "verb", "fragment"),
    [
        ("investigate 879", "investigate", "which metric"),
        ("investigate 879 revenue since", "investigate", "needs a time"),
        ("investigate 879 revenue since lunch", "investigate", "not a time"),
        ("investigate 879 revenue ctr", "investigate", "one metric"),
        ("investigate 879 880 revenue", "investigate", "one experiment"),
        ("investigate 879 revenue since 08:32 please", "investigate", "after the time"),
        ("status", "status", "usage"),
        ("status 879 880", "status", "usage"),
        ("report", "report", "usage"),
        ("kill", "kill", "usage"),
        ("approve", "approve", "usage"),
    ],
)
def test_grammar_errors_say_how_to_fix_them(text: str, verb: str, fragment: str) -> None:
    result = parse_command(text, now=NOW)
    assert isinstance(result, Invalid)
    assert result.verb == verb and fragment in result.problem


def test_free_form_is_a_question() -> None:
    result = parse_command("<@U0BOT> why did revenue drop at 08:32?", now=NOW)
    assert result == Question("why did revenue drop at 08:32?")


def test_parse_time() -> None:
    assert parse_time("08:32", NOW) == at(8, 32)
    assert parse_time("09:15", NOW) == at(9, 15)  # now itself is not in the future
    assert parse_time("09:16", NOW) == at(9, 16, day=19)
    assert parse_time("2026-11-20T08:32", NOW) == at(8, 32)
    assert parse_time("2026-11-20T09:32+01:00", NOW) == at(8, 32)
    assert parse_time("24:00", NOW) is None
    assert parse_time("soon", NOW) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("why did revenue drop at 08:32?", Investigate("revenue", None, at(8, 32))),
        ("why did revenue drop at 08:32 in 879?", Investigate("revenue", "879", at(8, 32))),
        ("is experiment 879 hurting ctr?", Investigate("ctr", "879", None)),
        (
            "what happened to latency on #880 since 7:45",
            Investigate("latency_p99", "880", at(7, 45)),
        ),
        ("how are you today?", None),
    ],
)
def test_question_hints(text: str, expected: Investigate | None) -> None:
    assert question_hints(text, NOW) == expected
