"""``vigil investigate|approve|verify|reject|investigations|report``: the agent on the CLI.

``vigil investigate --scenario FILE`` builds the scenario's simulated world in stores of its own
(``<VIGIL_HOME>/worlds/<name>/``, offered by the ``evals`` plug-in through :mod:`agent.cli.worlds`),
fires its alert, investigates and prints the report; it stops at the approval. ``--world NAME``
on the other commands reads and acts on that world. ``vigil investigate --alert ALERT.json
[--telemetry URL]`` investigates real data from an Alertmanager v4 payload or Vigil's own Alert
JSON. Approvals go through the same policy as Slack and HTTP. Errors print one line per problem
naming the field; exit code 2 for bad input, 1 for a refusal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from rich.markdown import Markdown
from rich.table import Table

from agent.cli._console import err as _err
from agent.cli._console import handle_errors as _handle_errors
from agent.cli._console import out as _out
from agent.models import Alert, InvestigationView, MitigationView
from agent.settings import Settings, get_settings
from tools.errors import ConfigError, ConfigProblems

__all__ = ["alert_from_file", "print_view", "register", "summary_json"]


def _field(err: ErrorDetails, prefix: str = "") -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{prefix}{loc}" if loc else prefix.rstrip(".") or "alert"


def alert_from_file(path: Path, settings: Settings) -> Alert:
    """Read an alert: an Alertmanager v4 payload (first firing alert) or Vigil's Alert JSON.

    Raises:
        ConfigError: Unreadable file, not JSON, or a field missing / invalid (named).
    """
    from agent.server.alertmanager import AlertmanagerPayload, map_payload

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--alert", str(path), f"cannot read the file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError("--alert", str(path), f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("alert", type(data).__name__, "an alert file holds a JSON object")
    if "alerts" in data or "version" in data:
        try:
            payload = AlertmanagerPayload.model_validate(data)
        except ValidationError as exc:
            raise _problems(exc) from exc
        firing = [m for m in map_payload(payload, settings.alert_labels) if m.status == "firing"]
        if not firing:
            raise ConfigError("alerts", len(payload.alerts), "no firing alert in the payload")
        return firing[0].alert.model_copy(update={"source": "cli"})
    try:
        return Alert.model_validate(data)
    except ValidationError as exc:
        raise _problems(exc) from exc


def _problems(exc: ValidationError) -> ConfigError:
    """Every problem of an alert file, each naming its field."""
    found = [ConfigError(_field(e), e.get("input"), e["msg"]) for e in exc.errors()]
    return found[0] if len(found) == 1 else ConfigProblems(found)


def summary_json(view: InvestigationView) -> dict[str, Any]:
    """The ``--json`` document of an investigation (causes ranked best first; ``id`` as the API)."""
    return {
        "id": view.id,
        "status": view.status,
        "onset": view.onset.isoformat() if view.onset else None,
        "root_causes": [
            {
                "cause": c.cause,
                "experiment": c.experiment,
                "confidence": c.confidence,
                "evidence": list(c.evidence),
            }
            for c in view.root_causes
        ],
        "mitigations": [
            {"id": m.id, "action": m.action, "target": m.target, "status": m.status}
            for m in view.mitigations
        ],
        "report_path": view.report_path,
        "next_followup_at": view.next_followup_at.isoformat() if view.next_followup_at else None,
        "followups": len([f for f in view.followups if f.n > 0]),
        "joined_alerts": len(view.joined_alerts),
    }


def _investigator(settings: Settings, **kwargs: Any) -> Any:
    from agent.service import Investigator

    return Investigator(settings, **kwargs)


_WORLD = typer.Option(
    None,
    "--world",
    help="A scenario world built by `vigil investigate --scenario` (its name); default: the "
    "stores of the settings.",
)


def _settings(world: str | None) -> Settings:
    """The settings of ``--world NAME`` (its own stores), or the environment's."""
    base = get_settings()
    if world is None:
        return base
    from agent.cli.worlds import worlds

    return worlds("--world", world).settings(world, base)


