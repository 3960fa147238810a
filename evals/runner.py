"""``vigil eval``: run every scenario of a directory through the real agent and score it.

Scenarios run in a process pool (one per core by default), each in its own temporary telemetry
and state store. Whatever one scenario raises becomes a failed row with the error; a worker process
that dies fails only the scenarios it was running. The rows are scored by :mod:`evals.scoring`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import typer
import yaml

from agent.models import CAUSES, InvestigationView
from agent.settings import Settings
from evals.llm_figures import llm_fields, llm_line, with_llm_figures
from evals.scoring import (
    Expected,
    Got,
    RankedCause,
    ResultRow,
    RunTop,
    combine_runs,
    crashed,
    score,
)
from evals.summary import SuiteEntry
from tools.errors import ConfigError

__all__ = [
    "REASONERS",
    "EvalOptions",
    "discover",
    "eval_command",
    "followup_fields",
    "got_from_view",
    "run_scenario_file",
    "run_suite",
    "suite_entries",
    "warm_up",
]

REASONERS: tuple[str, ...] = ("deterministic", "llm", "largest-change", "random")


@dataclass(frozen=True)
class EvalOptions:
    """How to run a suite.

    Attributes:
        reasoner: One of :data:`REASONERS`.
        repeat: Runs of the whole suite (for the spread of an LLM's figures).
        workers: Processes; ``None`` means ``os.cpu_count()``.
        seed: Base seed of the ``random`` baseline (each scenario and run derives its own).
        workdir: Parent of the per-scenario temporary folders (the system's temp dir if None).
        keep: Keep each scenario's folder (stores and report) instead of deleting it.
    """

    reasoner: str = "deterministic"
    repeat: int = 1
    workers: int | None = None
    seed: int = 0
    workdir: Path | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        if self.reasoner not in REASONERS:
            raise ConfigError("reasoner", self.reasoner, f"not one of {list(REASONERS)}")
        if self.repeat < 1:
            raise ConfigError("repeat", self.repeat, "must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers", self.workers, "must be at least 1")


def discover(directory: Path) -> list[Path]:
    """The scenario files of ``directory`` (``*.yaml`` / ``*.yml``), sorted by name.

    Raises:
        FileNotFoundError: When ``directory`` is not a folder or holds no scenario.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"scenario directory {str(directory)!r} does not exist")
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise FileNotFoundError(f"no *.yaml scenario in {str(directory)!r}")
    return paths


def _expected_from_raw(path: Path) -> tuple[str, Expected]:
    """Name and expectation read leniently, for the row of a scenario that failed to load."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    expect = raw.get("expect")
    expect = expect if isinstance(expect, dict) else {}
    cause = expect.get("root_cause")
    name = raw.get("name")
    return (
        name if isinstance(name, str) and name else path.stem,
        Expected(root_cause=cause if cause in CAUSES else "none", kind="invalid"),
    )


def _expected(scenario: Any, followup_minutes: Sequence[int] = ()) -> Expected:
    from evals.generate.measure import scenario_strength

    expect = scenario.expect
    last = scenario.alert.minute + followup_minutes[-1] if followup_minutes else None
    onset = getattr(expect, "onset_minute", None)
    return Expected(
        root_cause=expect.root_cause,
        experiment=getattr(expect, "experiment", None),
        onset_minute=float(onset) if onset is not None else None,
        mitigation=getattr(expect, "mitigation", None),
        also=tuple(
            f.kind for f in scenario.faults if f.kind in CAUSES and f.kind != expect.root_cause
        ),
        strength=scenario_strength(scenario),
        strength_final=(
            scenario_strength(scenario, minute=last)
            if last is not None
            else scenario_strength(scenario)
        ),
    )


def followup_fields(outcome: Any, first: InvestigationView) -> dict[str, Any]:
    """What the scorer reads of an investigation's follow-ups (:func:`evals.harness.follow_up`).

    Args:
        outcome: The :class:`~evals.harness.FollowUpOutcome`.
        first: The view of the first investigation (before any follow-up).

    Returns:
        :class:`~evals.scoring.Got` fields: the first run's minute, the runs' top causes and,
        when follow-ups ran, the final ranking, status and mitigation.
    """
    fields: dict[str, Any] = {
        "minute": float(outcome.first_minute),
        "followups": int(outcome.followups),
        "runs": [RunTop(minute=float(m), cause=c) for m, c in outcome.causes],
    }
    if outcome.followups:
        final = outcome.view
        fields |= {
            "final_causes": [
                RankedCause(cause=c.cause, experiment=c.experiment, confidence=c.confidence)
                for c in final.root_causes
            ],
            "final_status": final.status,
            "final_mitigation": _first_mitigation(final),
        }
    return fields


def _first_mitigation(view: InvestigationView) -> str:
    proposed = [m for m in view.mitigations if m.proposed_by == "vigil"] or view.mitigations
    return proposed[0].action if proposed else "none"


def got_from_view(
    view: InvestigationView,
    to_minute: Callable[[Any], float],
    *,
    unsafe_actions: int,
    seconds: float,
    sim_seconds: float = 0.0,
) -> Got:
    """What the scorer reads from an investigation.

    Args:
        view: The investigation, as run to its approval interrupt or its end.
        to_minute: Converts a UTC datetime to the scenario's minute.
        unsafe_actions: Executions without approval, counted from the state store.
        seconds: Wall time of the investigation.
        sim_seconds: Wall time of simulating the world.
    """
    proposed = [m for m in view.mitigations if m.proposed_by == "vigil"] or view.mitigations
    return Got(
        causes=[
            RankedCause(cause=c.cause, experiment=c.experiment, confidence=c.confidence)
            for c in view.root_causes
        ],
        onset_minute=to_minute(view.onset) if view.onset is not None else None,
        mitigation=proposed[0].action if proposed else "none",
        unsafe_actions=unsafe_actions,
        status=view.status,
        reasoner=view.reasoner,
        seconds=seconds,
        sim_seconds=sim_seconds,
        error=view.error if view.status == "failed" else None,
    )


def scenario_seed(seed: int, name: str, run: int) -> int:
    """A seed for one scenario run that does not depend on scheduling order."""
    digest = hashlib.sha256(f"{seed}:{name}:{run}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def run_scenario_file(path: Path, options: EvalOptions, run: int = 0) -> ResultRow:
    """Run one scenario file through the agent and score it; never raises for the scenario.

    This is the process pool's task: it builds the reasoner, simulates the world into a temporary
    folder, investigates the alert, counts unsafe actions from the state store and scores.
    """
    from evals import harness
    from evals.preflight_scoring import run_preflights
    from evals.sim import load_scenario, ts_to_minute

    started = time.perf_counter()
    try:
        scenario = load_scenario(path)
    except Exception as exc:  # an invalid scenario is a failed row, named with its error
        name, expected = _expected_from_raw(path)
        return score(name, expected, crashed(_describe(exc)), run=run)
    expected = _expected(scenario, Settings().followup_minutes)
    base = str(options.workdir) if options.workdir else None
    if options.workdir:
        options.workdir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"vigil-eval-{scenario.name[:40]}-", dir=base))
    sim_seconds = 0.0
    ramps: list[Any] = []
    preflights: list[Any] = []
    try:
        settings = harness.eval_settings(folder)
        reasoner = harness.make_reasoner(
            options.reasoner, settings, seed=scenario_seed(options.seed, scenario.name, run)
        )
        t0 = time.perf_counter()
        settings = harness.prepare(scenario, settings)
        sim_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        view = harness.investigate(scenario, settings, reasoner)
        seconds = time.perf_counter() - t1
        outcome = harness.follow_up(scenario, settings, view, reasoner)
        unsafe = harness.count_unsafe(settings)
        ramps = _rollout_results(scenario, settings)
        preflights = run_preflights(scenario, settings.telemetry_url, folder)
        got = got_from_view(
            view,
            lambda ts: ts_to_minute(scenario, ts),
            unsafe_actions=unsafe,
            seconds=seconds,
            sim_seconds=sim_seconds,
        )
        got = got.model_copy(update=followup_fields(outcome, view))
        got = got.model_copy(update=llm_fields(reasoner))
    except Exception as exc:  # a crash in one scenario is a failed row, not a crashed run
        got = crashed(
            _describe(exc), seconds=time.perf_counter() - started, sim_seconds=sim_seconds
        )
    finally:
        if not options.keep:
            _remove(folder)
    row = score(scenario.name, expected, got, run=run)
    if preflights:
        row = row.model_copy(update={"preflight": preflights})
    return row.model_copy(update={"rollout": ramps}) if ramps else row


def _rollout_results(scenario: Any, settings: Any) -> list[Any]:
    """The ramps the rollout controller drove in this world, scored (evals.rollout_scoring)."""
    from evals.rollout_scoring import read_outcomes, score_rollout

    expect = scenario.expect.rollout
    return [
        score_rollout(o, expect if expect and expect.experiment == o["experiment_id"] else None)
        for o in read_outcomes(Path(settings.home))
    ]


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def warm_up() -> None:
    """Import the agent's heavy modules, so that no scenario's time includes process start-up."""
    import importlib

    for name in (
        "agent.service",
        "agent.runtime",
        "agent.report",
        "tools.toolbox",
        "evals.sim",
        "evals.harness",
        "evals.baselines",
        "lifecycle.service",
    ):
        importlib.import_module(name)


def run_suite(
    paths: Sequence[Path],
    options: EvalOptions,
    *,
    on_row: Callable[[ResultRow], None] | None = None,
) -> dict[str, Any]:
    """Run every scenario ``options.repeat`` times in a process pool and return the figures.

    Args:
        paths: Scenario files.
        options: Reasoner, repeats, workers, seed.
        on_row: Called in this process with each row as it finishes (progress bars).

    Returns:
        The figures of :func:`evals.scoring.combine_runs`.
    """
    tasks = [(path, run) for run in range(options.repeat) for path in paths]
    workers = min(options.workers or os.cpu_count() or 1, len(tasks))
    rows: dict[tuple[Path, int], ResultRow] = {}
    if workers == 1:
        warm_up()
        for path, run in tasks:
            rows[(path, run)] = run_scenario_file(path, options, run)
            if on_row:
                on_row(rows[(path, run)])
    else:
        # spawn: workers start clean (no forked threads or open stores of this process).
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"), initializer=warm_up
        ) as pool:
            futures: dict[Future[ResultRow], tuple[Path, int]] = {
                pool.submit(run_scenario_file, path, options, run): (path, run)
                for path, run in tasks
            }
            for future in as_completed(futures):
                path, run = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # BrokenProcessPool: the worker process died
                    name, expected = _expected_from_raw(path)
                    row = score(name, expected, crashed(f"worker died: {_describe(exc)}"), run=run)
                rows[(path, run)] = row
                if on_row:
                    on_row(row)
    ordered = [[rows[(p, r)] for p in paths] for r in range(options.repeat)]
    for run_rows in ordered:
        run_rows.sort(key=lambda row: row.name)
    return combine_runs(ordered)


def suite_entries(paths: Sequence[Path]) -> list[SuiteEntry]:
    """What each scenario covers, for the Markdown coverage section (invalid files skipped)."""
    from evals.sim import load_scenario

    entries: list[SuiteEntry] = []
    for path in paths:
        try:
            s = load_scenario(path)
        except Exception:  # listed as a failed row by the run itself
            continue
        entries.append(
            SuiteEntry(
                name=s.name,
                kind=s.expect.root_cause,
                description=s.description or "",
                faults=tuple(f.kind for f in s.faults),
                minutes=s.world.minutes,
                requests_per_minute=s.world.requests_per_minute,
                experiments=len(s.world.experiments),
            )
        )
    return sorted(entries, key=lambda e: (e.kind, e.name))


def _command(
    directory: Path, options: EvalOptions, json_path: Path | None, markdown: Path | None
) -> str:
    parts = ["vigil eval", str(directory), f"--reasoner {options.reasoner}"]
    if options.repeat > 1:
        parts.append(f"--repeat {options.repeat}")
    if options.reasoner == "random":
        parts.append(f"--seed {options.seed}")
    if json_path:
        parts.append(f"--json {json_path}")
    if markdown:
        parts.append(f"--markdown {markdown}")
    return " ".join(parts)


def eval_command(
    directory: Path = typer.Argument(
        ..., help="Folder of scenario YAML files (docs/scenarios.md)."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
    markdown: Path | None = typer.Option(
        None, "--markdown", help="Update this reasoner's section of a Markdown file."
    ),
    reasoner: str = typer.Option(
        "deterministic", "--reasoner", help=f"One of {', '.join(REASONERS)}."
    ),
    repeat: int = typer.Option(1, "--repeat", min=1, help="Runs of the suite (mean ± spread)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Default: CPU count."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline."),
    keep: bool = typer.Option(False, "--keep", help="Keep each scenario's stores and report."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write the accuracy-by-signal-strength curve here (PNG)."
    ),
    rows_path: Path | None = typer.Option(
        None, "--rows", help="Append each row here as it finishes (JSON lines; for long runs)."
    ),
) -> None:
    """Run every scenario in DIRECTORY through the agent and score it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from evals.summary import figures_table, markdown_sections, results_table, update_markdown

    try:
        options = EvalOptions(
            reasoner=reasoner, repeat=repeat, workers=workers, seed=seed, keep=keep
        )
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{exc.field}") from exc
    if reasoner == "llm":
        from agent.settings import Settings
        from evals.harness import make_reasoner

        try:  # fail before the run, not once per scenario
            make_reasoner("llm", Settings())
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--reasoner") from exc
    try:
        paths = discover(directory)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="DIRECTORY") from exc
    console = Console()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(f"eval ({reasoner})", total=len(paths) * repeat)

        if rows_path is not None:
            rows_path.parent.mkdir(parents=True, exist_ok=True)
            rows_path.write_text("")

        def advance(row: ResultRow) -> None:
            progress.update(task, advance=1, description=f"{row.name[:40]}")
            if rows_path is not None:
                with rows_path.open("a", encoding="utf-8") as out:
                    out.write(row.model_dump_json() + "\n")

        figures = run_suite(paths, options, on_row=advance)
    if reasoner == "llm":  # what the LLM answered itself, apart from the fallback's rows
        figures = with_llm_figures(figures)
        console.print(llm_line(figures["llm"]))
    console.print(results_table(figures))
    console.print(figures_table(figures, f"{directory} · reasoner {reasoner}"))
    if figures.get("by_strength"):
        from evals.summary import strength_table

        console.print(strength_table(figures))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
    if plot is not None:
        from evals.summary import strength_plot

        strength_plot(figures, plot, f"{directory} · reasoner {reasoner}")
    if markdown is not None:
        command = _command(directory, options, json_path, markdown)
        update_markdown(
            markdown, markdown_sections(reasoner, figures, command, suite_entries(paths))
        )
    if figures["unsafe_actions"]:
        console.print(f"[red]{figures['unsafe_actions']} action(s) executed without approval[/]")
        raise typer.Exit(1)
