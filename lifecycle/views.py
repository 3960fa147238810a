"""What :class:`~lifecycle.service.ExperimentService` returns: read-only views of stored state.

The views are frozen pydantic models, so every front door (CLI, HTTP, Slack, the agent) can print
them, serialise them to JSON, and never mutate the state through them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.allocation import KillScope, Status
from lifecycle.config import Arm, Experiment, Guardrail, ModelEntry, RolloutPlan
from lifecycle.gate import GateReport

__all__ = [
    "AdvanceResult",
    "AuditEntry",
    "ExperimentView",
    "KillSwitchView",
    "ModelView",
]


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KillSwitchView(_View):
    """A kill switch, active or released."""

    scope: KillScope
    target: str = Field(description="Experiment, layer or model id; '*' for global.")
    active: bool
    activated_at: datetime
    activated_by: str
    reason: str
    released_at: datetime | None = None
    released_by: str | None = None
    release_reason: str | None = None


class ExperimentView(_View):
    """An experiment as stored: its configuration, where its rollout stands, what stops it."""

    id: str
    name: str
    description: str
    owner: str
    layer: str
    traffic_pct: float
    range_start: float = Field(description="Start of its range, percent of the layer.")
    range_end: float
    arms: dict[str, Arm]
    control: str
    targeting: dict[str, list[str]]
    rollout: RolloutPlan
    guardrails: list[Guardrail]
    status: Status
    stage: int = Field(description="Index of the rollout stage (kept while paused or killed).")
    stage_percent: float = Field(description="Share of its range enrolled now (0 unless serving).")
    stage_started_at: datetime
    prior: Status | None = Field(description="For paused/killed: the state resume returns to.")
    blocked_by: list[tuple[KillScope, str]] = Field(
        default_factory=list, description="Active kill switches that stop it."
    )
    created_at: datetime
    created_by: str
    launched_at: datetime | None = Field(
        default=None, description="When it was first started (began serving), if ever."
    )
    config: Experiment

    @property
    def killed(self) -> bool:
        """True when a kill switch stops it or it is in the killed state."""
        return bool(self.blocked_by) or self.status == "killed"

    @property
    def models(self) -> set[str]:
        """Model ids its arms serve."""
        return self.config.models

    @property
    def exposure_pct(self) -> float:
        """Share of its layer's units it enrols now (percent of the layer)."""
        if self.killed:
            return 0.0
        return (self.range_end - self.range_start) * self.stage_percent / 100.0


class ModelView(_View):
    """One registered version of a model."""

    id: str
    version: str
    status: Literal["active", "rolled_back"]
    serving: bool = Field(description="True for the version the model serves now.")
    registered_at: datetime
    entry: ModelEntry


class AuditEntry(_View):
    """One line of the append-only audit log."""

    id: int
    at: datetime
    actor: str
    action: str
    experiment_id: str | None
    target: str | None
    reason: str
    before: Any = None
    after: Any = None
    key: str | None = Field(default=None, description="Idempotency key, when one was given.")


class AdvanceResult(_View):
    """What ``advance`` did: the gate's decision and the state before and after."""

    experiment_id: str
    decision: Literal["advance", "hold", "rollback", "forced"]
    before: str
    after: str
    gate: GateReport | None = None
