"""Honest figures of ``vigil eval --reasoner llm``: what the LLM answered itself, not the fallback.

An LLM run's rows mix two kinds: the investigations where the model's own answer was admissible and
used (``got.reasoner`` is ``llm:<model>``), and those where it was not (outage, spent budget, no
admissible cause) and the deterministic reasoner's result stood. The suite's headline figures count
both; this module adds, under ``llm``:

- ``llm_used_rate``: the share of rows where the LLM's own answer was used;
- ``llm_rows`` / ``fallback_rows`` / ``all_rows``: the scorer's figures (ac1, ac3, ...) over each;
- ``tokens`` / ``seconds`` / ``first_prompt_tokens``: per investigation (median, mean, max), the
  tokens being the budget's count of new tokens (server ``usage``), the seconds the LLM
  conversation's wall time and, separately, the whole investigation's;
- ``outcomes``: how each conversation ended (``answered``, ``LLMBudgetSpent``, ``LLMOutage``...);
- ``choices``: how many candidate causes the answer could choose from, the rows where it had only
  one (``single_choice_rows``), and ``llm_used_rate_with_a_choice`` over the others.

With the deterministic reasoner's run of the same scenarios, :func:`compare` adds its AC@1 on the
rows the LLM answered, the fair comparison, and how often the LLM's top cause is the deterministic
one. ``python -m evals.llm_figures LLM.json DET.json`` writes
both (``scripts/local_llm_eval.sh`` uses it).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.scoring import ResultRow, summarize

__all__ = ["compare", "llm_fields", "llm_figures", "llm_line", "main", "with_llm_figures"]

_SUBSET_KEYS = (
    "scenarios",
    "ac1",
    "ac3",
    "experiment_acc",
    "mitigation_acc",
    "false_positive_rate",
)


def llm_fields(reasoner: Any) -> dict[str, Any]:
    """The :class:`~evals.scoring.Got` update with the LLM's cost of one scenario's investigation.

    Args:
        reasoner: The scenario's reasoner; only an :class:`~agent.llm.LLMReasoner` (anything with
            a ``usage`` list) adds fields.

    Returns:
        ``{"llm": {...}}`` from its first conversation (the investigation scored), or ``{}``.
    """
    usage = getattr(reasoner, "usage", None)
    if not usage:
        return {}
    first = usage[0]
    return {
        "llm": {
            "steps": first.steps,
            "tokens": first.tokens,
            "first_prompt_tokens": first.first_prompt_tokens,
            "seconds": first.seconds,
            "outcome": first.outcome,
            "text_calls": first.text_calls,
            "choices": first.choices,
            "answer_format": first.answer_format,
            "conversations": len(usage),
        }
    }


def _used(row: dict[str, Any]) -> bool:
    return str(row["got"].get("reasoner") or "").startswith("llm:")


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "mean": round(statistics.fmean(values), 3),
        "max": round(max(values), 3),
    }


def _subset(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"scenarios": 0}
    figures = summarize([ResultRow.model_validate(r) for r in rows])
    return {key: figures.get(key) for key in _SUBSET_KEYS}


def llm_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """The ``llm`` block of an LLM run's figures (see the module's docstring).

    Args:
        figures: What ``vigil eval --reasoner llm`` computed (with its ``results`` rows).
    """
    rows: list[dict[str, Any]] = list(figures.get("results", []))
    used = [r for r in rows if _used(r)]
    fallback = [r for r in rows if not _used(r)]
    costs = [r["got"]["llm"] for r in rows if r["got"].get("llm")]
    return {
        "llm_used_rate": round(len(used) / len(rows), 4) if rows else None,
        "llm_used": sorted(r["name"] for r in used),
        "llm_rows": _subset(used),
        "fallback_rows": _subset(fallback),
        "all_rows": _subset(rows),
        "tokens": _stats([float(c["tokens"]) for c in costs]),
        "first_prompt_tokens": _stats([float(c["first_prompt_tokens"]) for c in costs]),
        "steps": _stats([float(c["steps"]) for c in costs]),
        "llm_seconds": _stats([float(c["seconds"]) for c in costs]),
        "investigation_seconds": _stats([float(r["seconds"]) for r in rows]),
        "outcomes": dict(Counter(str(c["outcome"]) for c in costs)),
        "text_calls": sum(int(c.get("text_calls", 0)) for c in costs),
        **_choice_figures(rows),
    }


def _choice_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How much choice the model had: a row whose answer was narrowed to one candidate (often
    ``none`` in a healthy world) counts as used, but the model chose nothing there."""
    narrowed = [r for r in rows if int((r["got"].get("llm") or {}).get("choices", 0)) > 0]
    several = [r for r in narrowed if int(r["got"]["llm"]["choices"]) > 1]
    return {
        "choices": _stats([float(r["got"]["llm"]["choices"]) for r in narrowed]),
        "single_choice_rows": len(narrowed) - len(several),
        "llm_used_rate_with_a_choice": (
            round(sum(_used(r) for r in several) / len(several), 4) if several else None
        ),
    }


