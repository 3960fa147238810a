"""Deterministic diagnostic checks and the telemetry reader: pure, data in, typed result out."""

from tools.errors import (
    ApprovalError,
    ConfigError,
    NotFoundError,
    RetryableError,
    StateError,
    TelemetryError,
    TerminalError,
    VigilError,
)
from tools.result import CheckResult, Effect, Evidence, Verdict

__all__ = [
    "ApprovalError",
    "CheckResult",
    "ConfigError",
    "Effect",
    "Evidence",
    "NotFoundError",
    "RetryableError",
    "StateError",
    "TelemetryError",
    "TerminalError",
    "Verdict",
    "VigilError",
]
