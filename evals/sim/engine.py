"""One block of minutes of the world: traffic, allocation, serving, faults, auction, logs.

The steps, in order (each fully vectorised over the block's requests):

1. Draw the block's traffic and every per-request random number, in a fixed order and with fixed
   shapes, so that kill switches and faults never shift the draws.
2. Keep the requests of the minutes asked for; give each a unit, its dimensions and true CTR.
3. Look the unit's arm up in every experiment (pool assigned by ``assign_many``), gated by the
   experiment's launch/stop window; route to the arm's model, else the production model.
4. Serving faults: fallback first (it replaces the model), then the model's own faults (stale,
   NE regression, miscalibration, collapse), then infrastructure (errors, latency).
5. The auction on eCPM, prices, clicks, logging loss, latency.
6. Exposures (one per request per experiment), less those an allocation bug never logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from evals.sim import economy as eco
from evals.sim.faults import COLLAPSE_CODES, PreparedFault, scope_mask
from evals.sim.world import World

__all__ = ["Block", "simulate_block"]

_RID_STRIDE = 10_000_000  # request_id = minute × stride + index within the minute
_US_PER_MINUTE = 60_000_000


@dataclass(frozen=True, slots=True)
class Block:
    """The telemetry rows of one block of minutes."""

    requests: pa.Table
    exposures: pa.Table


def _dict(codes: npt.NDArray[np.integer], values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(values, type=pa.string()))


def simulate_block(w: World, block: int, lo: int, hi: int) -> Block | None:
    """Simulate block ``block`` of the world and keep the minutes in ``[lo, hi)``.

    Returns:
        The block's rows, or None when no minute of the block is kept.
    """
    b_lo = block * w.block_minutes
    b_hi = b_lo + w.block_minutes
    if b_hi <= lo or b_lo >= hi:
        return None
    # 1. Every draw of the block, in a fixed order.
    rng = w.block_rng(block)
    minutes = np.arange(b_lo, b_hi, dtype=np.int64)
    counts = rng.poisson(w.traffic_mean(minutes))
    n = int(counts.sum())
    k_count = w.candidates
    jitter = rng.random(n, dtype=np.float32)
    unit_u = rng.random(n, dtype=np.float32)
    slot_u = rng.random(n, dtype=np.float32)
    cand = eco.ad_candidates(rng, (k_count, n))
    z = eco.normals(rng, (k_count, n))
    click_u = rng.random(n, dtype=np.float32)
    lat_z = eco.normals(rng, n)
    ops_u = rng.random(n, dtype=np.float32)
    fault_u = {}
    for f in w.faults:
        frng = w.fault_rng(block, f.index)
        fault_u[f.index] = frng.random(n, dtype=np.float32)
        if f.kind == "prediction_collapse":
            fault_u[-1 - f.index] = frng.random(n, dtype=np.float32)

    # 2. The requests kept, their units, dimensions and true CTR.
    minute = np.repeat(minutes.astype(np.int32), counts)
    per_row = np.repeat(counts, counts)
    within = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    if b_lo < lo or b_hi > hi:
        keep = np.flatnonzero((minute >= lo) & (minute < hi))
        minute, per_row, within = minute[keep], per_row[keep], within[keep]
        jitter, unit_u, slot_u, click_u, lat_z, ops_u = (
            a[keep] for a in (jitter, unit_u, slot_u, click_u, lat_z, ops_u)
        )
        cand, z = cand[:, keep], z[:, keep]
        fault_u = {i: u[keep] for i, u in fault_u.items()}
        n = keep.shape[0]
    if n == 0:
        return None
    ts = (
        w.start_us
        + minute.astype(np.int64) * _US_PER_MINUTE
        + ((within + jitter) / per_row * _US_PER_MINUTE).astype(np.int64)
    )
    request_id = minute.astype(np.int64) * _RID_STRIDE + within
    uidx = w.unit_index(unit_u)
    country = w.unit_country[uidx]
    platform = w.unit_platform[uidx]
    ad_type = np.minimum(
        np.searchsorted(w.adtype_cdf, slot_u, side="right"), len(w.adtype_cdf) - 1
    ).astype(np.int8)
    dims = {"country": country, "platform": platform, "ad_type": ad_type}
    log_req = w.unit_logctr[uidx] + (w.ctr_effects["ad_type"] + np.float32(w.log_base))[ad_type]
    if w.diurnal:
        curve = np.log(eco.diurnal_ctr(w.minute_of_day(minutes))).astype(np.float32)
        log_req += curve[minute - b_lo]

    # 3. Allocation (the pool was assigned by assign_many) and routing.
    arms = []
    for (start, stop), pool_arms in zip(w.exp_windows, w.exp_unit_arms, strict=True):
        arm = pool_arms[uidx]
        if start > minute[0] or stop <= minute[-1]:
            arm = np.where((minute >= start) & (minute < stop), arm, np.int16(-1))
        arms.append(arm)
    routed = np.full(n, w.production, dtype=np.int8)
    for exp, lut in reversed(w.model_luts):  # the first experiment listed wins
        model = lut[arms[exp]]
        routed = np.where(model >= 0, model, routed)
    ad_load = np.ones(n, dtype=np.float32)
    for exp, loads in w.adload_luts:
        ad_load *= loads[arms[exp]]

    # 4. Serving and its faults.
    error = ops_u < eco.BASE_ERROR_RATE
    fallback = (ops_u >= eco.BASE_ERROR_RATE) & (
        ops_u < eco.BASE_ERROR_RATE + eco.BASE_FALLBACK_RATE
    )
    for f in w.faults:
        if f.kind == "model_fallback":
            hit = scope_mask(f, minute, arms, routed, dims) & (fault_u[f.index] < f.severity)
            fallback |= hit
    served = np.where(fallback, np.int8(w.fallback_index), routed)
    var_rank = w.model_sd2[routed]
    var_rank = np.where(fallback, np.float32(w.fallback_sd**2), var_rank)
    var_cal = var_rank.copy()
    shift = np.zeros(n, dtype=np.float32)
    collapse = np.zeros(n, dtype=np.int8)
    lat_mult = np.ones(n, dtype=np.float32)
    versions = _Versions(w, b_lo, b_hi)
    version_code = versions.codes(routed, minute - b_lo)
    for f in w.faults:
        if f.kind in ("model_fallback", "allocation_bug", "logging_loss"):
            continue
        if f.kind == "infra_outage":
            hit = scope_mask(f, minute, arms, routed, dims)
            lat_mult = np.where(hit, np.float32(1.0 + 2.0 * f.severity), lat_mult)
            error |= hit & (fault_u[f.index] < f.severity)
            continue
        if f.kind == "stale_model":
            _stale(f, minute, arms, routed, dims, fallback, versions, version_code, var_rank, shift)
            continue
        hit = scope_mask(f, minute, arms, served, dims)
        if f.model is None:
            hit &= ~fallback
        if f.kind == "ne_regression":
            extra = np.float32(f.severity**2)
            var_rank = np.where(hit, var_rank + extra, var_rank)
            var_cal = np.where(hit, var_cal + extra, var_cal)
        elif f.kind == "miscalibration":
            shift = np.where(hit, shift + np.float32(np.log(f.severity)), shift)
        elif f.kind == "prediction_collapse":
            hit &= fault_u[f.index] < f.severity
            mode = f.spec.mode or "mixed"
            if mode == "mixed":
                code = (1 + np.minimum(fault_u[-1 - f.index] * 3, 2)).astype(np.int8)
            else:
                code = np.full(n, COLLAPSE_CODES[mode], dtype=np.int8)
            collapse = np.where(hit, code, collapse)
    fallback &= ~error
    collapsed = collapse > 0

    # 5. Auction, prices, clicks, latency.
    sd = np.sqrt(var_rank)
    shift += w.pilot.calibration(np.sqrt(var_cal))
    auction = eco.run_auction(
        cand, z, sd, collapsed if collapsed.any() else None, w.ad_score, w.ad_logbid
    )
    log_true = log_req + w.ad_logq[auction.winner]
    true_ctr = np.minimum(np.exp(log_true), np.float32(eco.MAX_TRUE_CTR))
    prediction = np.minimum(
        np.exp(log_true + auction.winner_noise + shift), np.float32(eco.MAX_PREDICTION)
    ).astype(np.float64)
    log_bid_fx = w.unit_logbid[uidx]
    log_const = np.float32(np.log(w.pilot.mean_ctr))
    log_price = auction.second_score + log_bid_fx + np.where(collapsed, log_const, log_req + shift)
    revenue = np.exp(log_price).astype(np.float64) * ad_load
    if collapsed.any():
        invalid = (collapse == COLLAPSE_CODES["nan"]) | (collapse == COLLAPSE_CODES["out_of_range"])
        oor = collapse == COLLAPSE_CODES["out_of_range"]
        prediction = np.where(oor, np.log(prediction / (1 - prediction)), prediction)
        prediction = np.where(collapse == COLLAPSE_CODES["constant"], w.pilot.mean_ctr, prediction)
        prediction[collapse == COLLAPSE_CODES["nan"]] = np.nan
        revenue[invalid] = 0.0
    prediction[error] = np.nan
    revenue[error] = 0.0
    label = (click_u < true_ctr) & ~error
    for f in w.faults:
        if f.kind == "logging_loss":
            hit = scope_mask(f, minute, arms, routed, dims) & (fault_u[f.index] < f.severity)
            label &= ~hit
    latency = (
        eco.LATENCY_MEDIAN_MS
        * np.exp(eco.LATENCY_SIGMA * lat_z + w.latency_effects["platform"][platform])
        * lat_mult
        * (1.0 + 0.1 * (ad_load - 1.0))
    )
    latency = np.where(fallback, latency * np.float32(eco.FALLBACK_SPEEDUP), latency)
    latency = np.where(
        error, np.float32(eco.TIMEOUT_MS) * np.exp(np.float32(0.2) * lat_z), latency
    ).astype(np.float64)

    ts_arr = pa.array(ts, type=pa.timestamp("us"))
    unit_id = w.unit_ids[uidx]
    requests = pa.Table.from_arrays(
        [
            ts_arr,
            pa.array(request_id),
            pa.array(unit_id),
            _dict(country, w.dim_values["country"]),
            _dict(platform, w.dim_values["platform"]),
            _dict(ad_type, w.dim_values["ad_type"]),
            _dict(routed, w.model_ids),
            _dict(version_code, versions.names),
            pa.array(prediction),
            pa.array(fallback),
            pa.array(label.astype(np.int32)),
            pa.array(revenue),
            pa.array(latency),
            pa.array(error),
        ],
        names=REQUEST_COLUMNS,
    )
    exposures = _exposures(w, arms, minute, uidx, dims, ts, request_id, unit_id)
    return Block(requests=requests, exposures=exposures)


REQUEST_COLUMNS = [
    "ts",
    "request_id",
    "unit_id",
    "country",
    "platform",
    "ad_type",
    "model_id",
    "model_version",
    "prediction",
    "fallback",
    "label",
    "revenue",
    "latency_ms",
    "error",
]
EXPOSURE_COLUMNS = ["ts", "request_id", "unit_id", "experiment_id", "arm"]


def _stale(
    f: PreparedFault,
    minute: npt.NDArray[np.int32],
    arms: list[npt.NDArray[np.int16]],
    routed: npt.NDArray[np.int8],
    dims: dict[str, npt.NDArray[np.int8]],
    fallback: npt.NDArray[np.bool_],
    versions: _Versions,
    version_code: npt.NDArray[np.int32],
    var_rank: npt.NDArray[np.float32],
    shift: npt.NDArray[np.float32],
) -> None:
    """Pin the served version and let the world drift away from it (in place).

    The drift starts when the pinned version's successor was due, not at ``start_minute``:
    until then the pinned version is the one the schedule would serve anyway (a fresh model is
    exact in this world), so a refresh that stops mid-cadence harms nothing before its first
    missed publication. Drift before that would be an NE regression in all but name.
    """
    scope = scope_mask(f, minute, arms, routed, dims)
    for model, k, end in f.pins:
        pinned = scope & (routed == model) & (minute < end)
        version_code[pinned] = versions.code(model, k)
        drifting = pinned & ~fallback & (minute >= versions.published(model, k + 1))
        sd = f.severity * (minute[drifting] - versions.published(model, k + 1)) / 60.0
        var_rank[drifting] += (sd * sd).astype(np.float32)
        # The world moves in every direction (mean-preserving in CTR): no recalibration follows.
        shift[drifting] -= (0.5 * sd * sd).astype(np.float32)


class _Versions:
    """The block's ``model_version`` dictionary and a (model × minute) table of codes into it."""

    def __init__(self, w: World, b_lo: int, b_hi: int) -> None:
        self._w = w
        self._span = b_hi - b_lo
        self.names: list[str] = []
        self._index: dict[tuple[int, int], int] = {}
        minutes = np.arange(b_lo, b_hi, dtype=np.int64)
        table = np.zeros((len(w.model_ids), self._span), dtype=np.int32)
        for m, refresh in enumerate(w.model_refresh.tolist()):
            ks = minutes // refresh if refresh else np.zeros_like(minutes)
            for k in np.unique(ks).tolist():
                table[m, ks == k] = self.code(m, k)
        self._table = table.ravel()

    def published(self, model: int, k: int) -> int:
        """The minute a model's ``k``-th version is (or was due to be) published."""
        return k * int(self._w.model_refresh[model])

    def code(self, model: int, k: int) -> int:
        """Code of a model's ``k``-th version (added to the dictionary when new)."""
        key = (model, k)
        if key not in self._index:
            self._index[key] = len(self.names)
            self.names.append(self._w.version(model, k))
        return self._index[key]

    def codes(
        self, routed: npt.NDArray[np.int8], minute_in_block: npt.NDArray[np.int32]
    ) -> npt.NDArray[np.int32]:
        """The live version's code of each request's model."""
        out: npt.NDArray[np.int32] = self._table[
            routed.astype(np.int32) * self._span + minute_in_block
        ]
        return out


