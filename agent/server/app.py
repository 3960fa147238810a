"""The HTTP server: Alertmanager webhook, investigations, approvals, experiments, Slack, metrics.

:func:`create_app` composes an app from explicit parts (nothing global): the agent's
``Investigator``, the experiment core's ``ExperimentService``, the alert ledger, a bounded worker
pool, a Prometheus registry of its own, and — when Slack is configured — the Bolt app at
``/slack/events``. Endpoints that touch the agent or the store are plain ``def`` functions, so
FastAPI runs their blocking work on its thread pool and the event loop stays free.

At the door: bodies over ``Settings.max_request_bytes`` are refused (413), list pages are bounded
(``max_page_size``), reads need a token when ``auth_reads`` is on, starting investigations is
rate-limited per user, and every error answers one :class:`~agent.server.errors.ErrorBody`
(store contention: 503 with Retry-After, never 500). The lifespan re-queues what a crash left
behind before serving, and sweeps the agent's stranded mitigations periodically
(:mod:`agent.server.recovery`).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.params import Depends as DependsParam
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from slack_sdk import WebClient
from starlette.concurrency import run_in_threadpool

from agent.console import install_console
from agent.models import Alert, InvestigationView, MitigationView
from agent.ports import Experiments, Investigations
from agent.ratelimit import RateLimiter
from agent.server.alertmanager import parse_batch
from agent.server.errors import (
    ErrorItem,
    Unauthorized,
    error_response,
    error_responses,
    install_error_handlers,
    validation_items,
)
from agent.server.intake import AlertIntake
from agent.server.limits import BodyLimit
from agent.server.metrics import ServerMetrics
from agent.server.monitoring import MonitorLoop, MonitorRound
from agent.server.pool import InvestigationPool, PoolFull
from agent.server.recovery import Recovery
from agent.server.schemas import (
    ALERTMANAGER_BODY,
    AlertBatchResult,
    Health,
    InvestigateRequest,
    KillRequest,
    install_openapi,
)
from agent.server.snapshots import snapshot_router
from agent.settings import Settings
from agent.slack.bot import SlackBot
from agent.slack.notifier import SlackNotifier
from lifecycle.alerts import AlertLedger
from tools.vocabulary import utc_now

__all__ = ["Components", "KillRequest", "build_investigator", "create_app", "slack_notifier"]

_log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything an app was composed of (``app.state.vigil``), for tests and the CLI."""

    settings: Settings
    investigator: Investigations
    experiments: Experiments
    ledger: AlertLedger
    pool: InvestigationPool
    intake: AlertIntake
    metrics: ServerMetrics
    notifier: SlackNotifier | None
    bot: SlackBot | None
    monitor: MonitorLoop | None
    recovery: Recovery
    limiter: RateLimiter


def slack_notifier(settings: Settings, client: WebClient | None = None) -> SlackNotifier | None:
    """The Slack notifier the settings call for (None when no bot token is set).

    Args:
        settings: Bot token, channel, API URL and public URL.
        client: A ready client (tests point one at a fake Slack); built from settings if None.
    """
    if not settings.slack_bot_token:
        return None
    client = client or WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    return SlackNotifier(
        client,
        channel=settings.slack_channel,
        public_url=settings.public_url,
        users=settings.slack_users,
    )


def build_investigator(
    settings: Settings,
    notifier: SlackNotifier | None,
    metrics: ServerMetrics | None = None,
) -> Investigations:
    """The agent's ``Investigator`` for ``settings``: the LLM reasoner when an endpoint is set.

    Args:
        settings: Stores, LLM endpoint, approval policy.
        notifier: Slack callbacks (None for none).
        metrics: The server's metrics, told of every check's duration and every LLM call.
    """
    from agent.service import Investigator

    investigator: Investigations = Investigator(settings, notifier=notifier, observer=metrics)
    return investigator


def _default_experiments(settings: Settings) -> Experiments:
    from lifecycle.service import ExperimentService

    experiments: Experiments = ExperimentService.from_settings(settings)
    return experiments


