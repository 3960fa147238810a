"""The simulated ads economy: traffic, users, ads, model predictions and the auction.

All of it is vectorised numpy over a block of requests; nothing here draws its own randomness
(the engine passes the draws in), so a world is reproducible from its seed alone.

The model of the world (every number is a module constant below):

- **Traffic.** ``requests_per_minute`` is the daily mean; each minute's count is Poisson. With
  ``diurnal`` the mean follows ``1 + 0.45·cos(2π(h − 21)/24)`` of the UTC hour ``h`` (peak 21:00,
  trough 09:00 UTC) and CTR follows the same curve with amplitude 0.06.
- **Units.** A pool of ``world.units`` integer ids (default ``20 × requests_per_minute``); 20 % of
  the units make 60 % of the requests. Country and platform belong to the unit (drawn once from
  the dimension mix); ``ad_type`` belongs to the request (the slot).
- **True CTR.** ``base × country × platform × ad_type effects × unit effect × ad effect``: the
  dimension effects come from tables (a hash of the value for values the tables do not know),
  normalised so the mix averages 1; the unit effect is log-normal (σ 0.8) and the ad effect of
  each candidate log-normal (σ 0.8). ``base`` is scaled so the CTR of the ads actually served by
  the production model equals ``world.base_ctr``.
- **Candidates and bids.** Each request draws ``world.candidates`` ads from a pool of 16 384 ads;
  each ad has a fixed CPC bid (log-normal, median $0.80, σ 0.5), scaled by a country and a
  platform bid effect.
- **Predictions.** A model of quality ``q`` predicts ``log pCTR = log CTR + σ_q·z + c(σ_q)`` per
  candidate, with ``σ_q = 2(1 − q)`` and ``z`` standard normal (for CTR ≪ 1, log ≈ logit). The
  constant ``c`` recalibrates on *served* impressions (the model is trained on what it serves), so
  Σ prediction = Σ clicks for a healthy model, whatever its quality. ``c`` is measured once per
  world on a pilot sample of the world's own traffic.
- **Auction and price.** The served ad maximises eCPM = bid × pCTR. Billing is CPM on pCTR
  (oCPM): the impression is charged the runner-up's eCPM, ``bid₂ × pCTR₂`` (second price per
  impression). So a noisier model serves worse ads (lower realised CTR) and, once recalibrated,
  earns lower prices; a model predicting ``c ×`` too high raises every price by ``c`` (and
  overcharges advertisers), ``c < 1`` lowers prices; an A/A split changes nothing. Revenue is
  multiplied by the arm's ``ad_load`` (more ad slots per request); ad load changes no model metric.
- **Clicks.** ``label ~ Bernoulli(true CTR of the served ad)``; revenue does not depend on clicks
  (billing is per impression, in its own pipeline).
- **Latency and errors.** Latency is log-normal (median 38 ms, σ 0.3) × a platform effect; 0.05 %
  of requests error (timeout, ~300 ms, no ad: label 0, revenue 0, no prediction) and 0.1 % are
  served by the fallback model (quality 0.5 unless ``world.fallback_model``), 20 % faster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import xxhash
from scipy.special import ndtri

__all__ = [
    "AD_POOL",
    "BASE_ERROR_RATE",
    "BASE_FALLBACK_RATE",
    "FALLBACK_QUALITY",
    "LATENCY_MEDIAN_MS",
    "TIMEOUT_MS",
    "Auction",
    "Pilot",
    "ad_candidates",
    "diurnal_ctr",
    "diurnal_traffic",
    "effect_table",
    "noise_sd",
    "normals",
    "run_auction",
    "run_pilot",
]

F32 = npt.NDArray[np.float32]

AD_POOL = 1 << 14  # a power of two (see ad_candidates)
BID_MEDIAN = 0.8
BID_SIGMA = 0.5
AD_SIGMA = 0.8
UNIT_SIGMA = 0.8
HEAVY_UNIT_SHARE = 0.2  # 20 % of units ...
HEAVY_TRAFFIC_SHARE = 0.6  # ... make 60 % of the requests
LATENCY_MEDIAN_MS = 38.0
LATENCY_SIGMA = 0.3
TIMEOUT_MS = 300.0
BASE_ERROR_RATE = 0.0005
BASE_FALLBACK_RATE = 0.001
FALLBACK_QUALITY = 0.5
FALLBACK_SPEEDUP = 0.8
DIURNAL_TRAFFIC_AMPLITUDE = 0.45
DIURNAL_CTR_AMPLITUDE = 0.06
DIURNAL_PEAK_HOUR_UTC = 21.0
MAX_TRUE_CTR = 0.9
MAX_PREDICTION = 0.999
PILOT_REQUESTS = 100_000

# Multiplicative effects per dimension value; unknown values get a stable hash-derived effect.
CTR_EFFECTS: dict[str, dict[str, float]] = {
    "country": {"US": 1.1, "GB": 1.05, "DE": 0.95, "BR": 1.0, "IN": 0.85, "JP": 0.9},
    "platform": {"ios": 1.1, "android": 1.0, "web": 0.75},
    "ad_type": {"feed": 1.0, "story": 0.8, "video": 1.3},
}
BID_EFFECTS: dict[str, dict[str, float]] = {
    "country": {"US": 1.5, "GB": 1.2, "DE": 1.2, "JP": 1.1, "BR": 0.5, "IN": 0.3},
    "platform": {"ios": 1.2, "android": 0.9, "web": 0.8},
}
LATENCY_EFFECTS: dict[str, dict[str, float]] = {
    "platform": {"ios": 1.0, "android": 1.15, "web": 1.3},
}


# Normal draws by table: the 2**16 mid-point quantiles of N(0, 1), indexed by 16 random bits.
# Indistinguishable from N(0, 1) at any sample size used here (tails cut at ±4.17) and three times
# cheaper than the ziggurat.
_NORMAL_TABLE = ndtri((np.arange(1 << 16) + 0.5) / (1 << 16)).astype(np.float32)


def normals(rng: np.random.Generator, shape: int | tuple[int, ...]) -> F32:
    """Standard normal draws (float32) from the quantile table."""
    size = int(np.prod(shape))
    bits = np.frombuffer(rng.bytes(2 * size), dtype=np.uint16).reshape(shape)
    out: F32 = _NORMAL_TABLE[bits]
    return out


def ad_candidates(rng: np.random.Generator, shape: tuple[int, int]) -> npt.NDArray[np.int16]:
    """Uniform ad ids of the pool (its size is a power of two, so masking is exact)."""
    size = shape[0] * shape[1]
    bits = np.frombuffer(rng.bytes(2 * size), dtype=np.int16).reshape(shape)
    out: npt.NDArray[np.int16] = bits & np.int16(AD_POOL - 1)
    return out


def noise_sd(quality: float) -> float:
    """Standard deviation of a model's log-prediction noise: ``2 (1 − quality)``."""
    return 2.0 * (1.0 - quality)


