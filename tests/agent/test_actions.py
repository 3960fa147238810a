"""The action table: every action declared once, each carried out by the lifecycle call it names."""

from __future__ import annotations

from typing import get_args

import pytest

from agent.actions import ACTIONS, spec
from agent.models import CAUSES, MitigationAction, RootCause
from agent.runtime import ServiceActions
from lifecycle.service import ExperimentService
from lifecycle.validation import parse_experiment_file
from tests.lifecycle.conftest import world


def test_every_action_of_the_vocabulary_has_exactly_one_spec():
    assert set(ACTIONS) == set(get_args(MitigationAction))
    assert all(spec(name).name == name for name in ACTIONS)


@pytest.mark.parametrize(
    ("action", "target"),
    [
        ("kill_experiment", "879"),
        ("ramp_down", "879"),
        ("rollback_model", "ctr_v41"),
        ("escalate_infra", None),
        ("escalate_data", "ctr_v41"),
    ],
)
def test_each_action_reaches_lifecycle_once_under_its_audit_name(
    tmp_path, action: MitigationAction, target: str | None
):
    service = ExperimentService(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        service.create(parse_experiment_file(world()), "alice", start=True, reason="launch")
        before = len(service.audit())
        act = ServiceActions(service)
        key = f"inv-1-m{action}"
        spec(action).run(act, target, "carol", "test", key)
        spec(action).run(act, target, "carol", "test", key)  # a resumed execution: no repeat
        entries = service.audit()[before:]
        assert [e.action for e in entries] == [spec(action).audit]
        assert entries[0].actor == "carol"
    finally:
        service.close()


@pytest.mark.parametrize("action", get_args(MitigationAction))
def test_every_action_says_what_it_does_and_expects_for_every_cause(action: MitigationAction):
    action_spec = spec(action)
    for target in ("879", None):
        said = action_spec.describe(target)
        assert said and "{" not in said
        if target is not None and action_spec.target is not None:
            assert target in said
        for cause in CAUSES:
            top = RootCause(cause=cause, experiment="879", confidence=0.9)
            expected = action_spec.expected(target, top, "fallback_rate +0.3")
            assert expected and "{" not in expected
    assert "stale model" in spec("kill_experiment").expected(
        "879", RootCause(cause="stale_model", confidence=0.9), ""
    )
    assert "training pipeline" in spec("escalate_data").expected(
        "ctr_v41", RootCause(cause="stale_model", confidence=0.9), ""
    )
