"""Deterministic diagnostic checks: pure functions over the telemetry reader's aggregates.

Each returns a :class:`tools.result.CheckResult`; thresholds are named fields of a frozen params
dataclass with defaults, echoed in ``CheckResult.params``.
"""

from tools.checks._engine import SubjectFrame, Window
from tools.checks.attribution import AttributionParams, attribution_check
from tools.checks.calibration import CalibrationParams, calibration_check, calibration_interval
from tools.checks.change_point import ChangePointParams, change_point_check
from tools.checks.fallback import FallbackParams, fallback_check
from tools.checks.infra import InfraParams, infra_check
from tools.checks.ne import NEParams, ne_check, normalized_entropy
from tools.checks.prediction import PredictionParams, prediction_check
from tools.checks.srm import SRMParams, srm_check
from tools.checks.staleness import StalenessParams, staleness_check

__all__ = [
    "AttributionParams",
    "CalibrationParams",
    "ChangePointParams",
    "FallbackParams",
    "InfraParams",
    "NEParams",
    "PredictionParams",
    "SRMParams",
    "StalenessParams",
    "SubjectFrame",
    "Window",
    "attribution_check",
    "calibration_check",
    "calibration_interval",
    "change_point_check",
    "fallback_check",
    "infra_check",
    "ne_check",
    "normalized_entropy",
    "prediction_check",
    "srm_check",
    "staleness_check",
]
