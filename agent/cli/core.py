"""``vigil experiments|kill|release|rollout|models|audit``: the experiment core's commands.

Every command goes through :class:`lifecycle.ExperimentService` on ``VIGIL_STATE_URL``; errors of
the one hierarchy are printed as one line naming the field and value, with exit code 2 for bad
configuration and 1 for anything else Vigil refuses.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import typer
import yaml
from pydantic import ValidationError
from rich.table import Table

from agent.cli._console import err as _err
from agent.cli._console import handle_errors as _handle_errors
from agent.cli._console import out as _out
from lifecycle import (
    AuditEntry,
    ExperimentService,
    ExperimentView,
    GateInput,
    GateReport,
    KillScope,
    get_settings,
    load_experiment_file,
)
from lifecycle.rollout import RolloutState, allowed_actions
from lifecycle.validation import config_errors
from tools.errors import ConfigError

__all__ = ["register"]


experiments_app = typer.Typer(help="Validate, create, list and show experiments.")
rollout_app = typer.Typer(help="Rollout state: status, start, advance through the health gate.")
models_app = typer.Typer(help="The model registry.")

_ACTOR = typer.Option(None, "--actor", help="Who acts (default: $VIGIL_ACTOR or $USER).")
_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _service() -> ExperimentService:
    return ExperimentService.from_settings(get_settings())


def _actor(actor: str | None) -> str:
    return actor or os.environ.get("VIGIL_ACTOR") or os.environ.get("USER") or getpass.getuser()


def _time(ts: datetime | None) -> str:
    return "" if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: Any) -> None:
    _out().print_json(json.dumps(value, default=str))


def _stage(view: ExperimentView) -> str:
    n = len(view.rollout.stages)
    if view.status in ("ramping", "running"):
        return f"{view.stage + 1}/{n} {view.stage_percent:g}%"
    return f"{view.stage + 1}/{n}"


# --- experiments ---------------------------------------------------------------------------------


@experiments_app.command("validate")
@_handle_errors
def validate(
    file: Path = typer.Option(..., "--file", "-f", help="YAML or JSON experiment file."),
) -> None:
    """Check a file against the stored state; change nothing."""
    parsed = load_experiment_file(file)
    with _service() as svc:
        problems = svc.check(parsed)
    if not problems:
        n = len(parsed.experiments)
        _out().print(f"[green]valid:[/green] {file} ({n} experiment(s))", highlight=False)
        return
    for problem in problems:
        _err().print(f"[red]invalid:[/red] {problem}", highlight=False)
    raise typer.Exit(2)


@experiments_app.command("create")
@_handle_errors
def create(
    file: Path = typer.Option(..., "--file", "-f", help="YAML or JSON experiment file."),
    start: bool = typer.Option(False, "--start", help="Start each at its first rollout stage."),
    reason: str = typer.Option("", "--reason", help="Why, for the audit log."),
    actor: str | None = _ACTOR,
) -> None:
    """Validate a file, then store its layers, models and experiments."""
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


# --- kill switch ---------------------------------------------------------------------------------

_SCOPE = typer.Option("experiment", "--scope", help="experiment | layer | model | global")


def _scope(scope: str) -> KillScope:
    if scope not in ("experiment", "layer", "model", "global"):
        raise ConfigError("--scope", scope, "one of experiment, layer, model, global")
    return cast(KillScope, scope)


@_handle_errors
def kill(
    target: str | None = typer.Argument(None, help="Experiment, layer or model id (none: global)."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the audit log)."),
    scope: str = _SCOPE,
    actor: str | None = _ACTOR,
) -> None:
    """The big red button: stop allocation now for an experiment, layer, model or everything."""
    with _service() as svc:
        newly = svc.kill(target, _actor(actor), reason, scope=_scope(scope))
    what = "everything" if scope == "global" else f"{scope} {target}"
    if newly:
        _out().print(f"[red]killed[/red] {what}", highlight=False)
    else:
        _out().print(f"{what} was already killed; nothing recorded", highlight=False)


@_handle_errors
def release(
    target: str | None = typer.Argument(None, help="Experiment, layer or model id (none: global)."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the audit log)."),
    scope: str = _SCOPE,
    actor: str | None = _ACTOR,
) -> None:
    """Release a kill switch (a killed experiment stays paused until resumed)."""
    with _service() as svc:
        done = svc.release(target, _actor(actor), reason, scope=_scope(scope))
    what = "everything" if scope == "global" else f"{scope} {target}"
    _out().print(f"released {what}" if done else f"{what} had no active kill switch")


# --- rollout -------------------------------------------------------------------------------------


def _print_status(v: ExperimentView) -> None:
    now = datetime.now(UTC)
    minutes = (now - v.stage_started_at).total_seconds() / 60.0
    stage = v.rollout.stages[min(v.stage, len(v.rollout.stages) - 1)]
    state = RolloutState(v.status, v.stage, v.prior)
    _out().print(f"[bold]{v.id}[/bold] {v.name}", highlight=False)
    _out().print(f"status: {v.status}" + (f" (was {v.prior})" if v.prior else ""), highlight=False)
    _out().print(
        f"stage {_stage(v)}: {minutes:.0f} of at least {stage.min_minutes} minutes "
        f"since {_time(v.stage_started_at)}",
        highlight=False,
    )
    if v.blocked_by:
        _out().print(f"[red]kill switch: {v.blocked_by}[/red]", highlight=False)
    _out().print(f"allowed: {', '.join(allowed_actions(state)) or 'nothing'}", highlight=False)


@rollout_app.command("status")
@_handle_errors
def rollout_status(experiment_id: str, as_json: bool = _JSON) -> None:
    """Where an experiment's rollout stands and what it may do next."""
    with _service() as svc:
        v = svc.get(experiment_id)
    if as_json:
        _print_json(
            {
                "id": v.id,
                "status": v.status,
                "stage": v.stage,
                "stage_percent": v.stage_percent,
                "stage_started_at": v.stage_started_at,
                "prior": v.prior,
                "blocked_by": v.blocked_by,
            }
        )
        return
    _print_status(v)


