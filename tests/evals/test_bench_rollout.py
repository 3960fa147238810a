"""``vigil bench --only rollout`` at small sizes: its figures are measured, not assumed.

The synthetic alarm-rate path runs the monitors' own judgement over every look; the fleet path
builds a warehouse with one planted fault and counts the SQL statements on the engine.
"""

from __future__ import annotations

import math
from pathlib import Path

from evals.bench.rollout import alarm_rate, fleet


def test_healthy_experiments_looked_at_every_minute_stay_under_alpha_over_the_run() -> None:
    """120 A/A experiments, 150 looks each: the share whose sequence ever excludes the true lift 0.

    Bound: alpha plus three binomial standard errors over 120 experiments (the sequences are
    valid over the run, so the expected share is at most alpha); a per-look fixed-horizon
    interval would exceed it many times over.
    """
    out = alarm_rate(experiments=120, minutes=150, units=200, seed=4)
    alpha = out["alpha"]
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / 120)
    assert out["cs_excludes_true_lift_over_run"] <= bound
    assert out["alarm_rate_over_run"] <= bound
    assert out["looks_per_experiment"] == 150


def test_the_fleet_tick_is_one_statement_and_finds_only_the_planted_fault(tmp_path: Path) -> None:
    out = fleet(tmp_path, requests=120_000, experiments=40)
    assert out["controller_statements"] == 1 and out["controller_exposure_scans"] == 1
    assert out["controller_rollbacks"] == [out["fault"]]
    for key in ("monitor_40",):
        assert out[key]["statements"] == 1
        assert out[key]["breaches"] == [f"{out['fault']}:fallback_rate"]
