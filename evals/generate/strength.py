"""Signal strength: how large a fault is relative to the smallest effect the checks could call.

A fault's **signal strength** is its effect on the metric that best reveals it, divided by the
smallest effect Vigil's own checks would *fail* on, given the traffic the fault touched between its
onset and the alert. Two things bound what a check can call (see docs/generated.md, "Detectable"):

1. **Statistics** at the checks' own level. A check fails at a family-wise α of 10⁻³
   (:data:`ALPHA_FAIL`), Bonferroni over the time segments it scans (:data:`SEGMENTS`) and Holm
   over its family of comparisons (``family``: ``2·arms − 1`` in an experiment, every non-control
   arm against control and every arm against its own baseline; 1 for a model or all traffic)::

       statistical = effect / (z · σ · sqrt(1/n + 1/n_ref)),
       z = z(1 − α'/2) + z(power),  α' = ALPHA_FAIL / (SEGMENTS · family),  power 0.8

   (:func:`z_checks`; about 4.9 for a two-arm experiment, against 2.80 for a single test at
   α 0.05 — :data:`Z_DETECT`, the textbook figure, kept as :func:`statistical_strength`).
2. **Materiality**: the smallest change the check calls a failure at all, taken from the checks'
   own parameters (:func:`material_effect`): a doubling of a rare-event rate (fallback, errors,
   invalid predictions; never below 2 in 10,000 requests), a calibration ratio of 1.1, +3 % NE,
   a 3 % point mass of stuck predictions.

``strength = min(statistical, effect / material)``. Below 1 an honest investigation should say
"inconclusive" (too little data) or find nothing (too small to matter); at 1 and above the
checks' own rules call it.

- ``n``: the affected sample from the onset to the alert minute inclusive (the telemetry an
  investigation reads) — requests, clicks or units, in the unit the metric is counted in.
- ``n_ref``: the reference the affected sample is compared with: for an experiment's arm, its
  control arm over the same minutes; for a model or all traffic, the same scope over the baseline
  before the onset (at most :data:`BASELINE_MINUTES`); for an SRM, the configured weights
  (known: ``1/n_ref = 0``).
- ``σ`` and ``effect`` per kind (:func:`effect_and_sigma`):

  ============================ =============== ================================================
  kind                         metric (unit)   effect; σ
  ============================ =============== ================================================
  prediction_collapse,         share of        ``p1 − p0`` with ``p1 = p0 + s(1 − p0)``;
  model_fallback,              requests        ``σ = sqrt(p̄(1 − p̄))``, ``p̄ = (p0 + p1)/2``
  infra_outage                 (requests)      (``p0``: 0, 0.001, 0.0005, the simulator's
                                               healthy rates); a ``mixed`` collapse is
                                               two-thirds invalid
  logging_loss                 CTR (requests)  ``s · ctr``; ``σ = sqrt(ctr(1 − ctr))``
  miscalibration               Σpred/Σclicks   ``|ln s|``; ``σ = 1`` (Poisson clicks: the
                               (log; clicks)   calibration check's own scale, a log rate ratio
                                               with standard error ``sqrt(1/n + 1/n_ref)``)
  ne_regression                NE (requests)   ΔNE of ``s`` extra logit noise; σ of the
                                               per-request log loss ÷ entropy
  stale_model                  NE (requests)   as ne_regression with noise ``s · h̄``, ``h̄``
                                               the mean hours since the onset; or the
                                               snapshot's age (``Sample.overdue``), whichever
                                               is stronger
  allocation_bug               arm share       ``w − w(1 − s)/(1 − w·s)``; ``σ = sqrt(w(1 − w))``
                               (units)         (the best of the SRM check's windows, Bonferroni
                                               over them; in a window reaching back before the
                                               onset, times the share of its units first seen
                                               since the onset)
  ============================ =============== ================================================

NE's effect and σ come from the simulator's own model of a prediction (``docs/simulator.md``):
true CTR log-normal around the base CTR, a model of quality ``q`` adds logit noise of sd
``2(1 − q)``, recalibrated; they are integrated numerically on a fixed sample (common random
numbers, so the difference is exact to the sample). Auction selection is ignored. Distinct units
are approximated as ``U(1 − e^(−R/U))`` for ``R`` requests over a pool of ``U`` units.

Strength 1 is the detectability floor. Buckets for the eval's curve: :data:`BUCKETS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats as sps

from tools.checks import (
    CalibrationParams,
    FallbackParams,
    InfraParams,
    NEParams,
    PredictionParams,
    StalenessParams,
)

__all__ = [
    "ALPHA_FAIL",
    "BASELINE_MINUTES",
    "BUCKETS",
    "SEGMENTS",
    "SRM_SUFFIXES",
    "SRM_WINDOW_MINUTES",
    "STALE_FAIL_OVERDUE",
    "Z_DETECT",
    "Attributed",
    "AttributionScan",
    "Sample",
    "attribution_scan",
    "bucket",
    "distinct_units",
    "effect_and_sigma",
    "material_effect",
    "ne_shift",
    "signal_strength",
    "statistical_strength",
    "z_checks",
]

Z_DETECT = 1.96 + 0.84
"""A single two-sided test at α 0.05 with 80 % power: the textbook figure."""
ALPHA_FAIL = FallbackParams().alpha_fail
"""The checks' family-wise level to fail (the same for every rate-like check and SRM)."""
SEGMENTS = 6
"""Time segments a check's scan corrects for: a 30-120-minute window's grid holds 5-7."""
_POWER_Z = float(sps.norm.ppf(0.8))
STALE_FAIL_OVERDUE = StalenessParams().fail_overdue
"""A snapshot overdue by this share of its cadence fails the staleness check."""
BASELINE_MINUTES = 120