def _load_stats(path: Path) -> GateInput:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("--stats", str(path), f"cannot read statistics: {exc}") from None
    try:
        return GateInput.model_validate(data)
    except ValidationError as exc:
        raise config_errors(exc, prefix="stats")[0] from None


def _print_gate(report: GateReport) -> None:
    table = Table(title=f"Health gate: {report.decision}")
    for col in ("guardrail", "arm", "lift", "always-valid interval", "tolerance", "verdict"):
        table.add_column(col)
    if report.srm is not None:
        p = "" if report.srm.p_value is None else f"p = {report.srm.p_value:.3g}"
        table.add_row("srm", "all", "", p, "p ≥ 0.001", report.srm.verdict)
    for g in report.guardrails:
        interval = "" if g.ci_low is None else f"[{g.ci_low:+.2%}, {g.ci_high:+.2%}]"
        lift = "" if g.estimate is None else f"{g.estimate:+.2%}"
        colour = {"harm": "red", "safe": "green"}.get(g.verdict, "yellow")
        verdict = f"[{colour}]{g.verdict}[/{colour}]"
        table.add_row(g.metric, g.arm, lift, interval, f"{g.max_regression:.1%}", verdict)
    _out().print(table)
    for reason in report.reasons:
        _out().print(f"· {reason}", highlight=False)


@rollout_app.command("advance")
@_handle_errors
def rollout_advance(
    experiment_id: str,
    stats: Path | None = typer.Option(
        None, "--stats", help="YAML/JSON: units per arm and per-arm metric statistics."
    ),
    force: bool = typer.Option(False, "--force", help="Advance without the gate (audited)."),
    reason: str = typer.Option("", "--reason", help="Why (required with --force)."),
    actor: str | None = _ACTOR,
) -> None:
    """Evaluate the stage's health gate: advance, hold, or roll back one stage."""
    gate_input = None if stats is None else _load_stats(stats)
    with _service() as svc:
        result = svc.advance(
            experiment_id, _actor(actor), stats=gate_input, force=force, reason=reason
        )
    if result.gate is not None:
        _print_gate(result.gate)
    _out().print(f"{result.decision}: {result.before} → {result.after}", highlight=False)


