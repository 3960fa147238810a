"""``simulate``: write (append) a slice of a scenario's world to a telemetry database.

The world is cut into aligned blocks of minutes; each block is simulated in numpy and handed, as
Arrow tables, to a writer thread while the next block is being simulated (DuckDB inserts release
the GIL, so the two overlap on two cores; the writer buffers about a million rows per INSERT).
``model_snapshots`` gets every model version live in the slice that the database does not hold
yet, so slices can be appended one after the other. Everything is written in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from evals.sim.engine import Block, simulate_block
from evals.sim.scenario import Scenario
from evals.sim.store import TelemetryWriter, open_writer
from evals.sim.world import World, build_world, snapshot_times
from lifecycle.allocation import KillScope
from tools.errors import ConfigError

__all__ = ["SimSummary", "simulate"]

_SNAPSHOT_STREAM = 6
_NE_JITTER = 0.01
_CAL_JITTER = 0.005


@dataclass(frozen=True, slots=True)
class SimSummary:
    """What one :func:`simulate` call wrote."""

    scenario: str
    db_url: str
    start_minute: int
    end_minute: int
    requests: int
    exposures: int
    snapshots: int
    experiments: int
    faults: int
    seconds: float

    @property
    def requests_per_s(self) -> float:
        """Simulation throughput, requests per second of wall time."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def simulate(
    scenario: Scenario,
    db_url: str,
    *,
    start_minute: int = 0,
    end_minute: int | None = None,
    kill_switches: Iterable[tuple[KillScope, str]] = (),
    rolled_back: Iterable[str] = (),
    replace: bool = False,
    progress: bool = False,
) -> SimSummary:
    """Simulate minutes ``[start_minute, end_minute)`` of the world and append them to the tables.

    Args:
        scenario: A validated scenario.
        db_url: SQLAlchemy URL of the telemetry database (created when missing).
        start_minute: First minute to write.
        end_minute: Minute after the last one to write; default ``world.minutes``. It may go past
            ``world.minutes`` (the world goes on: "what happened after the kill").
        kill_switches: Active ``(scope, target)`` kill switches (lifecycle ``KillScope``); the
            real allocation skips the experiments they block, so their units get production.
        rolled_back: Model ids rolled back before ``start_minute``: their ``model:`` faults end.
        replace: Drop the telemetry tables first.
        progress: Show a Rich progress bar.

    Returns:
        Counts of what was written and the wall time.

    Raises:
        ConfigError: For a bad minute range or URL.
        TelemetryError: When the database cannot be written.
    """
    end = scenario.world.minutes if end_minute is None else end_minute
    if start_minute < 0:
        raise ConfigError("start_minute", start_minute, "must be >= 0")
    if end <= start_minute:
        raise ConfigError("end_minute", end, f"must be after start_minute {start_minute}")
    began = time.perf_counter()
    world = build_world(
        scenario,
        kill_switches=tuple(kill_switches),
        rolled_back=tuple(rolled_back),
        from_minute=start_minute,
    )
    blocks = range(start_minute // world.block_minutes, (end - 1) // world.block_minutes + 1)
    with open_writer(db_url, replace=replace) as writer:
        _write_snapshots(world, writer, start_minute, end)
        _run_blocks(world, writer, blocks, start_minute, end, progress)
        rows = dict(writer.rows)
    if any(e.shadow for e in scenario.world.experiments):
        from evals.replay import write_shadow  # shadow mode's log (issue 18); imports evals.sim

        write_shadow(scenario, db_url)
    return SimSummary(
        scenario=scenario.name,
        db_url=db_url,
        start_minute=start_minute,
        end_minute=end,
        requests=rows["requests"],
        exposures=rows["exposures"],
        snapshots=rows["model_snapshots"],
        experiments=len(scenario.world.experiments),
        faults=len(scenario.faults),
        seconds=time.perf_counter() - began,
    )


def _run_blocks(
    world: World, writer: TelemetryWriter, blocks: range, lo: int, hi: int, progress: bool
) -> None:
    def write(block: Block) -> None:
        writer.write("requests", block.requests)
        writer.write("exposures", block.exposures)

    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=False)
        task = bar.add_task(f"simulating {world.scenario.name}", total=len(blocks))
        bar.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-sim-writer") as pool:
            pending: Future[None] | None = None
            for b in blocks:
                block = simulate_block(world, b, lo, hi)
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, block) if block is not None else None
                if bar is not None:
                    bar.advance(task)
            if pending is not None:
                pending.result()
    finally:
        if bar is not None:
            bar.stop()


def _write_snapshots(world: World, writer: TelemetryWriter, lo: int, hi: int) -> None:
    """Rows for every model version live in ``[lo, hi)`` that the database lacks."""
    scenario = world.scenario
    existing = writer.existing_snapshots()
    minutes = np.arange(lo, hi, dtype=np.int64)
    rows: list[tuple[str, str, datetime, datetime, float, float]] = []
    for m, model_id in enumerate(world.model_ids):
        refresh = int(world.model_refresh[m])
        if refresh == 0:
            ks = np.zeros(1, dtype=np.int64)
        else:
            k = minutes // refresh
            for f in world.faults:
                if f.kind != "stale_model" or f.experiment is not None:
                    continue  # an arm pinned to an old version does not stop publication
                for model, pin_k, pin_end in f.pins:
                    if model == m:
                        k = np.where((minutes >= f.start) & (minutes < pin_end), pin_k, k)
            ks = np.unique(k)
        for k_i in ks.tolist():
            version = world.version(m, k_i)
            if (model_id, version) in existing:
                continue
            trained, published = snapshot_times(scenario, model_id, k_i)
            jitter = np.random.default_rng([world.seed, _SNAPSHOT_STREAM, m, k_i + (1 << 20)])
            ne = world.pilot.expected_ne(float(np.sqrt(world.model_sd2[m])))
            rows.append(
                (
                    model_id,
                    version,
                    trained,
                    published,
                    ne * (1.0 + _NE_JITTER * float(jitter.standard_normal())),
                    1.0 + _CAL_JITTER * float(jitter.standard_normal()),
                )
            )
    if rows:
        cols = list(zip(*rows, strict=True))
        writer.write(
            "model_snapshots",
            pa.Table.from_arrays(
                [
                    pa.array(cols[0], type=pa.string()),
                    pa.array(cols[1], type=pa.string()),
                    pa.array(cols[2], type=pa.timestamp("us")),
                    pa.array(cols[3], type=pa.timestamp("us")),
                    pa.array(cols[4], type=pa.float64()),
                    pa.array(cols[5], type=pa.float64()),
                ],
                names=[
                    "model_id",
                    "model_version",
                    "trained_at",
                    "published_at",
                    "training_ne",
                    "training_calibration",
                ],
            ),
        )
