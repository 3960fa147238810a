"""``vigil preflight EXP``, ``vigil experiments start EXP`` and ``vigil risk train``.

``preflight`` runs the checks before start (lifecycle.preflight) and prints the narrative report;
it changes nothing. ``experiments start`` runs the same preflight, then acts on its decision:
green starts the rollout; yellow proposes a ``start_experiment`` mitigation that on-call approves
through the one approval machinery (``vigil approve``, HTTP, the Slack button), executed once;
red is refused unless on-call overrides it with ``--override REASON`` (the reason goes to the
audit log with the start). ``risk train`` fits the risk model on a launch history (CSV).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from agent.cli._console import err as _err
from agent.cli._console import handle_errors as _handle_errors
from agent.cli._console import out as _out
from agent.cli.core import _ACTOR, _actor, _service
from agent.preflight_report import render
from agent.runtime import preflight_for, risk_model_path
from agent.settings import Settings, get_settings
from lifecycle.preflight import PreflightReport
from lifecycle.risk import LAUNCH_FEATURES, LOG_FEATURES, RiskModel, select_kind
from tools.errors import ApprovalError, ConfigError

__all__ = ["register"]

risk_app = typer.Typer(help="The launch risk model of the preflight.")

_AT = typer.Option(
    None,
    "--at",
    help="The end of the replayed window (ISO time, UTC); default: now. For replaying a "
    "simulated world's telemetry.",
)


def _show(report: PreflightReport, as_json: bool) -> None:
    if as_json:
        _out().print_json(json.dumps(report.model_dump(mode="json"), default=str))
    else:
        _out().print(render(report), highlight=False, markup=False)


@_handle_errors
def preflight(
    experiment_id: str = typer.Argument(..., help="A draft experiment."),
    at: datetime | None = _AT,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check an experiment before start (validation, replay, resources, shadow, risk); no start.

    Exit code 0 for green, 3 for yellow (needs approval), 4 for red (refused).
    """
    settings = get_settings()
    with _service() as svc:
        report = preflight_for(settings, svc, at).run(experiment_id)
    _show(report, as_json)
    raise typer.Exit({"start": 0, "needs_approval": 3, "refused": 4}[report.decision])


@_handle_errors
def start(
    experiment_id: str = typer.Argument(..., help="A draft experiment."),
    override: str | None = typer.Option(
        None, "--override", help="On-call only: start a red experiment anyway, for this reason."
    ),
    at: datetime | None = _AT,
    actor: str | None = _ACTOR,
) -> None:
    """Run the preflight, then start (green), ask on-call to approve (yellow) or refuse (red)."""
    settings = get_settings()
    who = _actor(actor)
    with _service() as svc:
        report = preflight_for(settings, svc, at).run(experiment_id)
        _out().print(render(report), highlight=False, markup=False)
        if report.decision == "start":
            svc.start(experiment_id, who, f"preflight green (risk {_risk(report)})")
            _out().print(f"started {experiment_id}", highlight=False)
            return
        if report.decision == "refused":
            if override is None:
                _err().print(f"refused: {experiment_id} is red; not started", highlight=False)
                raise typer.Exit(4)
            if who not in settings.oncall:
                raise ApprovalError(
                    f"{who} is not on-call; only on-call may override a red preflight"
                )
            svc.start(experiment_id, who, f"preflight red overridden by on-call {who}: {override}")
            _out().print(f"started {experiment_id} (red, overridden by {who})", highlight=False)
            return
    view = _propose(settings, experiment_id, who, report)
    _out().print(
        f"awaiting approval: mitigation {view.id} (start_experiment {experiment_id}); on-call "
        f"approves with `vigil approve {view.id} --as USER`",
        highlight=False,
    )
    raise typer.Exit(3)


def _risk(report: PreflightReport) -> str:
    return f"{report.risk.probability:.1%}" if report.risk is not None else "not scored"


def _propose(settings: Settings, experiment_id: str, who: str, report: PreflightReport) -> Any:
    from agent.service import Investigator

    inv = Investigator(settings)
    try:
        reason = f"preflight yellow (risk {_risk(report)}): " + "; ".join(
            f"{s.name} {s.verdict}" for s in report.steps if s.verdict != "ok"
        )
        return inv.propose("start_experiment", experiment_id, who, reason)
    finally:
        inv.close()


@risk_app.command("train")
@_handle_errors
def train(
    history: Path = typer.Option(
        ..., "--history", help="CSV of past launches: the launch features and `incident` (0/1)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Where to write the model."),
) -> None:
    """Fit the risk model (the kind chosen by cross-validation) and its zones on a history."""
    import pandas as pd

    settings = get_settings()
    frame = pd.read_csv(history)
    missing = [c for c in (*LAUNCH_FEATURES, "incident") if c not in frame.columns]
    if missing:
        raise ConfigError("history", missing, "columns missing from the launch history")
    x, y = frame[list(LAUNCH_FEATURES)], frame["incident"]
    kind, cv = select_kind(x, y, ("logistic", "logistic_interactions"), log_columns=LOG_FEATURES)
    model = RiskModel.fit(
        x,
        y,
        kind=kind,
        log_columns=LOG_FEATURES,
        red_share=settings.risk_red_share,
        yellow_share=settings.risk_yellow_share,
    )
    path = out or risk_model_path(settings)
    model.save(path)
    scores = ", ".join(f"{k} {v:.3f}" for k, v in cv.items())
    _out().print(
        f"trained {kind} on {len(frame):,} launches ({int(y.sum())} incidents; cross-validated "
        f"mean caught at 5/10/50 %: {scores}) -> {path}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``preflight``, ``experiments start`` and ``risk`` to the ``vigil`` app."""
    from agent.cli.experiments import experiments_app

    app.command("preflight")(preflight)
    experiments_app.command("start")(start)
    app.add_typer(risk_app, name="risk")
