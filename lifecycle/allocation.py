"""Deterministic allocation: pure functions over an immutable configuration snapshot.

The design follows GrowthBook's ``core.py``: a salted hash puts each unit in a bucket of its layer;
experiments own disjoint bucket ranges of the layer, so two experiments of one layer never share a
unit; a second hash salted by the experiment picks the arm. Rollout coverage enrols the first part
of the experiment's range, so ramping up only adds units and ramping down only removes them, and a
unit keeps its arm across stages.

Shadow mode (issue 18): an experiment in ``shadow`` holds its range and its units draw arms as if
it ran, but it serves nobody (step 7 of :func:`decide`): every unit is served what it would be
without the experiment (production: control's model), and no exposure is logged for it, so its
SRM and its guardrails start clean when it ramps. The arm a unit drew (:func:`drawn_arm`) is
reported apart by :mod:`lifecycle.shadow`, so the serving code scores that arm's model beside what
it serves and logs it to ``shadow_predictions`` without showing it to anyone.

Hash: a unit id that is an ``int`` is its own 64-bit key; a ``str`` is keyed by ``xxh3_64`` of its
UTF-8 bytes (so ``"42"`` and ``42`` are different units). The key is mixed with a salt by the
SplitMix64 finaliser, which is exact in both pure Python and NumPy ``uint64`` arithmetic.

Allocation is written once: :func:`decide` is the reference, with its steps numbered;
:func:`assign_many` is its vectorised form and ``lifecycle.allocator`` compiles a per-request
fast path from the same constants (:data:`MASK64`, :data:`SPLITMIX64`). Tests check all three
against :func:`decide` and against the golden vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import xxhash

from lifecycle.config import Experiment, Layer
from tools.errors import ConfigError, NotFoundError

__all__ = [
    "ACTIVE_STATUSES",
    "ALLOCATING_STATUSES",
    "BUCKETS",
    "MASK64",
    "SPLITMIX64",
    "CompiledExperiment",
    "ConfigSnapshot",
    "KillScope",
    "Status",
    "arm_draw",
    "assign",
    "assign_many",
    "assignments",
    "blocking_switches",
    "build_snapshot",
    "decide",
    "drawn_arm",
    "drawn_many",
    "is_enabled",
    "layer_bucket",
    "mix64",
    "pack_layer",
    "salt64",
    "unit_key",
]

Status = Literal[
    "draft", "validating", "shadow", "ramping", "running", "paused", "completed", "killed"
]
KillScope = Literal["experiment", "layer", "model", "global"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"ramping", "running"})
"""States that serve their arms to users (what the monitors and the gate watch)."""
ALLOCATING_STATUSES: frozenset[str] = ACTIVE_STATUSES | {"shadow"}
"""States that enrol units: the active ones, and ``shadow`` (enrolled, served control)."""

BUCKETS = 1 << 32
MASK64 = (1 << 64) - 1
SPLITMIX64: tuple[int, int, int] = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
"""SplitMix64's increment and its two finaliser multipliers (the only hash constants)."""
_GOLDEN, _C1, _C2 = SPLITMIX64


# --- hashing ---------------------------------------------------------------------------------


def salt64(salt: str) -> int:
    """64-bit value of a salt string."""
    return xxhash.xxh3_64_intdigest(salt.encode("utf-8"))


def unit_key(unit_id: int | str) -> int:
    """The 64-bit key of a unit id (ints are their own key, strings are hashed)."""
    if isinstance(unit_id, bool):
        raise ConfigError("unit_id", unit_id, "a unit id is an int or a str, not a bool")
    if isinstance(unit_id, int):
        return unit_id & MASK64
    if isinstance(unit_id, str):
        return xxhash.xxh3_64_intdigest(unit_id.encode("utf-8"))
    raise ConfigError("unit_id", unit_id, "a unit id is an int or a str")


def mix64(x: int) -> int:
    """SplitMix64 finaliser of a 64-bit value."""
    z = (x + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _C1) & MASK64
    z = ((z ^ (z >> 27)) * _C2) & MASK64
    return z ^ (z >> 31)


def _mix64_np(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        z = x + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_C1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_C2)
        return z ^ (z >> np.uint64(31))


def layer_bucket(key: int, layer_salt: int) -> int:
    """Bucket of a unit key in a layer, in ``[0, BUCKETS)``."""
    return mix64(key ^ layer_salt) >> 32


def arm_draw(key: int, experiment_salt: int) -> int:
    """The unit's arm draw for an experiment, in ``[0, BUCKETS)``; independent of the bucket."""
    return mix64(key ^ experiment_salt) >> 32


