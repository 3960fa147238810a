"""``vigil config show|docs`` and ``vigil assign``: what an operator checks first.

``config show`` prints the effective settings with where each came from (environment, ``.env``,
default) and every secret redacted; ``config docs`` prints ``docs/settings.md`` from the settings
model itself, so the page cannot drift from the code. ``assign`` answers "which arm is this unit
in, and why" through the real allocator. ``followups run`` runs the follow-ups of watching
investigations that are due (with ``--world``, on a scenario world simulated forward to them).
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from agent.cli._console import err as _err
from agent.cli._console import handle_errors as _handle_errors
from agent.cli._console import out as _out
from agent.settings import Settings, get_settings

__all__ = ["hide_password", "redacted", "register", "settings_markdown"]

config_app = typer.Typer(help="The effective settings (secrets redacted) and their reference.")

_SECRETS = frozenset({"llm_api_key", "slack_bot_token", "slack_signing_secret", "console_secret"})
_URLS = frozenset({"state_url", "telemetry_url", "checkpoint_url", "llm_base_url"})
_HIDDEN = "***"


def _source(env_name: str) -> str:
    if env_name in os.environ:
        return "environment"
    dotenv = Path(".env")
    if dotenv.is_file():
        for line in dotenv.read_text(encoding="utf-8").splitlines():
            if line.strip().removeprefix("export ").split("=", 1)[0].strip() == env_name:
                return ".env"
    return "default"


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (as given when it is not a URL)."""
    from tools.redaction import redact_url

    return redact_url(url)


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, secrets replaced by ``***`` (API tokens keep their users)."""
    out: dict[str, Any] = {}
    for name, value in settings.model_dump(mode="json").items():
        if name in _SECRETS and value:
            value = _HIDDEN
        elif name == "api_tokens":
            value = {f"{_HIDDEN}{i + 1}": user for i, user in enumerate(value.values())}
        elif name in _URLS and isinstance(value, str):
            value = hide_password(value)
        out[name] = value
    return out


@config_app.command("show")
@_handle_errors
def show(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The effective settings, where each came from, secrets redacted."""
    settings = get_settings()
    values = redacted(settings)
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    table = Table("variable", "value", "from")
    for name, value in values.items():
        env = f"VIGIL_{name.upper()}"
        text = value if isinstance(value, str) else json.dumps(value)
        table.add_row(env, "" if value is None else text, _source(env))
    _out().print(table)


def settings_markdown() -> str:
    """``docs/settings.md``: every setting with its variable, default and meaning."""
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable `VIGIL_<NAME>` or a `VIGIL_<NAME>=value` line in",
        "a `.env` file in the working directory. Mappings and lists are JSON",
        "(`VIGIL_ONCALL='[\"bob\"]'`). `vigil config show` prints the effective values (secrets",
        "redacted) and where each came from; a `VIGIL_*` variable that names no setting is warned",
        "about with the nearest valid name. Every URL defaults to an embedded store under",
        "`./.vigil/` (relative to the working directory). `VIGIL_HOME` moves every default path:",
        "state, telemetry, checkpoints, reports, scenario worlds, the demo and the bench; a URL",
        "set explicitly stays where it is.",
        "",
        "This page is printed by `vigil config docs` from the settings model itself.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else f"`{json.dumps(default, default=str)}`"
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `VIGIL_{name.upper()}` | {shown} | {meaning} |")
    lines += [
        "",
        "Besides these, `VIGIL_ACTOR` names who acts on the command line (default: `$USER`).",
        "Telemetry tables and columns: `docs/telemetry.md`.",
        "",
    ]
    return "\n".join(lines)


@config_app.command("docs")
def docs() -> None:
    """Print the settings reference (docs/settings.md) from the settings model."""
    typer.echo(settings_markdown(), nl=False)


