"""The builder's power analysis: the textbook figure, and the power it promises, simulated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.console.power import UnitMoments, estimate_duration, required_units
from tools.errors import ConfigError


def test_required_units_is_the_two_sample_formula() -> None:
    # (z_.975 + z_.8)^2 = 7.849; cv^2 = 1; 1/w_c + 1/w_t = 4; mde^2 = 0.01 -> 3,139.6 units
    assert required_units(1.0, 1.0, 0.1, {"control": 1, "test": 1}, "control") == 3140
    # a 1:3 split needs more units for the same effect (1/0.25 + 1/0.75 = 5.33 > 4): 4,186.07
    assert required_units(1.0, 1.0, 0.1, {"control": 1, "test": 3}, "control") == 4187


def test_that_many_units_detect_the_mde_four_times_in_five() -> None:
    rng = np.random.default_rng(7)
    mean, sd, mde = 2.0, 3.0, 0.05
    n = required_units(mean, sd * sd, mde, {"control": 1, "test": 1}, "control")
    detected = 0
    trials = 400
    for _ in range(trials):
        control = rng.normal(mean, sd, n // 2)
        test = rng.normal(mean * (1 + mde), sd, n // 2)
        z = (test.mean() - control.mean()) / math.sqrt(2 * sd * sd / (n // 2))
        detected += abs(z) > 1.959964
    share = detected / trials
    # binomial sd at p=0.8 over 400 trials is 0.02: within 3 sd
    assert abs(share - 0.8) < 0.06, share


def test_duration_follows_the_units_rate_and_the_experiments_share() -> None:
    # 1,000 units over 10 h with per-unit ratio mean 1 and variance 1
    moments = UnitMoments("revenue_per_request", 1000, 1000, 1000, 1000, 2000, 1000, 10.0)
    mean, var = moments.mean_and_variance()
    assert mean == pytest.approx(1.0) and var == pytest.approx(1000 / 999)
    full = estimate_duration(moments, 0.1, {"control": 1, "test": 1}, "control", 100, 60, 0.4)
    half = estimate_duration(moments, 0.1, {"control": 1, "test": 1}, "control", 50, 60, 0.4)
    assert full.units_per_hour == pytest.approx(100.0)
    assert half.hours == pytest.approx(2 * full.hours)
    assert full.total_hours == max(full.hours, 1.0)
    assert "to detect a 10.0% change of revenue_per_request" in full.describe()


def test_bad_inputs_name_their_field() -> None:
    with pytest.raises(ConfigError) as err:
        required_units(1.0, 1.0, 0.0, {"control": 1, "test": 1}, "control")
    assert err.value.field == "mde"
    with pytest.raises(ConfigError) as err:
        required_units(1.0, 1.0, 0.1, {"a": 1, "b": 1}, "control")
    assert err.value.field == "control"
    empty = UnitMoments("ctr", 0, 0, 0, 0, 0, 0, 0.0)
    with pytest.raises(ConfigError) as err:
        estimate_duration(empty, 0.1, {"control": 1, "test": 1}, "control", 10, 0, 0)
    assert err.value.field == "telemetry"