# --- the compiled snapshot -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledExperiment:
    """An experiment reduced to the integers allocation needs."""

    id: str
    layer: str
    layer_salt: int
    salt: int
    lo: int
    hi: int
    enrolled_hi: int
    arms: tuple[str, ...]
    thresholds: tuple[int, ...]
    control: int
    targeting: tuple[tuple[str, frozenset[str]], ...]
    forced: Mapping[str, int]
    status: Status
    coverage_pct: float
    models: frozenset[str]
    arm_models: tuple[str | None, ...] = ()
    """The model each arm serves, in arm order (None: the arm changes no model); empty when
    unknown, and then no arm is scored in shadow."""


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """An immutable, versioned view of every experiment and kill switch.

    ``blocked`` holds the ids of experiments stopped by any kill switch scope (experiment, its
    layer, any model it serves, global); allocation consults it before anything else.
    """

    version: int
    experiments: Mapping[str, CompiledExperiment]
    kill_switches: frozenset[tuple[KillScope, str]] = frozenset()
    blocked: frozenset[str] = frozenset()
    layers: Mapping[str, int] = field(default_factory=dict)

    def get(self, experiment_id: str) -> CompiledExperiment:
        """The compiled experiment, or :class:`NotFoundError`."""
        try:
            return self.experiments[experiment_id]
        except KeyError:
            raise NotFoundError("experiment", experiment_id) from None


def pack_layer(traffic: Sequence[tuple[str, float]]) -> dict[str, tuple[float, float]]:
    """Give experiments contiguous ranges of a layer in the order listed (percent of the layer).

    Raises:
        ConfigError: When the experiments need more than 100 % of the layer.
    """
    ranges: dict[str, tuple[float, float]] = {}
    start = 0.0
    for exp_id, pct in traffic:
        end = start + pct
        if end > 100.0 + 1e-9:
            raise ConfigError(
                f"experiments[{exp_id}].traffic_pct",
                pct,
                f"layer over-allocated: {end:g} % > 100 %",
            )
        ranges[exp_id] = (start, min(end, 100.0))
        start = end
    return ranges


def blocking_switches(
    experiment_id: str,
    layer: str,
    models: Iterable[str],
    switches: Iterable[tuple[KillScope, str]],
) -> list[tuple[KillScope, str]]:
    """The active kill switches that stop an experiment: its own, its layer's, any model's it
    serves, and any global one (whatever its target), in that order.

    Args:
        experiment_id: The experiment.
        layer: Its layer.
        models: The models its arms serve.
        switches: The active (scope, target) pairs.
    """
    active = frozenset(switches)
    mine: list[tuple[KillScope, str]] = [
        ("experiment", experiment_id),
        ("layer", layer),
        *(("model", m) for m in sorted(models)),
    ]
    found = [s for s in mine if s in active]
    return found + sorted(s for s in active if s[0] == "global")


def _pct_to_bucket(pct: float) -> int:
    return min(BUCKETS, round(pct / 100.0 * BUCKETS))