@_handle_errors
def assign(
    unit: str = typer.Argument(..., help="The unit id (user, device ...)."),
    experiment: str = typer.Argument(..., help="The experiment id."),
    prop: list[str] = typer.Option(
        [], "--prop", "-p", help="A request property for targeting, NAME=VALUE (repeatable)."
    ),
) -> None:
    """Which arm UNIT gets in EXPERIMENT, and is_enabled, through the real allocator."""
    from lifecycle import ExperimentService
    from tools.errors import ConfigError

    request: dict[str, Any] = {"unit_id": int(unit) if unit.isdigit() else unit}
    for item in prop:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--prop", item, "write NAME=VALUE, e.g. --prop country=US")
        request[key] = value
    with ExperimentService.from_settings(get_settings()) as svc:
        view = svc.get(experiment)
        allocator = svc.allocator()
        arm = allocator.assign(request, experiment)
        enabled = allocator.is_enabled(request, experiment)
    if arm is not None:
        why = "control" if arm == view.control else "a treatment arm"
        _out().print(f"unit {unit} in {experiment}: arm {arm} ({why})", highlight=False)
    else:
        if view.blocked_by:
            kills = ", ".join(f"{scope}:{target}" for scope, target in view.blocked_by)
            why = f"stopped by kill switch {kills}"
        elif view.status not in ("ramping", "running"):
            why = f"the experiment is {view.status}"
        else:
            why = "outside its traffic or targeting"
        _out().print(f"unit {unit} in {experiment}: not in it ({why})", highlight=False)
    _out().print(f"is_enabled → {enabled}", highlight=False)


followups_app = typer.Typer(
    help="Follow-ups: watching investigations re-run on fresh data (as `vigil serve` does)."
)


def _next_due(store: Any) -> datetime | None:
    dues = [v.next_followup_at for v in store.investigations_in(["watching"])]
    return min((d for d in dues if d is not None), default=None)


@followups_app.command("run")
@_handle_errors
def run_followups(
    at: datetime | None = typer.Option(
        None,
        "--at",
        help="The telemetry clock's now (UTC); default: the wall clock, or with --world the "
        "next follow-up's due time.",
    ),
    world: str | None = typer.Option(
        None,
        "--world",
        help="A scenario world (`vigil investigate --scenario`): it is simulated forward to the "
        "follow-up's time first.",
    ),
) -> None:
    """Run the follow-ups due now, once each (claimed in the state store), and say what changed.

    With --world NAME the world is simulated forward to --at (default: the next due follow-up)
    and the follow-ups run on its clock.
    """
    from agent.service import Investigator
    from agent.store import AgentStore
    from tools.vocabulary import as_utc, utc_now

    settings = get_settings()
    port = None
    if world is not None:
        from agent.cli.worlds import worlds

        port = worlds("--world", world)
        settings = port.settings(world, settings)
    now = as_utc(at) if at is not None else None
    if port is not None:
        store = AgentStore(settings.state_url)
        try:
            world_now = as_utc(port.clock(settings)())
            now = now or _next_due(store) or world_now
        finally:
            store.engine.dispose()
        ahead = math.ceil((now - world_now).total_seconds() / 60.0)
        if ahead > 0:  # the world's telemetry reaches the follow-up's time
            port.go_on(settings, ahead)
            _err().print(f"simulated {world} forward to {now:%Y-%m-%d %H:%M} UTC", highlight=False)
    at_now = now or utc_now()
    inv = Investigator(settings, clock=lambda: at_now)
    try:
        done = inv.follow_up(at_now)
        watching = inv.store.investigations_in(["watching"])
    finally:
        inv.close()
    table = Table("investigation", "follow-up", "data up to", "status", "what changed")
    for ident, entry in done:
        table.add_row(
            ident, str(entry.n), f"{entry.ran_at:%Y-%m-%d %H:%M}", str(entry.status), entry.summary
        )
    _out().print(f"{len(done)} follow-up(s) ran", highlight=False)
    if done:
        _out().print(table)
    for v in watching:
        due = f"{v.next_followup_at:%Y-%m-%d %H:%M} UTC" if v.next_followup_at else "-"
        _out().print(f"{v.id} watching: next follow-up {due}", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach ``config``, ``assign``, ``followups`` (and ``doctor``)."""
    from agent.cli.doctor import doctor

    app.command("doctor")(doctor)
    app.add_typer(config_app, name="config")
    app.add_typer(followups_app, name="followups")
    app.command("assign")(assign)
