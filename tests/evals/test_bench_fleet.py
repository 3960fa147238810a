"""``vigil bench --only fleet`` on a small fleet: every figure is there and consistent."""

from __future__ import annotations

from pathlib import Path

from evals.bench import SECTIONS, BenchOptions
from evals.bench.fleet import fleet_world, run


def test_the_fleet_world_fills_twenty_layers() -> None:
    world = fleet_world(100).world
    layers = {e.layer for e in world.experiments}
    assert len(world.experiments) == 100 and len(layers) == 20
    per_layer = sum(e.layer_pct for e in world.experiments if e.layer == "layer03")
    assert 89.9 < per_layer <= 90.0


def test_fleet_section_on_a_small_fleet(tmp_path: Path) -> None:
    assert "fleet" in SECTIONS
    extra = {
        "fleet_experiments": "10,60",
        "fleet_investigations": "10",
        "fleet_rpm": 100,
        "fleet_minutes": 120,
        "fleet_subscribers": 2,
        "fleet_kills": 1,
    }
    figures = run(BenchOptions(workdir=tmp_path, quick=True, extra=extra))
    small, large = figures["assignments"]
    assert (small["experiments"], large["experiments"]) == (10, 60)
    assert large["layers"] == 20
    # A request sits in at most one experiment per layer; the fleet fills 90 % of each layer.
    assert 0 < large["experiments_per_request"] <= 20
    assert large["speedup_vs_growthbook"] > 1
    assert large["reference_us"] > large["assignments_us"] > 0
    dist = figures["distribution"]
    assert dist["subscribers"] == 2 and dist["kills"] == 1
    assert 0 < dist["kill_propagation_ms_p50"] <= dist["kill_propagation_ms_p99"] < 10_000
    assert dist["snapshot_bytes"] > 1000 and dist["recompiled_after_kills"] == 1
    (inv,) = figures["investigations"]
    assert inv["experiments"] == 10 and inv["requests"] == 100 * 81  # up to the alert
    assert inv["seconds"] > 0 and inv["peak_rss_mb"] > 0 and isinstance(inv["found"], bool)
    assert figures["memory"] == []


def _child_peak() -> float:
    from evals.bench import peak_rss_mb

    return peak_rss_mb()


def test_a_spawned_child_reports_its_own_peak_not_its_parents() -> None:
    # Linux keeps ru_maxrss across fork and exec: a child spawned by a bench that had grown
    # would report the bench's peak (2.6 GB for a 0.5 GB investigation).
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from evals.bench import peak_rss_mb

    grown = bytearray(400 * 1024 * 1024)
    for i in range(0, len(grown), 4096):
        grown[i] = 1
    assert peak_rss_mb() > 400
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        child = pool.submit(_child_peak).result()
    assert 0 < child < 300