def build_snapshot(
    layers: Iterable[Layer],
    experiments: Iterable[Experiment],
    *,
    status: Mapping[str, Status] | None = None,
    coverage_pct: Mapping[str, float] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    kill_switches: Iterable[tuple[KillScope, str]] = (),
    version: int = 1,
    reuse: Mapping[str, CompiledExperiment] | None = None,
) -> ConfigSnapshot:
    """Compile configuration and state into a snapshot.

    Args:
        layers: All layers experiments refer to.
        experiments: The experiments, in creation order (ranges are packed in this order when
            ``ranges`` is not given).
        status: Experiment id -> status; missing ids are ``running``.
        coverage_pct: Experiment id -> share of its range enrolled (rollout stage); default 100.
        ranges: Experiment id -> (start, end) percent of its layer, as stored.
        kill_switches: Active (scope, target) pairs; target is ignored for ``global``.
        version: The snapshot's version.
        reuse: Compiled experiments of an earlier snapshot of the same store, kept as they are
            when their layer, range, coverage and status did not change; the caller vouches
            that what allocation reads of their configurations did not either (lifecycle
            refuses edits of those fields). A kill then compiles nothing anew.
    """
    layer_salts = {layer.id: salt64(layer.hash_salt) for layer in layers}
    exps = list(experiments)
    status = status or {}
    coverage_pct = coverage_pct or {}
    if ranges is None:
        ranges = {}
        by_layer: dict[str, list[tuple[str, float]]] = {}
        for e in exps:
            by_layer.setdefault(e.layer, []).append((e.id, e.traffic_pct))
        for traffic in by_layer.values():
            ranges.update(pack_layer(traffic))
    kills = frozenset(kill_switches)
    # Every switch's target, and whether one is global: most experiments match none, and need
    # no closer look at the switches (1,000 experiments are rebuilt on every kill).
    targets = {target for _, target in kills}
    stop_all = any(scope == "global" for scope, _ in kills)
    compiled: dict[str, CompiledExperiment] = {}
    blocked: set[str] = set()
    for e in exps:
        if e.layer not in layer_salts:
            raise ConfigError(f"experiments[{e.id}].layer", e.layer, "unknown layer")
        start, end = ranges[e.id]
        lo, hi = _pct_to_bucket(start), _pct_to_bucket(end)
        cover = float(coverage_pct.get(e.id, 100.0))
        state = status.get(e.id, "running")
        old = reuse.get(e.id) if reuse else None
        if (
            old is not None
            and (old.layer, old.layer_salt, old.lo, old.hi)
            == (e.layer, layer_salts[e.layer], lo, hi)
            and (old.coverage_pct, old.status) == (cover, state)
        ):
            compiled[e.id] = old
            named = stop_all or not targets.isdisjoint((e.id, e.layer, *old.models))
            if named and blocking_switches(e.id, e.layer, old.models, kills):
                blocked.add(e.id)
            continue
        arms = tuple(e.arms)
        total = sum(a.weight for a in e.arms.values())
        acc, thresholds = 0.0, []
        for a in e.arms.values():
            acc += a.weight
            thresholds.append(_pct_to_bucket(100.0 * acc / total))
        thresholds[-1] = BUCKETS
        models = e.models
        compiled[e.id] = CompiledExperiment(
            id=e.id,
            layer=e.layer,
            layer_salt=layer_salts[e.layer],
            salt=salt64(f"experiment:{e.id}"),
            lo=lo,
            hi=hi,
            enrolled_hi=lo + int((hi - lo) * cover / 100.0),
            arms=arms,
            thresholds=tuple(thresholds),
            control=arms.index(e.control),
            targeting=tuple((k, frozenset(v)) for k, v in sorted(e.targeting.items())),
            forced={u: arms.index(a) for u, a in e.forced.items()},
            status=state,
            coverage_pct=cover,
            models=frozenset(models),
            arm_models=tuple(a.model for a in e.arms.values()),
        )
        named = stop_all or not targets.isdisjoint((e.id, e.layer, *models))
        if named and blocking_switches(e.id, e.layer, models, kills):
            blocked.add(e.id)
    return ConfigSnapshot(
        version=version,
        experiments=compiled,
        kill_switches=kills,
        blocked=frozenset(blocked),
        layers=layer_salts,
    )


# --- per-request API -------------------------------------------------------------------------


def _arm_index(thresholds: tuple[int, ...], draw: int) -> int:
    for i, t in enumerate(thresholds):
        if draw < t:
            return i
    return len(thresholds) - 1


def decide(exp: CompiledExperiment, blocked: bool, request: Mapping[str, Any]) -> int:
    """The reference allocation: the arm index served to a request's unit, or -1 when it is not in.

    Every other path (:func:`assign_many`, ``lifecycle.allocator``) must give its answers.

    Args:
        exp: The compiled experiment.
        blocked: A kill switch stops it (:attr:`ConfigSnapshot.blocked`).
        request: ``unit_id`` and the request properties targeting reads.

    Raises:
        ConfigError: When the request has no usable ``unit_id``.
    """
    # 7. An experiment in shadow mode serves nobody: the unit is served as if it did not exist
    #    (so no exposure is logged for it); the arm it draws is only scored (lifecycle.shadow).
    if exp.status == "shadow":
        return -1
    return drawn_arm(exp, blocked, request)


def drawn_arm(exp: CompiledExperiment, blocked: bool, request: Mapping[str, Any]) -> int:
    """Steps 1-6 of :func:`decide`: the arm index the unit draws, or -1 when it is not enrolled.

    For an experiment in shadow mode this is the arm scored in shadow, not the one served.

    Raises:
        ConfigError: When the request has no usable ``unit_id``.
    """
    # 1. The kill switch comes first: a blocked experiment allocates nobody (nor scores shadow).
    # 2. Only ramping, running and shadow experiments enrol units.
    if blocked or exp.status not in ALLOCATING_STATUSES:
        return -1
    try:
        unit_id = request["unit_id"]
    except KeyError:
        raise ConfigError("request.unit_id", None, "a request needs a unit_id") from None
    # 3. Forced arms (testing) bypass bucketing and targeting.
    if exp.forced:
        forced = exp.forced.get(str(unit_id))
        if forced is not None:
            return forced
    # 4. Targeting: every listed property must take an allowed value.
    for prop, allowed in exp.targeting:
        if request.get(prop) not in allowed:
            return -1
    # 5. The layer bucket must fall in the enrolled part of the experiment's range.
    key = unit_key(unit_id)
    if not exp.lo <= layer_bucket(key, exp.layer_salt) < exp.enrolled_hi:
        return -1
    # 6. An independent draw, salted by the experiment, picks the arm.
    return _arm_index(exp.thresholds, arm_draw(key, exp.salt))


