"""Mitigations: typed proposals, who may approve them, and their execution exactly once.

A proposal follows from the top cause and the playbook (``mitigation`` per scope), with its blast
radius (share of traffic the action changes) and expected effect. Approval is a policy over the
experiment's owner, the on-call list and ``require_second_approver``. Execution goes through the
experiment core only (:class:`Actions` is lifecycle's ``ExperimentService``), after a
compare-and-set ``approved -> executing`` in the state database that exactly one caller wins; the
LLM never reaches any of this.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, assert_never

from agent.models import MitigationAction, MitigationView, RootCause
from agent.playbook import Playbook
from agent.reasoning import ExperimentMeta, subject_of
from agent.state import CheckOutcome
from agent.store import AgentStore, utcnow
from tools.errors import ApprovalError, ConfigError, StateError

__all__ = [
    "AGENT_USER",
    "Actions",
    "ApprovalPolicy",
    "Executor",
    "blast_radius",
    "mitigation_id",
    "propose_for",
]

_log = logging.getLogger(__name__)

AGENT_USER = "vigil"
_TARGETED = {"kill_experiment": "experiment", "ramp_down": "experiment", "rollback_model": "model"}


class Actions(Protocol):
    """The state changes the agent may ask of the experiment core (``ExperimentService``)."""

    def kill(self, experiment_id: str, actor: str, reason: str, key: str) -> Any:
        """Activate the experiment's kill switch (``key``: idempotency key, the mitigation id)."""
        ...

    def ramp_down(self, experiment_id: str, actor: str, reason: str, key: str) -> Any:
        """Move the experiment back one rollout stage."""
        ...

    def rollback_model(self, model_id: str, actor: str, reason: str, key: str) -> Any:
        """Revert a production model to its previous version."""
        ...

    def record(self, action: str, target: str | None, actor: str, reason: str, key: str) -> Any:
        """Record an action with no state change (escalations) in the audit log."""
        ...


def mitigation_id(investigation_id: str | None, action: str, target: str | None) -> str:
    """A stable id, so that re-running the propose step never proposes twice."""
    if investigation_id is None:
        raise ConfigError("investigation_id", None, "manual proposals get a random id")
    digest = hashlib.sha1(f"{investigation_id}|{action}|{target}".encode()).hexdigest()[:8]
    return f"{investigation_id}-m{digest}"


def blast_radius(
    action: MitigationAction,
    target: str | None,
    experiments: Mapping[str, ExperimentMeta],
    production_model: str | None = None,
) -> float:
    """Share of all traffic an action changes (an estimate from the configuration).

    Killing an experiment moves its enrolled traffic back to production; ramping down moves half
    of it; rolling a model back changes the traffic it serves (all traffic outside experiments
    for the production model, plus experiment arms serving it). Escalations change nothing.
    """
    if action in ("escalate_infra", "escalate_data", "none") or target is None:
        return 0.0
    if action in ("kill_experiment", "ramp_down"):
        meta = experiments.get(target)
        share = meta.traffic_share if meta is not None and meta.traffic_share is not None else 0.0
        return round(min(1.0, share * (1.0 if action == "kill_experiment" else 0.5)), 4)
    total = 0.0
    enrolled = 0.0
    for meta in experiments.values():
        share = meta.traffic_share or 0.0
        enrolled += share
        if meta.models:
            served = sum(1 for m in meta.models.values() if m == target)
            total += share * served / len(meta.models)
    if target == production_model:
        total += max(0.0, 1.0 - enrolled)
    return round(min(1.0, total), 4)


def _target(cause: RootCause, action: MitigationAction) -> str | None:
    kind = _TARGETED.get(action)
    if kind == "experiment":
        return cause.experiment
    if kind == "model":
        return cause.model
    if action == "escalate_data":
        return cause.model  # whose data or training pipeline to look at, when a model is named
    return None