def _hashed_effect(dim: str, value: str, lo: float = 0.8, hi: float = 1.25) -> float:
    u = xxhash.xxh3_64_intdigest(f"{dim}={value}".encode()) / 2.0**64
    return lo + (hi - lo) * u


def effect_table(
    tables: Mapping[str, Mapping[str, float]],
    dim: str,
    mix: Mapping[str, float],
    *,
    normalise: bool,
) -> F32:
    """Log effects of a dimension's values, in the mix's order.

    Args:
        tables: Effect tables by dimension.
        dim: The dimension.
        mix: Value -> share.
        normalise: Scale so that the share-weighted mean effect is 1.
    """
    table = tables.get(dim)
    if table is None:
        return np.zeros(len(mix), dtype=np.float32)
    effects = np.array([table.get(v, _hashed_effect(dim, v)) for v in mix], dtype=np.float64)
    if normalise:
        effects /= float(np.dot(effects, np.array(list(mix.values()))))
    return np.log(effects).astype(np.float32)


def _hour_curve(
    minute_of_day_utc: npt.NDArray[np.float64], amplitude: float
) -> npt.NDArray[np.float64]:
    hours = minute_of_day_utc / 60.0
    return 1.0 + amplitude * np.cos(2.0 * math.pi * (hours - DIURNAL_PEAK_HOUR_UTC) / 24.0)


