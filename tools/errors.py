"""The one error hierarchy of Vigil.

Every package raises these (``tools`` imports nothing of the project, so the hierarchy lives here
and the other packages import it). A configuration error names the field and the value; a retryable
error is distinct from a terminal one, so callers can decide whether trying again can help.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApprovalError",
    "ConfigError",
    "ConfigProblems",
    "NotFoundError",
    "RetryableError",
    "SnapshotUnavailable",
    "StateError",
    "StoreBusy",
    "TelemetryError",
    "TelemetryQueryError",
    "TelemetryUnavailable",
    "TerminalError",
    "VigilError",
]


class VigilError(Exception):
    """Base of every error Vigil raises on purpose."""


class TerminalError(VigilError):
    """Trying again with the same input will fail again."""


class RetryableError(VigilError):
    """A passing condition (timeout, rate limit, busy store); the same call may succeed later."""


class StoreBusy(RetryableError):
    """The state store stayed locked by other writers past the retry budget; try again."""


class SnapshotUnavailable(RetryableError):
    """A remote allocator has no good configuration snapshot yet (server not reached, or every
    snapshot it sent was refused); it may have one later."""


class ConfigError(TerminalError):
    """Bad configuration or input, named by its field path and offending value.

    Args:
        field: Dotted path of the bad field, e.g. ``experiments[2].arms.test.weight``.
        value: The offending value (shown with ``repr``).
        message: What is wrong, in words a user can act on.
    """

    def __init__(self, field: str, value: Any, message: str) -> None:
        self.field = field
        self.value = value
        self.message = message
        super().__init__(f"{field}: {message} (got {value!r})")


class ConfigProblems(ConfigError):
    """Several configuration problems found at once, each a :class:`ConfigError` in ``problems``.

    Its field, value and message are the first problem's; ``str()`` gives one problem a line.
    """

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.field, first.value, first.message)
        self.problems = list(problems)
        self.args = ("\n".join(str(p) for p in self.problems),)


class NotFoundError(TerminalError):
    """An id that names nothing: an unknown experiment, investigation or mitigation."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"unknown {kind} {ident!r}")


class StateError(TerminalError):
    """A state change the current state does not allow (an illegal rollout transition)."""


class ApprovalError(TerminalError):
    """An approval refused by policy: unauthorised approver, proposer approving alone."""


class TelemetryError(VigilError):
    """The telemetry store could not answer; raised as one of its two kinds below.

    :class:`TelemetryUnavailable` (retryable) when the store could not be reached or was busy,
    :class:`TelemetryQueryError` (terminal) when it cannot answer the query as asked.
    """


class TelemetryUnavailable(TelemetryError, RetryableError):
    """The telemetry store could not be reached, timed out or was locked; the same read may work
    later."""


class TelemetryQueryError(TelemetryError, TerminalError):
    """The telemetry store cannot answer the query as asked (missing table or column, a bad
    mapping, data of the wrong shape); asking again fails again."""
