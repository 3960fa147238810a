"""``vigil scenarios generate``: scenario worlds drawn from a broad, documented distribution.

Scenario ``k`` of ``--seed S --count N`` is drawn from seed ``S + k`` alone, so a seed always
gives the same scenario (``g<seed>-<kind>``), whatever the count. What is drawn (every draw from
one ``numpy`` generator per seed, in a fixed order):

- **Clock**: a start in November 2026 at any hour (quarter hours); a diurnal curve in 75 % of
  worlds (traffic ×(1 ± 0.45), peak 21:00 UTC, trough 09:00 UTC). Tagged ``day`` when the traffic
  curve is above its mean at the alert, ``night`` below, ``flat`` without the curve.
- **Traffic**: 1,000-20,000 requests per minute (log-uniform), base CTR 1-4 %, the default
  dimension mix or (30 %) a drawn country mix.
- **Timeline**: alert lag 5-60 minutes after the onset (log-uniform); baseline before the onset
  40-150 minutes, shortened so that at most 1.5 M requests are simulated up to the alert (a world
  investigates in ~1-2 s); 90 more minutes for follow-ups. The investigation's lookback (120 min
  + 120 min baseline) therefore usually begins before the first telemetry row.
- **Experiments**: 5-40 in 2-8 layers (names from a pool, e.g. ``ranking``, ``Search.Ranking``,
  ``L7``), 1-40 % of their layer each (a layer's total ≤ 95 %); 2 (55 %), 3 (30 %) or 4 (15 %) arms
  with any names (``baseline``, ``holdout``, ``A``, ``big bid``, ``v2.1`` ...) and a control named
  ``control`` or not; unequal weights (0.5-3) in half of them; 25 % launched inside the window
  (the faulty one at least 20 minutes before its onset), 10 % stopped inside it. The first layer's
  treatment arms serve candidate models; a ``*load*`` layer's change the ad load.
- **Truth**: 15 % healthy; otherwise one of the 8 fault kinds, uniformly, and in 15 % of those a
  second fault of another kind elsewhere, with a target strength 0.2-0.8× the first's
  (``two_faults``; the alert is on the first's own metric and names its experiment; ``expect``
  names it). Scope: experiment arm (kill_experiment), production model (rollback_model; stale_model:
  escalate_data) or all traffic (infra_outage: escalate_infra, logging_loss: escalate_data), with
  a ``where`` filter in 30 %. The severity is solved from a target **signal strength** drawn
  log-uniformly in 0.2-20× the detectable effect (:mod:`evals.generate.strength`), clipped to the
  kind's realistic range; ``expect.signal_strength`` states the strength of the rounded severity.
- **Alert**: a metric the fault moves, revenue or CTR only when the fault is large enough to move
  them (:data:`~evals.generate.faults.BUSINESS_VISIBLE`; else its own metric: fallback rate, error
  rate, NE, calibration, SRM), naming the faulty experiment in 80 % of experiment faults (else a
  global alert; always for ``srm`` and small faults); 15 % of model and global faults name an
  unrelated experiment (a red herring).
- **Healthy worlds** have misleading alerts: noise on a random experiment or metric, the diurnal
  decline, an experiment launched minutes before the alert, an ad-load experiment lowering revenue
  on purpose, a better candidate model.

Tags: ``generated``, the truth's kind (or ``healthy`` and its variant), the scope,
``strength:<bucket>``, ``day``/``night``/``flat``, ``two_faults``, ``where``, ``launched``,
``arms:<n>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evals.generate.faults import FaultDraw, draw_fault, fault_sample
from evals.generate.strength import bucket, signal_strength
from evals.generate.world import WorldDraw, draw_world
from evals.sim.scenario import FAULT_KINDS, parse_scenario

__all__ = ["SIGNATURE", "generate", "generate_scenario", "write_scenarios"]

HEALTHY_SHARE = 0.15
TWO_FAULT_SHARE = 0.15
HERRING_SHARE = 0.15
HEALTHY_VARIANTS = ("noise", "diurnal", "launch", "adload", "better_model")
ALERT_METRICS: dict[str, tuple[str, ...]] = {
    "prediction_collapse": ("ctr", "revenue", "ne"),
    "miscalibration": ("calibration", "revenue"),
    "ne_regression": ("ne", "ctr", "revenue"),
    "stale_model": ("ne", "calibration"),
    "model_fallback": ("fallback_rate", "revenue"),
    "infra_outage": ("error_rate", "latency_p99", "revenue"),
    "allocation_bug": ("srm",),
    "logging_loss": ("ctr", "calibration"),
}
_GLOBAL_OK = frozenset({"revenue", "ctr", "ne", "calibration", "error_rate", "latency_p99"})
_BUSINESS = frozenset({"revenue", "ctr"})
# The metric each kind moves first: what fires for a fault too small to move revenue.
SIGNATURE: dict[str, str] = {
    "prediction_collapse": "ne",
    "miscalibration": "calibration",
    "ne_regression": "ne",
    "stale_model": "ne",
    "model_fallback": "fallback_rate",
    "infra_outage": "error_rate",
    "allocation_bug": "srm",
    "logging_loss": "ctr",
}


def _daypart(world: WorldDraw, minute: int) -> str:
    if not world.diurnal:
        return "flat"
    return (
        "day"
        if float(world.traffic(np.array([minute]))[0]) >= world.requests_per_minute
        else "night"
    )


def _pick(rng: np.random.Generator, values: tuple[str, ...] | list[str]) -> str:
    return str(values[int(rng.integers(len(values)))])


def _alert(
    rng: np.random.Generator, world: WorldDraw, fault: FaultDraw, two_faults: bool
) -> dict[str, Any]:
    metrics = ALERT_METRICS[fault.kind]
    if not fault.moves_business(world):
        metrics = tuple(m for m in metrics if m not in _BUSINESS) or (SIGNATURE[fault.kind],)
    metric = SIGNATURE[fault.kind] if two_faults else _pick(rng, metrics)
    alert: dict[str, Any] = {"metric": metric, "minute": world.timeline.alert}
    if fault.experiment is not None:
        named = rng.random() < 0.8 or not fault.moves_business(world)
        if metric == "srm" or two_faults or named or metric not in _GLOBAL_OK:
            alert["experiment"] = fault.experiment.id
    elif not two_faults and rng.random() < HERRING_SHARE and metric in _BUSINESS:
        alert["experiment"] = _pick(rng, [e.id for e in world.experiments])
    return alert


def _healthy(rng: np.random.Generator, world: WorldDraw) -> tuple[str, dict[str, Any]]:
    variant = _pick(rng, HEALTHY_VARIANTS)
    alert_minute = world.timeline.alert
    exps = world.experiments
    alert: dict[str, Any] = {"metric": "revenue", "minute": alert_minute}
    if variant == "noise":
        exp = exps[int(rng.integers(len(exps)))]
        alert["metric"] = _pick(
            rng, ["revenue", "ctr", "ne", "calibration", "fallback_rate", "srm"]
        )
        if alert["metric"] in ("fallback_rate", "srm") or rng.random() < 0.7:
            alert["experiment"] = exp.id
    elif variant == "diurnal":
        world.diurnal = True
        alert["metric"] = _pick(rng, ["revenue", "ctr"])
        target_hour = float(rng.uniform(1.0, 8.0))  # traffic falls from 21:00 to 09:00 UTC
        shift = (target_hour - world.hour_at(alert_minute)) % 24.0
        world.start = world.start + _minutes(int(shift * 60))
    elif variant == "launch":
        exp = exps[int(rng.integers(len(exps)))]
        exp.start_minute = max(1, alert_minute - int(rng.integers(5, 21)))
        exp.end_minute = None
        alert["metric"] = _pick(rng, ["revenue", "ctr", "ne", "calibration"])
        alert["experiment"] = exp.id
    elif variant == "adload":
        pool = [e for e in exps if e.layer != world.model_layer] or exps
        exp = pool[int(rng.integers(len(pool)))]
        for arm in exp.treatments():
            exp.arms[arm] = {k: v for k, v in exp.arms[arm].items() if k != "model"} | {
                "ad_load": round(float(rng.uniform(0.85, 0.95)), 2)
            }
        if rng.random() < 0.7:
            alert["experiment"] = exp.id
    else:
        pool = [e for e in exps if e.layer == world.model_layer]
        exp = pool[int(rng.integers(len(pool)))]
        better = round(float(world.model(world.production_model)["quality"]) + 0.03, 3)
        model_id = f"{world.production_model}-next"
        world.models.append({"id": model_id, "quality": min(better, 0.95)})
        for arm in exp.treatments():
            exp.arms[arm] = {k: v for k, v in exp.arms[arm].items() if k != "ad_load"} | {
                "model": model_id
            }
        alert["metric"] = _pick(rng, ["revenue", "ne", "ctr"])
        alert["experiment"] = exp.id
    return variant, alert


def _minutes(n: int) -> Any:
    from datetime import timedelta

    return timedelta(minutes=n)


def _describe(fault: FaultDraw) -> str:
    where = f" where {fault.where}" if fault.where else ""
    if fault.experiment is not None:
        scope = f"arm {fault.arm!r} of experiment {fault.experiment.id}"
    else:
        scope = f"model {fault.model}" if fault.model is not None else "all traffic"
    return (
        f"{fault.kind} (severity {fault.severity:g}) in {scope}{where} from minute "
        f"{fault.start_minute}, signal strength {fault.strength:g}x detectable"
    )


def generate_scenario(seed: int) -> dict[str, Any]:
    """Draw the scenario of ``seed`` (module docstring) as a dict in the public format.

    Args:
        seed: Any non-negative integer; the same seed gives the same scenario.

    Returns:
        The scenario, already validated by :func:`evals.sim.parse_scenario`.
    """
    rng = np.random.default_rng(seed)
    world = draw_world(rng)
    timeline = world.timeline
    tags = ["generated"]
    faults: list[FaultDraw] = []
    if rng.random() < HEALTHY_SHARE:
        variant, alert = _healthy(rng, world)
        kind = "none"
        tags += ["healthy", f"healthy:{variant}"]
        expect: dict[str, Any] = {"root_cause": "none", "mitigation": "none"}
        description = f"Healthy world (seed {seed}); a misleading alert ({variant})."
    else:
        kind = _pick(rng, list(FAULT_KINDS))
        two_faults = bool(rng.random() < TWO_FAULT_SHARE)
        primary = draw_fault(rng, world, kind, onset=timeline.onset, alert=timeline.alert)
        faults.append(primary)
        if two_faults:
            others = [k for k in FAULT_KINDS if k != kind]
            second_onset = int(rng.integers(10, timeline.alert - 4))
            taken = {primary.experiment.id} if primary.experiment is not None else set()
            faults.append(
                draw_fault(
                    rng,
                    world,
                    _pick(rng, others),
                    onset=second_onset,
                    alert=timeline.alert,
                    taken=taken,
                    at_most=primary.strength * float(rng.uniform(0.2, 0.8)),
                )
            )
            tags.append("two_faults")
        alert = _alert(rng, world, primary, two_faults)
        if primary.experiment is not None and "experiment" not in alert:
            # Named by no alert, a miscalibrated arm must first be found by attribution.
            sample = fault_sample(world, primary, timeline.alert, global_alert=True)
            primary.strength = round(signal_strength(kind, primary.severity, sample), 3)
        expect = {"root_cause": kind}
        if primary.experiment is not None:
            expect["experiment"] = primary.experiment.id
        expect |= {
            "onset_minute": primary.start_minute,
            "mitigation": primary.mitigation,
            "signal_strength": primary.strength,
        }
        tags += [kind, primary.scope, f"strength:{bucket(primary.strength)}"]
        if primary.where:
            tags.append("where")
        if primary.experiment is not None:
            tags.append(f"arms:{len(primary.experiment.arms)}")
            if primary.experiment.start_minute:
                tags.append("launched")
        description = f"Generated (seed {seed}): " + "; also ".join(_describe(f) for f in faults)
        description += f". Alert {alert['metric']} {timeline.lag} min after the onset."
    tags.append(_daypart(world, timeline.alert))
    data: dict[str, Any] = {
        "name": f"g{seed}-{kind}",
        "description": description,
        "seed": seed,
        "tags": tags,
        "world": world.world_spec(),
        "faults": [f.spec() for f in faults],
        "alert": alert,
        "expect": expect,
    }
    parse_scenario(data, source=f"generated seed {seed}")
    return data


def generate(seed: int, count: int) -> list[dict[str, Any]]:
    """The scenarios of seeds ``seed .. seed + count - 1``."""
    return [generate_scenario(seed + k) for k in range(count)]


def write_scenarios(seed: int, count: int, out: Path) -> list[Path]:
    """Generate and write ``count`` scenarios as ``<out>/<name>.yaml``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for data in generate(seed, count):
        path = out / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        paths.append(path)
    return paths
