"""The preflight's typed report: its steps, resource estimates, risk summary and the decision.

Built by :class:`lifecycle.preflight.Preflight`; read by the CLI, the console and the narrative
renderer (``agent/preflight_report.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.risk import Zone
from tools.result import CheckResult, Verdict

__all__ = [
    "CONCURRENT_DAYS",
    "HISTORY_DAYS",
    "Decision",
    "DeclaredBy",
    "PreflightReport",
    "PreflightStep",
    "ResourceEstimate",
    "RiskSummary",
    "StepName",
    "decide",
    "worst",
]

StepName = Literal["validation", "replay", "resources", "shadow", "risk"]
Decision = Literal["start", "needs_approval", "refused"]
DeclaredBy = Literal["registry", "settings"]
"""Where a declared cost came from: the model registry, or the ``model_costs`` setting."""
RANK: Mapping[Verdict, int] = {"fail": 4, "warn": 3, "inconclusive": 2, "no_data": 1, "ok": 0}
HISTORY_DAYS = 180
CONCURRENT_DAYS = 3


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PreflightStep(_Frozen):
    """One step of the preflight: its verdict (the worst of its checks), in words and checks."""

    name: StepName
    verdict: Verdict
    summary: str
    checks: list[CheckResult] = Field(default_factory=list)
    seconds: float = 0.0


class ResourceEstimate(_Frozen):
    """What a candidate needs at peak against what its serving tier has."""

    model: str
    cost_ms_per_request: float
    cost_source: Literal["measured", "declared"] = Field(
        description="declared (the registry's or the setting's, where given) or measured."
    )
    declared_by: DeclaredBy | None = Field(
        default=None, description="Where the declared cost came from (None when measured)."
    )
    measured_ms_per_request: float | None = Field(
        default=None, description="The replay's measured p50 cost, beside a declared one."
    )
    peak_rps: float
    cores_needed: float
    cores_available: float
    memory_gb_needed: float | None = None
    memory_gb_available: float
    fits: bool


class RiskSummary(_Frozen):
    """The risk score of the launch and the features that add most to it."""

    probability: float
    percentile: float
    zone: Zone
    kind: str
    top: list[tuple[str, float, float]] = Field(
        default_factory=list, description="(feature, value, added probability), riskiest first."
    )


class PreflightReport(_Frozen):
    """The preflight of one experiment: every step, the risk and the decision."""

    experiment_id: str
    name: str
    owner: str
    layer: str
    candidates: dict[str, str] = Field(description="Arm -> candidate model it would serve.")
    reference: str | None = Field(description="The model the candidates are judged against.")
    checked_at: datetime
    steps: list[PreflightStep]
    resources: list[ResourceEstimate] = Field(default_factory=list)
    risk: RiskSummary | None = None
    zone: Zone
    decision: Decision
    seconds: float

    @property
    def failed(self) -> list[PreflightStep]:
        """The steps that failed."""
        return [s for s in self.steps if s.verdict == "fail"]


def worst(checks: Sequence[CheckResult]) -> Verdict:
    """The worst verdict of some checks (``ok`` for none)."""
    return max((c.verdict for c in checks), key=lambda v: RANK[v], default="ok")


def decide(steps: Sequence[PreflightStep], zone: Zone | None) -> tuple[Zone, Decision]:
    """The zone and decision: a failed step is red; otherwise the risk zone — but never green when
    a step could not tell (inconclusive, no data) or there is no risk score: yellow then."""
    if any(s.verdict == "fail" for s in steps):
        return "red", "refused"
    final: Zone = zone or "yellow"
    if final == "green" and any(s.verdict in ("inconclusive", "no_data") for s in steps):
        final = "yellow"
    if final == "green":
        return final, "start"
    if final == "yellow":
        return final, "needs_approval"
    return final, "refused"
