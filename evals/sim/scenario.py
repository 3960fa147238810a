"""The scenario format (``docs/scenarios.md``): pydantic models (``extra="forbid"``), the loader.

A scenario is a world (traffic, models, experiments), zero or more injected faults, the alert that
fired and what an investigation should conclude. Unknown keys are errors naming the key; every
cross-reference (an arm's model, a fault's experiment, arm, model or ``where`` value) is checked
when the scenario is loaded, and the :class:`~tools.errors.ConfigError` names the field path, e.g.
``faults[0].arm``.

Keys the simulator adds to DESIGN §7 (all optional):

- ``world.units``: size of the unit (user) pool; default ``20 × requests_per_minute``.
- ``world.candidates``: candidate ads per request (2..16, default 4).
- ``world.fallback_model``: id of one of ``models`` used as the fallback (default: a built-in model
  of quality 0.5).
- ``world.experiments[].start_minute`` / ``end_minute``: launch and stop of an experiment
  (default: running for the whole world); ``owner``, ``description``, ``control`` (default
  ``control``) and, per arm, ``weight`` (default 1).
- ``world.models[].version``: version string of a model that does not refresh (default ``"1"``).
- ``faults[].mode``: for ``prediction_collapse``, what the bad predictions look like: ``nan``,
  ``out_of_range``, ``constant`` or ``mixed`` (default, a third each).
- ``tags``: free labels for grouping scenarios (``red_herring``, ``subtle`` ...).
- ``world.experiments[].shadow``: shadow mode (issue 18): lifecycle's allocation serves control to
  every enrolled unit and the candidates of the arms units drew score their requests into the
  ``shadow_predictions`` table instead (``evals.sim.shadow``); with a ``rollout`` the controller
  judges that run and ends it or pauses the experiment (``expect.rollout.shadow``).
- ``expect.signal_strength``: the fault's size relative to the effect detectable with its data at
  the alert (``evals.generate.strength``); the eval's curve groups rows by it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from agent.models import AlertMetric, Cause, MitigationAction
from lifecycle.config import Guardrail, OnHarm, RolloutStage
from tools.errors import ConfigError, ConfigProblems, NotFoundError

__all__ = [
    "DEFAULT_DIMENSIONS",
    "DIMENSIONS",
    "FAULT_KINDS",
    "AlertSpec",
    "ArmSpec",
    "Dimension",
    "ExpectSpec",
    "ExperimentSpec",
    "FaultKind",
    "FaultSpec",
    "ModelSpec",
    "RampExpect",
    "RampSpec",
    "Scenario",
    "WorldSpec",
    "load_scenario",
    "parse_scenario",
]

Dimension = Literal["country", "platform", "ad_type"]
DIMENSIONS: tuple[str, ...] = get_args(Dimension)
FaultKind = Literal[
    "prediction_collapse",
    "miscalibration",
    "ne_regression",
    "stale_model",
    "model_fallback",
    "infra_outage",
    "allocation_bug",
    "logging_loss",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
SHARE_KINDS = frozenset(
    {"prediction_collapse", "model_fallback", "infra_outage", "allocation_bug", "logging_loss"}
)
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
MAX_REQUESTS_PER_MINUTE = 5_000_000

# The mix a world gets for each dimension it does not list (shares per value).
DEFAULT_DIMENSIONS: dict[str, dict[str, float]] = {
    "country": {"US": 0.35, "GB": 0.1, "DE": 0.1, "BR": 0.15, "IN": 0.2, "JP": 0.1},
    "platform": {"ios": 0.4, "android": 0.45, "web": 0.15},
    "ad_type": {"feed": 0.6, "story": 0.25, "video": 0.15},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A ranking model of the world."""

    id: str = Field(pattern=_ID)
    quality: float = Field(ge=0, le=1, description="How well the model ranks: 1 is perfect.")
    refresh_minutes: int | None = Field(default=None, gt=0, description="Publication cadence.")
    version: str = Field(default="1", min_length=1, description="Version of a static model.")


