"""Follow-ups: an investigation that could not see is watched, and re-run on fresh data.

An investigation whose checks could not rule a fault in or out ends ``inconclusive`` in the graph;
:func:`settle` (called by the finish node) makes it ``watching`` instead and stores when it is
re-run: ``Settings.followup_minutes`` after it began watching, on the telemetry clock (+10, +20,
+40 by default). After the last one it gives up: ``inconclusive``, "gave up after N follow-ups:
<reason>".

:class:`FollowUpRunner` runs what is due. Each follow-up is claimed first, by a compare-and-set in
the state store (one process wins; the claim, the due time and the history live in the store, so a
restart resumes them), then the investigation's graph is re-run from its first checkpoint (a fork
of the same LangGraph thread, so approvals, recovery and verification keep working on it) with the
alert's window ending at the follow-up's time. A follow-up that finds a cause proposes its
mitigation (``awaiting_approval``, the normal approval path); one that still cannot see goes back
to ``watching``. Every follow-up is recorded in the investigation's history (the report's
"Follow-ups" section, the API) and told to the notifier (a reply in the Slack thread).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from langchain_core.runnables import RunnableConfig

from agent.coverage import NO_ROOT_CAUSE
from agent.deps import Deps
from agent.models import Alert, FollowUp, InvestigationView
from agent.state import CheckOutcome, InvestigationState
from agent.store_followups import Claim
from tools.errors import RetryableError
from tools.vocabulary import as_utc

__all__ = [
    "FOLLOWUP_LABEL",
    "FollowUpRunner",
    "describe",
    "looks",
    "runner_id",
    "settle",
    "spent",
]

_log = logging.getLogger(__name__)

FOLLOWUP_LABEL = "vigil_followup"
"""Label a follow-up's alert carries in its graph state: the follow-up's number."""


def looks(alert: Alert) -> int:
    """How many times the checks have looked at this alert's data: 1, then 1 + each follow-up."""
    try:
        return 1 + max(0, int(alert.labels.get(FOLLOWUP_LABEL, "0")))
    except ValueError:
        return 1


def spent(outcome: CheckOutcome, n_looks: int) -> CheckOutcome:
    """A check's failure at the ``n_looks``-th look at one alert, held to ``alpha_fail / n_looks``.

    Each follow-up tests again what the first run tested, on more data: every look is another
    chance for a healthy arm to cross ``alpha_fail`` by luck. Bonferroni over the looks keeps the
    family-wise rate of the whole watch at the check's own ``alpha_fail``. A failure that does not
    reach it stays a warning (a candidate or a hint, never an action), with the reason in its
    summary; results without a p-value (a snapshot's age is read, not estimated) are unchanged.
    """
    r = outcome.result
    alpha = r.params.get("alpha_fail")
    if (
        n_looks <= 1
        or r.verdict != "fail"
        or r.p_value is None
        or not isinstance(alpha, int | float)
        or r.p_value <= alpha / n_looks
    ):
        return outcome
    summary = (
        f"{r.summary.rstrip()} Not a failure at this look: the data of one alert has now been "
        f"tested {n_looks} times, so a failure must reach p ≤ {alpha / n_looks:.2g}."
    )
    result = r.model_copy(update={"verdict": "warn", "summary": summary})
    return outcome.model_copy(update={"result": result})


