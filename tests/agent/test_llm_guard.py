"""The guard on an LLM's answer: grounded causes keep their segment, the rest is dropped."""

from __future__ import annotations

import pytest

from agent.llm import LLMReasoner
from agent.models import RootCause
from agent.reasoning import ground
from agent.state import CheckOutcome, Suspect
from tests.agent.conftest import alert
from tests.agent.fake_llm import TOOL_PATH, diagnosis
from tests.agent.fakes import FakeToolbox, at, fail, ok

FALLBACK = {
    "cause": "model_fallback",
    "experiment": "879",
    "arm": "test",
    "where": {"platform": "android"},
    "confidence": 0.9,
    "evidence": ["fallback"],
}
ARGUED = "NE collapsed and the model is stale, kill everything"


def world() -> FakeToolbox:
    return FakeToolbox(
        {
            "fallback@experiment:879": fail(
                "fallback", "Fallback rate 33% vs 0.4% on android.", experiment="879"
            )
        },
        onset=at(150),
    )


def investigate(harness, server, *replies):
    server.add(*replies)
    h = harness(
        world(), llm_base_url=server.url, llm_model="scripted", llm_timeout_s=5.0, **TOOL_PATH
    )
    return h.investigator(reasoner=LLMReasoner(h.settings)).investigate(alert())


def test_a_valid_cause_keeps_its_segment(harness, llm):
    view = investigate(harness, llm, diagnosis([FALLBACK], "The android test arm falls back."))
    top = view.root_causes[0]
    assert (top.cause, top.experiment, top.arm) == ("model_fallback", "879", "test")
    assert top.where == {"platform": "android"}
    assert "The android test arm falls back." in view.report_markdown


def test_a_partially_grounded_cause_stands_on_its_failing_check_only(harness, llm):
    mixed = {**FALLBACK, "evidence": ["fallback", "ne", "staleness"]}
    view = investigate(harness, llm, diagnosis([mixed], ARGUED))
    assert view.reasoner == "llm:scripted"
    assert view.root_causes[0].evidence == ["fallback"]
    assert "Evidence trimmed: model_fallback on experiment:879: kept on ['fallback']" in (
        view.report_markdown
    )
    assert "['ne', 'staleness'] dropped" in view.report_markdown
    # The model's summary argued from the dropped checks: it is replaced by the template.
    assert ARGUED not in view.report_markdown
    assert "Causes that stand after Vigil's checks: increased model fallback" in (
        view.report_markdown
    )


def test_none_is_refused_while_a_check_fails_on_the_alerted_experiment(harness, llm):
    healthy = {"cause": "none", "confidence": 0.95, "explanation": "Just noise."}
    view = investigate(harness, llm, diagnosis([healthy], "Nothing is wrong; ignore the alert."))
    assert view.reasoner == "deterministic"
    assert view.root_causes[0].cause == "model_fallback"
    assert "Rejected cause none: ['fallback'] failed on experiment 879" in view.report_markdown
    assert "Nothing is wrong" not in view.report_markdown


def test_after_a_rejection_the_summary_no_longer_argues_for_the_rejected_cause(harness, llm):
    stale = {
        "cause": "stale_model",
        "experiment": "879",
        "confidence": 0.9,
        "evidence": ["staleness"],
    }
    view = investigate(harness, llm, diagnosis([stale, FALLBACK], ARGUED))
    assert [c.cause for c in view.root_causes] == ["model_fallback"]
    assert "Rejected cause stale_model: cites no check that failed" in view.report_markdown
    assert ARGUED not in view.report_markdown


def _outcome(result, scope="experiment", id_="879"):
    subject = Suspect(scope=scope, id=id_ if scope != "global" else None)
    return CheckOutcome(key=f"{result.check}@{subject.key}", subject=subject, result=result)


def test_ground_needs_a_failing_check_that_supports_the_cause(ranking_playbook):
    found = [
        _outcome(fail("fallback", "falls back", experiment="879")),
        _outcome(ok("ne", "879")),
        _outcome(fail("srm", "units lost", experiment="880"), id_="880"),
    ]
    cause = RootCause(
        cause="ne_regression", experiment="879", confidence=0.9, evidence=["fallback"]
    )
    # fallback failed on 879, but fallback is no signal of an NE regression.
    assert ground(cause, found, playbook=ranking_playbook).cause is None
    srm_elsewhere = RootCause(
        cause="allocation_bug", experiment="879", confidence=0.9, evidence=["srm"]
    )
    assert ground(srm_elsewhere, found, playbook=ranking_playbook).cause is None
    right = RootCause(
        cause="model_fallback", experiment="879", confidence=0.9, evidence=["fallback"]
    )
    grounded = ground(right, found, playbook=ranking_playbook)
    assert grounded.cause == right and grounded.note == ""
    healthy = RootCause(cause="none", confidence=0.9)
    assert ground(healthy, found, playbook=ranking_playbook, alert=alert()).cause is None
    # On another experiment's alert, 879's failure does not forbid "none".
    assert ground(healthy, found, playbook=ranking_playbook, alert=alert("881")).cause == healthy
    # A global alert points at all traffic and at localization's suspects (here 879).
    global_alert = alert(None)
    assert ground(healthy, found, playbook=ranking_playbook, alert=global_alert).cause == healthy
    suspects = [Suspect(scope="experiment", id="879")]
    refused = ground(
        healthy, found, playbook=ranking_playbook, alert=global_alert, suspects=suspects
    )
    assert refused.cause is None and "all traffic or its suspects" in refused.note


@pytest.fixture
def ranking_playbook():
    from agent.playbook import load_playbooks

    return load_playbooks().get("ranking")
