"""``vigil bench --only fleet``: thousands of experiments, and a kill that reaches every server.

Each part measures two things in one run (the machine is shared: ratios, not absolute times):

* ``assignments``: :meth:`lifecycle.Allocator.assignments` (every experiment a request is in, one
  hash per layer) at 10 / 100 / 1,000 experiments in up to 20 layers, beside the GrowthBook SDK
  evaluating the same experiments (one feature each, layers as namespaces) and beside Vigil's
  reference (:func:`lifecycle.allocation.assignments`, one hash per experiment); rounds alternate.
* ``distribution``: 8 subscriber processes hold a :class:`lifecycle.remote.RemoteAllocator` on a
  uvicorn server (the snapshot router of ``vigil serve``) over a store of 1,000 experiments; the
  bench kills an experiment from another process (the CLI's path: the server sees it by polling
  the state version) and each subscriber reports the moment its ``is_enabled`` turned False:
  ``kill_propagation_ms`` p50 / p99 over every subscriber and round. With the bytes of the full
  snapshot and of one kill's delta, the server's full rebuild (store read, build, signature), the
  subscriber's full compile and the incremental swap after the kills (its ``recompiled`` count).
* ``investigations``: a global revenue alert in a fleet world (experiments in 20 layers, a
  fallback fault in one of them), investigated end to end by the deterministic agent, at 10 / 100 /
  1,000 experiments, each in a fresh process (the agent's modules imported before the clock
  starts): wall and CPU seconds, and whether it found the fault.
* ``memory``: peak RSS (the process's own, :func:`evals.bench.peak_rss_mb`) of a process that
  runs one investigation on the checks bench's world (four experiments) at 1 / 10 / 30 M
  requests, with DuckDB's default memory limit.

Sizes are options (``opts.extra`` keys or ``FLEET_*`` environment variables, see :func:`run`);
the defaults finish in minutes on two shared cores. The large points (10 M exposures at 1,000
experiments, 30 M requests) were measured once with the options and are quoted in the README.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from evals.bench import BenchOptions, peak_rss_mb
from evals.sim import Scenario, parse_scenario

__all__ = ["fleet_world", "run"]

_KEY = "fleet-bench-key"


def fleet_world(
    n_experiments: int,
    *,
    layers: int = 20,
    minutes: int = 180,
    requests_per_minute: int = 2_000,
    seed: int = 17,
) -> Scenario:
    """Experiments spread over ``layers`` layers (90 % of each), a fallback fault in one of them.

    Layer 0 holds ranking experiments (control ``ctr_v41``, test ``ctr_v42``), the others ad-load
    experiments with effects of 0 and ±0.5 %. The test arm of the first ranking experiment falls
    back to the weak model for 90 % of its requests from 50 minutes before the end; a global
    revenue alert fires 10 minutes later.
    """
    layers = max(1, min(layers, n_experiments))
    per_layer = -(-n_experiments // layers)
    pct = round(90.0 / per_layer, 4)
    experiments: list[dict[str, Any]] = []
    for i in range(n_experiments):
        layer = i % layers
        if layer == 0:
            arms: dict[str, Any] = {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}}
        else:
            arms = {"control": {}, "test": {"ad_load": [1.0, 0.995, 1.005][i % 3]}}
        experiments.append(
            {
                "id": f"x{i:04d}",
                "name": f"fleet {i}",
                "layer": f"layer{layer:02d}",
                "traffic_pct": pct,
                "arms": arms,
            }
        )
    return parse_scenario(
        {
            "name": f"fleet-{n_experiments}",
            "seed": seed,
            "world": {
                "start": "2026-11-20T10:00:00Z",
                "minutes": minutes,
                "requests_per_minute": requests_per_minute,
                "diurnal": False,
                "models": [{"id": "ctr_v41", "quality": 0.75}, {"id": "ctr_v42", "quality": 0.77}],
                "production_model": "ctr_v41",
                "experiments": experiments,
            },
            "faults": [
                {
                    "kind": "model_fallback",
                    "experiment": "x0000",
                    "severity": 0.9,
                    "start_minute": minutes - 50,
                }
            ],
            "alert": {"metric": "revenue", "minute": minutes - 40},
            "expect": {
                "root_cause": "model_fallback",
                "experiment": "x0000",
                "mitigation": "kill_experiment",
            },
        }
    )


# --- 1. allocation by layers -------------------------------------------------------------------


def _growthbook(scenario: Scenario) -> tuple[Any, list[str]]:
    from growthbook import GrowthBook

    features: dict[str, Any] = {}
    start: dict[str, float] = {}
    for e in scenario.world.experiments:
        lo = start.get(e.layer, 0.0)
        hi = lo + e.layer_pct / 100.0
        start[e.layer] = hi
        features[f"f-{e.id}"] = {
            "defaultValue": False,
            "rules": [
                {
                    "key": e.id,
                    "variations": [False, True],
                    "weights": [0.5, 0.5],
                    "hashAttribute": "id",
                    "namespace": [e.layer, round(lo, 6), round(min(hi, 1.0), 6)],
                }
            ],
        }
    return GrowthBook(features=features), list(features)


def _assignments_point(n: int, requests: int, rounds: int) -> dict[str, Any]:
    from evals.sim import scenario_to_experiment_file
    from lifecycle import Allocator, build_snapshot
    from lifecycle.allocation import assignments as reference

    scenario = fleet_world(n)
    file = scenario_to_experiment_file(scenario)
    snapshot = build_snapshot(file.layers, file.experiments)
    allocator = Allocator(snapshot)
    gb, features = _growthbook(scenario)
    rng = np.random.default_rng(n)
    units = rng.integers(1, 2**40, size=requests).tolist()
    reqs = [{"unit_id": u} for u in units]
    gb_requests = max(5, requests * 10 // max(n, 10))  # GrowthBook is timed on fewer requests
    ours: list[float] = []
    ref: list[float] = []
    theirs: list[float] = []
    in_ours = in_theirs = 0
    for r in range(rounds):
        order = (0, 1, 2) if r % 2 == 0 else (2, 1, 0)
        for part in order:
            began = time.perf_counter()
            if part == 0:
                in_ours = sum(len(allocator.assignments(q)) for q in reqs)
                ours.append((time.perf_counter() - began) / requests)
            elif part == 1:
                for q in reqs[: max(5, requests // 10)]:
                    reference(snapshot, q)
                ref.append((time.perf_counter() - began) / max(5, requests // 10))
            else:
                in_theirs = 0
                for u in units[:gb_requests]:
                    gb.set_attributes({"id": str(u)})
                    in_theirs += sum(gb.is_on(f) for f in features)
                theirs.append((time.perf_counter() - began) / gb_requests)
    us, gb_us = statistics.median(ours) * 1e6, statistics.median(theirs) * 1e6
    return {
        "experiments": n,
        "layers": len(file.layers),
        "assignments_us": round(us, 1),
        "reference_us": round(statistics.median(ref) * 1e6, 1),
        "growthbook_us": round(gb_us, 1),
        "speedup_vs_growthbook": round(gb_us / us, 1),
        "experiments_per_request": round(in_ours / requests, 2),
        "growthbook_treated_per_request": round(in_theirs / gb_requests, 2),
    }


# --- 2. configuration distribution -------------------------------------------------------------


def _serve(state_url: str, port_file: str) -> None:
    """A subprocess: uvicorn with the snapshot router over the store, port written to a file."""
    import socket

    import uvicorn
    from fastapi import FastAPI

    from agent.server.snapshots import snapshot_router
    from agent.settings import Settings
    from lifecycle.service import ExperimentService

    settings = Settings(state_url=state_url, snapshot_key=_KEY)
    app = FastAPI()
    app.include_router(snapshot_router(settings, ExperimentService(state_url)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def _subscribe(url: str, targets: list[str]) -> None:
    """A subprocess: for each target in turn, report when a treated request turns False."""
    from lifecycle.remote import RemoteAllocator

    with RemoteAllocator(url, _KEY) as remote:
        if not remote.wait(timeout=60):
            print(json.dumps({"error": "no snapshot"}), flush=True)
            return
        for target in targets:
            request = next(
                {"unit_id": u}
                for u in range(1_000_000)
                if remote.is_enabled({"unit_id": u}, target)
            )
            print(json.dumps({"ready": target}), flush=True)
            while True:
                seen = remote.version  # read before the check, so no swap is missed
                if not remote.is_enabled(request, target):
                    break
                remote.wait(newer_than=seen, timeout=0.5)
            print(json.dumps({"off": target, "ns": time.time_ns()}), flush=True)


def _distribution(workdir: Path, n: int, subscribers: int, rounds: int) -> dict[str, Any]:
    from evals.harness import create_experiments
    from lifecycle import Allocator
    from lifecycle.service import ExperimentService
    from lifecycle.wire import decode_envelope, encode_delta, encode_envelope

    db = workdir / f"fleet-state-{n}.db"
    db.unlink(missing_ok=True)
    state_url = f"sqlite:///{db}"
    service = ExperimentService(state_url)
    began = time.perf_counter()
    create_experiments(fleet_world(n), service)
    create_s = time.perf_counter() - began
    # Rebuild costs at n experiments: the server's read + build + signature, the subscriber's
    # verification + compile, and an incremental compile after a kill.
    began = time.perf_counter()
    envelope = encode_envelope(service.snapshot(), _KEY.encode())
    rebuild_ms = (time.perf_counter() - began) * 1e3
    began = time.perf_counter()
    allocator = Allocator(decode_envelope(envelope, _KEY.encode()))
    compile_ms = (time.perf_counter() - began) * 1e3
    targets = [f"x{20 * (r + 1):04d}" for r in range(rounds)]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    port_file = workdir / "fleet-port"
    port_file.unlink(missing_ok=True)
    code = "import sys; from evals.bench.fleet import {0}; {0}(*sys.argv[1:3])"
    server = subprocess.Popen(
        [sys.executable, "-c", code.format("_serve"), state_url, str(port_file)], env=env
    )
    subs: list[subprocess.Popen[str]] = []
    procs: list[subprocess.Popen[Any]] = [server]
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError("the snapshot server did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        sub_code = (
            "import sys, json; from evals.bench.fleet import _subscribe; "
            "_subscribe(sys.argv[1], json.loads(sys.argv[2]))"
        )
        subs = [
            subprocess.Popen(
                [sys.executable, "-c", sub_code, url, json.dumps(targets)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(subscribers)
        ]
        latencies: list[float] = []
        for target in targets:
            for sub in subs:
                line = json.loads(sub.stdout.readline() if sub.stdout else "{}")
                if line.get("ready") != target:
                    raise RuntimeError(f"subscriber not ready for {target}: {line}")
            before = service.snapshot()  # for the size of one kill's delta
            time.sleep(0.2)
            killed_at = time.time_ns()
            service.kill(target, "bench", "fleet bench kill", scope="experiment")
            for sub in subs:
                line = json.loads(sub.stdout.readline() if sub.stdout else "{}")
                latencies.append((int(line["ns"]) - killed_at) / 1e6)
        killed = service.snapshot()
        delta_bytes = len(encode_delta(before, killed, _KEY.encode()))
        began = time.perf_counter()
        allocator.swap(killed)
        incremental_ms = (time.perf_counter() - began) * 1e3
    finally:
        procs += subs
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        service.close()
    return {
        "experiments": n,
        "subscribers": subscribers,
        "kills": rounds,
        "kill_propagation_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "kill_propagation_ms_p99": round(float(np.percentile(latencies, 99)), 1),
        "kill_propagation_ms_max": round(max(latencies), 1),
        "snapshot_bytes": len(envelope.encode()),
        "delta_bytes": delta_bytes,
        "server_rebuild_ms": round(rebuild_ms, 1),
        "subscriber_compile_ms": round(compile_ms, 1),
        "incremental_swap_ms": round(incremental_ms, 1),
        "recompiled_after_kills": allocator.recompiled,
        "create_experiments_s": round(create_s, 2),
    }


# --- 3. investigations and memory (each in a fresh process) ------------------------------------


def _investigate_child(workdir: str, scenario: Scenario) -> dict[str, Any]:
    from agent.deterministic import DeterministicReasoner
    from evals.harness import eval_settings, investigate, prepare

    settings = prepare(scenario, eval_settings(Path(workdir)))
    # The graph's modules (LangGraph, LangChain core: ~2.5 s on this machine) are loaded before
    # the clock starts, as in `vigil serve` or the alert path, where they are loaded once.
    import agent.graph
    import agent.service  # noqa: F401

    wall, cpu = time.perf_counter(), time.process_time()
    view = investigate(scenario, settings, DeterministicReasoner())
    top = view.root_causes[0] if view.root_causes else None
    return {
        "seconds": round(time.perf_counter() - wall, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "found": top is not None
        and top.cause == scenario.expect.root_cause
        and top.experiment == scenario.expect.experiment,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _prepare_child(workdir: str, scenario: Scenario) -> dict[str, Any]:
    from evals.harness import eval_settings, prepare

    began = time.perf_counter()
    settings = prepare(scenario, eval_settings(Path(workdir)))
    return {"prepare_s": round(time.perf_counter() - began, 1), "telemetry": settings.telemetry_url}


def _in_child(fn: Any, *args: Any) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result: dict[str, Any] = pool.submit(fn, *args).result()
        return result


def _investigation_point(workdir: Path, n: int, rpm: int, minutes: int) -> dict[str, Any]:
    scenario = fleet_world(n, requests_per_minute=rpm, minutes=minutes)
    folder = workdir / f"fleet-{n}-{rpm}-{minutes}"
    prepared = _in_child(_prepare_child, str(folder), scenario)  # the world, not timed below
    measured = _in_child(_investigate_child, str(folder), scenario)
    # The telemetry ends where the alert fires, as it would live.
    requests = rpm * (scenario.alert.minute + 1)
    return {"experiments": n, "requests": requests, **prepared, **measured}


def _memory_point(workdir: Path, millions: float) -> dict[str, Any]:
    from evals.bench.checks import bench_world

    minutes = 510
    rpm = int(millions * 1e6 / minutes)
    scenario = bench_world(minutes=minutes, requests_per_minute=rpm)
    folder = workdir / f"fleet-memory-{millions:g}m"
    prepared = _in_child(_prepare_child, str(folder), scenario)
    measured = _in_child(_investigate_child, str(folder), scenario)
    return {"requests_millions": millions, **prepared, **measured}


def _sizes(value: Any, default: list[float]) -> list[float]:
    if value is None:
        return default
    if isinstance(value, str):
        return [float(x) for x in value.split(",") if x]
    return [float(x) for x in value]


def run(opts: BenchOptions) -> dict[str, Any]:
    """Allocation, distribution, investigations and memory at fleet scale.

    Options (``opts.extra``, or the same names upper-cased in the environment, e.g.
    ``FLEET_MEMORY_MILLIONS=1,10,30``): ``fleet_experiments`` (assignment sizes, default
    10,100,1000),
    ``fleet_investigations`` (default 10,100,1000), ``fleet_rpm`` and ``fleet_minutes`` (the
    investigated worlds, default 1,000 x 180), ``fleet_memory_millions`` (default 1; e.g.
    1,10,30), ``fleet_subscribers`` (8), ``fleet_kills`` (5).
    """
    workdir = Path(opts.workdir) / "fleet"
    workdir.mkdir(parents=True, exist_ok=True)
    quick = opts.quick
    # `vigil bench` has no option per section: the same keys, upper-cased, from the environment.
    extra = {
        **{k.lower(): v for k, v in os.environ.items() if k.startswith("FLEET_")},
        **opts.extra,
    }
    sizes = [int(x) for x in _sizes(extra.get("fleet_experiments"), [10, 100, 1000])]
    inv_sizes = _sizes(extra.get("fleet_investigations"), [10, 100] if quick else [10, 100, 1000])
    rpm = int(extra.get("fleet_rpm", 500 if quick else 1_000))
    minutes = int(extra.get("fleet_minutes", 180))
    memory = _sizes(extra.get("fleet_memory_millions"), [] if quick else [1])
    figures: dict[str, Any] = {
        "assignments": [
            _assignments_point(n, 500 if quick else 2_000, 3 if quick else 5) for n in sizes
        ],
        "distribution": _distribution(
            workdir,
            max(sizes),
            int(extra.get("fleet_subscribers", 8)),
            int(extra.get("fleet_kills", 3 if quick else 5)),
        ),
        "investigations": [_investigation_point(workdir, int(n), rpm, minutes) for n in inv_sizes],
        "memory": [_memory_point(workdir, m) for m in memory],
    }
    return figures
