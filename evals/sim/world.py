"""A scenario compiled for simulation: unit pool, ad pool, effects, allocation, faults, pilot.

Built once per :func:`evals.sim.simulate` call; every block of minutes then reads it. Randomness
comes from numpy ``SeedSequence([seed, stream, ...])`` streams: the unit pool, the ad pool and the
pilot each have their own, every block of minutes has one for the world and one per fault. A block
is a fixed, aligned run of minutes, so a world is the same whichever slices it is simulated in,
and adding a fault does not change the traffic it falls on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from evals.sim import economy as eco
from evals.sim.bridge import unit_arms, world_snapshot
from evals.sim.faults import PreparedFault, prepare_faults
from evals.sim.scenario import Scenario
from lifecycle.allocation import KillScope

__all__ = ["TRAINING_LAG_MINUTES", "World", "build_world", "version_name"]

F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]
TRAINING_LAG_MINUTES = 30  # a refreshed snapshot is published 30 min after its training cut-off
STATIC_AGE = timedelta(hours=36)  # a model that never refreshes was trained 36 h before the start
STATIC_PUBLISHED = timedelta(hours=24)
BLOCK_REQUESTS = 400_000
MAX_BLOCK_MINUTES = 64
_STREAM_UNITS, _STREAM_ADS, _STREAM_PILOT, _STREAM_BLOCK, _STREAM_FAULT = 1, 2, 3, 4, 5
_STREAM_SNAPSHOT, _STREAM_LOST = 6, 7


@dataclass(slots=True)
class World:
    """Everything a block of minutes needs, compiled from a scenario."""

    scenario: Scenario
    seed: int
    start_us: int
    block_minutes: int
    candidates: int
    dim_values: dict[str, list[str]]
    adtype_cdf: F32
    ctr_effects: dict[str, F32]
    bid_effects: dict[str, F32]
    latency_effects: dict[str, F32]
    unit_ids: npt.NDArray[np.int64]
    unit_country: I8
    unit_platform: I8
    unit_logctr: F32  # unit effect × country × platform CTR effects (log), before the base
    unit_logbid: F32  # country × platform bid effects (log)
    ad_score: F32
    ad_logbid: F32
    ad_logq: F32
    model_ids: list[str]
    model_sd2: F32
    model_refresh: npt.NDArray[np.int64]
    fallback_index: int  # -1: the built-in fallback model
    fallback_sd: float
    production: int
    exp_ids: list[str]
    exp_windows: list[tuple[int, int]]
    exp_unit_arms: list[npt.NDArray[np.int16]]
    exp_arm_codes: list[npt.NDArray[np.int8]]  # local arm -> index in arm_names
    arm_names: list[str]
    model_luts: list[tuple[int, npt.NDArray[np.int8]]]  # (exp, local arm -> model, -1 last)
    adload_luts: list[tuple[int, F32]]
    faults: list[PreparedFault]
    lost_units: dict[int, F32]  # allocation_bug fault -> a uniform per unit
    pilot: eco.Pilot
    diurnal: bool
    rpm: float
    log_base: float = 0.0
    version_cache: dict[tuple[int, int], str] = field(default_factory=dict)

    def block_rng(self, block: int) -> np.random.Generator:
        """The world's generator for a block of minutes."""
        return np.random.default_rng([self.seed, _STREAM_BLOCK, block])

    def fault_rng(self, block: int, fault: int) -> np.random.Generator:
        """A fault's own generator for a block (so faults never shift the world's draws)."""
        return np.random.default_rng([self.seed, _STREAM_FAULT, block, fault])

    def minute_of_day(self, minutes: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """UTC minute of the day of scenario minutes."""
        start = self.scenario.start
        offset = start.hour * 60 + start.minute + start.second / 60.0
        return (offset + minutes.astype(np.float64)) % 1440.0

    def traffic_mean(self, minutes: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Expected requests in each minute."""
        if not self.diurnal:
            return np.full(minutes.shape, self.rpm)
        return self.rpm * eco.diurnal_traffic(self.minute_of_day(minutes))

    def unit_index(self, u: F32) -> npt.NDArray[np.int32]:
        """Map a uniform draw to a unit of the pool (20 % of units make 60 % of requests)."""
        n_units = self.unit_ids.shape[0]
        heavy = eco.HEAVY_UNIT_SHARE * n_units
        share = eco.HEAVY_TRAFFIC_SHARE
        pos = np.where(
            u < share, u * (heavy / share), heavy + (u - share) * ((n_units - heavy) / (1 - share))
        )
        out: npt.NDArray[np.int32] = np.minimum(pos.astype(np.int32), n_units - 1)
        return out

    def version(self, model: int, k: int) -> str:
        """The ``model_version`` string of a model's ``k``-th refresh."""
        key = (model, k)
        name = self.version_cache.get(key)
        if name is None:
            name = version_name(self.scenario, self.model_ids[model], k)
            self.version_cache[key] = name
        return name


def version_name(scenario: Scenario, model_id: str, k: int) -> str:
    """A refreshing model's ``k``-th version is named by its publication time (UTC)."""
    spec = scenario.models[model_id]
    if spec.refresh_minutes is None:
        return spec.version
    published = scenario.start + timedelta(minutes=k * spec.refresh_minutes)
    return published.strftime("%y%m%d.%H%M")


def snapshot_times(scenario: Scenario, model_id: str, k: int) -> tuple[datetime, datetime]:
    """``(trained_at, published_at)`` of a model's ``k``-th version."""
    spec = scenario.models[model_id]
    if spec.refresh_minutes is None:
        return scenario.start - STATIC_AGE, scenario.start - STATIC_PUBLISHED
    published = scenario.start + timedelta(minutes=k * spec.refresh_minutes)
    return published - timedelta(minutes=TRAINING_LAG_MINUTES), published


def _cdf(shares: Iterable[float]) -> F32:
    cdf = np.cumsum(np.fromiter(shares, dtype=np.float64))
    cdf /= cdf[-1]
    return cdf.astype(np.float32)


def _block_minutes(scenario: Scenario) -> int:
    peak = scenario.world.requests_per_minute * (1.0 + eco.DIURNAL_TRAFFIC_AMPLITUDE)
    minutes = max(1, min(MAX_BLOCK_MINUTES, int(BLOCK_REQUESTS / peak)))
    return 1 << (minutes.bit_length() - 1)  # a power of two, fixed by the scenario alone


def _ne_combos(base: Iterable[float], extra: list[float]) -> list[float]:
    """Every noise sd recalibration may meet: a model's sd plus any subset of ne_regressions."""
    out = set()
    for sd in base:
        for mask in range(1 << len(extra)):
            var = sd * sd + sum(e * e for i, e in enumerate(extra) if mask >> i & 1)
            out.add(math.sqrt(var))
    return sorted(out)


def build_world(
    scenario: Scenario,
    *,
    kill_switches: Iterable[tuple[KillScope, str]] = (),
    rolled_back: Iterable[str] = (),
    from_minute: int = 0,
) -> World:
    """Compile a scenario for simulation.

    Args:
        scenario: A validated scenario.
        kill_switches: Active kill switches; the real allocation skips blocked experiments.
        rolled_back: Models whose ``model:`` faults end at ``from_minute``.
        from_minute: The first minute to be simulated.
    """
    w = scenario.world
    seed = scenario.seed
    mix = w.dimension_mix()
    dim_values = {dim: list(shares) for dim, shares in mix.items()}
    n_units = w.units or max(1000, 20 * w.requests_per_minute)
    units_rng = np.random.default_rng([seed, _STREAM_UNITS])
    unit_country = np.searchsorted(
        _cdf(mix["country"].values()), units_rng.random(n_units, dtype=np.float32), side="right"
    ).astype(np.int8)
    unit_platform = np.searchsorted(
        _cdf(mix["platform"].values()), units_rng.random(n_units, dtype=np.float32), side="right"
    ).astype(np.int8)
    np.minimum(unit_country, len(mix["country"]) - 1, out=unit_country)
    np.minimum(unit_platform, len(mix["platform"]) - 1, out=unit_platform)
    sigma = eco.UNIT_SIGMA
    unit_logeff = (units_rng.standard_normal(n_units, dtype=np.float32) * sigma) - sigma**2 / 2
    unit_ids = np.arange(1, n_units + 1, dtype=np.int64)

    ads_rng = np.random.default_rng([seed, _STREAM_ADS])
    ad_logbid = (
        math.log(eco.BID_MEDIAN) + eco.BID_SIGMA * ads_rng.standard_normal(eco.AD_POOL)
    ).astype(np.float32)
    ad_logq = (eco.AD_SIGMA * ads_rng.standard_normal(eco.AD_POOL) - eco.AD_SIGMA**2 / 2).astype(
        np.float32
    )
    ad_score = ad_logbid + ad_logq

    ctr_effects = {d: eco.effect_table(eco.CTR_EFFECTS, d, mix[d], normalise=True) for d in mix}
    bid_effects = {d: eco.effect_table(eco.BID_EFFECTS, d, mix[d], normalise=False) for d in mix}
    lat_effects = {
        d: eco.effect_table(eco.LATENCY_EFFECTS, d, mix[d], normalise=False) for d in mix
    }

    model_ids = [m.id for m in w.models]
    model_index = {m: i for i, m in enumerate(model_ids)}
    sds = [eco.noise_sd(m.quality) for m in w.models]
    fallback_index = model_index[w.fallback_model] if w.fallback_model is not None else -1
    fallback_sd = sds[fallback_index] if fallback_index >= 0 else eco.noise_sd(eco.FALLBACK_QUALITY)

    snapshot = world_snapshot(scenario, kill_switches)
    exp_ids = [e.id for e in w.experiments]
    arms_by_exp = unit_arms(snapshot, unit_ids, exp_ids)
    arm_names: list[str] = []
    exp_arm_codes, model_luts, adload_luts, windows = [], [], [], []
    for i, e in enumerate(w.experiments):
        order = snapshot.get(e.id).arms  # lifecycle's arm order
        codes = []
        for arm in order:
            if arm not in arm_names:
                arm_names.append(arm)
            codes.append(arm_names.index(arm))
        exp_arm_codes.append(np.array(codes, dtype=np.int8))
        specs = [e.arms[a] for a in order]
        if any(s.model is not None for s in specs):
            # A shadow experiment needs nothing here: lifecycle's assign_many puts nobody in it
            # (they are served production), and its drawn arms are scored apart (evals.sim.shadow).
            lut = [model_index[s.model] if s.model is not None else -1 for s in specs]
            model_luts.append((i, np.array([*lut, -1], dtype=np.int8)))
        if any(s.ad_load is not None and s.ad_load != 1.0 for s in specs):
            loads = [s.ad_load if s.ad_load is not None else 1.0 for s in specs]
            adload_luts.append((i, np.array([*loads, 1.0], dtype=np.float32)))
        windows.append((e.start_minute, e.end_minute if e.end_minute is not None else 1 << 40))

    faults = prepare_faults(
        scenario, model_index, dim_values, rolled_back=rolled_back, from_minute=from_minute
    )
    lost_units = {
        f.index: np.random.default_rng([seed, _STREAM_LOST, f.index]).random(
            n_units, dtype=np.float32
        )
        for f in faults
        if f.kind == "allocation_bug"
    }
    ne_extra = [f.severity for f in faults if f.kind == "ne_regression"]
    world = World(
        scenario=scenario,
        seed=seed,
        start_us=int((scenario.start - datetime(1970, 1, 1)) / timedelta(microseconds=1)),
        block_minutes=_block_minutes(scenario),
        candidates=w.candidates,
        dim_values=dim_values,
        adtype_cdf=_cdf(mix["ad_type"].values()),
        ctr_effects=ctr_effects,
        bid_effects=bid_effects,
        latency_effects=lat_effects,
        unit_ids=unit_ids,
        unit_country=unit_country,
        unit_platform=unit_platform,
        unit_logctr=(
            unit_logeff
            + ctr_effects["country"][unit_country]
            + ctr_effects["platform"][unit_platform]
        ).astype(np.float32),
        unit_logbid=(
            bid_effects["country"][unit_country] + bid_effects["platform"][unit_platform]
        ).astype(np.float32),
        ad_score=ad_score,
        ad_logbid=ad_logbid,
        ad_logq=ad_logq,
        model_ids=model_ids,
        model_sd2=np.square(np.array(sds, dtype=np.float32)),
        model_refresh=np.array([m.refresh_minutes or 0 for m in w.models], dtype=np.int64),
        fallback_index=fallback_index,
        fallback_sd=fallback_sd,
        production=model_index[w.production_model],
        exp_ids=exp_ids,
        exp_windows=windows,
        exp_unit_arms=[arms_by_exp[e] for e in exp_ids],
        exp_arm_codes=exp_arm_codes,
        arm_names=arm_names,
        model_luts=model_luts,
        adload_luts=adload_luts,
        faults=faults,
        lost_units=lost_units,
        # The pilot samples the world's own traffic, so it is measured once the world exists.
        pilot=eco.Pilot(np.zeros(1), np.zeros(1), np.ones(1), 0.0, w.base_ctr),
        diurnal=w.diurnal,
        rpm=float(w.requests_per_minute),
    )
    world.pilot = _pilot(world, _ne_combos([*sds, fallback_sd], ne_extra), sds[world.production])
    world.log_base = world.pilot.log_base
    return world


def _pilot(world: World, sds: list[float], production_sd: float) -> eco.Pilot:
    rng = np.random.default_rng([world.seed, _STREAM_PILOT])
    n = eco.PILOT_REQUESTS
    uidx = world.unit_index(rng.random(n, dtype=np.float32))
    ad_type = np.searchsorted(world.adtype_cdf, rng.random(n, dtype=np.float32), side="right")
    ad_type = np.minimum(ad_type, len(world.adtype_cdf) - 1)
    log_req = world.unit_logctr[uidx] + world.ctr_effects["ad_type"][ad_type]
    k = world.candidates
    cand = eco.ad_candidates(rng, (k, n))
    z = eco.normals(rng, (k, n))
    return eco.run_pilot(
        log_req,
        cand,
        z,
        world.ad_score,
        world.ad_logbid,
        world.ad_logq,
        sds,
        production_sd,
        world.scenario.world.base_ctr,
    )