def _simple(action: str) -> Callable[..., None]:
    def command(
        experiment_id: str,
        reason: str = typer.Option(..., "--reason", help="Why (recorded in the audit log)."),
        actor: str | None = _ACTOR,
    ) -> None:
        with _service() as svc:
            if action == "start":
                view = svc.start(experiment_id, _actor(actor), reason)
            elif action == "ramp-down":
                done = svc.ramp_down(experiment_id, _actor(actor), reason)
                if not done:
                    _out().print(f"{experiment_id} is not serving; nothing to ramp down")
                    return
                view = svc.get(experiment_id)
            else:
                view = getattr(svc, action)(experiment_id, _actor(actor), reason)
        _print_status(view)

    command.__doc__ = {
        "start": "Submit a draft and start it at its first rollout stage.",
        "pause": "Stop allocating, keeping the stage.",
        "resume": "Return a paused experiment to where it was.",
        "complete": "Conclude an experiment and free its layer range.",
        "ramp-down": "Go back one rollout stage (from the first, pause).",
    }[action]
    return _handle_errors(command)


for _action in ("start", "pause", "resume", "complete", "ramp-down"):
    rollout_app.command(_action)(_simple(_action))


# --- models and audit ----------------------------------------------------------------------------


@models_app.command("list")
@_handle_errors
def models_list() -> None:
    """Every registered model version; the serving one is marked."""
    with _service() as svc:
        models = svc.models()
    table = Table(title="Model registry")
    for col in ("model", "version", "status", "serving", "refresh", "training NE", "registered"):
        table.add_column(col)
    for m in models:
        table.add_row(
            m.id,
            m.version,
            m.status,
            "●" if m.serving else "",
            "" if m.entry.refresh_minutes is None else f"{m.entry.refresh_minutes} min",
            "" if m.entry.training_ne is None else f"{m.entry.training_ne:.3f}",
            _time(m.registered_at),
        )
    _out().print(table)


@models_app.command("rollback")
@_handle_errors
def models_rollback(
    model_id: str,
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the audit log)."),
    version: str | None = typer.Option(None, "--version", help="Default: the serving one."),
    actor: str | None = _ACTOR,
) -> None:
    """Roll a model back to its previous version."""
    with _service() as svc:
        done = svc.rollback_model(model_id, _actor(actor), reason, version=version)
    _out().print(f"rolled back {model_id}" if done else f"{model_id}: already rolled back")


def _summary(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        parts = []
        if "status" in value:
            status = value["status"]
            if status == "ramping":
                status = f"ramping({value.get('stage', 0)})"
            parts.append(f"{status} {value.get('percent', 0):g}%")
        if "kill_switch" in value:
            parts.append(f"switch {value['kill_switch']}")
        if "version" in value:
            parts.append(f"version {value['version']}")
        if parts:
            return ", ".join(parts)
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _entry_row(e: AuditEntry) -> list[str]:
    return [
        str(e.id),
        e.at.astimezone(UTC).strftime("%m-%d %H:%M:%S"),
        e.actor,
        e.action,
        e.experiment_id or "",
        e.target or "",
        e.reason,
        _summary(e.before),
        _summary(e.after) if e.action != "create" else "created",
    ]


@_handle_errors
def audit(
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="One experiment."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Only the newest N entries."),
    as_json: bool = _JSON,
) -> None:
    """Print the append-only audit log: who changed what, when, why, before and after."""
    with _service() as svc:
        entries = svc.audit(experiment, limit)
    if as_json:
        _print_json([e.model_dump(mode="json") for e in entries])
        return
    table = Table(title="Audit log" + (f": experiment {experiment}" if experiment else ""))
    for col in ("#", "time (UTC)", "actor", "action", "experiment", "target"):
        table.add_column(col, no_wrap=col in ("#", "time (UTC)", "action"))
    for col in ("reason", "before", "after"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(*_entry_row(e))
    _out().print(table)


def register(app: typer.Typer) -> None:
    """Add the experiment core's commands to the ``vigil`` app."""
    app.add_typer(experiments_app, name="experiments")
    app.command("kill")(kill)
    app.command("release")(release)
    app.add_typer(rollout_app, name="rollout")
    app.add_typer(models_app, name="models")
    app.command("audit")(audit)