SRM_SUFFIXES: tuple[int, ...] = (10, 20, 40)
"""The recent windows the SRM check tests besides its whole window (``TelemetryReader.units``'s
default suffixes), Bonferroni over those with enough units."""


class AttributionScan(NamedTuple):
    """What the ranking playbook's attribution scan of a global alert is, read from the playbook.

    Attributes:
        window: Minutes it scans before the alert when the global metric shows no onset (the
            playbook's ``window.min_minutes``).
        alpha: The level at which it names a suspect (``suspects.alpha``).
        metrics: The attributable metrics it scans (``suspects.scan_metrics``; Bonferroni across
            them).
    """

    window: int
    alpha: float
    metrics: int


@lru_cache(maxsize=1)
def attribution_scan() -> AttributionScan:
    """The shipped ranking playbook's attribution scan (:class:`AttributionScan`)."""
    from agent.playbook import load_playbooks
    from tools.checks.attribution import ATTRIBUTABLE

    ranking = load_playbooks().get("ranking")
    scanned = [m for m in ranking.suspects.scan_metrics if m in ATTRIBUTABLE]
    return AttributionScan(ranking.window.min_minutes, ranking.suspects.alpha, len(scanned))


SRM_WINDOW_MINUTES = 120
"""The SRM check's whole window when the investigation locates no onset (the playbooks'
lookback)."""
# (label, lower bound inclusive); the last bucket is open above.
BUCKETS: tuple[tuple[str, float], ...] = (
    ("<0.5", 0.0),
    ("0.5-1", 0.5),
    ("1-2", 1.0),
    ("2-4", 2.0),
    (">=4", 4.0),
)
_P0 = {"prediction_collapse": 0.0, "model_fallback": 0.001, "infra_outage": 0.0005}
_NE_SAMPLE = 100_000

Unit = Literal["requests", "clicks", "units"]


@dataclass(frozen=True)
class Attributed:
    """What the attribution scan of a global alert sees of one experiment arm (calibration).

    Localization compares each arm's log Σpred/Σclicks with its control's, over its recent
    window (the playbook's ``min_minutes``, :func:`attribution_scan`, when the global
    metric shows no onset) against the :data:`BASELINE_MINUTES` before it (a difference in
    differences: four Poisson click counts), Holm over every non-control arm of every experiment
    and Bonferroni over the metrics it scans, at the playbook's ``suspects.alpha``.

    Attributes:
        clicks: Clicks of the arm and of its control in the window, then in the baseline.
        affected: Share of the arm's predictions the fault scaled in the window, in the baseline.
        family: Non-control arms in the world times the metrics scanned.
    """

    clicks: tuple[float, float, float, float]
    affected: tuple[float, float]
    family: int