def runner_id() -> str:
    """This process's name in follow-up claims (host, pid and a random part)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _reason(state: InvestigationState) -> str:
    return state.diagnosis.reason if state.diagnosis is not None else ""


def settle(deps: Deps, state: InvestigationState) -> InvestigationState:
    """The state the finish node stores: an inconclusive one is watched while follow-ups remain.

    Idempotent (a finish node re-run after a crash schedules the same follow-up).

    Args:
        deps: The store, settings (``followup_minutes``) and telemetry clock.
        state: The graph state with the status the graph would end in.

    Returns:
        ``state`` as it is, or with status ``watching`` (the next follow-up stored), or, once the
        follow-ups are spent, ``inconclusive`` with "gave up after N follow-ups" in its reason.
    """
    schedule = list(deps.settings.followup_minutes)
    if state.status != "inconclusive" or not schedule or state.diagnosis is None:
        return state
    investigation_id = state.investigation_id
    started, since = deps.store.followup_count(investigation_id)
    # A follow-up's window ends at its own "now"; a first run's at the telemetry clock's.
    followup = FOLLOWUP_LABEL in state.alert.labels
    now = as_utc(state.alert.fired_at) if followup else as_utc(deps.clock())
    first = None
    if since is None:
        since = now
        first = FollowUp(
            n=0,
            ran_at=now,
            status="watching",
            cause="none",
            summary=f"inconclusive: {_reason(state)}",
        )
    if started < len(schedule):
        due = since + timedelta(minutes=schedule[started])
        if due <= now:  # ran late (a long outage, a manual run ahead of time): keep the step
            step = schedule[started] - (schedule[started - 1] if started else 0)
            due = now + timedelta(minutes=step)
        deps.store.schedule_followup(investigation_id, due, first)
        return state.model_copy(update={"status": "watching"})
    reason = f"gave up after {started} follow-up{'s' if started != 1 else ''}: {_reason(state)}"
    causes = list(state.diagnosis.causes)
    if causes and causes[0].cause == "none":
        text = f"{NO_ROOT_CAUSE}: {reason}."
        causes[0] = causes[0].model_copy(update={"explanation": text})
    diagnosis = state.diagnosis.model_copy(update={"reason": reason, "causes": causes})
    deps.store.schedule_followup(investigation_id, None)
    return state.model_copy(update={"diagnosis": diagnosis})


def _top(view: InvestigationView) -> str:
    top = view.root_causes[0] if view.root_causes else None
    if top is None:
        return "none"
    where = f" (experiment {top.experiment})" if top.experiment else ""
    where = where or (f" (model {top.model})" if top.model else "")
    return f"{top.cause}{where}"


def describe(before: InvestigationView, after: InvestigationView) -> str:
    """What a follow-up found and what changed, in one line."""
    top = after.root_causes[0] if after.root_causes else None
    why = top.explanation if top is not None else ""
    why = why.removeprefix(f"{NO_ROOT_CAUSE}: ").rstrip(".")
    if after.status == "awaiting_approval":
        proposed = ", ".join(
            f"{m.action} {m.target}" if m.target else m.action
            for m in after.mitigations
            if m.status == "proposed"
        )
        return f"cause found: {_top(after)}; proposed {proposed or 'a mitigation'}"
    if after.status == "watching":
        due = after.next_followup_at
        nxt = f"; next follow-up at {due:%H:%M} UTC" if due is not None else ""
        return f"still inconclusive: {why}{nxt}"
    if after.status == "inconclusive":
        return why or "gave up"
    if after.status == "failed":
        return f"failed: {after.error or why}"
    if after.status == "completed":
        if top is None or top.cause == "none":
            return "the checks now see no fault: completed, no root cause"
        changed = "" if _top(after) == _top(before) else "cause found: "
        return f"{changed}{_top(after)}; nothing to propose"
    return f"{after.status}: {_top(after)}"


class FollowUpRunner:
    """Runs the follow-ups that are due, each once across processes.

    Args:
        deps: The store, settings, notifier, toolboxes and telemetry clock.
        graph: The compiled investigation graph (checkpointed).
        lock: The per-investigation lock of the ``Investigator`` that owns ``graph``.
        fail: Records an investigation as failed (``Investigator._fail``).
        stopped: Whether a graph snapshot stopped between steps (a crash).
    """

    def __init__(
        self,
        deps: Deps,
        graph: Any,
        lock: Callable[[str], threading.Lock],
        fail: Callable[[str, BaseException], None],
        stopped: Callable[[Any], bool],
    ) -> None:
        self._deps = deps
        self._graph = graph
        self._lock = lock
        self._fail = fail
        self._stopped = stopped
        self.runner = runner_id()

    def run_due(self, now: datetime | None = None) -> list[tuple[str, FollowUp]]:
        """Run every follow-up due at ``now`` (the telemetry clock if None).

        Returns:
            ``(investigation id, what its follow-up found)`` for each one run here.
        """
        now = as_utc(now or self._deps.clock())
        lease = self._deps.settings.followup_lease_s
        done: list[tuple[str, FollowUp]] = []
        for investigation_id in self._deps.store.due_followups(now, lease):
            claim = self._deps.store.claim_followup(investigation_id, self.runner, now, lease)
            if claim is None:
                continue  # another process won it, or it is no longer due
            try:
                entry = self._run(claim, now)
            except RetryableError as exc:  # the claim goes stale and is resumed later
                _log.warning("follow-up %d of %s paused: %s", claim.n, investigation_id, exc)
                continue
            if entry is not None:
                done.append((investigation_id, entry))
        return done

    def _run(self, claim: Claim, now: datetime) -> FollowUp | None:
        store = self._deps.store
        investigation_id = claim.investigation_id
        before = store.get_investigation(investigation_id)
        config = RunnableConfig(configurable={"thread_id": investigation_id})
        ran_at = now
        with self._lock(investigation_id):
            snapshot = self._graph.get_state(config)
            current = snapshot.values.get("alert") if snapshot.values else None
            mine = current is not None and current.labels.get(FOLLOWUP_LABEL) == str(claim.n)
            try:
                if claim.resumed and mine and current is not None:
                    ran_at = as_utc(current.fired_at)
                    if self._stopped(snapshot):
                        self._graph.invoke(None, config, durability="sync")
                else:
                    self._fork(before, claim.n, now, config)
            except RetryableError:
                raise
            except Exception as exc:  # recorded on the investigation, like a first run's
                self._fail(investigation_id, exc)
            finally:
                if not self._graph.get_state(config).tasks:
                    self._deps.toolboxes.drop(investigation_id)
        after = store.get_investigation(investigation_id)
        top = after.root_causes[0].cause if after.root_causes else None
        entry = FollowUp(
            n=claim.n,
            due_at=claim.due_at,
            ran_at=ran_at,
            status=after.status,
            cause=top,
            summary=describe(before, after),
        )
        if not store.finish_followup(investigation_id, self.runner, entry):
            return None  # our claim was taken over (we were too slow); its holder records it
        final = store.get_investigation(investigation_id)
        self._deps.notifier.followup_finished(final, entry)
        return entry

    def _fork(self, view: InvestigationView, n: int, now: datetime, config: RunnableConfig) -> None:
        """Re-run the graph from the thread's first checkpoint with the window ending at ``now``."""
        alert = view.alert.model_copy(
            update={"fired_at": now, "labels": {**view.alert.labels, FOLLOWUP_LABEL: str(n)}}
        )
        initial = InvestigationState(
            investigation_id=view.id, alert=alert, created_at=view.created_at
        )
        history = list(self._graph.get_state_history(config))
        start = config
        if history:  # the oldest checkpoint holds no state yet: a clean branch of the thread
            first = history[-1].config["configurable"]
            start = RunnableConfig(
                configurable={
                    "thread_id": view.id,
                    "checkpoint_ns": first.get("checkpoint_ns", ""),
                    "checkpoint_id": first["checkpoint_id"],
                }
            )
        self._graph.invoke(initial, start, durability="sync")
