"""The Markdown summary keeps hand-written text and one section per reasoner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from evals.scoring import Expected, Got, RankedCause, ResultRow, score, summarize
from evals.summary import (
    SuiteEntry,
    figures_table,
    markdown_sections,
    results_table,
    strength_plot,
    strength_rows,
    strength_table,
    update_markdown,
)

SUITE = [
    SuiteEntry("fb", "model_fallback", "Fallback | spike.", ("model_fallback",), 60, 500, 1),
    SuiteEntry("ok", "none", "Healthy.", (), 60, 500, 1),
]


def _figures(hit: bool) -> dict[str, Any]:
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
    console.print(strength_table(figures))
    out = console.export_text()
    assert "unknown" in out  # the fault's strength was not given
    assert "fb" in out and "pass" in out and "miscalibration@1" in out
    assert "false_positive_rate" in out


def _curve_figures() -> dict[str, Any]:
    def row(name: str, strength: float, cause: str) -> ResultRow:
        expected = Expected(root_cause="model_fallback", onset_minute=10, strength=strength)
        got = Got(causes=[RankedCause(cause=cause)], mitigation="kill_experiment", minute=20)
        return score(name, expected, got)

    rows = [row("weak", 0.3, "infra_outage"), row("strong", 6.0, "model_fallback")]
    return summarize(rows)


def test_the_markdown_section_shows_the_strength_curve(tmp_path: Path) -> None:
    figures = _curve_figures()
    text = update_markdown(
        tmp_path / "evals.md", markdown_sections("deterministic", figures, "vigil eval x", SUITE)
    )
    assert "By signal strength:" in text
    assert "| <0.5 | 1 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 |" in text
    assert "| >=4 | 1 | 1.000 | 1.000 | 1.000 | 0.000 | 0.000 |" in text
    assert "| `wrong_cause_rate` | 0.500 |" in text


def test_the_strength_plot_is_a_png(tmp_path: Path) -> None:
    path = strength_plot(_curve_figures(), tmp_path / "curve.png", "two rows")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert strength_rows({})[0].startswith("| signal strength")