def _effect_text(outcome: CheckOutcome | None) -> str:
    effect = outcome.result.effect if outcome is not None else None
    if effect is None:
        return ""
    unit = "" if effect.unit in ("", "ratio") else f" {effect.unit}"
    sign = "" if effect.unit == "ratio" else "+" if effect.estimate > 0 else ""
    return f"{effect.name} {sign}{effect.estimate:.3g}{unit}"


def _expected(action: MitigationAction, target: str | None, cause: RootCause, outcome: str) -> str:
    finding = f" ({outcome})" if outcome else ""
    if action == "kill_experiment":
        return (
            f"Units of experiment {target} return to the production model; the "
            f"{cause.cause.replace('_', ' ')} it causes{finding} should stop within minutes."
        )
    if action == "ramp_down":
        return f"Experiment {target} goes back one rollout stage, halving the traffic exposed."
    if action == "rollback_model":
        return f"Model {target} reverts to its previous version{finding}."
    if action == "escalate_infra":
        return "Infrastructure on-call is paged; no experiment changes."
    if action == "escalate_data" and cause.cause == "stale_model":
        return (
            f"The owners of model {target}'s training pipeline are alerted to restore its "
            "refreshes; no experiment or model changes until a fresh version is published."
        )
    if action == "escalate_data":
        return "The data / logging owners are alerted; no experiment changes."
    return "Nothing changes."