@dataclass(frozen=True)
class Sample:
    """The traffic a fault touched and its reference.

    Attributes:
        requests: Affected requests from the onset to the alert (inclusive).
        reference_requests: Requests of the reference (control arm or baseline); ``inf`` when the
            reference is known exactly.
        ctr: Mean click-through rate over the affected requests.
        units: Distinct units of the experiment seen since the onset (``allocation_bug``).
        arm_share: The faulty arm's configured share of the experiment (``allocation_bug``).
        quality: Quality of the affected model (NE kinds).
        hours: Mean hours since the onset over the affected minutes (``stale_model``).
        overdue: ``stale_model``: minutes from the last publication before the onset to the
            alert, over ``(1 + fail_overdue) · cadence``: 1 when the staleness check's age rule
            starts failing (published at ``k·cadence``, trained ``lag`` earlier, failing once
            older than ``cadence + lag`` by ``fail_overdue`` of the cadence).
        family: Comparisons in the check's family (``2·arms − 1`` in an experiment, else 1).
        mode: How predictions collapse (``prediction_collapse``; None is ``mixed``).
        slices: Dimension values a slice scan tests (every value of every dimension) when the
            fault is confined to a slice (``where``); 1 when it covers its whole scope.
        where_share: The slice's share of its scope's traffic (1 without ``where``).
        unit_windows: ``allocation_bug``: the SRM check's windows ending at the alert (its
            whole window and the last :data:`SRM_SUFFIXES` minutes), each as (distinct units in
            it, share of them first seen since the onset); empty: one test over ``units``.
        attributed: A miscalibrated experiment arm behind a *global* alert, which only the
            localization's attribution scan can name (None: the alert names the experiment).
    """

    requests: float
    reference_requests: float
    ctr: float
    units: float = 0.0
    arm_share: float = 0.5
    quality: float = 0.75
    hours: float = 0.0
    family: int = 1
    mode: str | None = None
    overdue: float = 0.0
    slices: int = 1
    where_share: float = 1.0
    unit_windows: tuple[tuple[float, float], ...] = ()
    attributed: Attributed | None = None


def bucket(strength: float | None) -> str:
    """The curve's bucket of a strength (``healthy`` for None)."""
    if strength is None:
        return "healthy"
    label = BUCKETS[0][0]
    for name, low in BUCKETS:
        if strength >= low:
            label = name
    return label


def distinct_units(requests: float, pool: float) -> float:
    """Expected distinct units among ``requests`` drawn uniformly from ``pool`` units."""
    if pool <= 0:
        return 0.0
    return pool * (1.0 - math.exp(-requests / pool))


