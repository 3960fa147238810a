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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.actions import Actions, spec
from agent.models import MitigationAction, MitigationView, RootCause
from agent.notify import Notifier, SafeNotifier
from agent.playbook import Playbook
from agent.reasoning import ExperimentMeta, subject_of
from agent.state import CheckOutcome
from agent.store import AgentStore, is_contention, utcnow
from tools.errors import ApprovalError, ConfigError, RetryableError, StateError, StoreBusy

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
    kind = spec(action)
    if kind.share == 0.0 or target is None:
        return 0.0
    if kind.target == "experiment":
        meta = experiments.get(target)
        share = meta.traffic_share if meta is not None and meta.traffic_share is not None else 0.0
        return round(min(1.0, share * kind.share), 4)
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
    kind = spec(action).target
    if kind == "experiment":
        return cause.experiment
    if kind == "model":
        return cause.model
    return None


def _effect_text(outcome: CheckOutcome | None) -> str:
    effect = outcome.result.effect if outcome is not None else None
    if effect is None:
        return ""
    unit = "" if effect.unit in ("", "ratio") else f" {effect.unit}"
    sign = "" if effect.unit == "ratio" else "+" if effect.estimate > 0 else ""
    return f"{effect.name} {sign}{effect.estimate:.3g}{unit}"


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
        Zero or one proposal, status ``proposed``, proposed by Vigil; none when no check the
        top cause cites failed (a cause ranked on warnings is watched, not acted on).
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
    if spec(action).required_target and target is None:
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
    if primary is None:
        # Ranked on warnings only (a candidate): too weak to act on; the investigation watches.
        return []
    failing = _effect_text(primary)
    expected = spec(action).expected(target, top, failing)
    ended = primary.result.params.get("ended")
    if isinstance(ended, str):
        # The departure was over before the alert: the action guards against its return, and a
        # recovery measured afterwards is not its doing.
        expected += (
            f" It already ended at {ended[11:16]} UTC, before the action: this keeps it from "
            "returning, and a recovery measured afterwards is not the action's doing."
        )
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
            expected_effect=expected,
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
        if mitigation.target is not None and spec(mitigation.action).approvers == "owner_or_oncall":
            owner = self.owner_of(mitigation.target)
            if owner and owner not in users:
                users.append(owner)
        return users

    def check_approver(self, mitigation: MitigationView, user: str) -> None:
        """Raise :class:`ApprovalError` unless ``user`` may approve ``mitigation``."""
        if not user or not user.strip():
            raise ApprovalError("an approval needs a user")
        _not_the_agent(user)
        allowed = self.authorised(mitigation)
        if user not in allowed:
            who = (
                "the experiment's owner or on-call"
                if spec(mitigation.action).approvers == "owner_or_oncall"
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
        if not user or not user.strip():
            raise ApprovalError("a rejection needs a user")
        _not_the_agent(user)
        if user == mitigation.proposed_by:
            return  # a human withdrawing their own proposal
        if user not in self.authorised(mitigation):
            raise ApprovalError(f"{user!r} may not reject {mitigation.id}")


def _not_the_agent(user: str) -> None:
    """The agent's own identity proposes; no human may decide under it."""
    if user.strip().lower() == AGENT_USER:
        raise ApprovalError(f"{user!r} is the agent's own identity; decisions need a named human")


class Executor:
    """Executes approved mitigations through the experiment core, exactly once each.

    Args:
        store: Where mitigation statuses move by compare-and-set.
        actions: Lifecycle's ``ExperimentService`` (or anything with its methods).
        policy: Re-checked on the approver before acting (defence in depth).
        clock: "Now" on the telemetry's clock (when the action takes effect).
        notifier: Told once, by the call that recorded it, that a mitigation executed.
    """

    def __init__(
        self,
        store: AgentStore,
        actions: Actions,
        policy: ApprovalPolicy,
        clock: Callable[[], datetime],
        notifier: Notifier | None = None,
    ) -> None:
        self._store = store
        self._actions = actions
        self._policy = policy
        self._clock = clock
        self._notifier = SafeNotifier(notifier)

    def execute(
        self, mitigation_id: str, *, resume_after_s: float | None = None
    ) -> tuple[MitigationView, bool]:
        """Execute an approved mitigation unless someone already did.

        The decision to act is durable before the act: ``approved -> executing`` is stored
        (with when it began) before lifecycle is called, and ``executing -> executed`` after.
        A process that dies between the two leaves the mitigation ``executing``; a later call
        with ``resume_after_s`` acts again with the same idempotency key (the mitigation id),
        which lifecycle records at most once, so the action takes effect exactly once.

        Args:
            mitigation_id: The mitigation.
            resume_after_s: Also resume a mitigation left ``executing`` for at least this many
                seconds (0: at once; None: never, the default for a live decision).

        Returns:
            The mitigation as it stands and whether this call completed the execution.

        Raises:
            ApprovalError: It is not approved, or its approver is not authorised.
            StateError: The experiment core refused the action (the mitigation is ``failed``).
            RetryableError: A passing failure (a busy store); the mitigation stays
                ``executing`` and a later resume completes it.
        """
        current = self._store.get_mitigation(mitigation_id)
        if current.status in ("executed", "verified", "failed"):
            return current, False
        if current.status == "executing":
            if resume_after_s is None or not self.stale(mitigation_id, resume_after_s):
                return current, False
        elif current.status != "approved" or current.approved_by is None:
            raise ApprovalError(f"mitigation {mitigation_id} is {current.status}, not approved")
        if current.approved_by is None:
            raise ApprovalError(f"mitigation {mitigation_id} has no recorded approver")
        self._policy.check_approver(current, current.approved_by)
        if current.status == "approved" and not self._store.transition(
            mitigation_id, ["approved"], "executing", detail={"executing_since": time.time()}
        ):
            return self._store.get_mitigation(mitigation_id), False
        reason = f"vigil mitigation {mitigation_id}: {current.reason}"
        try:
            outcome = self._act(current, reason)
        except RetryableError:
            raise  # stays executing; the recovery sweep resumes it
        except Exception as exc:
            if is_contention(exc):
                raise StoreBusy(f"{current.action} of {current.target!r}: {exc}") from exc
            self._store.transition(
                mitigation_id, ["executing"], "failed", detail={"error": str(exc)}
            )
            raise StateError(f"{current.action} of {current.target!r} failed: {exc}") from exc
        # Lifecycle's idempotent acts answer False when nothing changed: a fresh approval whose
        # kill (ramp, rollback) was in force already did not act, and must not say it did.
        fresh = current.status == "approved"
        effect = "already_in_effect" if outcome is False and fresh else "acted"
        won = self._store.transition(
            mitigation_id,
            ["executing"],
            "executed",
            executed_at=utcnow(),
            acted_at=self._clock(),
            detail={"outcome": repr(outcome), "effect": effect},
        )
        view = self._store.get_mitigation(mitigation_id)
        if won:
            self._notifier.mitigation_executed(view)
        return view, won

    def stale(self, mitigation_id: str, after_s: float) -> bool:
        """True when a mitigation has been ``executing`` for at least ``after_s`` seconds."""
        since = self._store.detail(mitigation_id).get("executing_since")
        return since is None or time.time() - float(since) >= after_s

    def _act(self, m: MitigationView, reason: str) -> Any:
        actor = m.approved_by or AGENT_USER
        return spec(m.action).run(self._actions, m.target, actor, reason, m.id)
