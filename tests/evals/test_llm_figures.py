"""An LLM run's figures keep the LLM's own answers apart from the deterministic fallback's."""

from __future__ import annotations

import json

from agent.llm import LLMUsage
from evals.llm_figures import compare, llm_fields, llm_figures, main
from evals.scoring import Expected, Got, RankedCause, score, summarize


class _Reasoner:
    def __init__(self, *usage: LLMUsage) -> None:
        self.usage = list(usage)


def _row(
    name: str, truth: str, top: str, reasoner: str, tokens: int | None = None, choices: int = 0
):
    got = Got(causes=[RankedCause(cause=top)], reasoner=reasoner, seconds=10.0)
    if tokens is not None:
        usage = LLMUsage(
            steps=2,
            tokens=tokens,
            first_prompt_tokens=2000,
            seconds=8.0,
            outcome="answered",
            choices=choices,
        )
        got = got.model_copy(update=llm_fields(_Reasoner(usage)))
    return score(name, Expected(root_cause=truth), got)


def test_the_fallback_is_not_credited_to_the_llm():
    rows = [
        _row("a", "model_fallback", "model_fallback", "llm:qwen", 3000),
        _row("b", "allocation_bug", "none", "llm:qwen", 5000),
        _row("c", "stale_model", "stale_model", "deterministic", 9000),
        _row("d", "infra_outage", "infra_outage", "deterministic"),
    ]
    figures = summarize(rows)
    block = llm_figures(figures)
    assert block["llm_used_rate"] == 0.5
    assert block["llm_used"] == ["a", "b"]
    assert block["llm_rows"]["ac1"] == 0.5  # the LLM's own answers: one of two right
    assert block["fallback_rows"]["ac1"] == 1.0
    assert block["all_rows"]["ac1"] == figures["ac1"] == 0.75
    assert block["tokens"] == {"median": 5000.0, "mean": 5666.667, "max": 9000.0}
    assert block["outcomes"] == {"answered": 3}


def test_compare_puts_the_deterministic_reasoner_on_the_llm_rows(tmp_path):
    llm = summarize(
        [
            _row("a", "model_fallback", "model_fallback", "llm:qwen", 3000),
            _row("b", "allocation_bug", "allocation_bug", "deterministic"),
        ]
    )
    det = summarize(
        [
            _row("a", "model_fallback", "none", "deterministic"),
            _row("b", "allocation_bug", "allocation_bug", "deterministic"),
        ]
    )
    out = compare(llm, det)
    assert out["deterministic_on_llm_rows"]["ac1"] == 0.0
    assert out["ac1_llm_minus_deterministic_on_llm_rows"] == 1.0
    (tmp_path / "l.json").write_text(json.dumps(llm))
    (tmp_path / "d.json").write_text(json.dumps(det))
    main([str(tmp_path / "l.json"), str(tmp_path / "d.json"), "--json", str(tmp_path / "o.json")])
    written = json.loads((tmp_path / "o.json").read_text())
    assert written["llm_used_rate"] == 0.5 and written["scenarios"] == ["a", "b"]


def test_answers_with_a_single_choice_are_counted_apart():
    rows = [
        _row("healthy", "none", "none", "llm:qwen", 1000, choices=1),
        _row("a", "model_fallback", "model_fallback", "llm:qwen", 1000, choices=3),
        _row("b", "ne_regression", "stale_model", "deterministic", 1000, choices=2),
    ]
    block = llm_figures(summarize(rows))
    assert block["llm_used_rate"] == 0.6667
    assert block["single_choice_rows"] == 1
    assert block["llm_used_rate_with_a_choice"] == 0.5  # a of a and b
    assert block["choices"]["max"] == 3.0
    det = summarize(
        [
            _row("healthy", "none", "none", "deterministic"),
            _row("a", "model_fallback", "ne_regression", "deterministic"),
            _row("b", "ne_regression", "ne_regression", "deterministic"),
        ]
    )
    assert compare(summarize(rows), det)["llm_top_cause_agrees_with_deterministic"] == 0.5


def test_a_reasoner_without_usage_adds_nothing():
    assert llm_fields(object()) == {}
