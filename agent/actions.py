"""The mitigation actions, declared once: one :class:`ActionSpec` per action.

Everything that differs between actions is here: what the action targets, who may approve it,
which experiment-core call carries it out (and under which audit name it is recorded), how much of
the traffic it changes and what it is expected to do. Proposals, the approval policy, execution,
manual proposals and the docs read this table; adding an action is its ``MitigationAction`` name
(agent/models.py) and its entry here (mypy's exhaustiveness check on ``ACTIONS`` names what is
missing).

The experiment core is reached only through :class:`Actions` (lifecycle's ``ExperimentService``
behind ``agent.runtime.ServiceActions``), always with the mitigation id as idempotency key, so
lifecycle records each action at most once even when a crashed execution is resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from agent.models import MitigationAction, RootCause

__all__ = ["ACTIONS", "ActionSpec", "Actions", "Approvers", "TargetKind", "spec"]

TargetKind = Literal["experiment", "model"]
Approvers = Literal["owner_or_oncall", "oncall"]


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

    def start(self, experiment_id: str, actor: str, reason: str, key: str) -> Any:
        """Start a draft at its first rollout stage (a preflight that needed approval)."""
        ...


# (actions, target, actor, reason, key) -> lifecycle's answer
_Run = Callable[[Actions, str | None, str, str, str], Any]
# (target, top cause, the failing finding as text) -> the expected effect, in words
_Expect = Callable[[str | None, RootCause, str], str]


@dataclass(frozen=True)
class ActionSpec:
    """One mitigation action.

    Attributes:
        name: The action's name in the vocabulary.
        target: What it acts on (None: nothing in particular).
        required_target: A proposal without a target is meaningless (and refused).
        approvers: ``owner_or_oncall`` (the experiment's owner or on-call) or ``oncall`` only.
        audit: The action's name in lifecycle's audit log.
        share: Share of the target's traffic the action changes (blast radius per unit).
        run: Carries the action out through the experiment core.
        expected: The expected effect, in words.
    """

    name: MitigationAction
    target: TargetKind | None
    required_target: bool
    approvers: Approvers
    audit: str
    share: float
    run: _Run
    expected: _Expect


def _finding(text: str) -> str:
    return f" ({text})" if text else ""


def _kill_expected(target: str | None, cause: RootCause, finding: str) -> str:
    return (
        f"Units of experiment {target} return to the production model; the "
        f"{cause.cause.replace('_', ' ')} it causes{_finding(finding)} should stop within minutes."
    )


def _escalate_data_expected(target: str | None, cause: RootCause, finding: str) -> str:
    if cause.cause == "stale_model":
        return (
            f"The owners of model {target}'s training pipeline are alerted to restore its "
            "refreshes; no experiment or model changes until a fresh version is published."
        )
    return "The data / logging owners are alerted; no experiment changes."


def _record(name: str) -> _Run:
    return lambda act, target, actor, reason, key: act.record(name, target, actor, reason, key)


ACTIONS: Mapping[MitigationAction, ActionSpec] = {
    "kill_experiment": ActionSpec(
        name="kill_experiment",
        target="experiment",
        required_target=True,
        approvers="owner_or_oncall",
        audit="kill",
        share=1.0,
        run=lambda act, target, actor, reason, key: act.kill(str(target), actor, reason, key),
        expected=_kill_expected,
    ),
    "ramp_down": ActionSpec(
        name="ramp_down",
        target="experiment",
        required_target=True,
        approvers="owner_or_oncall",
        audit="ramp_down",
        share=0.5,
        run=lambda act, target, actor, reason, key: act.ramp_down(str(target), actor, reason, key),
        expected=lambda target, cause, finding: (
            f"Experiment {target} goes back one rollout stage, halving the traffic exposed."
        ),
    ),
    "rollback_model": ActionSpec(
        name="rollback_model",
        target="model",
        required_target=True,
        approvers="oncall",
        audit="rollback_model",
        share=1.0,
        run=lambda act, target, actor, reason, key: act.rollback_model(
            str(target), actor, reason, key
        ),
        expected=lambda target, cause, finding: (
            f"Model {target} reverts to its previous version{_finding(finding)}."
        ),
    ),
    "escalate_infra": ActionSpec(
        name="escalate_infra",
        target=None,
        required_target=False,
        approvers="oncall",
        audit="escalate_infra",
        share=0.0,
        run=_record("escalate_infra"),
        expected=lambda target, cause, finding: (
            "Infrastructure on-call is paged; no experiment changes."
        ),
    ),
    "escalate_data": ActionSpec(
        name="escalate_data",
        target="model",  # whose data or training pipeline to look at, when a model is named
        required_target=False,
        approvers="oncall",
        audit="escalate_data",
        share=0.0,
        run=_record("escalate_data"),
        expected=_escalate_data_expected,
    ),
    "start_experiment": ActionSpec(
        name="start_experiment",
        target="experiment",
        required_target=True,
        approvers="oncall",
        audit="start",
        share=1.0,
        run=lambda act, target, actor, reason, key: act.start(str(target), actor, reason, key),
        expected=lambda target, cause, finding: (
            f"Experiment {target} starts at its first rollout stage; the rollout's health gate "
            "watches it from there."
        ),
    ),
    "none": ActionSpec(
        name="none",
        target=None,
        required_target=False,
        approvers="oncall",
        audit="note",
        share=0.0,
        run=_record("note"),
        expected=lambda target, cause, finding: "Nothing changes.",
    ),
}

if set(ACTIONS) != set(get_args(MitigationAction)):  # pragma: no cover - an import-time guard
    raise RuntimeError(
        f"agent.actions.ACTIONS must declare exactly {get_args(MitigationAction)}; "
        f"has {sorted(ACTIONS)}"
    )


def spec(action: MitigationAction) -> ActionSpec:
    """The spec of ``action`` (a KeyError cannot happen for a valid ``MitigationAction``)."""
    return ACTIONS[action]
