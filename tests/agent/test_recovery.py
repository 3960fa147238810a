"""Crash- and contention-safety of mitigations: nothing approved is stranded, nothing acts twice.

A "crash" here is a process that stops between two stored steps: the state database and the
checkpoints are left as the dead process wrote them, and a fresh ``Investigator`` on the same
stores (a restarted server) must finish the work exactly once. The actions fake is keyed like
lifecycle's ``ExperimentService``: an action already recorded under its idempotency key is not
repeated, so a resumed action shows as one call.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pandas as pd
import pytest

from agent.store import AgentStore
from tests.agent.conftest import alert
from tests.agent.fakes import FakeActions, FakeToolbox, at, fail
from tools.errors import ApprovalError, StateError, StoreBusy


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so no handler in the agent catches it."""


class KeyedActions(FakeActions):
    """Lifecycle's contract: one effect per idempotency key; optionally dies or stalls once."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()
        self.crash_after_acting = False
        self.busy_once = False

    def kill(self, experiment_id: str, actor: str, reason: str, key: str) -> bool:
        if self.busy_once:
            self.busy_once = False
            raise StoreBusy("lifecycle's store stayed locked")
        if key not in self.keys:
            self.keys.add(key)
            self._do("kill_experiment", experiment_id, actor)
        if self.crash_after_acting:
            self.crash_after_acting = False
            raise Crash
        return True


def fallback_world(recovered: bool = True) -> FakeToolbox:
    rows = [
        {
            "minute": at(m).isoformat(),
            "arm": "all",
            "value": (0.0175 if 152 <= m < 159 else 0.0) + (m % 3) * 1e-4,
        }
        for m in range(0, 190 if recovered else 159)
    ]
    return FakeToolbox(
        {
            "fallback@experiment:879": fail(
                "fallback", "Fallback rate of arm test 33%.", experiment="879", onset=at(152)
            ),
        },
        onset=at(150),
        series={"fallback_rate": pd.DataFrame(rows)},
    )


def keyed(h: Any) -> KeyedActions:
    h.actions = KeyedActions()
    return h.actions  # type: ignore[no-any-return]


def paused(harness: Any) -> tuple[Any, KeyedActions, Any, Any, str]:
    """A fallback world investigated up to its approval: harness, actions, investigator, view,
    and the proposed kill's id."""
    h = harness(fallback_world())
    actions = keyed(h)
    inv = h.investigator()
    view = inv.investigate(alert())
    return h, actions, inv, view, view.mitigations[0].id


def test_an_approval_stored_just_before_a_crash_is_executed_once_on_recovery(harness):
    h, actions, first, view, mid = paused(harness)
    # The dead process stored the approval and died before resuming the graph.
    assert first.store.transition(mid, ["proposed"], "approved", approved_by="alice")
    first.close()
    second = h.investigator()  # the restarted server
    assert mid in second.recover(grace_s=0)
    assert actions.calls == [("kill_experiment", "879", "alice")]
    assert second.get(view.id).status == "completed"
    assert second.store.get_mitigation(mid).status == "verified"
    assert second.recover(grace_s=0) == ()  # nothing left to do, and nothing acts again
    assert actions.calls == [("kill_experiment", "879", "alice")]


def test_a_crash_after_acting_before_recording_it_is_finished_without_acting_twice(harness):
    h, actions, first, view, mid = paused(harness)
    actions.crash_after_acting = True
    with pytest.raises(Crash):
        first.approve(mid, "alice")
    assert first.store.get_mitigation(mid).status == "executing"
    assert first.get(view.id).status == "awaiting_approval"
    # The restarted server resumes the graph where it stopped, in its execute step.
    second = h.investigator()
    assert second.recover(grace_s=0)
    assert actions.calls == [("kill_experiment", "879", "alice")]
    assert second.store.get_mitigation(mid).status == "verified"
    assert second.get(view.id).status == "completed"
    executed = [e for e in h.notifier.events if e[0] == "executed"]
    assert executed == [("executed", mid, "executed")]