def assign(snapshot: ConfigSnapshot, request: Mapping[str, Any], experiment_id: str) -> str | None:
    """The arm a request's unit gets in an experiment, or None when it is not in it.

    ``request`` carries ``unit_id`` and the request properties targeting reads.

    Raises:
        NotFoundError: For an unknown experiment id.
        ConfigError: When the request has no usable ``unit_id``.
    """
    exp = snapshot.get(experiment_id)
    arm = decide(exp, experiment_id in snapshot.blocked, request)
    return None if arm < 0 else exp.arms[arm]


def is_enabled(snapshot: ConfigSnapshot, request: Mapping[str, Any], experiment_id: str) -> bool:
    """True when the request's unit is in a treatment arm (any arm but control)."""
    arm = assign(snapshot, request, experiment_id)
    if arm is None:
        return False
    exp = snapshot.experiments[experiment_id]
    return arm != exp.arms[exp.control]


def assignments(snapshot: ConfigSnapshot, request: Mapping[str, Any]) -> dict[str, str]:
    """Every experiment the request is in, as experiment id -> arm served (none in shadow)."""
    out: dict[str, str] = {}
    for exp_id in snapshot.experiments:
        arm = assign(snapshot, request, exp_id)
        if arm is not None:
            out[exp_id] = arm
    return out


# --- vectorised API --------------------------------------------------------------------------


def _keys_np(unit_ids: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    arr = np.asarray(unit_ids)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False).view(np.uint64)
    if arr.dtype.kind in "OUT":
        return np.fromiter((unit_key(u) for u in arr.tolist()), dtype=np.uint64, count=arr.size)
    raise ConfigError("unit_ids", arr.dtype, "unit ids must be integers or strings")


def assign_many(
    snapshot: ConfigSnapshot,
    unit_ids: npt.ArrayLike,
    experiment_id: str,
    properties: Mapping[str, npt.ArrayLike] | None = None,
) -> npt.NDArray[np.int16]:
    """Arm index per unit (``-1`` when not in the experiment): :func:`decide`, vectorised.

    Map indices to names with ``snapshot.get(experiment_id).arms``. In shadow mode no unit is
    in the experiment (step 7); :func:`drawn_many` gives the arms the units draw, to score.

    Args:
        snapshot: The configuration snapshot.
        unit_ids: Integer (fast path) or string unit ids.
        experiment_id: The experiment.
        properties: Request property -> array aligned with ``unit_ids``, for targeting.
    """
    out = drawn_many(snapshot, experiment_id, unit_ids, properties)
    if snapshot.get(experiment_id).status == "shadow":
        out[:] = -1
    return out


def drawn_many(
    snapshot: ConfigSnapshot,
    experiment_id: str,
    unit_ids: npt.ArrayLike,
    properties: Mapping[str, npt.ArrayLike] | None = None,
) -> npt.NDArray[np.int16]:
    """Steps 1-6 of :func:`decide`, vectorised: the arm index each unit draws (``-1``: not
    enrolled); in shadow mode the arms scored, not served (:func:`lifecycle.shadow.shadow_many`).
    """
    exp = snapshot.get(experiment_id)
    keys = _keys_np(unit_ids)
    out = np.full(keys.shape, -1, dtype=np.int16)
    if experiment_id in snapshot.blocked or exp.status not in ALLOCATING_STATUSES:
        return out
    bucket = _mix64_np(keys ^ np.uint64(exp.layer_salt)) >> np.uint64(32)
    inside = (bucket >= np.uint64(exp.lo)) & (bucket < np.uint64(exp.enrolled_hi))
    for prop, allowed in exp.targeting:
        if properties is None or prop not in properties:
            inside[:] = False
            break
        inside &= np.isin(np.asarray(properties[prop]), list(allowed))
    idx = np.flatnonzero(inside)
    draw = _mix64_np(keys[idx] ^ np.uint64(exp.salt)) >> np.uint64(32)
    out[idx] = np.searchsorted(np.asarray(exp.thresholds, dtype=np.uint64), draw, side="right")
    if exp.forced:
        flat = np.asarray(unit_ids).ravel()
        for i, u in enumerate(flat.tolist()):
            forced = exp.forced.get(str(u))
            if forced is not None:
                out.flat[i] = forced
    return out
