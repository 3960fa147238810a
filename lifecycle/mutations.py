"""Every change of experiment state, each a function over an open write transaction.

Each function validates, changes the state, and appends its audit entry on the connection it is
given; :class:`~lifecycle.service.ExperimentService` opens the transaction (``BEGIN IMMEDIATE`` on
SQLite, an advisory lock on PostgreSQL) and publishes the new snapshot after the commit. Because
the checks and the writes share the transaction, a check cannot go stale before its write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from lifecycle import audit, killswitch, records
from lifecycle import store as s
from lifecycle.allocation import KillScope
from lifecycle.config import Experiment, ExperimentFile, ModelEntry, RolloutPlan
from lifecycle.gate import GateConfig, GateInput, evaluate_gate
from lifecycle.rollout import Action, RolloutState, coverage, transition
from lifecycle.validation import check_file, plan_ranges
from lifecycle.views import AdvanceResult
from tools.errors import ConfigError, NotFoundError, StateError

__all__ = [
    "KILL_SCOPES",
    "Context",
    "advance",
    "create",
    "end_shadow",
    "kill",
    "move",
    "note",
    "ramp_down",
    "register",
    "release",
    "rollback_model",
    "start",
]

KILL_SCOPES: tuple[KillScope, ...] = ("experiment", "layer", "model", "global")


class Context:
    """Who acts, when and why: what every audit entry records.

    Args:
        conn: The open write transaction.
        actor: Who acts.
        reason: Why.
        at: When (UTC).
    """

    __slots__ = ("actor", "at", "conn", "reason")

    def __init__(self, conn: Connection, actor: str, reason: str, at: datetime) -> None:
        self.conn = conn
        self.actor = actor
        self.reason = reason
        self.at = at

    def record(self, action: str, **fields: Any) -> int:
        """Append an audit entry for this context."""
        reason = fields.pop("reason", self.reason)
        return audit.record(
            self.conn, at=self.at, actor=self.actor, action=action, reason=reason, **fields
        )


def _state(state: RolloutState, plan: RolloutPlan) -> dict[str, Any]:
    return {"status": state.status, "stage": state.stage, "percent": coverage(state, plan)}


def describe(state: RolloutState) -> str:
    """``ramping(i)`` or the status name."""
    return f"ramping({state.stage})" if state.status == "ramping" else state.status


# --- configuration -------------------------------------------------------------------------------

# Fields an owner may edit on a stored experiment: none of them moves a unit between arms. Every
# other field (layer, traffic, arms, control, targeting, rollout, forced) decides allocation and
# is changed through the lifecycle (rollout, complete and a new id), never by edit.
EDITABLE = ("name", "description", "owner", "guardrails")


def edit(ctx: Context, new: Experiment) -> list[str]:
    """Bring a stored experiment's editable fields to ``new``; the fields changed (audited).

    Raises:
        NotFoundError: No experiment ``new.id``.
        ConfigError: ``new`` differs in a field that decides allocation (named).
    """
    stored = records.load_experiments(ctx.conn, new.id)
    if not stored:
        raise NotFoundError("experiment", new.id)
    old = stored[0].config.model_dump(mode="json")
    fresh = new.model_dump(mode="json")
    changed = [key for key in fresh if fresh[key] != old.get(key)]
    fixed = [key for key in changed if key not in EDITABLE]
    if fixed:
        raise ConfigError(
            f"experiments[{new.id}].{fixed[0]}",
            fresh[fixed[0]],
            f"{', '.join(fixed)} decide(s) allocation and cannot be edited on a stored "
            f"experiment (stored: {old.get(fixed[0])!r}); complete it and create a new id",
        )
    if not changed:
        return []
    ctx.conn.execute(
        update(s.experiments)
        .where(s.experiments.c.id == new.id)
        .values(
            name=new.name,
            description=new.description,
            owner=new.owner,
            guardrails=s.dump_json([g.model_dump(mode="json") for g in new.guardrails]),
        )
    )
    ctx.record(
        "edit",
        experiment_id=new.id,
        target=f"experiment:{new.id}",
        before={k: old.get(k) for k in changed},
        after={k: fresh[k] for k in changed},
    )
    return changed


def register(
    ctx: Context, models: Iterable[ModelEntry], known: Mapping[str, Mapping[str, ModelEntry]]
) -> list[str]:
    """Register model versions not in ``known``; returns ``id@version`` of each added."""
    added = []
    for model in models:
        if model.version in known.get(model.id, {}):
            continue
        records.insert_model(ctx.conn, model, ctx.at)
        ident = f"{model.id}@{model.version}"
        ctx.record("register_model", target=ident, after=model.model_dump(mode="json"))
        added.append(ident)
    return added


def create(
    ctx: Context, file: ExperimentFile, vocabulary: Mapping[str, frozenset[str]], start_them: bool
) -> list[str]:
    """Validate a file against the stored world, then store what is new in it.

    Raises:
        ConfigError: The first problem; nothing is written.
    """
    world = records.load_world(ctx.conn)
    problems = check_file(file, world, vocabulary)
    if problems:
        raise problems[0]
    ranges, _ = plan_ranges(file.experiments, world)
    for layer in file.layers:
        if layer.id not in world.layers:
            records.insert_layer(ctx.conn, layer, ctx.at)
            ctx.record("create_layer", target=layer.id, after=layer.model_dump(mode="json"))
    register(ctx, file.models, world.models)
    for exp in file.experiments:
        records.insert_experiment(ctx.conn, exp, ranges[exp.id], ctx.actor, ctx.at)
        after = {**exp.model_dump(mode="json"), "range": list(ranges[exp.id])}
        ctx.record("create", experiment_id=exp.id, after=after)
        if start_them:
            start(ctx, exp.id)
    return [e.id for e in file.experiments]


# --- rollout -------------------------------------------------------------------------------------


def _move(
    ctx: Context, experiment_id: str, action: Action, *, strict: bool
) -> tuple[RolloutState, RolloutState, RolloutPlan]:
    state, revision, _ = records.read_state(ctx.conn, experiment_id)
    plan = records.load_experiments(ctx.conn, experiment_id)[0].config.rollout
    try:
        new = transition(state, action, len(plan.stages), shadow=plan.shadow)
    except StateError as exc:
        if strict:
            raise StateError(f"experiment {experiment_id}: {exc}") from None
        return state, state, plan
    if not records.write_state(ctx.conn, experiment_id, revision, state, new, ctx.at):
        raise StateError(f"experiment {experiment_id}: its state changed concurrently; retry")
    return state, new, plan


def move(
    ctx: Context,
    experiment_id: str,
    action: Action,
    *,
    record_as: str | None = None,
    key: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[RolloutState, RolloutState]:
    """Apply a rollout transition and record it.

    Raises:
        StateError: When the state does not allow the action.
    """
    old, new, plan = _move(ctx, experiment_id, action, strict=True)
    ctx.record(
        record_as or action,
        experiment_id=experiment_id,
        before=_state(old, plan),
        after={**_state(new, plan), **(extra or {})},
        key=key,
    )
    return old, new


def start(ctx: Context, experiment_id: str, key: str | None = None) -> bool:
    """Submit a draft for validation (its models must still be registered) and start it.

    Returns False, changing nothing, when ``key`` was used already (an approved start resumed).
    """
    if key is not None and audit.key_used(ctx.conn, key):
        return False
    stored = records.load_experiments(ctx.conn, experiment_id)[0]
    # The models only: loading the whole world here made creating n experiments O(n^2).
    known = {m.id for m in records.load_models(ctx.conn)}
    for name, arm in stored.config.arms.items():
        if arm.model is not None and arm.model not in known:
            raise ConfigError(f"arms.{name}.model", arm.model, "unknown model id")
    move(ctx, experiment_id, "submit")
    move(ctx, experiment_id, "start", key=key)
    return True


def advance(
    ctx: Context, experiment_id: str, stats: GateInput | None, force: bool, gate: GateConfig
) -> AdvanceResult:
    """Evaluate the gate of a ramping experiment's stage and advance, hold or roll back."""
    state, _, started = records.read_state(ctx.conn, experiment_id)
    exp = records.load_experiments(ctx.conn, experiment_id)[0].config
    if state.status != "ramping":
        try:
            transition(state, "advance", len(exp.rollout.stages))
        except StateError as exc:
            raise StateError(f"experiment {experiment_id}: {exc}") from None
    if state.status == "shadow" and not force:
        raise StateError(
            f"experiment {experiment_id}: in shadow mode, the shadow run's checks end it "
            "(the rollout controller's end_shadow), or advance with force and a reason"
        )
    if force:
        old, new = move(ctx, experiment_id, "advance", record_as="advance_forced")
        return AdvanceResult(
            experiment_id=experiment_id,
            decision="forced",
            before=describe(old),
            after=describe(new),
        )
    stage = exp.rollout.stages[min(state.stage, len(exp.rollout.stages) - 1)]
    report = evaluate_gate(
        exp,
        stats or GateInput(),
        elapsed_minutes=(ctx.at - started).total_seconds() / 60.0,
        min_minutes=stage.min_minutes,
        config=gate,
    )
    new = state
    if report.decision != "hold":
        ctx.reason = "; ".join(report.reasons)
        _, new = move(
            ctx,
            experiment_id,
            "advance" if report.decision == "advance" else "ramp_down",
            record_as=report.decision,
            extra={"gate": report.model_dump(mode="json")},
        )
    return AdvanceResult(
        experiment_id=experiment_id,
        decision=report.decision,
        before=describe(state),
        after=describe(new),
        gate=report,
    )