def print_view(view: InvestigationView, *, quiet: bool = False, world: str | None = None) -> None:
    """Print an investigation's report and where it stands (its ids, what to run next).

    On a terminal the report is rendered. Redirected, standard output is the report's Markdown
    alone and the status lines go to standard error; with ``quiet`` only the status lines are
    printed, on standard output.
    """
    console = _out()
    meta = console if quiet or console.is_terminal else _err()
    if view.report_markdown and not quiet:
        if console.is_terminal:
            console.print(Markdown(view.report_markdown))
        else:  # redirected: the Markdown itself, as the report claims to be
            typer.echo(view.report_markdown.rstrip("\n") + "\n")
    if view.error:
        _err().print(f"[red]failed:[/red] {view.error}", highlight=False)
    meta.print(f"[bold]{view.id}[/bold]: {view.status}", highlight=False)
    on = f" --world {world}" if world else ""
    for m in view.mitigations:
        what = f"{m.action} {m.target or ''}".strip()
        meta.print(f"  mitigation {m.id}: {what} ({m.status})", highlight=False)
        if m.status == "proposed" and not quiet:
            meta.print(
                f"  approve with: [cyan]vigil approve {m.id} --as USER{on}[/cyan]  "
                f"(or reject: vigil reject {m.id} --as USER{on})",
                highlight=False,
            )
    if view.report_path and not quiet:
        meta.print(f"  report: {view.report_path}", highlight=False)


@_handle_errors
def investigate(
    scenario: Path | None = typer.Option(
        None, "--scenario", help="Scenario YAML (docs/scenarios.md): investigate its world."
    ),
    alert: Path | None = typer.Option(
        None, "--alert", help="Alertmanager v4 payload or Vigil Alert JSON (examples/alert.json)."
    ),
    telemetry: str | None = typer.Option(
        None, "--telemetry", help="Telemetry SQLAlchemy URL (default: VIGIL_TELEMETRY_URL)."
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="With --scenario: rebuild the scenario's world from scratch."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Write a JSON summary here."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print only the ids and statuses, not the report."
    ),
) -> None:
    """Investigate an alert (from a scenario or a file) up to the approval of its mitigation.

    A scenario's world keeps its own stores under VIGIL_HOME/worlds/NAME/; act on it afterwards
    with --world NAME (approve, reject, investigations, report).

    Exit code: 0 when a cause was established (or none found with enough data to see one), 1 when
    the investigation failed (unreadable telemetry, unknown experiment), 3 when it is
    inconclusive or watching (too little data to tell yet, not an all-clear; a watching one is
    re-run on fresh data: `vigil followups run`).
    """
    if (scenario is None) == (alert is None):
        raise ConfigError("--scenario/--alert", None, "give exactly one of them")
    settings = get_settings()
    world: str | None = None
    if scenario is not None:
        if telemetry:
            raise ConfigError(
                "--telemetry", telemetry, "a scenario's world has its own telemetry store"
            )
        from agent.cli.worlds import worlds

        def say(text: str) -> None:
            _err().print(text, highlight=False)

        port = worlds("--scenario", str(scenario))
        world, view = port.investigate(scenario, settings, fresh=fresh, say=say)
    else:
        assert alert is not None
        if telemetry:
            settings = settings.model_copy(update={"telemetry_url": telemetry})
        parsed = alert_from_file(alert, settings)
        inv = _investigator(settings)
        try:
            view = inv.investigate(parsed)
        finally:
            inv.close()
    print_view(view, quiet=quiet, world=world)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary_json(view), indent=2) + "\n")
    if view.status == "failed":
        raise typer.Exit(1)
    if view.status in ("inconclusive", "watching"):
        raise typer.Exit(3)  # no answer (yet): not an all-clear, and scripts must be able to tell


def _verification(inv: Any, m: MitigationView) -> str:
    """What verification says: recovered or not (with its figures), or why it is pending."""
    detail = inv.store.detail(m.id).get("verification") or {}
    summary = str(detail.get("summary") or "").strip()
    if m.recovered is None:
        reason = m.verification_pending or summary or "no telemetry after the action yet"
        return f"verification pending: {reason.removesuffix('; verification pending.')}"
    verdict = "recovered" if m.recovered else "NOT recovered"
    return f"verification: {verdict}" + (f" — {summary}" if summary else "")


def _print_decided(inv: Any, m: MitigationView) -> None:
    what = f"{m.action} {m.target or ''}".strip()
    executed = m.status in ("executed", "verified")
    status = "executed" if executed else m.status
    by = f", approved by {m.approved_by}" if m.approved_by else ""
    _out().print(f"[bold]{m.id}[/bold]: {what} {status}{by}", highlight=False)
    if executed:
        _out().print(_verification(inv, m), highlight=False)