def propose_for(
    investigation_id: str,
    causes: Sequence[RootCause],
    playbook: Playbook,
    outcomes: Sequence[CheckOutcome],
    experiments: Mapping[str, ExperimentMeta],
    production_model: str | None = None,
) -> list[MitigationView]:
    """The proposal the top cause calls for (an empty list for ``none``).

    Args:
        investigation_id: The investigation proposing.
        causes: Ranked causes; only the first one is acted on.
        playbook: Maps a cause and its scope onto an action.
        outcomes: The check outcomes (for the expected effect).
        experiments: Experiment metadata (for the blast radius).
        production_model: The model serving traffic outside experiments.

    Returns:
        Zero or one proposal, status ``proposed``, proposed by Vigil.
    """
    if not causes or causes[0].cause == "none":
        return []
    top = causes[0]
    rule = playbook.rule(top.cause)
    if rule is None:
        return []
    scope = subject_of(top).scope
    action = rule.mitigation.get(scope)
    if action is None or action == "none":
        return []
    target = _target(top, action)
    if action in _TARGETED and target is None:
        return []
    primary = next(
        (
            o
            for name in top.evidence
            for o in outcomes
            if o.result.check == name and o.result.verdict == "fail"
        ),
        None,
    )
    failing = _effect_text(primary)
    place = f" in experiment {top.experiment}" if top.experiment else ""
    place = place or (f" on model {top.model}" if top.model else " on all traffic")
    return [
        MitigationView(
            id=mitigation_id(investigation_id, action, target),
            investigation_id=investigation_id,
            action=action,
            target=target,
            status="proposed",
            blast_radius=blast_radius(action, target, experiments, production_model),
            expected_effect=_expected(action, target, top, failing),
            reason=f"{rule.label}{place} (confidence {top.confidence:.0%})",
            proposed_by=AGENT_USER,
        )
    ]


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who may decide a mitigation.

    Attributes:
        oncall: Users who may approve anything.
        require_second_approver: The proposer cannot approve their own proposal.
        owner_of: The owner of an experiment id (None if unknown).
    """

    oncall: Sequence[str]
    require_second_approver: bool
    owner_of: Callable[[str], str | None]

    def authorised(self, mitigation: MitigationView) -> list[str]:
        """Users who may decide ``mitigation`` (on-call, plus the experiment's owner)."""
        users = list(self.oncall)
        if mitigation.target is not None and _TARGETED.get(mitigation.action) == "experiment":
            owner = self.owner_of(mitigation.target)
            if owner and owner not in users:
                users.append(owner)
        return users

    def check_approver(self, mitigation: MitigationView, user: str) -> None:
        """Raise :class:`ApprovalError` unless ``user`` may approve ``mitigation``."""
        if not user or not user.strip():
            raise ApprovalError("an approval needs a user")
        allowed = self.authorised(mitigation)
        if user not in allowed:
            who = (
                "the experiment's owner or on-call"
                if _TARGETED.get(mitigation.action) == "experiment"
                else "on-call"
            )
            listed = ", ".join(allowed) or "nobody: set VIGIL_ONCALL"
            raise ApprovalError(
                f"{user!r} may not approve {mitigation.action} of {mitigation.target!r}: "
                f"only {who} ({listed})"
            )
        if self.require_second_approver and user == mitigation.proposed_by:
            raise ApprovalError(
                f"{user!r} proposed {mitigation.id} and a second approver is required"
            )

    def check_rejecter(self, mitigation: MitigationView, user: str) -> None:
        """Raise :class:`ApprovalError` unless ``user`` may reject (the proposer may withdraw)."""
        if user and user == mitigation.proposed_by:
            return
        if user not in self.authorised(mitigation):
            raise ApprovalError(f"{user!r} may not reject {mitigation.id}")


class Executor:
    """Executes approved mitigations through the experiment core, exactly once each.

    Args:
        store: Where mitigation statuses move by compare-and-set.
        actions: Lifecycle's ``ExperimentService`` (or anything with its methods).
        policy: Re-checked on the approver before acting (defence in depth).
        clock: "Now" on the telemetry's clock (when the action takes effect).
    """

    def __init__(
        self,
        store: AgentStore,
        actions: Actions,
        policy: ApprovalPolicy,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._actions = actions
        self._policy = policy
        self._clock = clock

    def execute(self, mitigation_id: str) -> tuple[MitigationView, bool]:
        """Execute an approved mitigation unless someone already did.

        Returns:
            The mitigation as it stands and whether this call acted.

        Raises:
            ApprovalError: It is not approved, or its approver is not authorised.
            StateError: The experiment core refused the action (the mitigation is ``failed``).
        """
        current = self._store.get_mitigation(mitigation_id)
        if current.status in ("executing", "executed", "verified", "failed"):
            return current, False
        if current.status != "approved" or current.approved_by is None:
            raise ApprovalError(f"mitigation {mitigation_id} is {current.status}, not approved")
        self._policy.check_approver(current, current.approved_by)
        if not self._store.transition(mitigation_id, ["approved"], "executing"):
            return self._store.get_mitigation(mitigation_id), False
        reason = f"vigil mitigation {mitigation_id}: {current.reason}"
        try:
            outcome = self._act(current, reason)
        except Exception as exc:
            self._store.transition(
                mitigation_id, ["executing"], "failed", detail={"error": str(exc)}
            )
            raise StateError(f"{current.action} of {current.target!r} failed: {exc}") from exc
        self._store.transition(
            mitigation_id,
            ["executing"],
            "executed",
            executed_at=utcnow(),
            acted_at=self._clock(),
            detail={"outcome": repr(outcome)},
        )
        return self._store.get_mitigation(mitigation_id), True

    def _act(self, m: MitigationView, reason: str) -> Any:
        actor = m.approved_by or AGENT_USER
        act = self._actions
        match m.action:
            case "kill_experiment":
                return act.kill(str(m.target), actor=actor, reason=reason, key=m.id)
            case "ramp_down":
                return act.ramp_down(str(m.target), actor=actor, reason=reason, key=m.id)
            case "rollback_model":
                return act.rollback_model(str(m.target), actor=actor, reason=reason, key=m.id)
            case "escalate_infra" | "escalate_data" | "none":
                return act.record(m.action, m.target, actor=actor, reason=reason, key=m.id)
            case _:
                assert_never(m.action)