def diurnal_traffic(minute_of_day_utc: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Traffic multiplier at each UTC minute of the day (mean 1 over a day)."""
    return _hour_curve(minute_of_day_utc, DIURNAL_TRAFFIC_AMPLITUDE)


def diurnal_ctr(minute_of_day_utc: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """CTR multiplier at each UTC minute of the day (mean 1 over a day)."""
    return _hour_curve(minute_of_day_utc, DIURNAL_CTR_AMPLITUDE)


@dataclass(frozen=True, slots=True)
class Auction:
    """The outcome of a block of auctions (per request)."""

    winner: npt.NDArray[np.int32]  # ad index in the pool
    second_score: F32  # runner-up's log(bid × pCTR) before per-request terms
    winner_noise: F32  # σ·z of the winner


def run_auction(
    cand: npt.NDArray[np.int16],
    z: F32,
    sd: F32,
    by_bid: npt.NDArray[np.bool_] | None,
    ad_score: F32,
    ad_logbid: F32,
) -> Auction:
    """Rank each request's candidates by eCPM and pick the winner and the runner-up.

    Scores are per candidate ``log bid + log ad effect + σ·z``; terms shared by all candidates of a
    request (user, dimensions, calibration) cannot change the order and are added by the caller.

    Args:
        cand: Candidate ad ids, shape ``(K, n)``.
        z: Standard normal draws, shape ``(K, n)``.
        sd: Noise sd of the serving model per request, shape ``(n,)``.
        by_bid: Requests whose predictions collapsed: they rank by bid alone.
        ad_score: ``log bid + log ad effect`` per ad of the pool.
        ad_logbid: ``log bid`` per ad of the pool.
    """
    k_count, n = cand.shape
    scores = ad_score[cand]
    noise = z * sd
    scores += noise
    if by_bid is not None:
        rows = np.flatnonzero(by_bid)
        scores[:, rows] = ad_logbid[cand[:, rows]]
    # Top two per request, in place: second = max(second, min(score, best)).
    best = scores[0].copy()
    second = np.full(n, -np.inf, dtype=np.float32)
    best_k = np.zeros(n, dtype=np.int64)
    for k in range(1, k_count):
        score = scores[k]
        best_k[score > best] = k
        np.maximum(second, np.minimum(score, best), out=second)
        np.maximum(best, score, out=best)
    flat = best_k * n + np.arange(n)
    winner = cand.ravel()[flat].astype(np.int32)
    winner_noise = noise.ravel()[flat]
    return Auction(winner=winner, second_score=second, winner_noise=winner_noise)


@dataclass(frozen=True, slots=True)
class Pilot:
    """What the world measures once on a pilot sample of its own traffic.

    ``log_cal[i]`` is the served-impression recalibration constant for noise sd ``sds[i]``;
    ``ne[i]`` the expected normalised entropy of that model once calibrated; ``log_base`` scales
    the true CTR so the production model serves ``base_ctr``; ``mean_ctr`` is that served CTR.
    """

    sds: npt.NDArray[np.float64]
    log_cal: npt.NDArray[np.float64]
    ne: npt.NDArray[np.float64]
    log_base: float
    mean_ctr: float

    def calibration(self, sd: npt.NDArray[np.float32]) -> F32:
        """Recalibration constant for each request's sd (exact at the pilot's sds)."""
        return np.interp(sd, self.sds, self.log_cal).astype(np.float32)

    def expected_ne(self, sd: float) -> float:
        """Expected serving NE of a calibrated model with noise ``sd``."""
        return float(np.interp(sd, self.sds, self.ne))


def run_pilot(
    log_req: F32,
    cand: npt.NDArray[np.int16],
    z: F32,
    ad_score: F32,
    ad_logbid: F32,
    ad_logq: F32,
    sds: Sequence[float],
    production_sd: float,
    base_ctr: float,
) -> Pilot:
    """Measure calibration constants, expected NE and the CTR scale on pilot draws.

    Args:
        log_req: Per-request log CTR factor (dimensions × unit), before the base.
        cand: Candidate ads ``(K, n)``.
        z: Normal draws ``(K, n)`` (common to every sd, so the curve is smooth).
        ad_score: Per ad ``log bid + log ad effect``.
        ad_logbid: Per ad log bid.
        ad_logq: Per ad log ad effect.
        sds: Every noise sd the world can serve with a recalibration.
        production_sd: Noise sd of the production model (sets the CTR scale).
        base_ctr: The CTR the production model should serve.
    """
    grid = np.unique(np.asarray([*sds, production_sd], dtype=np.float64))
    n = log_req.shape[0]
    served_ctr: dict[float, F32] = {}
    raw_pred: dict[float, F32] = {}
    for sd in grid:
        sd_arr = np.full(n, sd, dtype=np.float32)
        auction = run_auction(cand, z, sd_arr, None, ad_score, ad_logbid)
        log_true = log_req + ad_logq[auction.winner]
        served_ctr[float(sd)] = np.exp(log_true)
        raw_pred[float(sd)] = np.exp(log_true + auction.winner_noise)
    mean_at_1 = float(np.mean(served_ctr[float(production_sd)]))
    scale = base_ctr / mean_at_1
    log_cal, ne = [], []
    for sd in grid:
        true = np.minimum(served_ctr[float(sd)] * scale, MAX_TRUE_CTR)
        raw = raw_pred[float(sd)] * scale
        c = float(np.sum(true) / np.sum(raw))
        pred = np.clip(raw.astype(np.float64) * c, 1e-12, 1 - 1e-12)
        t = true.astype(np.float64)
        loss = -(t * np.log(pred) + (1 - t) * np.log1p(-pred)).mean()
        p = float(t.mean())
        entropy = -(p * math.log(p) + (1 - p) * math.log1p(-p))
        log_cal.append(math.log(c))
        ne.append(loss / entropy)
    return Pilot(
        sds=grid,
        log_cal=np.asarray(log_cal),
        ne=np.asarray(ne),
        log_base=math.log(scale),
        mean_ctr=base_ctr,
    )