class ArmSpec(_Strict):
    """An arm: the model it serves and/or an ad-load multiplier."""

    model: str | None = None
    ad_load: float | None = Field(default=None, gt=0, le=3)
    weight: float = Field(default=1.0, gt=0)


def _default_guardrails() -> list[Guardrail]:
    return [Guardrail(metric="revenue_per_request"), Guardrail(metric="srm")]


class RampSpec(_Strict):
    """A gradual rollout the simulator drives through lifecycle's rollout controller."""

    stages: list[RolloutStage] = Field(min_length=1)
    on_harm: OnHarm = "pause_and_alert"
    guardrails: list[Guardrail] = Field(default_factory=_default_guardrails)
    tick_minutes: int = Field(default=1, ge=1, le=60)


class ExperimentSpec(_Strict):
    """An experiment of the world (a ``lifecycle`` experiment once converted)."""

    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1)
    layer: str = Field(pattern=_ID)
    traffic_pct: float | None = Field(default=None, gt=0, le=100)
    rollout: RampSpec | None = None
    arms: dict[str, ArmSpec] = Field(min_length=2)
    control: str = "control"
    owner: str = Field(default="sim", min_length=1)
    description: str = ""
    start_minute: int = Field(default=0, ge=0, description="Launch minute.")
    end_minute: int | None = Field(default=None, gt=0, description="Stop minute (exclusive).")
    shadow: bool = Field(
        default=False,
        description="Shadow mode: every enrolled unit is served control; the model of the arm "
        "it drew scores its requests in shadow (evals.sim.shadow logs shadow_predictions).",
    )

    @property
    def layer_pct(self) -> float:
        """Share of its layer the experiment owns: ``traffic_pct``, or all of it when ramped."""
        return self.traffic_pct if self.traffic_pct is not None else 100.0


class WorldSpec(_Strict):
    """Traffic, dimensions, models and experiments."""

    start: datetime
    minutes: int = Field(gt=0, le=60 * 24 * 14)
    requests_per_minute: int = Field(gt=0, le=MAX_REQUESTS_PER_MINUTE)
    base_ctr: float = Field(default=0.02, gt=0, lt=0.5)
    diurnal: bool = False
    dimensions: dict[Dimension, dict[str, float]] = Field(default_factory=dict)
    models: list[ModelSpec] = Field(min_length=1)
    production_model: str
    fallback_model: str | None = None
    experiments: list[ExperimentSpec] = Field(default_factory=list)
    units: int | None = Field(default=None, ge=100, le=50_000_000)
    candidates: int = Field(default=4, ge=2, le=16)

    def dimension_mix(self) -> dict[str, dict[str, float]]:
        """Every dimension's shares (the default mix where none is given), normalised to 1."""
        out: dict[str, dict[str, float]] = {}
        for dim in DIMENSIONS:
            shares = self.dimensions.get(dim) or DEFAULT_DIMENSIONS[dim]  # type: ignore[call-overload]
            total = sum(shares.values())
            out[dim] = {value: share / total for value, share in shares.items()}
        return out


class FaultSpec(_Strict):
    """An injected fault: kind, scope (experiment arm, model or all), filter, window, severity."""

    kind: FaultKind
    experiment: str | None = None
    arm: str | None = None
    model: str | None = None
    where: dict[Dimension, str | list[str]] = Field(default_factory=dict)
    start_minute: int = Field(ge=0)
    end_minute: int | None = Field(default=None, gt=0)
    severity: float
    mode: Literal["mixed", "nan", "out_of_range", "constant"] | None = None


class AlertSpec(_Strict):
    """The alert that fired."""

    metric: AlertMetric
    minute: int = Field(ge=0)
    experiment: str | None = None


class RampExpect(_Strict):
    """What the rollout controller should do with a ramped experiment (``expect.rollout``)."""

    experiment: str
    rolled_back: bool
    before_pct: float | None = Field(
        default=None, gt=0, le=100, description="Rolled back before more of the layer enrolled."
    )
    full: bool = Field(default=False, description="Reaches full rollout (``running``).")
    shadow: Literal["passed", "failed"] | None = Field(
        default=None,
        description="How the controller ends its shadow run: passed (to its first stage) or "
        "failed (paused before any unit was served a candidate).",
    )


