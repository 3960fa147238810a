"""Tool calls a small model writes as text are read and run (the documented forms, docs/llm.md)."""

from __future__ import annotations

import json

import pytest

from agent.llm import LLMReasoner
from agent.llm_tools import parse_text_calls
from tests.agent.conftest import alert
from tests.agent.fake_llm import FALLBACK, TEXT_FORMS, TOOL_PATH, diagnosis, text, written_call
from tests.agent.fake_llm import FALLBACK_ARGS as ARGS
from tests.agent.fake_llm import fallback_world as world


def investigate(harness, server, *replies):
    server.add(*replies)
    box = world()
    h = harness(box, llm_base_url=server.url, llm_model="scripted", llm_timeout_s=5.0, **TOOL_PATH)
    view = h.investigator(reasoner=LLMReasoner(h.settings)).investigate(alert())
    return box, view


@pytest.mark.parametrize("form", TEXT_FORMS)
def test_a_check_written_as_text_is_run_and_its_result_sent_back(harness, llm, form):
    box, view = investigate(
        harness, llm, written_call(form, "fallback", ARGS), diagnosis([FALLBACK], "Falls back.")
    )
    ran = [c for c in box.calls if c[0] == "fallback" and c[1]["experiment_id"] == "879"]
    planned = 1  # the playbook's own fallback check on 879 ran before the model was asked
    assert len(ran) - planned == (2 if form == "list" else 1)
    follow_up = llm.requests[1]["messages"][-1]
    assert follow_up["role"] == "user"
    assert follow_up["content"].startswith("Result of fallback:")
    assert "Fallback rate 33%" in follow_up["content"]
    assert view.reasoner == "llm:scripted"
    assert view.root_causes[0].cause == "model_fallback"


@pytest.mark.parametrize("form", TEXT_FORMS)
def test_a_diagnosis_written_as_text_is_the_answer(harness, llm, form):
    answer = {"causes": [FALLBACK], "summary": "The test arm falls back."}
    _, view = investigate(harness, llm, written_call(form, "submit_diagnosis", answer))
    assert view.reasoner == "llm:scripted"
    assert [c.cause for c in view.root_causes] == ["model_fallback"]
    assert len(llm.requests) == 1


def test_a_bare_diagnosis_object_is_read_as_the_answer(harness, llm):
    reply = text("Here is my answer: " + json.dumps({"causes": [FALLBACK], "summary": "x"}))
    _, view = investigate(harness, llm, reply)
    assert view.reasoner == "llm:scripted"


def test_an_invalid_written_diagnosis_is_asked_again_with_the_reason(harness, llm):
    bad = {"causes": [{**FALLBACK, "cause": "gremlins"}]}
    _, view = investigate(
        harness, llm, written_call("tool_call_tag", "submit_diagnosis", bad), diagnosis([FALLBACK])
    )
    assert "Invalid diagnosis: causes.0.cause" in llm.requests[1]["messages"][-1]["content"]
    assert view.reasoner == "llm:scripted"


def test_parse_text_calls_forms_and_non_calls():
    call = {"name": "srm", "arguments": {"experiment_id": "7"}}
    assert parse_text_calls("no tools here") == []
    assert parse_text_calls('{"just": "json"}') == []
    (one,) = parse_text_calls(f"<tool_call>{json.dumps(call)}</tool_call>")
    assert (one.name, json.loads(one.arguments)) == ("srm", {"experiment_id": "7"})
    two = parse_text_calls(
        f"<tool_call>{json.dumps(call)}</tool_call>\n<tool_call>{{}}</tool_call>"
    )
    assert [c.name for c in two] == ["srm"]
    # Llama-style "parameters" and OpenAI-style nesting; an unclosed last tag.
    nested = {"type": "function", "function": {"name": "ne", "parameters": {"x": 1}}}
    (n,) = parse_text_calls(f"<tool_call>{json.dumps(nested)}")
    assert (n.name, json.loads(n.arguments)) == ("ne", {"x": 1})


def test_a_repeated_call_is_not_run_again_and_the_answer_is_asked_for(harness, llm):
    box, view = investigate(
        harness,
        llm,
        written_call("tool_call_tag", "fallback", ARGS),
        written_call("bare", "fallback", dict(reversed(list(ARGS.items())))),
        diagnosis([FALLBACK]),
    )
    ran = [c for c in box.calls if c[0] == "fallback" and c[1]["experiment_id"] == "879"]
    assert len(ran) == 1 + 1  # the planned check, then the model's first call only
    second_reply = llm.requests[2]
    assert "already ran with these arguments" in second_reply["messages"][-1]["content"]
    assert second_reply["tool_choice"] == {
        "type": "function",
        "function": {"name": "submit_diagnosis"},
    }
    assert view.reasoner == "llm:scripted"