def end_shadow(
    ctx: Context, experiment_id: str, evidence: Mapping[str, Any], key: str | None
) -> bool:
    """Move a shadow experiment to its first stage, recorded as ``end_shadow`` with the shadow
    run's evidence; False when ``key`` was used already.

    Raises:
        StateError: When the experiment is not in shadow mode.
    """
    if key is not None and audit.key_used(ctx.conn, key):
        return False
    state, _, _ = records.read_state(ctx.conn, experiment_id)
    if state.status != "shadow":
        raise StateError(f"experiment {experiment_id}: cannot end shadow from {describe(state)}")
    move(ctx, experiment_id, "advance", record_as="end_shadow", key=key, extra={"shadow": evidence})
    return True


def ramp_down(ctx: Context, experiment_id: str, key: str | None) -> bool:
    """One stage back (pause from the first); False when not serving or ``key`` was used."""
    if key is not None and audit.key_used(ctx.conn, key):
        return False
    state, _, _ = records.read_state(ctx.conn, experiment_id)
    if state.status not in ("ramping", "running"):
        return False
    move(ctx, experiment_id, "ramp_down", key=key)
    return True


# --- kill switch ---------------------------------------------------------------------------------


def _kill_target(conn: Connection, scope: KillScope, target: str | None) -> str:
    if scope not in KILL_SCOPES:
        raise ConfigError("scope", scope, f"a kill switch scope is one of {list(KILL_SCOPES)}")
    if scope == "global":
        return killswitch.GLOBAL_TARGET
    if target is None or not target.strip():
        article = "an" if scope[0] in "aeiou" else "a"
        raise ConfigError("target", target, f"{article} {scope} kill switch needs a target id")
    column = {"experiment": s.experiments.c.id, "layer": s.layers.c.id, "model": s.models.c.id}[
        scope
    ]
    if conn.execute(select(column).where(column == target).limit(1)).first() is None:
        raise NotFoundError(scope, target)
    return target


