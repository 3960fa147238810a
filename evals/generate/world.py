"""Drawing a world: clock, traffic, layers, models and experiments (the fault comes after).

Every draw comes from one ``numpy`` generator seeded by the scenario's seed, in a fixed order, so
the same seed gives the same world. The distribution is documented in :mod:`evals.generate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from evals.sim.economy import diurnal_ctr, diurnal_traffic
from evals.sim.scenario import DEFAULT_DIMENSIONS

__all__ = ["Exp", "Timeline", "WorldDraw", "draw_world"]

# Requests simulated up to the alert, at most (keeps a world to ~1-2 s of simulation).
REQUEST_BUDGET = 1_500_000
MIN_BASELINE = 40
MAX_BASELINE = 150
FOLLOW_UP_MINUTES = 90  # minutes of world after the alert, for follow-ups

LAYER_NAMES = (
    "ranking",
    "ads_load",
    "ui",
    "pricing",
    "calibration",
    "retrieval",
    "creative",
    "bidding",
    "feed-layout",
    "notifications",
    "Search.Ranking",
    "L7",
)
CONTROL_NAMES = ("control", "baseline", "ctrl", "holdout", "A", "status_quo", "Control", "prod")
TREATMENT_NAMES = (
    "test",
    "treatment",
    "B",
    "C",
    "variant_1",
    "variant-2",
    "new_model",
    "v2.1",
    "candidate",
    "challenger",
    "Treatment",
    "big bid",
    "exp",
    "arm3",
)
EXP_TITLES = (
    "Ranking Model Improvements",
    "New creative scorer",
    "Bid shading v3",
    "Feed density",
    "Calibration tweak",
    "Retrieval expansion",
    "Video boost",
    "Reserve price test",
    "Layout refresh",
    "Cold-start ranker",
)


@dataclass
class Exp:
    """An experiment being drawn (mutable until the scenario is written)."""

    id: str
    name: str
    layer: str
    traffic_pct: float
    control: str
    arms: dict[str, dict[str, Any]]
    start_minute: int = 0
    end_minute: int | None = None

    def weight(self, arm: str) -> float:
        """The arm's share of the experiment's units."""
        total = sum(float(a.get("weight", 1.0)) for a in self.arms.values())
        return float(self.arms[arm].get("weight", 1.0)) / total

    def treatments(self) -> list[str]:
        """Arms other than the control."""
        return [a for a in self.arms if a != self.control]

    def active(self, minute: int) -> bool:
        """Whether the experiment allocates units at ``minute``."""
        return self.start_minute <= minute and (self.end_minute is None or minute < self.end_minute)

    def spec(self) -> dict[str, Any]:
        """The scenario's ``world.experiments[]`` entry."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "layer": self.layer,
            "traffic_pct": self.traffic_pct,
        }
        if self.control != "control":
            out["control"] = self.control
        out["arms"] = {name: dict(arm) for name, arm in self.arms.items()}
        if self.start_minute:
            out["start_minute"] = self.start_minute
        if self.end_minute is not None:
            out["end_minute"] = self.end_minute
        return out


@dataclass(frozen=True)
class Timeline:
    """The minutes that matter: onset, alert and the world's length."""

    onset: int
    lag: int
    minutes: int

    @property
    def alert(self) -> int:
        """The alert's minute (``onset + lag``)."""
        return self.onset + self.lag


