"""Configuration snapshots on the wire: JSON text, signed envelopes, and deltas.

A snapshot travels as compact JSON text (every field of every compiled experiment, so a subscriber
rebuilds it without a database) inside an envelope that carries its version and the HMAC-SHA256 of
the text under a key shared by the server and its subscribers. A *delta* envelope carries only what
changed since a base version (the experiments whose compiled form changed, the ids removed, and the
small sets: kill switches, blocked ids, layers); a subscriber applies it only on top of exactly that
base, else it asks for the full snapshot. The base is inside the signed text.

Every field is checked on the way in: a malformed or forged envelope is refused with a
:class:`~tools.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lifecycle.allocation import (
    BUCKETS,
    CompiledExperiment,
    ConfigSnapshot,
    KillScope,
    Status,
)
from tools.errors import ConfigError

__all__ = [
    "apply_delta",
    "decode_envelope",
    "encode_delta",
    "encode_envelope",
    "envelope_base",
    "snapshot_from_json",
    "snapshot_to_json",
]

_M = TypeVar("_M", bound=BaseModel)
_U64 = Field(ge=0, lt=1 << 64)
_BUCKET = Field(ge=0, le=BUCKETS)


class _WireExperiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    layer: str
    layer_salt: int = _U64
    salt: int = _U64
    lo: int = _BUCKET
    hi: int = _BUCKET
    enrolled_hi: int = _BUCKET
    arms: list[str] = Field(min_length=1)
    thresholds: list[int] = Field(min_length=1)
    control: int = Field(ge=0)
    targeting: dict[str, list[str]]
    forced: dict[str, int]
    status: Status
    coverage_pct: float = Field(ge=0, le=100)
    models: list[str]
    arm_models: list[str | None] = Field(default_factory=list)
    """The model of each arm, in arm order (what a shadow experiment scores; issue 18)."""


class _WireSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    experiments: list[_WireExperiment]
    kill_switches: list[tuple[KillScope, str]]
    blocked: list[str]
    layers: dict[str, int]


class _WireDelta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    base: int
    experiments: list[_WireExperiment]
    removed: list[str]
    kill_switches: list[tuple[KillScope, str]]
    blocked: list[str]
    layers: dict[str, int]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    signature: str
    snapshot: str
    base: int | None = None
    """Set on a delta: the version it applies to (also inside the signed text)."""


def _experiment_json(e: CompiledExperiment) -> dict[str, Any]:
    return {
        "id": e.id,
        "layer": e.layer,
        "layer_salt": e.layer_salt,
        "salt": e.salt,
        "lo": e.lo,
        "hi": e.hi,
        "enrolled_hi": e.enrolled_hi,
        "arms": list(e.arms),
        "thresholds": list(e.thresholds),
        "control": e.control,
        "targeting": {k: sorted(v) for k, v in e.targeting},
        "forced": dict(e.forced),
        "status": e.status,
        "coverage_pct": e.coverage_pct,
        "models": sorted(e.models),
        "arm_models": list(e.arm_models),
    }


def _sets_json(snapshot: ConfigSnapshot) -> dict[str, Any]:
    return {
        "kill_switches": sorted(snapshot.kill_switches),
        "blocked": sorted(snapshot.blocked),
        "layers": dict(snapshot.layers),
    }


def snapshot_to_json(snapshot: ConfigSnapshot) -> str:
    """The snapshot as compact JSON text (what a subscriber rebuilds it from, without a DB)."""
    body = {
        "version": snapshot.version,
        "experiments": [_experiment_json(e) for e in snapshot.experiments.values()],
        **_sets_json(snapshot),
    }
    return json.dumps(body, separators=(",", ":"))


def _experiment(i: int, w: _WireExperiment) -> CompiledExperiment:
    where = f"snapshot.experiments.{i}"
    if not w.lo <= w.enrolled_hi <= w.hi:
        raise ConfigError(f"{where}.enrolled_hi", w.enrolled_hi, "outside the range [lo, hi]")
    if len(w.thresholds) != len(w.arms) or w.thresholds[-1] != BUCKETS:
        raise ConfigError(f"{where}.thresholds", w.thresholds, "one per arm, the last BUCKETS")
    if any(a > b for a, b in zip(w.thresholds, w.thresholds[1:], strict=False)):
        raise ConfigError(f"{where}.thresholds", w.thresholds, "thresholds must not decrease")
    arms = len(w.arms)
    if w.control >= arms:
        raise ConfigError(f"{where}.control", w.control, "not an arm index")
    for unit, arm in w.forced.items():
        if not 0 <= arm < arms:
            raise ConfigError(f"{where}.forced.{unit}", arm, "not an arm index")
    if w.arm_models and len(w.arm_models) != arms:
        raise ConfigError(f"{where}.arm_models", w.arm_models, "one model (or null) per arm")
    return CompiledExperiment(
        id=w.id,
        layer=w.layer,
        layer_salt=w.layer_salt,
        salt=w.salt,
        lo=w.lo,
        hi=w.hi,
        enrolled_hi=w.enrolled_hi,
        arms=tuple(w.arms),
        thresholds=tuple(w.thresholds),
        control=w.control,
        targeting=tuple((k, frozenset(v)) for k, v in sorted(w.targeting.items())),
        forced=dict(w.forced),
        status=w.status,
        coverage_pct=w.coverage_pct,
        models=frozenset(w.models),
        arm_models=tuple(w.arm_models),
    )


def _parse(model: type[_M], text: str | bytes) -> _M:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "snapshot." + ".".join(str(p) for p in first["loc"])
        raise ConfigError(field, first.get("input"), first["msg"]) from None


def _assemble(
    version: int,
    experiments: dict[str, CompiledExperiment],
    wire: _WireSnapshot | _WireDelta,
) -> ConfigSnapshot:
    unknown = set(wire.blocked) - experiments.keys()
    if unknown:
        raise ConfigError("snapshot.blocked", sorted(unknown), "unknown experiment ids")
    return ConfigSnapshot(
        version=version,
        experiments=experiments,
        kill_switches=frozenset(wire.kill_switches),
        blocked=frozenset(wire.blocked),
        layers=dict(wire.layers),
    )


def snapshot_from_json(text: str | bytes) -> ConfigSnapshot:
    """Rebuild a snapshot from :func:`snapshot_to_json`'s text, checking every field.

    Raises:
        ConfigError: Text that is not a well-formed snapshot, naming the bad field.
    """
    wire = _parse(_WireSnapshot, text)
    experiments = {w.id: _experiment(i, w) for i, w in enumerate(wire.experiments)}
    if len(experiments) != len(wire.experiments):
        raise ConfigError("snapshot.experiments", len(wire.experiments), "duplicate ids")
    return _assemble(wire.version, experiments, wire)


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def encode_envelope(snapshot: ConfigSnapshot, key: bytes) -> str:
    """The signed envelope of a snapshot, as JSON text: version, signature, snapshot text."""
    text = snapshot_to_json(snapshot)
    envelope = {"version": snapshot.version, "signature": _sign(key, text), "snapshot": text}
    return json.dumps(envelope, separators=(",", ":"))


def encode_delta(previous: ConfigSnapshot, snapshot: ConfigSnapshot, key: bytes) -> str:
    """The signed delta envelope from ``previous`` to ``snapshot`` (changed experiments only)."""
    old = previous.experiments
    body = {
        "version": snapshot.version,
        "base": previous.version,
        "experiments": [
            # Unchanged experiments are the same objects (the store and apply_delta reuse
            # them): the identity test spares a field-by-field comparison of each.
            _experiment_json(e)
            for i, e in snapshot.experiments.items()
            if (o := old.get(i)) is not e and o != e
        ],
        "removed": sorted(old.keys() - snapshot.experiments.keys()),
        **_sets_json(snapshot),
    }
    text = json.dumps(body, separators=(",", ":"))
    envelope = {
        "version": snapshot.version,
        "signature": _sign(key, text),
        "snapshot": text,
        "base": previous.version,
    }
    return json.dumps(envelope, separators=(",", ":"))


def _verified(data: str | bytes, key: bytes) -> _Envelope:
    try:
        envelope = _Envelope.model_validate_json(data)
    except ValidationError as exc:
        raise ConfigError("envelope", str(data)[:80], f"not a snapshot envelope: {exc}") from None
    if not hmac.compare_digest(envelope.signature, _sign(key, envelope.snapshot)):
        raise ConfigError("envelope.signature", envelope.signature[:16], "bad signature")
    return envelope


def envelope_base(data: str | bytes) -> int | None:
    """The base version of a delta envelope (None for a full snapshot), before verifying it.

    Raises:
        ConfigError: Not an envelope.
    """
    try:
        return _Envelope.model_validate_json(data).base
    except ValidationError as exc:
        raise ConfigError("envelope", str(data)[:80], f"not a snapshot envelope: {exc}") from None


def decode_envelope(data: str | bytes, key: bytes) -> ConfigSnapshot:
    """Verify a full snapshot's envelope and rebuild the snapshot.

    Raises:
        ConfigError: Not an envelope (``envelope``), a signature that does not verify under
            ``key`` (``envelope.signature``), a delta (``envelope.base``), or a snapshot that is
            malformed or whose version disagrees with the envelope's.
    """
    envelope = _verified(data, key)
    if envelope.base is not None:
        raise ConfigError("envelope.base", envelope.base, "a delta, not a full snapshot")
    snapshot = snapshot_from_json(envelope.snapshot)
    if snapshot.version != envelope.version:
        raise ConfigError("envelope.version", envelope.version, "differs from the snapshot's")
    return snapshot


def apply_delta(current: ConfigSnapshot, data: str | bytes, key: bytes) -> ConfigSnapshot:
    """Verify a delta envelope and apply it to ``current``, which must be its base.

    Unchanged experiments keep their compiled objects, so the allocator's incremental swap
    recompiles only what the delta carries.

    Raises:
        ConfigError: As :func:`decode_envelope`; ``envelope.base`` when ``current`` is not the
            delta's base (ask for the full snapshot) or the envelope is not a delta.
    """
    envelope = _verified(data, key)
    delta = _parse(_WireDelta, envelope.snapshot)
    if envelope.base is None or delta.base != envelope.base or delta.version != envelope.version:
        raise ConfigError("envelope.base", envelope.base, "differs from the signed delta's")
    if delta.base != current.version:
        raise ConfigError("envelope.base", delta.base, f"not this snapshot's {current.version}")
    experiments: dict[str, CompiledExperiment] = dict(current.experiments)
    for exp_id in delta.removed:
        experiments.pop(exp_id, None)
    for i, w in enumerate(delta.experiments):
        experiments[w.id] = _experiment(i, w)
    return _assemble(delta.version, experiments, delta)
