"""Two real processes press the same kill switch at the same moment: it is recorded once.

Both also open the brand-new store at the same moment, so the migration race is exercised too.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from lifecycle.service import ExperimentService
from lifecycle.validation import parse_experiment_file
from tests.lifecycle.conftest import world
from tests.sqlite_locks import open_while_locked

ROUNDS = 5


def _presser(url: str, name: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # open the new store together
    service = ExperimentService(url)
    barrier.wait()
    barrier.wait()  # the parent has created the experiments
    for round_ in range(ROUNDS):
        barrier.wait()  # press together
        results.put((round_, name, service.kill("879", name, f"race {round_}")))
        barrier.wait()  # the parent checks and releases
    service.close()


def test_two_processes_activating_the_same_kill_switch_record_it_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3, timeout=120)
    results = ctx.Queue()
    procs = [ctx.Process(target=_presser, args=(url, f"p{i}", barrier, results)) for i in range(2)]
    for p in procs:
        p.start()
    try:
        barrier.wait()
        barrier.wait()
        service = ExperimentService(url)
        service.create(parse_experiment_file(world()), "alice", start=True)
        barrier.wait()
        for round_ in range(ROUNDS):
            barrier.wait()
            barrier.wait()
            outcome = [results.get(timeout=60) for _ in procs]
            assert sorted(r for _, _, r in outcome) == [False, True], outcome
            assert all(r == round_ for r, _, _ in outcome)
            kills = [e for e in service.audit("879") if e.action == "kill"]
            assert len(kills) == round_ + 1
            assert service.get("879").blocked_by == [("experiment", "879")]
            assert service.release("879", "alice", "next round")
        service.close()
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]


def test_a_new_store_opens_while_another_connection_holds_its_lock(tmp_path: Path) -> None:
    service = open_while_locked(
        tmp_path / "state.db", lambda: ExperimentService(f"sqlite:///{tmp_path / 'state.db'}")
    )
    service.create(parse_experiment_file(world()), "alice", start=True)
    assert service.get("879").id == "879"
    service.close()
