"""The web console: server-rendered pages on the HTTP server's app, at ``/console/``.

Dashboard, experiments (list and page, with guardrail charts and a kill button that files a
proposal), the builder with its power analysis and templates, the Data page, investigations with
their reports and approve/reject buttons, and the audit log. Sign-in is with an API token of
``VIGIL_API_TOKENS`` into a signed HTTP-only cookie; every form carries a CSRF token; decisions
go through the agent's own approval policy. Assets (one stylesheet, a few lines of script for
the dashboard's refresh and an experiment's charts, which arrive as a fragment kept per complete
minute of telemetry) are served by the app; nothing is built. See ``docs/console.md``.

Usage (the server does this in :func:`agent.server.create_app`)::

    install_console(app, parts)   # parts: agent.server.app.Components
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from agent.console._web import PREFIX, ConsoleRoute, Web
from agent.console.builder import add_builder
from agent.console.routes import add_pages
from agent.console.session import SessionCodec, console_secret
from agent.console.telemetry import ConsoleTelemetry
from agent.console.views import Console, ConsoleExperiments
from agent.models import MitigationView
from agent.ports import Investigations
from agent.settings import Settings
from lifecycle.alerts import AlertLedger

__all__ = ["PREFIX", "Console", "ConsoleExperiments", "build_console", "install_console"]

_STATIC = Path(__file__).parent / "static"


def build_console(
    settings: Settings,
    investigator: Investigations,
    experiments: ConsoleExperiments,
    ledger: AlertLedger,
    notifier: Any = None,
) -> Console:
    """The console's parts over the server's.

    Args:
        settings: Vigil's settings.
        investigator: The agent.
        experiments: The experiment core.
        ledger: The alert ledger.
        notifier: The Slack notifier (a kill proposal is posted to its channel), or None.
    """
    from agent.service import Investigator

    def mitigations() -> list[MitigationView]:
        if isinstance(investigator, Investigator):
            return investigator.store.list_mitigations()
        return [m for v in investigator.list(settings.max_page_size) for m in v.mitigations]

    def tell(view: MitigationView) -> None:
        if notifier is not None and notifier.channel:
            notifier.post_proposal(view, notifier.channel)

    return Console(
        settings,
        investigator,
        experiments,
        ledger,
        ConsoleTelemetry(settings),
        mitigations,
        tell,
    )


def install_console(app: FastAPI, parts: Any) -> Console | None:
    """Mount the console on ``app`` (``/console/`` and a redirect from ``/``).

    Args:
        app: The HTTP server's app.
        parts: Its :class:`agent.server.app.Components`.

    Returns:
        The console, or None when the experiment core given to the app lacks what the console
        needs (a fake in a test of the API alone).
    """
    experiments = parts.experiments
    if not isinstance(experiments, ConsoleExperiments):
        return None
    settings: Settings = parts.settings
    console = build_console(settings, parts.investigator, experiments, parts.ledger, parts.notifier)
    web = Web(settings, SessionCodec(console_secret(settings), settings.console_session_s))
    web.compile_all()  # once per process: no first page pays for it
    route_class = type("BoundConsoleRoute", (ConsoleRoute,), {"web": web})
    router = APIRouter(prefix=PREFIX, route_class=route_class, include_in_schema=False)
    add_pages(router, console, web)
    add_builder(router, console, web)
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=_STATIC), name="console-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    app.state.console = console
    _warm_on_start(app, console)
    return console


def _warm_on_start(app: FastAPI, console: Console) -> None:
    """Read the experiments in the background when the app starts serving.

    The first page would otherwise pay for reading every experiment (about a second with 1,000
    of them on a small machine); until that read is done the dashboard says so and fills itself
    in (:meth:`agent.console.cache.StateCache.ready`); later pages read only what changed.
    """
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[Any]:
        async with inner(running) as state:
            console.state.read_in_background()
            yield state

    app.router.lifespan_context = lifespan