def test_a_fresh_executing_mitigation_is_left_to_its_process_until_the_grace_passes(harness):
    h = harness(fallback_world())
    actions = keyed(h)
    inv = h.investigator()
    mid = inv.investigate(alert()).mitigations[0].id
    inv.store.transition(mid, ["proposed"], "approved", approved_by="alice")
    inv.store.transition(mid, ["approved"], "executing", detail={"executing_since": time.time()})
    assert mid not in inv.recover(grace_s=60)
    assert actions.calls == []
    assert mid in inv.recover(grace_s=0)
    assert actions.calls == [("kill_experiment", "879", "alice")]


def test_approving_a_stranded_approval_again_drives_it_to_the_end(harness):
    _h, actions, inv, view, mid = paused(harness)
    inv.store.transition(mid, ["proposed"], "approved", approved_by="alice")
    done = inv.approve(mid, "alice")
    assert done.status == "verified"
    assert actions.calls == [("kill_experiment", "879", "alice")]
    assert inv.get(view.id).status == "completed"


def test_a_busy_store_during_the_act_leaves_it_resumable_not_failed(harness):
    _h, actions, inv, view, mid = paused(harness)
    actions.busy_once = True
    with pytest.raises(StoreBusy):
        inv.approve(mid, "alice")
    assert inv.store.get_mitigation(mid).status == "executing"
    assert inv.get(view.id).status == "awaiting_approval"  # not failed
    assert mid in inv.recover(grace_s=0)
    assert actions.calls == [("kill_experiment", "879", "alice")]
    assert inv.get(view.id).status == "completed"


def test_the_policy_answers_before_the_status_does(harness):
    h = harness(fallback_world())
    keyed(h)
    inv = h.investigator()
    view = inv.investigate(alert())
    mid = view.mitigations[0].id
    inv.approve(mid, "alice")
    with pytest.raises(ApprovalError, match="mallory"):
        inv.approve(mid, "mallory")  # an executed mitigation tells a stranger nothing
    with pytest.raises(ApprovalError, match="mallory"):
        inv.reject(mid, "mallory")
    with pytest.raises(StateError):
        inv.reject(mid, "alice")


def test_nobody_decides_under_the_agents_own_name(harness):
    h = harness(fallback_world(), oncall=["carol", "vigil"])
    actions = keyed(h)
    inv = h.investigator()
    mid = inv.investigate(alert()).mitigations[0].id
    with pytest.raises(ApprovalError, match="agent's own identity"):
        inv.reject(mid, "vigil")
    with pytest.raises(ApprovalError, match="agent's own identity"):
        inv.approve(mid, "Vigil")
    assert inv.store.get_mitigation(mid).status == "proposed"
    assert actions.calls == []


def test_verification_that_cannot_read_telemetry_is_pending_and_retried(harness):
    box = fallback_world()
    h = harness(box)
    keyed(h)
    inv = h.investigator()
    view = inv.investigate(alert())
    mid = view.mitigations[0].id
    real = box.metric_series

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise OSError("IO Error: Could not set lock on file telemetry.duckdb")

    box.metric_series = unreadable  # type: ignore[method-assign]
    done = inv.approve(mid, "alice")
    assert done.status == "executed" and done.recovered is None
    assert done.verification_pending is not None and "lock" in done.verification_pending
    assert inv.get(view.id).status == "completed"  # acting succeeded; the investigation ended
    box.metric_series = real  # type: ignore[method-assign]
    assert mid in inv.recover(grace_s=0)
    later = inv.store.get_mitigation(mid)
    assert later.status == "verified" and later.recovered is True
    assert later.verification_pending is None


