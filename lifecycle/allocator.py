"""The :class:`Allocator`: the per-request face of allocation over a versioned snapshot.

It holds one immutable :class:`~lifecycle.allocation.ConfigSnapshot` and, for each experiment, the
reference decision (:func:`lifecycle.allocation.decide`) bound to it. ``is_enabled``, the hot
path, is compiled: for an experiment without forced arms, the same steps with the constants bound
once and the SplitMix64 rounds inlined (the constants are allocation's own); the tests check it
against the reference on generated requests and on the golden vectors.

``assignments`` (every experiment a request is in) hashes the unit once per layer, not once per
experiment: each layer's enrolled ranges are cut into sorted segments, the bucket bisects to the
experiment that owns it, and only that experiment draws an arm.

An experiment in shadow mode (issue 18) is served as the reference's step 7 says: nobody is in
it (the layer index leaves it out, ``is_enabled`` is False, :meth:`Allocator.assignments` omits
it), and :meth:`Allocator.shadow_arms` names the candidate each unit drew, for the serving code
to score beside what it serves and log to ``shadow_predictions``.

A new snapshot (after a kill switch, a ramp, a new experiment) replaces the old one with a single
reference swap, so the next call sees it and no call ever sees half of each. Swaps are
incremental: an experiment whose compiled form and kill state did not change keeps its compiled
functions, and a layer whose experiments did not change keeps its index."""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from lifecycle.allocation import (
    ALLOCATING_STATUSES,
    MASK64,
    SPLITMIX64,
    CompiledExperiment,
    ConfigSnapshot,
    assign_many,
    unit_key,
)
from lifecycle.allocation import (
    decide as reference_decide,
)
from lifecycle.shadow import ShadowArm, shadow_model
from lifecycle.shadow import shadow_arm as reference_shadow_arm
from tools.errors import ConfigError, NotFoundError

__all__ = ["Allocator"]

_Decide = Callable[[Mapping[str, Any]], int]
"""Arm index of a request's unit, or -1 when it is not in the experiment."""


def _out(_request: Mapping[str, Any]) -> int:
    return -1


def _compile(exp: CompiledExperiment, blocked: bool) -> _Decide:
    if blocked or exp.status not in ALLOCATING_STATUSES:
        return _out
    return partial(reference_decide, exp, False)


def _compile_enabled(
    exp: CompiledExperiment, decide: _Decide
) -> Callable[[Mapping[str, Any]], bool]:
    control = exp.control
    if decide is _out:
        return lambda _request: False

    def enabled(request: Mapping[str, Any]) -> bool:
        arm = decide(request)
        return arm >= 0 and arm != control

    # Without forced arms the treatment test is a range check on the draw, so the hot path
    # (no forced arms) gets its own closure: decide's steps 4-6, everything inlined. In shadow
    # decide serves nobody (step 7), so ``enabled`` is always False.
    if exp.forced or exp.status == "shadow":
        return enabled
    lo, hi = exp.lo, exp.enrolled_hi
    layer_salt, salt = exp.layer_salt, exp.salt
    c_lo = exp.thresholds[control - 1] if control else 0
    c_hi = exp.thresholds[control]  # the last threshold is BUCKETS, above every draw
    targeting = exp.targeting
    m64 = MASK64
    golden, c1, c2 = SPLITMIX64

    def fast(request: Mapping[str, Any]) -> bool:
        try:
            unit = request["unit_id"]
        except KeyError:
            raise ConfigError("request.unit_id", None, "a request needs a unit_id") from None
        for prop, allowed in targeting:
            if request.get(prop) not in allowed:
                return False
        key = unit & m64 if type(unit) is int else unit_key(unit)
        z = ((key ^ layer_salt) + golden) & m64
        z = ((z ^ (z >> 30)) * c1) & m64
        z = ((z ^ (z >> 27)) * c2) & m64
        bucket = (z ^ (z >> 31)) >> 32
        if bucket < lo or bucket >= hi:
            return False
        z = ((key ^ salt) + golden) & m64
        z = ((z ^ (z >> 30)) * c1) & m64
        z = ((z ^ (z >> 27)) * c2) & m64
        draw = (z ^ (z >> 31)) >> 32
        return draw < c_lo or draw >= c_hi

    return fast


@dataclass(frozen=True, slots=True)
class _Member:
    """An experiment as the layer index serves it (no forced arms, allocating)."""

    id: str
    lo: int
    hi: int
    salt: int
    thresholds: tuple[int, ...]
    arms: tuple[str, ...]
    targeting: tuple[tuple[str, frozenset[str]], ...]


