"""The :class:`Allocator`: the per-request face of allocation over a versioned snapshot.

It holds one immutable :class:`~lifecycle.allocation.ConfigSnapshot` and, for each experiment, the
reference decision (:func:`lifecycle.allocation.decide`) bound to it. ``is_enabled``, the hot
path, is compiled: for an experiment without forced arms, the same steps with the constants bound
once and the SplitMix64 rounds inlined (the constants are allocation's own); the tests check it
against the reference on generated requests and on the golden vectors.

A new snapshot (after a kill switch, a ramp, a new experiment) replaces the old one with a single
reference swap, so the next call sees it and no call ever sees half of each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from lifecycle.allocation import (
    ACTIVE_STATUSES,
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
from tools.errors import ConfigError, NotFoundError

__all__ = ["Allocator"]

_Decide = Callable[[Mapping[str, Any]], int]
"""Arm index of a request's unit, or -1 when it is not in the experiment."""


def _out(_request: Mapping[str, Any]) -> int:
    return -1


def _compile(exp: CompiledExperiment, blocked: bool) -> _Decide:
    if blocked or exp.status not in ACTIVE_STATUSES:
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
    # (no forced arms) gets its own closure: decide's steps 4-6, everything inlined.
    if exp.forced:
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
class _Compiled:
    snapshot: ConfigSnapshot
    decide: Mapping[str, _Decide]
    enabled: Mapping[str, Callable[[Mapping[str, Any]], bool]]


def _compile_snapshot(snapshot: ConfigSnapshot) -> _Compiled:
    decide: dict[str, _Decide] = {}
    enabled: dict[str, Callable[[Mapping[str, Any]], bool]] = {}
    for exp_id, exp in snapshot.experiments.items():
        decide[exp_id] = _compile(exp, exp_id in snapshot.blocked)
        enabled[exp_id] = _compile_enabled(exp, decide[exp_id])
    return _Compiled(snapshot, decide, enabled)


class Allocator:
    """Allocation over an immutable, versioned snapshot that can be swapped atomically.

    Args:
        snapshot: The configuration snapshot to serve.
    """

    __slots__ = ("_current",)

    def __init__(self, snapshot: ConfigSnapshot) -> None:
        self._current = _compile_snapshot(snapshot)

    @property
    def snapshot(self) -> ConfigSnapshot:
        """The snapshot being served."""
        return self._current.snapshot

    @property
    def version(self) -> int:
        """Version of the snapshot being served."""
        return self._current.snapshot.version

    def swap(self, snapshot: ConfigSnapshot) -> bool:
        """Serve ``snapshot`` from the next call on, unless it is older than the current one.

        Returns:
            True when the snapshot was installed.
        """
        if snapshot.version < self._current.snapshot.version:
            return False
        self._current = _compile_snapshot(snapshot)
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
        """Every experiment the request is in, as experiment id -> arm."""
        current = self._current
        out: dict[str, str] = {}
        for exp_id, decide in current.decide.items():
            arm = decide(request)
            if arm >= 0:
                out[exp_id] = current.snapshot.experiments[exp_id].arms[arm]
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
