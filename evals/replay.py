"""The simulated world's :class:`~lifecycle.inference.ModelRunner`, and preflight worlds.

:class:`WorldRunner` scores logged requests with the world's models. The simulator logs the
production model's prediction ``p`` of each request (the true CTR times the model's noise); a
candidate of noise sd ``σc`` scores it as ``p · exp(ε − v/2)`` with ``ε ~ N(0, v)``,
``v = max(σc² − σp², 0)``: as noisy as the candidate, calibrated like production. (A candidate
better than production cannot remove production's noise from a logged prediction, so it scores as
production does; the replay judges harm, not gains.) Then the candidate's own ``model:`` faults
that are active at the request's minute apply exactly as the simulator applies them:
``miscalibration`` multiplies, ``ne_regression`` adds logit noise (recalibrated),
``prediction_collapse`` makes a share invalid or constant. Draws are seeded by the scenario's seed,
the model and the request id, so a replay is reproducible.

:func:`preflight_world` puts a scenario's world in place for a preflight: its telemetry simulated
into a DuckDB file, its layers, models and experiments stored as drafts in a state store.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa

from evals.sim import economy as eco
from evals.sim import scenario_to_experiment_file, simulate
from evals.sim.bridge import minute_to_ts, world_snapshot
from evals.sim.faults import COLLAPSE_CODES
from evals.sim.scenario import Scenario
from evals.sim.shadow import log_shadow
from lifecycle.inference import InferenceError, Scored, ShadowLog
from lifecycle.service import ExperimentService
from tools.telemetry import TelemetryReader

__all__ = [
    "PREFLIGHT_MINUTES",
    "PREFLIGHT_SCENARIO",
    "PreflightWorld",
    "WorldRunner",
    "preflight_world",
    "write_shadow",
]

F64 = npt.NDArray[np.float64]


# Candidates before start, in one world: healthy (ctr_v42), miscalibrated (ctr_v43: every
# prediction x 1.4) and NaN-producing (ctr_v44: 5 % NaN) in experiments 900-902, which launch only
# at the last minute, so the replay reads production's (ctr_v41) requests; and 903 / 904, the
# healthy and the miscalibrated candidate in shadow mode for the whole hour.
PREFLIGHT_MINUTES = 60

PREFLIGHT_SCENARIO: dict[str, Any] = {
    "name": "preflight-candidates",
    "seed": 18,
    "world": {
        "start": "2026-11-18T09:00:00Z",
        "minutes": PREFLIGHT_MINUTES,
        "requests_per_minute": 2000,
        "models": [
            {"id": "ctr_v41", "quality": 0.75},
            {"id": "ctr_v42", "quality": 0.77},
            {"id": "ctr_v43", "quality": 0.76},
            {"id": "ctr_v44", "quality": 0.76},
        ],
        "production_model": "ctr_v41",
        "experiments": [
            {
                "id": f"90{i}",
                "name": name,
                "layer": "ranking",
                "traffic_pct": 10,
                "start_minute": PREFLIGHT_MINUTES - 1,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": model}},
            }
            for i, (name, model) in enumerate(
                [("healthy", "ctr_v42"), ("miscalibrated", "ctr_v43"), ("nan", "ctr_v44")]
            )
        ]
        + [
            {
                "id": f"90{3 + i}",
                "name": f"{name} in shadow",
                "layer": "ranking",
                "traffic_pct": 25,
                "shadow": True,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": model}},
            }
            for i, (name, model) in enumerate(
                [("healthy", "ctr_v42"), ("miscalibrated", "ctr_v43")]
            )
        ],
    },
    "faults": [
        {"kind": "miscalibration", "model": "ctr_v43", "start_minute": 0, "severity": 1.4},
        {
            "kind": "prediction_collapse",
            "model": "ctr_v44",
            "start_minute": 0,
            "severity": 0.05,
            "mode": "nan",
        },
    ],
    "alert": {"metric": "revenue", "minute": 30},
    "expect": {"root_cause": "none"},
}


class WorldRunner:
    """Scores logged requests with the models of a scenario's world (in process).

    Args:
        scenario: The world.
        reference: The model whose predictions the requests logged (production by default).
    """

    def __init__(self, scenario: Scenario, reference: str | None = None) -> None:
        self._scenario = scenario
        self._models = {m.id: m for m in scenario.world.models}
        self._reference = reference or scenario.world.production_model

    def _sd(self, model_id: str) -> float:
        return eco.noise_sd(self._models[model_id].quality)

    def score(self, model_id: str, version: str | None, requests: pd.DataFrame) -> Scored:
        """One prediction per request from ``model_id`` (its version is the world's).

        Raises:
            InferenceError: The world has no such model, or the requests no ``prediction``.
        """
        if model_id not in self._models:
            raise InferenceError(f"the world has no model {model_id!r}")
        if "prediction" not in requests.columns:
            raise InferenceError("the logged requests have no prediction column")
        began = time.perf_counter()
        logged = requests["prediction"].to_numpy(dtype=float)
        n = logged.shape[0]
        ids = requests["request_id"].to_numpy(dtype=np.int64) if n else np.zeros(0, np.int64)
        rng = np.random.default_rng(
            [self._scenario.seed, zlib.crc32(model_id.encode()), int(ids.sum() % (1 << 62))]
        )
        var = max(self._sd(model_id) ** 2 - self._sd(self._reference) ** 2, 0.0)
        pred = logged * np.exp(rng.normal(0.0, np.sqrt(var), n) - var / 2)
        pred = self._faults(model_id, requests, pred, rng)
        seconds = time.perf_counter() - began
        return Scored(pred, np.full(n, seconds * 1000.0 / max(n, 1)), seconds)

    def _faults(
        self, model_id: str, requests: pd.DataFrame, pred: F64, rng: np.random.Generator
    ) -> F64:
        faults = [f for f in self._scenario.faults if f.model == model_id]
        if not faults:
            return pred
        ts = pd.to_datetime(requests["ts"])
        if ts.dt.tz is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        start = pd.Timestamp(self._scenario.start).tz_localize(None)
        minutes = ((ts - start) / pd.Timedelta(minutes=1)).to_numpy(dtype=float)
        out = pred.copy()
        for f in faults:
            end = f.end_minute if f.end_minute is not None else float("inf")
            hit = (minutes >= f.start_minute) & (minutes < end)
            for dim, allowed in f.where.items():
                values = [allowed] if isinstance(allowed, str) else allowed
                hit &= requests[dim].isin(values).to_numpy()
            if f.kind == "miscalibration":
                out = np.where(hit, out * f.severity, out)
            elif f.kind == "ne_regression":
                noise = rng.normal(0.0, f.severity, out.shape[0])
                out = np.where(hit, out * np.exp(noise - f.severity**2 / 2), out)
            elif f.kind == "prediction_collapse":
                chosen = hit & (rng.random(out.shape[0]) < f.severity)
                mode = f.mode or "mixed"
                code = (
                    1 + np.minimum(rng.random(out.shape[0]) * 3, 2).astype(int)
                    if mode == "mixed"
                    else np.full(out.shape[0], COLLAPSE_CODES[mode])
                )
                clipped = np.clip(out, 1e-9, 1 - 1e-9)
                oor = np.log(clipped / (1 - clipped))
                mean = float(np.nanmean(out)) if np.isfinite(out).any() else 0.02
                bad = np.where(code == COLLAPSE_CODES["nan"], np.nan, oor)
                bad = np.where(code == COLLAPSE_CODES["constant"], mean, bad)
                out = np.where(chosen, bad, out)
        return np.asarray(out, dtype=float)


def write_shadow(scenario: Scenario, telemetry_url: str) -> int:
    """Log the shadow predictions of the world's ``shadow: true`` experiments.

    Allocation served control to their enrolled units; each unit's drawn arm and its candidate
    come from lifecycle (:func:`evals.sim.shadow.log_shadow` on the world's snapshot), and the
    world's runner scores them into the optional ``shadow_predictions`` table (docs/telemetry.md),
    replaced for those experiments.

    Returns:
        Shadow rows written.
    """
    if not any(e.shadow for e in scenario.world.experiments):
        return 0
    engine = sa.create_engine(telemetry_url)
    try:
        return log_shadow(
            engine,
            world_snapshot(scenario),
            lambda reference: WorldRunner(scenario, reference=reference),
            scenario,
            minute_to_ts(scenario, 0),
            minute_to_ts(scenario, scenario.world.minutes),
            replace=True,
        )
    finally:
        engine.dispose()


@dataclass
class PreflightWorld:
    """A scenario's world ready for a preflight."""

    scenario: Scenario
    service: ExperimentService
    reader: TelemetryReader
    runner: WorldRunner
    telemetry_url: str
    shadow: ShadowLog

    def close(self) -> None:
        """Release the stores."""
        self.service.close()


def preflight_world(scenario: Scenario, directory: str | Path) -> PreflightWorld:
    """Simulate the world's telemetry and store its experiments as drafts, under ``directory``.

    Returns:
        The world, its experiment core, a telemetry reader and the world's model runner.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    url = f"duckdb:///{root / 'telemetry.duckdb'}"
    simulate(scenario, url, replace=True)  # logs shadow_predictions for shadow experiments
    (root / "state.db").unlink(missing_ok=True)  # a world is built afresh
    service = ExperimentService(f"sqlite:///{root / 'state.db'}")
    service.create(scenario_to_experiment_file(scenario), actor="sim", reason="preflight world")
    return PreflightWorld(
        scenario, service, TelemetryReader(url), WorldRunner(scenario), url, ShadowLog(url)
    )