def _exposures(
    w: World,
    arms: list[npt.NDArray[np.int16]],
    minute: npt.NDArray[np.int32],
    uidx: npt.NDArray[np.int32],
    dims: dict[str, npt.NDArray[np.int8]],
    ts: npt.NDArray[np.int64],
    request_id: npt.NDArray[np.int64],
    unit_id: npt.NDArray[np.int64],
) -> pa.Table:
    """One row per request per experiment, less the exposures an allocation bug loses."""
    rows, exp_codes, arm_codes = [], [], []
    for e, arm in enumerate(arms):
        inside = arm >= 0
        for f in w.faults:
            if f.kind == "allocation_bug" and f.experiment == e:
                lost = scope_mask(f, minute, arms, np.zeros(0, dtype=np.int8), dims)
                inside &= ~(lost & (w.lost_units[f.index][uidx] < f.severity))
        idx = np.flatnonzero(inside)
        rows.append(idx)
        exp_codes.append(np.full(idx.shape, e, dtype=np.int16))
        arm_codes.append(w.exp_arm_codes[e][arm[idx]])
    idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    exp_code = np.concatenate(exp_codes) if rows else np.zeros(0, dtype=np.int16)
    arm_code = np.concatenate(arm_codes) if rows else np.zeros(0, dtype=np.int8)
    return pa.Table.from_arrays(
        [
            pa.array(ts[idx], type=pa.timestamp("us")),
            pa.array(request_id[idx]),
            pa.array(unit_id[idx]),
            _dict(exp_code, w.exp_ids),
            _dict(arm_code, w.arm_names),
        ],
        names=EXPOSURE_COLUMNS,
    )
