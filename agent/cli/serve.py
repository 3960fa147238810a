"""``vigil serve`` (HTTP server, Slack bot, monitor loop) and ``vigil monitor``.

Both commands compose the same parts: the agent's ``Investigator`` (with the Slack notifier when a
bot token is set), the experiment core's ``ExperimentService``, the alert ledger and the monitors
over the telemetry reader.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lifecycle.settings import Settings, get_settings

__all__ = ["monitor", "register", "serve"]

_console = Console()
_log = logging.getLogger(__name__)


def _settings(telemetry: str | None, state: str | None) -> Settings:
    updates: dict[str, Any] = {}
    if telemetry:
        updates["telemetry_url"] = telemetry
    if state:
        updates["state_url"] = state
    return get_settings().model_copy(update=updates)


def _monitors(settings: Settings, experiments: Any, ledger: Any) -> Any:
    from lifecycle.monitors import Monitors
    from tools.schema import TelemetrySchema
    from tools.telemetry import TelemetryReader

    schema = TelemetrySchema.from_mappings(settings.telemetry_tables, settings.telemetry_columns)
    reader = TelemetryReader(settings.telemetry_url, schema)
    return Monitors(experiments, reader, ledger, lookback_minutes=settings.monitor_lookback_minutes)


def serve(
    telemetry: str | None = typer.Option(None, "--telemetry", help="Telemetry SQLAlchemy URL."),
    state: str | None = typer.Option(None, "--state", help="State store SQLAlchemy URL."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port."),
    monitor: bool = typer.Option(
        True, "--monitor/--no-monitor", help="Run the monitors every VIGIL_MONITOR_INTERVAL_S."
    ),
) -> None:
    """Serve the HTTP API, the Alertmanager webhook and the Slack bot (and run the monitors)."""
    import uvicorn

    from agent.server import build_investigator, create_app, slack_notifier
    from agent.server.metrics import ServerMetrics
    from lifecycle.alerts import AlertLedger
    from lifecycle.service import ExperimentService

    settings = _settings(telemetry, state)
    notifier = slack_notifier(settings)
    metrics = ServerMetrics()
    investigator = build_investigator(settings, notifier, metrics)
    experiments = ExperimentService.from_settings(settings)
    ledger = AlertLedger(settings.state_url)
    monitors = _monitors(settings, experiments, ledger) if monitor else None
    app = create_app(
        settings,
        investigator=investigator,
        experiments=experiments,
        notifier=notifier,
        ledger=ledger,
        monitor=monitors.evaluate if monitors is not None else None,
        metrics=metrics,
    )
    slack = "on" if notifier is not None and settings.slack_signing_secret else "off"
    watching = f"every {settings.monitor_interval_s:g} s" if monitors is not None else "off"
    _console.print(
        f"Vigil on http://{host}:{port} — slack {slack}, {settings.workers} workers, "
        f"queue {settings.queue_size}, monitors {watching}"
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def monitor(
    telemetry: str | None = typer.Option(None, "--telemetry", help="Telemetry SQLAlchemy URL."),
    state: str | None = typer.Option(None, "--state", help="State store SQLAlchemy URL."),
    once: bool = typer.Option(False, "--once", help="Evaluate once and exit."),
    at: datetime | None = typer.Option(
        None, "--at", help="With --once: evaluate as of this UTC time (replayed telemetry)."
    ),
    investigate: bool = typer.Option(
        True, "--investigate/--no-investigate", help="Investigate each alert fired."
    ),
) -> None:
    """Evaluate every running experiment's guardrail monitors; investigate what fires."""
    from agent.server import build_investigator, slack_notifier
    from agent.server.monitoring import to_alert
    from lifecycle.alerts import AlertLedger
    from lifecycle.service import ExperimentService

    if at is not None and not once:
        raise typer.BadParameter("--at needs --once", param_hint="--at")
    settings = _settings(telemetry, state)
    experiments = ExperimentService.from_settings(settings)
    ledger = AlertLedger(settings.state_url)
    monitors = _monitors(settings, experiments, ledger)
    investigator = build_investigator(settings, slack_notifier(settings)) if investigate else None
    while True:
        now = at.replace(tzinfo=at.tzinfo or UTC) if at is not None else datetime.now(UTC)
        specs = monitors.evaluate(now)
        table = Table("experiment", "guardrail", "alert", "investigation", "status", "cause")
        for spec in specs:
            row = [spec.experiment_id, spec.guardrail, spec.summary, "-", "-", "-"]
            if investigator is not None:
                view = investigator.investigate(to_alert(spec))
                ledger.attach(spec.ledger_id, view.id)
                cause = view.root_causes[0].cause if view.root_causes else "-"
                row[3:] = [view.id, view.status, cause]
            table.add_row(*row)
        watched = len(monitors.onboard())
        _console.print(
            f"{watched} monitors at {now:%Y-%m-%d %H:%M} UTC: {len(specs)} alert(s) fired"
        )
        if specs:
            _console.print(table)
        if once:
            return
        time.sleep(max(1.0, settings.monitor_interval_s))


def register(app: typer.Typer) -> None:
    """Attach ``serve`` and ``monitor`` to the root CLI."""
    app.command("serve")(serve)
    app.command("monitor")(monitor)
