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
from langgraph.types import Command

from agent.deps import Catalog, Deps, Observer, ToolboxCache, ToolboxFactory
from agent.graph import build_graph, open_checkpointer
from agent.mitigation import Actions, ApprovalPolicy, Executor, blast_radius
from agent.models import Alert, InvestigationView, MitigationAction, MitigationView
from agent.nodes import Nodes
from agent.notify import Notifier, SafeNotifier
from agent.playbook import load_playbooks
from agent.reasoning import Reasoner
from agent.runtime import reasoner_from_settings
from agent.state import Decision, InvestigationState
from agent.store import AgentStore, utcnow
from lifecycle.settings import Settings
from tools.errors import ConfigError, NotFoundError, StateError, VigilError

__all__ = ["Investigator", "Notifier", "Reasoner"]

_log = logging.getLogger(__name__)
_TARGET_KIND = {
    "kill_experiment": "experiment",
    "ramp_down": "experiment",
    "rollback_model": "model",
}


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
            self._owned = parts.service
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
            executor=Executor(self.store, actions, policy, clock),
            notifier=SafeNotifier(notifier),
            clock=clock,
        )
        self._checkpoints = open_checkpointer(settings.checkpoint_url)
        self.graph = build_graph(self.deps, self._checkpoints.saver)
        self._nodes = Nodes(self.deps)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

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
                    self.graph.invoke(initial, config)
                elif snapshot.next and not _interrupted(snapshot):
                    self.graph.invoke(None, config)  # continue after a crash mid-run
            except Exception as exc:  # recorded on the investigation, for every front door
                self._fail(investigation_id, exc)
            finally:
                if not self.graph.get_state(config).next:
                    self.deps.toolboxes.drop(investigation_id)
        return self.get(investigation_id)

    def get(self, investigation_id: str) -> InvestigationView:
        """One investigation with its mitigations (NotFoundError if unknown)."""
        return self.store.get_investigation(investigation_id)

    def list(self, limit: int = 50) -> list[InvestigationView]:
        """The most recent investigations, newest first."""
        return self.store.list_investigations(limit)

    def report_html(self, investigation_id: str) -> str:
        """The investigation's self-contained HTML report (NotFoundError before it exists)."""
        html = self.store.report_html(investigation_id)
        if not html:
            raise NotFoundError("report", investigation_id)
        return html

    # -- mitigations ---------------------------------------------------------------------------

    def approve(self, mitigation_id: str, user: str) -> MitigationView:
        """Approve a mitigation, execute it exactly once through lifecycle, and verify it.

        Returns:
            The mitigation as it stands (a repeated approval returns it unchanged).

        Raises:
            ApprovalError: ``user`` may not approve it (nothing changes).
            StateError: It was rejected or failed already.
            NotFoundError: No such mitigation.
        """
        current = self.store.get_mitigation(mitigation_id)
        if current.status in ("approved", "executing", "executed", "verified"):
            return current
        if current.status != "proposed":
            raise StateError(f"mitigation {mitigation_id} is {current.status}; cannot approve")
        self.deps.policy.check_approver(current, user)
        won = self.store.transition(
            mitigation_id, ["proposed"], "approved", approved_by=user, decided_at=utcnow()
        )
        if won:
            self._continue(
                current, Decision(mitigation_id=mitigation_id, decision="approve", user=user)
            )
        return self.store.get_mitigation(mitigation_id)

    def reject(self, mitigation_id: str, user: str) -> MitigationView:
        """Reject a proposed mitigation (the proposer may withdraw their own).

        Raises:
            ApprovalError: ``user`` may not decide it (nothing changes).
            StateError: It was already approved or executed.
        """
        current = self.store.get_mitigation(mitigation_id)
        if current.status == "rejected":
            return current
        if current.status != "proposed":
            raise StateError(f"mitigation {mitigation_id} is {current.status}; cannot reject")
        self.deps.policy.check_rejecter(current, user)
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
            self._continue(
                current, Decision(mitigation_id=mitigation_id, decision="reject", user=user)
            )
        return self.store.get_mitigation(mitigation_id)

    def propose(
        self, action: MitigationAction, target: str | None, user: str, reason: str
    ) -> MitigationView:
        """Propose a mitigation by hand (Slack ``kill 879``, HTTP); it still needs approval.

        Raises:
            ConfigError: The action needs a target, or names an unknown action.
            NotFoundError: The target experiment is unknown.
        """
        kind = _TARGET_KIND.get(action)
        if action == "none":
            raise ConfigError("action", action, "nothing to propose")
        if kind is not None and not target:
            raise ConfigError("target", target, f"{action} needs a target {kind}")
        experiments = self.catalog.experiments()
        if kind == "experiment" and target not in experiments:
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
            self._owned.close()
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

    def _continue(self, mitigation: MitigationView, decision: Decision) -> None:
        """After a stored decision: resume the paused graph, or act directly when none is."""
        if mitigation.investigation_id is None:
            if decision.decision == "approve":
                view, acted = self.deps.executor.execute(mitigation.id)
                if acted:
                    self.deps.notifier.mitigation_executed(view)
            return
        investigation_id = mitigation.investigation_id
        config = self._config(investigation_id)
        with self._lock(investigation_id):
            snapshot = self.graph.get_state(config)
            if _interrupted(snapshot):
                try:
                    self.graph.invoke(Command(resume=decision.model_dump()), config)
                except VigilError as exc:
                    self._fail(investigation_id, exc)
                    raise
            elif not snapshot.values and decision.decision == "approve":
                # No checkpoint (lost store): the approval is stored and authorised; act on it.
                view, acted = self.deps.executor.execute(mitigation.id)
                if acted:
                    self.deps.notifier.mitigation_executed(view)
            # Otherwise the graph is still running: its approval node reads the stored decision.

    def _fail(self, investigation_id: str, exc: BaseException) -> None:
        _log.exception("investigation %s failed", investigation_id, exc_info=exc)
        view = self.store.get_investigation(investigation_id)
        view.status = "failed"
        view.error = f"{type(exc).__name__}: {exc}"
        self.store.save_investigation(view)
        self.deps.notifier.investigation_finished(self.store.get_investigation(investigation_id))


def _interrupted(snapshot: Any) -> bool:
    return any(task.interrupts for task in snapshot.tasks)