@dataclass(frozen=True, slots=True)
class _LayerIndex:
    """One layer's enrolled ranges, cut into segments: a bucket bisects to its candidates.

    Experiments of one layer own disjoint ranges, so a segment usually holds one experiment;
    overlapping ranges (never produced by the store, but possible in a hand-built snapshot) are
    handled too, a segment listing every experiment that covers it.
    """

    salt: int
    starts: tuple[int, ...]
    members: tuple[tuple[_Member, ...], ...]
    key: tuple[tuple[str, CompiledExperiment], ...]


def _member(e: CompiledExperiment) -> _Member:
    return _Member(e.id, e.lo, e.enrolled_hi, e.salt, e.thresholds, e.arms, e.targeting)


def _layer_index(salt: int, key: tuple[tuple[str, CompiledExperiment], ...]) -> _LayerIndex:
    # Step 7: an experiment in shadow serves nobody, so the layer index leaves it out.
    members = [_member(e) for _, e in key if e.lo < e.enrolled_hi and e.status != "shadow"]
    bounds = sorted({m.lo for m in members} | {m.hi for m in members})
    segments: list[list[_Member]] = [[] for _ in bounds]
    for m in members:
        for i in range(bisect_left(bounds, m.lo), bisect_left(bounds, m.hi)):
            segments[i].append(m)
    return _LayerIndex(salt, tuple(bounds), tuple(tuple(s) for s in segments), key)


@dataclass(frozen=True, slots=True)
class _Compiled:
    snapshot: ConfigSnapshot
    decide: Mapping[str, _Decide]
    enabled: Mapping[str, Callable[[Mapping[str, Any]], bool]]
    layers: tuple[_LayerIndex, ...]
    forced: tuple[tuple[str, _Decide], ...]
    """Allocating experiments with forced arms: decided by the reference, per request."""
    active: bool
    """Some experiment allocates (a request then needs a ``unit_id``)."""
    shadow: tuple[CompiledExperiment, ...]
    """Experiments in shadow mode that a kill switch does not stop."""
    recompiled: int
    """Experiments compiled afresh by the rebuild that made this (the rest were reused)."""


def _allocating(exp: CompiledExperiment, blocked: bool) -> bool:
    return not blocked and exp.status in ALLOCATING_STATUSES


def _compile_snapshot(snapshot: ConfigSnapshot, previous: _Compiled | None = None) -> _Compiled:
    """Compile a snapshot, reusing what ``previous`` compiled for unchanged experiments."""
    old = previous.snapshot if previous is not None else None
    decide: dict[str, _Decide] = {}
    enabled: dict[str, Callable[[Mapping[str, Any]], bool]] = {}
    by_salt: dict[int, list[tuple[str, CompiledExperiment]]] = {}
    forced: list[tuple[str, _Decide]] = []
    shadow: list[CompiledExperiment] = []
    recompiled = 0
    for exp_id, exp in snapshot.experiments.items():
        blocked = exp_id in snapshot.blocked
        if (
            previous is not None
            and old is not None
            and ((same := old.experiments.get(exp_id)) is exp or same == exp)
            and (exp_id in old.blocked) == blocked
        ):
            decide[exp_id] = previous.decide[exp_id]
            enabled[exp_id] = previous.enabled[exp_id]
        else:
            decide[exp_id] = _compile(exp, blocked)
            enabled[exp_id] = _compile_enabled(exp, decide[exp_id])
            recompiled += 1
        if not _allocating(exp, blocked):
            continue
        if exp.status == "shadow":
            shadow.append(exp)
        if exp.forced:
            forced.append((exp_id, decide[exp_id]))
        else:
            by_salt.setdefault(exp.layer_salt, []).append((exp_id, exp))
    reusable = {} if previous is None else {x.salt: x for x in previous.layers}
    layers = []
    for salt, members in by_salt.items():
        key = tuple(members)
        kept = reusable.get(salt)
        layers.append(kept if kept is not None and kept.key == key else _layer_index(salt, key))
    active = bool(by_salt or forced)
    return _Compiled(
        snapshot, decide, enabled, tuple(layers), tuple(forced), active, tuple(shadow), recompiled
    )