def test_concurrent_approvals_and_rejections_from_separate_connections(harness):
    """Ten approvers and ten rejecters, each with its own engine on one SQLite file: one
    decision wins, the others get a clear answer, no lock error escapes, the kill runs once."""
    h, actions, inv, _view, mid = paused(harness)
    deciders = [h.investigator() for _ in range(20)]
    barrier = threading.Barrier(len(deciders))
    outcomes: list[str] = []
    unexpected: list[BaseException] = []
    guard = threading.Lock()

    def decide(i: int) -> None:
        barrier.wait()
        try:
            if i % 2:
                m = deciders[i].approve(mid, "alice")
                result = f"approve:{m.status}"
            else:
                m = deciders[i].reject(mid, "carol")
                result = f"reject:{m.status}"
        except StateError:
            result = "refused"
        except BaseException as exc:  # any other error is a failure of the store
            with guard:
                unexpected.append(exc)
            return
        with guard:
            outcomes.append(result)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(len(deciders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert unexpected == []
    assert len(outcomes) == 20
    final = inv.store.get_mitigation(mid).status
    # Every answer names the one real outcome: the losing side is refused, never told "done".
    if final == "rejected":
        assert actions.calls == []
        assert set(outcomes) <= {"reject:rejected", "refused"}
    else:
        assert final in ("executed", "verified")
        assert actions.calls == [("kill_experiment", "879", "alice")]
        assert {o for o in outcomes if o.startswith("reject")} == set()
        answered = {o.split(":")[1] for o in outcomes if o != "refused"}
        assert answered <= {"approved", "executing", "executed", "verified"}  # in flight or done


def test_store_writes_wait_for_a_held_write_lock_instead_of_failing(tmp_path):
    """A read-then-write under another writer's lock waits its turn (BEGIN IMMEDIATE)."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    a, b = AgentStore(url), AgentStore(url)
    from agent.models import MitigationView

    a.add_mitigation(
        MitigationView(
            id="m1",
            investigation_id=None,
            action="kill_experiment",
            target="879",
            status="proposed",
            blast_radius=0.1,
        )
    )
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with a.engine.execution_options(vigil_write=True).begin() as conn:
            conn.exec_driver_sql("UPDATE agent_mitigations SET reason = 'held'")
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    started = time.monotonic()
    assert b.transition("m1", ["proposed"], "approved", detail={"by": "b"})
    assert time.monotonic() - started >= 0.25  # it waited for the holder, then won
    holder.join()
    assert b.get_mitigation("m1").status == "approved"
    a.engine.dispose()
    b.engine.dispose()


def test_contention_past_the_budget_is_a_retryable_error(tmp_path):
    from sqlalchemy import create_engine, event

    from agent.models import MitigationView

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = AgentStore(url, busy_s=0.3)
    store.add_mitigation(
        MitigationView(
            id="m1",
            investigation_id=None,
            action="kill_experiment",
            target="879",
            status="proposed",
            blast_radius=0.1,
        )
    )
    store.engine.dispose()

    @event.listens_for(store.engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=20")

    blocker = create_engine(url, connect_args={"isolation_level": None})
    with blocker.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="locked"):
            store.transition("m1", ["proposed"], "approved", approved_by="alice")
        assert time.monotonic() - started >= 0.2  # retried with backoff before giving up
        conn.exec_driver_sql("ROLLBACK")
    assert store.get_mitigation("m1").status == "proposed"
    assert store.transition("m1", ["proposed"], "approved", approved_by="alice")
    blocker.dispose()
    store.engine.dispose()


def test_a_crash_after_a_rejection_before_the_investigation_finished_is_resumed(harness):
    h, actions, first, view, mid = paused(harness)

    def die(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    real = first.store.mitigations_of
    first.store.mitigations_of = die  # type: ignore[method-assign]  # the finish step dies
    with pytest.raises(Crash):
        first.reject(mid, "alice")
    first.store.mitigations_of = real  # type: ignore[method-assign]
    assert first.store.get_mitigation(mid).status == "rejected"
    assert first.get(view.id).status == "awaiting_approval"  # stranded: nothing left to decide
    second = h.investigator()
    assert view.id in second.recover(grace_s=0)
    assert second.get(view.id).status == "completed"
    assert actions.calls == []


def test_a_crash_between_a_steps_writes_and_its_checkpoint_is_resumed(harness):
    """The narrowest window, as a real SIGKILL left it in the chaos bench: the approval step's
    writes are saved, the checkpoint after it is not (a task, but no ``next``)."""
    h, actions, first, view, mid = paused(harness)
    saver = first._checkpoints.saver
    real_put = saver.put

    def put_then_die(*args: Any, **kwargs: Any) -> Any:
        saver.put = real_put  # type: ignore[method-assign]
        raise Crash

    saver.put = put_then_die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        first.approve(mid, "alice")
    snapshot = first.graph.get_state(first._config(view.id))
    assert snapshot.tasks and not snapshot.next
    assert first.get(view.id).status == "awaiting_approval"
    second = h.investigator()
    assert second.recover(grace_s=0)
    assert second.get(view.id).status == "completed"
    assert actions.calls == [("kill_experiment", "879", "alice")]
