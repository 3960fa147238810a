"""How an eval's figures are shown: a Rich table on the terminal and Markdown for the README.

The Markdown file is maintained section by section, so one file holds the figures of every
reasoner: each ``vigil eval --markdown PATH`` run replaces its own reasoner's section (marked by
HTML comments), the suite's coverage section and the comparison table, and leaves everything
else in the file, such as a hand-written introduction, as it is.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from evals.scoring import FIGURE_KEYS

__all__ = [
    "GOALS",
    "SuiteEntry",
    "figures_table",
    "markdown_sections",
    "results_table",
    "strength_plot",
    "strength_rows",
    "strength_table",
    "update_markdown",
]

# The goals for the deterministic reasoner on the public suite.
GOALS: Mapping[str, str] = {
    "ac1": "≥ 0.95",
    "ac3": "= 1.0",
    "onset_acc": "≥ 0.9",
    "mitigation_acc": "≥ 0.95",
    "false_positive_rate": "= 0",
    "wrong_cause_rate": "≤ 0.02",
    "ac1_after_followup": "≥ 0.95",
    "ac1_above_floor": "≥ 0.95",
    "ac3_above_floor": "= 1.0",
    "ac1_after_followup_detectable": "≥ 0.95",
    "unsafe_actions": "= 0",
    "median_seconds": "< 3",
}
_FIGURES_TAG = "vigil-eval:figures"
_NUMERIC = frozenset({"rank", "onset Δ", "s"})
_BLOCK = re.compile(
    r"<!-- vigil-eval:begin (?P<key>[\w.\-]+) -->\n.*?<!-- vigil-eval:end (?P=key) -->\n?",
    re.DOTALL,
)


@dataclass(frozen=True)
class SuiteEntry:
    """One scenario of the suite, as the coverage section lists it."""

    name: str
    kind: str
    description: str
    faults: tuple[str, ...]
    minutes: int
    requests_per_minute: int
    experiments: int


def _fmt(value: Any, spread: Mapping[str, float] | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if spread and spread.get("std"):
        text += f" ± {spread['std']:.3f}"
    return text


def _spreads(figures: Mapping[str, Any]) -> Mapping[str, Any]:
    repeat = figures.get("repeat") or {}
    return repeat.get("figures") or {}


def figures_table(figures: Mapping[str, Any], title: str) -> Table:
    """The headline figures (mean ± std over repeats) as a Rich table."""
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal (deterministic)", justify="right")
    spreads = _spreads(figures)
    for key in FIGURE_KEYS:
        table.add_row(key, _fmt(figures.get(key), spreads.get(key)), GOALS.get(key, ""))
    return table


def results_table(figures: Mapping[str, Any]) -> Table:
    """One line per scenario run: expected, got, rank, onset error, seconds, pass or why."""
    table = Table(title="scenarios", show_lines=False)
    for name in ("scenario", "expected", "got", "rank", "onset Δ", "mitigation", "s", "result"):
        table.add_column(name, justify="right" if name in _NUMERIC else "left")
    for row in figures.get("results", []):
        expected = row["expected"]
        want = expected["root_cause"] + (
            f"@{expected['experiment']}" if expected["experiment"] else ""
        )
        got = row["ranks"][0] if row["ranks"] else "none"
        mitigation = f"{row['got']['mitigation']} (want {expected['mitigation']})"
        onset = "" if row["onset_error"] is None else f"{row['onset_error']:+.0f}"
        result = "[green]pass[/]" if row["passed"] else "[red]" + "; ".join(row["why"]) + "[/]"
        name = row["name"] + (f" #{row['run']}" if row["run"] else "")
        table.add_row(
            name, want, got, _fmt(row["rank"]), onset, mitigation, f"{row['seconds']:.2f}", result
        )
    return table


def _figure_rows(figures: Mapping[str, Any]) -> list[str]:
    spreads = _spreads(figures)
    lines = ["| figure | value |", "|---|---:|"]
    lines += [f"| `{k}` | {_fmt(figures.get(k), spreads.get(k))} |" for k in FIGURE_KEYS]
    return lines


def _kind_rows(by_kind: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| kind | scenarios | ac1 | ac3 | experiment | onset | mitigation | passed | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind, f in by_kind.items():
        failed = ", ".join(f"`{n}`" for n in f.get("failed", [])) or "–"
        lines.append(
            f"| `{kind}` | {f['scenarios']} | {_fmt(f['ac1'])} | {_fmt(f['ac3'])} | "
            f"{_fmt(f['experiment_acc'])} | {_fmt(f['onset_acc'])} | "
            f"{_fmt(f['mitigation_acc'])} | {_fmt(f['passed'])} | {failed} |"
        )
    return lines


def strength_rows(by_strength: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The signal-strength curve as a Markdown table: figures per bucket of strength.

    Strength is the fault's size ÷ the effect detectable with its data at the alert
    (``evals.generate.strength``); below 1 an honest answer is "inconclusive".
    """
    lines = [
        "| signal strength (× detectable) | scenarios | ac1 | ac3 | ac1 after follow-up "
        "| inconclusive | wrong cause |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in by_strength.items():
        lines.append(
            f"| {name} | {f['scenarios']} | {_fmt(f['ac1'])} | {_fmt(f['ac3'])} | "
            f"{_fmt(f['ac1_after_followup'])} | {_fmt(f['inconclusive_rate'])} | "
            f"{_fmt(f['wrong_cause_rate'])} |"
        )
    return lines


def strength_table(figures: Mapping[str, Any]) -> Table:
    """The signal-strength curve (``by_strength``) as a Rich table."""
    table = Table(title="by signal strength (fault size ÷ detectable effect)")
    columns = ("scenarios", "ac1", "ac3", "ac1_after_followup", "inconclusive_rate")
    table.add_column("strength")
    for name in (*columns, "wrong_cause_rate"):
        table.add_column(name, justify="right")
    for name, f in (figures.get("by_strength") or {}).items():
        table.add_row(name, *(_fmt(f.get(c)) for c in (*columns, "wrong_cause_rate")))
    return table


def strength_plot(figures: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Plot accuracy against signal strength (the curve of ``by_strength``) to a PNG file.

    Args:
        figures: An eval's figures (with ``by_strength``).
        path: The PNG to write.
        title: The plot's title (e.g. the suite and the reasoner).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = {k: v for k, v in (figures.get("by_strength") or {}).items() if k != "healthy"}
    names = list(curve)
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    series = (
        ("ac1", "AC@1"),
        ("ac1_after_followup", "AC@1 after follow-ups"),
        ("inconclusive_rate", "inconclusive"),
        ("wrong_cause_rate", "wrong cause"),
    )
    for key, label in series:
        ys = [curve[n][key] if curve[n][key] is not None else float("nan") for n in names]
        ax.plot(x, ys, marker="o", label=label)
    ax.set_xticks(x, [f"{n}\n(n={curve[n]['scenarios']})" for n in names])
    ax.axvline(1.5, color="grey", linestyle=":", linewidth=1)  # strength 1: the floor
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("signal strength (fault size ÷ detectable effect)")
    ax.set_ylabel("share of scenarios")
    ax.set_title(title or "accuracy by signal strength", fontsize=10)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _reasoner_section(reasoner: str, figures: Mapping[str, Any], command: str) -> str:
    repeat = (figures.get("repeat") or {}).get("n", 1)
    lines = [f"### Reasoner `{reasoner}`", "", f"`{command}`", ""]
    if repeat > 1:
        lines += [f"Mean ± standard deviation over {repeat} runs.", ""]
    lines += [*_figure_rows(figures), ""]
    answered = Counter(r["got"]["reasoner"] or "–" for r in figures.get("results", []))
    if set(answered) - {reasoner}:
        # The graph falls back to the deterministic rules when a reasoner fails or names nothing
        # admissible (an LLM outage); say how often, since those rows are not this reasoner's.
        said = ", ".join(f"`{name}` {n}" for name, n in sorted(answered.items()))
        lines += [f"Rows answered by: {said}.", ""]
    lines += ["Per kind:", "", *_kind_rows(figures["by_kind"]), ""]
    if figures.get("by_strength"):
        lines += ["By signal strength:", "", *strength_rows(figures["by_strength"]), ""]
    failures = [r for r in figures.get("results", []) if not r["passed"]]
    if failures:
        lines += [f"<details><summary>{len(failures)} failed rows</summary>", ""]
        for row in failures:
            run = f" (run {row['run']})" if repeat > 1 else ""
            lines.append(f"- `{row['name']}`{run}: {'; '.join(row['why'])}")
        lines += ["", "</details>", ""]
    headline = {k: figures.get(k) for k in FIGURE_KEYS}
    lines.append(f"<!-- {_FIGURES_TAG} {json.dumps(headline)} -->")
    return "\n".join(lines)


def _coverage_section(suite: Sequence[SuiteEntry]) -> str:
    kinds: dict[str, list[SuiteEntry]] = {}
    for entry in suite:
        kinds.setdefault(entry.kind, []).append(entry)
    lines = [
        "### What the scenarios cover",
        "",
        f"{len(suite)} scenarios, {len(kinds)} kinds of truth "
        f"({sum(1 for e in suite if e.kind == 'none')} healthy).",
        "",
        "| kind | scenarios | names |",
        "|---|---:|---|",
    ]
    for kind in sorted(kinds):
        names = ", ".join(f"`{e.name}`" for e in kinds[kind])
        lines.append(f"| `{kind}` | {len(kinds[kind])} | {names} |")
    lines += [
        "",
        "<details><summary>Each scenario</summary>",
        "",
        "| scenario | truth | faults | world | description |",
        "|---|---|---|---|---|",
    ]
    for e in suite:
        faults = ", ".join(e.faults) or "none"
        world = f"{e.minutes} min × {e.requests_per_minute} req/min, {e.experiments} exp."
        description = " ".join(e.description.split()).replace("|", "\\|")
        lines.append(f"| `{e.name}` | `{e.kind}` | {faults} | {world} | {description} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


def _summary_section(sections: Mapping[str, Mapping[str, Any]]) -> str:
    columns = list(FIGURE_KEYS)
    lines = [
        "### Figures by reasoner",
        "",
        "| reasoner | " + " | ".join(f"`{c}`" for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for reasoner, figures in sections.items():
        lines.append(
            f"| `{reasoner}` | " + " | ".join(_fmt(figures.get(c)) for c in columns) + " |"
        )
    lines.append("| goal (deterministic) | " + " | ".join(GOALS.get(c, "") for c in columns) + " |")
    return "\n".join(lines)


def markdown_sections(
    reasoner: str, figures: Mapping[str, Any], command: str, suite: Sequence[SuiteEntry]
) -> dict[str, str]:
    """The Markdown blocks one eval run owns, by block key (without their markers)."""
    return {
        f"reasoner.{reasoner}": _reasoner_section(reasoner, figures, command),
        "coverage": _coverage_section(suite),
    }


def _wrap(key: str, body: str) -> str:
    return f"<!-- vigil-eval:begin {key} -->\n{body}\n<!-- vigil-eval:end {key} -->\n"


def update_markdown(path: Path, blocks: Mapping[str, str]) -> str:
    """Write ``blocks`` into the Markdown file at ``path``, keeping everything else in it.

    A block already in the file is replaced in place. A new one goes where it reads best: the
    comparison table (``summary``) before every other block, the coverage after it, a reasoner's
    section after the last reasoner section (else at the end). The comparison table is rebuilt
    from the figures of every reasoner section in the file.

    Returns:
        The file's new text.
    """
    text = path.read_text() if path.exists() else ""
    for key, body in sorted(blocks.items(), key=lambda kv: kv[0] != "coverage"):
        text = _put(text, key, body)
    sections: dict[str, dict[str, Any]] = {}
    for match in _BLOCK.finditer(text):
        key = match.group("key")
        found = re.search(rf"<!-- {_FIGURES_TAG} (.*?) -->", match.group(0))
        if key.startswith("reasoner.") and found:
            sections[key.removeprefix("reasoner.")] = json.loads(found.group(1))
    text = _put(text, "summary", _summary_section(sections))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _put(text: str, key: str, body: str) -> str:
    block = _wrap(key, body)
    found = list(_BLOCK.finditer(text))
    for match in found:
        if match.group("key") == key:
            return text[: match.start()] + block + text[match.end() :]
    if key == "summary" and found:
        at = found[0].start()
        return text[:at] + block + "\n" + text[at:]
    if key == "coverage":
        summary = [m for m in found if m.group("key") == "summary"]
        if summary:
            at = summary[0].end()
            return text[:at] + "\n" + block + text[at:]
    if key.startswith("reasoner."):
        reasoners = [m for m in found if m.group("key").startswith("reasoner.")]
        if reasoners:
            at = reasoners[-1].end()
            return text[:at] + "\n" + block + text[at:]
    separator = (
        "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    )
    return text + separator + block
