"""Whole-world validation of experiment configuration, run before any state change.

:mod:`lifecycle.config` checks one object at a time (weights, stages, owner). This module checks
what needs the rest of the world: the layer an experiment lives in and how much of it is taken,
the model registry, id uniqueness, and the targeting vocabulary (known request properties and
their values). It also loads YAML/JSON files and turns pydantic's errors into
:class:`~tools.errors.ConfigError` naming the dotted field path and the value.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from lifecycle.config import CONFIG_ERROR_TYPE, Experiment, ExperimentFile, Layer, ModelEntry
from tools.errors import ConfigError, ConfigProblems

__all__ = [
    "DEFAULT_VOCABULARY",
    "Occupied",
    "World",
    "check_file",
    "config_errors",
    "did_you_mean",
    "known_keys",
    "load_experiment_file",
    "make_vocabulary",
    "parse_experiment_file",
    "plan_ranges",
    "validate_file",
]

_COUNTRIES = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""

DEFAULT_VOCABULARY: Mapping[str, frozenset[str]] = {
    "country": frozenset(_COUNTRIES.split()),  # ISO 3166-1 alpha-2
    "platform": frozenset({"ios", "android", "web", "ctv"}),
    "ad_type": frozenset(
        {"banner", "native", "video", "interstitial", "rewarded", "search", "display", "feed"}
    ),
    "device_type": frozenset({"phone", "tablet", "desktop", "tv"}),
}
"""Known request properties and their values; an empty set means any value is allowed."""


def make_vocabulary(
    overrides: Mapping[str, Collection[str]] | None = None,
) -> dict[str, frozenset[str]]:
    """The default vocabulary with ``overrides`` (property -> values; empty = any) laid over it."""
    vocabulary = dict(DEFAULT_VOCABULARY)
    for prop, values in (overrides or {}).items():
        vocabulary[prop] = frozenset(values)
    return vocabulary


# --- loading ---------------------------------------------------------------------------------


def _path(loc: Sequence[int | str], extra: str = "") -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if extra:
        out += extra if extra.startswith("[") or not out else f".{extra}"
    return out or "<root>"


_LONGEST = 60


class _Brief:
    """A long value shown shortened in a message (an unknown key's whole list, say)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        text = repr(self.value)
        return text[: _LONGEST - 5] + " ...]" if text.startswith("[") else text[:_LONGEST] + "..."


def _models_in(annotation: Any) -> list[Any]:
    """The types an annotation may hold, unwrapped from Optional, Annotated, list and dict."""
    origin = get_origin(annotation)
    if origin is None:
        return [annotation]
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin in (list, tuple, set, frozenset, Sequence) or str(origin).endswith("Annotated"):
        return _models_in(args[0]) if args else []
    if origin in (dict, Mapping):
        return _models_in(args[-1]) if args else []
    return [t for a in args for t in _models_in(a)]  # Union


def known_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys valid in the mapping at ``loc`` (the parent of the bad key) of ``model``."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for kind in current:
            if isinstance(part, int):
                continue  # list items were unwrapped with the field
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found = kind.model_fields.get(part)
                if found is not None:
                    nxt.extend(_models_in(found.annotation))
                    continue
        # A part no model declares is a dict key (an arm's name): the values' type stays.
        current = nxt or current
    keys: list[str] = []
    for kind in current:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys.extend(kind.model_fields)
    return keys


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """`` did you mean `x`?`` for the valid key nearest ``key`` ("" when none is near)."""
    nearest = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean `{nearest[0]}`?" if nearest else ""


def config_errors(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[ConfigError]:
    """Turn pydantic's errors into ConfigErrors naming the dotted field path and the value.

    Args:
        exc: The validation error.
        prefix: Path of the validated object within a larger document.
        model: The validated model; with it an unknown key names the nearest valid key
            ("did you mean `traffic_pct`?") and a missing field names a near unknown key.
    """
    errors = exc.errors()
    unknown = {tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"}
    out: list[ConfigError] = []
    for err in errors:
        loc: list[int | str] = [prefix] if prefix else []
        loc.extend(err["loc"])
        ctx = err.get("ctx") or {}
        if err["type"] == CONFIG_ERROR_TYPE:
            out.append(
                ConfigError(_path(loc, str(ctx.get("path", ""))), ctx.get("value"), err["msg"])
            )
            continue
        value = None if err["type"] == "missing" else err.get("input")
        message = {
            "missing": "a required field is missing",
            "extra_forbidden": "unknown key",
        }.get(err["type"], err["msg"])
        if err["type"] == "extra_forbidden" and len(repr(value)) > _LONGEST:
            value = _Brief(value)
        here = tuple(err["loc"])
        if model is not None and here and isinstance(here[-1], str):
            parent = here[:-1]
            if err["type"] == "extra_forbidden":
                message += did_you_mean(here[-1], known_keys(model, parent))
            elif err["type"] == "missing":
                near = [str(u[-1]) for u in unknown if u[:-1] == parent]
                hint = did_you_mean(here[-1], near).replace("did you mean", "is it")
                message += hint.replace("`?", "`, misspelled?") if hint else ""
        out.append(ConfigError(_path(loc), value, message))
    return out


def parse_experiment_file(data: object, source: str = "<data>") -> ExperimentFile:
    """Validate a decoded document as an :class:`ExperimentFile`.

    Raises:
        ConfigError: Naming the dotted path (``experiments[1].arms.test.weight``) and value of
            the problem; a :class:`~tools.errors.ConfigProblems` holding every one when several.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(source, type(data).__name__, "an experiment file is a mapping")
    try:
        return ExperimentFile.model_validate(data)
    except ValidationError as exc:
        errors = config_errors(exc, model=ExperimentFile)
        raise (errors[0] if len(errors) == 1 else ConfigProblems(errors)) from None


def load_experiment_file(path: str | Path) -> ExperimentFile:
    """Read an experiment file: YAML (``.yaml``/``.yml``) or JSON (anything else).

    Raises:
        ConfigError: For an unreadable file, a syntax error, or an invalid document.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("file", str(path), f"cannot read the file: {exc.strerror}") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError("file", str(path), f"not valid YAML/JSON: {exc}") from None
    return parse_experiment_file(data, source=str(path))


# --- the world a file is checked against -----------------------------------------------------


@dataclass(frozen=True)
class Occupied:
    """A part of a layer held by a stored experiment (percent of the layer)."""

    experiment_id: str
    start: float
    end: float


@dataclass(frozen=True)
class World:
    """What is already stored: a file is checked against it.

    Attributes:
        layers: Layer id -> layer.
        models: Model id -> version -> registry entry.
        experiment_ids: Every stored experiment id (ids are never reused).
        occupied: Layer id -> ranges held by experiments that are not completed.
    """

    layers: Mapping[str, Layer] = field(default_factory=dict)
    models: Mapping[str, Mapping[str, ModelEntry]] = field(default_factory=dict)
    experiment_ids: frozenset[str] = frozenset()
    occupied: Mapping[str, Sequence[Occupied]] = field(default_factory=dict)


def _free_gaps(taken: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    gaps, cursor = [], 0.0
    for start, end in sorted(taken):
        if start > cursor + 1e-9:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < 100.0 - 1e-9:
        gaps.append((cursor, 100.0))
    return gaps


def plan_ranges(
    experiments: Sequence[Experiment], world: World
) -> tuple[dict[str, tuple[float, float]], list[ConfigError]]:
    """Give each new experiment the first free part of its layer that fits (first fit).

    Returns:
        Experiment id -> (start, end) percent of its layer, and the over-allocation problems
        (``experiments[i].traffic_pct``), one per experiment that does not fit.
    """
    return _plan(list(enumerate(experiments)), world)


def _plan(
    experiments: Sequence[tuple[int, Experiment]], world: World
) -> tuple[dict[str, tuple[float, float]], list[ConfigError]]:
    taken: dict[str, list[tuple[float, float]]] = {
        layer: [(o.start, o.end) for o in occ] for layer, occ in world.occupied.items()
    }
    ranges: dict[str, tuple[float, float]] = {}
    problems: list[ConfigError] = []
    for i, exp in experiments:
        held = taken.setdefault(exp.layer, [])
        gaps = _free_gaps(held)
        fit = next((g for g in gaps if g[1] - g[0] >= exp.traffic_pct - 1e-9), None)
        if fit is None:
            used = sum(end - start for start, end in held)
            if used + exp.traffic_pct > 100.0 + 1e-9:
                why = (
                    f"layer {exp.layer!r} over-allocated: {used:g} % in use + "
                    f"{exp.traffic_pct:g} % requested > 100 %"
                )
            else:
                why = (
                    f"layer {exp.layer!r} has {100.0 - used:g} % free but no contiguous "
                    f"{exp.traffic_pct:g} % range"
                )
            problems.append(ConfigError(f"experiments[{i}].traffic_pct", exp.traffic_pct, why))
            continue
        rng = (fit[0], min(100.0, fit[0] + exp.traffic_pct))
        ranges[exp.id] = rng
        held.append(rng)
    return ranges, problems


def _differs(new: Layer | ModelEntry, old: Layer | ModelEntry) -> str | None:
    for name in type(new).model_fields:
        if getattr(new, name) != getattr(old, name):
            return name
    return None


def _check_targeting(
    i: int, exp: Experiment, vocabulary: Mapping[str, frozenset[str]]
) -> list[ConfigError]:
    problems = []
    for prop, values in exp.targeting.items():
        where = f"experiments[{i}].targeting.{prop}"
        if prop not in vocabulary:
            known = sorted(vocabulary)
            problems.append(ConfigError(where, prop, f"unknown request property; known: {known}"))
            continue
        allowed = vocabulary[prop]
        for k, value in enumerate(values):
            if allowed and value not in allowed:
                shown = sorted(allowed) if len(allowed) <= 12 else f"{len(allowed)} known values"
                problems.append(
                    ConfigError(f"{where}[{k}]", value, f"unknown value of {prop!r} ({shown})")
                )
    return problems


def check_file(
    file: ExperimentFile,
    world: World | None = None,
    vocabulary: Mapping[str, frozenset[str]] | None = None,
) -> list[ConfigError]:
    """Every whole-world problem of a file, in file order (empty when it may be created).

    Args:
        file: The parsed file.
        world: What is already stored (empty by default).
        vocabulary: Known request properties and values (:data:`DEFAULT_VOCABULARY`).
    """
    world = world or World()
    vocabulary = DEFAULT_VOCABULARY if vocabulary is None else vocabulary
    problems: list[ConfigError] = []

    layers: dict[str, Layer] = dict(world.layers)
    seen_layers: set[str] = set()
    for j, layer in enumerate(file.layers):
        if layer.id in seen_layers:
            problems.append(ConfigError(f"layers[{j}].id", layer.id, "duplicate layer id"))
            continue
        seen_layers.add(layer.id)
        old = world.layers.get(layer.id)
        diff = None if old is None else _differs(layer, old)
        if diff is not None:
            problems.append(
                ConfigError(
                    f"layers[{j}].{diff}",
                    getattr(layer, diff),
                    f"layer {layer.id!r} exists with {diff}={getattr(old, diff)!r}",
                )
            )
        layers[layer.id] = layer

    models = {m: set(versions) for m, versions in world.models.items()}
    seen_models: set[tuple[str, str]] = set()
    for j, model in enumerate(file.models):
        key = (model.id, model.version)
        if key in seen_models:
            problems.append(
                ConfigError(f"models[{j}].id", model.id, f"duplicate model version {model.version}")
            )
            continue
        seen_models.add(key)
        old_model = world.models.get(model.id, {}).get(model.version)
        diff = None if old_model is None else _differs(model, old_model)
        if diff is not None:
            problems.append(
                ConfigError(
                    f"models[{j}].{diff}",
                    getattr(model, diff),
                    f"model {model.id!r} version {model.version} is registered with "
                    f"{diff}={getattr(old_model, diff)!r}",
                )
            )
        models.setdefault(model.id, set()).add(model.version)

    seen_ids: set[str] = set()
    for i, exp in enumerate(file.experiments):
        if exp.id in seen_ids:
            problems.append(ConfigError(f"experiments[{i}].id", exp.id, "duplicate experiment id"))
        elif exp.id in world.experiment_ids:
            problems.append(ConfigError(f"experiments[{i}].id", exp.id, "experiment id exists"))
        seen_ids.add(exp.id)
        if exp.layer not in layers:
            problems.append(
                ConfigError(
                    f"experiments[{i}].layer", exp.layer, f"unknown layer; known: {sorted(layers)}"
                )
            )
        for arm_name, arm in exp.arms.items():
            if arm.model is not None and arm.model not in models:
                problems.append(
                    ConfigError(
                        f"experiments[{i}].arms.{arm_name}.model",
                        arm.model,
                        "unknown model id (not in the model registry)",
                    )
                )
        problems.extend(_check_targeting(i, exp, vocabulary))

    placeable = [(i, e) for i, e in enumerate(file.experiments) if e.layer in layers]
    problems.extend(_plan(placeable, world)[1])
    return problems


def validate_file(
    file: ExperimentFile,
    world: World | None = None,
    vocabulary: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, tuple[float, float]]:
    """Validate a file against the world and plan the layer ranges of its experiments.

    Returns:
        Experiment id -> (start, end) percent of its layer.

    Raises:
        ConfigError: The first problem :func:`check_file` finds.
    """
    problems = check_file(file, world, vocabulary)
    if problems:
        raise problems[0]
    ranges, _ = plan_ranges(file.experiments, world or World())
    return ranges