def llm_line(block: dict[str, Any]) -> str:
    """One line for the console: how often the LLM's own answer counted, and how well."""
    rate = block.get("llm_used_rate")
    used = block["llm_rows"]
    if not rate:
        return "LLM answered none of the scenarios: every row is the deterministic fallback's."
    tokens = (block.get("tokens") or {}).get("median")
    seconds = (block.get("llm_seconds") or {}).get("median")
    return (
        f"LLM's own answer used in {rate:.0%} of scenarios ({used['scenarios']}); AC@1 over "
        f"those {used['ac1']:.2f}; the other rows are the deterministic fallback's. "
        f"Median {tokens:.0f} tokens, {seconds:.1f} s per LLM conversation."
    )


def with_llm_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures`` with its ``llm`` block added (a new dict)."""
    return {**figures, "llm": llm_figures(figures)}


def compare(llm: dict[str, Any], deterministic: dict[str, Any]) -> dict[str, Any]:
    """The deterministic reasoner's figures on the rows the LLM answered, beside the LLM's.

    Args:
        llm: Figures of the LLM run.
        deterministic: Figures of the deterministic run of the same scenarios.
    """
    block = llm.get("llm") or llm_figures(llm)
    answered = set(block["llm_used"])
    det_rows = [r for r in deterministic.get("results", []) if r["name"] in answered]
    llm_ac1 = block["llm_rows"].get("ac1")
    det = _subset(det_rows)
    tops = {r["name"]: (r.get("ranks") or [None])[0] for r in det_rows}
    agree = [
        (r.get("ranks") or [None])[0] == tops.get(r["name"])
        for r in llm.get("results", [])
        if r["name"] in answered
    ]
    return {
        **block,
        "deterministic_on_llm_rows": det,
        "llm_top_cause_agrees_with_deterministic": (
            round(sum(agree) / len(agree), 4) if agree else None
        ),
        "deterministic_all_rows": _subset(list(deterministic.get("results", []))),
        "ac1_llm_minus_deterministic_on_llm_rows": (
            round(llm_ac1 - det["ac1"], 4)
            if llm_ac1 is not None and det.get("ac1") is not None
            else None
        ),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m evals.llm_figures LLM.json DET.json --json OUT``: the comparison as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("llm", type=Path, help="figures of vigil eval --reasoner llm")
    parser.add_argument("deterministic", type=Path, help="figures of the deterministic run")
    parser.add_argument("--json", type=Path, required=True, help="write the comparison here")
    parser.add_argument("--command", default="", help="the command that made the figures")
    parser.add_argument("--model", default="", help="the model and server, in words")
    args = parser.parse_args(argv)
    llm = json.loads(args.llm.read_text(encoding="utf-8"))
    det = json.loads(args.deterministic.read_text(encoding="utf-8"))
    out = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "command": args.command,
        "model": args.model,
        "scenarios": sorted(r["name"] for r in llm.get("results", [])),
        **compare(llm, det),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
