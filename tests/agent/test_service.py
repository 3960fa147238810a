"""The investigation graph and the Investigator on fakes: report, proposals, approval policy,
exactly-once execution, resume after a restart, verification."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from agent.mitigation import Executor
from tests.agent.conftest import alert
from tests.agent.fakes import FakeToolbox, at, fail
from tools.errors import ApprovalError, StateError
from tools.result import CheckResult


def fallback_world(**series: pd.DataFrame) -> FakeToolbox:
    return FakeToolbox(
        {
            "fallback@experiment:879": fail(
                "fallback",
                "Fallback rate of arm test 33% vs control 0.4%.",
                experiment="879",
                onset=at(152),
            ),
            "ne@experiment:879": fail("ne", "NE of test 4% worse than control.", experiment="879"),
        },
        onset=at(150),
        series=series,
    )


def fallback_rate_series(after: bool) -> pd.DataFrame:
    """Global fallback rate: ~0 before minute 152, 1.75% during, ~0 after the kill (159)."""
    end = 190 if after else 159
    rows = []
    for m in range(0, end):
        value = 0.0175 if 152 <= m < 159 else 0.0
        rows.append({"minute": at(m).isoformat(), "arm": "all", "value": value + (m % 3) * 1e-4})
    return pd.DataFrame(rows)


def test_fallback_investigation_reports_and_waits_for_approval(harness):
    h = harness(fallback_world())
    view = h.investigator().investigate(alert())
    assert view.status == "awaiting_approval"
    assert view.onset == at(152)
    assert view.root_causes[0].cause == "model_fallback"
    assert view.root_causes[0].experiment == "879"
    assert [(m.action, m.target, m.status) for m in view.mitigations] == [
        ("kill_experiment", "879", "proposed")
    ]
    assert view.mitigations[0].blast_radius == pytest.approx(0.05)
    report = view.report_markdown
    assert 'revenue regression starting at 08:32 in experiment 879 ("Ranking Model' in report
    assert "✓ No issues were found with model prediction" in report
    assert "✗ Issue identified with increased model fallback" in report
    assert "kill experiment 879 (awaiting approval)" in report
    assert h.actions.calls == []
    html = h.investigators[0].report_html(view.id)
    assert "data:image/svg+xml;base64," in html and "<script" not in html
    assert view.report_path is not None and view.report_path.endswith(".html")
    assert ("awaiting", view.id, "awaiting_approval") in h.notifier.events
    assert ("fallback", "fail") in [(c, v) for c, v, _ in view.verdicts]


def test_healthy_world_names_no_cause_and_proposes_nothing(harness):
    h = harness(FakeToolbox())
    view = h.investigator().investigate(alert())
    assert view.status == "completed"
    assert [c.cause for c in view.root_causes] == ["none"]
    assert view.mitigations == []
    assert "Proposed mitigation:** none" in view.report_markdown
    assert h.actions.calls == []
    assert ("finished", view.id, "completed") in h.notifier.events


def test_global_alert_blames_the_attributed_experiment_and_checks_run_per_suspect(harness):
    box = FakeToolbox(
        {"prediction@experiment:880": fail("prediction", "12% NaN predictions.", experiment="880")},
        onset=at(150),
        attribution={"revenue": [("880", 0.7, 0.2), ("879", 0.2, 0.4), ("881", 0.05, 0.5)]},
    )
    h = harness(box)
    view = h.investigator().investigate(alert(experiment=None))
    assert view.root_causes[0].cause == "prediction_collapse"
    assert view.root_causes[0].experiment == "880"
    subjects = {
        kw.get("experiment_id") or kw.get("model_id") for c, kw in box.calls if c == "prediction"
    }
    assert subjects == {"880", "879", "ctr_v41"}  # 881 explains too little to be a suspect
    # The alert's metric and every scan metric of the ranking playbook.
    assert {kw["metric"] for c, kw in box.calls if c == "attribution"} == {
        "revenue",
        "ctr",
        "fallback_rate",
        "error_rate",
        "invalid_rate",
        "calibration",
        "ne",  # each arm's log loss and spread of predictions: a constant collapse moves no rate
    }
    assert '**Experiment 880 ("Experiment 880")** — explains 70% of the revenue change' in (
        view.report_markdown
    )


def test_a_significant_contributor_to_a_scanned_metric_is_suspect_first(harness):
    # A fallback spike in 885 barely moves revenue, but owns the fallback rate's change.
    box = FakeToolbox(
        {"fallback@experiment:885": fail("fallback", "Test arm falls back.", experiment="885")},
        attribution={
            "revenue": [("879", 0.5, 0.3), ("880", 0.3, 0.4), ("881", 0.2, 0.5)],
            "fallback_rate": [("885", 0.98, 1e-12), ("879", 0.01, 0.6)],
        },
    )
    h = harness(box)
    view = h.investigator().investigate(alert(experiment=None))
    assert (view.root_causes[0].cause, view.root_causes[0].experiment) == ("model_fallback", "885")
    assert "its fallback_rate moved against its control" in view.report_markdown
    assert "98% of the change" in view.report_markdown
    assert [(m.action, m.target) for m in view.mitigations] == [("kill_experiment", "885")]


def test_owner_approval_executes_exactly_once_and_verifies(harness):
    h = harness(fallback_world(fallback_rate=fallback_rate_series(after=True)))
    inv = h.investigator()
    view = inv.investigate(alert())
    mid = view.mitigations[0].id
    done = inv.approve(mid, "alice")
    assert done.status == "verified" and done.recovered is True
    assert done.approved_by == "alice"
    again = inv.approve(mid, "alice")
    assert again.status == "verified"
    assert h.actions.calls == [("kill_experiment", "879", "alice")]
    final = inv.get(view.id)
    assert final.status == "completed"
    assert "executed and verified by alice, metric recovered" in final.report_markdown
    kinds = [e[0] for e in h.notifier.events]
    assert kinds.count("executed") == 1 and kinds.count("verified") == 1


def test_no_data_after_the_action_leaves_recovery_pending_then_verify_later(harness):
    box = fallback_world(fallback_rate=fallback_rate_series(after=False))
    h = harness(box)
    inv = h.investigator()
    mid = inv.investigate(alert()).mitigations[0].id
    done = inv.approve(mid, "carol")  # on-call
    assert done.status == "executed" and done.recovered is None
    box.series["fallback_rate"] = fallback_rate_series(after=True)
    later = inv.verify(mid)
    assert later.status == "verified" and later.recovered is True
    assert h.actions.calls == [("kill_experiment", "879", "carol")]


def test_concurrent_approvals_act_once(harness):
    h = harness(fallback_world())
    inv = h.investigator()
    mid = inv.investigate(alert()).mitigations[0].id
    errors: list[BaseException] = []

    def approve() -> None:
        try:
            inv.approve(mid, "alice")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=approve) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert h.actions.calls == [("kill_experiment", "879", "alice")]


def test_unauthorised_approver_is_refused_and_nothing_changes(harness):
    h = harness(fallback_world())
    inv = h.investigator()
    view = inv.investigate(alert())
    mid = view.mitigations[0].id
    with pytest.raises(ApprovalError, match="mallory"):
        inv.approve(mid, "mallory")
    with pytest.raises(ApprovalError):
        inv.approve(mid, "bob")  # owns other experiments, not 879
    assert inv.get(view.id).mitigations[0].status == "proposed"
    assert inv.get(view.id).status == "awaiting_approval"
    assert h.actions.calls == []


def test_executor_refuses_anything_not_approved(harness):
    h = harness(fallback_world())
    inv = h.investigator()
    mid = inv.investigate(alert()).mitigations[0].id
    with pytest.raises(ApprovalError, match="not approved"):
        inv.deps.executor.execute(mid)
    assert isinstance(inv.deps.executor, Executor)
    assert h.actions.calls == []


def test_reject_completes_without_acting(harness):
    h = harness(fallback_world())
    inv = h.investigator()
    view = inv.investigate(alert())
    mid = view.mitigations[0].id
    with pytest.raises(ApprovalError):
        inv.reject(mid, "mallory")
    rejected = inv.reject(mid, "alice")
    assert rejected.status == "rejected"
    assert inv.get(view.id).status == "completed"
    assert inv.reject(mid, "carol").status == "rejected"  # again: a no-op
    with pytest.raises(StateError):
        inv.approve(mid, "alice")
    assert h.actions.calls == []
    # The notifier heard of the rejection once, from the call that made it, before the end.
    told = [e for e in h.notifier.events if e[1] in (mid, view.id)]
    assert [e for e in told if e[0] == "rejected"] == [("rejected", mid, "alice")]
    assert told.index(("rejected", mid, "alice")) < told.index(("finished", view.id, "completed"))


def test_resume_after_restart_on_the_same_stores(harness):
    h = harness(fallback_world())
    first = h.investigator()
    view = first.investigate(alert())
    mid = view.mitigations[0].id
    first.close()
    second = h.investigator()  # a fresh process: new graph, same checkpoint and state DBs
    assert second.get(view.id).status == "awaiting_approval"
    assert second.run(view.id).status == "awaiting_approval"  # running again changes nothing
    done = second.approve(mid, "alice")
    assert done.status in ("executed", "verified")
    assert h.actions.calls == [("kill_experiment", "879", "alice")]
    assert second.get(view.id).status == "completed"


def test_second_approver_policy_for_manual_proposals(harness):
    h = harness(fallback_world(), require_second_approver=True, oncall=["carol", "alice"])
    inv = h.investigator()
    proposal = inv.propose("kill_experiment", "880", "alice", "looks broken")
    assert proposal.status == "proposed" and proposal.blast_radius == pytest.approx(0.05)
    with pytest.raises(ApprovalError, match="second approver"):
        inv.approve(proposal.id, "alice")
    assert h.actions.calls == []
    assert inv.approve(proposal.id, "carol").status == "executed"
    assert h.actions.calls == [("kill_experiment", "880", "carol")]


def test_escalation_is_recorded_after_approval_only(harness):
    box = FakeToolbox(
        {
            "infra@global": CheckResult(
                check="infra",
                verdict="fail",
                p_value=1e-12,
                summary="Error rate 9% vs 0.1% baseline on all traffic.",
            )
        },
        onset=at(150),
    )
    h = harness(box)
    inv = h.investigator()
    view = inv.investigate(alert(metric="error_rate", experiment=None))
    assert view.root_causes[0].cause == "infra_outage"
    m = view.mitigations[0]
    assert (m.action, m.target, m.blast_radius) == ("escalate_infra", None, 0.0)
    assert h.actions.calls == []
    with pytest.raises(ApprovalError):
        inv.approve(m.id, "alice")  # owns an experiment, not on-call
    assert inv.approve(m.id, "carol").status in ("executed", "verified")
    assert h.actions.calls == [("escalate_infra", None, "carol")]


def test_a_crashing_reasoner_falls_back_and_says_so(harness):
    class Broken:
        name = "broken"

        def diagnose(self, given):
            raise RuntimeError("boom")

    h = harness(fallback_world())
    view = h.investigator(reasoner=Broken()).investigate(alert())
    assert view.root_causes[0].cause == "model_fallback"
    assert "The broken reasoner failed (boom)" in view.report_markdown


def test_a_failing_check_is_reported_not_fatal(harness):
    class Flaky(FakeToolbox):
        def staleness(self, start, end, experiment_id=None, model_id=None):
            raise RuntimeError("snapshot table missing")

    h = harness(Flaky())
    view = h.investigator().investigate(alert())
    assert view.status == "completed"
    assert ("staleness", "no_data") in [(c, v) for c, v, _ in view.verdicts]
    assert "snapshot table missing" in view.report_markdown


def test_list_and_unknown_ids(harness):
    h = harness(FakeToolbox())
    inv = h.investigator()
    a = inv.investigate(alert())
    b = inv.investigate(alert(metric="ctr"))
    assert [v.id for v in inv.list(10)] == [b.id, a.id]
    from tools.errors import NotFoundError

    with pytest.raises(NotFoundError):
        inv.get("inv-nope")
    with pytest.raises(NotFoundError):
        inv.approve("nope", "alice")
