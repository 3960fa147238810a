"""Shadow mode (issue 18): which candidate a request's unit scores beside control, not served.

An experiment in ``shadow`` holds its range and its units draw arms as if it ran, but allocation
serves nobody in it (step 7 of :func:`lifecycle.allocation.decide`: each unit is served what it
would be without the experiment, production, and no exposure is logged, so the experiment's SRM
and guardrails start clean when it ramps). These functions name the arm the unit
drew (:func:`lifecycle.allocation.drawn_arm`) and its model, so the serving code scores that model
too and logs the prediction to the ``shadow_predictions`` table (docs/telemetry.md). The arm is
the one the unit keeps when the experiment ramps, so the shadow run judges the very units the
first stage will expose. ``lifecycle.allocator.Allocator.shadow_arms`` is the compiled form of
:func:`shadow_arms`; the tests hold them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lifecycle.allocation import CompiledExperiment, ConfigSnapshot, drawn_arm, drawn_many

__all__ = ["ShadowArm", "shadow_arm", "shadow_arms", "shadow_many", "shadow_model"]


@dataclass(frozen=True, slots=True)
class ShadowArm:
    """An arm a request's unit drew in a shadow experiment: scored beside control, not served.

    Attributes:
        experiment_id: The experiment in shadow mode.
        arm: The arm the unit drew (never control).
        model: The candidate model to score (log its prediction to ``shadow_predictions``).
    """

    experiment_id: str
    arm: str
    model: str


def shadow_arm(exp: CompiledExperiment, blocked: bool, request: Mapping[str, Any]) -> int:
    """The arm index a unit drew in a shadow experiment, to score but not serve; else -1.

    -1 when the experiment is not in shadow, is stopped by a kill switch, does not enrol the
    unit, or the unit drew control (nothing to score beside what it is served).

    Raises:
        ConfigError: When the request has no usable ``unit_id``.
    """
    if exp.status != "shadow":
        return -1
    arm = drawn_arm(exp, blocked, request)
    return -1 if arm == exp.control else arm


def shadow_model(exp: CompiledExperiment, arm: int) -> str | None:
    """The candidate an arm scores in shadow: its model, when it has one other than control's."""
    if arm < 0 or not exp.arm_models:
        return None
    model = exp.arm_models[arm]
    return model if model is not None and model != exp.arm_models[exp.control] else None


def shadow_arms(snapshot: ConfigSnapshot, request: Mapping[str, Any]) -> list[ShadowArm]:
    """The candidates to score in shadow for a request: one per shadow experiment whose drawn
    arm serves a model other than control's, in snapshot order (kill switches honoured).

    The serving code serves :func:`~lifecycle.allocation.assignments` and, for each of these,
    scores ``model`` too and logs its prediction to ``shadow_predictions`` (``experiment_id``,
    ``arm``, ``model_id``).

    Raises:
        ConfigError: When the request has no usable ``unit_id`` and an experiment is in shadow.
    """
    out: list[ShadowArm] = []
    for exp_id, exp in snapshot.experiments.items():
        if exp.status != "shadow":
            continue
        arm = shadow_arm(exp, exp_id in snapshot.blocked, request)
        model = shadow_model(exp, arm)
        if model is not None:
            out.append(ShadowArm(exp_id, exp.arms[arm], model))
    return out


# --- vectorised -------------------------------------------------------------------------------


def shadow_many(
    snapshot: ConfigSnapshot,
    unit_ids: npt.ArrayLike,
    experiment_id: str,
    properties: Mapping[str, npt.ArrayLike] | None = None,
) -> npt.NDArray[np.int16]:
    """Arm index scored in shadow per unit (``-1``: none): :func:`shadow_arm`, vectorised."""
    exp = snapshot.get(experiment_id)
    out = drawn_many(snapshot, experiment_id, unit_ids, properties)
    if exp.status != "shadow":
        out[:] = -1
    out[out == exp.control] = -1
    return out
