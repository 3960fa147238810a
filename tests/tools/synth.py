"""Small synthetic telemetry worlds with known faults, written to DuckDB or SQLite.

Independent of the simulator: predictions are drawn first and labels from them, so a healthy
model is calibrated by construction; each fault edits the frames in a known way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import sqlalchemy as sa

from tools.telemetry import CUBE_SUMS, TelemetryReader
from tools.toolbox import ExperimentInfo, ModelInfo, Toolbox

T0 = datetime(2026, 11, 20, 6, 0)
COUNTRIES = {"US": 0.4, "BR": 0.2, "IN": 0.2, "DE": 0.2}
PLATFORMS = {"ios": 0.45, "android": 0.45, "web": 0.1}
AD_TYPES = {"feed": 0.7, "video": 0.3}


@dataclass
class Fault:
    """A fault on ``arm`` of the experiment (or on all traffic with ``arm=None``)."""

    kind: str
    start: int
    severity: float
    arm: str | None = "test"
    where: dict[str, str] = field(default_factory=dict)
    end: int | None = None


@dataclass
class World:
    minutes: int = 120
    rpm: int = 2000
    units: int = 20000
    exp_share: float = 0.5
    arms: dict[str, float] = field(default_factory=lambda: {"control": 1.0, "test": 1.0})
    base_ctr: float = 0.02
    base_fallback: float = 0.005
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0
    experiments: int = 1


def _pick(rng: np.random.Generator, mix: dict[str, float], n: int) -> np.ndarray:
    keys = list(mix)
    return np.asarray(keys)[rng.choice(len(keys), size=n, p=np.asarray(list(mix.values())))]


def build(world: World) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Requests, exposures and model snapshots of ``world``."""
    rng = np.random.default_rng(world.seed)
    n = world.minutes * world.rpm
    minute = np.repeat(np.arange(world.minutes), world.rpm)
    ts = pd.to_datetime(T0) + pd.to_timedelta(minute * 60 + rng.uniform(0, 59.9, n), unit="s")
    unit = rng.integers(0, world.units, n)
    unit_rng = np.random.default_rng(world.seed + 1)
    u_country = _pick(unit_rng, COUNTRIES, world.units)
    u_platform = _pick(unit_rng, PLATFORMS, world.units)
    u_slot = unit_rng.random(world.units)
    arm_names = list(world.arms)
    weights = np.asarray(list(world.arms.values()))
    u_arm = np.asarray(arm_names)[
        np.searchsorted(np.cumsum(weights) / weights.sum(), unit_rng.random(world.units))
    ]
    country, platform = u_country[unit], u_platform[unit]
    ad_type = _pick(rng, AD_TYPES, n)
    # Predictions: log-normal around the base CTR; labels drawn from them (calibrated).
    pred = np.clip(world.base_ctr * np.exp(rng.normal(-0.18, 0.6, n)), 1e-5, 0.9)
    label = (rng.random(n) < pred).astype(int)
    fallback = rng.random(n) < world.base_fallback
    revenue = label * rng.uniform(0.5, 1.5, n)
    latency = rng.lognormal(np.log(30), 0.3, n)
    error = rng.random(n) < 0.001
    in_exp = u_slot[unit] < world.exp_share
    arm = np.where(in_exp, u_arm[unit], "")
    model = np.where(arm == "test", "m_test", "m_prod")
    keep_exposure = in_exp.copy()
    for f in world.faults:
        mask = (minute >= f.start) & (minute < (f.end or world.minutes))
        if f.arm is not None:
            mask &= arm == f.arm
        for dim, value in f.where.items():
            mask &= {"country": country, "platform": platform, "ad_type": ad_type}[dim] == value
        hit = mask & (rng.random(n) < (f.severity if f.kind in _SHARES else 1.0))
        if f.kind == "fallback":
            fallback |= hit
        elif f.kind == "nan":
            pred = np.where(hit, np.nan, pred)
        elif f.kind == "constant":
            pred = np.where(hit, 0.0137, pred)
        elif f.kind == "miscalibration":
            pred = np.where(hit, np.clip(pred * f.severity, 0, 1), pred)
        elif f.kind == "noise":
            logit = np.log(pred / (1 - pred)) + rng.normal(0, f.severity, n)
            pred = np.where(hit, 1 / (1 + np.exp(-logit)), pred)
        elif f.kind == "infra":
            error |= hit
            latency = np.where(hit, latency * 4, latency)
        elif f.kind == "click_loss":
            label = np.where(hit, 0, label)
        elif f.kind == "unit_loss":
            lost_units = unit_rng.random(world.units) < f.severity
            keep_exposure &= ~(mask & lost_units[unit])
    requests = pd.DataFrame(
        {
            "ts": ts,
            "request_id": np.arange(n, dtype=np.int64),
            "unit_id": unit.astype(np.int64),
            "country": country,
            "platform": platform,
            "ad_type": ad_type,
            "model_id": model,
            "model_version": "1",
            "prediction": pred,
            "fallback": fallback,
            "label": label,
            "revenue": revenue,
            "latency_ms": latency,
            "error": error,
        }
    )
    exp_rows = np.flatnonzero(keep_exposure)
    exposures = pd.DataFrame(
        {
            "ts": ts[exp_rows],
            "request_id": exp_rows.astype(np.int64),
            "unit_id": unit[exp_rows].astype(np.int64),
            "experiment_id": "e1",
            "arm": arm[exp_rows],
        }
    )
    snapshots = pd.DataFrame(
        {
            "model_id": ["m_prod", "m_test"],
            "model_version": ["1", "1"],
            "trained_at": [T0 - timedelta(minutes=30)] * 2,
            "published_at": [T0 - timedelta(minutes=20)] * 2,
            "training_ne": [0.9, 0.9],
            "training_calibration": [1.0, 1.0],
        }
    )
    return requests, exposures, snapshots


