"""Candidate causes and the constrained answer: what a local model is asked, and how."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest

from agent.llm import LLMReasoner, answer_format, offers_tools
from agent.playbook import load_playbooks
from agent.prompts import LLMDiagnosis, answer_schema, estimate_tokens
from agent.reasoning import candidate_causes, ground
from agent.state import CheckOutcome, Suspect
from tests.agent.conftest import alert, make_settings
from tests.agent.fake_llm import FALLBACK, text
from tests.agent.fake_llm import fallback_world as world
from tests.agent.fakes import FakeToolbox, at, fail, ok

RANKING = load_playbooks().get("ranking")


def outcome(result, scope="experiment", id="879"):
    subject = Suspect(scope=scope, id=id if scope != "global" else None)
    return CheckOutcome(key=f"{result.check}@{subject.key}", subject=subject, result=result)


def test_candidates_are_exactly_what_the_guard_lets_stand():
    outcomes = [
        outcome(fail("fallback", "33% fall back", experiment="879")),
        outcome(fail("ne", "NE worse", experiment="879")),
        outcome(ok("calibration", "879")),
        outcome(fail("staleness", "stale", experiment=None, arm=None), "model", "ctr_v41"),
        outcome(ok("infra"), "global"),
    ]
    found = candidate_causes(outcomes, RANKING, alert())
    keys = {(c.cause, c.experiment, c.model, tuple(c.evidence)) for c in found}
    assert ("model_fallback", "879", None, ("fallback", "ne")) in keys  # ne supports it too
    assert ("ne_regression", "879", None, ("ne",)) in keys
    assert ("stale_model", None, "ctr_v41", ("staleness",)) in keys
    assert all(c.cause != "none" for c in found)  # fallback fails on the alerted 879
    assert all(c.cause != "miscalibration" for c in found)  # calibration passed
    for c in found:
        grounded = ground(c, outcomes, playbook=RANKING, alert=alert())
        assert grounded.cause == c and grounded.note == ""
    assert next(c for c in found if c.cause == "model_fallback").arm == "test"


def test_a_healthy_world_has_only_none_and_a_failure_elsewhere_adds_its_cause():
    healthy = [outcome(ok("fallback", "879")), outcome(ok("infra"), "global")]
    assert [c.cause for c in candidate_causes(healthy, RANKING, alert())] == ["none"]
    elsewhere = [
        *healthy,
        outcome(fail("calibration", "off", experiment="640"), "experiment", "640"),
    ]
    found = candidate_causes(elsewhere, RANKING, alert())
    assert [(c.cause, c.experiment) for c in found] == [
        ("miscalibration", "640"),
        ("logging_loss", "640"),  # calibration is its primary signal too
        ("none", None),
    ]


def test_the_narrowed_schema_allows_the_candidates_and_nothing_else():
    outcomes = [
        outcome(fail("fallback", "33% fall back", experiment="879")),
        outcome(fail("ne", "NE worse", experiment="879")),
    ]
    found = candidate_causes(outcomes, RANKING, alert())
    schema = jsonschema_rs.validator_for(answer_schema(found))
    answer = {
        "causes": [
            {
                "cause": "model_fallback",
                "experiment": "879",
                "arm": "test",
                "evidence": ["fallback", "ne"],
                "confidence": 0.9,
            },
            {
                "cause": "ne_regression",
                "experiment": "879",
                "arm": "test",
                "evidence": ["ne"],
                "confidence": 0.3,
            },
        ],
        "summary": "879's test arm falls back since 08:32.",
    }
    assert schema.is_valid(answer)
    LLMDiagnosis.model_validate(answer)  # what the server allows, Vigil accepts
    first = answer["causes"][0]
    for wrong in (
        {**first, "cause": "stale_model"},  # not a candidate
        {**first, "experiment": "640"},  # another subject
        {**first, "evidence": ["fallback", "calibration"]},  # a check that did not fail
        {**first, "evidence": ["ne"]},  # not its primary finding
        {**first, "evidence": []},  # no evidence at all
        {**first, "confidence": 0.95},  # not one of the offered confidences
        {**first, "where": {"platform": "ios"}},  # a segment no check found
    ):
        assert not schema.is_valid({**answer, "causes": [wrong]}), wrong
    assert not schema.is_valid({"causes": [{"cause": "none", "confidence": 0.9}], "summary": ""})


@pytest.mark.parametrize(
    ("url", "fmt", "tools"),
    [
        ("http://127.0.0.1:8765/v1", "json_object", False),
        ("http://ollama:11434/v1", "json_object", False),
        ("https://api.openai.com/v1", "tool", True),
    ],
)
def test_the_defaults_follow_the_endpoint_kind(tmp_path, url, fmt, tools):
    settings = make_settings(tmp_path, llm_base_url=url, llm_model="m")
    assert (answer_format(settings), offers_tools(settings)) == (fmt, tools)
    forced = settings.model_copy(update={"llm_answer_format": "json_schema", "llm_tools": "on"})
    assert (answer_format(forced), offers_tools(forced)) == ("json_schema", True)


def local(harness, server, *replies, box=None, **settings):
    server.add(*replies)
    options = {"llm_base_url": server.url, "llm_model": "scripted", "llm_timeout_s": 5.0}
    h = harness(box or world(), **{**options, **settings})
    reasoner = LLMReasoner(h.settings)
    return reasoner, h.investigator(reasoner=reasoner).investigate(alert())


def test_a_local_endpoint_is_asked_once_for_json_constrained_to_the_candidates(harness, llm):
    answer = {"causes": [FALLBACK], "summary": "879's test arm falls back."}
    reasoner, view = local(harness, llm, text(json.dumps(answer)))
    assert view.reasoner == "llm:scripted"
    assert "879's test arm falls back." in view.report_markdown
    (request,) = llm.requests
    assert "tools" not in request and "tool_choice" not in request
    fmt = request["response_format"]
    assert fmt["type"] == "json_object"
    (only,) = fmt["schema"]["properties"]["causes"]["items"]["anyOf"]
    assert only["properties"]["cause"] == {"const": "model_fallback"}
    assert "Answer with one JSON object" in request["messages"][0]["content"]
    assert estimate_tokens("".join(m["content"] for m in request["messages"])) <= 3000
    (spent,) = reasoner.usage
    assert (spent.steps, spent.choices, spent.answer_format) == (1, 1, "json_object")


def test_the_system_prompt_is_the_same_for_every_investigation(harness, llm):
    # A local server keeps the previous prompt's KV cache: a shared prefix is not computed again.
    answer = {"causes": [FALLBACK], "summary": "falls back"}
    local(harness, llm, text(json.dumps(answer)))
    answer = {"causes": [{"cause": "none", "confidence": 0.9}], "summary": "Noise."}
    local(harness, llm, text(json.dumps(answer)), box=FakeToolbox(onset=at(150)))
    first, second = (r["messages"][0]["content"] for r in llm.requests)
    assert first == second


def test_json_schema_format_and_a_repeated_cause_counted_once(harness, llm):
    twice = {"causes": [FALLBACK, {**FALLBACK, "confidence": 0.2}], "summary": "falls back"}
    _, view = local(harness, llm, text(json.dumps(twice)), llm_answer_format="json_schema")
    fmt = llm.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "diagnosis"
    assert [c.cause for c in view.root_causes] == ["model_fallback"]
    assert view.root_causes[0].confidence == 0.9


def test_a_healthy_world_offers_only_none_and_the_answer_stands(harness, llm):
    answer = {"causes": [{"cause": "none", "confidence": 0.9}], "summary": "Noise."}
    reasoner, view = local(harness, llm, text(json.dumps(answer)), box=FakeToolbox(onset=at(150)))
    assert view.reasoner == "llm:scripted"
    assert view.root_causes[0].cause == "none"
    (only,) = llm.requests[0]["response_format"]["schema"]["properties"]["causes"]["items"]["anyOf"]
    assert only["properties"]["cause"] == {"const": "none"}
    assert reasoner.usage[0].choices == 1


def test_an_unconstrained_wrong_answer_is_asked_again_without_tools(harness, llm):
    # A server that ignores response_format may still answer outside the schema: the guard and
    # the validation hold, and the next request asks for the answer again.
    wrong = {"causes": [{"cause": "model_fallback", "where": "android"}], "summary": "x"}
    good = {"causes": [FALLBACK], "summary": "falls back"}
    _, view = local(harness, llm, text(json.dumps(wrong)), text(json.dumps(good)))
    assert view.reasoner == "llm:scripted"
    _, second = llm.requests
    assert "tools" not in second and second["response_format"]["type"] == "json_object"
    assert "Invalid diagnosis: causes.0.where" in second["messages"][-1]["content"]
