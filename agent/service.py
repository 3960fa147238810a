"""The agent's one public service: :class:`Investigator` (CLI, HTTP, Slack and evals call it).

Usage::

    from agent.service import Investigator
    inv = Investigator(settings)                  # deterministic reasoner, stores from settings
    view = inv.investigate(alert)                 # runs to the approval interrupt (or the end)
    inv.approve(view.mitigations[0].id, "alice")  # policy-checked; executes once; verifies
    inv.close()

Every investigation is a LangGraph thread (id = investigation id) checkpointed in
``settings.checkpoint_url``; its view, report and mitigations live in the state database. A fresh
``Investigator`` on the same stores resumes a paused investigation, so an approval may come from
another process, hours later. Nothing executes without an authorised approval: ``approve`` checks
the policy before anything changes, moves the mitigation ``proposed -> approved`` by
compare-and-set (a second or concurrent approval acts never twice), and the graph executes only
mitigations the database says are approved.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import Command, Durability

from agent.actions import Actions, spec
from agent.deps import Catalog, Deps, Observer, ToolboxCache, ToolboxFactory
from agent.followups import FollowUpRunner
from agent.graph import RESUME, build_graph, open_checkpointer
from agent.mitigation import ApprovalPolicy, Executor, blast_radius
from agent.models import Alert, FollowUp, InvestigationView, MitigationAction, MitigationView
from agent.nodes import Nodes
from agent.notify import Notifier, SafeNotifier
from agent.playbook import load_playbooks
from agent.reasoning import Reasoner
from agent.runtime import reasoner_from_settings
from agent.settings import Settings
from agent.state import InvestigationState
from agent.store import AgentStore, utcnow
from tools.errors import ConfigError, NotFoundError, RetryableError, StateError, VigilError

__all__ = ["Investigator", "Notifier", "Reasoner"]

_log = logging.getLogger(__name__)
# Each step's checkpoint is written before the next step starts: an investigation is a handful of
# expensive steps, so the milliseconds are nothing, and after a crash the checkpoint is never
# behind the state database by more than the step that was running.
_DURABILITY: Durability = "sync"


class Investigator:
    """Runs investigations and decides their mitigations.

    Args:
        settings: Stores, reports folder, LLM and approval settings.
        reasoner: Ranks causes; if None, the one the settings call for
            (:func:`agent.runtime.reasoner_from_settings`: the ``LLMReasoner`` when
            ``llm_base_url`` and ``llm_model`` are set, else the ``DeterministicReasoner``).
        notifier: Callbacks for Slack and the like (errors are logged, never raised).
        toolbox_factory: Builds the checks for an alert; from ``settings.telemetry_url`` if None.
        catalog: Experiments and the production model; from the state database if None.
        actions: The experiment core's state changes; lifecycle's ``ExperimentService`` if None.
        clock: "Now" on the telemetry's clock (a simulation's clock in the demo); UTC if None.
        observer: Told how long each check takes and of each LLM call (the server's metrics);
            the LLM reasoner the settings call for reports to it too.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        reasoner: Reasoner | None = None,
        notifier: Notifier | None = None,
        toolbox_factory: ToolboxFactory | None = None,
        catalog: Catalog | None = None,
        actions: Actions | None = None,
        clock: Callable[[], datetime] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self._owned: Any = None
        if toolbox_factory is None or catalog is None or actions is None:
            from agent.runtime import lifecycle_parts

            parts = lifecycle_parts(settings)
            self._owned = parts
            toolbox_factory = toolbox_factory or parts.toolbox_factory
            catalog = catalog or parts.catalog
            actions = actions or parts.actions
        self.catalog: Catalog = catalog
        self.store = AgentStore(settings.state_url)
        clock = clock or utcnow
        policy = ApprovalPolicy(
            oncall=tuple(settings.oncall),
            require_second_approver=settings.require_second_approver,
            owner_of=self._owner_of,
        )
        self.deps = Deps(
            settings=settings,
            store=self.store,
            playbooks=load_playbooks(settings.playbooks_dir),
            reasoner=reasoner or reasoner_from_settings(settings, observer=observer),
            catalog=catalog,
            toolboxes=ToolboxCache(toolbox_factory, observer=observer),
            policy=policy,
            executor=Executor(self.store, actions, policy, clock, notifier),
            notifier=SafeNotifier(notifier),
            clock=clock,
        )
        self._checkpoints = open_checkpointer(settings.checkpoint_url)
        self.graph = build_graph(self.deps, self._checkpoints.saver)
        self._nodes = Nodes(self.deps)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._followups = FollowUpRunner(
            self.deps, self.graph, self._lock, self._fail, _stopped_between_steps
        )

    # -- investigations ------------------------------------------------------------------------

    def investigate(self, alert: Alert) -> InvestigationView:
        """Start and run an investigation to its approval interrupt (or its end)."""
        return self.run(self.start(alert))

    def start(self, alert: Alert) -> str:
        """Create an investigation for ``alert`` (not yet run) and return its id."""
        self.deps.playbooks.for_metric(alert.metric)
        investigation_id = f"inv-{uuid.uuid4().hex[:12]}"
        view = InvestigationView(
            id=investigation_id, status="running", alert=alert, created_at=utcnow()
        )
        self.store.save_investigation(view)
        return investigation_id

    def run(self, investigation_id: str) -> InvestigationView:
        """Run a started investigation to its approval interrupt or its end.

        A failure is recorded on the investigation (status ``failed`` with the error) and the
        view returned; running an investigation that is already paused or done changes nothing.
        """
        view = self.store.get_investigation(investigation_id)
        config = self._config(investigation_id)
        with self._lock(investigation_id):
            snapshot = self.graph.get_state(config)
            try:
                if not snapshot.values:
                    initial = InvestigationState(
                        investigation_id=investigation_id,
                        alert=view.alert,
                        created_at=view.created_at,
                    )
                    self.graph.invoke(initial, config, durability=_DURABILITY)
                elif _stopped_between_steps(snapshot):
                    self.graph.invoke(None, config, durability=_DURABILITY)  # after a crash
            except RetryableError as exc:  # stays as it is; run again (the pool, the sweep)
                _log.warning(
                    "investigation %s paused by a passing error: %s", investigation_id, exc
                )
            except Exception as exc:  # recorded on the investigation, for every front door
                self._fail(investigation_id, exc)
            finally:
                if not self.graph.get_state(config).tasks:
                    self.deps.toolboxes.drop(investigation_id)
        return self.get(investigation_id)

    def join(self, alert: Alert) -> str | None:
        """Attach ``alert`` to the open investigation of its scope, if any (one incident).

        An alert for the experiment (or, global, for all traffic) of an investigation that is
        running, awaiting approval or watching, fired within ``Settings.incident_window_minutes``
        of it (any time while it is watching), joins it: the investigation lists it, the
        notifier is told, and no second investigation (nor a second mitigation) is started.
        A window of 0 turns grouping off.

        Returns:
            The id of the investigation it joined; None when it must start its own.
        """
        if self.settings.incident_window_minutes <= 0:
            return None  # grouping turned off: every alert starts its own investigation
        investigation_id = self.store.join_open(alert, self.settings.incident_window_minutes)
        if investigation_id is not None:
            self.deps.notifier.alert_joined(self.get(investigation_id), alert)
        return investigation_id

    def follow_up(self, now: datetime | None = None) -> list[tuple[str, FollowUp]]:
        """Re-run every watching investigation whose follow-up is due, once across processes.

        Args:
            now: The telemetry clock's "now" (the investigator's clock if None).

        Returns:
            ``(investigation id, its history entry)`` for each follow-up run here.
        """
        return self._followups.run_due(now)

    def get(self, investigation_id: str) -> InvestigationView:
        """One investigation with its mitigations (NotFoundError if unknown)."""
        return self.store.get_investigation(investigation_id)

    def list(self, limit: int = 50) -> list[InvestigationView]:
        """The most recent investigations, newest first."""
        return self.store.list_investigations(limit)

    def running(self) -> tuple[str, ...]:
        """Ids of the investigations in status ``running``, oldest first."""
        return tuple(v.id for v in self.store.investigations_in(["running"]))

    def report_html(self, investigation_id: str) -> str:
        """The investigation's self-contained HTML report (NotFoundError before it exists)."""
        html = self.store.report_html(investigation_id)
        if not html:
            raise NotFoundError("report", investigation_id)
        return html

    # -- mitigations ---------------------------------------------------------------------------

    def approve(self, mitigation_id: str, user: str) -> MitigationView:
        """Approve a mitigation, execute it exactly once through lifecycle, and verify it.

        The policy is checked before anything is answered about the mitigation. Approving one
        that is already approved or executing (its process died mid-way) drives it to the end:
        the action runs with its idempotency key, so it takes effect once.

        Returns:
            The mitigation as it stands (an executed one is returned unchanged).

        Raises:
            ApprovalError: ``user`` may not approve it (nothing changes).
            StateError: It was rejected or failed already, or a concurrent rejection won.
            NotFoundError: No such mitigation.
            RetryableError: The store stayed busy; the approval, if stored, is resumed later.
        """
        current = self.store.get_mitigation(mitigation_id)
        self.deps.policy.check_approver(current, user)
        if current.status in ("executed", "verified"):
            return current
        if current.status in ("approved", "executing"):
            self._drive(current, resume=True)
            return self.store.get_mitigation(mitigation_id)
        if current.status != "proposed":
            raise StateError(f"mitigation {mitigation_id} is {current.status}; cannot approve")
        won = self.store.transition(
            mitigation_id, ["proposed"], "approved", approved_by=user, decided_at=utcnow()
        )
        if won:
            self.deps.notifier.mitigation_approved(self.store.get_mitigation(mitigation_id), user)
            self._drive(current, resume=False)
        after = self.store.get_mitigation(mitigation_id)
        if not won and after.status in ("rejected", "failed"):
            raise StateError(f"mitigation {mitigation_id} was {after.status} meanwhile")
        return after

    def reject(self, mitigation_id: str, user: str) -> MitigationView:
        """Reject a proposed mitigation (the proposer may withdraw their own).

        Raises:
            ApprovalError: ``user`` may not decide it (nothing changes).
            StateError: It was already approved or executed, or a concurrent approval won.
        """
        current = self.store.get_mitigation(mitigation_id)
        self.deps.policy.check_rejecter(current, user)
        if current.status == "rejected":
            return current
        if current.status != "proposed":
            raise StateError(f"mitigation {mitigation_id} is {current.status}; cannot reject")
        won = self.store.transition(
            mitigation_id,
            ["proposed"],
            "rejected",
            decided_at=utcnow(),
            detail={"rejected_by": user},
        )
        if won:
            # Told once the decision is stored, by the one call that made it (like execution).
            self.deps.notifier.mitigation_rejected(self.store.get_mitigation(mitigation_id), user)
            self._resume(current.investigation_id, crashed=False)
        after = self.store.get_mitigation(mitigation_id)
        if not won and after.status != "rejected":
            raise StateError(f"mitigation {mitigation_id} was {after.status} meanwhile")
        return after

    def propose(
        self, action: MitigationAction, target: str | None, user: str, reason: str
    ) -> MitigationView:
        """Propose a mitigation by hand (Slack ``kill 879``, HTTP); it still needs approval.

        Raises:
            ConfigError: The action needs a target, or names an unknown action.
            NotFoundError: The target experiment is unknown.
        """
        kind = spec(action)
        if action == "none":
            raise ConfigError("action", action, "nothing to propose")
        if kind.required_target and not target:
            raise ConfigError("target", target, f"{action} needs a target {kind.target}")
        experiments = self.catalog.experiments()
        if kind.target == "experiment" and target not in experiments:
            raise NotFoundError("experiment", str(target))
        view = MitigationView(
            id=f"man-{uuid.uuid4().hex[:12]}",
            investigation_id=None,
            action=action,
            target=target,
            status="proposed",
            blast_radius=blast_radius(action, target, experiments, self.catalog.production_model()),
            expected_effect="Proposed by hand; see the reason.",
            reason=reason,
            proposed_by=user,
        )
        self.store.add_mitigation(view)
        return view

    def verify(self, mitigation_id: str) -> MitigationView:
        """Judge (again) whether the metric recovered after an executed mitigation.

        Useful when the post-action data arrives after the approval (``recovered`` was None).
        """
        current = self.store.get_mitigation(mitigation_id)
        if current.investigation_id is None or current.status not in ("executed", "verified"):
            return current
        with self._lock(current.investigation_id):
            state = self._state(current.investigation_id)
            view = self._nodes.verify_one(state, mitigation_id)
            self._nodes.finish(state)  # re-render the report with the verdict
        return view

    def close(self) -> None:
        """Close the checkpointer's connections (and the experiment service it opened)."""
        self._checkpoints.close()
        if self._owned is not None:
            self._owned.close()  # the experiment service and the telemetry engine it opened
        self.store.engine.dispose()

    # -- internals -----------------------------------------------------------------------------

    def _owner_of(self, experiment_id: str) -> str | None:
        meta = self.catalog.experiments().get(experiment_id)
        return meta.owner if meta is not None else None

    @staticmethod
    def _config(investigation_id: str) -> RunnableConfig:
        return RunnableConfig(configurable={"thread_id": investigation_id})

    def _lock(self, investigation_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(investigation_id, threading.Lock())

    def _state(self, investigation_id: str) -> InvestigationState:
        snapshot = self.graph.get_state(self._config(investigation_id))
        if not snapshot.values:
            raise NotFoundError("investigation state", investigation_id)
        return InvestigationState.model_validate(snapshot.values)

    def _drive(self, mitigation: MitigationView, *, resume: bool) -> None:
        """After a stored approval: resume its paused graph, or act directly when there is none.

        Args:
            mitigation: The approved (or stranded ``executing``) mitigation.
            resume: Also continue a graph that stopped between steps (a crash) and re-act on a
                mitigation left ``executing``; a live approval leaves a running graph alone, its
                approval node reads the stored decision.
        """
        investigation_id = mitigation.investigation_id
        has_graph = False
        if investigation_id is not None:
            if self._resume(investigation_id, crashed=resume):
                return
            snapshot = self.graph.get_state(self._config(investigation_id))
            has_graph = bool(snapshot.values)
            if has_graph and snapshot.tasks:
                return  # the graph is running: its approval node reads the stored decision
        current = self.store.get_mitigation(mitigation.id)
        if current.status not in ("approved", "executing"):
            return
        # No graph to carry it: a manual proposal, a lost checkpoint, or a finished graph.
        _view, acted = self.deps.executor.execute(mitigation.id, resume_after_s=0.0)
        if acted and has_graph:
            self.verify(mitigation.id)

    def _resume(self, investigation_id: str | None, *, crashed: bool) -> bool:
        """Continue a paused (or, with ``crashed``, a stopped) graph; True if one was continued.

        The resume value is informative only: the approval node and the execute node read the
        stored decisions, so resuming twice acts no more than once.
        """
        if investigation_id is None:
            return False
        config = self._config(investigation_id)
        with self._lock(investigation_id):
            snapshot = self.graph.get_state(config)
            if not snapshot.values:
                return False
            if _interrupted(snapshot):
                value: Any = Command(resume=RESUME)
            elif crashed and _stopped_between_steps(snapshot):
                value = None
            else:
                return False
            try:
                self.graph.invoke(value, config, durability=_DURABILITY)
            except RetryableError:
                raise  # nothing failed for good; the recovery sweep continues it
            except VigilError as exc:
                self._fail(investigation_id, exc)
                raise
            finally:
                if not self.graph.get_state(config).tasks:
                    self.deps.toolboxes.drop(investigation_id)
        return True

    def recover(self, grace_s: float = 5.0) -> tuple[str, ...]:
        """Resume everything a crash or a busy store left half-done; safe to call any time.

        * every ``approved`` or ``executing`` mitigation (an ``executing`` one only once it has
          been so for ``grace_s``): its graph is continued, or it is executed directly, with its
          idempotency key, so the action takes effect exactly once;
        * every investigation ``awaiting_approval`` whose graph stopped between steps, or whose
          mitigations are all decided (it still has to execute, verify and finish);
        * every executed mitigation whose verification is pending (the telemetry could not be
          read), up to ten attempts.

        Investigations left ``running`` are re-run by the server's pool, not here.

        Returns:
            The ids of the mitigations and investigations it continued.
        """
        done: list[str] = []
        for m in self.store.list_mitigations(["approved", "executing"]):
            if m.status == "executing" and not self.deps.executor.stale(m.id, grace_s):
                continue
            try:
                self._drive(m, resume=True)
                done.append(m.id)
            except VigilError as exc:
                _log.warning("recovery of mitigation %s: %s", m.id, exc)
        for view in self.store.investigations_in(["awaiting_approval"]):
            if any(m.status == "proposed" for m in view.mitigations) and not self._stopped(view.id):
                continue
            if (utcnow() - view.created_at).total_seconds() < grace_s or any(
                m.status == "executing" and not self.deps.executor.stale(m.id, grace_s)
                for m in view.mitigations
            ):
                continue  # young, or its action is being carried out by a live process
            try:
                if self._resume(view.id, crashed=True):
                    done.append(view.id)
            except VigilError as exc:
                _log.warning("recovery of investigation %s: %s", view.id, exc)
        for m in self.store.list_mitigations(["executed"]):
            if m.verification_pending is None or m.investigation_id is None:
                continue
            if int(self.store.detail(m.id).get("verification_attempts") or 0) >= 10:
                continue
            try:
                self.verify(m.id)
                done.append(m.id)
            except VigilError as exc:
                _log.warning("verification of mitigation %s: %s", m.id, exc)
        return tuple(done)

    def _stopped(self, investigation_id: str) -> bool:
        """The graph stopped between steps (not at its approval interrupt, not at its end)."""
        snapshot = self.graph.get_state(self._config(investigation_id))
        return bool(snapshot.values) and _stopped_between_steps(snapshot)

    def _fail(self, investigation_id: str, exc: BaseException) -> None:
        _log.exception("investigation %s failed", investigation_id, exc_info=exc)
        view = self.store.get_investigation(investigation_id)
        view.status = "failed"
        view.error = f"{type(exc).__name__}: {exc}"
        self.store.save_investigation(view)
        self.deps.notifier.investigation_finished(self.store.get_investigation(investigation_id))


def _interrupted(snapshot: Any) -> bool:
    return any(task.interrupts for task in snapshot.tasks)


def _stopped_between_steps(snapshot: Any) -> bool:
    """Work is left that no interrupt waits on: a crash came mid-step or between steps.

    ``snapshot.next`` alone misses one case: a step whose writes were saved before the process
    died has no ``next`` entry yet still a task (its writes not yet applied); invoking the graph
    with ``None`` applies them and goes on. A finished graph has no tasks at all.
    """
    return bool(snapshot.tasks) and not _interrupted(snapshot)