_SHARES = {"fallback", "nan", "constant", "infra", "click_loss"}


def write(
    url: str, requests: pd.DataFrame, exposures: pd.DataFrame, snapshots: pd.DataFrame
) -> sa.Engine:
    """Write the three tables to a ``duckdb:///`` or ``sqlite:///`` file URL; return an engine."""
    tables = (("requests", requests), ("exposures", exposures), ("model_snapshots", snapshots))
    path = url.split(":///", 1)[1]
    if url.startswith("duckdb"):
        con = duckdb.connect(path)
        for name, frame in tables:
            con.register("frame", frame)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM frame")
            con.unregister("frame")
        con.close()
    else:
        with sqlite3.connect(path) as con:
            for name, frame in tables:
                frame.to_sql(name, con, if_exists="replace", index=False)
    return sa.create_engine(url)


def at(minute: float) -> datetime:
    """The timestamp of a world minute."""
    return T0 + timedelta(minutes=minute)


EXPERIMENT = ExperimentInfo(
    id="e1",
    name="synthetic",
    layer="ranking",
    arms={"control": 1.0, "test": 1.0},
    control="control",
    arm_models={"control": "m_prod", "test": "m_test"},
)
"""The one experiment of every synthetic world: control serves ``m_prod``, test ``m_test``."""


def toolbox(reader: TelemetryReader) -> Toolbox:
    """The checks over a synthetic world's telemetry (experiment ``e1``, production ``m_prod``)."""
    models = {"m_prod": ModelInfo("m_prod", None), "m_test": ModelInfo("m_test", None)}
    return Toolbox(reader, {"e1": EXPERIMENT}, models, "m_prod")


def duckdb_toolboxes(worlds: Mapping[str, World], base: Path) -> dict[str, Toolbox]:
    """A toolbox per world, each written to its own DuckDB file under ``base``."""
    return {
        name: toolbox(TelemetryReader(write(f"duckdb:///{base / name}", *build(world))))
        for name, world in worlds.items()
    }


def random_cube(
    rng: np.random.Generator,
    rows: int,
    minutes: tuple[int, int],
    arms: dict[str, float],
    models: dict[str, object],
) -> pd.DataFrame:
    """Cube rows (one per minute, arm, model and dimension values) with random sums, for the
    frame's array reads against the pandas reads they replace: every :data:`CUBE_SUMS` column a
    small whole number, ``sum_pred`` not (summation order shows). ``minutes``: ``[lo, hi)``;
    ``arms``: arm -> probability; ``models``: ``model_id``/``model_version`` -> a value or
    choices."""
    data: dict[str, object] = {
        "minute": rng.integers(*minutes, rows),
        "arm": rng.choice(list(arms), rows, p=list(arms.values())),
        **{k: rng.choice(v, rows) if isinstance(v, list) else v for k, v in models.items()},
        "country": rng.choice(["BR", "DE", "US"], rows),
        "platform": rng.choice(["android", "ios", "web"], rows),
        "ad_type": rng.choice(["feed", "story"], rows),
    }
    for col in CUBE_SUMS:
        data[col] = rng.integers(0, 50, rows).astype(float)
    frame = pd.DataFrame(data)
    frame["sum_pred"] = rng.random(rows) * 3.7
    return frame
