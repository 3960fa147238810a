"""The console's copy of the experiment state: follows every change the audit log records, and
never holds a page for its first read of everything."""

from __future__ import annotations

import builtins
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from agent.console.cache import StateCache
from agent.service import Investigator
from lifecycle.config import Arm, Experiment, ExperimentFile
from lifecycle.service import ExperimentService
from lifecycle.views import AuditEntry, ExperimentView
from tests.agent.server.fakes import make_experiments
from tools.errors import StoreBusy


def test_the_copy_follows_changes_reading_only_what_they_touched(tmp_path: Path) -> None:
    service = make_experiments(f"sqlite:///{tmp_path / 'state.db'}")  # 879 and 880, started
    try:
        cache = StateCache(service)
        first = cache.current()
        assert [v.id for v in first.views] == ["879", "880"] and cache.full_reads == 1
        assert cache.current() is first  # nothing changed: nothing read

        service.pause("879", "alice", reason="look closer")
        arms = {"control": Arm(model="ctr_v41"), "test": Arm(model="ctr_v41")}
        aa = Experiment(id="aa", name="A/A", owner="bob", layer="ranking", traffic_pct=5, arms=arms)
        service.create(ExperimentFile(experiments=[aa]), "bob")
        after = cache.current()
        assert cache.full_reads == 1  # read incrementally
        assert [v.id for v in after.views] == ["879", "880", "aa"]
        paused = after.view("879")
        assert paused is not None and paused.status == "paused"
        assert after.decisions["879"] == "pause by alice"
        assert after.entries[-1].action == "create" and after.version == service.version()
        assert [v.model_dump() for v in after.views] == [v.model_dump() for v in service.list()]

        service.kill("ranking", "carol", "layer down", scope="layer")  # names no experiment
        killed = cache.current()
        assert cache.full_reads == 2
        assert all(v.killed for v in killed.views)
    finally:
        service.close()


class _SlowFirstRead:
    """The experiment core whose ``list`` (the read of everything) waits until released."""

    def __init__(self, inner: ExperimentService) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()

    def version(self) -> int:
        return self.inner.version()

    def list(self) -> list[ExperimentView]:
        self.started.set()
        if not self.release.wait(20):
            raise AssertionError("never released")
        return self.inner.list()

    def get(self, experiment_id: str) -> ExperimentView:
        return self.inner.get(experiment_id)

    def audit(
        self, experiment_id: str | None = None, limit: int | None = None
    ) -> builtins.list[AuditEntry]:
        return self.inner.audit(experiment_id, limit)


class _Broken(_SlowFirstRead):
    def list(self) -> list[ExperimentView]:
        raise StoreBusy("state store down")


def test_ready_answers_at_once_while_the_first_read_runs_in_the_background(
    tmp_path: Path,
) -> None:
    service = make_experiments(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        slow = _SlowFirstRead(service)
        cache = StateCache(slow)
        began = time.perf_counter()
        assert cache.ready(wait_s=0.05) is None
        assert time.perf_counter() - began < 2.0  # did not wait for the read
        assert slow.started.wait(10) and cache.reading_since is not None
        reader = cache.read_in_background()
        assert cache.read_in_background() is reader  # one read at a time
        assert cache.ready() is None
        slow.release.set()
        reader.join(10)
        copy = cache.ready()
        assert copy is not None and [v.id for v in copy.views] == ["879", "880"]
        assert cache.full_reads == 1 and cache.read_error == ""

        broken = StateCache(_Broken(service))
        broken.read_in_background().join(10)
        assert broken.ready() is None
        assert "state store down" in broken.read_error
    finally:
        service.close()


def test_the_dashboard_says_health_is_computing_then_fills_it_in_with_its_time(
    sign_in: Callable[[str], TestClient], parts: tuple[Investigator, ExperimentService]
) -> None:
    _, experiments = parts
    client = sign_in("carol")
    app = client.app
    assert isinstance(app, FastAPI)
    console = app.state.console
    slow = _SlowFirstRead(experiments)
    console.state = StateCache(slow)  # as just after a start, with a long first read

    page = client.get("/console/")
    assert page.status_code == 200
    assert 'data-pending="true"' in page.text and "Health computing" in page.text
    assert 'id="live"' not in page.text and "healthy" not in page.text  # no health made up
    assert "Latest audit entries" in page.text and ">start<" in page.text  # the rest is shown
    listing = client.get("/console/experiments")  # reloads itself until the list is read
    assert 'id="list-pending"' in listing.text and 'http-equiv="refresh"' in listing.text
    audit = client.get("/console/audit?action=start")  # the newest entries, from the store
    assert audit.status_code == 200 and "879" in audit.text and "880" in audit.text
    assert "ranking — free share being read" in client.get("/console/builder").text

    slow.release.set()
    deadline = time.monotonic() + 20
    fragment = client.get("/console/fragments/dashboard").text
    while "health-as-of" not in fragment and time.monotonic() < deadline:
        time.sleep(0.05)
        fragment = client.get("/console/fragments/dashboard").text
    assert 'data-pending="true"' not in fragment
    assert re.search(r"Health as of \d\d:\d\d:\d\d UTC \(state version (\d+)\)", fragment)
    found = re.search(r"state version (\d+)", fragment)
    assert found is not None and int(found.group(1)) == experiments.version()
    assert 'data-experiment="879"' in fragment and 'data-experiment="880"' in fragment
    listing = client.get("/console/experiments")
    assert 'id="list-pending"' not in listing.text and 'http-equiv="refresh"' not in listing.text
    assert "2 of 2" in listing.text
    assert "ranking — 80.0 % free" in client.get("/console/builder").text  # 879, 880: 10 % each
