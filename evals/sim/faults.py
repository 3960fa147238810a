"""Fault injection: each DESIGN §5 root cause as a change to how a block of requests is served.

A fault hits the requests in its scope — the units in ``arm`` (default ``test``) of
``experiment``; or all traffic of ``model``; or all traffic — filtered by ``where`` and by the
window ``[start_minute, end_minute)``. Experiment scopes follow the real allocation, so killing
the experiment (a kill switch) moves its units out of the arm and ends the fault. Within the
scope, a *share* fault picks requests independently with probability ``severity``.

What each fault does and the signature it leaves (what moves where; everything else stays put):

- ``prediction_collapse`` — a share of requests get no usable pCTR: NaN, out of range (the logit
  is emitted instead of the probability) or stuck at a constant (the bias-only output ≈ the mean
  CTR); ``mode`` picks one, ``mixed`` (default) a third each. Such a request ranks by bid alone
  (worse ads: CTR falls), and an invalid pCTR cannot be priced (revenue 0; a constant one prices
  at ``bid₂ × constant``). Moves: invalid share, prediction variance (down), NE, CTR, revenue of
  the scope. Calibration barely moves for ``constant``.
- ``miscalibration`` — every pCTR of the scope × severity; ranking unchanged. Moves: calibration
  (Σ pred / Σ clicks = severity) and prices/revenue (× severity: CPM on pCTR); CTR and the ranking
  part of NE do not move.
- ``ne_regression`` — logit noise of sd ``severity`` on top of the model's, then recalibrated.
  Moves: NE up (a step at the onset), CTR and revenue down; calibration stays ≈ 1.
- ``stale_model`` — the model stops refreshing at ``start_minute``: no version due at or after it
  is published (refreshing resumes at the first refresh boundary after ``end_minute``); requests
  keep the last version published before ``start_minute``, whose ``trained_at`` ages, and, for
  ``model:`` scope, ``model_snapshots`` gets no new rows. The world drifts away from the pinned
  model from its first missed publication on (before it, the pinned version is the one the
  schedule serves anyway): ``h`` hours after that, each candidate's true CTR differs from what
  the model knows by a mean-one log-normal factor of sd ``severity × h``, and nothing
  recalibrates. Moves: snapshot age
  vs refresh cadence at once; NE and calibration (up: the winner's curse of the extra error), CTR
  and revenue drift gradually.
- ``model_fallback`` — a share of requests are served by the fallback model (``fallback`` true,
  ``model_id``/``model_version`` still name the routed model). Moves: fallback rate; NE up, CTR
  and revenue down in proportion; latency of those requests 20 % lower.
- ``infra_outage`` — a share of requests error (timeout ~300 ms, no ad: prediction NaN, label 0,
  revenue 0) and the scope's other requests slow down by ``1 + 2 × severity``. Moves: error rate,
  latency p99, CTR and revenue of all experiments alike; no arm differs from its control.
- ``allocation_bug`` — units of the arm (a ``severity`` share, chosen by a hash of the unit id,
  so always the same units) are served as assigned but their exposures are never logged. Moves:
  SRM (fewer units in the arm than its weight says); per-request metrics stay put unless
  ``where`` makes the lost units unrepresentative.
- ``logging_loss`` — a share of clicks never reach the click log (label 0). Billing is per
  impression in its own pipeline, so revenue does not move. Moves: CTR down, calibration up
  (Σ pred / Σ logged clicks = 1/(1 − severity)), NE; prediction distribution unchanged; all arms
  alike.

A model rollback (``simulate(..., rolled_back=...)``) ends the rolled-back model's ``model:``
faults from the first simulated minute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evals.sim.scenario import FaultSpec, Scenario, fault_arm

__all__ = ["COLLAPSE_CODES", "PreparedFault", "prepare_faults", "scope_mask"]

BoolArr = npt.NDArray[np.bool_]
COLLAPSE_CODES = {"nan": 1, "out_of_range": 2, "constant": 3}
_NO_END = 1 << 40


@dataclass(frozen=True, slots=True)
class PreparedFault:
    """A fault resolved to the indices the engine works with."""

    index: int
    kind: str
    spec: FaultSpec
    experiment: int | None  # index in world.experiments
    arm: int | None  # arm index in that experiment (lifecycle order)
    model: int | None  # model index (model scope)
    where: tuple[tuple[str, npt.NDArray[np.int8]], ...]  # dimension -> allowed codes
    start: int
    end: int
    severity: float
    # stale_model: (model index, pinned refresh index, minute the pin ends) per affected model.
    pins: tuple[tuple[int, int, int], ...] = ()


def prepare_faults(
    scenario: Scenario,
    model_index: Mapping[str, int],
    dim_values: Mapping[str, Sequence[str]],
    *,
    rolled_back: Iterable[str] = (),
    from_minute: int = 0,
) -> list[PreparedFault]:
    """Resolve the scenario's faults to indices.

    Args:
        scenario: A validated scenario.
        model_index: Model id -> index.
        dim_values: Dimension -> its values in code order.
        rolled_back: Models rolled back: their ``model:`` faults end at ``from_minute``.
        from_minute: First minute being simulated.
    """
    rolled = set(rolled_back)
    exps = scenario.world.experiments
    exp_index = {e.id: i for i, e in enumerate(exps)}
    out: list[PreparedFault] = []
    for i, f in enumerate(scenario.faults):
        exp_i = exp_index[f.experiment] if f.experiment is not None else None
        arm_i = None
        if exp_i is not None:
            arm_i = list(exps[exp_i].arms).index(str(fault_arm(scenario, f)))
        end = f.end_minute if f.end_minute is not None else _NO_END
        if f.model is not None and f.model in rolled:
            end = min(end, from_minute)
        where = tuple(
            (
                dim,
                np.array(
                    [list(dim_values[dim]).index(v) for v in ([w] if isinstance(w, str) else w)],
                    dtype=np.int8,
                ),
            )
            for dim, w in f.where.items()
        )
        pins: tuple[tuple[int, int, int], ...] = ()
        if f.kind == "stale_model":
            pins = _pins(scenario, f, exp_i, model_index, end)
            end = max(pin[2] for pin in pins)
        out.append(
            PreparedFault(
                index=i,
                kind=f.kind,
                spec=f,
                experiment=exp_i,
                arm=arm_i,
                model=model_index[f.model] if f.model is not None else None,
                where=where,
                start=f.start_minute,
                end=end,
                severity=f.severity,
                pins=pins,
            )
        )
    return out


def _pins(
    scenario: Scenario,
    f: FaultSpec,
    exp_i: int | None,
    model_index: Mapping[str, int],
    end: int,
) -> tuple[tuple[int, int, int], ...]:
    """The versions a stale fault pins: the model in scope (every refreshing model if global)."""
    if exp_i is not None:
        arm = scenario.world.experiments[exp_i].arms[str(fault_arm(scenario, f))]
        ids = [arm.model or scenario.world.production_model]
    elif f.model is not None:
        ids = [f.model]
    else:
        ids = [m.id for m in scenario.world.models if m.refresh_minutes is not None]
    pins = []
    for model_id in ids:
        refresh = scenario.models[model_id].refresh_minutes
        assert refresh is not None  # checked when the scenario was loaded
        # Refreshing resumes at the first publication boundary after the fault ends.
        pin_end = -(-end // refresh) * refresh if end < _NO_END else _NO_END
        # The version due at start_minute (or later) is the first one never published.
        pins.append((model_index[model_id], (f.start_minute - 1) // refresh, pin_end))
    return tuple(pins)


def scope_mask(
    fault: PreparedFault,
    minute: npt.NDArray[np.int32],
    arms: Sequence[npt.NDArray[np.int16]],
    model: npt.NDArray[np.int8],
    dims: Mapping[str, npt.NDArray[np.int8]],
) -> BoolArr:
    """Requests in the fault's scope, filter and window.

    Args:
        fault: The prepared fault.
        minute: Scenario minute per request.
        arms: Arm index per request for each experiment (``-1`` = not in it).
        model: The model index the scope matches on, per request.
        dims: Dimension codes per request.
    """
    mask = (minute >= fault.start) & (minute < fault.end)
    if fault.experiment is not None:
        mask &= arms[fault.experiment] == fault.arm
    elif fault.model is not None:
        mask &= model == fault.model
    for dim, allowed in fault.where:
        codes = dims[dim]
        hit = codes == allowed[0]
        for value in allowed[1:]:
            hit |= codes == value
        mask &= hit
    return mask
