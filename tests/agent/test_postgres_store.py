"""The agent's state and checkpoints on a real PostgreSQL server (started by the suite).

Compare-and-set under contention (many threads, each with its own connections, approve the same
proposal: exactly one wins, nobody errors), an investigation paused for approval that a new
Investigator on the same databases resumes, and an unreachable checkpoint database named in one
line with its password hidden.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from agent.graph import open_checkpointer
from agent.models import MitigationView
from agent.store import AgentStore
from tests.agent.conftest import alert
from tests.agent.test_service import fallback_world
from tests.pg import PgServer
from tools.errors import RetryableError

THREADS = 8


@pytest.fixture
def url(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A new, empty database per test."""
    return pg_server.url(pg_server.create_database(request.node.name[:30]))


def _proposal(mid: str) -> MitigationView:
    return MitigationView(
        id=mid,
        investigation_id=None,
        action="kill_experiment",
        target="879",
        status="proposed",
        blast_radius=0.05,
        proposed_by="vigil",
    )


def _race(work, n: int = THREADS) -> tuple[list[object], list[BaseException]]:
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results.append(work(i))
        except BaseException as exc:  # collected, asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def test_concurrent_approvals_from_threads_have_exactly_one_winner(url: str) -> None:
    stores = [AgentStore(url) for _ in range(THREADS)]  # each its own pool: real contention
    try:
        for round_ in range(3):
            mid = f"m-{round_}"
            assert stores[0].add_mitigation(_proposal(mid))
            assert not stores[1].add_mitigation(_proposal(mid))  # the id is unique
            results, errors = _race(
                lambda i, mid=mid: stores[i].transition(
                    mid, ["proposed"], "approved", approved_by=f"user{i}"
                )
            )
            assert errors == []
            assert sorted(results) == [False] * (THREADS - 1) + [True]
            stored = stores[0].get_mitigation(mid)
            assert stored.status == "approved" and stored.approved_by is not None
            # The next step is exactly-once too.
            results, errors = _race(
                lambda i, mid=mid: stores[i].transition(mid, ["approved"], "executing")
            )
            assert errors == [] and results.count(True) == 1
    finally:
        for store in stores:
            store.engine.dispose()


def test_an_investigation_paused_on_postgres_resumes_in_a_new_investigator(
    harness, url: str
) -> None:
    h = harness(fallback_world(), state_url=url, checkpoint_url=url)
    first = h.investigator()
    view = first.investigate(alert())
    assert view.status == "awaiting_approval"
    mid = view.mitigations[0].id
    first.close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:  # the pause is in PostgreSQL's checkpoint tables
        saved = conn.execute(
            sa.text("SELECT count(*) FROM checkpoints WHERE thread_id = :t"), {"t": view.id}
        )
        assert saved.scalar_one() > 0
    engine.dispose()
    second = h.investigator()  # as a new process: new graph, same state and checkpoint DBs
    assert second.get(view.id).status == "awaiting_approval"
    _, errors = _race(lambda _i: second.approve(mid, "alice"), n=4)
    assert errors == []
    assert h.actions.calls == [("kill_experiment", "879", "alice")]
    assert second.get(view.id).status == "completed"


def test_an_unreachable_checkpoint_database_is_one_line(pg_server: PgServer) -> None:
    bad = f"postgresql+psycopg://vigil:s3cret@127.0.0.1:{pg_server.port + 1}/vigil"
    with pytest.raises(RetryableError) as err:
        open_checkpointer(bad)
    text = str(err.value)
    assert "\n" not in text and "s3cret" not in text
    assert text.startswith("checkpoint database postgresql+psycopg://vigil:***@127.0.0.1:")
