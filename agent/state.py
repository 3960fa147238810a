"""The investigation graph's state: a pydantic model checkpointed after every node.

Only plain, serialisable values live here (the toolbox, the stores and the reasoner are handed to
the nodes by :mod:`agent.graph`), so that a paused investigation can be resumed by a fresh
process from its checkpoint alone.
"""

from __future__ import annotations

import operator
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.models import Alert, InvestigationStatus, MitigationView, RootCause
from tools.result import CheckResult

__all__ = [
    "CHECKPOINT_TYPES",
    "CheckOutcome",
    "CheckTask",
    "Decision",
    "Diagnosis",
    "InvestigationState",
    "Localization",
    "Suspect",
    "Window",
]


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Value):
    """A time window ``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    @property
    def minutes(self) -> float:
        """Its length in minutes."""
        return (self.end - self.start).total_seconds() / 60.0


class Suspect(_Value):
    """A subject the checks examine: an experiment, a model, or all traffic."""

    scope: Literal["experiment", "model", "global"]
    id: str | None = None
    reason: str = ""
    share: float | None = Field(default=None, description="Share of the delta it explains.")

    @property
    def key(self) -> str:
        """``experiment:879``, ``model:ctr_v41`` or ``global``."""
        return self.scope if self.id is None else f"{self.scope}:{self.id}"


class CheckTask(_Value):
    """One check to run on one subject (sent to ``run_check`` in parallel)."""

    key: str = Field(description="Unique in the investigation: ``fallback@experiment:879``.")
    check: str
    subject: Suspect
    window: Window
    looks: int = Field(
        default=1, ge=1, description="The look at the alert's data: 1, then 1 + the follow-up."
    )


class CheckOutcome(_Value):
    """A check's result, keyed by its task."""

    key: str
    subject: Suspect
    result: CheckResult
    error: str | None = Field(default=None, description="Why the check could not run.")


class Localization(_Value):
    """What localize found: when it started, who is suspect, where (dimension values)."""

    onset: datetime | None = None
    window: Window
    baseline: Window
    suspects: list[Suspect] = Field(default_factory=list)
    where: dict[str, str] = Field(default_factory=dict)
    results: list[CheckOutcome] = Field(
        default_factory=list, description="change_point / attribution results."
    )


class Diagnosis(_Value):
    """What a reasoner concluded.

    Attributes:
        causes: Ranked best first; ``none`` first means healthy.
        narrative: Free text from the reasoner (the LLM's summary); "" for the templates.
        notes: Caveats the report must show (e.g. "the LLM was unavailable; fell back").
        reasoner: Which reasoner produced the causes.
        ruled_out: (cause, reason) pairs the rules excluded, for the report.
        extra: Check outcomes the reasoner ran itself (LLM tool calls).
        conclusion: ``conclusive`` when the checks could see; ``inconclusive`` when they could
            not (no rows in the window, samples too small to rule out the alert's effect);
            ``failed`` when the investigation could not run (telemetry unreadable, unknown
            experiment). Missing data is never a conclusive ``none``.
        reason: Why it is not conclusive, in one line ("" when conclusive).
    """

    causes: list[RootCause]
    narrative: str = ""
    notes: list[str] = Field(default_factory=list)
    reasoner: str = "deterministic"
    ruled_out: list[tuple[str, str]] = Field(default_factory=list)
    extra: list[CheckOutcome] = Field(default_factory=list)
    conclusion: Literal["conclusive", "inconclusive", "failed"] = "conclusive"
    reason: str = ""


class Decision(_Value):
    """The resume value of the approval interrupt (the database is the source of truth)."""

    mitigation_id: str
    decision: Literal["approve", "reject"]
    user: str


class InvestigationState(BaseModel):
    """The graph state of one investigation (thread id = investigation id)."""

    model_config = ConfigDict(extra="forbid")

    investigation_id: str
    alert: Alert
    created_at: datetime
    status: InvestigationStatus = "running"
    playbook: str = ""
    localization: Localization | None = None
    tasks: list[CheckTask] = Field(default_factory=list)
    outcomes: Annotated[list[CheckOutcome], operator.add] = Field(default_factory=list)
    diagnosis: Diagnosis | None = None
    onset: datetime | None = None
    proposals: list[MitigationView] | None = Field(
        default=None, description="What diagnose proposes (None: not diagnosed yet)."
    )
    report_path: str | None = None
    mitigation_ids: list[str] = Field(default_factory=list)
    decision: Decision | None = None  # no longer written; kept so older checkpoints still load
    executed: list[str] = Field(default_factory=list)
    error: str | None = None


# Classes the checkpoint serialiser may revive (an explicit allow-list, not "anything").
CHECKPOINT_TYPES: tuple[type[BaseModel], ...] = (
    Window,
    Suspect,
    Localization,
    CheckTask,
    CheckOutcome,
    Diagnosis,
    Decision,
    MitigationView,
    InvestigationState,
)