def kill(ctx: Context, scope: KillScope, target: str | None, key: str | None) -> bool:
    """Activate a kill switch; an experiment kill also moves it to ``killed``.

    Returns:
        True when newly activated (False: active already, or ``key`` used).
    """
    if key is not None and audit.key_used(ctx.conn, key):
        return False
    ident = _kill_target(ctx.conn, scope, target)
    if not killswitch.activate(ctx.conn, scope, ident, ctx.actor, ctx.reason, ctx.at):
        return False
    before: dict[str, Any] = {"kill_switch": "inactive"}
    after: dict[str, Any] = {"kill_switch": "active"}
    exp_id = ident if scope == "experiment" else None
    if exp_id is not None:
        old, new, plan = _move(ctx, exp_id, "kill", strict=False)
        before.update(_state(old, plan))
        after.update(_state(new, plan))
    ctx.record(
        "kill",
        experiment_id=exp_id,
        target=f"{scope}:{ident}",
        before=before,
        after=after,
        key=key,
    )
    return True


def release(ctx: Context, scope: KillScope, target: str | None) -> bool:
    """Release a kill switch; a killed experiment becomes ``paused``.

    Returns:
        True when an active switch was released.
    """
    ident = _kill_target(ctx.conn, scope, target)
    if not killswitch.release(ctx.conn, scope, ident, ctx.actor, ctx.reason, ctx.at):
        return False
    before: dict[str, Any] = {"kill_switch": "active"}
    after: dict[str, Any] = {"kill_switch": "inactive"}
    exp_id = ident if scope == "experiment" else None
    if exp_id is not None:
        old, new, plan = _move(ctx, exp_id, "release", strict=False)
        before.update(_state(old, plan))
        after.update(_state(new, plan))
    ctx.record(
        "release", experiment_id=exp_id, target=f"{scope}:{ident}", before=before, after=after
    )
    return True


