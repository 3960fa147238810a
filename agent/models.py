"""The agent's public data shapes: alerts in, investigations, causes and mitigations out.

Every front door (CLI, HTTP, Slack, evals) reads and writes these; nothing else crosses the
boundary of :mod:`agent`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CAUSES",
    "MITIGATIONS",
    "Alert",
    "AlertMetric",
    "Cause",
    "FollowUp",
    "InvestigationStatus",
    "InvestigationView",
    "MitigationAction",
    "MitigationEffect",
    "MitigationStatus",
    "MitigationView",
    "RootCause",
]

Cause = Literal[
    "prediction_collapse",
    "miscalibration",
    "ne_regression",
    "stale_model",
    "model_fallback",
    "infra_outage",
    "allocation_bug",
    "logging_loss",
    "none",
]
CAUSES: tuple[str, ...] = get_args(Cause)

MitigationAction = Literal[
    "kill_experiment",
    "ramp_down",
    "rollback_model",
    "escalate_infra",
    "escalate_data",
    "none",
    "start_experiment",  # a yellow preflight's start, approved by on-call (issue 18)
]
MITIGATIONS: tuple[str, ...] = get_args(MitigationAction)

AlertMetric = Literal[
    "revenue",
    "ctr",
    "ne",
    "calibration",
    "fallback_rate",
    "error_rate",
    "latency_p99",
    "srm",
]
InvestigationStatus = Literal[
    "running", "awaiting_approval", "watching", "inconclusive", "completed", "failed"
]
"""DESIGN §5: ``watching`` (inconclusive, re-checked on fresh data), ``inconclusive`` (gave up,
says why), ``failed`` (could not run, says why); missing data is never ``completed``."""
MitigationStatus = Literal[
    "proposed", "approved", "rejected", "executing", "executed", "failed", "verified"
]
MitigationEffect = Literal["acted", "already_in_effect"]
"""What executing a mitigation did: ``acted`` (the experiment core changed state), or
``already_in_effect`` (the same kill, ramp or rollback was in force already, e.g. executed by
another investigation's mitigation; nothing changed)."""


class Alert(BaseModel):
    """What fired: from Alertmanager, a Vigil monitor, Slack, the CLI or a scenario.

    ``summary`` and ``annotations`` are untrusted text: they are shown to a reasoner as quoted
    data, never as instructions.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: AlertMetric
    fired_at: datetime = Field(description="When the alert fired (UTC).")
    experiment: str | None = Field(default=None, description="None for a global alert.")
    since: datetime | None = Field(default=None, description="Start of the window to look at.")
    source: Literal["alertmanager", "monitor", "slack", "cli", "scenario", "http"] = "cli"
    name: str = Field(default="", description="Alert name, e.g. Alertmanager's alertname.")
    summary: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    fingerprint: str | None = None


class RootCause(BaseModel):
    """A ranked candidate cause with the failing checks that support it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cause: Cause
    experiment: str | None = None
    arm: str | None = None
    model: str | None = None
    where: dict[str, str] = Field(default_factory=dict)
    confidence: float = Field(ge=0, le=1)
    evidence: list[str] = Field(
        default_factory=list, description="Names of the checks whose findings support the cause."
    )
    explanation: str = ""


class MitigationView(BaseModel):
    """A typed mitigation proposal and where it stands."""

    model_config = ConfigDict(extra="forbid")

    id: str
    investigation_id: str | None
    action: MitigationAction
    target: str | None = Field(description="Experiment id, model id, or None.")
    status: MitigationStatus
    blast_radius: float = Field(ge=0, le=1, description="Share of traffic the action affects.")
    expected_effect: str = ""
    reason: str = ""
    proposed_by: str = "vigil"
    approved_by: str | None = None
    decided_at: datetime | None = None
    executed_at: datetime | None = None
    recovered: bool | None = None
    verification_pending: str | None = Field(
        default=None,
        description="Why recovery could not be judged yet (retried); None once judged.",
    )
    verification: str | None = Field(
        default=None,
        description="What verification measured (after the action vs before the onset).",
    )
    effect: MitigationEffect | None = Field(
        default=None,
        description="Once executed: 'acted', or 'already_in_effect' when the action was in "
        "force already and this mitigation changed nothing.",
    )


class FollowUp(BaseModel):
    """One re-run of a watching investigation on fresh data (``n`` 0: the first run)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=0, description="0 for the first investigation, then 1, 2, ...")
    due_at: datetime | None = Field(default=None, description="When it was due (telemetry clock).")
    ran_at: datetime = Field(description="The telemetry clock when it ran: data up to then.")
    status: InvestigationStatus | None = Field(
        default=None, description="How it ended; None while it runs."
    )
    cause: Cause | None = Field(default=None, description="Its top cause.")
    summary: str = Field(default="", description="What it found, and what changed.")


class InvestigationView(BaseModel):
    """An investigation as every front door shows it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: InvestigationStatus
    alert: Alert
    created_at: datetime
    onset: datetime | None = None
    root_causes: list[RootCause] = Field(default_factory=list)
    mitigations: list[MitigationView] = Field(default_factory=list)
    verdicts: list[tuple[str, str, str]] = Field(
        default_factory=list, description="(check, verdict, summary) in report order."
    )
    reasoner: str = "deterministic"
    report_markdown: str = ""
    report_path: str | None = None
    error: str | None = None
    next_followup_at: datetime | None = Field(
        default=None, description="While watching: when it is re-run (telemetry clock)."
    )
    followups: list[FollowUp] = Field(
        default_factory=list, description="The first run and each follow-up, oldest first."
    )
    joined_alerts: list[Alert] = Field(
        default_factory=list,
        description="Alerts for the same scope that joined it while it was open (one incident).",
    )
