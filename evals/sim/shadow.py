"""Shadow mode in the simulated world: the serving code's shadow log, through lifecycle's functions.

While an experiment is in lifecycle's ``shadow`` state, allocation puts nobody in it
(:func:`lifecycle.allocation.assign_many`, by which the world routes and logs exposures: every unit
is served production and no exposure is logged) and names the arm each unit drew
(:func:`lifecycle.shadow.shadow_many`) and that arm's candidate
(:func:`lifecycle.shadow.shadow_model`). :func:`log_shadow` does with them what a serving process
does: each request whose unit drew a candidate is scored by that candidate (a
:class:`~lifecycle.inference.ModelRunner`; in the scenario suite the world's own,
``evals.replay.WorldRunner``) and the prediction is appended to the optional
``shadow_predictions`` table (docs/telemetry.md). Nothing here decides an arm, so the simulator
and production agree by construction; a kill switch in the snapshot stops the scoring too.

The fixed-traffic simulator logs a shadow run once the world is written (``evals.replay.
write_shadow``, on :func:`evals.sim.bridge.world_snapshot`); the controller-driven ramp
(:func:`evals.sim.ramp.simulate_ramp`) logs it slice by slice on the state store's snapshot, so
the rollout controller judges the shadow run while the world runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from evals.sim.scenario import Scenario
from lifecycle.allocation import ConfigSnapshot
from lifecycle.inference import ModelRunner
from lifecycle.shadow import shadow_many, shadow_model

__all__ = ["SHADOW_CHUNK", "SHADOW_COLUMNS", "log_shadow", "shadow_experiments", "shadow_rows"]

SHADOW_COLUMNS = (
    "ts",
    "request_id",
    "experiment_id",
    "arm",
    "model_id",
    "model_version",
    "prediction",
    "latency_ms",
)
"""The ``shadow_predictions`` table's columns, in order (docs/telemetry.md)."""

SHADOW_CHUNK = timedelta(minutes=15)
"""How much of the window :func:`log_shadow` reads and scores at a time."""

_SHADOW_DDL = (
    "CREATE TABLE IF NOT EXISTS shadow_predictions (ts TIMESTAMP, request_id BIGINT, "
    "experiment_id VARCHAR, arm VARCHAR, model_id VARCHAR, model_version VARCHAR, "
    "prediction DOUBLE PRECISION, latency_ms DOUBLE PRECISION)"
)

RunnerFor = Callable[[str], ModelRunner]
"""The served (reference) model's id -> a runner that scores candidates beside it."""


def shadow_experiments(snapshot: ConfigSnapshot) -> list[str]:
    """Ids of the snapshot's experiments in shadow that no kill switch stops, in snapshot order."""
    return [
        exp_id
        for exp_id, exp in snapshot.experiments.items()
        if exp.status == "shadow" and exp_id not in snapshot.blocked
    ]


def shadow_rows(
    snapshot: ConfigSnapshot,
    experiment_id: str,
    requests: pd.DataFrame,
    runner_for: RunnerFor,
    scenario: Scenario,
) -> pd.DataFrame:
    """The shadow predictions a serving process logs for one experiment's requests.

    Args:
        snapshot: The allocation snapshot the requests were served under.
        experiment_id: An experiment of the snapshot (in shadow, else nothing is scored).
        requests: Logged requests (``unit_id``, ``request_id``, ``ts``, ``prediction``,
            ``latency_ms`` and the dimensions targeting reads).
        runner_for: The served model's id -> the runner scoring candidates beside it.
        scenario: The world (its production model and model versions).

    Returns:
        Rows of :data:`SHADOW_COLUMNS`, one per request whose unit drew a candidate arm; the
        shadow latency is the request's served latency (the world's runner costs nothing).
    """
    exp = snapshot.get(experiment_id)
    if requests.empty:
        return pd.DataFrame(columns=list(SHADOW_COLUMNS))
    props = {
        prop: requests[prop].to_numpy()
        for prop, _ in exp.targeting
        if prop in requests.columns  # a property not logged enrols nobody, as in production
    }
    units = requests["unit_id"].to_numpy(dtype=np.int64)
    arms = shadow_many(snapshot, units, experiment_id, props)
    control = exp.arm_models[exp.control] if exp.arm_models else None
    reference = control or scenario.world.production_model
    parts = []
    for arm in np.unique(arms[arms >= 0]).tolist():
        model = shadow_model(exp, int(arm))
        if model is None:
            continue
        rows = requests[arms == arm]
        scored = runner_for(reference).score(model, None, rows)
        parts.append(
            pd.DataFrame(
                {
                    "ts": rows["ts"].to_numpy(),
                    "request_id": rows["request_id"].to_numpy(),
                    "experiment_id": experiment_id,
                    "arm": exp.arms[int(arm)],
                    "model_id": model,
                    "model_version": scenario.models[model].version,
                    "prediction": scored.predictions,
                    "latency_ms": rows["latency_ms"].to_numpy(dtype=float),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=list(SHADOW_COLUMNS))
    return pd.concat(parts, ignore_index=True)


def log_shadow(
    engine: sa.Engine,
    snapshot: ConfigSnapshot,
    runner_for: RunnerFor,
    scenario: Scenario,
    start: datetime,
    end: datetime,
    *,
    replace: bool = False,
) -> int:
    """Score and log the shadow predictions of the requests of ``[start, end)``.

    Reads the window's requests (a serving process sees every request; nobody has an exposure
    to a shadow experiment), :data:`SHADOW_CHUNK` at a time, and appends what
    :func:`shadow_rows` gives for each experiment in shadow to ``shadow_predictions`` (created
    when missing).

    Args:
        engine: The telemetry store, holding the window's requests and exposures.
        snapshot: The allocation snapshot the window was served under.
        runner_for: The served model's id -> the runner scoring candidates beside it.
        scenario: The world.
        start: First timestamp (naive UTC, as the telemetry stores it).
        end: Timestamp after the last.
        replace: Delete those experiments' shadow rows of the window first.

    Returns:
        Shadow rows written.
    """
    ids = shadow_experiments(snapshot)
    if not ids:
        return 0
    with engine.begin() as conn:
        conn.execute(sa.text(_SHADOW_DDL))
        if replace:
            for exp_id in ids:
                conn.execute(
                    sa.text(
                        "DELETE FROM shadow_predictions "
                        "WHERE experiment_id = :e AND ts >= :lo AND ts < :hi"
                    ),
                    {"e": exp_id, "lo": start, "hi": end},
                )
    query = sa.text("SELECT r.* FROM requests r WHERE r.ts >= :lo AND r.ts < :hi")
    written = 0
    lo = start
    while lo < end:
        # A slice of the window at a time: every request is scored on its own, so memory stays
        # that of one slice however long the window or busy the world.
        hi = min(end, lo + SHADOW_CHUNK)
        with engine.connect() as conn:
            result = conn.execute(query, {"lo": lo, "hi": hi})
            requests = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        for exp_id in ids:
            rows = shadow_rows(snapshot, exp_id, requests, runner_for, scenario)
            if not rows.empty:
                rows.to_sql("shadow_predictions", engine, if_exists="append", index=False)
                written += len(rows)
        lo = hi
    return written
