"""``vigil investigate|approve|reject|investigations|report``: the agent on the command line.

``vigil investigate --scenario FILE`` simulates a scenario (once per content) into the telemetry
store, creates its experiments, fires its alert, investigates and prints the report; it stops at
the approval. ``vigil investigate --alert ALERT.json [--telemetry URL]`` investigates real data
from an Alertmanager v4 payload or Vigil's own Alert JSON. Approvals go through the same policy
as Slack and HTTP. Errors print one line naming the field; exit code 2 for bad input, 1 for a
refusal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
from lifecycle.settings import Settings, get_settings
from tools.errors import ConfigError

__all__ = ["alert_from_file", "register", "summary_json"]


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
            err = exc.errors()[0]
            raise ConfigError(_field(err), err.get("input"), err["msg"]) from exc
        firing = [m for m in map_payload(payload, settings.alert_labels) if m.status == "firing"]
        if not firing:
            raise ConfigError("alerts", len(payload.alerts), "no firing alert in the payload")
        return firing[0].alert.model_copy(update={"source": "cli"})
    try:
        return Alert.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(_field(err), err.get("input"), err["msg"]) from exc


def summary_json(view: InvestigationView) -> dict[str, Any]:
    """The ``--json`` document of an investigation (causes ranked best first)."""
    return {
        "investigation_id": view.id,
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
    }


def _investigator(settings: Settings, **kwargs: Any) -> Any:
    from agent.service import Investigator

    return Investigator(settings, **kwargs)


def print_view(view: InvestigationView) -> None:
    """Print an investigation's report and where it stands."""
    if view.report_markdown:
        _out().print(Markdown(view.report_markdown))
    if view.error:
        _err().print(f"[red]failed:[/red] {view.error}", highlight=False)
    _out().print(f"[bold]{view.id}[/bold]: {view.status}", highlight=False)
    for m in view.mitigations:
        if m.status == "proposed":
            _out().print(
                f"  approve with: [cyan]vigil approve {m.id} --as USER[/cyan]  "
                f"(or reject: vigil reject {m.id} --as USER)",
                highlight=False,
            )
    if view.report_path:
        _out().print(f"  report: {view.report_path}", highlight=False)


def _scenario_view(path: Path, settings: Settings) -> InvestigationView:
    from evals.harness import investigate, prepare
    from evals.sim import load_scenario

    def simulated(used: Settings) -> None:
        _err().print(f"simulated {scenario.name} into {used.telemetry_url}", highlight=False)

    scenario = load_scenario(path)
    return investigate(scenario, prepare(scenario, settings, on_simulated=simulated))


@_handle_errors
def investigate(
    scenario: Path | None = typer.Option(None, "--scenario", help="Scenario YAML (DESIGN §7)."),
    alert: Path | None = typer.Option(
        None, "--alert", help="Alertmanager v4 payload or Vigil Alert JSON."
    ),
    telemetry: str | None = typer.Option(
        None, "--telemetry", help="Telemetry SQLAlchemy URL (default: VIGIL_TELEMETRY_URL)."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Write a JSON summary here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the report."),
) -> None:
    """Investigate an alert (from a scenario or a file) up to the approval of its mitigation."""
    if (scenario is None) == (alert is None):
        raise ConfigError("--scenario/--alert", None, "give exactly one of them")
    settings = get_settings()
    if telemetry:
        settings = settings.model_copy(update={"telemetry_url": telemetry})
    if scenario is not None:
        view = _scenario_view(scenario, settings)
    else:
        assert alert is not None
        parsed = alert_from_file(alert, settings)
        inv = _investigator(settings)
        try:
            view = inv.investigate(parsed)
        finally:
            inv.close()
    if not quiet:
        print_view(view)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary_json(view), indent=2) + "\n")
    if view.status == "failed":
        raise typer.Exit(1)