@dataclass
class WorldDraw:
    """A drawn world: what the scenario's ``world`` holds plus what strength needs."""

    start: datetime
    diurnal: bool
    requests_per_minute: int
    base_ctr: float
    timeline: Timeline
    models: list[dict[str, Any]]
    production_model: str
    model_layer: str
    experiments: list[Exp]
    dimensions: dict[str, dict[str, float]] = field(default_factory=dict)

    def model(self, model_id: str) -> dict[str, Any]:
        """A model entry by id."""
        return next(m for m in self.models if m["id"] == model_id)

    def traffic(self, minutes: np.ndarray) -> np.ndarray:
        """Mean requests at each world minute (the diurnal curve applied)."""
        rate = np.full(minutes.shape, float(self.requests_per_minute))
        if self.diurnal:
            rate *= diurnal_traffic(self._minute_of_day(minutes))
        return rate

    def ctr(self, minutes: np.ndarray) -> np.ndarray:
        """Background CTR at each world minute."""
        ctr = np.full(minutes.shape, self.base_ctr)
        if self.diurnal:
            ctr *= diurnal_ctr(self._minute_of_day(minutes))
        return ctr

    def _minute_of_day(self, minutes: np.ndarray) -> np.ndarray:
        offset = self.start.hour * 60 + self.start.minute
        return np.asarray((minutes + offset) % 1440, dtype=np.float64)

    def hour_at(self, minute: int) -> float:
        """The UTC hour of day at a world minute."""
        return ((self.start.hour * 60 + self.start.minute + minute) % 1440) / 60.0

    def mix(self, dim: str) -> dict[str, float]:
        """The dimension's shares (the world's own or the default)."""
        return self.dimensions.get(dim) or DEFAULT_DIMENSIONS[dim]

    def world_spec(self) -> dict[str, Any]:
        """The scenario's ``world`` block."""
        out: dict[str, Any] = {
            "start": self.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "minutes": self.timeline.minutes,
            "requests_per_minute": self.requests_per_minute,
            "base_ctr": self.base_ctr,
            "diurnal": self.diurnal,
        }
        if self.dimensions:
            out["dimensions"] = {k: dict(v) for k, v in self.dimensions.items()}
        out["models"] = [dict(m) for m in self.models]
        out["production_model"] = self.production_model
        out["experiments"] = [e.spec() for e in self.experiments]
        return out


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _pick(rng: np.random.Generator, values: tuple[str, ...] | list[str]) -> str:
    return str(values[int(rng.integers(len(values)))])


def _timeline(rng: np.random.Generator, rpm: int, lag: int | None = None) -> Timeline:
    lag = lag if lag is not None else round(_log_uniform(rng, 5, 60))
    # 1.45: the diurnal peak, so that a world at its busiest still fits the budget.
    fits = int(REQUEST_BUDGET / (rpm * 1.45)) - lag
    high = max(MIN_BASELINE, min(MAX_BASELINE, fits))
    onset = int(rng.integers(MIN_BASELINE, high + 1))
    return Timeline(onset=onset, lag=lag, minutes=onset + lag + FOLLOW_UP_MINUTES)


def _models(rng: np.random.Generator) -> tuple[list[dict[str, Any]], str]:
    style = int(rng.integers(3))
    count = 1 + int(rng.integers(1, 5))
    base = int(rng.integers(10, 90))
    if style == 0:
        ids = [f"ctr_v{base + i}" for i in range(count)]
    elif style == 1:
        ids = [f"pctr-2026.{base + i}" for i in range(count)]
    else:
        ids = [f"{_pick(rng, ('dlrm', 'dcn', 'Tower', 'gbdt'))}{base + i}" for i in range(count)]
    prod_quality = round(float(rng.uniform(0.72, 0.8)), 3)
    models = []
    for i, model_id in enumerate(ids):
        quality = prod_quality if i == 0 else prod_quality + float(rng.uniform(-0.03, 0.03))
        model: dict[str, Any] = {"id": model_id, "quality": round(min(quality, 0.95), 3)}
        if rng.random() < 0.6:
            model["refresh_minutes"] = int(rng.choice([30, 60, 90, 120]))
        models.append(model)
    return models, ids[0]


def _exp_ids(rng: np.random.Generator, count: int) -> list[str]:
    style = int(rng.integers(3))
    numbers = rng.choice(np.arange(100, 9999), size=count, replace=False)
    if style == 0:
        return [str(n) for n in numbers]
    if style == 1:
        return [f"exp-{n}" for n in numbers]
    return [f"{_pick(rng, ('rank', 'ads', 'ui', 'bid'))}_{n}" for n in numbers]


def _arms(rng: np.random.Generator) -> tuple[str, list[str], list[float] | None]:
    count = int(rng.choice([2, 3, 4], p=[0.55, 0.3, 0.15]))
    control = _pick(rng, CONTROL_NAMES) if rng.random() < 0.6 else "control"
    pool = [n for n in TREATMENT_NAMES if n != control]
    names = [str(n) for n in rng.choice(pool, size=count - 1, replace=False)]
    weights = None
    if rng.random() < 0.5:
        weights = [float(rng.choice([0.5, 1.0, 2.0, 3.0])) for _ in range(count)]
    return control, names, weights


