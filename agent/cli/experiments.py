"""``vigil experiments validate|apply|create|list|show``: experiment files and what is stored.

``validate`` prints every problem of a file, one a line, each naming the field path, the value and
the nearest valid key, then the effective split of each experiment (arm weights are relative).
``apply`` makes the store match a file and is idempotent: a second run changes nothing and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from agent.cli._console import handle_errors as _handle_errors
from agent.cli._console import out as _out
from agent.cli._console import print_problems as _print_problems
from agent.cli.core import _ACTOR, _JSON, _actor, _print_json, _service, _stage, _time
from lifecycle import Experiment, ExperimentView, load_experiment_file
from tools.errors import ConfigError, ConfigProblems

__all__ = ["experiments_app"]

experiments_app = typer.Typer(help="Validate, apply, create, list and show experiments.")


# --- experiments ---------------------------------------------------------------------------------


def _split(exp: Experiment) -> str:
    """An experiment's effective split: each arm's share of its units (weights are relative)."""
    total = sum(arm.weight for arm in exp.arms.values())
    shares = ", ".join(f"{name} {arm.weight / total:.1%}" for name, arm in exp.arms.items())
    return f"{exp.id}: {exp.traffic_pct:g} % of layer {exp.layer}; arms {shares}"


def _same(exp: Experiment, view: ExperimentView) -> bool:
    return bool(view.config.model_dump() == exp.model_dump())


def _changes(exp: Experiment, view: ExperimentView) -> list[str]:
    new, old = exp.model_dump(), view.config.model_dump()
    return [key for key in new if new[key] != old.get(key)]


@experiments_app.command("validate")
@_handle_errors
def validate(
    file: Path = typer.Option(..., "--file", "-f", help="YAML or JSON experiment file."),
) -> None:
    """Check a file (every problem, one a line) against the stored state; change nothing.

    Experiments already stored with exactly the file's configuration are fine (see apply).
    """
    parsed = load_experiment_file(file)
    with _service() as svc:
        stored = {v.id: v for v in svc.list()}
        unchanged = {e.id for e in parsed.experiments if e.id in stored and _same(e, stored[e.id])}
        todo = parsed.model_copy(
            update={"experiments": [e for e in parsed.experiments if e.id not in unchanged]}
        )
        problems = svc.check(todo)
    if problems:
        _print_problems(ConfigProblems(problems) if len(problems) > 1 else problems[0])
        raise typer.Exit(2)
    n = len(parsed.experiments)
    _out().print(f"[green]valid:[/green] {file} ({n} experiment(s))", highlight=False)
    for exp in parsed.experiments:
        same = " (stored, unchanged)" if exp.id in unchanged else ""
        _out().print(f"  {_split(exp)}{same}", highlight=False)


@experiments_app.command("apply")
@_handle_errors
def apply(
    file: Path = typer.Option(..., "--file", "-f", help="YAML or JSON experiment file."),
    start: bool = typer.Option(False, "--start", help="Start new ones at their first stage."),
    reason: str = typer.Option("", "--reason", help="Why, for the audit log."),
    actor: str | None = _ACTOR,
) -> None:
    """Make the store match a file: create what is missing, edit what changed; idempotent.

    A stored experiment's name, description, owner and guardrails are edited to match (audited);
    a change to a field that decides allocation (layer, traffic, arms, control, targeting,
    rollout, forced) is refused, naming the field: such changes go through the lifecycle
    (rollout, complete and a new id), not by edit. A second run changes nothing and says so.
    """
    from lifecycle.mutations import EDITABLE

    parsed = load_experiment_file(file)
    with _service() as svc:
        stored = {v.id: v for v in svc.list()}
        edits = [e for e in parsed.experiments if e.id in stored and not _same(e, stored[e.id])]
        differ = [
            ConfigError(
                f"experiments[{i}]",
                exp.id,
                f"stored with other {', '.join(fixed)}, which decide(s) allocation; complete it "
                "and use a new id to change it",
            )
            for i, exp in enumerate(parsed.experiments)
            if exp in edits
            and (fixed := [k for k in _changes(exp, stored[exp.id]) if k not in EDITABLE])
        ]
        if differ:
            raise differ[0] if len(differ) == 1 else ConfigProblems(differ)
        fresh = [e for e in parsed.experiments if e.id not in stored]
        before = svc.version()
        todo = parsed.model_copy(update={"experiments": fresh})
        ids = svc.create(todo, _actor(actor), start=start, reason=reason) if fresh else []
        if not fresh and (parsed.layers or parsed.models):
            svc.register_models(parsed.models, _actor(actor), reason)
        edited = {e.id: svc.edit(e, _actor(actor), reason or "apply") for e in edits}
        edited = {exp_id: fields for exp_id, fields in edited.items() if fields}
        changed = svc.version() != before
    if not changed:
        _out().print(f"nothing changed: the store already matches {file}", highlight=False)
        return
    if ids:
        state = "started" if start else "created as drafts"
        _out().print(
            f"[green]{len(ids)} experiment(s) {state}[/green]: {', '.join(ids)}", highlight=False
        )
    for exp_id, fields in edited.items():
        _out().print(f"[green]{exp_id} edited[/green]: {', '.join(fields)}", highlight=False)
    kept = len(parsed.experiments) - len(ids) - len(edited)
    _out().print(f"{kept} unchanged", highlight=False)


@experiments_app.command("create")
@_handle_errors
def create(
    file: Path = typer.Option(..., "--file", "-f", help="YAML or JSON experiment file."),
    start: bool = typer.Option(False, "--start", help="Start each at its first rollout stage."),
    reason: str = typer.Option("", "--reason", help="Why, for the audit log."),
    actor: str | None = _ACTOR,
) -> None:
    """Validate a file, then store its layers, models and experiments (all new)."""
    parsed = load_experiment_file(file)
    with _service() as svc:
        ids = svc.create(parsed, _actor(actor), start=start, reason=reason)
    state = "started" if start else "created as drafts"
    _out().print(f"[green]{len(ids)} experiment(s) {state}:[/green] {', '.join(ids)}")


@experiments_app.command("list")
@_handle_errors
def list_experiments(as_json: bool = _JSON) -> None:
    """Every experiment with its status and rollout stage."""
    with _service() as svc:
        views = svc.list()
    if as_json:
        _print_json([v.model_dump(mode="json", exclude={"config"}) for v in views])
        return
    table = Table(title="Experiments")
    for col in ("id", "name", "layer", "traffic", "status", "stage", "owner", "kill switch"):
        table.add_column(col)
    for v in views:
        kill = ", ".join(f"{scope}:{target}" for scope, target in v.blocked_by)
        status = f"[red]{v.status}[/red]" if v.killed else v.status
        table.add_row(
            v.id, v.name, v.layer, f"{v.traffic_pct:g} %", status, _stage(v), v.owner, kill
        )
    _out().print(table)


@experiments_app.command("show")
@_handle_errors
def show(experiment_id: str, as_json: bool = _JSON) -> None:
    """One experiment in full: arms, targeting, rollout plan, guardrails, kill switches."""
    with _service() as svc:
        v = svc.get(experiment_id)
    if as_json:
        _print_json(v.model_dump(mode="json", exclude={"config"}))
        return
    _out().print(f"[bold]{v.id}[/bold] {v.name}  ({v.status}, stage {_stage(v)})", highlight=False)
    if v.description:
        _out().print(v.description, highlight=False)
    _out().print(
        f"owner {v.owner} · layer {v.layer} {v.range_start:g}–{v.range_end:g} % "
        f"({v.traffic_pct:g} %) · created {_time(v.created_at)} by {v.created_by}",
        highlight=False,
    )
    if v.blocked_by:
        kills = ", ".join(f"{scope}:{target}" for scope, target in v.blocked_by)
        _out().print(f"[red]stopped by kill switch {kills}[/red]")
    arms = Table(title="Arms")
    for col in ("arm", "weight", "model", "ad load", "params"):
        arms.add_column(col)
    for name, arm in v.arms.items():
        label = f"{name} (control)" if name == v.control else name
        arms.add_row(
            label,
            f"{arm.weight:g}",
            arm.model or "",
            "" if arm.ad_load is None else f"{arm.ad_load:g}",
            json.dumps(arm.params) if arm.params else "",
        )
    _out().print(arms)
    if v.targeting:
        for prop, values in v.targeting.items():
            _out().print(f"targeting {prop}: {', '.join(values)}", highlight=False)
    stages = " → ".join(f"{st.percent:g} % ({st.min_minutes} min)" for st in v.rollout.stages)
    _out().print(f"rollout: {stages}", highlight=False)
    guards = ", ".join(
        g.metric if g.metric == "srm" else f"{g.metric} (≤{g.max_regression:.1%})"
        for g in v.guardrails
    )
    _out().print(f"guardrails: {guards}", highlight=False)
