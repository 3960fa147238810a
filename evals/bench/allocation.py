"""Allocation benchmark: Vigil's per-request ``is_enabled`` against the GrowthBook Python SDK.

Both decide the same experiment — 50 % of the layer's units, a 50/50 split, targeted at two of
four countries — for the same units in the same run. GrowthBook is used through its public
per-request feature path (``set_attributes`` then ``is_on`` on a feature whose rule is the
experiment), the counterpart of Vigil's :meth:`lifecycle.Allocator.is_enabled`; its lighter
inline-experiment path (``run``) is timed too and reported as ``growthbook_run_ns``. The machine
is shared and noisy, so the timings alternate round by round (their order flips every round) and
the medians are reported; a speedup is the median of the per-round ratios. The vectorised path
(:meth:`~lifecycle.Allocator.assign_many`, with the targeting property as an array) is timed
on its own.

Both SDKs hash differently, so units land in different arms; what must agree is the share of
requests each enables (about 25 % of the targeted half), reported next to the timings.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from evals.bench import BenchOptions
from lifecycle import Allocator, Arm, Experiment, Layer, RolloutPlan, RolloutStage, build_snapshot

__all__ = ["run"]

_EXPERIMENT = "879"
_FEATURE = "ranking-879"
_COUNTRIES = ("US", "BR", "IN", "DE")
_TARGETED = ["US", "BR"]


def _vigil() -> Allocator:
    experiment = Experiment(
        id=_EXPERIMENT,
        name="Ranking Model Improvements",
        owner="bench",
        layer="ranking",
        traffic_pct=50,
        arms={"control": Arm(weight=1), "test": Arm(weight=1)},
        targeting={"country": _TARGETED},
        rollout=RolloutPlan(stages=[RolloutStage(percent=100)]),
    )
    return Allocator(build_snapshot([Layer(id="ranking")], [experiment]))


def _growthbook() -> Any:
    from growthbook import GrowthBook

    features = {
        _FEATURE: {
            "defaultValue": False,
            "rules": [
                {
                    "key": _EXPERIMENT,
                    "variations": [False, True],
                    "weights": [0.5, 0.5],
                    "coverage": 0.5,
                    "hashAttribute": "id",
                    "condition": {"country": {"$in": _TARGETED}},
                }
            ],
        }
    }
    return GrowthBook(features=features)


def _time_vigil(allocator: Allocator, requests: list[dict[str, Any]]) -> tuple[float, int]:
    is_enabled = allocator.is_enabled
    start = time.perf_counter()
    on = 0
    for request in requests:
        on += is_enabled(request, _EXPERIMENT)
    return time.perf_counter() - start, on


def _time_growthbook(gb: Any, attributes: list[dict[str, Any]]) -> tuple[float, int]:
    set_attributes, is_on = gb.set_attributes, gb.is_on
    start = time.perf_counter()
    on = 0
    for attrs in attributes:
        set_attributes(attrs)
        on += is_on(_FEATURE)
    return time.perf_counter() - start, on


def _time_growthbook_run(gb: Any, attributes: list[dict[str, Any]]) -> tuple[float, int]:
    from growthbook import Experiment as GBExperiment

    experiment = GBExperiment(
        key=_EXPERIMENT,
        variations=[False, True],
        weights=[0.5, 0.5],
        coverage=0.5,
        condition={"country": {"$in": _TARGETED}},
    )
    set_attributes, run_experiment = gb.set_attributes, gb.run
    start = time.perf_counter()
    on = 0
    for attrs in attributes:
        set_attributes(attrs)
        on += bool(run_experiment(experiment).value)
    return time.perf_counter() - start, on


def _bulk(allocator: Allocator, n: int, rounds: int) -> float:
    rng = np.random.default_rng(20261125)
    units = rng.integers(0, 2**62, size=n, dtype=np.int64)
    countries = rng.choice(np.array(_COUNTRIES), size=n)
    allocator.assign_many(units[:1000], _EXPERIMENT, {"country": countries[:1000]})  # warm up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        allocator.assign_many(units, _EXPERIMENT, {"country": countries})
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def run(opts: BenchOptions) -> dict[str, Any]:
    """Time both SDKs on the same units, alternating rounds; return the medians."""
    n = int(opts.extra.get("allocation_units", 5_000 if opts.quick else 20_000))
    rounds = int(opts.extra.get("allocation_rounds", 3 if opts.quick else 9))
    bulk_n = int(opts.extra.get("allocation_bulk_units", 200_000 if opts.quick else 1_000_000))
    rng = np.random.default_rng(879)
    unit_ids = rng.integers(1, 2**40, size=n).tolist()
    countries = rng.choice(np.array(_COUNTRIES), size=n).tolist()
    requests = [{"unit_id": u, "country": c} for u, c in zip(unit_ids, countries, strict=True)]
    attributes = [{"id": str(u), "country": c} for u, c in zip(unit_ids, countries, strict=True)]
    allocator, gb = _vigil(), _growthbook()
    _time_vigil(allocator, requests[:500])  # warm up both
    _time_growthbook(gb, attributes[:500])

    vigil_ns: list[float] = []
    gb_ns: list[float] = []
    run_ns: list[float] = []
    ratios: list[float] = []
    run_ratios: list[float] = []
    vigil_on = gb_on = run_on = 0
    for r in range(rounds):
        if r % 2 == 0:
            tv, vigil_on = _time_vigil(allocator, requests)
            tg, gb_on = _time_growthbook(gb, attributes)
            tr, run_on = _time_growthbook_run(gb, attributes)
        else:
            tr, run_on = _time_growthbook_run(gb, attributes)
            tg, gb_on = _time_growthbook(gb, attributes)
            tv, vigil_on = _time_vigil(allocator, requests)
        vigil_ns.append(tv / n * 1e9)
        gb_ns.append(tg / n * 1e9)
        run_ns.append(tr / n * 1e9)
        ratios.append(tg / tv)
        run_ratios.append(tr / tv)
    targeted = sum(c in _TARGETED for c in countries) / n
    return {
        "vigil_ns": round(statistics.median(vigil_ns), 1),
        "growthbook_ns": round(statistics.median(gb_ns), 1),
        "speedup": round(statistics.median(ratios), 2),
        "bulk_units_per_s": round(_bulk(allocator, bulk_n, max(3, rounds // 2))),
        "units": n,
        "rounds": rounds,
        "growthbook_run_ns": round(statistics.median(run_ns), 1),
        "speedup_vs_run": round(statistics.median(run_ratios), 2),
        "vigil_enabled_share": round(vigil_on / n, 4),
        "growthbook_enabled_share": round(gb_on / n, 4),
        "growthbook_run_enabled_share": round(run_on / n, 4),
        "expected_enabled_share": round(0.25 * targeted, 4),
        "growthbook_api": "set_attributes + is_on (feature rule = the experiment); "
        "growthbook_run_ns: set_attributes + run(inline Experiment)",
    }
