"""The rollout state machine: every legal path, and illegal transitions refused clearly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.config import RolloutPlan, RolloutStage
from lifecycle.rollout import ACTIONS, Action, RolloutState, allowed_actions, coverage, transition
from tools.errors import StateError

PLAN = RolloutPlan(stages=[RolloutStage(percent=p) for p in (5, 25, 50, 100)])
N = len(PLAN.stages)


def run(*actions: Action, state: RolloutState | None = None) -> RolloutState:
    state = state or RolloutState()
    for action in actions:
        state = transition(state, action, N)
    return state


def test_the_happy_path_through_every_stage() -> None:
    state = run("submit", "start")
    assert (state.status, state.stage, coverage(state, PLAN)) == ("ramping", 0, 5)
    seen = [coverage(state, PLAN)]
    for _ in range(N - 1):
        state = run("advance", state=state)
        seen.append(coverage(state, PLAN))
    assert seen == [5, 25, 50, 100] and state.status == "ramping"
    state = run("advance", state=state)
    assert (state.status, coverage(state, PLAN)) == ("running", 100)
    assert run("complete", state=state).status == "completed"


def test_ramp_down_goes_back_one_stage_and_pauses_below_the_first() -> None:
    state = run("submit", "start", "advance", "advance")
    assert run("ramp_down", state=state) == RolloutState("ramping", 1)
    paused = run("ramp_down", state=RolloutState("ramping", 0))
    assert (paused.status, coverage(paused, PLAN)) == ("paused", 0)
    assert run("resume", state=paused) == RolloutState("ramping", 0)
    running = RolloutState("running", N - 1)
    assert run("ramp_down", state=running) == RolloutState("ramping", N - 2)
    assert transition(running, "ramp_down", 1) == RolloutState("paused", N - 1, prior="running")


def test_pause_and_resume_return_to_the_same_place() -> None:
    for state in (RolloutState("ramping", 2), RolloutState("running", N - 1)):
        paused = run("pause", state=state)
        assert paused.status == "paused" and coverage(paused, PLAN) == 0
        assert run("resume", state=paused) == state


def test_kill_and_release_never_go_straight_back_to_serving() -> None:
    killed = run("kill", state=RolloutState("ramping", 1))
    assert killed == RolloutState("killed", 1, prior="ramping")
    assert coverage(killed, PLAN) == 0
    released = run("release", state=killed)
    assert released.status == "paused"
    assert run("resume", state=released) == RolloutState("ramping", 1)
    # Killed while paused remembers what the pause would have resumed.
    assert run("kill", "release", "resume", state=RolloutState("paused", 2, "running")).status == (
        "running"
    )
    # Killed before serving goes back to draft.
    assert run("kill", "release") == RolloutState("draft", 0)


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (RolloutState("draft"), "advance"),
        (RolloutState("draft"), "start"),
        (RolloutState("validating"), "advance"),
        (RolloutState("running", 3), "advance"),
        (RolloutState("paused", 1, "ramping"), "advance"),
        (RolloutState("killed", 1, "ramping"), "resume"),
        (RolloutState("completed", 3), "kill"),
        (RolloutState("ramping", 0), "complete"),
        (RolloutState("ramping", 0), "release"),
    ],
)
def test_illegal_transitions_raise_a_clear_state_error(state: RolloutState, action: Action) -> None:
    with pytest.raises(StateError) as err:
        transition(state, action, N)
    message = str(err.value)
    assert f"cannot {action.replace('_', ' ')} from" in message and "allowed:" in message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ACTIONS), max_size=30))
def test_random_walks_stay_consistent(actions: list[Action]) -> None:
    state = RolloutState()
    for action in actions:
        if action not in allowed_actions(state):
            with pytest.raises(StateError):
                transition(state, action, N)
            continue
        state = transition(state, action, N)
        assert 0 <= state.stage < N
        serving = state.status in ("ramping", "running")
        assert (coverage(state, PLAN) > 0) == serving
        assert (state.prior is not None) == (state.status in ("paused", "killed"))