@lru_cache(maxsize=64)
def _ne_sample(
    quality: float, ctr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """True CTRs, clicks, logit noise, the healthy model's mean log loss and the entropy."""
    rng = np.random.default_rng(20261207)
    sd_true = 0.8 * math.sqrt(2.0)  # unit and ad effects, each log-normal with σ 0.8
    z_true = rng.standard_normal(_NE_SAMPLE)
    p = np.clip(ctr * np.exp(sd_true * z_true - sd_true**2 / 2), 1e-9, 0.999)
    y = rng.random(_NE_SAMPLE) < p
    noise = rng.standard_normal(_NE_SAMPLE)
    mean_p = float(p.mean())
    entropy = -(mean_p * math.log(mean_p) + (1 - mean_p) * math.log(1 - mean_p))
    base = _losses(p, y, noise, 2.0 * (1.0 - quality))
    return p, y, noise, float(base.mean()), entropy


def _losses(p: np.ndarray, y: np.ndarray, noise: np.ndarray, sd: float) -> np.ndarray:
    """Per-request log loss of a recalibrated prediction with logit noise ``sd``."""
    pred = p * np.exp(sd * noise)
    pred *= p.mean() / pred.mean()
    pred = np.clip(pred, 1e-12, 1 - 1e-12)
    return np.asarray(-np.where(y, np.log(pred), np.log1p(-pred)))


@lru_cache(maxsize=1024)
def ne_shift(quality: float, extra_sd: float, ctr: float) -> tuple[float, float]:
    """ΔNE from ``extra_sd`` more logit noise on a model of ``quality``, and σ of per-request NE.

    Both predictions are recalibrated (their mean equals the mean true CTR), as in the simulator.

    Returns:
        ``(delta_ne, sigma)``: the NE increase and the standard deviation of one request's log loss
        divided by the background entropy.
    """
    p, y, noise, base, entropy = _ne_sample(quality, ctr)
    sd_q = 2.0 * (1.0 - quality)
    worse = _losses(p, y, noise, math.sqrt(sd_q**2 + extra_sd**2))
    return float((worse.mean() - base) / entropy), float(worse.std() / entropy)


def effect_and_sigma(kind: str, severity: float, sample: Sample) -> tuple[float, float, Unit]:
    """The effect, the per-observation σ and the unit counted, for a fault of ``kind``.

    Args:
        kind: A fault kind (DESIGN §5's causes but ``none``).
        severity: The fault's severity, as the scenario format defines it.
        sample: The traffic it touched.

    Raises:
        ValueError: For an unknown kind.
    """
    if kind in _P0:
        p0 = _P0[kind]
        share = severity
        if kind == "prediction_collapse" and sample.mode in (None, "mixed"):
            share = severity * 2.0 / 3.0  # a third of a mixed collapse is stuck, not invalid
        p1 = p0 + share * (1.0 - p0)
        mean = (p0 + p1) / 2.0
        return p1 - p0, math.sqrt(mean * (1.0 - mean)), "requests"
    if kind == "logging_loss":
        ctr = sample.ctr
        return severity * ctr, math.sqrt(ctr * (1.0 - ctr)), "requests"
    if kind == "miscalibration":
        # The calibration check compares log Σpred/Σclicks (tools.stats.compare_rates): a
        # factor s is |ln s| on its scale, so 2.5x is no further than 0.4x.
        return abs(math.log(severity)), 1.0, "clicks"
    if kind == "ne_regression":
        delta, sigma = ne_shift(round(sample.quality, 3), round(severity, 4), round(sample.ctr, 4))
        return delta, sigma, "requests"
    if kind == "stale_model":
        drift = min(5.0, severity * max(sample.hours, 1.0 / 60.0))
        delta, sigma = ne_shift(round(sample.quality, 3), round(drift, 4), round(sample.ctr, 4))
        return delta, sigma, "requests"
    if kind == "allocation_bug":
        w = sample.arm_share
        observed = w * (1.0 - severity) / (1.0 - w * severity)
        return w - observed, math.sqrt(w * (1.0 - w)), "units"
    raise ValueError(f"unknown fault kind {kind!r}")


@lru_cache(maxsize=64)
def _ne_base(quality: float, ctr: float) -> float:
    """NE of the healthy model of ``quality`` at ``ctr`` (the reference of the +3 % floor)."""
    _p, _y, _noise, base, entropy = _ne_sample(quality, ctr)
    return base / entropy


def z_checks(family: int = 1, segments: int = SEGMENTS) -> float:
    """``z(1 − α'/2) + z(0.8)`` at the checks' per-comparison level (module docstring).

    Args:
        family: Comparisons Holm corrects over.
        segments: Time segments Bonferroni corrects over.
    """
    alpha = ALPHA_FAIL / (max(segments, 1) * max(family, 1))
    return float(sps.norm.isf(alpha / 2.0)) + _POWER_Z


def material_effect(kind: str, severity: float, sample: Sample) -> float:
    """The smallest effect (on :func:`effect_and_sigma`'s scale) the checks call a failure.

    Read from the checks' own default parameters, so the generator follows the checks: a rare
    rate must double (fallback, errors; any invalid prediction, at least
    ``invalid_least_fail``), Σpred/Σclicks must move by ``ratio_fail``, NE rise by
    ``rel_increase_fail``, a stuck constant fill ``mass_fail`` of the predictions. 0 where the
    check has no floor (SRM).
    """
    if kind == "model_fallback":
        f = FallbackParams()
        return max(f.least_increase_fail, (f.relative_fail - 1.0) * _P0[kind])
    if kind == "infra_outage":
        i = InfraParams()
        return max(i.error_least_fail, (i.error_relative_fail - 1.0) * _P0[kind])
    if kind == "prediction_collapse":
        pp = PredictionParams()
        if sample.mode == "constant":
            return pp.mass_fail
        return max(pp.invalid_least_fail, (pp.invalid_relative - 1.0) * _P0[kind])
    ratio = CalibrationParams().ratio_fail
    if kind == "logging_loss":
        return (1.0 - 1.0 / ratio) * sample.ctr  # Σpred/Σclicks = 1/(1 − s) reaches the ratio
    if kind == "miscalibration":
        return math.log(ratio)
    if kind in ("ne_regression", "stale_model"):
        base = _ne_base(round(sample.quality, 3), round(sample.ctr, 4))
        return NEParams().rel_increase_fail * base
    return 0.0


def _statistical(kind: str, severity: float, sample: Sample, z: float | None) -> float:
    effect, sigma, unit = effect_and_sigma(kind, severity, sample)
    if unit == "units":
        n, n_ref = sample.units, math.inf
    elif unit == "clicks":
        n, n_ref = sample.requests * sample.ctr, sample.reference_requests * sample.ctr
    else:
        n, n_ref = sample.requests, sample.reference_requests
    if n <= 0 or sigma <= 0:
        return 0.0
    inv = 1.0 / n + (0.0 if n_ref <= 0 or math.isinf(n_ref) else 1.0 / n_ref)
    if z is not None:
        return effect / (z * sigma * math.sqrt(inv))
    if kind == "allocation_bug":
        # SRM is a chi-square test of units per arm (no request slices) over its whole window
        # and its recent suffixes, Bonferroni over them; a window reaching back before the onset
        # holds units the bug could not touch, which dilute the deficit.
        if not sample.unit_windows:
            return effect / (z_checks(1, 1) * sigma * math.sqrt(inv))
        z = z_checks(len(sample.unit_windows), 1)
        return max(
            effect * fresh * math.sqrt(units) / (z * sigma) for units, fresh in sample.unit_windows
        )
    # The rate checks scan segments per family. A fault confined to a slice is seen either by a
    # slice scan, one more test per dimension value (Holm), or diluted in its whole scope: its
    # effect times the slice's share over 1/share times the traffic, i.e. sqrt(share) of the
    # slice's z. The better of the two tests bounds what any check can call.
    in_slice = effect / (z_checks(sample.family * sample.slices) * sigma * math.sqrt(inv))
    if sample.slices <= 1:
        return in_slice
    diluted = effect * math.sqrt(sample.where_share) / (z_checks(sample.family) * sigma)
    return max(in_slice, diluted / math.sqrt(inv))


def _attributed(severity: float, a: Attributed) -> float:
    """Strength of a miscalibrated arm in attribution's difference in differences."""
    if min(a.clicks) <= 0:
        return 0.0
    window, baseline = (math.log1p(f * (severity - 1.0)) for f in a.affected)
    se = math.sqrt(sum(1.0 / c for c in a.clicks))
    alpha = attribution_scan().alpha / max(a.family, 1)
    z = float(sps.norm.isf(alpha / 2.0)) + _POWER_Z
    return abs(window - baseline) / (z * se)


def statistical_strength(kind: str, severity: float, sample: Sample) -> float:
    """The textbook strength: ``effect / (2.80 · σ · sqrt(1/n + 1/n_ref))`` (α 0.05, no floor)."""
    return _statistical(kind, severity, sample, Z_DETECT)


def signal_strength(kind: str, severity: float, sample: Sample) -> float:
    """``min(statistical, effect / material)`` at the checks' own α (module docstring).

    Args:
        kind: The fault kind.
        severity: Its severity.
        sample: The traffic it touched between its onset and the alert, and the reference.

    Returns:
        The strength (0 when the fault touched nothing).
    """
    stat = _statistical(kind, severity, sample, None)
    if kind == "miscalibration" and sample.attributed is not None:
        # Behind a global alert the arm must first be named by attribution, then failed by
        # the calibration check: the weaker of the two bounds what the investigation can see.
        stat = min(stat, _attributed(severity, sample.attributed))
    floor = material_effect(kind, severity, sample)
    if floor > 0:
        effect, _sigma, _unit = effect_and_sigma(kind, severity, sample)
        stat = min(stat, effect / floor)
    if kind == "stale_model":
        # The snapshot's age is read, not estimated: it fails on its own once overdue.
        return max(stat, sample.overdue)
    return stat
