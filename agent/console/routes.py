"""The console's pages: login, dashboard, experiments, investigations, approvals, data, audit.

Reads are ``def`` handlers (FastAPI runs them on its thread pool); POSTs read the form on the
event loop, check its CSRF token, and run their blocking work on the thread pool. Decisions go
through the agent exactly as the HTTP API's do: ``Investigator.approve`` / ``reject`` check the
same policy and answer 403 whatever the page showed, and the kill button files a proposal
(``Investigator.propose``) that needs an approval, never a kill.
"""

from __future__ import annotations

import urllib.parse
from typing import Literal, assert_never

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from agent.console._web import PREFIX, Web, redirect
from agent.console.charts import CHART_REFRESH_S, ChartPanel
from agent.console.guardrails import GuardrailCharts
from agent.console.session import user_for_token
from agent.console.views import Console
from tools.errors import VigilError

__all__ = ["Decision", "add_pages"]

Decision = Literal["approve", "reject"]


def _safe_next(target: str) -> str:
    """Only a console path may be a login's destination (no open redirect)."""
    parsed = urllib.parse.urlparse(target)
    if parsed.scheme or parsed.netloc or not parsed.path.startswith(PREFIX):
        return f"{PREFIX}/"
    return parsed.path


def add_pages(router: APIRouter, console: Console, web: Web) -> None:
    """Add the pages to the console's router.

    Args:
        router: The router (its route class renders errors as pages).
        console: The parts and reads.
        web: Templates, sessions and forms.
    """

    # -- login ----------------------------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = f"{PREFIX}/") -> Response:
        return web.page(request, "login.html.j2", next=_safe_next(next))

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await web.form(request)
        user = user_for_token(console.settings, form.get("token", ""))
        if user is None:
            return web.page(
                request,
                "login.html.j2",
                401,
                next=_safe_next(form.get("next", "")),
                error="That token is not one of VIGIL_API_TOKENS.",
            )
        response = redirect(_safe_next(form.get("next", "")))
        web.set_cookie(response, web.codec.signed_in(user))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await web.form(request)
        response = redirect(f"{PREFIX}/login")
        web.set_cookie(response, web.codec.anonymous())
        return response

    # -- dashboard ------------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    def dashboard(request: Request) -> Response:
        user = web.user(request)
        return web.page(request, "dashboard.html.j2", me=user, **console.dashboard())

    @router.get("/fragments/dashboard", response_class=HTMLResponse)
    def dashboard_fragment(request: Request) -> Response:
        user = web.user(request)
        return web.page(request, "_dashboard_body.html.j2", me=user, **console.dashboard())

    # -- experiments ----------------------------------------------------------------------------

    @router.get("/experiments", response_class=HTMLResponse)
    def experiments(
        request: Request, layer: str = "", status: str = "", owner: str = "", health: str = ""
    ) -> Response:
        web.user(request)
        data = console.experiment_list(layer, status, owner, health)
        chosen = {"layer": layer, "status": status, "owner": owner, "health": health}
        return web.page(request, "experiments.html.j2", chosen=chosen, **data)

    @router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
    def experiment(request: Request, experiment_id: str) -> Response:
        user = web.user(request)
        # The charts arrive as a fragment (below): the page never waits for the warehouse.
        return web.page(
            request,
            "experiment.html.j2",
            me=user,
            console=console,
            chart_refresh_s=CHART_REFRESH_S,
            **console.about(experiment_id),
        )

    @router.get("/fragments/experiments/{experiment_id}/charts", response_class=HTMLResponse)
    def experiment_charts(request: Request, experiment_id: str) -> Response:
        web.user(request)
        view = console.experiments.get(experiment_id)
        panel = ChartPanel(GuardrailCharts([], []))
        chart_error = ""
        try:
            panel = console.charts.panel(view)
        except VigilError as exc:
            chart_error = str(exc)
        except Exception as exc:  # the warehouse's own error (a missing table)
            chart_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return web.page(
            request,
            "_experiment_charts.html.j2",
            view=view,
            panel=panel,
            charts=[(s, web.svg(svg)) for s, svg in panel.drawn],
            levels=panel.charts.levels,
            chart_error=chart_error,
        )

    @router.post("/experiments/{experiment_id}/kill")
    async def propose_kill(request: Request, experiment_id: str) -> Response:
        user = web.user(request)
        form = await web.form(request)
        reason = form.get("reason", "").strip() or f"kill requested in the console by {user}"

        def work() -> str:
            console.experiments.get(experiment_id)  # 404 for an unknown experiment
            view = console.inv.propose("kill_experiment", experiment_id, user, reason)
            if console.propose_notice is not None:
                console.propose_notice(view)
            return view.id

        mitigation_id = await run_in_threadpool(work)
        return redirect(
            f"{PREFIX}/experiments/{experiment_id}",
            f"Kill proposal {mitigation_id} filed: it needs an approval.",
        )

    # -- investigations and decisions -----------------------------------------------------------

    @router.get("/investigations", response_class=HTMLResponse)
    def investigations(request: Request, status: str = "") -> Response:
        web.user(request)
        items = console.recent_investigations()
        statuses = sorted({i.status for i in items})
        if status:
            items = [i for i in items if i.status == status]
        return web.page(
            request, "investigations.html.j2", items=items, statuses=statuses, chosen=status
        )

    @router.get("/investigations/{investigation_id}", response_class=HTMLResponse)
    def investigation(request: Request, investigation_id: str) -> Response:
        user = web.user(request)
        view = console.inv.get(investigation_id)
        keys = {m.id for m in view.mitigations}
        follow_up = [
            e
            for e in console.experiments.audit(view.alert.experiment, limit=500)
            if e.key in keys or any(k in e.reason for k in keys)
        ]
        try:
            console.inv.report_html(investigation_id)
            has_report = True
        except VigilError:
            has_report = False
        return web.page(
            request,
            "investigation.html.j2",
            me=user,
            inv=view,
            console=console,
            follow_up=follow_up,
            has_report=has_report,
        )

    @router.get("/investigations/{investigation_id}/report", response_class=HTMLResponse)
    def report(request: Request, investigation_id: str) -> Response:
        web.user(request)
        response = HTMLResponse(console.inv.report_html(investigation_id))
        # The report is the agent's own self-contained HTML; framed by the console only.
        response.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
        return response

    async def decide(request: Request, mitigation_id: str, decision: Decision) -> Response:
        user = web.user(request)
        form = await web.form(request)

        def work() -> str:
            if decision == "approve":
                view = console.inv.approve(mitigation_id, user)
            elif decision == "reject":
                view = console.inv.reject(mitigation_id, user)
            else:
                assert_never(decision)
            return f"{view.action} of {view.target or 'all traffic'}: {view.status}"

        outcome = await run_in_threadpool(work)
        return redirect(_safe_next(form.get("back", f"{PREFIX}/")), outcome)

    @router.post("/mitigations/{mitigation_id}/approve")
    async def approve(request: Request, mitigation_id: str) -> Response:
        return await decide(request, mitigation_id, "approve")

    @router.post("/mitigations/{mitigation_id}/reject")
    async def reject(request: Request, mitigation_id: str) -> Response:
        return await decide(request, mitigation_id, "reject")

    # -- data and audit -------------------------------------------------------------------------

    @router.get("/data", response_class=HTMLResponse)
    def data(request: Request) -> Response:
        web.user(request)
        models = console.experiments.models()
        snapshots: list[dict[str, object]] = []
        error = ""
        try:
            tables = console.telemetry.tables()  # says per table what is missing
        except VigilError as exc:  # the warehouse cannot be opened at all
            tables, error = [], str(exc)
        try:
            frame = console.telemetry.snapshots()
            snapshots = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
        except VigilError:
            pass  # the tables above say the registry's snapshots are absent
        except Exception as exc:  # the warehouse's own error
            error = error or f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        snapshots.sort(key=lambda r: (str(r.get("model_id")), str(r.get("published_at"))))
        return web.page(
            request,
            "data.html.j2",
            models=models,
            snapshots=snapshots[-200:],
            snapshot_total=len(snapshots),
            tables=tables,
            error=error,
        )

    @router.get("/audit", response_class=HTMLResponse)
    def audit(
        request: Request, experiment: str = "", actor: str = "", action: str = ""
    ) -> Response:
        web.user(request)
        chosen = {"experiment": experiment, "actor": actor, "action": action}
        return web.page(
            request, "audit.html.j2", chosen=chosen, **console.audit_log(experiment, actor, action)
        )