def _print_mitigation(m: MitigationView) -> None:
    recovered = {None: "pending", True: "yes", False: "no"}[m.recovered]
    _out().print(
        f"[bold]{m.id}[/bold]: {m.action} {m.target or ''} -> {m.status} "
        f"(by {m.approved_by or '-'}; recovered: {recovered})",
        highlight=False,
    )


def _world_clock(settings: Settings) -> Callable[[], Any] | None:
    """The scenario world's clock when the telemetry store holds one (else None: real time)."""
    from evals.harness import scenario_world

    world = scenario_world(settings)
    return world.clock if world is not None else None


@_handle_errors
def approve(
    mitigation_id: str = typer.Argument(..., help="The mitigation's id."),
    user: str = typer.Option(..., "--as", help="Who approves (the owner or on-call)."),
    after: int = typer.Option(
        30,
        "--after",
        min=0,
        help="On a scenario world: simulate this many minutes after the action, then verify.",
    ),
) -> None:
    """Approve a proposed mitigation: it executes once, through the experiment core.

    On a world made by vigil investigate --scenario, the action takes effect at the world's
    "now"; the world then goes on for --after minutes as the action left it (kill switches,
    rolled-back models) and verification judges whether the metric recovered.
    """
    settings = get_settings()
    clock = _world_clock(settings)
    inv = _investigator(settings, clock=clock)
    try:
        before = inv.store.get_mitigation(mitigation_id)
        view = inv.approve(mitigation_id, user)
        if before.status != "proposed":  # decided before: approve changed nothing
            _err().print(
                f"already {before.status} (approved by {before.approved_by or '-'}); "
                "nothing was done again",
                highlight=False,
            )
        elif clock is not None and after > 0 and view.status in ("executed", "verified"):
            from evals.harness import continue_world

            world = continue_world(settings, after)
            assert world is not None  # the marker was read above
            _err().print(
                f"simulated {after} minutes of {world.scenario.name} after the action",
                highlight=False,
            )
            view = inv.verify(mitigation_id)
        _print_mitigation(view)
    finally:
        inv.close()


@_handle_errors
def reject(
    mitigation_id: str = typer.Argument(..., help="The mitigation's id."),
    user: str = typer.Option(..., "--as", help="Who rejects."),
) -> None:
    """Reject a proposed mitigation."""
    inv = _investigator(get_settings())
    try:
        _print_mitigation(inv.reject(mitigation_id, user))
    finally:
        inv.close()


@_handle_errors
def investigations(
    limit: int = typer.Option(20, "--limit", min=1, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List recent investigations."""
    inv = _investigator(get_settings())
    try:
        views = inv.list(limit)
    finally:
        inv.close()
    if as_json:
        _out().print_json(json.dumps([summary_json(v) for v in views]))
        return
    table = Table("id", "status", "alert", "onset", "top cause", "mitigation")
    for v in views:
        top = v.root_causes[0] if v.root_causes else None
        cause = f"{top.cause} {top.experiment or top.model or ''}".strip() if top else "-"
        mit = ", ".join(f"{m.action}:{m.status}" for m in v.mitigations) or "-"
        where = f"{v.alert.metric} {v.alert.experiment or '(global)'}"
        onset = v.onset.strftime("%Y-%m-%d %H:%M") if v.onset else "-"
        table.add_row(v.id, v.status, where, onset, cause, mit)
    _out().print(table)


@_handle_errors
def report(
    investigation_id: str = typer.Argument(..., help="The investigation's id."),
    html: bool = typer.Option(False, "--html", help="Write the HTML report to stdout."),
) -> None:
    """Print an investigation's report (Markdown, or the self-contained HTML with --html)."""
    inv = _investigator(get_settings())
    try:
        if html:
            typer.echo(inv.report_html(investigation_id))
        else:
            print_view(inv.get(investigation_id))
    finally:
        inv.close()


def register(app: typer.Typer) -> None:
    """Attach the agent's commands to the root CLI."""
    app.command("investigate")(investigate)
    app.command("approve")(approve)
    app.command("reject")(reject)
    app.command("investigations")(investigations)
    app.command("report")(report)
