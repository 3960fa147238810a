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
    "NotFoundError",
    "RetryableError",
    "StateError",
    "TelemetryError",
    "TerminalError",
    "VigilError",
]


class VigilError(Exception):
    """Base of every error Vigil raises on purpose."""


class TerminalError(VigilError):
    """Trying again with the same input will fail again."""


class RetryableError(VigilError):
    """A passing condition (timeout, rate limit, busy store); the same call may succeed later."""


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
    """The telemetry store could not answer (missing table or column, bad mapping)."""