def note(ctx: Context, action: str, target: str | None, key: str | None) -> bool:
    """Record a decision that changes no state (an escalation); False when ``key`` was used."""
    if key is not None and audit.key_used(ctx.conn, key):
        return False
    exp_id = None
    if target is not None:
        query = select(s.experiments.c.id).where(s.experiments.c.id == target)
        exp_id = target if ctx.conn.execute(query).first() is not None else None
    ctx.record(action, experiment_id=exp_id, target=target, key=key)
    return True


# --- model registry ------------------------------------------------------------------------------


def rollback_model(ctx: Context, model_id: str, version: str | None, key: str | None) -> bool:
    """Mark a model version rolled back so the previous active version serves.

    Returns:
        True when a version was rolled back; False when it was already (or ``key`` was used).

    Raises:
        NotFoundError: For an unknown model or version.
        StateError: When no earlier active version exists to serve instead.
    """
    if key is not None and audit.key_used(ctx.conn, key):
        return False
    rows = [m for m in records.load_models(ctx.conn) if m.id == model_id]
    if not rows:
        raise NotFoundError("model", model_id)
    active = [m.version for m in rows if m.status == "active"]
    target = version if version is not None else (active[-1] if active else None)
    if target is not None and target not in {m.version for m in rows}:
        raise NotFoundError("model version", f"{model_id}@{target}")
    if target is None or target not in active:
        return False
    earlier = active[: active.index(target)]
    if not earlier:
        raise StateError(
            f"model {model_id}: version {target} has no earlier active version to roll back to; "
            "register the version to serve first"
        )
    ctx.conn.execute(
        update(s.models)
        .where((s.models.c.id == model_id) & (s.models.c.version == target))
        .where(s.models.c.status == "active")
        .values(status="rolled_back")
    )
    serving = active[-1] if target != active[-1] else earlier[-1]
    ctx.record(
        "rollback_model",
        target=model_id,
        before={"version": active[-1], "rolled_back": target},
        after={"version": serving},
        key=key,
    )
    return True
