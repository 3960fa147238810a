"""The preflight's report in the investigations' narrative form, and the incident-history port.

``render`` turns lifecycle's :class:`~lifecycle.preflight.PreflightReport` into the text on-call
reads ("Before starting experiment 879, I checked: ✓ … ✗ …", the risk score and its top
features, the decision). :class:`InvestigationIncidents` answers lifecycle's
:class:`~lifecycle.risk.IncidentHistory` from Vigil's own investigations, so that lifecycle never
imports the agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

from agent.models import InvestigationView
from lifecycle.preflight import Decision, PreflightReport, PreflightStep
from tools.vocabulary import VERDICT_MARKS, as_utc

__all__ = ["InvestigationIncidents", "render", "step_title"]

_TITLES = {
    "validation": "configuration validation",
    "replay": "offline replay of logged requests",
    "resources": "serving resources at peak",
    "shadow": "shadow run on live requests",
    "risk": "launch risk",
}
_CHECK_NAMES = {
    "calibration": "calibration",
    "ne": "normalized entropy",
    "prediction": "predictions",
    "latency": "latency",
}


def step_title(step: PreflightStep) -> str:
    """A step's name as a phrase."""
    return _TITLES.get(step.name, step.name)


def _decision(report: PreflightReport) -> str:
    decision: Decision = report.decision
    if decision == "start":
        return "Decision: green — the experiment may start; its rollout begins at the first stage."
    if decision == "needs_approval":
        return (
            "Decision: yellow — starting it needs on-call's approval "
            "(proposed as start_experiment)."
        )
    failed = ", ".join(step_title(s) for s in report.failed)
    why = f"{failed} failed" if failed else "the risk score is in the red zone"
    return f"Decision: red — refused because {why}; on-call may override it with a reason."


def render(report: PreflightReport) -> str:
    """The preflight report as the narrative on-call reads (plain text, one finding a line)."""
    lines = [
        f'Before starting experiment {report.experiment_id} ("{report.name}", owner '
        f"{report.owner}, layer {report.layer}), I checked:"
    ]
    for step in report.steps:
        lines.append(f"{VERDICT_MARKS[step.verdict]} {step_title(step)}: {step.summary}")
        for check in step.checks:
            if check.verdict != "ok":
                arm = f" (arm {check.arm})" if check.arm else ""
                name = _CHECK_NAMES.get(check.check, check.check)
                lines.append(f"    {VERDICT_MARKS[check.verdict]} {name}{arm}: {check.summary}")
    if report.risk is not None:
        r = report.risk
        top = "; ".join(f"{f} = {v:g} adds {d:.1%}" for f, v, d in r.top) or "none stands out"
        lines.append(
            f"Risk score: {r.probability:.1%} ({r.zone}; riskier than {r.percentile:.0%} of past "
            f"launches, {r.kind} model). Top features: {top}."
        )
    lines.append(_decision(report))
    return "\n".join(lines)


class _Investigations(Protocol):
    def list_investigations(self, limit: int = 50) -> list[InvestigationView]: ...


class InvestigationIncidents:
    """Incidents from Vigil's own investigations: those that found a cause in an experiment.

    Args:
        store: The investigations' store (``AgentStore``).
        experiments: Experiment id -> (owner, layer).
        limit: How many recent investigations to look through.
    """

    def __init__(
        self,
        store: _Investigations,
        experiments: Mapping[str, tuple[str, str]],
        limit: int = 2000,
    ) -> None:
        self._store = store
        self._experiments = dict(experiments)
        self._limit = limit

    def _incidents(self, since: datetime) -> Iterable[tuple[str, str]]:
        for view in self._store.list_investigations(self._limit):
            if as_utc(view.created_at) < as_utc(since) or not view.root_causes:
                continue
            top = view.root_causes[0]
            exp = top.experiment or view.alert.experiment
            if top.cause == "none" or exp is None or exp not in self._experiments:
                continue
            yield self._experiments[exp]

    def incidents(
        self, *, since: datetime, owner: str | None = None, layer: str | None = None
    ) -> int:
        """Investigations since ``since`` that blamed a cause on an experiment of ``owner`` /
        of ``layer``."""
        return sum(
            1
            for o, lay in self._incidents(since)
            if (owner is None or o == owner) and (layer is None or lay == layer)
        )
