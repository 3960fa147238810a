"""The rollout state machine: a pure transition table, no I/O.

::

    draft -> validating -> ramping(0) -> ramping(1) -> ... -> ramping(n-1) -> running -> completed
                 |  reject                 ramp_down goes back one stage; from stage 0 it pauses
               draft        pause: ramping/running -> paused; resume: back to where it was
    kill: any live state -> killed; release: killed -> paused (or draft), never straight to serving

A plan with ``shadow: true`` starts in ``shadow`` instead of ``ramping(0)``: validating -> shadow
-> ramping(0) (``advance``, after the shadow run's checks pass). In shadow the experiment's whole
range is enrolled and served control; its candidates are scored, not served (issue 18).

``running`` is the last stage after its gate passed: the experiment is fully rolled out and its
monitors keep watching it. ``completed`` is terminal. An illegal transition raises
:class:`~tools.errors.StateError` naming the state and the actions it allows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, assert_never, get_args

from lifecycle.allocation import Status
from lifecycle.config import RolloutPlan
from tools.errors import StateError

__all__ = [
    "ACTIONS",
    "Action",
    "RolloutState",
    "allowed_actions",
    "coverage",
    "is_live",
    "transition",
]

Action = Literal[
    "submit",
    "reject",
    "start",
    "advance",
    "ramp_down",
    "pause",
    "resume",
    "kill",
    "release",
    "complete",
]
ACTIONS: tuple[str, ...] = get_args(Action)

_SERVING: frozenset[Status] = frozenset({"shadow", "ramping", "running"})
_LIVE: frozenset[Status] = frozenset(
    {"draft", "validating", "shadow", "ramping", "running", "paused"}
)

_ALLOWED: dict[Status, frozenset[Action]] = {
    "draft": frozenset({"submit", "kill"}),
    "validating": frozenset({"reject", "start", "kill"}),
    "shadow": frozenset({"advance", "ramp_down", "pause", "kill"}),
    "ramping": frozenset({"advance", "ramp_down", "pause", "kill"}),
    "running": frozenset({"ramp_down", "pause", "kill", "complete"}),
    "paused": frozenset({"resume", "kill", "complete"}),
    "killed": frozenset({"release", "complete"}),
    "completed": frozenset(),
}


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where an experiment stands.

    Attributes:
        status: The state.
        stage: Index of the rollout stage (kept while paused or killed, so resume returns to it).
        prior: For ``paused`` and ``killed``: the serving state to return to (``ramping`` or
            ``running``), or ``draft`` for an experiment killed before it served.
    """

    status: Status = "draft"
    stage: int = 0
    prior: Status | None = None


def allowed_actions(state: RolloutState) -> list[str]:
    """The actions the state allows, in table order."""
    return [a for a in ACTIONS if a in _ALLOWED[state.status]]


def transition(
    state: RolloutState, action: Action, stages: int, *, shadow: bool = False
) -> RolloutState:
    """The state after ``action``.

    Args:
        state: The current state.
        action: What to do.
        stages: Number of stages of the rollout plan.
        shadow: The plan runs in shadow mode first (``start`` goes to ``shadow``).

    Raises:
        StateError: When the state does not allow the action.
    """
    if action not in _ALLOWED[state.status]:
        allowed = ", ".join(allowed_actions(state)) or "none: the experiment is completed"
        where = f"{state.status}({state.stage})" if state.status == "ramping" else state.status
        raise StateError(f"cannot {action.replace('_', ' ')} from {where} (allowed: {allowed})")
    last = stages - 1
    match action:
        case "submit":
            return RolloutState("validating", 0)
        case "reject":
            return RolloutState("draft", 0)
        case "start":
            return RolloutState("shadow" if shadow else "ramping", 0)
        case "advance":
            if state.status == "shadow":
                return RolloutState("ramping", 0)
            if state.stage >= last:
                return RolloutState("running", last)
            return replace(state, stage=state.stage + 1)
        case "ramp_down":
            # One stage back; below the first stage (or in shadow) there is only pausing.
            if state.status == "shadow":
                return RolloutState("paused", state.stage, prior="shadow")
            target = state.stage - 1 if state.status == "ramping" else last - 1
            if target < 0:
                return RolloutState("paused", state.stage, prior=state.status)
            return RolloutState("ramping", target)
        case "pause":
            return RolloutState("paused", state.stage, prior=state.status)
        case "resume":
            return RolloutState(state.prior or "ramping", state.stage)
        case "kill":
            prior = (state.prior or "ramping") if state.status == "paused" else state.status
            if prior not in _SERVING:
                prior = "draft"
            return RolloutState("killed", state.stage, prior=prior)
        case "release":
            if state.prior in _SERVING:
                return RolloutState("paused", state.stage, prior=state.prior)
            return RolloutState("draft", 0)
        case "complete":
            return RolloutState("completed", state.stage)
        case _:
            assert_never(action)


def coverage(state: RolloutState, plan: RolloutPlan) -> float:
    """Percent of the experiment's range enrolled: the stage's share while serving, all of it in
    shadow (served control: the shadow run scores the traffic the resource check sized), else 0."""
    if state.status not in _SERVING:
        return 0.0
    if state.status == "shadow":
        return 100.0
    return plan.stages[min(state.stage, len(plan.stages) - 1)].percent


def is_live(status: Status) -> bool:
    """True for states that are neither killed nor completed."""
    return status in _LIVE
