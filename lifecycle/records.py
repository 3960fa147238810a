"""Rows of the state store to and from the configuration models (one place for the mapping).

Every function takes an open :class:`~sqlalchemy.engine.Connection`, so the caller decides the
transaction: reads and the write that depends on them share one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from lifecycle import store as s
from lifecycle.allocation import Status
from lifecycle.config import Experiment, Layer, ModelEntry
from lifecycle.rollout import RolloutState
from lifecycle.validation import Occupied, World
from lifecycle.views import ModelView
from tools.errors import NotFoundError

__all__ = [
    "StoredExperiment",
    "insert_experiment",
    "insert_layer",
    "insert_model",
    "load_experiments",
    "load_layers",
    "load_models",
    "load_world",
    "read_state",
    "write_state",
]


@dataclass(frozen=True)
class StoredExperiment:
    """An experiment with its stored placement and rollout state."""

    config: Experiment
    range_start: float
    range_end: float
    state: RolloutState
    stage_started_at: datetime
    revision: int
    created_at: datetime
    created_by: str


# --- layers and models -------------------------------------------------------------------------


def load_layers(conn: Connection) -> dict[str, Layer]:
    """Every layer by id."""
    rows = conn.execute(select(s.layers).order_by(s.layers.c.id)).mappings()
    return {
        r["id"]: Layer(id=r["id"], name=r["name"], description=r["description"], salt=r["salt"])
        for r in rows
    }


def insert_layer(conn: Connection, layer: Layer, at: datetime) -> None:
    """Store a new layer."""
    conn.execute(
        insert(s.layers).values(
            id=layer.id,
            name=layer.name,
            description=layer.description,
            salt=layer.salt,
            created_at=s.to_db_time(at),
        )
    )


def load_models(conn: Connection) -> list[ModelView]:
    """Every registered model version, by model id then registration order."""
    rows = list(conn.execute(select(s.models).order_by(s.models.c.id, s.models.c.seq)).mappings())
    serving: dict[str, str] = {}
    for r in rows:
        if r["status"] == "active":
            serving[r["id"]] = r["version"]  # the latest active version wins
    return [
        ModelView(
            id=r["id"],
            version=r["version"],
            status="active" if r["status"] == "active" else "rolled_back",
            serving=serving.get(r["id"]) == r["version"],
            registered_at=s.from_db_time(r["registered_at"]),
            entry=ModelEntry(
                id=r["id"],
                version=r["version"],
                description=r["description"],
                refresh_minutes=r["refresh_minutes"],
                training_ne=r["training_ne"],
                ms_per_request=r["ms_per_request"],
                memory_gb=r["memory_gb"],
            ),
        )
        for r in rows
    ]


def insert_model(conn: Connection, model: ModelEntry, at: datetime) -> None:
    """Register a new model version after every version registered so far."""
    seq = conn.execute(select(func.coalesce(func.max(s.models.c.seq), 0))).scalar_one()
    conn.execute(
        insert(s.models).values(
            id=model.id,
            version=model.version,
            seq=int(seq) + 1,
            status="active",
            description=model.description,
            refresh_minutes=model.refresh_minutes,
            training_ne=model.training_ne,
            ms_per_request=model.ms_per_request,
            memory_gb=model.memory_gb,
            registered_at=s.to_db_time(at),
        )
    )


# --- experiments -------------------------------------------------------------------------------


def insert_experiment(
    conn: Connection, exp: Experiment, rng: tuple[float, float], actor: str, at: datetime
) -> None:
    """Store a new experiment, its arms, and its rollout state (draft)."""
    seq = conn.execute(select(func.coalesce(func.max(s.experiments.c.seq), 0))).scalar_one()
    now = s.to_db_time(at)
    conn.execute(
        insert(s.experiments).values(
            id=exp.id,
            seq=int(seq) + 1,
            name=exp.name,
            description=exp.description,
            owner=exp.owner,
            layer=exp.layer,
            traffic_pct=exp.traffic_pct,
            range_start=rng[0],
            range_end=rng[1],
            control=exp.control,
            targeting=s.dump_json(exp.targeting),
            rollout=s.dump_json(exp.rollout.model_dump(mode="json")),
            guardrails=s.dump_json([g.model_dump(mode="json") for g in exp.guardrails]),
            forced=s.dump_json(exp.forced),
            created_at=now,
            created_by=actor,
        )
    )
    conn.execute(
        insert(s.arms),
        [
            {
                "experiment_id": exp.id,
                "name": name,
                "position": i,
                "weight": arm.weight,
                "model": arm.model,
                "ad_load": arm.ad_load,
                "params": s.dump_json(arm.params),
            }
            for i, (name, arm) in enumerate(exp.arms.items())
        ],
    )
    conn.execute(
        insert(s.rollout_state).values(
            experiment_id=exp.id,
            status="draft",
            stage=0,
            prior=None,
            stage_started_at=now,
            updated_at=now,
            revision=0,
        )
    )


def _experiment(row: RowMapping, arm_rows: list[RowMapping]) -> Experiment:
    return Experiment.model_validate(
        {
            "id": row["id"],
            "name": row["name"],
            "description": row["description"],
            "owner": row["owner"],
            "layer": row["layer"],
            "traffic_pct": row["traffic_pct"],
            "arms": {
                a["name"]: {
                    "weight": a["weight"],
                    "model": a["model"],
                    "ad_load": a["ad_load"],
                    "params": s.load_json(a["params"]),
                }
                for a in sorted(arm_rows, key=lambda a: int(a["position"]))
            },
            "control": row["control"],
            "targeting": s.load_json(row["targeting"]),
            "rollout": s.load_json(row["rollout"]),
            "guardrails": s.load_json(row["guardrails"]),
            "forced": s.load_json(row["forced"]),
        }
    )


def load_experiments(conn: Connection, experiment_id: str | None = None) -> list[StoredExperiment]:
    """Stored experiments in creation order (one, when ``experiment_id`` is given).

    Raises:
        NotFoundError: When ``experiment_id`` names no experiment.
    """
    query = (
        select(s.experiments, s.rollout_state)
        .join(s.rollout_state, s.rollout_state.c.experiment_id == s.experiments.c.id)
        .order_by(s.experiments.c.seq)
    )
    arm_query = select(s.arms)
    if experiment_id is not None:
        query = query.where(s.experiments.c.id == experiment_id)
        arm_query = arm_query.where(s.arms.c.experiment_id == experiment_id)
    rows = list(conn.execute(query).mappings())
    if experiment_id is not None and not rows:
        raise NotFoundError("experiment", experiment_id)
    by_exp: dict[str, list[RowMapping]] = {}
    for a in conn.execute(arm_query).mappings():
        by_exp.setdefault(a["experiment_id"], []).append(a)
    return [
        StoredExperiment(
            config=_experiment(r, by_exp.get(r["id"], [])),
            range_start=float(r["range_start"]),
            range_end=float(r["range_end"]),
            state=RolloutState(cast(Status, r["status"]), int(r["stage"]), r["prior"]),
            stage_started_at=s.from_db_time(r["stage_started_at"]),
            revision=int(r["revision"]),
            created_at=s.from_db_time(r["created_at"]),
            created_by=r["created_by"],
        )
        for r in rows
    ]


def load_world(conn: Connection) -> World:
    """What a new file is validated against."""
    models: dict[str, dict[str, ModelEntry]] = {}
    for m in load_models(conn):
        models.setdefault(m.id, {})[m.version] = m.entry
    occupied: dict[str, list[Occupied]] = {}
    ids = set()
    rows = conn.execute(
        select(
            s.experiments.c.id,
            s.experiments.c.layer,
            s.experiments.c.range_start,
            s.experiments.c.range_end,
            s.rollout_state.c.status,
        ).join(s.rollout_state, s.rollout_state.c.experiment_id == s.experiments.c.id)
    ).mappings()
    for r in rows:
        ids.add(r["id"])
        if r["status"] != "completed":  # a completed experiment frees its range
            occupied.setdefault(r["layer"], []).append(
                Occupied(r["id"], float(r["range_start"]), float(r["range_end"]))
            )
    return World(
        layers=load_layers(conn), models=models, experiment_ids=frozenset(ids), occupied=occupied
    )


# --- rollout state -----------------------------------------------------------------------------


def read_state(conn: Connection, experiment_id: str) -> tuple[RolloutState, int, datetime]:
    """The rollout state, its revision and when its stage started (locked FOR UPDATE).

    Raises:
        NotFoundError: For an unknown experiment.
    """
    row = (
        conn.execute(
            select(s.rollout_state)
            .where(s.rollout_state.c.experiment_id == experiment_id)
            .with_for_update()
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFoundError("experiment", experiment_id)
    state = RolloutState(cast(Status, row["status"]), int(row["stage"]), row["prior"])
    return state, int(row["revision"]), s.from_db_time(row["stage_started_at"])


def write_state(
    conn: Connection,
    experiment_id: str,
    revision: int,
    old: RolloutState,
    new: RolloutState,
    at: datetime,
) -> bool:
    """Store ``new`` if the state is still at ``revision`` (a conditional update).

    The stage clock restarts when the status or the stage changes.

    Returns:
        False when another writer changed the state first.
    """
    values: dict[str, Any] = {
        "status": new.status,
        "stage": new.stage,
        "prior": new.prior,
        "updated_at": s.to_db_time(at),
        "revision": revision + 1,
    }
    if (new.status, new.stage) != (old.status, old.stage):
        values["stage_started_at"] = s.to_db_time(at)
    done = conn.execute(
        update(s.rollout_state)
        .where(s.rollout_state.c.experiment_id == experiment_id)
        .where(s.rollout_state.c.revision == revision)
        .values(**values)
    )
    return done.rowcount == 1
