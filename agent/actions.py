"""The mitigation actions, declared once: one :class:`ActionSpec` per action.

Everything that differs between actions is here: what the action targets, who may approve it,
which experiment-core call carries it out (its audit name: the call and lifecycle's record of it
are one name), how much of the traffic it changes, what the report calls it and what it is
expected to do. Proposals, the approval policy, execution, the report's words, manual proposals,
the evals' audit reading and the docs read this table; adding an action is its
``MitigationAction`` name (agent/models.py) and its entry here (the import fails when the table
and the vocabulary disagree; mypy's exhaustiveness check on the audit names names a call that
:meth:`ActionSpec.run` does not make).

The experiment core is reached only through :class:`Actions` (lifecycle's ``ExperimentService``
behind ``agent.runtime.ServiceActions``), always with the mitigation id as idempotency key, so
lifecycle records each action at most once even when a crashed execution is resumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, assert_never, get_args

from agent.models import Cause, MitigationAction, RootCause

__all__ = ["ACTIONS", "ActionSpec", "Actions", "Approvers", "Audit", "TargetKind", "spec"]

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


Audit = Literal[
    "kill", "ramp_down", "rollback_model", "start", "escalate_infra", "escalate_data", "note"
]
"""An action's name in lifecycle's audit log, which is also the experiment-core call that makes
it: ``kill``, ``ramp_down``, ``rollback_model`` and ``start`` change state, the rest are recorded
(``Actions.record``)."""


@dataclass(frozen=True)
class ActionSpec:
    """One mitigation action.

    Attributes:
        name: The action's name in the vocabulary.
        audit: The action's name in lifecycle's audit log, and the call that carries it out.
        says: What the report calls it, ``{target}`` filled in.
        effect: The expected effect, in words: ``{target}``, ``{cause}`` (the top cause, in
            words) and ``{finding}`` (`` (the failing finding)``, or nothing) filled in.
        target: What it acts on (None: nothing in particular).
        approvers: ``owner_or_oncall`` (the experiment's owner or on-call) or ``oncall`` only.
        share: Share of the target's traffic the action changes (blast radius per unit).
        optional_target: It has a target kind, yet a proposal may name none.
        says_untargeted: What the report calls it when it names no target (default ``says``).
        effect_for: The expected effect where one cause calls for other words.
    """

    name: MitigationAction
    audit: Audit
    says: str
    effect: str
    target: TargetKind | None = None
    approvers: Approvers = "oncall"
    share: float = 0.0
    optional_target: bool = False
    says_untargeted: str | None = None
    effect_for: Mapping[Cause, str] = field(default_factory=dict)

    @property
    def required_target(self) -> bool:
        """A proposal without a target is meaningless (and refused)."""
        return self.target is not None and not self.optional_target

    def describe(self, target: str | None) -> str:
        """What the report calls the action on ``target``."""
        if target is None and self.says_untargeted is not None:
            return self.says_untargeted
        return self.says.format(target=target)

    def expected(self, target: str | None, cause: RootCause, finding: str) -> str:
        """The expected effect of the action on ``target`` against ``cause``, in words."""
        text = self.effect_for.get(cause.cause, self.effect)
        return text.format(
            target=target,
            cause=cause.cause.replace("_", " "),
            finding=f" ({finding})" if finding else "",
        )

    def run(self, act: Actions, target: str | None, actor: str, reason: str, key: str) -> Any:
        """Carry the action out through the experiment core, once per ``key``.

        Returns:
            Lifecycle's answer (False: it was in effect already, nothing changed).
        """
        match self.audit:
            case "kill":
                return act.kill(str(target), actor, reason, key)
            case "ramp_down":
                return act.ramp_down(str(target), actor, reason, key)
            case "rollback_model":
                return act.rollback_model(str(target), actor, reason, key)
            case "start":
                return act.start(str(target), actor, reason, key)
            case "escalate_infra" | "escalate_data" | "note":
                return act.record(self.audit, target, actor, reason, key)
            case _:
                assert_never(self.audit)


_SPECS = (
    ActionSpec(
        "kill_experiment",
        target="experiment",
        audit="kill",
        approvers="owner_or_oncall",
        share=1.0,
        says="kill experiment {target}",
        effect="Units of experiment {target} return to the production model; the {cause} it "
        "causes{finding} should stop within minutes.",
    ),
    ActionSpec(
        "ramp_down",
        audit="ramp_down",
        target="experiment",
        approvers="owner_or_oncall",
        share=0.5,
        says="ramp experiment {target} down one stage",
        effect="Experiment {target} goes back one rollout stage, halving the traffic exposed.",
    ),
    ActionSpec(
        "rollback_model",
        audit="rollback_model",
        target="model",
        share=1.0,
        says="roll model {target} back",
        effect="Model {target} reverts to its previous version{finding}.",
    ),
    ActionSpec(
        "escalate_infra",
        audit="escalate_infra",
        says="escalate to infrastructure on-call",
        effect="Infrastructure on-call is paged; no experiment changes.",
    ),
    ActionSpec(
        "escalate_data",
        audit="escalate_data",
        target="model",  # whose data or training pipeline to look at, when a model is named
        optional_target=True,
        says="escalate to the data / logging owners of model {target}",
        says_untargeted="escalate to the data / logging owners",
        effect="The data / logging owners are alerted; no experiment changes.",
        effect_for={
            "stale_model": "The owners of model {target}'s training pipeline are alerted to "
            "restore its refreshes; no experiment or model changes until a fresh version is "
            "published."
        },
    ),
    ActionSpec(
        "start_experiment",
        target="experiment",
        audit="start",
        share=1.0,
        says="start experiment {target}",
        effect="Experiment {target} starts at its first rollout stage; the rollout's health "
        "gate watches it from there.",
    ),
    ActionSpec("none", audit="note", says="no action", effect="Nothing changes."),
)
ACTIONS: Mapping[MitigationAction, ActionSpec] = MappingProxyType({s.name: s for s in _SPECS})
if set(ACTIONS) != set(get_args(MitigationAction)):  # pragma: no cover - an import-time guard
    raise RuntimeError(
        f"agent.actions.ACTIONS must declare exactly {get_args(MitigationAction)}; "
        f"has {sorted(ACTIONS)}"
    )


def spec(action: MitigationAction) -> ActionSpec:
    """The spec of ``action`` (a KeyError cannot happen for a valid ``MitigationAction``)."""
    return ACTIONS[action]
