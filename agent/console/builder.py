"""The builder: a new experiment's form, its power analysis, templates, and "Start experiment?".

The form is validated by lifecycle (:func:`agent.console.forms.experiment_from_form`, then the
whole-world checks of ``ExperimentService.check``) and every error is shown beside its field.
"Check" re-renders with the expected duration; "Save as draft" stores the experiment as a draft
(``ExperimentService.create``) and opens its start page, which runs the preflight where one is
installed (``lifecycle.preflight``, composed as ``vigil preflight`` does) and shows its report and
decision, then acts on it as ``vigil experiments start`` does: green starts the rollout, yellow
files a ``start_experiment`` proposal that on-call approves through the one approval machinery,
red is refused unless on-call overrides it with a reason (audited with the start).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import get_args

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from agent.console._web import PREFIX, Web, redirect
from agent.console.forms import (
    ARM_ROWS,
    TEMPLATES,
    TemplateName,
    errors_by_field,
    experiment_from_form,
    template_form,
)
from agent.console.power import PowerEstimate, estimate_duration
from agent.console.views import Console
from lifecycle.config import GUARDRAIL_METRICS, ExperimentFile, OnHarm
from lifecycle.monitors import UNIT_METRIC
from lifecycle.service import ExperimentService
from lifecycle.views import ExperimentView
from tools.errors import (
    ApprovalError,
    ConfigError,
    ConfigProblems,
    StateError,
    TelemetryError,
    VigilError,
)

__all__ = ["Preflight", "add_builder", "run_preflight"]

_ON_HARM: tuple[str, ...] = get_args(OnHarm)


@dataclass(frozen=True)
class Preflight:
    """What "Start experiment?" shows: the preflight's decision and report, if one is installed.

    Attributes:
        available: A preflight is installed (``lifecycle.preflight`` and its composition).
        decision: ``start`` (green), ``needs_approval`` (yellow) or ``refused`` (red); "" when
            none ran.
        zone: The risk zone (green, yellow, red).
        lines: The report in the investigations' narrative form, one line each.
        error: Why it could not run.
    """

    available: bool
    decision: str = ""
    zone: str = ""
    lines: list[str] = field(default_factory=list)
    error: str = ""


def run_preflight(console: Console, view: ExperimentView) -> Preflight:
    """Run the preflight as ``vigil preflight`` composes it (drafts in lifecycle's own store)."""
    if view.status != "draft" or not isinstance(console.experiments, ExperimentService):
        return Preflight(available=False)
    from agent.preflight_report import render
    from agent.runtime import preflight_for

    try:
        report = preflight_for(console.settings, console.experiments).run(view.id)
    except VigilError as exc:
        return Preflight(available=True, decision="refused", zone="red", error=str(exc))
    return Preflight(True, report.decision, report.zone, render(report).splitlines())


def _power(console: Console, form: dict[str, str]) -> tuple[PowerEstimate | None, str]:
    """The expected duration for the form, or why there is none."""
    metric = form.get("power_metric") or "revenue_per_request"
    try:
        mde = float(form.get("mde", "2") or "2") / 100.0
        traffic = float(form.get("traffic_pct", "") or "nan")
    except ValueError:
        return None, "set a numeric target size and MDE to size the experiment"
    if not math.isfinite(traffic) or traffic <= 0:
        return None, "set the target size to size the experiment"
    weights: dict[str, float] = {}
    for i in range(ARM_ROWS):
        name = form.get(f"arm_name_{i}", "").strip()
        if name:
            try:
                weights[name] = float(form.get(f"arm_weight_{i}", "1") or "1")
            except ValueError:
                return None, f"arm {name}: the weight is not a number"
    ramp = 0.0
    for part in form.get("stages", "").split(","):
        _, _, minutes = part.partition(":")
        ramp += float(minutes) if minutes.strip().isdigit() else (60.0 if part.strip() else 0.0)
    try:
        moments, days = console.telemetry.unit_moments(metric, console.settings.console_power_days)
        estimate = estimate_duration(
            moments, mde, weights, form.get("control", "control"), traffic, ramp, days
        )
    except ConfigError as exc:
        return None, f"{exc.field}: {exc.message}"
    except TelemetryError as exc:
        return None, f"telemetry: {exc}"
    except Exception as exc:  # the warehouse's own error (no requests table yet)
        return None, f"telemetry unavailable ({type(exc).__name__})"
    return estimate, ""


def add_builder(router: APIRouter, console: Console, web: Web) -> None:
    """Add the builder, templates and start pages to the console's router."""

    def render(
        request: Request,
        user: str,
        form: dict[str, str],
        errors: dict[str, list[str]] | None = None,
        status: int = 200,
    ) -> Response:
        estimate, power_note = _power(console, form)
        return web.page(
            request,
            "builder.html.j2",
            status,
            me=user,
            form=form,
            errors=errors or {},
            arm_rows=range(ARM_ROWS),
            layers=console.layer_shares(),
            models=sorted({m.id for m in console.experiments.models()}),
            metrics=GUARDRAIL_METRICS,
            power_metrics=sorted(UNIT_METRIC),
            on_harm=_ON_HARM,
            estimate=estimate,
            power_note=power_note,
        )

    @router.get("/templates", response_class=HTMLResponse)
    def templates(request: Request) -> Response:
        web.user(request)
        return web.page(request, "templates.html.j2", templates=TEMPLATES)

    @router.get("/builder", response_class=HTMLResponse)
    def builder(request: Request, template: str = "") -> Response:
        user = web.user(request)
        layers = [layer.id for layer in console.experiments.layers()]
        models = sorted({m.id for m in console.experiments.models()})
        name: TemplateName = next((t for t in TEMPLATES if t == template), "ranking")
        form = template_form(name, owner=user, layers=layers, models=models)
        if template not in TEMPLATES:
            form |= {"name": "", "description": ""}
        return render(request, user, form)

    @router.post("/builder", response_class=HTMLResponse)
    async def build(request: Request) -> Response:
        user = web.user(request)
        form = await web.form(request)
        action = form.pop("action", "check")

        def work() -> Response:
            try:
                file: ExperimentFile = experiment_from_form(form)
                problems = console.experiments.check(file)
            except ConfigProblems as exc:
                problems = exc.problems
            except ConfigError as exc:
                problems = [exc]
            if problems:
                return render(request, user, form, errors_by_field(problems), status=422)
            if action != "save":
                return render(request, user, form)
            (created,) = console.experiments.create(file, user, reason="built in the console")
            return redirect(f"{PREFIX}/experiments/{created}/start", f"Draft {created} saved.")

        return await run_in_threadpool(work)

    @router.get("/experiments/{experiment_id}/start", response_class=HTMLResponse)
    def start_page(request: Request, experiment_id: str) -> Response:
        user = web.user(request)
        view = console.experiments.get(experiment_id)
        return web.page(
            request,
            "start.html.j2",
            me=user,
            view=view,
            preflight=run_preflight(console, view),
            oncall=user in console.settings.oncall,
        )

    @router.post("/experiments/{experiment_id}/start")
    async def start(request: Request, experiment_id: str) -> Response:
        user = web.user(request)
        form = await web.form(request)
        back = f"{PREFIX}/experiments/{experiment_id}"

        def work() -> Response:
            view = console.experiments.get(experiment_id)
            if view.status != "draft":
                raise StateError(f"experiment {experiment_id} is {view.status}, not a draft")
            check = run_preflight(console, view)
            if not check.available or check.decision == "start":
                why = "preflight green" if check.available else "no preflight configured"
                console.experiments.start(experiment_id, user, f"started in the console ({why})")
                return redirect(back, f"Experiment {experiment_id} started.")
            if check.decision == "needs_approval":
                return redirect(back, _propose_start(console, experiment_id, user, check))
            override = form.get("override", "").strip()
            if not override:
                raise StateError(f"the preflight refused experiment {experiment_id} (red)")
            if user not in console.settings.oncall:
                raise ApprovalError(
                    f"{user} is not on-call; only on-call may override a red preflight"
                )
            console.experiments.start(
                experiment_id, user, f"preflight red overridden by on-call {user}: {override}"
            )
            return redirect(back, f"Experiment {experiment_id} started (red, overridden).")

        return await run_in_threadpool(work)


def _propose_start(console: Console, experiment_id: str, user: str, check: Preflight) -> str:
    """File (once) the ``start_experiment`` proposal a yellow preflight calls for."""
    for m in console.mitigations():
        if m.action == "start_experiment" and m.target == experiment_id and m.status == "proposed":
            return f"Start proposal {m.id} is already waiting for on-call."
    findings = [line.strip() for line in check.lines if line.strip().startswith(("✗", "?", "!"))]
    reason = "preflight yellow: " + ("; ".join(findings) or "needs on-call's approval")
    view = console.inv.propose("start_experiment", experiment_id, user, reason[:500])
    if console.propose_notice is not None:
        console.propose_notice(view)
    return f"Start proposal {view.id} filed: on-call approves it, then it starts."