def create_app(
    settings: Settings,
    *,
    investigator: Investigations | None = None,
    experiments: Experiments | None = None,
    notifier: SlackNotifier | None = None,
    ledger: AlertLedger | None = None,
    monitor: MonitorRound | None = None,
    rollout: MonitorRound | None = None,
    metrics: ServerMetrics | None = None,
) -> FastAPI:
    """Compose the HTTP app.

    Args:
        settings: Vigil's settings (tokens, on-call, Slack, workers, queue size...).
        investigator: The agent; built from ``settings`` (with ``notifier`` and ``metrics``) if
            None. One passed in should have been built with the same ``notifier`` so that Slack
            hears of it, and with ``metrics`` as its observer so that ``/metrics`` shows its
            checks and LLM calls.
        experiments: The experiment core; built from ``settings.state_url`` if None.
        notifier: Slack notifier; built from ``settings`` if None and a bot token is set.
        ledger: Alert ledger; opened on ``settings.state_url`` if None.
        rollout: One tick of the rollout controller; when given, a loop runs it every
            ``settings.rollout_interval_s`` seconds while the app is up.
        monitor: One round of Vigil's monitors; when given, a loop runs it every
            ``settings.monitor_interval_s`` seconds while the app is up.
        metrics: The app's metrics (a fresh registry if None); pass one whose hooks the
            investigator was given.

    Returns:
        The FastAPI app; its lifespan starts and stops the workers and the monitor loop.
    """
    notifier = notifier or slack_notifier(settings)
    metrics = metrics or ServerMetrics()
    investigator = investigator or build_investigator(settings, notifier, metrics)
    experiments = experiments if experiments is not None else _default_experiments(settings)
    ledger = ledger or AlertLedger(settings.state_url)

    def _on_done(view: InvestigationView) -> None:
        metrics.investigation_seconds.labels(status=view.status).observe(
            max(0.0, time.time() - view.created_at.timestamp())
        )

    pool = InvestigationPool(
        investigator, workers=settings.workers, queue_size=settings.queue_size, on_done=_on_done
    )
    metrics.bind(lambda n: investigator.list(limit=n), lambda: pool.depth, lambda: pool.running)
    intake = AlertIntake(
        pool,
        ledger,
        metrics,
        status_of=lambda i: investigator.get(i).status,
        join=investigator.join,  # one incident, one investigation
    )
    limiter = RateLimiter(
        settings.user_investigations_per_window,
        settings.user_rate_window_s,
        what="investigations",
    )
    bot = None
    if notifier is not None and settings.slack_signing_secret:
        bot = SlackBot(
            settings,
            investigator=investigator,
            experiments=experiments,
            notifier=notifier,
            submit=pool.submit,
            on_decision=lambda d: metrics.decisions.labels(channel="slack", decision=d).inc(),
            limiter=limiter,
        )
    loop = MonitorLoop(monitor, intake, interval_s=settings.monitor_interval_s) if monitor else None
    ramp = (
        MonitorLoop(rollout, intake, interval_s=settings.rollout_interval_s, name="vigil-rollout")
        if rollout
        else None
    )
    recovery = Recovery(investigator, pool, intake, interval_s=settings.recovery_interval_s)
    parts = Components(
        settings,
        investigator,
        experiments,
        ledger,
        pool,
        intake,
        metrics,
        notifier,
        bot,
        loop,
        recovery,
        limiter,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Before serving: what a crash left behind is queued again (workers not yet running).
        await run_in_threadpool(recovery.startup)
        pool.start()
        recovery.start()
        if loop is not None:
            loop.start()
        if ramp is not None:
            ramp.start()
        try:
            yield
        finally:
            if loop is not None:
                loop.stop()
            if ramp is not None:
                ramp.stop()
            await run_in_threadpool(recovery.stop)
            await run_in_threadpool(pool.close)
            if bot is not None:
                await run_in_threadpool(bot.close)

    app = FastAPI(title="Vigil", version="0.1.0", lifespan=lifespan)
    app.state.vigil = parts
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    _add_routes(app, parts)
    install_console(app, parts)  # the web console at /console/ (issue 19)
    # Configuration distribution: signed snapshots for RemoteAllocator (issue 17).
    snapshot_reads = [Depends(_user_dependency(settings))] if settings.auth_reads else []
    app.include_router(snapshot_router(settings, experiments, dependencies=snapshot_reads))
    install_openapi(app)
    return app


_bearer = HTTPBearer(auto_error=False, description="A token of VIGIL_API_TOKENS.")


def _user_dependency(settings: Settings) -> Callable[..., str]:
    tokens = list(settings.api_tokens.items())

    def current_user(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("an Authorization: Bearer token is required")
        given = credentials.credentials.encode()
        user = None
        for token, name in tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(given, token.encode()):
                user = name
        if user is None:
            raise Unauthorized("the bearer token is not valid")
        return user

    return current_user


def _add_routes(app: FastAPI, parts: Components) -> None:
    inv, metrics, settings = parts.investigator, parts.metrics, parts.settings
    user_dep = _user_dependency(settings)
    authenticated = Depends(user_dep)
    # Reads need a token only when the settings say so (VIGIL_AUTH_READS).
    reads: list[DependsParam] = [Depends(user_dep)] if settings.auth_reads else []
    read_errors = (401,) if settings.auth_reads else ()

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(
            status="ok",
            queue_depth=parts.pool.depth,
            running=parts.pool.running,
            capacity=parts.pool.capacity,
            slack=parts.bot is not None,
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/alerts/alertmanager",
        status_code=202,
        openapi_extra=ALERTMANAGER_BODY,
        responses={
            202: {"model": AlertBatchResult, "description": "Alerts accepted (see rejected)"},
            429: {"model": AlertBatchResult, "description": "Queue full; see Retry-After"},
            **error_responses(413, 422, 503),
        },
    )
    async def alertmanager(request: Request) -> JSONResponse:
        try:
            raw = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(422, [ErrorItem(field="body", message=f"not JSON: {exc}")])
        if not isinstance(raw, dict):
            message = "the body must be a JSON object: an Alertmanager webhook (version 4)"
            return error_response(422, [ErrorItem(field="body", message=message)])
        try:
            batch = parse_batch(raw, settings.alert_labels, skew_s=settings.alert_clock_skew_s)
        except ValidationError as exc:
            return error_response(422, validation_items(exc.errors()))
        if batch.rejected and not batch.alerts:
            return error_response(422, batch.rejected)
        result = await run_in_threadpool(parts.intake.receive, batch.alerts)
        body = AlertBatchResult(
            investigations=result.investigations,
            duplicates=result.duplicates,
            resolved=result.resolved,
            refused=result.refused,
            joined=result.joined,
            rejected=batch.rejected,
        )
        if result.refused:
            body.detail = "investigation queue full; retry later"
            return JSONResponse(body.model_dump(), status_code=429, headers={"Retry-After": "30"})
        return JSONResponse(body.model_dump(), status_code=202)

    @app.get(
        "/investigations", dependencies=reads, responses=error_responses(*read_errors, 422, 503)
    )
    def list_investigations(
        limit: int = Query(50, ge=1, le=settings.max_page_size),  # a bounded page
    ) -> list[InvestigationView]:
        return inv.list(limit=limit)

    @app.post(
        "/investigations",
        status_code=202,
        operation_id="start_investigation",
        responses={
            202: {
                "description": "Started",
                "links": _links("get_investigation", "investigation_id"),
            },
            **error_responses(400, 401, 404, 413, 422, 429, 503),
        },
    )
    def start_investigation(
        body: InvestigateRequest, user: str = authenticated
    ) -> InvestigationView:
        if body.experiment is not None:
            parts.experiments.get(body.experiment)  # 404 for an unknown experiment
        alert = Alert(
            metric=body.metric,
            fired_at=utc_now(),
            experiment=body.experiment,
            since=body.since,
            source="http",
            name="http",
            summary=body.summary,
            labels={"requested_by": user},
        )
        parts.limiter.acquire(user)  # 429 past the user's rate
        try:
            investigation_id = parts.pool.submit(alert)
        except PoolFull:
            parts.limiter.release(user)  # refused work does not count against the user
            raise
        return inv.get(investigation_id)

    @app.get(
        "/investigations/{investigation_id}",
        operation_id="get_investigation",
        dependencies=reads,
        responses=error_responses(*read_errors, 404, 503),
    )
    def get_investigation(investigation_id: str) -> InvestigationView:
        return inv.get(investigation_id)

    @app.get(
        "/investigations/{investigation_id}/report",
        response_class=HTMLResponse,
        dependencies=reads,
        responses=error_responses(*read_errors, 404, 503),
    )
    def report(investigation_id: str) -> HTMLResponse:
        return HTMLResponse(inv.report_html(investigation_id))

    decision_errors = error_responses(401, 403, 404, 409, 503)

    @app.post(
        "/mitigations/{mitigation_id}/approve", operation_id="approve", responses=decision_errors
    )
    def approve(mitigation_id: str, user: str = authenticated) -> MitigationView:
        # The agent tells Slack (Notifier.mitigation_approved / _executed), once, itself.
        view = inv.approve(mitigation_id, user)
        metrics.decisions.labels(channel="http", decision="approve").inc()
        return view

    @app.post(
        "/mitigations/{mitigation_id}/reject", operation_id="reject", responses=decision_errors
    )
    def reject(mitigation_id: str, user: str = authenticated) -> MitigationView:
        # The agent tells Slack (``Notifier.mitigation_rejected``) when this call rejected it.
        view = inv.reject(mitigation_id, user)
        metrics.decisions.labels(channel="http", decision="reject").inc()
        return view

    @app.get(
        "/experiments/{experiment_id}",
        dependencies=reads,
        responses=error_responses(*read_errors, 404, 503),
    )
    def get_experiment(experiment_id: str) -> dict[str, Any]:
        return experiment_json(parts.experiments, experiment_id)

    @app.post(
        "/experiments/{experiment_id}/kill",
        status_code=202,
        operation_id="propose_kill",
        responses={
            202: {
                "description": "Proposed (needs approval)",
                "links": {
                    **_links("approve", "mitigation_id"),
                    **_links("reject", "mitigation_id"),
                },
            },
            **error_responses(400, 401, 403, 404, 409, 413, 422, 503),
        },
    )
    def kill(
        experiment_id: str, user: str = authenticated, body: KillRequest | None = None
    ) -> MitigationView:
        parts.experiments.get(experiment_id)  # 404 for an unknown experiment
        reason = (body.reason if body else "") or f"kill requested over HTTP by {user}"
        view = inv.propose("kill_experiment", experiment_id, user, reason)
        if parts.notifier is not None and parts.notifier.channel:
            parts.notifier.post_proposal(view, parts.notifier.channel)
        return view

    if parts.bot is not None:
        bot = parts.bot

        @app.post("/slack/events", include_in_schema=False)
        async def slack_events(request: Request) -> Response:
            body = await request.body()
            bolt_request = to_bolt_request(request, body)
            # Bolt's dispatch blocks (signature check, ack wait): keep it off the event loop.
            bolt_response = await run_in_threadpool(bot.dispatch, bolt_request)
            return to_starlette_response(bolt_response)


def _links(operation_id: str, parameter: str) -> dict[str, Any]:
    """An OpenAPI link: the answer's ``id`` is ``parameter`` of ``operation_id``."""
    return {
        operation_id: {"operationId": operation_id, "parameters": {parameter: "$response.body#/id"}}
    }


def experiment_json(experiments: Experiments, experiment_id: str) -> dict[str, Any]:
    """An experiment's view as JSON, with ``killed`` and its active kill switches spelt out.

    Raises:
        NotFoundError: Unknown experiment.
    """
    view = experiments.get(experiment_id)
    body: dict[str, Any] = jsonable_encoder(view)
    blocked = {(scope, target) for scope, target in body.get("blocked_by", [])}
    switches = [
        jsonable_encoder(k)
        for k in experiments.kill_switches(active_only=True)
        if (k.scope, k.target) in blocked
    ]
    body["killed"] = view.killed
    body["kill_switches"] = switches
    return body
