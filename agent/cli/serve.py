"""``vigil serve`` (HTTP server, Slack bot, monitor loop) and ``vigil monitor``.

Both commands compose the same parts: the agent's ``Investigator`` (with the Slack notifier when a
bot token is set), the experiment core's ``ExperimentService``, the alert ledger and the monitors
over the telemetry reader.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from agent.cli._console import handle_errors as _handle_errors
from agent.cli._console import out as _out
from agent.settings import Settings, get_settings
from tools.vocabulary import as_utc, utc_now

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
    from tools.telemetry import TelemetryReader

    schema = settings.telemetry_schema()
    from tools.unit_stats import UnitStatsReader

    reader = TelemetryReader(settings.telemetry_url, schema)
    return Monitors(
        experiments,
        reader,
        ledger,
        lookback_minutes=settings.monitor_lookback_minutes,
        units=UnitStatsReader(settings.telemetry_url, schema),  # unit-clustered variance
    )


@_handle_errors
def serve(
    telemetry: str | None = typer.Option(None, "--telemetry", help="Telemetry SQLAlchemy URL."),
    state: str | None = typer.Option(None, "--state", help="State store SQLAlchemy URL."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port."),
    monitor: bool = typer.Option(
        True, "--monitor/--no-monitor", help="Run the monitors every VIGIL_MONITOR_INTERVAL_S."
    ),
    world: str | None = typer.Option(
        None, "--world", help="Serve a scenario world: its stores, monitors on its clock."
    ),
) -> None:
    """Serve the HTTP API, the Alertmanager webhook and the Slack bot (and run the monitors).

    Monitors look at the telemetry up to the wall clock; a simulated world's telemetry ends at
    the world's own "now", so serve it with --world NAME for its monitors to see it.
    """
    import uvicorn

    from agent.server import build_investigator, create_app, slack_notifier
    from agent.server.metrics import ServerMetrics
    from lifecycle.alerts import AlertLedger
    from lifecycle.service import ExperimentService

    settings = _settings(telemetry, state)
    clock = None
    if world is not None:
        from agent.cli.worlds import worlds

        worlds_port = worlds("--world", world)
        settings = worlds_port.settings(world, settings)
        clock = worlds_port.clock(settings)
    notifier = slack_notifier(settings)
    metrics = ServerMetrics()
    if clock is None:
        investigator = build_investigator(settings, notifier, metrics)
    else:
        from agent.service import Investigator

        investigator = Investigator(settings, notifier=notifier, observer=metrics, clock=clock)
    experiments = ExperimentService.from_settings(settings)
    ledger = AlertLedger(settings.state_url)
    monitors = _monitors(settings, experiments, ledger) if monitor else None
    round_fn = None
    if monitors is not None:
        watched = monitors

        def round_fn() -> list[Any]:
            fired: list[Any] = watched.evaluate(clock() if clock is not None else None)
            return fired

    from agent.server.monitoring import rollout_round
    from lifecycle.controller import RolloutController

    rollout = rollout_round(RolloutController.from_settings(settings), clock)
    app = create_app(
        settings,
        investigator=investigator,
        experiments=experiments,
        notifier=notifier,
        ledger=ledger,
        monitor=round_fn,
        rollout=rollout if settings.rollout_interval_s > 0 else None,
        metrics=metrics,
    )
    slack = "on" if notifier is not None and settings.slack_signing_secret else "off"
    watching = f"every {settings.monitor_interval_s:g} s" if monitors is not None else "off"
    _console.print(
        f"Vigil on http://{host}:{port} — slack {slack}, {settings.workers} workers, "
        f"queue {settings.queue_size}, monitors {watching}"
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def _threshold(result: Any) -> str:
    guardrail = result.monitor.guardrail
    if guardrail.metric == "srm":
        return "chi-square p ≥ 0.001"
    return f"regression ≤ {guardrail.max_regression:.1%}"


def _print_results(results: list[Any]) -> None:
    """Each monitor's value against its threshold, and its verdict."""
    table = Table(
        "experiment", "guardrail", "threshold", "value (since the window's start)", "verdict"
    )
    colour = {"breach": "red", "safe": "green"}
    for r in results:
        c = colour.get(r.verdict, "yellow")
        table.add_row(
            r.monitor.experiment_id,
            r.monitor.guardrail.metric,
            _threshold(r),
            r.summary,
            f"[{c}]{r.verdict}[/{c}]",
        )
    _out().print(table)


@_handle_errors
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
    world: str | None = typer.Option(
        None, "--world", help="A scenario world: its stores, evaluated at its own clock."
    ),
) -> None:
    """Evaluate every running experiment's guardrail monitors; investigate what fires.

    A simulated world's telemetry is not "now": --world NAME (or --at) evaluates at its clock.
    """
    from agent.server import build_investigator, slack_notifier
    from agent.server.monitoring import to_alert
    from lifecycle.alerts import AlertLedger
    from lifecycle.service import ExperimentService

    if at is not None and not once:
        raise typer.BadParameter("--at needs --once", param_hint="--at")
    settings = _settings(telemetry, state)
    clock = None
    if world is not None:
        from agent.cli.worlds import worlds

        port = worlds("--world", world)
        settings = port.settings(world, settings)
        clock = port.clock(settings)
    experiments = ExperimentService.from_settings(settings)
    ledger = AlertLedger(settings.state_url)
    monitors = _monitors(settings, experiments, ledger)
    investigator = build_investigator(settings, slack_notifier(settings)) if investigate else None
    while True:
        now = as_utc(at) if at is not None else as_utc(clock()) if clock else utc_now()
        if once:
            _print_results(monitors.check(now))
        specs = monitors.evaluate(now)
        table = Table("experiment", "guardrail", "alert", "investigation", "status", "cause")
        for spec in specs:
            row = [spec.experiment_id, spec.guardrail, spec.summary, "-", "-", "-"]
            if investigator is not None:
                alert = to_alert(spec)
                joined = investigator.join(alert)  # one incident, one investigation
                if joined is not None:
                    view = investigator.get(joined)
                else:
                    view = investigator.investigate(alert)
                ledger.attach(spec.ledger_id, view.id)
                cause = view.root_causes[0].cause if view.root_causes else "-"
                row[3:] = [view.id, view.status, cause]
            table.add_row(*row)
        watched = len(monitors.onboard())
        _out().print(
            f"{watched} monitors at {now:%Y-%m-%d %H:%M} UTC: {len(specs)} alert(s) fired",
            highlight=False,
        )
        if specs:
            _out().print(table)
        if once:
            return
        time.sleep(max(1.0, settings.monitor_interval_s))


def register(app: typer.Typer) -> None:
    """Attach ``serve`` and ``monitor`` to the root CLI."""
    app.command("serve")(serve)
    app.command("monitor")(monitor)