@_handle_errors
def approve(
    mitigation_id: str = typer.Argument(..., help="The mitigation's id."),
    user: str = typer.Option(..., "--as", help="Who approves (the owner or on-call)."),
    world: str | None = _WORLD,
    after: int = typer.Option(
        30,
        "--after",
        min=0,
        help="With --world: simulate this many minutes after the action, then verify.",
    ),
) -> None:
    """Approve a proposed mitigation: it executes once, through the experiment core.

    Exit code 0 when the action executed, whether or not its verification could run yet. With
    --world NAME the action takes effect at the world's "now"; the world then goes on for --after
    minutes as the action left it (kill switches, rolled-back models), and verification judges
    whether the metric recovered.
    """
    settings = _settings(world)
    port = None
    if world is not None:
        from agent.cli.worlds import worlds

        port = worlds("--world", world)
    inv = _investigator(settings, clock=port.clock(settings) if port is not None else None)
    try:
        before = inv.store.get_mitigation(mitigation_id)
        view = inv.approve(mitigation_id, user)
        if before.status != "proposed":  # decided before: approve changed nothing
            _err().print(
                f"already {before.status} (approved by {before.approved_by or 'nobody'}); "
                "nothing was done again",
                highlight=False,
            )
        elif port is not None and after > 0 and view.status in ("executed", "verified"):
            _err().print(port.go_on(settings, after), highlight=False)
            view = inv.verify(mitigation_id)
        _print_decided(inv, view)
    finally:
        inv.close()
    if view.status == "failed":
        raise typer.Exit(1)


@_handle_errors
def verify(
    mitigation_id: str = typer.Argument(..., help="The mitigation's id."),
    world: str | None = _WORLD,
) -> None:
    """Judge again whether the metric recovered after an executed mitigation."""
    settings = _settings(world)
    inv = _investigator(settings)
    try:
        _print_decided(inv, inv.verify(mitigation_id))
    finally:
        inv.close()


@_handle_errors
def reject(
    mitigation_id: str = typer.Argument(..., help="The mitigation's id."),
    user: str = typer.Option(..., "--as", help="Who rejects."),
    world: str | None = _WORLD,
) -> None:
    """Reject a proposed mitigation."""
    inv = _investigator(_settings(world))
    try:
        m = inv.reject(mitigation_id, user)
        who = inv.store.detail(m.id).get("rejected_by") or user
    finally:
        inv.close()
    what = f"{m.action} {m.target or ''}".strip()
    _out().print(f"[bold]{m.id}[/bold]: {what} rejected by {who}", highlight=False)


@_handle_errors
def investigations(
    limit: int = typer.Option(20, "--limit", min=1, help="How many, newest first."),
    world: str | None = _WORLD,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List recent investigations."""
    inv = _investigator(_settings(world))
    try:
        views = inv.list(limit)
    finally:
        inv.close()
    if as_json:
        typer.echo(json.dumps([summary_json(v) for v in views], indent=2))
        return
    table = Table("id", "status", "alert", "onset", "top cause", "mitigation")
    for v in views:
        top = v.root_causes[0] if v.root_causes else None
        cause = f"{top.cause} {top.experiment or top.model or ''}".strip() if top else "-"
        mit = ", ".join(f"{m.id} {m.action}:{m.status}" for m in v.mitigations) or "-"
        where = f"{v.alert.metric} {v.alert.experiment or '(global)'}"
        onset = v.onset.strftime("%Y-%m-%d %H:%M") if v.onset else "-"
        status = v.status
        if v.next_followup_at is not None:  # watching: when it is re-run on fresh data
            status += f" (next {v.next_followup_at:%H:%M})"
        table.add_row(v.id, status, where, onset, cause, mit)
    _out().print(table)


@_handle_errors
def report(
    investigation_id: str = typer.Argument(..., help="The investigation's id."),
    world: str | None = _WORLD,
    html: bool = typer.Option(False, "--html", help="Write the HTML report to stdout."),
) -> None:
    """Print an investigation's report: Markdown (rendered on a terminal), or HTML with --html."""
    inv = _investigator(_settings(world))
    try:
        if html:
            typer.echo(inv.report_html(investigation_id))
        else:
            print_view(inv.get(investigation_id), world=world)
    finally:
        inv.close()


def register(app: typer.Typer) -> None:
    """Attach the agent's commands to the root CLI."""
    app.command("investigate")(investigate)
    app.command("approve")(approve)
    app.command("verify")(verify)
    app.command("reject")(reject)
    app.command("investigations")(investigations)
    app.command("report")(report)