class PreflightExpect(_Strict):
    """What the preflight should decide for an experiment before start (``expect.preflight``)."""

    experiment: str
    decision: Literal["stop", "pass"] = Field(
        description="stop: refused (red); pass: allowed to start or sent for approval."
    )


class ExpectSpec(_Strict):
    """What an investigation should conclude (read by the scorer)."""

    root_cause: Cause
    experiment: str | None = None
    onset_minute: float | None = Field(default=None, ge=0)
    mitigation: MitigationAction | None = None
    rollout: RampExpect | None = None
    preflight: list[PreflightExpect] = Field(default_factory=list)
    signal_strength: float | None = Field(
        default=None, ge=0, description="Fault size ÷ detectable effect (evals.generate.strength)."
    )


class Scenario(_Strict):
    """A whole scenario file. Cross-references are checked after the fields."""

    name: str = Field(pattern=_ID)
    description: str = ""
    seed: int = Field(default=0, ge=0)
    tags: list[str] = Field(default_factory=list)
    world: WorldSpec
    faults: list[FaultSpec] = Field(default_factory=list)
    alert: AlertSpec
    expect: ExpectSpec

    @model_validator(mode="after")
    def _cross_check(self) -> Scenario:
        _check_world(self.world)
        for i, fault in enumerate(self.faults):
            _check_fault(self.world, fault, f"faults[{i}]")
        exp_ids = {e.id for e in self.world.experiments}
        if self.alert.experiment is not None and self.alert.experiment not in exp_ids:
            raise ConfigError("alert.experiment", self.alert.experiment, "unknown experiment")
        if self.expect.experiment is not None and self.expect.experiment not in exp_ids:
            raise ConfigError("expect.experiment", self.expect.experiment, "unknown experiment")
        for i, pre in enumerate(self.expect.preflight):
            if pre.experiment not in exp_ids:
                raise ConfigError(
                    f"expect.preflight[{i}].experiment", pre.experiment, "unknown experiment"
                )
        ramp = self.expect.rollout
        if ramp is not None and self.experiments.get(ramp.experiment, None) is None:
            raise ConfigError("expect.rollout.experiment", ramp.experiment, "unknown experiment")
        if ramp is not None and self.experiments[ramp.experiment].rollout is None:
            raise ConfigError("expect.rollout.experiment", ramp.experiment, "has no rollout")
        onset = self.expect.onset_minute
        if onset is not None and self.alert.minute <= onset:
            raise ConfigError(
                "alert.minute", self.alert.minute, f"the alert must fire after the onset ({onset})"
            )
        return self

    @property
    def experiments(self) -> dict[str, ExperimentSpec]:
        """Experiments by id."""
        return {e.id: e for e in self.world.experiments}

    @property
    def models(self) -> dict[str, ModelSpec]:
        """Models by id."""
        return {m.id: m for m in self.world.models}

    @property
    def start(self) -> datetime:
        """World start as a naive UTC datetime (the telemetry's convention)."""
        start = self.world.start
        if start.tzinfo is not None:
            start = start.astimezone(UTC).replace(tzinfo=None)
        return start


def fault_arm(scenario: Scenario, fault: FaultSpec) -> str | None:
    """The arm an experiment fault hits: as given, else ``test``, else the only treatment arm."""
    if fault.experiment is None:
        return None
    if fault.arm is not None:
        return fault.arm
    exp = scenario.experiments[fault.experiment]
    return _default_arm(exp)


def _default_arm(exp: ExperimentSpec) -> str | None:
    if "test" in exp.arms:
        return "test"
    treatments = [a for a in exp.arms if a != exp.control]
    return treatments[0] if len(treatments) == 1 else None


