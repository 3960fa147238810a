"""Shadow mode in lifecycle (issue 18): nobody is in the experiment, the candidate is reported
for scoring, a kill still wins; the reference, the vectorised path and the compiled allocator
agree; a remote subscriber honours it; the rollout controller ends a shadow run on its checks,
audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.allocation import (
    Status,
    assign_many,
    assignments,
    build_snapshot,
    decide,
    drawn_arm,
    is_enabled,
)
from lifecycle.allocator import Allocator
from lifecycle.config import Arm, Experiment, Layer, RolloutPlan, RolloutStage
from lifecycle.controller import ACTOR, RolloutController
from lifecycle.preflight import judge_shadow
from lifecycle.service import ExperimentService
from lifecycle.shadow import ShadowArm, shadow_arm, shadow_arms, shadow_many
from lifecycle.validation import parse_experiment_file
from lifecycle.wire import snapshot_from_json, snapshot_to_json
from tests.lifecycle.conftest import Clock, world
from tools.checks.replay import ReplaySample
from tools.errors import ConfigError, StateError
from tools.unit_stats import UnitStatsReader

LAYERS = [Layer(id="ranking")]
UNITS = np.arange(20_000, dtype=np.int64)


def _exp(**kw: Any) -> Experiment:
    arms = kw.pop(
        "arms",
        {"control": Arm(model="ctr_v41"), "test": Arm(model="ctr_v42"), "load": Arm(ad_load=1.1)},
    )
    return Experiment(id="e", name="e", owner="o", layer="ranking", traffic_pct=40, arms=arms, **kw)


def _snap(status: Status, **kw: Any) -> Any:
    return build_snapshot(LAYERS, [_exp()], status={"e": status}, **kw)


def test_shadow_serves_nobody_and_reports_the_arm_the_unit_will_get() -> None:
    shadow, running = Allocator(_snap("shadow")), Allocator(_snap("running"))
    reported = 0
    for u in range(0, 20_000, 7):
        request = {"unit_id": u}
        served = running.assign(request, "e")
        # Nobody is in a shadow experiment (served production, no exposure logged, so its SRM
        # starts clean when it ramps); is_enabled is False for everyone.
        assert shadow.assignments(request) == {}
        assert shadow.assign(request, "e") is None
        assert not shadow.is_enabled(request, "e")
        # The candidate scored in shadow is the arm the unit gets once the experiment runs, so
        # the shadow run judges the very units the first stage will expose. An arm without a
        # model of its own (ad load only) has nothing to score.
        expected = [ShadowArm("e", "test", "ctr_v42")] if served == "test" else []
        assert shadow.shadow_arms(request) == expected
        reported += bool(expected)
    # A third of the enrolled 40 % draw test.
    assert reported / len(range(0, 20_000, 7)) == pytest.approx(0.4 / 3, abs=0.02)
    assert running.shadow_arms({"unit_id": 1}) == []


@pytest.mark.parametrize(
    "switch", [("experiment", "e"), ("layer", "ranking"), ("model", "ctr_v42"), ("global", "*")]
)
def test_a_kill_switch_stops_the_shadow_scoring_too(switch: Any) -> None:
    snap = _snap("shadow", kill_switches=[switch])
    allocator = Allocator(snap)
    for u in range(300):
        request = {"unit_id": u}
        assert allocator.assignments(request) == {} and allocator.shadow_arms(request) == []
        assert shadow_arms(snap, request) == []
    assert (shadow_many(snap, UNITS, "e") == -1).all()
    assert (assign_many(snap, UNITS, "e") == -1).all()


_STATUSES: list[Status] = ["shadow", "running", "ramping", "paused", "draft"]


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    control=st.integers(0, 3),
    coverage=st.floats(0, 100),
    status=st.sampled_from(_STATUSES),
    kind=st.integers(0, 2),  # 0: plain, 1: targeted, 2: forced arms
    models=st.lists(st.sampled_from(["m1", "m2", None]), min_size=4, max_size=4),
    units=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=30),
)
def test_reference_vectorised_and_compiled_paths_agree_in_shadow(
    weights: list[int],
    control: int,
    coverage: float,
    status: Status,
    kind: int,
    models: list[str | None],
    units: list[int],
) -> None:
    arms = {f"a{i}": Arm(weight=w, model=models[i]) for i, w in enumerate(weights)}
    names = list(arms)
    exp = Experiment(
        id="e",
        name="e",
        owner="o",
        layer="ranking",
        traffic_pct=60,
        arms=arms,
        control=names[control % len(names)],
        targeting={"country": ["US"]} if kind == 1 else {},
        forced={str(units[0]): names[-1]} if kind == 2 else {},
    )
    snap = build_snapshot(LAYERS, [exp], status={"e": status}, coverage_pct={"e": coverage})
    wired = snapshot_from_json(snapshot_to_json(snap))  # what a subscriber rebuilds
    assert wired == snap
    compiled = snap.get("e")
    allocator = Allocator(wired)
    countries = ["US", "DE"] * len(units)
    for unit, country in zip(units, countries, strict=False):
        request = {"unit_id": unit, "country": country}
        arm, drawn, shadow = (
            decide(compiled, False, request),
            drawn_arm(compiled, False, request),
            shadow_arm(compiled, False, request),
        )
        if status == "shadow":
            assert arm == -1  # nobody is in it: served production, no exposure
            assert shadow == (drawn if drawn != compiled.control else -1)
        else:
            assert shadow == -1
        assert allocator.assign(request, "e") == (names[arm] if arm >= 0 else None)
        assert allocator.is_enabled(request, "e") == is_enabled(snap, request, "e")
        assert allocator.assignments(request) == assignments(snap, request)
        assert allocator.shadow_arms(request) == shadow_arms(snap, request)
    props = {"country": np.asarray(countries[: len(units)])}
    many = assign_many(snap, np.asarray(units, dtype=np.int64), "e", props)
    shadows = shadow_many(snap, np.asarray(units, dtype=np.int64), "e", props)
    requests = [{"unit_id": u, "country": c} for u, c in zip(units, countries, strict=False)]
    assert many.tolist() == [decide(compiled, False, r) for r in requests]
    assert shadows.tolist() == [shadow_arm(compiled, False, r) for r in requests]


# --- the service: start in shadow, end it, audited ---------------------------------------------


def _shadow_world(minutes: int = 60, alone: bool = False) -> dict[str, Any]:
    data = world()
    data["experiments"][0]["rollout"] |= {"shadow": True, "shadow_minutes": minutes}
    if alone:  # no other experiment ramping: the controller then reads no telemetry
        data["experiments"] = data["experiments"][:1]
    return data


def _treated_unit(allocator: Any) -> dict[str, Any]:
    return next(
        {"unit_id": u} for u in range(100_000) if allocator.shadow_arms({"unit_id": u}) != []
    )


def test_a_shadow_plan_starts_in_shadow_and_ends_at_its_first_stage(
    service: ExperimentService, clock: Clock
) -> None:
    service.create(parse_experiment_file(_shadow_world()), "alice", start=True, reason="go")
    view = service.get("879")
    assert (view.status, view.stage_percent) == ("shadow", 100.0)
    allocator = service.allocator()
    request = _treated_unit(allocator)
    assert allocator.shadow_arms(request) == [ShadowArm("879", "test", "ctr_v42")]
    assert "879" not in allocator.assignments(request)
    assert not allocator.is_enabled(request, "879")
    # The gate's advance does not end a shadow run: its checks do (or a forced, audited advance).
    with pytest.raises(StateError, match="shadow"):
        service.advance("879", "alice")
    # Pause and kill keep the shadow as the state to return to.
    service.pause("879", "alice", "look at it")
    assert allocator.shadow_arms(request) == []
    service.resume("879", "alice", "go on")
    service.kill("879", "oncall", "bad")
    assert allocator.shadow_arms(request) == [] and allocator.assignments(request) == {}
    service.release("879", "oncall", "fine")
    service.resume("879", "oncall", "back to shadow")
    assert service.get("879").status == "shadow"
    clock.advance(61)
    assert service.end_shadow("879", ACTOR, "shadow run passed", evidence={"verdict": "ok"})
    view = service.get("879")
    assert (view.status, view.stage, view.stage_percent) == ("ramping", 0, 10.0)
    last = service.audit("879")[-1]
    assert last.action == "end_shadow" and last.actor == ACTOR
    assert last.after is not None and last.after["shadow"] == {"verdict": "ok"}
    assert allocator.shadow_arms(request) == []
    with pytest.raises(StateError, match="cannot end shadow"):
        service.end_shadow("879", ACTOR, "again")


def test_a_remote_subscriber_honours_shadow_mode(tmp_path: Path) -> None:
    from lifecycle.remote import RemoteAllocator
    from tests.lifecycle.test_remote import KEY, Server, _app, _settings, _until

    service = ExperimentService(f"sqlite:///{tmp_path / 'state.db'}")
    service.create(parse_experiment_file(_shadow_world()), "alice", start=True, reason="go")
    with Server(_app(_settings(tmp_path), service)) as server:
        remote = RemoteAllocator(server.url, KEY, backoff_s=(0.02, 0.2), heartbeat_s=0.2)
        try:
            assert remote.wait(timeout=5)
            request = _treated_unit(remote)
            assert remote.shadow_arms(request) == [ShadowArm("879", "test", "ctr_v42")]
            assert not remote.is_enabled(request, "879")
            service.end_shadow("879", ACTOR, "shadow run passed")
            assert _until(lambda: remote.version == service.version())
            assert remote.shadow_arms(request) == []
            assert remote.snapshot == service.snapshot()
        finally:
            remote.close()
    service.close()


# --- the rollout controller ends a shadow run ---------------------------------------------------


class Shadow:
    """Shadow predictions per arm: the served model's, times the arm's factor for its candidate."""

    def __init__(
        self, factor: float | dict[str, float], n: int = 20_000, latency: bool = True
    ) -> None:
        rng = np.random.default_rng(5)
        self.served = np.clip(np.exp(rng.normal(np.log(0.02), 0.7, n)), 1e-4, 0.5)
        self.labels = (rng.random(n) < self.served).astype(float)
        self.factors = factor if isinstance(factor, dict) else {"test": factor}
        self.ms = np.full(n, 2.0) if latency else None
        self.calls: list[str] = []

    def shadow_samples(self, experiment_id: str, start: Any, end: Any) -> list[ReplaySample]:
        assert start < end
        self.calls.append(experiment_id)
        return [
            ReplaySample(
                self.served * factor,
                self.served,
                self.labels,
                self.ms,
                self.ms,
                source="shadow",
                experiment=experiment_id,
                arm=arm,
            )
            for arm, factor in self.factors.items()
        ]


def _controller(state_url: str, tmp_path: Path, shadow: Shadow | None) -> RolloutController:
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'telemetry.duckdb'}")
    return RolloutController(state_url, UnitStatsReader(engine), shadow=shadow)


@pytest.mark.parametrize(("factor", "status"), [(1.0, "ramping"), (1.5, "paused")])
def test_the_controller_ends_a_passing_shadow_and_pauses_a_failing_one(
    service: ExperimentService,
    clock: Clock,
    state_url: str,
    tmp_path: Path,
    factor: float,
    status: str,
) -> None:
    service.create(
        parse_experiment_file(_shadow_world(30, alone=True)), "alice", start=True, reason="go"
    )
    shadow = Shadow(factor)
    controller = _controller(state_url, tmp_path, shadow)
    try:
        (early,) = controller.tick(clock.now + timedelta(minutes=10))
        assert (early.action, early.after) == ("hold", "shadow") and shadow.calls == []
        (done,) = controller.tick(clock.now + timedelta(minutes=31))
        assert done.before == "shadow" and shadow.calls == ["879"]
        assert service.get("879").status == status
        entry = service.audit("879")[-1]
        assert entry.actor == ACTOR
        if status == "ramping":
            assert done.action == "advance" and entry.action == "end_shadow"
            assert entry.after is not None and entry.after["shadow"]["verdict"] in ("ok", "warn")
        else:
            assert done.action == "pause" and entry.action == "pause"
            assert "calibration" in entry.reason.lower()
    finally:
        controller.close()


def test_a_shadow_run_that_cannot_be_judged_holds(
    service: ExperimentService, clock: Clock, state_url: str, tmp_path: Path
) -> None:
    service.create(parse_experiment_file(_shadow_world(30, alone=True)), "alice", start=True)
    shadow = Shadow(1.0, latency=False)  # latency not logged: the shadow step says no_data
    controller = _controller(state_url, tmp_path, shadow)
    try:
        (d,) = controller.tick(clock.now + timedelta(minutes=45))
        assert (d.action, d.after) == ("hold", "shadow") and shadow.calls == ["879"]
        assert "latency" in d.reasons[0].lower()
        assert service.get("879").status == "shadow"
    finally:
        controller.close()


def test_a_kill_switch_wins_over_the_shadow_judgement(
    service: ExperimentService, clock: Clock, state_url: str, tmp_path: Path
) -> None:
    service.create(
        parse_experiment_file(_shadow_world(30, alone=True)), "alice", start=True, reason="go"
    )
    service.kill("ctr_v42", "oncall", "bad model", scope="model")
    shadow = Shadow(1.0)
    controller = _controller(state_url, tmp_path, shadow)
    try:
        (d,) = controller.tick(clock.now + timedelta(minutes=90))
        assert d.action == "skipped" and shadow.calls == []
        assert service.get("879").status == "shadow"
    finally:
        controller.close()


def test_a_plan_without_shadow_starts_ramping() -> None:
    plan = RolloutPlan(stages=[RolloutStage(percent=100)])
    assert not plan.shadow and plan.shadow_minutes == 60


def test_each_arm_is_judged_on_its_own_and_a_failing_arm_is_named() -> None:
    shadow = Shadow({"test": 1.0, "test2": 1.5})
    samples = shadow.shadow_samples("879", 0, 1)
    step = judge_shadow(samples)
    assert step.verdict == "fail"
    assert "failed in arm test2" in step.summary and "arm test," in step.summary
    by_arm = {(c.arm, c.check): c.verdict for c in step.checks}
    assert by_arm[("test2", "calibration")] == "fail"
    assert by_arm[("test", "calibration")] == "ok"
    # Judged alone, the healthy arm holds: the verdict of the run is its worst arm's.
    assert judge_shadow(samples[:1]).verdict in ("ok", "warn")
    with pytest.raises(ConfigError, match="samples"):
        judge_shadow([])
    with pytest.raises(ConfigError, match="one sample per arm"):
        judge_shadow([samples[0], samples[0]])


def test_the_controller_pauses_a_shadow_run_when_one_of_its_arms_fails(
    service: ExperimentService, clock: Clock, state_url: str, tmp_path: Path
) -> None:
    service.create(
        parse_experiment_file(_shadow_world(30, alone=True)), "alice", start=True, reason="go"
    )
    shadow = Shadow({"test": 1.0, "test2": 0.6})
    controller = _controller(state_url, tmp_path, shadow)
    try:
        (d,) = controller.tick(clock.now + timedelta(minutes=31))
        assert (d.action, d.after) == ("pause", "paused")
        entry = service.audit("879")[-1]
        assert entry.action == "pause" and "arm test2" in entry.reason
        assert "arm test," in entry.reason  # the healthy arm is reported too
    finally:
        controller.close()


def test_shadow_log_reads_one_sample_per_arm(tmp_path: Path) -> None:
    from lifecycle.inference import ShadowLog

    engine = sa.create_engine(f"duckdb:///{tmp_path / 'telemetry.duckdb'}")
    log = ShadowLog(engine)
    start, end = datetime(2026, 11, 20, 6, 0, tzinfo=UTC), datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    assert log.shadow_samples("879", start, end) == []  # no table: no shadow run
    ts = datetime(2026, 11, 20, 6, 30)
    requests = pd.DataFrame(
        {"request_id": range(6), "prediction": 0.02, "label": [0, 1, 0, 0, 0, 1], "latency_ms": 5.0}
    )
    shadows = pd.DataFrame(
        {
            "ts": [ts] * 6,
            "request_id": range(6),
            "experiment_id": ["879"] * 5 + ["880"],
            "arm": ["test", "b", "test", "b", "b", "test"],
            "prediction": [0.01, 0.03, 0.01, 0.03, 0.03, 0.5],
            "latency_ms": 4.0,
        }
    )
    requests.to_sql("requests", engine, index=False)
    shadows.to_sql("shadow_predictions", engine, index=False)
    samples = log.shadow_samples("879", start, end)
    assert [(s.arm, len(s.labels), s.source, s.experiment) for s in samples] == [
        ("b", 3, "shadow", "879"),
        ("test", 2, "shadow", "879"),
    ]
    assert samples[0].candidate.tolist() == [0.03] * 3
    assert samples[1].labels.tolist() == [0.0, 0.0]
    assert log.shadow_samples("879", end, end + timedelta(hours=1)) == []
