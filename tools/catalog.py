"""What the Toolbox knows of the world: experiments, models (and what served), check settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

import numpy as np
import pandas as pd

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
    SubjectFrame,
)
from tools.checks._snapshots import top_served
from tools.telemetry import TelemetryReader

__all__ = [
    "CheckSettings",
    "ExperimentInfo",
    "ModelInfo",
    "cadence",
    "training_values",
]


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
    """A model's id and declared refresh cadence in minutes (None: not declared; the cadence is
    then read from the gaps between its published snapshots, :func:`cadence`)."""

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


def training_values(reader: TelemetryReader, frame: SubjectFrame, column: str) -> dict[str, float]:
    """Arm -> ``column`` (``training_ne``, ...) of the snapshot it served most in the window."""
    top, model_ids = top_served(frame, ("model_id", "model_version"))
    if not top:
        return {}
    snaps = reader.snapshots(model_ids)
    ids, versions = snaps["model_id"].to_numpy(object), snaps["model_version"].to_numpy(object)
    values = snaps[column].to_numpy(np.float64)
    out: dict[str, float] = {}
    for arm, (model_id, version) in top.items():
        row = np.flatnonzero((ids == model_id) & (versions == version))
        if row.size and np.isfinite(values[row[0]]):
            out[arm] = float(values[row[0]])
    return out


def cadence(models: Mapping[str, ModelInfo], model_id: str, snapshots: pd.DataFrame) -> int | None:
    """Refresh cadence: configured, else the median gap between published snapshots.

    A model registered without ``refresh_minutes`` falls back to its snapshots' gaps too.
    """
    info = models.get(model_id)
    if info is not None and info.refresh_minutes is not None:
        return info.refresh_minutes
    published = snapshots.loc[snapshots["model_id"] == model_id, "published_at"].sort_values()
    if len(published) < 3:
        return None
    gaps = published.diff().dropna().dt.total_seconds() / 60
    return round(float(gaps.median())) if len(gaps) else None
