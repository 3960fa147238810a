"""The Markdown summary keeps hand-written text and one section per reasoner."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from evals.scoring import Expected, Got, RankedCause, score, summarize
from evals.summary import (
    SuiteEntry,
    figures_table,
    markdown_sections,
    results_table,
    update_markdown,
)

SUITE = [
    SuiteEntry("fb", "model_fallback", "Fallback | spike.", ("model_fallback",), 60, 500, 1),
    SuiteEntry("ok", "none", "Healthy.", (), 60, 500, 1),
]


def _figures(hit: bool) -> dict:
    expected = Expected(root_cause="model_fallback", experiment="1", mitigation="kill_experiment")
    cause = "model_fallback" if hit else "miscalibration"
    got = Got(causes=[RankedCause(cause=cause, experiment="1")], mitigation="kill_experiment")
    healthy = score("ok", Expected(root_cause="none", mitigation="none"), Got())
    return summarize([score("fb", expected, got), healthy])


def test_sections_are_replaced_in_place_and_intro_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "evals.md"
    path.write_text("# Evals\n\nHand-written intro.\n")
    update_markdown(path, markdown_sections("deterministic", _figures(True), "vigil eval d", SUITE))
    update_markdown(path, markdown_sections("random", _figures(False), "vigil eval r", SUITE))
    text = update_markdown(
        path, markdown_sections("deterministic", _figures(True), "vigil eval d2", SUITE)
    )
    assert text.startswith("# Evals\n\nHand-written intro.\n")
    assert text.count("### Reasoner `deterministic`") == 1
    assert text.count("### Reasoner `random`") == 1
    assert "vigil eval d2" in text and "vigil eval d`" not in text
    assert text.count("### What the scenarios cover") == 1
    assert text.count("### Figures by reasoner") == 1
    # the comparison table comes first and has one row per reasoner
    order = [
        text.index(h)
        for h in (
            "### Figures by reasoner",
            "### What the scenarios cover",
            "### Reasoner `deterministic`",
            "### Reasoner `random`",
        )
    ]
    assert order == sorted(order)
    assert "| `deterministic` | 2 | 1.000 |" in text
    assert "| `random` | 2 | 0.500 |" in text
    assert "Fallback \\| spike." in text  # a pipe in a description does not break the table
    assert "- `fb`: cause: expected model_fallback, got miscalibration@1" in text
    assert "<details><summary>1 failed rows</summary>" in text


def test_rich_tables_render(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    figures = _figures(False)
    console.print(results_table(figures))
    console.print(figures_table(figures, "suite"))
    out = console.export_text()
    assert "fb" in out and "pass" in out and "miscalibration@1" in out
    assert "false_positive_rate" in out