def _check_world(world: WorldSpec) -> None:
    models = {}
    for i, m in enumerate(world.models):
        if m.id in models:
            raise ConfigError(f"world.models[{i}].id", m.id, "duplicate model id")
        models[m.id] = m
    if world.production_model not in models:
        raise ConfigError("world.production_model", world.production_model, "unknown model")
    if world.fallback_model is not None and world.fallback_model not in models:
        raise ConfigError("world.fallback_model", world.fallback_model, "unknown model")
    for dim, shares in world.dimensions.items():
        field = f"world.dimensions.{dim}"
        if not shares:
            raise ConfigError(field, shares, "needs at least one value")
        for value, share in shares.items():
            if not share > 0:
                raise ConfigError(f"{field}.{value}", share, "a share must be positive")
        total = sum(shares.values())
        if abs(total - 1.0) > 0.01:
            raise ConfigError(field, total, "shares must sum to 1")
    seen: set[str] = set()
    layer_pct: dict[str, float] = {}
    for i, e in enumerate(world.experiments):
        field = f"world.experiments[{i}]"
        if e.id in seen:
            raise ConfigError(f"{field}.id", e.id, "duplicate experiment id")
        seen.add(e.id)
        if e.control not in e.arms:
            raise ConfigError(f"{field}.control", e.control, f"not one of the arms {list(e.arms)}")
        for arm, spec in e.arms.items():
            if spec.model is not None and spec.model not in models:
                raise ConfigError(f"{field}.arms.{arm}.model", spec.model, "unknown model")
        if e.end_minute is not None and e.end_minute <= e.start_minute:
            raise ConfigError(f"{field}.end_minute", e.end_minute, "must be after start_minute")
        if (e.traffic_pct is None) == (e.rollout is None):
            raise ConfigError(
                f"{field}.traffic_pct",
                e.traffic_pct,
                "give exactly one of traffic_pct (a fixed share) and rollout (a ramp)",
            )
        if e.rollout is not None:
            _check_ramp(e.rollout, f"{field}.rollout")
        layer_pct[e.layer] = layer_pct.get(e.layer, 0.0) + e.layer_pct
        if layer_pct[e.layer] > 100.0 + 1e-9:
            what = "traffic_pct" if e.rollout is None else "rollout"
            raise ConfigError(
                f"{field}.{what}",
                e.traffic_pct if e.rollout is None else "a ramp owns its whole layer",
                f"layer {e.layer!r} over-allocated: {layer_pct[e.layer]:g} % > 100 %",
            )


def _check_ramp(ramp: RampSpec, field: str) -> None:
    for i in range(1, len(ramp.stages)):
        if ramp.stages[i].percent <= ramp.stages[i - 1].percent:
            raise ConfigError(
                f"{field}.stages[{i}].percent",
                ramp.stages[i].percent,
                f"rollout stages must increase (stage {i - 1} is {ramp.stages[i - 1].percent:g} %)",
            )
    seen: set[str] = set()
    for i, g in enumerate(ramp.guardrails):
        if g.metric in seen:
            raise ConfigError(f"{field}.guardrails[{i}].metric", g.metric, "duplicate guardrail")
        seen.add(g.metric)


