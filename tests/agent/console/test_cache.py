"""The console's copy of the experiment state follows every change the audit log records."""

from __future__ import annotations

from pathlib import Path

from agent.console.cache import StateCache
from lifecycle.config import Arm, Experiment, ExperimentFile
from tests.agent.server.fakes import make_experiments


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
