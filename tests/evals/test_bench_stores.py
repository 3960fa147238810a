"""``vigil bench --only stores``: DuckDB, PostgreSQL and chDB measured in one run, with ratios."""

from __future__ import annotations

from pathlib import Path

import yaml

from evals.bench import SECTIONS, BenchOptions
from evals.bench.stores import STORES, run
from tests.evals.sim_worlds import fallback_world

WORLD = fallback_world("bench-stores-test", rpm=1200)


def test_stores_section_measures_all_three_and_their_ratios(tmp_path: Path) -> None:
    assert "stores" in SECTIONS
    scenario = tmp_path / "world.yaml"
    scenario.write_text(yaml.safe_dump(WORLD))
    opts = BenchOptions(
        workdir=tmp_path / "bench",
        quick=True,
        extra={"stores_scenario": str(scenario), "stores_write_minutes": 1, "stores_repeats": 1},
    )
    run(opts)
    figures = run(opts)  # again in the same folder, as a re-measure is: nothing stale is reused

    writes = figures["writes"]
    for store in STORES:
        w = writes[store]
        assert w["requests"] == writes["duckdb"]["requests"] > 10_000
        assert w["requests_per_s"] > 0 and w["cpu_seconds"] > 0
        want = w["requests_per_s"] / writes["duckdb"]["requests_per_s"]
        assert abs(w["ratio_to_duckdb"] - want) < 0.01
    rates = figures["write_rates"]
    for store in STORES:
        assert rates[store]["k_requests_per_s"] == round(writes[store]["requests_per_s"] / 1000)
        assert rates[store]["k_requests_per_cpu_s"] > 0 and writes[store]["cores_used"] > 0
    assert rates["postgresql"]["goal_met"] == (writes["postgresql"]["requests_per_s"] >= 300_000)
    assert rates["chdb"]["goal_met"] == (writes["chdb"]["requests_per_s"] >= 500_000)
    assert rates["postgresql"]["k_requests_per_server_cpu_s"] > 0
    floor = figures["copy_floor"]
    assert floor["binary_requests_per_s"] > 0 and floor["csv_requests_per_s"] > 0

    inv = figures["investigations"]
    assert inv["same_answer"] is True
    answer = inv["duckdb"]["answer"]
    assert (answer["cause"], answer["experiment"]) == ("model_fallback", "5")
    assert answer["mitigations"] == ["kill_experiment"]
    for store in STORES:
        assert len(inv[store]["seconds"]) == 1 and inv[store]["best_s"] > 0

    for store in STORES:
        g = figures["grouping_sets"][store]
        assert g["with_s"] > 0 and g["without_s"] > 0
        assert g["measured_faster"] == (g["with_s"] < g["without_s"])
