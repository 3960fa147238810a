"""ExperimentService end to end on a real SQLite file: create, allocate, kill, roll out, audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from lifecycle.allocation import KillScope
from lifecycle.config import ModelEntry
from lifecycle.gate import ArmSummary, GateInput
from lifecycle.service import ExperimentService
from lifecycle.store import VERSION_TABLE, metadata
from lifecycle.validation import parse_experiment_file
from tests.lifecycle.conftest import Clock, world
from tools.errors import ConfigError, NotFoundError, StateError


def _treated_unit(service: ExperimentService, exp_id: str) -> dict[str, int]:
    allocator = service.allocator()
    return next(
        {"unit_id": u} for u in range(100_000) if allocator.is_enabled({"unit_id": u}, exp_id)
    )


def test_create_stores_everything_and_audits_each_object(service: ExperimentService) -> None:
    ids = service.create(parse_experiment_file(world()), "alice", reason="launch")
    assert ids == ["879", "901"]
    view = service.get("879")
    assert (view.status, view.owner, view.range_start, view.range_end) == ("draft", "alice", 0, 50)
    assert view.config.arms["test"].model == "ctr_v42"
    assert [v.id for v in service.list()] == ["879", "901"]
    assert {(m.id, m.version, m.serving) for m in service.models()} == {
        ("ctr_v41", "1", False),
        ("ctr_v41", "2", True),
        ("ctr_v42", "1", True),
    }
    actions = [(e.action, e.experiment_id, e.target) for e in service.audit()]
    assert actions == [
        ("create_layer", None, "ranking"),
        ("create_layer", None, "ad_load"),
        ("register_model", None, "ctr_v41@1"),
        ("register_model", None, "ctr_v41@2"),
        ("register_model", None, "ctr_v42@1"),
        ("create", "879", None),
        ("create", "901", None),
    ]
    assert all(e.actor == "alice" and e.reason == "launch" for e in service.audit())
    assert service.version() == service.audit()[-1].id
    # A draft allocates nobody and has not launched.
    assert not service.allocator().is_enabled({"unit_id": 1}, "879")
    assert view.launched_at is None
    service.start("879", "bob", "go")
    assert service.get("879").launched_at == service.audit("879")[-1].at


def test_validation_runs_before_any_state_change(service: ExperimentService) -> None:
    bad = world()
    bad["experiments"][1]["arms"]["test"]["model"] = "ctr_v99"
    with pytest.raises(ConfigError) as err:
        service.create(parse_experiment_file(bad), "alice")
    assert (err.value.field, err.value.value) == ("experiments[1].arms.test.model", "ctr_v99")
    assert service.version() == 0 and service.list() == [] and service.layers() == []
    with pytest.raises(ConfigError):
        service.create(parse_experiment_file(world()), "  ")  # an actor is required


def test_layer_capacity_counts_stored_experiments_until_completed(
    started: ExperimentService,
) -> None:
    more = world(layers=[], models=[])
    more["experiments"] = [dict(more["experiments"][0], id="880", traffic_pct=60)]
    with pytest.raises(ConfigError) as err:
        started.validate(parse_experiment_file(more))
    assert (err.value.field, err.value.value) == ("experiments[0].traffic_pct", 60)
    started.advance("879", "alice", force=True, reason="skip")
    started.advance("879", "alice", force=True, reason="skip")
    started.advance("879", "alice", force=True, reason="skip")
    assert started.get("879").status == "running"
    started.complete("879", "alice", "shipped")
    assert started.create(parse_experiment_file(more), "alice") == ["880"]
    assert started.get("880").range_start == 0.0  # the freed range is reused


def test_every_state_change_appends_exactly_its_audit_entries(
    started: ExperimentService, clock: Clock
) -> None:
    def step(expected: list[str], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        before = started.version()
        result = fn(*args, **kwargs)
        new = [e for e in started.audit() if e.id > before]
        assert [e.action for e in new] == expected, fn
        assert started.version() == (new[-1].id if new else before)
        return result

    step(["kill"], started.kill, "901", "carol", "bad ads")
    step([], started.kill, "901", "carol", "again")
    step(["release"], started.release, "901", "carol", "fixed")
    step(["resume"], started.resume, "901", "carol", "go")
    step(["pause"], started.pause, "901", "carol", "hold on")
    step(["resume"], started.resume, "901", "carol", "go")
    step(["advance_forced"], started.advance, "879", "dave", force=True, reason="ok")
    step(["ramp_down"], started.ramp_down, "879", "agent", "regression", key="m-1")
    step([], started.ramp_down, "879", "agent", "regression", key="m-1")
    step(["kill"], started.kill, "ranking", "erin", "layer incident", scope="layer")
    step(["release"], started.release, "ranking", "erin", "over", scope="layer")
    step(["kill"], started.kill, None, "erin", "all stop", scope="global")
    step(["release"], started.release, None, "erin", "over", scope="global")
    step(["rollback_model"], started.rollback_model, "ctr_v41", "frank", "bad refresh")
    step([], started.rollback_model, "ctr_v41", "frank", "bad refresh", version="2")
    step(["escalate_infra"], started.record, "escalate_infra", "879", "agent", "5xx", key="e1")
    step([], started.record, "escalate_infra", "879", "agent", "5xx", key="e1")
    clock.advance(61)
    step([], started.advance, "879", "gina", stats=GateInput())  # hold: no state change
    entries = started.audit("901")
    assert [e.action for e in entries][-6:] == [
        "start",
        "kill",
        "release",
        "resume",
        "pause",
        "resume",
    ]
    kill = next(e for e in entries if e.action == "kill")
    assert (kill.actor, kill.reason, kill.target) == ("carol", "bad ads", "experiment:901")
    assert kill.before["status"] == "ramping" and kill.after["status"] == "killed"
    assert kill.before["kill_switch"] == "inactive" and kill.after["kill_switch"] == "active"


def test_kill_takes_effect_on_the_very_next_is_enabled(started: ExperimentService) -> None:
    allocator = started.allocator()
    request = _treated_unit(started, "879")
    assert started.kill("879", "oncall", "revenue regression") is True
    assert allocator.is_enabled(request, "879") is False  # the same object, the next call
    assert allocator.assign(request, "879") is None
    view = started.get("879")
    assert view.killed and view.status == "killed" and view.blocked_by == [("experiment", "879")]
    assert started.kill("879", "oncall", "twice") is False
    assert [e.action for e in started.audit("879")].count("kill") == 1
    assert started.release("879", "oncall", "fixed") is True
    assert started.get("879").status == "paused"  # release never re-enables traffic by itself
    assert not allocator.is_enabled(request, "879")
    started.resume("879", "oncall", "go")
    assert allocator.is_enabled(request, "879")


@pytest.mark.parametrize(
    ("scope", "target"), [("layer", "ranking"), ("model", "ctr_v42"), ("global", None)]
)
def test_wider_kill_scopes(
    started: ExperimentService, scope: KillScope, target: str | None
) -> None:
    request = _treated_unit(started, "879")
    assert started.kill(target, "oncall", "incident", scope=scope) is True
    assert not started.allocator().is_enabled(request, "879")
    view = started.get("879")
    assert view.status == "ramping" and view.blocked_by == [(scope, target or "*")]
    assert started.get("901").killed == (scope == "global")
    assert [(k.scope, k.target) for k in started.kill_switches()] == [(scope, target or "*")]
    assert started.release(target, "oncall", "over", scope=scope) is True
    assert started.allocator().is_enabled(request, "879")


def test_record_only_takes_decision_actions(started: ExperimentService) -> None:
    with pytest.raises(ConfigError) as err:
        started.record(cast(Any, "kill"), "879", "agent", "not through record")
    assert (err.value.field, err.value.value) == ("action", "kill")
    assert started.record("escalate_data", None, "agent", "logging loss")
    entry = started.audit()[-1]
    assert (entry.action, entry.experiment_id, entry.target) == ("escalate_data", None, None)
    assert started.get("879").status == "ramping"


def test_kill_refuses_unknown_targets_and_missing_reasons(started: ExperimentService) -> None:
    with pytest.raises(NotFoundError):
        started.kill("nope", "oncall", "x")
    with pytest.raises(NotFoundError):
        started.kill("ctr_v99", "oncall", "x", scope="model")
    with pytest.raises(ConfigError) as err:
        started.kill("879", "oncall", "")
    assert err.value.field == "reason"
    with pytest.raises(ConfigError) as err:
        started.kill("879", "oncall", "x", scope=cast(KillScope, "planet"))
    assert (err.value.field, err.value.value) == ("scope", "planet")
    assert started.kill_switches() == []


def test_kill_with_an_idempotency_key_is_not_repeated(started: ExperimentService) -> None:
    assert started.kill("879", "agent", "mitigation", key="mit-7") is True
    started.release("879", "oncall", "fixed")
    assert started.kill("879", "agent", "mitigation retried", key="mit-7") is False
    assert not started.get("879").blocked_by


def test_ramp_down_is_idempotent_and_protective(started: ExperimentService) -> None:
    started.advance("879", "a", force=True, reason="r")
    assert started.get("879").stage_percent == 50
    assert started.ramp_down("879", "agent", "fallback spike", key="m1") is True
    assert started.ramp_down("879", "agent", "fallback spike", key="m1") is False
    assert started.get("879").stage_percent == 10
    assert started.ramp_down("879", "agent", "again") is True
    assert started.get("879").status == "paused"
    assert started.ramp_down("879", "agent", "nothing left") is False


def test_rollback_model(started: ExperimentService) -> None:
    with pytest.raises(StateError):
        started.rollback_model("ctr_v42", "oncall", "only one version")
    with pytest.raises(NotFoundError):
        started.rollback_model("ctr_v99", "oncall", "x")
    assert started.rollback_model("ctr_v41", "oncall", "bad refresh", version="2") is True
    serving = {m.id: m.version for m in started.models() if m.serving}
    assert serving["ctr_v41"] == "1"
    assert started.rollback_model("ctr_v41", "oncall", "bad refresh", version="2") is False
    entry = started.audit()[-1]
    assert (entry.action, entry.before, entry.after) == (
        "rollback_model",
        {"version": "2", "rolled_back": "2"},
        {"version": "1"},
    )
    started.register_models([ModelEntry(id="ctr_v42", version="2")], "oncall")
    assert started.rollback_model("ctr_v42", "agent", "bad", key="k") is True
    assert started.rollback_model("ctr_v42", "agent", "bad", key="k") is False


def _stats(test_mean: float, units: tuple[int, int] = (5000, 5000)) -> GateInput:
    return GateInput(
        units={"control": units[0], "test": units[1]},
        metrics={
            "revenue_per_request": {
                "control": ArmSummary(n=200_000, mean=0.05, var=0.01),
                "test": ArmSummary(n=200_000, mean=test_mean, var=0.01),
            }
        },
    )


def test_advance_through_the_gate(started: ExperimentService, clock: Clock) -> None:
    healthy = _stats(0.0501)
    held = started.advance("879", "bot", stats=healthy)
    assert (held.decision, held.after) == ("hold", "ramping(0)")  # minimum time not run
    clock.advance(61)
    moved = started.advance("879", "bot", stats=healthy)
    assert (moved.decision, moved.before, moved.after) == ("advance", "ramping(0)", "ramping(1)")
    assert started.get("879").stage_percent == 50
    entry = started.audit("879")[-1]
    assert entry.action == "advance" and entry.after["gate"]["decision"] == "advance"
    # A regression rolls back at once, minimum time or not.
    back = started.advance("879", "bot", stats=_stats(0.045))
    assert (back.decision, back.after) == ("rollback", "ramping(0)")
    assert started.audit("879")[-1].action == "rollback"
    clock.advance(61)
    assert started.advance("879", "bot", stats=healthy).after == "ramping(1)"
    clock.advance(61)
    assert started.advance("879", "bot", stats=healthy).after == "ramping(2)"
    clock.advance(121)
    assert started.advance("879", "bot", stats=healthy).after == "running"
    with pytest.raises(StateError) as err:
        started.advance("879", "bot", stats=healthy)
    assert "experiment 879" in str(err.value) and "running" in str(err.value)
    with pytest.raises(ConfigError):
        started.advance("901", "bot", force=True)  # forcing needs a reason


def test_illegal_transitions_are_refused_and_change_nothing(started: ExperimentService) -> None:
    version = started.version()
    with pytest.raises(StateError):
        started.resume("879", "a", "not paused")
    with pytest.raises(StateError):
        started.start("879", "a")
    with pytest.raises(NotFoundError):
        started.pause("nope", "a", "x")
    assert started.version() == version


def test_another_process_changes_reach_the_allocator_on_refresh(
    started: ExperimentService, state_url: str
) -> None:
    request = _treated_unit(started, "879")
    allocator = started.allocator()
    other = ExperimentService(state_url)
    try:
        assert other.kill("879", "oncall", "from elsewhere")
    finally:
        other.close()
    assert allocator.is_enabled(request, "879")  # not yet seen
    assert started.refresh() is True
    assert not allocator.is_enabled(request, "879")
    assert started.refresh() is False


def test_migrations_build_the_declared_schema_and_keep_the_audit_log_append_only(
    started: ExperimentService,
) -> None:
    engine = started._engine
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(ctx, metadata) == []
        assert ctx.get_current_revision() == "0003"  # head: 0003 adds declared model costs
    for sql in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError) as err, engine.begin() as conn:
            conn.execute(text(sql))
        assert "append-only" in str(err.value)
    # Opening the store again is a no-op migration.
    again = ExperimentService(str(engine.url))
    assert again.version() == started.version()
    again.close()


def test_in_memory_store(clock: Clock) -> None:
    svc = ExperimentService("sqlite://", clock=clock)
    svc.create(parse_experiment_file(world()), "alice", start=True)
    assert svc.get("879").status == "ramping"
    svc.close()


def test_edit_changes_metadata_only_and_audits_it(started):
    from lifecycle.config import Guardrail

    stored = started.get("879").config
    before = len(started.audit())
    renamed = stored.model_copy(
        update={"name": "Renamed", "owner": "dana", "guardrails": [Guardrail(metric="srm")]}
    )
    assert started.edit(renamed, "alice", "ownership moved") == ["name", "owner", "guardrails"]
    now = started.get("879").config
    assert (now.name, now.owner, [g.metric for g in now.guardrails]) == ("Renamed", "dana", ["srm"])
    entries = started.audit()[before:]
    assert [e.action for e in entries] == ["edit"]
    assert started.edit(renamed, "alice") == []  # already matches: nothing recorded
    assert len(started.audit()) == before + 1

    moved = renamed.model_copy(update={"traffic_pct": 75.0})
    with pytest.raises(ConfigError, match="traffic_pct"):
        started.edit(moved, "alice")
    assert started.get("879").config.traffic_pct == stored.traffic_pct
    with pytest.raises(NotFoundError):
        started.edit(renamed.model_copy(update={"id": "nope"}), "alice")
