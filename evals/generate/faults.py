"""Drawing a fault into a world: scope, filter, the traffic it touches, severity from strength.

A fault's severity is not drawn directly: a target signal strength is drawn (log-uniform over
:data:`STRENGTH_RANGE`) and the severity that gives it, with the world's traffic between the onset
and the alert, is solved for (bisection, within the kind's realistic range, :data:`SEVERITY`);
the strength the scenario states is then recomputed from the rounded severity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from evals.generate.strength import (
    BASELINE_MINUTES,
    SRM_SUFFIXES,
    SRM_WINDOW_MINUTES,
    STALE_FAIL_OVERDUE,
    Attributed,
    Sample,
    attribution_scan,
    distinct_units,
    signal_strength,
)
from evals.generate.world import Exp, WorldDraw
from evals.sim.scenario import DEFAULT_DIMENSIONS

__all__ = ["SEVERITY", "STRENGTH_RANGE", "FaultDraw", "Scope", "draw_fault", "fault_sample"]

Scope = Literal["experiment", "model", "global"]
STRENGTH_RANGE = (0.2, 20.0)
# Realistic severity range per kind (miscalibration: the distance |factor − 1|).
SEVERITY: dict[str, tuple[float, float]] = {
    "prediction_collapse": (0.0005, 0.8),
    "model_fallback": (0.0005, 0.8),
    "infra_outage": (0.0002, 0.6),
    "logging_loss": (0.003, 0.7),
    "miscalibration": (0.01, 1.5),
    "ne_regression": (0.02, 2.5),
    "stale_model": (0.05, 3.0),
    "allocation_bug": (0.003, 0.6),
}
# The least severity (× the share ``where`` keeps) that moves revenue and CTR visibly: a smaller
# fault is alerted on its own metric (fallback rate, error rate, NE, calibration), not on them.
BUSINESS_VISIBLE: dict[str, float] = {
    "prediction_collapse": 0.05,
    "model_fallback": 0.1,
    "infra_outage": 0.03,
    "logging_loss": 0.05,
    "miscalibration": 0.1,
    "ne_regression": 0.4,
    "stale_model": math.inf,
    "allocation_bug": math.inf,
}
SCOPES: dict[str, tuple[Scope, ...]] = {
    "prediction_collapse": ("experiment", "experiment", "model"),
    "miscalibration": ("experiment", "experiment", "model"),
    "ne_regression": ("experiment", "experiment", "model"),
    "stale_model": ("experiment", "model"),
    "model_fallback": ("experiment", "experiment", "model"),
    "infra_outage": ("global",),
    "allocation_bug": ("experiment",),
    "logging_loss": ("global",),
}
_WHERE_P = 0.3


@dataclass
class FaultDraw:
    """A drawn fault: its scenario entry plus what the expectation and tags need."""

    kind: str
    scope: Scope
    start_minute: int
    severity: float
    strength: float
    experiment: Exp | None = None
    arm: str | None = None
    model: str | None = None
    where: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None
    end_minute: int | None = None

    def spec(self) -> dict[str, Any]:
        """The scenario's ``faults[]`` entry."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.experiment is not None:
            out["experiment"] = self.experiment.id
            out["arm"] = self.arm
        if self.model is not None:
            out["model"] = self.model
        if self.where:
            out["where"] = dict(self.where)
        out["start_minute"] = self.start_minute
        if self.end_minute is not None:
            out["end_minute"] = self.end_minute
        out["severity"] = self.severity
        if self.mode is not None:
            out["mode"] = self.mode
        return out

    def where_share(self, world: WorldDraw) -> float:
        """The share of its scope's traffic the ``where`` filter keeps."""
        return _where_share(world, self.where)

    def moves_business(self, world: WorldDraw) -> bool:
        """Whether the fault is large enough to move revenue and CTR visibly in its scope."""
        size = abs(self.severity - 1.0) if self.kind == "miscalibration" else self.severity
        return size * self.where_share(world) >= BUSINESS_VISIBLE[self.kind]

    @property
    def mitigation(self) -> str:
        """What should be done about it (the scenario's ``expect.mitigation``)."""
        if self.scope == "experiment":
            return "kill_experiment"
        if self.kind == "infra_outage":
            return "escalate_infra"
        if self.kind in ("logging_loss", "stale_model"):
            return "escalate_data"
        return "rollback_model"


