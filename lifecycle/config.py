"""Experiment configuration: the models users write in YAML/JSON, validated field by field.

Checks that need only one object live here as pydantic validators (weights, stages, owner).
Checks that need the whole world (layer over-allocation, unknown model ids, duplicate ids,
targeting vocabularies) live in :mod:`lifecycle.validation`, which runs before any state change.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "CONFIG_ERROR_TYPE",
    "GUARDRAIL_METRICS",
    "Arm",
    "Experiment",
    "ExperimentFile",
    "Guardrail",
    "GuardrailMetric",
    "Layer",
    "ModelEntry",
    "OnHarm",
    "RolloutPlan",
    "RolloutStage",
]

GuardrailMetric = Literal[
    "revenue_per_request",
    "ctr",
    "ne",
    "calibration",
    "fallback_rate",
    "error_rate",
    "latency_p99",
    "srm",
]
GUARDRAIL_METRICS: tuple[str, ...] = get_args(GuardrailMetric)

OnHarm = Literal["ramp_down", "kill", "pause_and_alert"]
"""What the rollout controller does when the gate says roll back (SRM or a harmed guardrail)."""

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

# Error type of the validators below; ``ctx`` carries the path under the validated field and the
# offending value, so that :mod:`lifecycle.validation` can name e.g. ``rollout.stages[2].percent``.
CONFIG_ERROR_TYPE = "vigil_config"


def _invalid(path: str, value: object, message: str) -> PydanticCustomError:
    return PydanticCustomError(CONFIG_ERROR_TYPE, message, {"path": path, "value": value})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Layer(_Strict):
    """A layer: experiments in one layer own disjoint bucket ranges and never share a unit."""

    id: str = Field(pattern=_ID_PATTERN)
    name: str = ""
    description: str = ""
    salt: str | None = Field(default=None, description="Hash salt; defaults to the layer id.")

    @property
    def hash_salt(self) -> str:
        """The salt the layer's bucket hash uses."""
        return self.salt or f"layer:{self.id}"


class ModelEntry(_Strict):
    """A ranking model known to the registry."""

    id: str = Field(pattern=_ID_PATTERN)
    version: str = "1"
    description: str = ""
    refresh_minutes: int | None = Field(default=None, gt=0)
    training_ne: float | None = Field(default=None, gt=0)
    ms_per_request: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Declared serving cost: CPU milliseconds per request on the serving tier "
        "(issue 18); the preflight's resource estimate uses it before the replay's measurement.",
    )
    memory_gb: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Declared memory the model needs on the serving tier, in GB.",
    )


class Arm(_Strict):
    """One arm of an experiment: a traffic weight and the parameters it serves."""

    weight: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="Relative weight; arms need not sum to 1.",
    )
    model: str | None = Field(default=None, description="Model id this arm serves.")
    ad_load: float | None = Field(
        default=None, gt=0, le=3, allow_inf_nan=False, description="Ad load multiplier."
    )
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)


class RolloutStage(_Strict):
    """A stage of the gradual rollout: the share of the experiment's units enrolled."""

    percent: float = Field(gt=0, le=100)
    min_minutes: int = Field(default=60, ge=0, description="Minimum time at this stage.")


class RolloutPlan(_Strict):
    """Stages whose percentages strictly increase; the last stage is the full experiment."""

    stages: list[RolloutStage] = Field(
        default_factory=lambda: [RolloutStage(percent=p) for p in (5.0, 25.0, 50.0, 100.0)]
    )
    on_harm: OnHarm = Field(
        default="pause_and_alert",
        description="The owner's standing decision when the gate finds harm or an SRM: "
        "ramp_down (one stage back), kill (the experiment's kill switch), or pause_and_alert "
        "(change nothing, hold the ramp and fire an alert that opens an investigation).",
    )
    shadow: bool = Field(
        default=False,
        description="Run in shadow mode before the first stage (issue 18): the candidate scores "
        "its arm's live requests but control's answer is served; its predictions are logged to "
        "the shadow_predictions table and judged by the preflight.",
    )
    shadow_minutes: int = Field(
        default=60,
        ge=0,
        description="Minimum time in shadow mode before the rollout controller judges the "
        "shadow run; when its checks pass (none fails, none could not tell) the experiment moves "
        "to its first stage, when one fails it is paused.",
    )

    @field_validator("stages")
    @classmethod
    def _increasing(cls, stages: list[RolloutStage]) -> list[RolloutStage]:
        if not stages:
            raise _invalid("", stages, "a rollout plan needs at least one stage")
        for i in range(1, len(stages)):
            if stages[i].percent <= stages[i - 1].percent:
                raise _invalid(
                    f"[{i}].percent",
                    stages[i].percent,
                    f"rollout stages must increase: stage {i} does not exceed stage {i - 1} "
                    f"({stages[i - 1].percent:g} %)",
                )
        return stages


class Guardrail(_Strict):
    """A metric the health gate watches; a regression beyond ``max_regression`` rolls back."""

    metric: GuardrailMetric
    max_regression: float = Field(
        default=0.02, ge=0, description="Largest tolerated relative regression (0.02 = 2 %)."
    )


class Experiment(_Strict):
    """An experiment: a share of a layer's units split across arms, rolled out in stages."""

    id: str = Field(pattern=_ID_PATTERN)
    name: str = Field(min_length=1)
    description: str = ""
    owner: str = Field(min_length=1, description="Who answers for it; may approve mitigations.")
    layer: str
    traffic_pct: float = Field(gt=0, le=100, description="Share of the layer's units, percent.")
    arms: dict[str, Arm]
    control: str = "control"
    targeting: dict[str, list[str]] = Field(
        default_factory=dict, description="Request property -> allowed values (all must match)."
    )
    rollout: RolloutPlan = Field(default_factory=RolloutPlan)
    guardrails: list[Guardrail] = Field(
        default_factory=lambda: [Guardrail(metric="revenue_per_request"), Guardrail(metric="srm")]
    )
    forced: dict[str, str] = Field(
        default_factory=dict, description="unit id -> arm, for testing (bypasses bucketing)."
    )

    @field_validator("owner")
    @classmethod
    def _owner_present(cls, owner: str) -> str:
        if not owner.strip():
            raise _invalid("", owner, "an experiment needs an owner")
        return owner

    @model_validator(mode="after")
    def _arms_consistent(self) -> Experiment:
        arms = list(self.arms)
        if len(arms) < 2:
            raise _invalid("arms", arms, "an experiment needs at least two arms")
        if self.control not in self.arms:
            raise _invalid("control", self.control, f"the control arm is not one of {arms}")
        for unit, arm in self.forced.items():
            if arm not in self.arms:
                raise _invalid(f"forced.{unit}", arm, f"a forced arm must be one of {arms}")
        for prop, values in self.targeting.items():
            if not values:
                raise _invalid(f"targeting.{prop}", values, "needs at least one allowed value")
        seen: set[str] = set()
        for i, guardrail in enumerate(self.guardrails):
            if guardrail.metric in seen:
                raise _invalid(f"guardrails[{i}].metric", guardrail.metric, "duplicate guardrail")
            seen.add(guardrail.metric)
        return self

    @property
    def models(self) -> set[str]:
        """Model ids any arm serves."""
        return {a.model for a in self.arms.values() if a.model}


class ExperimentFile(_Strict):
    """What ``vigil experiments validate|create -f FILE`` reads."""

    layers: list[Layer] = Field(default_factory=list)
    models: list[ModelEntry] = Field(default_factory=list)
    experiments: list[Experiment] = Field(default_factory=list)
