"""``vigil kill|release|rollout|models|audit``: the experiment core's commands.

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
from typing import TYPE_CHECKING, Any, cast

import typer
import yaml
from pydantic import ValidationError
from rich.table import Table

from agent.cli._console import handle_errors as _handle_errors
from agent.cli._console import out as _out
from agent.settings import get_settings
from lifecycle import (
    AuditEntry,
    ExperimentService,
    ExperimentView,
    GateInput,
    GateReport,
    KillScope,
)
from lifecycle.rollout import RolloutState, allowed_actions
from lifecycle.validation import config_errors
from tools.errors import ConfigError, TelemetryError
from tools.vocabulary import utc_now

if TYPE_CHECKING:
    from lifecycle.controller import Look

__all__ = ["register"]


rollout_app = typer.Typer(
    help="Rollout state: status, start, advance through the health gate, tick the controller."
)
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


# --- kill switch ---------------------------------------------------------------------------------

_SCOPE = typer.Option("experiment", "--scope", help="experiment | layer | model | global")


def _scope(scope: str, target: str | None) -> KillScope:
    if scope not in ("experiment", "layer", "model", "global"):
        raise ConfigError("--scope", scope, "one of experiment, layer, model, global")
    if scope != "global" and not target:
        article = "an" if scope[0] in "aeiou" else "a"
        raise ConfigError("TARGET", target, f"{article} {scope} kill switch needs the {scope}'s id")
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
        newly = svc.kill(target, _actor(actor), reason, scope=_scope(scope, target))
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
        done = svc.release(target, _actor(actor), reason, scope=_scope(scope, target))
    what = "everything" if scope == "global" else f"{scope} {target}"
    _out().print(f"released {what}" if done else f"{what} had no active kill switch")


# --- rollout -------------------------------------------------------------------------------------


def _print_status(v: ExperimentView) -> None:
    now = utc_now()
    minutes = (now - v.stage_started_at).total_seconds() / 60.0
    stage = v.rollout.stages[min(v.stage, len(v.rollout.stages) - 1)]
    state = RolloutState(v.status, v.stage, v.prior)
    _out().print(f"[bold]{v.id}[/bold] {v.name}", highlight=False)
    _out().print(f"status: {v.status}" + (f" (was {v.prior})" if v.prior else ""), highlight=False)
    where, least = (
        ("shadow run (control served)", v.rollout.shadow_minutes)
        if v.status == "shadow"
        else (f"stage {_stage(v)}", stage.min_minutes)
    )
    _out().print(
        f"{where}: {minutes:.0f} of at least {least} minutes since {_time(v.stage_started_at)}",
        highlight=False,
    )
    if v.blocked_by:
        _out().print(f"[red]kill switch: {v.blocked_by}[/red]", highlight=False)
    _out().print(f"allowed: {', '.join(allowed_actions(state)) or 'nothing'}", highlight=False)


def _look(experiment_id: str, at: datetime | None) -> tuple[Look | None, str]:
    """The gate's look at a ramping experiment from the telemetry, or why there is none."""
    from lifecycle.controller import RolloutController

    controller = RolloutController.from_settings(get_settings())
    try:
        looks = controller.evaluate(at, [experiment_id])
    except TelemetryError as exc:
        return None, f"telemetry unavailable: {exc}"
    finally:
        controller.close()
    if not looks:
        return None, "not ramping: the health gate only judges a ramping experiment"
    return looks[0], ""


def _print_look(look: Look) -> None:
    v, report = look.view, look.report
    stage = v.rollout.stages[min(v.stage, len(v.rollout.stages) - 1)]
    _out().print(
        f"time in stage (telemetry clock, {_time(look.at)}): {report.elapsed_minutes:.0f} of "
        f"at least {stage.min_minutes} minutes; units since the stage began: "
        + (", ".join(f"{a} {n}" for a, n in look.stats.units.items()) or "none"),
        highlight=False,
    )
    _print_gate(report)
    action = {"advance": "advance", "hold": "hold", "rollback": v.rollout.on_harm}
    _out().print(
        f"next decision: {report.decision} → {action[report.decision]} "
        f"(on harm: {v.rollout.on_harm})",
        highlight=False,
    )