def _where(rng: np.random.Generator, world: WorldDraw) -> dict[str, Any]:
    dim = str(rng.choice(["country", "platform", "ad_type"]))
    values = list(world.mix(dim))
    if rng.random() < 0.25 and len(values) > 2:
        return {dim: [str(v) for v in rng.choice(values, size=2, replace=False)]}
    return {dim: str(rng.choice(values))}


def _where_share(world: WorldDraw, where: dict[str, Any]) -> float:
    share = 1.0
    for dim, wanted in where.items():
        mix = world.mix(dim)
        total = sum(mix.values())
        values = [wanted] if isinstance(wanted, str) else wanted
        share *= sum(mix[v] for v in values) / total
    return share


def _model_share(world: WorldDraw, model: str, minutes: np.ndarray) -> np.ndarray:
    """Share of traffic routed to ``model`` at each minute (arms that set a model decide)."""
    moved = np.zeros(minutes.shape)
    served = np.zeros(minutes.shape)
    for exp in world.experiments:
        if not any(spec.get("model") for spec in exp.arms.values()):
            continue
        end = exp.end_minute if exp.end_minute is not None else np.inf
        active = ((minutes >= exp.start_minute) & (minutes < end)).astype(float)
        for arm, spec in exp.arms.items():
            arm_model = spec.get("model") or world.production_model
            share = exp.traffic_pct / 100.0 * exp.weight(arm) * active
            if arm_model != world.production_model:
                moved += share
            if arm_model == model:
                served += share
    if model == world.production_model:
        return np.asarray(1.0 - moved)
    return served


def _stale_model(world: WorldDraw, fault: FaultDraw) -> str:
    """The model a stale fault pins: the arm's, the named model or the production model."""
    if fault.experiment is not None and fault.arm is not None:
        return str(fault.experiment.arms[fault.arm].get("model") or world.production_model)
    return fault.model or world.production_model


def fault_sample(
    world: WorldDraw, fault: FaultDraw, alert: int, *, global_alert: bool = False
) -> Sample:
    """The traffic ``fault`` touches from its onset to ``alert`` (inclusive), and its reference.

    A stale model's onset is its first missed publication (the simulator's drift starts there).
    ``global_alert``: the alert names no experiment, so a miscalibrated arm must first be named
    by the localization's attribution scan (:class:`~evals.generate.strength.Attributed`).
    """
    onset = fault.start_minute
    refresh = 0.0
    if fault.kind == "stale_model":
        refresh = float(world.model(_stale_model(world, fault)).get("refresh_minutes") or 0.0)
    if refresh > 0:
        onset = int(refresh * math.ceil(onset / refresh))
    last = alert if fault.end_minute is None else min(alert, fault.end_minute - 1)
    window = np.arange(onset, last + 1)
    before = np.arange(max(0, onset - BASELINE_MINUTES), onset)
    rate, ref_rate = world.traffic(window), world.traffic(before)
    where = _where_share(world, fault.where)
    quality = float(world.model(world.production_model)["quality"])
    units = 0.0
    arm_share = 0.5
    family = 1
    unit_windows: tuple[tuple[float, float], ...] = ()
    attributed: Attributed | None = None
    if fault.experiment is not None and fault.arm is not None:
        exp = fault.experiment
        family = 2 * len(exp.arms) - 1
        pct = exp.traffic_pct / 100.0
        requests = float(rate.sum()) * pct * exp.weight(fault.arm) * where
        reference = float(rate.sum()) * pct * exp.weight(exp.control) * where
        model = exp.arms[fault.arm].get("model")
        if model is not None:
            quality = float(world.model(model)["quality"])
        pool = max(1000.0, 20.0 * world.requests_per_minute) * pct
        units = distinct_units(float(rate.sum()) * pct, pool)
        arm_share = exp.weight(fault.arm)
        unit_windows = _unit_windows(world, exp, onset, last, pool)
        if global_alert and fault.kind == "miscalibration":
            attributed = _attributed(world, exp, fault.arm, onset, last, where)
    elif fault.model is not None:
        share = _model_share(world, fault.model, window)
        ref_share = _model_share(world, fault.model, before)
        requests = float((rate * share).sum()) * where
        reference = float((ref_rate * ref_share).sum()) * where
        quality = float(world.model(fault.model)["quality"])
    else:
        requests = float(rate.sum()) * where
        reference = float(ref_rate.sum()) * where
    overdue = 0.0
    if refresh > 0:
        # The last version published before the onset (boundaries k·refresh, the one at the
        # onset itself never comes) ages from its publication onwards.
        published = refresh * float(math.ceil(onset / refresh) - 1)
        overdue = (alert - published) / ((1.0 + STALE_FAIL_OVERDUE) * refresh)
    return Sample(
        requests=requests,
        reference_requests=reference if reference > 0 else math.inf,
        ctr=float(world.ctr(window if len(window) else before).mean()),
        units=units,
        arm_share=arm_share,
        quality=quality,
        hours=len(window) / 2.0 / 60.0,
        family=family,
        mode=fault.mode,
        overdue=overdue,
        unit_windows=unit_windows,
        attributed=attributed,
        slices=_slices(world) if fault.where else 1,
        where_share=where,
    )


