"""An SRM alert naming no experiment: every experiment's split tested at once (Holm over the
experiments), on data with a known answer and on healthy fleets, with its false-alarm rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.tools.synth import at
from tests.tools.test_toolbox_synth import toolboxes  # noqa: F401  (the module's worlds)
from tools.checks.srm import srm_scan
from tools.toolbox import Toolbox


def _fleet(
    rng: np.random.Generator, n: int, short: str | None = None, deficit: float = 0.0
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """``n`` experiments of 2-4 arms with unequal weights, 2,000-20,000 units each, drawn from
    their configured split; experiment ``short`` loses ``deficit`` of its last arm's units."""
    rows, weights = [], {}
    for i in range(n):
        exp = f"x{i}"
        k = int(rng.integers(2, 5))
        w = rng.choice([1.0, 1.0, 2.0, 0.5], size=k)
        arms = {("control" if j == 0 else f"arm {j}"): float(w[j]) for j in range(k)}
        weights[exp] = arms
        units = rng.multinomial(int(rng.integers(2_000, 20_000)), w / w.sum()).astype(float)
        if exp == short:
            units[-1] = np.floor(units[-1] * (1 - deficit))
        for arm, u in zip(arms, units, strict=True):
            rows.append({"experiment_id": exp, "arm": arm, "units": u, "exposures": 3 * u})
    return pd.DataFrame(rows), weights


def test_the_one_experiment_short_of_units_is_named() -> None:
    rng = np.random.default_rng(5)
    units, weights = _fleet(rng, 300, short="x137", deficit=0.1)
    result = srm_scan(units, weights)
    assert result.verdict == "fail" and result.experiment == "x137", result.summary
    ranked = result.evidence[0]
    assert ranked.rows[0][0] == "x137" and len(ranked.rows) == 300
    assert "Holm over 300 experiments" in result.summary


def test_healthy_fleets_hold_the_family_error_rate() -> None:
    # 200 fleets of 30 healthy experiments: Holm over each fleet keeps the chance of any
    # warning (adjusted p < 0.01) near 1 %; measured, with room for the binomial noise.
    rng = np.random.default_rng(6)
    alarms = sum(srm_scan(*_fleet(rng, 30)).verdict != "ok" for _ in range(200))
    assert alarms / 200 <= 0.03, alarms


def test_no_experiment_to_test_is_no_data() -> None:
    units, weights = _fleet(np.random.default_rng(7), 3)
    assert srm_scan(units, {}).verdict == "no_data"
    assert srm_scan(units.iloc[0:0], weights).verdict == "no_data"


@pytest.mark.parametrize("world", ["units", "healthy"])
def test_the_scan_reads_every_experiment_in_one_statement(
    toolboxes: dict[str, Toolbox],  # noqa: F811
    world: str,
) -> None:
    # A fleet of one: the scan says what the experiment's own check says (the synthetic healthy
    # world's split happens to sit at p 0.0017, a warning either way).
    box = toolboxes[world]
    before = box.reader.queries
    result = box.attribution("srm", at(60), at(120))
    assert box.reader.queries - before <= 1
    own = box.srm(at(60), at(120), "e1")
    assert result.verdict == own.verdict, result.summary
    assert (result.verdict == "fail") == (world == "units")
    one = box.reader.units("e1", at(60), at(120))
    every = box.reader.units(None, at(60), at(120))
    assert list(every["experiment_id"].unique()) == ["e1"]
    pd.testing.assert_frame_equal(
        every.drop(columns="experiment_id").sort_values("arm").reset_index(drop=True),
        one.sort_values("arm").reset_index(drop=True),
    )
