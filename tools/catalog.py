"""What the Toolbox is told about the world: experiments, models, and the checks' settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from tools.checks import (
    AttributionParams,
    CalibrationParams,
    ChangePointParams,
    FallbackParams,
    InfraParams,
    NEParams,
    PredictionParams,
    SRMParams,
    StalenessParams,
)

__all__ = ["CHECKS", "CheckSettings", "ExperimentInfo", "ModelInfo"]

CHECKS: tuple[str, ...] = (
    "prediction",
    "calibration",
    "ne",
    "staleness",
    "fallback",
    "srm",
    "attribution",
    "change_point",
    "infra",
)
"""The Toolbox methods that are checks (each returns a CheckResult)."""


@dataclass(frozen=True)
class ExperimentInfo:
    """What the checks need to know about an experiment.

    Attributes:
        id: Experiment id.
        name: Human name.
        layer: Layer id.
        arms: Arm -> configured weight.
        control: The control arm.
        arm_models: Arm -> model id it serves (None: the production model).
        owner: Owner.
        launched_at: Launch time (UTC), if known.
    """

    id: str
    name: str
    layer: str
    arms: Mapping[str, float]
    control: str
    arm_models: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))
    owner: str = ""
    launched_at: datetime | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model's id and refresh cadence in minutes (None: it does not refresh)."""

    id: str
    refresh_minutes: int | None = None


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of every check and the windows the Toolbox reads.

    Attributes:
        baseline_minutes: Minutes before a window's start read as its baseline.
        season_minutes: Period of the seasonal baseline for all-traffic change points.
        max_blocks: Time blocks of a prediction histogram per fetched range.
    """

    baseline_minutes: int = 60
    season_minutes: int = 1440
    max_blocks: int = 96
    prediction: PredictionParams = field(default_factory=PredictionParams)
    calibration: CalibrationParams = field(default_factory=CalibrationParams)
    ne: NEParams = field(default_factory=NEParams)
    staleness: StalenessParams = field(default_factory=StalenessParams)
    fallback: FallbackParams = field(default_factory=FallbackParams)
    srm: SRMParams = field(default_factory=SRMParams)
    attribution: AttributionParams = field(default_factory=AttributionParams)
    change_point: ChangePointParams = field(default_factory=ChangePointParams)
    infra: InfraParams = field(default_factory=InfraParams)