def _attributed(
    world: WorldDraw, exp: Exp, arm: str, onset: int, last: int, where: float
) -> Attributed:
    """Attribution's view of a miscalibrated ``arm`` behind a global alert at ``last``: its
    window's and baseline's clicks for the arm and its control, and the share of the arm's
    predictions the fault scaled in each (:class:`~evals.generate.strength.Attributed`)."""
    scan = attribution_scan()
    start = max(0, exp.start_minute)
    window = np.arange(max(start, last + 1 - scan.window), last + 1)
    base = np.arange(max(start, int(window[0]) - BASELINE_MINUTES), int(window[0]))
    pct = exp.traffic_pct / 100.0

    def clicks(minutes: np.ndarray, of: str) -> float:
        return float((world.traffic(minutes) * world.ctr(minutes)).sum()) * pct * exp.weight(of)

    def affected(minutes: np.ndarray) -> float:
        rate = world.traffic(minutes)
        total = float(rate.sum())
        return float(rate[minutes >= onset].sum()) / total * where if total > 0 else 0.0

    arms = sum(max(len(e.arms) - 1, 0) for e in world.experiments)
    return Attributed(
        clicks=(
            clicks(window, arm),
            clicks(window, exp.control),
            clicks(base, arm),
            clicks(base, exp.control),
        ),
        affected=(affected(window), affected(base)),
        family=max(arms, 1) * scan.metrics,
    )


def _unit_windows(
    world: WorldDraw, exp: Exp, onset: int, last: int, pool: float
) -> tuple[tuple[float, float], ...]:
    """The SRM check's windows ending at ``last`` (:data:`SRM_SUFFIXES` and its whole window,
    from the experiment's launch at the latest): (distinct units, share first seen since the
    onset) for each with at least 100 units (the check's ``min_units``)."""
    pct = exp.traffic_pct / 100.0
    first = max(0, exp.start_minute, last + 1 - SRM_WINDOW_MINUTES)
    out = []
    for length in sorted({*SRM_SUFFIXES, last + 1 - first}):
        start = max(first, last + 1 - length)
        before = float(world.traffic(np.arange(start, min(onset, last + 1))).sum()) * pct
        since = float(world.traffic(np.arange(max(onset, start), last + 1)).sum()) * pct
        total = distinct_units(before + since, pool)
        if total >= 100:
            out.append((total, (total - distinct_units(before, pool)) / total))
    return tuple(out)


def _slices(world: WorldDraw) -> int:
    """Tests of a slice scan: every value of every dimension of the world."""
    return sum(len(world.mix(dim)) for dim in DEFAULT_DIMENSIONS)


def _severity(kind: str, distance: float, over: bool) -> float:
    if kind == "miscalibration":
        return 1.0 + distance if over else max(0.05, 1.0 - distance)
    return distance


def _solve(kind: str, sample: Sample, target: float, over: bool) -> float:
    """The severity (3 significant digits) whose strength is closest to ``target``."""
    low, high = SEVERITY[kind]
    if kind == "miscalibration" and not over:
        high = 0.8

    def strength(distance: float) -> float:
        return signal_strength(kind, _severity(kind, distance, over), sample)

    if strength(high) <= target:
        distance = high
    elif strength(low) >= target:
        distance = low
    else:
        lo, hi = math.log(low), math.log(high)
        for _ in range(16):
            mid = (lo + hi) / 2.0
            lo, hi = (mid, hi) if strength(math.exp(mid)) < target else (lo, mid)
        distance = math.exp((lo + hi) / 2.0)
    return float(f"{_severity(kind, distance, over):.3g}")