class Allocator:
    """Allocation over an immutable, versioned snapshot that can be swapped atomically.

    Args:
        snapshot: The configuration snapshot to serve.
    """

    __slots__ = ("_current", "_swap_lock")

    def __init__(self, snapshot: ConfigSnapshot) -> None:
        self._current = _compile_snapshot(snapshot)
        self._swap_lock = threading.Lock()

    @property
    def snapshot(self) -> ConfigSnapshot:
        """The snapshot being served."""
        return self._current.snapshot

    @property
    def version(self) -> int:
        """Version of the snapshot being served."""
        return self._current.snapshot.version

    @property
    def recompiled(self) -> int:
        """How many experiments the last swap compiled afresh (the others were reused)."""
        return self._current.recompiled

    def swap(self, snapshot: ConfigSnapshot) -> bool:
        """Serve ``snapshot`` from the next call on, unless it is older than the current one.

        The new snapshot is compiled in the caller's thread, reusing the compiled form of every
        experiment that did not change (a kill recompiles the one experiment it stops and
        re-indexes its layer); serving threads keep reading the old one until a single
        reference assignment installs the new one. Call it from a background thread (as
        ``lifecycle.remote.RemoteAllocator`` does) to keep rebuilds off the serving path.

        Returns:
            True when the snapshot was installed.
        """
        with self._swap_lock:
            current = self._current
            if snapshot.version < current.snapshot.version:
                return False
            self._current = _compile_snapshot(snapshot, current)
            return True

    def is_enabled(self, request: Mapping[str, Any], experiment_id: str) -> bool:
        """True when the request's unit is in a treatment arm (any arm but control).

        Raises:
            NotFoundError: For an unknown experiment id.
            ConfigError: When the request has no ``unit_id``.
        """
        try:
            enabled = self._current.enabled[experiment_id]
        except KeyError:
            raise NotFoundError("experiment", experiment_id) from None
        return enabled(request)

    def assign(self, request: Mapping[str, Any], experiment_id: str) -> str | None:
        """The arm of the request's unit in an experiment, or None when it is not in it.

        Raises:
            NotFoundError: For an unknown experiment id.
            ConfigError: When the request has no ``unit_id``.
        """
        current = self._current
        try:
            decide = current.decide[experiment_id]
        except KeyError:
            raise NotFoundError("experiment", experiment_id) from None
        arm = decide(request)
        return None if arm < 0 else current.snapshot.experiments[experiment_id].arms[arm]

    def assignments(self, request: Mapping[str, Any]) -> dict[str, str]:
        """Every experiment the request is in, as experiment id -> arm.

        One hash per layer: the unit's bucket bisects the layer's enrolled ranges to the one
        experiment that can hold it, whose draw then picks the arm (the reference's steps 4-6
        for that experiment only). Experiments with forced arms go through the reference.

        Raises:
            ConfigError: When the request has no ``unit_id`` and some experiment allocates.
        """
        current = self._current
        out: dict[str, str] = {}
        if not current.active:
            return out
        try:
            unit = request["unit_id"]
        except KeyError:
            raise ConfigError("request.unit_id", None, "a request needs a unit_id") from None
        for exp_id, decide in current.forced:
            arm = decide(request)
            if arm >= 0:
                out[exp_id] = current.snapshot.experiments[exp_id].arms[arm]
        if not current.layers:
            return out
        m64 = MASK64
        golden, c1, c2 = SPLITMIX64
        key = unit & m64 if type(unit) is int else unit_key(unit)
        get = request.get
        for layer in current.layers:
            z = ((key ^ layer.salt) + golden) & m64
            z = ((z ^ (z >> 30)) * c1) & m64
            z = ((z ^ (z >> 27)) * c2) & m64
            i = bisect_right(layer.starts, (z ^ (z >> 31)) >> 32) - 1
            if i < 0:
                continue
            for member in layer.members[i]:
                if any(get(prop) not in allowed for prop, allowed in member.targeting):
                    continue
                z = ((key ^ member.salt) + golden) & m64
                z = ((z ^ (z >> 30)) * c1) & m64
                z = ((z ^ (z >> 27)) * c2) & m64
                out[member.id] = member.arms[bisect_right(member.thresholds, (z ^ (z >> 31)) >> 32)]
        return out

    def shadow_arms(self, request: Mapping[str, Any]) -> list[ShadowArm]:
        """The candidates to score in shadow for this request (not to serve): one per
        experiment in shadow mode whose drawn arm serves a model other than control's.

        Serve :meth:`assignments` (which omits a shadow experiment), then score each returned
        ``model`` too and log its prediction to ``shadow_predictions`` with the experiment and
        arm. A kill switch stops the shadow scoring too.

        Raises:
            ConfigError: When the request has no ``unit_id`` and an experiment is in shadow.
        """
        shadow = self._current.shadow
        out: list[ShadowArm] = []
        for exp in shadow:
            arm = reference_shadow_arm(exp, False, request)
            model = shadow_model(exp, arm)
            if model is not None:
                out.append(ShadowArm(exp.id, exp.arms[arm], model))
        return out

    def assign_many(
        self,
        unit_ids: npt.ArrayLike,
        experiment_id: str,
        properties: Mapping[str, npt.ArrayLike] | None = None,
    ) -> npt.NDArray[np.int16]:
        """Arm index per unit, ``-1`` when not in the experiment (see :func:`assign_many`)."""
        return assign_many(self._current.snapshot, unit_ids, experiment_id, properties)

    def arms(self, experiment_id: str) -> tuple[str, ...]:
        """The arm names of an experiment, in index order."""
        return self._current.snapshot.get(experiment_id).arms
