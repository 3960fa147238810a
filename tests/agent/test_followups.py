"""Follow-ups: an investigation that cannot see yet is watched and re-run on fresh data.

A real scenario world whose fault is too young when the alert fires (a small arm, minutes after
the onset) goes watching, and the follow-up on the world simulated forward proposes the kill;
on fakes: giving up after the schedule, a crash between the claim and the end of a follow-up
resumed by another process, and two concurrent runners running one follow-up.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.models import FollowUp
from tests.agent.conftest import alert
from tests.agent.fakes import FakeToolbox, at
from tools.result import CheckResult

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BLIND = CheckResult(
    check="calibration",
    verdict="inconclusive",
    summary="Calibration of experiment 879 could not rule out a change of ±25%.",
    experiment="879",
)


class _Crash(BaseException):
    """A process dying mid-step (not an error the agent may catch)."""


class _Notes:
    """The two optional callbacks, recorded."""

    def __init__(self) -> None:
        self.followups: list[tuple[str, int, str]] = []

    def followup_finished(self, view: Any, entry: FollowUp) -> None:
        self.followups.append((view.id, entry.n, str(entry.status)))


class _CrashingBox(FakeToolbox):
    """Healthy-but-blind checks; ``crash`` makes the next change point kill the process."""

    crash = False

    def route(self, name: str, arguments: Any) -> CheckResult:
        if name == "change_point" and self.crash:
            self.crash = False
            raise _Crash("killed -9")
        return super().route(name, arguments)


def _watching(harness: Any, **settings: Any) -> tuple[Any, Any, str]:
    h = harness(_CrashingBox({"calibration@experiment:879": BLIND}), **settings)
    inv = h.investigator()
    view = inv.investigate(alert(metric="calibration"))
    assert view.status == "watching", (view.status, view.error)
    return h, inv, view.id


def test_a_young_fault_is_watched_then_followed_up_to_a_kill(tmp_path: Path) -> None:
    from evals.harness import eval_settings, follow_up, investigate, prepare
    from evals.sim import load_scenario

    # The README's example: 8 % of traffic at 1,500 requests/min; the alert 4 minutes in.
    scenario = load_scenario(EXAMPLES / "young-fault.yaml")
    base = eval_settings(tmp_path).model_copy(update={"followup_minutes": [40]})
    settings = prepare(scenario, base)
    first = investigate(scenario, settings)
    # Four minutes of a 8 % arm: the calibration check cannot tell yet, and says so.
    assert first.status == "watching", first.root_causes[0].explanation
    assert first.mitigations == []
    assert first.next_followup_at is not None
    assert first.next_followup_at - first.followups[0].ran_at == timedelta(minutes=40)

    outcome = follow_up(scenario, settings, first)

    view = outcome.view
    assert view.status == "awaiting_approval", view.root_causes[0].explanation
    assert view.root_causes[0].cause == "miscalibration"
    assert [(m.action, m.target, m.status) for m in view.mitigations] == [
        ("kill_experiment", "e7", "proposed")
    ]
    assert outcome.followups == 1 and outcome.correct_minute == 145
    assert [f.n for f in view.followups] == [0, 1]
    assert view.followups[1].status == "awaiting_approval"
    assert "cause found: miscalibration" in view.followups[1].summary
    assert view.next_followup_at is None
    # The report was rewritten on the fresh data and carries the history.
    assert "**Follow-ups:**" in view.report_markdown
    assert "follow-up 1 on data up to 2026-11-20 08:25 UTC" in view.report_markdown
    assert view.alert.fired_at == first.alert.fired_at  # the alert is what fired, unchanged


def test_a_watching_investigation_gives_up_after_its_followups(harness: Any) -> None:
    h, inv, ident = _watching(harness, followup_minutes=[10, 20])
    notes = _Notes()
    inv.deps.notifier.inner = _Fanout(h.notifier, notes)
    watching = inv.get(ident)
    assert watching.next_followup_at == at(159) + timedelta(minutes=10)
    assert inv.follow_up(at(168)) == []  # not due yet

    first = inv.follow_up(at(170))
    assert [(i, e.n, e.status) for i, e in first] == [(ident, 1, "watching")]
    assert inv.get(ident).next_followup_at == at(159) + timedelta(minutes=20)
    second = inv.follow_up(at(180))
    assert [(e.n, e.status) for _, e in second] == [(2, "inconclusive")]

    view = inv.get(ident)
    assert view.status == "inconclusive" and view.next_followup_at is None
    assert view.root_causes[0].explanation.startswith(
        "No root cause could be established: gave up after 2 follow-ups: Calibration of"
    )
    assert [(f.n, f.status) for f in view.followups] == [
        (0, "watching"),
        (1, "watching"),
        (2, "inconclusive"),
    ]
    assert notes.followups == [(ident, 1, "watching"), (ident, 2, "inconclusive")]
    assert inv.follow_up(at(300)) == []  # nothing more to do
    assert view.mitigations == []


class _Fanout:
    def __init__(self, *inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> None:
            for n in self._inner:
                method = getattr(n, name, None)
                if method is not None:
                    method(*args)

        return call


def test_a_crash_between_claim_and_completion_is_resumed_by_another_process(
    harness: Any,
) -> None:
    h, first, ident = _watching(harness, followup_minutes=[10, 20], followup_lease_s=0.05)
    h.toolbox.crash = True
    with pytest.raises(_Crash):
        first.follow_up(at(170))  # claimed, forked, then died inside localize
    stranded = first.store.get_investigation(ident)
    assert [f.n for f in stranded.followups] == [0, 1] and stranded.followups[1].status is None

    threading.Event().wait(0.1)  # the dead process's claim goes stale
    h.toolbox.results["calibration@experiment:879"] = CheckResult(
        check="calibration",
        verdict="fail",
        summary="Calibration of experiment 879 is 1.45.",
        experiment="879",
        arm="test",
        p_value=1e-9,
    )
    other = h.investigator()  # a fresh process on the same stores
    done = other.follow_up(at(171))
    assert [(i, e.n) for i, e in done] == [(ident, 1)]  # the same follow-up, not a second one
    view = other.get(ident)
    assert view.status == "awaiting_approval"
    assert [m.action for m in view.mitigations] == ["kill_experiment"]
    assert [(f.n, f.status) for f in view.followups] == [(0, "watching"), (1, "awaiting_approval")]
    # It resumed the crashed run (data up to 08:50, when it was claimed), not a new one.
    assert view.followups[1].ran_at == at(170)
    assert other.follow_up(at(400)) == []


def test_two_runners_run_a_due_followup_once(harness: Any) -> None:
    h, _, ident = _watching(harness, followup_minutes=[10, 20])
    runners = [h.investigator(), h.investigator()]
    results: list[list[Any]] = []
    barrier = threading.Barrier(len(runners))

    def run(inv: Any) -> None:
        barrier.wait()
        results.append(inv.follow_up(at(170)))

    threads = [threading.Thread(target=run, args=(inv,)) for inv in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(len(r) for r in results) == [0, 1]
    view = h.investigator().get(ident)
    assert [f.n for f in view.followups] == [0, 1]
    assert view.status == "watching"
    assert view.next_followup_at == at(159) + timedelta(minutes=20)


def test_followups_and_joined_alerts_reply_in_the_slack_thread(harness: Any) -> None:
    from agent.server import slack_notifier
    from tests.agent.server.fakes import FakeSlack

    slack = FakeSlack()
    try:
        h = harness(
            _CrashingBox({"calibration@experiment:879": BLIND}),
            slack_bot_token="xoxb-test",
            slack_api_url=slack.url,
            slack_channel="C_ALERTS",
            followup_minutes=[10, 20],
        )
        h.notifier = slack_notifier(h.settings)
        inv = h.investigator()
        view = inv.investigate(alert(metric="calibration", source="alertmanager"))
        assert view.status == "watching"
        (post,) = slack.of("chat.postMessage")
        assert post["channel"] == "C_ALERTS" and "watching" in post["text"]

        assert inv.join(alert(metric="revenue", source="alertmanager", name="RevenueDrop"))
        inv.follow_up(at(170))
        replies = [p for p in slack.of("chat.postMessage") if p.get("thread_ts")]
        # Both in the thread of the investigation's message (the fake's first ts).
        assert [r["thread_ts"] for r in replies] == ["1700000001.000100"] * 2
        texts = [r["text"] for r in replies]
        assert "RevenueDrop" in texts[0] and "joined this investigation" in texts[0]
        assert texts[1].startswith(":mag: Follow-up 1 on data up to 08:50 UTC: still inconclusive")
        # The investigation's message itself was rewritten with the follow-up's result.
        assert slack.of("chat.update")
    finally:
        slack.close()


def test_on_postgresql_one_of_many_processes_claims_a_due_followup(pg_server: Any) -> None:
    from agent.models import InvestigationView
    from agent.store import AgentStore

    url = pg_server.url(pg_server.create_database("followup_claims"))
    first = AgentStore(url)
    view = InvestigationView(
        id="inv-pg", status="watching", alert=alert(metric="calibration"), created_at=at(158)
    )
    first.save_investigation(view)
    first.schedule_followup("inv-pg", at(169), FollowUp(n=0, ran_at=at(159), status="watching"))
    stores = [AgentStore(url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    won: list[Any] = []

    def claim(i: int) -> None:
        barrier.wait()
        won.append(stores[i].claim_followup("inv-pg", f"runner-{i}", at(170), 300.0))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claims = [c for c in won if c is not None]
    assert len(won) == len(stores) and len(claims) == 1 and claims[0].n == 1
    assert first.due_followups(at(400), 300.0) == []  # claimed, and its claim is fresh
    # An alert of the same experiment joins it, inside PostgreSQL's advisory lock.
    assert first.join_open(alert(metric="revenue"), 120) == "inv-pg"
    assert [a.metric for a in first.get_investigation("inv-pg").joined_alerts] == ["revenue"]
    for s in [first, *stores]:
        s.engine.dispose()


def test_a_follow_up_holds_failures_to_alpha_over_the_looks_taken() -> None:
    from agent.followups import FOLLOWUP_LABEL, looks, spent
    from agent.state import CheckOutcome, Suspect

    first = alert("ne")
    second = first.model_copy(update={"labels": {FOLLOWUP_LABEL: "1"}})
    fourth = first.model_copy(update={"labels": {FOLLOWUP_LABEL: "3"}})
    assert (looks(first), looks(second), looks(fourth)) == (1, 2, 4)

    def outcome(p: float | None) -> CheckOutcome:
        result = CheckResult(
            check="ne", verdict="fail", summary="NE rose.", p_value=p, params={"alpha_fail": 1e-3}
        )
        return CheckOutcome(key="ne@global", subject=Suspect(scope="global"), result=result)

    # p 0.0009 fails at the first look; at the second it must reach 0.0005: a warning, said why.
    assert spent(outcome(9e-4), 1).result.verdict == "fail"
    held = spent(outcome(9e-4), 2).result
    assert held.verdict == "warn" and "p ≤ 0.0005" in held.summary
    assert spent(outcome(1e-5), 4).result.verdict == "fail"
    assert spent(outcome(None), 4).result.verdict == "fail"  # an age is read, not estimated


@pytest.mark.parametrize(("p_value", "status"), [(9e-4, "watching"), (1e-6, "awaiting_approval")])
def test_a_follow_up_acts_only_on_a_failure_that_survives_its_extra_look(
    harness: Any, p_value: float, status: str
) -> None:
    # The first run is blind and watches; the follow-up sees a fallback failure of the test arm.
    # At p = 0.0009 it would fail on a first look (alpha 1e-3), but this is the alert's second
    # look: it must reach 0.0005, so it stays a warning and nothing is proposed. At 1e-6 it acts.
    box = _CrashingBox({"calibration@experiment:879": BLIND})
    h = harness(box, followup_minutes=[10, 20])
    inv = h.investigator()
    ident = inv.investigate(alert(metric="calibration")).id
    box.results["fallback@experiment:879"] = CheckResult(
        check="fallback",
        verdict="fail",
        summary="Fallback rate of experiment 879: arm test 0.6% vs control 0.1%.",
        p_value=p_value,
        experiment="879",
        arm="test",
        params={"alpha_fail": 1e-3},
    )
    [(_, entry)] = inv.follow_up(at(170))
    view = inv.get(ident)
    assert entry.n == 1 and view.status == status
    line = next(v for v in view.verdicts if v[0].startswith("fallback"))
    if status == "watching":
        assert view.mitigations == []
        assert line[1] == "warn" and "p ≤ 0.0005" in line[2]
    else:
        assert [m.action for m in view.mitigations] == ["kill_experiment"]
        assert line[1] == "fail"