def _experiments(
    rng: np.random.Generator,
    timeline: Timeline,
    models: list[dict[str, Any]],
    production: str,
) -> tuple[list[Exp], str]:
    n_layers = int(rng.integers(2, 9))
    n_exps = max(n_layers, int(rng.integers(5, 41)))
    layers = [str(x) for x in rng.choice(LAYER_NAMES, size=n_layers, replace=False)]
    model_layer = layers[0]
    per_layer = [1] * n_layers
    for i in rng.integers(0, n_layers, size=n_exps - n_layers):
        per_layer[int(i)] += 1
    ids = _exp_ids(rng, n_exps)
    candidates = [m["id"] for m in models if m["id"] != production]
    out: list[Exp] = []
    for layer, count in zip(layers, per_layer, strict=True):
        room = 95.0 / count
        for _ in range(count):
            pct = round(float(rng.uniform(1.0, min(40.0, room))), 1)
            control, treatments, weights = _arms(rng)
            arms: dict[str, dict[str, Any]] = {}
            for j, name in enumerate([control, *treatments]):
                arm: dict[str, Any] = {}
                if layer == model_layer and name != control and candidates:
                    arm["model"] = _pick(rng, candidates)
                elif layer == model_layer and name == control and rng.random() < 0.5:
                    arm["model"] = production
                elif "load" in layer and name != control:
                    arm["ad_load"] = float(rng.choice([0.9, 0.95, 1.05, 1.1]))
                if weights is not None:
                    arm["weight"] = weights[j]
                arms[name] = arm
            exp_id = ids[len(out)]
            exp = Exp(
                id=exp_id,
                name=f"{_pick(rng, EXP_TITLES)} ({exp_id})",
                layer=layer,
                traffic_pct=pct,
                control=control,
                arms=arms,
            )
            if rng.random() < 0.25 and timeline.onset > 25:
                exp.start_minute = int(rng.integers(1, timeline.onset - 20))
            if rng.random() < 0.1:
                exp.end_minute = int(rng.integers(exp.start_minute + 10, timeline.minutes))
            out.append(exp)
    return out, model_layer


def _dimensions(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    if rng.random() < 0.7:
        return {}
    countries = ["US", "BR", "IN", "DE", "JP", "MX", "ID"]
    chosen = [str(c) for c in rng.choice(countries, size=int(rng.integers(3, 7)), replace=False)]
    shares = rng.dirichlet(np.full(len(chosen), 3.0))
    rounded = [round(float(s), 3) for s in shares]
    rounded[0] = round(1.0 - sum(rounded[1:]), 3)
    if min(rounded) <= 0:
        return {}
    return {"country": dict(zip(chosen, rounded, strict=True))}


def draw_world(rng: np.random.Generator, *, lag: int | None = None) -> WorldDraw:
    """Draw a world (no fault yet) from the documented distribution.

    Args:
        rng: The scenario's generator.
        lag: Minutes from the onset to the alert; drawn (5-60, log-uniform) if None.
    """
    day = int(rng.integers(0, 28))
    hour = int(rng.integers(0, 24))
    minute = int(rng.choice([0, 15, 30, 45]))
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=day, hours=hour, minutes=minute)
    diurnal = bool(rng.random() < 0.75)
    rpm = int(round(_log_uniform(rng, 1000, 20000), -1))
    timeline = _timeline(rng, rpm, lag)
    base_ctr = round(float(rng.uniform(0.01, 0.04)), 4)
    models, production = _models(rng)
    experiments, model_layer = _experiments(rng, timeline, models, production)
    return WorldDraw(
        start=start.replace(tzinfo=None),
        diurnal=diurnal,
        requests_per_minute=rpm,
        base_ctr=base_ctr,
        timeline=timeline,
        models=models,
        production_model=production,
        model_layer=model_layer,
        experiments=experiments,
        dimensions=_dimensions(rng),
    )
