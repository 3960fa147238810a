"""Deterministic diagnostic checks and the telemetry reader: pure, data in, typed result out.

The errors and the result shape load eagerly (every package uses them); the reader, the Toolbox
and their vocabulary load on first use, so ``import tools.errors`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from tools.aggregates import HistogramSpec, Subject
    from tools.catalog import CheckSettings, ExperimentInfo, ModelInfo
    from tools.metrics import METRICS
    from tools.registry import CHECKS, CheckName, Checks, RoutedChecks
    from tools.schema import TelemetrySchema
    from tools.telemetry import TelemetryReader
    from tools.toolbox import Toolbox

__all__ = [
    "CHECKS",
    "METRICS",
    "ApprovalError",
    "CheckName",
    "CheckResult",
    "CheckSettings",
    "Checks",
    "ConfigError",
    "Effect",
    "Evidence",
    "ExperimentInfo",
    "HistogramSpec",
    "ModelInfo",
    "NotFoundError",
    "RetryableError",
    "RoutedChecks",
    "StateError",
    "Subject",
    "TelemetryError",
    "TelemetryReader",
    "TelemetrySchema",
    "TerminalError",
    "Toolbox",
    "Verdict",
    "VigilError",
]

_LAZY = {
    "CHECKS": "tools.registry",
    "CheckName": "tools.registry",
    "Checks": "tools.registry",
    "RoutedChecks": "tools.registry",
    "CheckSettings": "tools.catalog",
    "ExperimentInfo": "tools.catalog",
    "ModelInfo": "tools.catalog",
    "HistogramSpec": "tools.aggregates",
    "Subject": "tools.aggregates",
    "METRICS": "tools.vocabulary",
    "TelemetrySchema": "tools.schema",
    "TelemetryReader": "tools.telemetry",
    "Toolbox": "tools.toolbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tools' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