def _check_fault(world: WorldSpec, fault: FaultSpec, field: str) -> None:
    exps = {e.id: e for e in world.experiments}
    models = {m.id: m for m in world.models}
    if fault.experiment is not None and fault.model is not None:
        raise ConfigError(f"{field}.model", fault.model, "give experiment or model, not both")
    if fault.arm is not None and fault.experiment is None:
        raise ConfigError(f"{field}.arm", fault.arm, "an arm needs an experiment")
    if fault.experiment is not None:
        exp = exps.get(fault.experiment)
        if exp is None:
            raise ConfigError(f"{field}.experiment", fault.experiment, "unknown experiment")
        arm = fault.arm if fault.arm is not None else _default_arm(exp)
        if arm is None or arm not in exp.arms:
            raise ConfigError(
                f"{field}.arm", fault.arm or "test", f"not one of the arms {list(exp.arms)}"
            )
    if fault.model is not None and fault.model not in models:
        raise ConfigError(f"{field}.model", fault.model, "unknown model")
    if fault.end_minute is not None and fault.end_minute <= fault.start_minute:
        raise ConfigError(f"{field}.end_minute", fault.end_minute, "must be after start_minute")
    if fault.mode is not None and fault.kind != "prediction_collapse":
        raise ConfigError(f"{field}.mode", fault.mode, "only prediction_collapse takes a mode")
    for dim, wanted in fault.where.items():
        known = world.dimension_mix()[dim]
        for value in [wanted] if isinstance(wanted, str) else wanted:
            if value not in known:
                raise ConfigError(
                    f"{field}.where.{dim}", value, f"not one of the values {list(known)}"
                )
    _check_severity(fault, field)
    if fault.kind == "allocation_bug" and fault.experiment is None:
        raise ConfigError(f"{field}.experiment", None, "allocation_bug needs an experiment")
    if fault.kind == "stale_model":
        model = fault.model
        if fault.experiment is not None:
            arm = fault.arm if fault.arm is not None else _default_arm(exps[fault.experiment])
            model = exps[fault.experiment].arms[str(arm)].model or world.production_model
        for mid in [model] if model is not None else [m.id for m in world.models]:
            if models[mid].refresh_minutes is None:
                raise ConfigError(
                    f"{field}.kind", fault.kind, f"model {mid!r} has no refresh_minutes to stop"
                )


def _check_severity(fault: FaultSpec, field: str) -> None:
    s = fault.severity
    if fault.kind in SHARE_KINDS:
        ok, what = 0 < s <= 1, "a share in (0, 1]"
    elif fault.kind == "miscalibration":
        ok, what = 0 < s <= 10 and s != 1, "a factor > 0 other than 1"
    else:
        ok, what = 0 < s <= 5, "a positive number up to 5"
    if not ok:
        raise ConfigError(f"{field}.severity", s, f"{fault.kind} severity must be {what}")


# --- loading ---------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in out:
            raise ConfigError(str(key), key, f"duplicate key (line {key_node.start_mark.line + 1})")
        out[key] = loader.construct_object(value_node)
    return out


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "scenario"


def parse_scenario(data: Any, *, source: str = "scenario") -> Scenario:
    """Validate already-parsed YAML/JSON data as a :class:`Scenario`.

    Raises:
        ConfigError: Naming the bad field (an unknown key with the nearest valid one); a
            :class:`~tools.errors.ConfigProblems` holding every problem when there are several.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, type(data).__name__, "a scenario is a mapping")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = {tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"}
        problems = [_problem(e, unknown) for e in errors]
        raise (problems[0] if len(problems) == 1 else ConfigProblems(problems)) from None


def _problem(err: ErrorDetails, unknown: set[tuple[int | str, ...]]) -> ConfigError:
    """One pydantic error as a ConfigError in the style of ``vigil experiments validate``."""
    from lifecycle.validation import did_you_mean, known_keys

    loc = tuple(err["loc"])
    field = _loc(loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        message = "unknown key" + did_you_mean(key, known_keys(Scenario, loc[:-1]))
    elif loc[-1:] == ("[key]",):
        message = f"unknown key: {err['msg']}"
    elif err["type"] == "missing":
        value, message = None, "a required field is missing"
        near = [str(u[-1]) for u in unknown if u[:-1] == loc[:-1]]
        hint = did_you_mean(str(loc[-1]), near)
        message += hint.replace("did you mean", "is it").replace("`?", "`, misspelled?")
    else:
        message = err["msg"]
    return ConfigError(field, value, message)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file.

    Args:
        path: The file.

    Returns:
        The validated scenario.

    Raises:
        NotFoundError: When the file does not exist.
        ConfigError: On bad YAML, an unknown key or a bad value, naming the field.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("scenario file", str(path))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"not valid YAML: {exc}") from None
    return parse_scenario(data, source=str(path))
