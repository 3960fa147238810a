"""``ExperimentService``: the one door through which experiment state changes.

The CLI, the HTTP server, Slack and the agent's approved mitigations all call this class. Each
state change is one write transaction that validates first, changes the state, and appends its
audit entry; then the service publishes a new snapshot to the allocator it handed out, so the
change (a kill above all) takes effect on the very next allocation call in this process. Other
processes see it on their next :meth:`ExperimentService.refresh`.

The mitigations the agent executes — :meth:`~ExperimentService.kill`,
:meth:`~ExperimentService.ramp_down`, :meth:`~ExperimentService.rollback_model` — are idempotent:
kill by state (an active switch is not activated again) and all three by an optional idempotency
key (an action already recorded with the key is not repeated).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from sqlalchemy import select

from lifecycle import audit, killswitch, records
from lifecycle import mutations as m
from lifecycle import store as s
from lifecycle.allocation import (
    CompiledExperiment,
    ConfigSnapshot,
    KillScope,
    Status,
    blocking_switches,
    build_snapshot,
)
from lifecycle.allocator import Allocator
from lifecycle.config import Experiment, ExperimentFile, Layer, ModelEntry
from lifecycle.gate import GateConfig, GateInput
from lifecycle.rollout import Action, RolloutState, coverage
from lifecycle.settings import LifecycleSettings
from lifecycle.validation import check_file, make_vocabulary
from lifecycle.views import (
    AdvanceResult,
    AuditEntry,
    ExperimentView,
    KillSwitchView,
    ModelView,
)
from tools.errors import ConfigError
from tools.vocabulary import utc_now as _utcnow

__all__ = ["ExperimentService", "NoteAction"]

NoteAction = Literal["escalate_infra", "escalate_data", "note"]
_NOTE_ACTIONS: tuple[str, ...] = get_args(NoteAction)


def _required(name: str, value: str | None) -> str:
    if value is None or not value.strip():
        raise ConfigError(name, value, f"a state change needs a {name}")
    return value


class ExperimentService:
    """Experiments, rollout, kill switches and the audit log over one state store.

    Args:
        state_url: SQLAlchemy URL of the state store (SQLite file, ``sqlite://`` in memory, or
            PostgreSQL); the schema is migrated to the newest revision on open.
        vocabulary: Request properties and values targeting may use, laid over the defaults
            (:data:`lifecycle.validation.DEFAULT_VOCABULARY`); an empty list allows any value.
        gate: Thresholds of the rollout health gate.
        clock: Source of the current time (UTC); tests pass a fake one.
    """

    def __init__(
        self,
        state_url: str,
        *,
        vocabulary: Mapping[str, Collection[str]] | None = None,
        gate: GateConfig | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._engine = s.open_engine(state_url)
        s.migrate(self._engine)
        self._vocabulary = make_vocabulary(vocabulary)
        self._gate = gate or GateConfig()
        self._clock = clock or _utcnow
        self._allocator: Allocator | None = None
        self._lock = threading.Lock()
        self._listed: tuple[int, builtins.list[ExperimentView]] | None = None
        self._configs: dict[str, Experiment] = {}
        self._compiled: Mapping[str, CompiledExperiment] = {}
        # Coverage per (experiment, status, stage, prior): a kill moves one experiment's key.
        self._coverage: dict[tuple[str, str, int, str | None], float] = {}

    @classmethod
    def from_settings(cls, settings: LifecycleSettings) -> ExperimentService:
        """A service on ``settings.state_url`` with its targeting vocabulary."""
        return cls(settings.state_url, vocabulary=settings.targeting_vocabulary)

    def close(self) -> None:
        """Release the store's connections."""
        self._engine.dispose()

    def __enter__(self) -> ExperimentService:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    # --- configuration ---------------------------------------------------------------------

    @contextmanager
    def _acting(self, actor: str, reason: str = "") -> Iterator[m.Context]:
        _required("actor", actor)
        with s.write(self._engine) as conn:
            yield m.Context(conn, actor, reason, self._now())
        self._publish()

    def check(self, file: ExperimentFile) -> builtins.list[ConfigError]:
        """Every problem of a file against the stored world (empty when it may be created)."""
        with self._engine.connect() as conn:
            return check_file(file, records.load_world(conn), self._vocabulary)

    def validate(self, file: ExperimentFile) -> None:
        """Validate a file against the stored world without changing anything.

        Raises:
            ConfigError: The first problem, naming the field and the value.
        """
        problems = self.check(file)
        if problems:
            raise problems[0]

    def create(
        self, file: ExperimentFile, actor: str, *, start: bool = False, reason: str = ""
    ) -> builtins.list[str]:
        """Store a file's new layers, model versions and experiments (as drafts), atomically.

        Layers and model versions identical to stored ones are skipped. Validation runs before
        anything is written; on any problem nothing is.

        Args:
            file: The parsed file.
            actor: Who creates them.
            start: Also submit and start each experiment (to its first rollout stage).
            reason: Why, for the audit log.

        Returns:
            The ids of the experiments created, in file order.

        Raises:
            ConfigError: The first problem of the file.
        """
        with self._acting(actor, reason) as ctx:
            return m.create(ctx, file, self._vocabulary, start)

    def edit(self, experiment: Experiment, actor: str, reason: str = "") -> builtins.list[str]:
        """Edit a stored experiment's name, description, owner or guardrails (audited).

        Fields that decide allocation are refused, naming the field: they change through the
        lifecycle, not by edit.

        Returns:
            The fields changed (empty when the store already matches).
        """
        with self._acting(actor, reason) as ctx:
            return m.edit(ctx, experiment)

    def register_models(
        self, models: Iterable[ModelEntry], actor: str, reason: str = ""
    ) -> builtins.list[str]:
        """Register model versions in the registry (identical ones are skipped).

        Returns:
            ``id@version`` of each version newly registered.

        Raises:
            ConfigError: For a duplicate, or a version registered with other fields.
        """
        file = ExperimentFile(models=builtins.list(models))
        with self._acting(actor, reason) as ctx:
            world = records.load_world(ctx.conn)
            problems = check_file(file, world, self._vocabulary)
            if problems:
                raise problems[0]
            return m.register(ctx, file.models, world.models)

    # --- reads -----------------------------------------------------------------------------

    def _view(
        self,
        stored: records.StoredExperiment,
        switches: frozenset[tuple[KillScope, str]],
        launched: Mapping[str, datetime],
    ) -> ExperimentView:
        exp = stored.config
        return ExperimentView(
            id=exp.id,
            name=exp.name,
            description=exp.description,
            owner=exp.owner,
            layer=exp.layer,
            traffic_pct=exp.traffic_pct,
            range_start=stored.range_start,
            range_end=stored.range_end,
            arms=dict(exp.arms),
            control=exp.control,
            targeting={k: builtins.list(v) for k, v in exp.targeting.items()},
            rollout=exp.rollout,
            guardrails=builtins.list(exp.guardrails),
            status=stored.state.status,
            stage=stored.state.stage,
            stage_percent=coverage(stored.state, exp.rollout),
            stage_started_at=stored.stage_started_at,
            prior=stored.state.prior,
            blocked_by=blocking_switches(exp.id, exp.layer, exp.models, switches),
            created_at=stored.created_at,
            created_by=stored.created_by,
            launched_at=launched.get(exp.id),
            config=exp,
        )

    def get(self, experiment_id: str) -> ExperimentView:
        """One experiment (NotFoundError when unknown)."""
        with self._engine.connect() as conn:
            stored = records.load_experiments(conn, experiment_id)[0]
            switches = killswitch.active_switches(conn)
            return self._view(stored, switches, audit.first_starts(conn, experiment_id))

    def list(self) -> builtins.list[ExperimentView]:
        """Every experiment, in creation order.

        The views are read again only when the state version moved (every change is audited), so
        an investigation asking many times over a fleet of experiments reads them once.
        """
        with self._engine.connect() as conn:
            version = s.state_version(conn)
            listed = self._listed
            if listed is not None and listed[0] == version:
                return builtins.list(listed[1])
            switches = killswitch.active_switches(conn)
            launched = audit.first_starts(conn)
            views = [self._view(e, switches, launched) for e in records.load_experiments(conn)]
        self._listed = (version, views)
        return builtins.list(views)

    def layers(self) -> builtins.list[Layer]:
        """Every layer."""
        with self._engine.connect() as conn:
            return builtins.list(records.load_layers(conn).values())

    def models(self) -> builtins.list[ModelView]:
        """Every registered model version."""
        with self._engine.connect() as conn:
            return records.load_models(conn)

    def kill_switches(self, active_only: bool = True) -> builtins.list[KillSwitchView]:
        """Kill switches, newest first (only the active ones by default)."""
        with self._engine.connect() as conn:
            return killswitch.list_switches(conn, active_only)

    def audit(
        self, experiment_id: str | None = None, limit: int | None = None
    ) -> builtins.list[AuditEntry]:
        """The audit log, oldest first: every entry, or those about one experiment."""
        with self._engine.connect() as conn:
            return audit.read(conn, experiment_id, limit)

    def version(self) -> int:
        """Version of the stored state (the id of the latest audit entry)."""
        with self._engine.connect() as conn:
            return s.state_version(conn)

    # --- allocation ------------------------------------------------------------------------

    def snapshot(self) -> ConfigSnapshot:
        """A fresh immutable snapshot of the stored state, versioned by the audit log.

        What allocation reads of a configuration never changes after creation (edits touch only
        name, description, owner and guardrails), so each experiment's is parsed once and kept;
        every call reads the version, rollout states, ranges and kill switches afresh, and keeps
        the compiled form of every experiment whose state did not move. A kill then costs one
        light read and no parse or compile of the other experiments (issue 17).
        """
        with self._engine.connect() as conn:
            version = s.state_version(conn)
            layers = records.load_layers(conn)
            rows = conn.execute(
                select(
                    s.experiments.c.id,
                    s.experiments.c.range_start,
                    s.experiments.c.range_end,
                    s.rollout_state.c.status,
                    s.rollout_state.c.stage,
                    s.rollout_state.c.prior,
                )
                .join(s.rollout_state, s.rollout_state.c.experiment_id == s.experiments.c.id)
                .order_by(s.experiments.c.seq)
            ).all()
            if any(r.id not in self._configs for r in rows):
                for stored in records.load_experiments(conn):
                    self._configs.setdefault(stored.config.id, stored.config)
            switches = killswitch.active_switches(conn)
        configs = [self._configs[r.id] for r in rows]
        cover = self._coverage
        keys = {r.id: (r.id, r.status, int(r.stage), r.prior) for r in rows}
        for key in keys.values():
            if key not in cover:
                state = RolloutState(cast(Status, key[1]), key[2], cast(Status | None, key[3]))
                cover[key] = coverage(state, self._configs[key[0]].rollout)
        snapshot = build_snapshot(
            layers.values(),
            configs,
            status={r.id: cast(Status, r.status) for r in rows},
            coverage_pct={i: cover[key] for i, key in keys.items()},
            ranges={r.id: (float(r.range_start), float(r.range_end)) for r in rows},
            kill_switches=switches,
            version=version,
            reuse=self._compiled,
        )
        self._compiled = snapshot.experiments
        return snapshot

    def allocator(self) -> Allocator:
        """The allocator this service keeps current: its changes reach it before they return."""
        with self._lock:
            if self._allocator is None:
                self._allocator = Allocator(self.snapshot())
            return self._allocator

    def refresh(self) -> bool:
        """Pick up changes made by other processes.

        Returns:
            True when a newer snapshot was installed in the allocator.
        """
        if self._allocator is None or self.version() == self._allocator.version:
            return False
        return self._allocator.swap(self.snapshot())

    def _publish(self) -> None:
        if self._allocator is not None:
            self._allocator.swap(self.snapshot())

    # --- kill switch -----------------------------------------------------------------------

    def kill(
        self,
        target: str | None,
        actor: str,
        reason: str,
        *,
        scope: KillScope = "experiment",
        key: str | None = None,
    ) -> bool:
        """Press the big red button: stop allocation for an experiment, layer, model, or all.

        Idempotent: a switch already active is not activated (or recorded) again. An experiment
        kill also moves the experiment to ``killed``. Takes effect on the next allocation call.

        Args:
            target: Experiment, layer or model id (ignored for ``global``).
            actor: Who pressed it.
            reason: Why (required).
            scope: ``experiment``, ``layer``, ``model`` or ``global``.
            key: Idempotency key (e.g. the mitigation id).

        Returns:
            True when this call activated the switch.

        Raises:
            NotFoundError: For an unknown target.
        """
        with self._acting(actor, _required("reason", reason)) as ctx:
            return m.kill(ctx, scope, target, key)

    def release(
        self, target: str | None, actor: str, reason: str, *, scope: KillScope = "experiment"
    ) -> bool:
        """Release a kill switch. A killed experiment becomes ``paused``: resuming is explicit.

        Returns:
            True when this call released an active switch.
        """
        with self._acting(actor, _required("reason", reason)) as ctx:
            return m.release(ctx, scope, target)

    # --- rollout ---------------------------------------------------------------------------

    def _change(
        self, experiment_id: str, action: Action, actor: str, reason: str
    ) -> ExperimentView:
        with self._acting(actor, _required("reason", reason)) as ctx:
            m.move(ctx, experiment_id, action)
        return self.get(experiment_id)

    def start(
        self, experiment_id: str, actor: str, reason: str = "", *, key: str | None = None
    ) -> ExperimentView:
        """Submit a draft for validation and start it at its first rollout stage.

        With ``key`` (an approved ``start_experiment``'s mitigation id) a second call with the
        same key changes nothing, so a resumed approval starts the experiment once.

        Raises:
            ConfigError: When it no longer validates (a model left the registry).
            StateError: When it is not a draft.
        """
        with self._acting(actor, reason) as ctx:
            m.start(ctx, experiment_id, key)
        return self.get(experiment_id)

    def pause(self, experiment_id: str, actor: str, reason: str) -> ExperimentView:
        """Stop allocating, keeping the stage (StateError unless ramping or running)."""
        return self._change(experiment_id, "pause", actor, reason)

    def resume(self, experiment_id: str, actor: str, reason: str) -> ExperimentView:
        """Return a paused experiment to where it was (StateError unless paused)."""
        return self._change(experiment_id, "resume", actor, reason)

    def complete(self, experiment_id: str, actor: str, reason: str) -> ExperimentView:
        """Conclude an experiment; its layer range is freed for new experiments."""
        return self._change(experiment_id, "complete", actor, reason)

    def advance(
        self,
        experiment_id: str,
        actor: str,
        *,
        stats: GateInput | None = None,
        force: bool = False,
        reason: str = "",
    ) -> AdvanceResult:
        """Evaluate the health gate of the current stage and act on it.

        ``advance`` moves to the next stage (after the last: ``running``); ``rollback`` goes back
        one stage (from the first it pauses); ``hold`` changes nothing. ``force`` skips the gate
        (an audited override that needs a reason).

        Args:
            experiment_id: A ramping experiment.
            actor: Who asks.
            stats: Per-arm sufficient statistics since the experiment started.
            force: Advance without the gate.
            reason: Why (required with ``force``).

        Raises:
            StateError: When the experiment is not ramping.
        """
        if force:
            _required("reason", reason)
        with self._acting(actor, reason) as ctx:
            return m.advance(ctx, experiment_id, stats, force, self._gate)

    def end_shadow(
        self,
        experiment_id: str,
        actor: str,
        reason: str,
        *,
        evidence: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> bool:
        """End an experiment's shadow run: it moves to its first rollout stage (issue 18).

        The rollout controller calls it once the shadow run's checks passed; the audit entry
        (``end_shadow``) carries ``evidence`` (the checks' verdicts). Idempotent by ``key``.

        Returns:
            True when the experiment left shadow mode; False when ``key`` was used already.

        Raises:
            StateError: When the experiment is not in shadow mode.
        """
        with self._acting(actor, _required("reason", reason)) as ctx:
            return m.end_shadow(ctx, experiment_id, evidence or {}, key)

    def ramp_down(
        self, experiment_id: str, actor: str, reason: str, *, key: str | None = None
    ) -> bool:
        """Go back one rollout stage (from the first stage, pause). A mitigation: idempotent.

        Returns:
            True when the experiment was ramped down; False when it was not serving (paused,
            killed, completed, not started) or ``key`` was used already.
        """
        with self._acting(actor, _required("reason", reason)) as ctx:
            return m.ramp_down(ctx, experiment_id, key)

    def rollback_model(
        self,
        model_id: str,
        actor: str,
        reason: str,
        *,
        version: str | None = None,
        key: str | None = None,
    ) -> bool:
        """Revert a model to its previous version: the serving version is marked rolled back.

        Idempotent by ``version`` (rolling back a version already rolled back does nothing) and
        by ``key``.

        Args:
            model_id: The model.
            actor: Who.
            reason: Why (required).
            version: The version to roll back; the serving one by default.
            key: Idempotency key.

        Returns:
            True when a version was rolled back.

        Raises:
            NotFoundError: For an unknown model or version.
            StateError: When no earlier active version exists to serve instead.
        """
        with self._acting(actor, _required("reason", reason)) as ctx:
            return m.rollback_model(ctx, model_id, version, key)

    # --- decisions without a state change ----------------------------------------------------

    def record(
        self,
        action: NoteAction,
        target: str | None,
        actor: str,
        reason: str,
        *,
        key: str | None = None,
    ) -> bool:
        """Append an audit entry for a decision that changes no experiment state.

        The agent records approved escalations (``escalate_infra``, ``escalate_data``) here, so
        the audit log holds every executed mitigation; ``note`` is for anything else a human
        wants on the record. Idempotent by ``key``.

        Returns:
            True when recorded; False when ``key`` was used already.
        """
        if action not in _NOTE_ACTIONS:
            raise ConfigError("action", action, f"one of {list(_NOTE_ACTIONS)}")
        with self._acting(actor, _required("reason", reason)) as ctx:
            return m.note(ctx, action, target, key)
