"""The one result shape every diagnostic check returns.

The LLM, the report, Slack and the evals all read :class:`CheckResult`; nothing else crosses the
boundary between a check and its readers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CheckResult", "Effect", "Evidence", "Verdict"]

Verdict = Literal["ok", "warn", "fail", "inconclusive", "no_data"]
"""DESIGN §4: ``ok`` only when the check could have seen an effect of the size in question;
``inconclusive`` when it had data but too little to rule such an effect out; ``no_data`` when it
had nothing to look at."""

Scalar = str | int | float | bool | None


class Effect(BaseModel):
    """A point estimate with its confidence interval.

    ``name`` says what is measured (``"calibration ratio"``, ``"fallback rate difference"``),
    ``unit`` how to read it (``"ratio"``, ``"pp"``, ``"%"``, ``"minutes"``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    estimate: float
    ci_low: float | None = None
    ci_high: float | None = None
    unit: str = ""
    confidence: float = 0.95


class Evidence(BaseModel):
    """A small table or series for the report and its plots (never raw requests).

    ``kind="series"``: ``columns[0]`` is the x axis (minute as ISO time), the rest are lines.
    ``kind="table"``: rows to print as they are.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["series", "table"]
    columns: list[str]
    rows: list[list[Scalar]]
    note: str = ""


class CheckResult(BaseModel):
    """What one diagnostic check concluded, in the shape every reader understands.

    Attributes:
        check: The check's name (``"fallback"``, ``"calibration"``, ...).
        verdict: ``ok`` / ``warn`` / ``fail``; ``inconclusive`` when the sample is too small to
            rule out an effect of the size in question; ``no_data`` when there was nothing to see.
        summary: One sentence a human reads.
        effect: The headline effect with its interval, where one applies.
        p_value: Of the check's test, where one applies.
        mde: The minimal detectable effect: the smallest change, in the unit of ``effect`` (a
            ratio such as 1.2 for ratio effects, meaning ±20 %), the check would have flagged
            with 80 % power at its alpha given its sample (None where no test applies).
        onset: When the problem started (UTC), where a change point applies.
        experiment: The experiment the check looked at (None for all traffic).
        arm: The arm the finding is located in (None when not arm-specific).
        where: The dimension values the finding is located in (``{"platform": "android"}``).
        evidence: Small tables and series for the report and plots.
        params: The thresholds and settings the check ran with.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: str
    verdict: Verdict
    summary: str
    effect: Effect | None = None
    p_value: float | None = None
    mde: float | None = None
    onset: datetime | None = None
    experiment: str | None = None
    arm: str | None = None
    where: dict[str, str] = Field(default_factory=dict)
    evidence: list[Evidence] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True when the verdict is ``fail``."""
        return self.verdict == "fail"