@rollout_app.command("status")
@_handle_errors
def rollout_status(
    experiment_id: str,
    at: datetime | None = typer.Option(
        None, "--at", help="Judge as of this UTC time (default: the telemetry's newest request)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Where an experiment's rollout stands, each guardrail's interval, and the next decision."""
    with _service() as svc:
        v = svc.get(experiment_id)
    look, why = _look(experiment_id, at) if v.status == "ramping" and not v.killed else (None, "")
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
                "on_harm": v.rollout.on_harm,
                "gate": None if look is None else look.report.model_dump(mode="json"),
                "gate_at": None if look is None else look.at,
                "units": None if look is None else look.stats.units,
                "gate_unavailable": why or None,
            }
        )
        return
    _print_status(v)
    if look is not None:
        _print_look(look)
    elif why:
        _out().print(f"health gate: {why}", highlight=False)


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
        None,
        "--stats",
        help="YAML/JSON: units per arm and per-arm metric statistics (default: read from the "
        "telemetry since the stage began).",
    ),
    force: bool = typer.Option(False, "--force", help="Advance without the gate (audited)."),
    reason: str = typer.Option("", "--reason", help="Why (required with --force)."),
    actor: str | None = _ACTOR,
) -> None:
    """Evaluate the stage's health gate: advance, hold, or roll back one stage."""
    gate_input = None if stats is None else _load_stats(stats)
    if gate_input is None and not force:
        look, why = _look(experiment_id, None)
        if look is not None:
            gate_input = look.stats
        elif why.startswith("telemetry"):
            _out().print(f"health gate: {why}", highlight=False)
    with _service() as svc:
        result = svc.advance(
            experiment_id, _actor(actor), stats=gate_input, force=force, reason=reason
        )
    if result.gate is not None:
        _print_gate(result.gate)
    _out().print(f"{result.decision}: {result.before} → {result.after}", highlight=False)


@rollout_app.command("tick")
@_handle_errors
def rollout_tick(
    at: datetime | None = typer.Option(
        None, "--at", help="Tick as of this UTC time (default: the telemetry's newest request)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Run the rollout controller once: every ramping experiment's gate, acted on."""
    from lifecycle.controller import RolloutController

    controller = RolloutController.from_settings(get_settings())
    try:
        decisions = controller.tick(None if at is None else at.replace(tzinfo=at.tzinfo or UTC))
    finally:
        controller.close()
    if as_json:
        _print_json(
            [
                {
                    "experiment": d.experiment_id,
                    "at": d.at,
                    "decision": d.decision,
                    "action": d.action,
                    "before": d.before,
                    "after": d.after,
                    "reasons": d.reasons,
                    "alert": None if d.alert is None else d.alert.key,
                }
                for d in decisions
            ]
        )
        return
    table = Table(title=f"Rollout controller: {len(decisions)} ramping experiment(s)")
    for col in ("experiment", "decision", "action", "before", "after"):
        table.add_column(col, no_wrap=True)
    table.add_column("why", overflow="fold")
    for d in decisions:
        why = "; ".join(d.reasons)
        if d.alert is not None:
            why = f"alert {d.alert.key} opened; {why}"
        table.add_row(d.experiment_id, d.decision, d.action, d.before, d.after, why)
    _out().print(table)


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
    cols = ("model", "version", "status", "serving", "refresh", "training NE", "declared cost")
    for col in (*cols, "registered"):
        table.add_column(col)
    for m in models:
        table.add_row(
            m.id,
            m.version,
            m.status,
            "●" if m.serving else "",
            "" if m.entry.refresh_minutes is None else f"{m.entry.refresh_minutes} min",
            "" if m.entry.training_ne is None else f"{m.entry.training_ne:.3f}",
            ", ".join(
                f"{value:g} {unit}"
                for value, unit in (
                    (m.entry.ms_per_request, "ms/request"),
                    (m.entry.memory_gb, "GB"),
                )
                if value is not None
            ),
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


_SWITCHES = frozenset({"kill", "release"})


@_handle_errors
def audit(
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="One experiment."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Only the newest N entries."),
    as_json: bool = _JSON,
) -> None:
    """Print the append-only audit log: who changed what, when, why, before and after.

    With --experiment, the kill switches of its layer, of its models and the global one, which
    stopped it too, are included; an unknown experiment is an error.
    """
    with _service() as svc:
        if experiment is None:
            entries = svc.audit(None, limit)
        else:
            view = svc.get(experiment)  # NotFoundError: exit 1
            stoppers = {"global:*", "global", f"layer:{view.layer}"}
            stoppers |= {f"model:{m}" for m in view.models}
            entries = [
                e
                for e in svc.audit(None)
                if e.experiment_id == experiment
                or (e.experiment_id is None and e.action in _SWITCHES and e.target in stoppers)
            ]
            entries = entries[-limit:] if limit else entries
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
    """Add the experiment core's commands to the ``vigil`` app (``experiments``: experiments.py)."""
    from agent.cli.experiments import experiments_app

    app.add_typer(experiments_app, name="experiments")
    app.command("kill")(kill)
    app.command("release")(release)
    app.add_typer(rollout_app, name="rollout")
    app.add_typer(models_app, name="models")
    app.command("audit")(audit)