def _fault_experiment(
    rng: np.random.Generator, world: WorldDraw, kind: str, onset: int, taken: set[str]
) -> tuple[Exp, str] | None:
    """An experiment running from before the onset to the world's end, and one of its arms."""
    pool = [e for e in world.experiments if e.id not in taken]
    if kind == "stale_model":
        pool = [e for e in pool if e.layer == world.model_layer]
    if not pool:
        return None
    exp = pool[int(rng.integers(len(pool)))]
    exp.end_minute = None
    if exp.start_minute > onset - 20:
        exp.start_minute = max(0, onset - int(rng.integers(20, 60)))
    arm = str(rng.choice(exp.treatments()))
    return exp, arm


def _missed_publication(model: dict[str, Any], onset: int, alert: int) -> int:
    """The stale fault's start: the publication boundary of ``model`` nearest ``onset`` that
    leaves a baseline (minute 20 or later) and comes 5 to 60 minutes before ``alert``.

    A refresh that stops mid-cadence harms nothing until the first publication it misses (the
    simulator lets the world drift from then on), so the fault starts on that boundary and its
    onset is when the harm begins. A cadence with no such boundary is shortened to 30 minutes:
    the 55 minutes before the alert hold a multiple of 30, and the onset is at least 40.
    """

    def fits(refresh: int) -> list[int]:
        first = max(20, alert - 60)
        return [b for b in range(refresh, alert - 4, refresh) if b >= first]

    found = fits(int(model["refresh_minutes"]))
    if not found:
        model["refresh_minutes"] = 30
        found = fits(30)
    return min(found, key=lambda b: (abs(b - onset), b))


def draw_fault(
    rng: np.random.Generator,
    world: WorldDraw,
    kind: str,
    *,
    onset: int,
    alert: int,
    taken: set[str] | None = None,
    at_most: float | None = None,
) -> FaultDraw:
    """Draw a fault of ``kind`` starting at ``onset`` whose strength at ``alert`` is drawn.

    Args:
        rng: The scenario's generator.
        world: The world (its experiments and models may be adjusted: a faulty experiment runs
            from before the onset; a stale model refreshes).
        kind: The fault kind.
        onset: The fault's start minute.
        alert: The alert's minute (the end of the sample the strength counts).
        taken: Experiments another fault already uses.
        at_most: Cap on the target strength (a second fault is weaker than the alerted one).
    """
    scope: Scope = SCOPES[kind][int(rng.integers(len(SCOPES[kind])))]
    fault = FaultDraw(kind=kind, scope=scope, start_minute=onset, severity=0.0, strength=0.0)
    if scope == "experiment":
        found = _fault_experiment(rng, world, kind, onset, taken or set())
        if found is None:
            fault.scope = scope = "model"
        else:
            fault.experiment, fault.arm = found
    if scope == "model":
        fault.model = world.production_model
    if kind == "stale_model":
        entry = world.model(_stale_model(world, fault))
        entry.setdefault("refresh_minutes", int(rng.choice([30, 60])))
        fault.start_minute = _missed_publication(entry, onset, alert)
        if fault.experiment is not None and fault.experiment.start_minute > fault.start_minute - 20:
            fault.experiment.start_minute = max(0, fault.start_minute - 20)
    if kind != "allocation_bug" and rng.random() < _WHERE_P:
        fault.where = _where(rng, world)
    if kind == "prediction_collapse" and rng.random() < 0.7:
        fault.mode = str(rng.choice(["nan", "out_of_range", "constant", "mixed"]))
    low, high = STRENGTH_RANGE
    target = math.exp(rng.uniform(math.log(low), math.log(high)))
    if at_most is not None:
        target = min(target, at_most)
    over = bool(rng.random() < 0.6)
    sample = fault_sample(world, fault, alert)
    fault.severity = _solve(kind, sample, target, over)
    fault.strength = round(signal_strength(kind, fault.severity, sample), 3)
    return fault
