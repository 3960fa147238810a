"""The rollout controller end to end: a small world whose traffic follows the controller.

Each simulated minute the world asks the state store's allocation (as serving would) which units
are in experiment 879 and in which arm, writes their requests and exposures to a DuckDB
telemetry, and every few minutes the controller ticks on the telemetry clock. So the coverage in
the telemetry follows the gate's decisions, and the tests read the audit log, the alert ledger
and the telemetry afterwards.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from agent.cli import core
from agent.server.monitoring import rollout_round
from lifecycle.alerts import AlertLedger
from lifecycle.allocation import assign_many
from lifecycle.controller import ACTOR, ALERT_SOURCE, Decision, RolloutController
from lifecycle.gate import GateConfig
from lifecycle.service import ExperimentService
from lifecycle.validation import parse_experiment_file
from tools.errors import ConfigError
from tools.unit_stats import UnitStatsReader

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
N_UNITS = 6_000
STAGE_MINUTES = 15
TICK_EVERY = 5
GATE = GateConfig(tuning_n=2_000)


def _file(**rollout: Any) -> dict[str, Any]:
    return {
        "layers": [{"id": "ranking"}],
        "models": [{"id": "ctr_v41"}, {"id": "ctr_v42"}],
        "experiments": [
            {
                "id": "879",
                "name": "Ranking Model Improvements",
                "owner": "alice",
                "layer": "ranking",
                "traffic_pct": 100,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
                "rollout": {
                    "stages": [{"percent": p, "min_minutes": STAGE_MINUTES} for p in (10, 50, 100)],
                    **rollout,
                },
                "guardrails": [
                    {"metric": "revenue_per_request", "max_regression": 0.3},
                    {"metric": "srm"},
                ],
            }
        ],
    }


@dataclass
class World:
    """Units with their own click rate and cost per click, served as the allocation says."""

    engine: sa.Engine
    url: str
    service: ExperimentService
    controller: RolloutController
    clock: list[datetime]
    state_url: str
    harm: float = 0.0  # revenue lost in the test arm (0.5 = half)
    lost_test_units: float = 0.0  # an exposure-logging bug: test units never logged
    seed: int = 1
    n_units: int = N_UNITS
    arms_seen: list[np.ndarray] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    _next_id: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.rng = rng
        n = self.n_units
        self.units = np.arange(1, n + 1, dtype=np.int64)
        self.rate = rng.lognormal(-1.0, 0.8, n)  # requests per minute
        self.ctr = np.clip(0.2 * rng.lognormal(-0.1, 0.4, n), 0.0, 0.9)
        self.cpc = rng.lognormal(0.0, 0.3, n)
        self.unlogged = rng.uniform(size=n) < self.lost_test_units

    def minute(self) -> None:
        """One minute of traffic under the allocation as stored now."""
        snapshot = self.service.snapshot()
        arms = assign_many(snapshot, self.units, "879")
        self.arms_seen.append(arms)
        names = snapshot.get("879").arms
        n = self.rng.poisson(self.rate)
        idx = np.repeat(np.arange(self.n_units), n)
        k = idx.size
        arm_idx = arms[idx]
        is_test = np.array([a >= 0 and names[a] == "test" for a in arm_idx.tolist()], dtype=bool)
        clicks = self.rng.uniform(size=k) < self.ctr[idx]
        revenue = clicks * self.cpc[idx] * np.where(is_test, 1.0 - self.harm, 1.0)
        ts = self.clock[0] + pd.to_timedelta(self.rng.uniform(0, 59.9, k), unit="s")
        ids = np.arange(self._next_id, self._next_id + k, dtype=np.int64)
        self._next_id += k
        requests = pd.DataFrame(
            {
                "ts": pd.DatetimeIndex(ts).tz_convert(None),
                "request_id": ids,
                "unit_id": self.units[idx],
                "country": "US",
                "platform": "ios",
                "ad_type": "feed",
                "model_id": "ctr_v41",
                "model_version": "1",
                "prediction": 0.2,
                "fallback": False,
                "label": clicks.astype(np.int64),
                "revenue": revenue,
                "latency_ms": 40.0,
                "error": False,
            }
        )
        logged = (arm_idx >= 0) & ~(is_test & self.unlogged[idx])
        exposures = pd.DataFrame(
            {
                "ts": requests["ts"][logged],
                "request_id": ids[logged],
                "unit_id": self.units[idx][logged],
                "experiment_id": "879",
                "arm": [names[a] for a in arm_idx[logged].tolist()],
            }
        )
        with self.engine.begin() as conn:
            raw: Any = conn.connection.driver_connection
            raw.register("batch_r", requests)
            raw.register("batch_e", exposures)
            raw.execute("INSERT INTO requests SELECT * FROM batch_r")
            raw.execute("INSERT INTO exposures SELECT * FROM batch_e")
            raw.unregister("batch_r")
            raw.unregister("batch_e")
        self.clock[0] += timedelta(minutes=1)

    def run(self, minutes: int, until: Any = None) -> None:
        """Simulate ``minutes`` minutes, ticking the controller every few minutes."""
        for m in range(1, minutes + 1):
            self.minute()
            if m % TICK_EVERY == 0:
                self.decisions += self.controller.tick(self.clock[0])
                if until is not None and until(self):
                    return

    def status(self) -> str:
        v = self.service.get("879")
        return f"{v.status}({v.stage})" if v.status == "ramping" else v.status


def _schema(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE requests (ts TIMESTAMP, request_id BIGINT, unit_id BIGINT,"
                " country VARCHAR, platform VARCHAR, ad_type VARCHAR, model_id VARCHAR,"
                " model_version VARCHAR, prediction DOUBLE, fallback BOOLEAN, label BIGINT,"
                " revenue DOUBLE, latency_ms DOUBLE, error BOOLEAN)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE exposures (ts TIMESTAMP, request_id BIGINT, unit_id BIGINT,"
                " experiment_id VARCHAR, arm VARCHAR)"
            )
        )


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Any]:
    made: list[World] = []

    def make(**kw: Any) -> World:
        rollout = kw.pop("rollout", {})
        sub = tmp_path / f"w{len(made)}"
        sub.mkdir()
        url = f"duckdb:///{sub / 'telemetry.duckdb'}"
        engine = sa.create_engine(url)
        _schema(engine)
        clock = [T0]
        state_url = f"sqlite:///{sub / 'state.db'}"
        service = ExperimentService(state_url, clock=lambda: clock[0])
        service.create(parse_experiment_file(_file(**rollout)), "alice", start=True, reason="go")
        controller = RolloutController(state_url, UnitStatsReader(engine), gate=GATE)
        world = World(engine, url, service, controller, clock, state_url, **kw)
        made.append(world)
        return world

    yield make
    for w in made:
        w.controller.close()
        w.service.close()
        w.engine.dispose()


def _gate_rows(service: ExperimentService) -> list[Any]:
    return [e for e in service.audit(experiment_id="879") if e.actor == ACTOR]


def test_healthy_candidate_ramps_stage_by_stage_and_every_step_is_audited(make_world: Any) -> None:
    w = make_world()
    w.run(3 * STAGE_MINUTES + 40, until=lambda w: w.status() == "running")
    assert w.status() == "running"
    moves = [d for d in w.decisions if d.action != "hold"]
    assert [(d.before, d.after) for d in moves] == [
        ("ramping(0)", "ramping(1)"),
        ("ramping(1)", "ramping(2)"),
        ("ramping(2)", "running"),
    ]
    # Each stage ran its minimum time, counted from its own start.
    starts = [T0] + [d.at for d in moves]
    assert all(b - a >= timedelta(minutes=STAGE_MINUTES) for a, b in itertools.pairwise(starts))
    rows = _gate_rows(w.service)
    assert [r.action for r in rows] == ["advance"] * 3
    for row in rows:
        gate = row.after["gate"]
        assert gate["decision"] == "advance"
        (revenue,) = gate["guardrails"]
        assert revenue["verdict"] == "safe" and revenue["ci_low"] > -0.3
        assert gate["srm"]["verdict"] == "ok"
    # The telemetry follows the decisions: more of the units are exposed at each stage.
    with w.engine.connect() as conn:
        per_stage = []
        for a, b in itertools.pairwise(starts):
            units = conn.execute(
                sa.text("SELECT count(DISTINCT unit_id) FROM exposures WHERE ts >= :a AND ts < :b"),
                {"a": a.replace(tzinfo=None), "b": b.replace(tzinfo=None)},
            ).scalar()
            per_stage.append(int(units or 0) / ((b - a) / timedelta(minutes=1)))
    assert per_stage[0] < per_stage[1] < per_stage[2]


def test_a_unit_in_test_never_leaves_test_when_the_gate_advances(make_world: Any) -> None:
    w = make_world()
    w.run(3 * STAGE_MINUTES + 40, until=lambda w: w.status() == "running")
    assert w.status() == "running"
    test_idx = 1  # arms in configuration order: control, test
    seen = np.stack(w.arms_seen)
    for earlier, later in itertools.pairwise(seen):
        was_test = earlier == test_idx
        assert np.all(later[was_test] == test_idx)
    assert (seen[-1] == test_idx).sum() > 5 * (seen[0] == test_idx).sum()


def test_stage_data_and_time_count_from_the_stage_start(make_world: Any) -> None:
    w = make_world()
    w.run(3 * STAGE_MINUTES, until=lambda w: w.status() == "ramping(1)")
    assert w.status() == "ramping(1)"
    (look,) = w.controller.evaluate(w.clock[0])
    assert look.report.decision == "hold"
    assert look.report.elapsed_minutes == 0.0
    assert sum(look.stats.units.values()) == 0  # nothing of stage 0 is carried over
    w.run(2)
    (look,) = w.controller.evaluate(w.clock[0])
    assert sum(look.stats.units.values()) > 0
    assert look.report.elapsed_minutes == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("on_harm", "status"),
    [("ramp_down", "paused"), ("kill", "killed"), ("pause_and_alert", "ramping(0)")],
)
def test_a_harmful_candidate_is_stopped_at_the_first_stage_as_the_plan_says(
    make_world: Any, on_harm: str, status: str
) -> None:
    w = make_world(harm=0.5, rollout={"on_harm": on_harm})
    w.run(STAGE_MINUTES + 10)
    assert w.status() == status
    assert all(d.decision != "advance" for d in w.decisions)
    first = next(d for d in w.decisions if d.decision == "rollback")
    assert first.stage == 0
    assert any("revenue_per_request" in r and "harm" in r for r in first.reasons)
    rows = _gate_rows(w.service)
    expected = {"ramp_down": "rollback", "kill": "kill", "pause_and_alert": "note"}[on_harm]
    assert [r.action for r in rows][:1] == [expected]
    assert "revenue_per_request" in (rows[0].reason + str(rows[0].after))
    alerts = [d.alert for d in w.decisions if d.alert is not None]
    if on_harm == "pause_and_alert":
        # One alert for the stage, however many ticks keep failing; it opens an investigation.
        assert len(alerts) == 1 and alerts[0].metric == "revenue"
        ledger = AlertLedger(w.state_url)
        try:
            (record,) = ledger.open_alerts(ALERT_SOURCE)
            assert record.experiment_id == "879"
        finally:
            ledger.close()
        assert len(rows) == 1
    else:
        assert alerts == []


def test_an_exposure_logging_bug_is_caught_as_srm_before_ten_percent(make_world: Any) -> None:
    # 2,000 units at the first stage: enough for the always-valid SRM test to reject at 0.001.
    w = make_world(lost_test_units=0.3, n_units=20_000, rollout={"on_harm": "ramp_down"})
    w.run(STAGE_MINUTES + 10)
    first = next(d for d in w.decisions if d.decision == "rollback")
    assert first.stage == 0 and first.report.srm is not None
    assert first.report.srm.verdict == "fail"
    assert w.status() == "paused"


def test_a_kill_switch_during_a_ramp_wins_over_the_controller(make_world: Any) -> None:
    w = make_world()
    w.run(STAGE_MINUTES + TICK_EVERY, until=lambda w: w.status() == "ramping(1)")
    assert w.status() == "ramping(1)"
    w.service.kill("ranking", "bob", "layer incident", scope="layer")
    n = len(w.decisions)
    w.run(2 * STAGE_MINUTES + 20)
    after = w.decisions[n:]
    assert after and all(d.action == "skipped" for d in after)
    assert w.status() == "ramping(1)"  # the controller never advanced it
    assert [r.action for r in _gate_rows(w.service)] == ["advance"]
    # Nobody is exposed while the layer is killed.
    assert all((arms < 0).all() for arms in w.arms_seen[-2 * STAGE_MINUTES :])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stages": [{"percent": 50}, {"percent": 20}]}, "rollout.stages[1].percent"),
        ({"on_harm": "explode"}, "rollout.on_harm"),
    ],
)
def test_bad_plans_are_rejected_at_load_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    data = _file(**change)
    with pytest.raises(ConfigError) as err:
        parse_experiment_file(data)
    assert err.value.field == f"experiments[0].{field}"


def test_an_unknown_guardrail_is_rejected_at_load_naming_the_field() -> None:
    data = _file()
    data["experiments"][0]["guardrails"] = [{"metric": "revenue"}]
    with pytest.raises(ConfigError) as err:
        parse_experiment_file(data)
    assert err.value.field == "experiments[0].guardrails[0].metric"


def test_the_default_plan_is_pause_and_alert() -> None:
    exp = parse_experiment_file(_file()).experiments[0]
    assert exp.rollout.on_harm == "pause_and_alert"


def test_the_serve_loop_round_ticks_and_hands_over_the_alerts(make_world: Any) -> None:
    w = make_world(harm=0.5)
    for _ in range(STAGE_MINUTES):
        w.minute()
    round_ = rollout_round(w.controller, lambda: w.clock[0])
    (spec,) = round_()
    assert spec.experiment_id == "879" and spec.metric == "revenue"
    assert round_() == []  # open already: no second investigation for the same stage
    # Without a clock the round runs on the telemetry clock (its newest request).
    assert rollout_round(w.controller)() == []
    assert w.controller.now() > w.clock[0] - timedelta(minutes=1)


def test_cli_status_shows_the_gate_and_tick_acts_on_it(
    make_world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make_world()
    # The CLI's controller has the default gate (tightest at 10,000 units): run until it passes.
    default = RolloutController(w.state_url, UnitStatsReader(w.engine))
    for _ in range(STAGE_MINUTES + 90):
        w.minute()
        if (
            w.clock[0].minute % 5 == 0
            and default.evaluate(w.clock[0])[0].report.decision == "advance"
        ):
            break
    default.close()
    monkeypatch.setenv("VIGIL_STATE_URL", w.state_url)
    monkeypatch.setenv("VIGIL_TELEMETRY_URL", w.url)
    monkeypatch.setenv("COLUMNS", "200")
    app = typer.Typer()
    core.register(app)
    runner = CliRunner()
    at = w.clock[0].strftime("%Y-%m-%dT%H:%M:%S")
    status = runner.invoke(app, ["rollout", "status", "879", "--json", "--at", at])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.output)
    assert shown["status"] == "ramping" and shown["on_harm"] == "pause_and_alert"
    gate = shown["gate"]
    assert gate["elapsed_minutes"] >= STAGE_MINUTES
    (revenue,) = gate["guardrails"]
    assert revenue["metric"] == "revenue_per_request" and revenue["ci_low"] is not None
    text = runner.invoke(app, ["rollout", "status", "879", "--at", at])
    assert "next decision:" in text.output and "always-valid interval" in text.output
    tick = runner.invoke(app, ["rollout", "tick", "--json", "--at", at])
    assert tick.exit_code == 0, tick.output
    (decision,) = json.loads(tick.output)
    assert decision["decision"] == gate["decision"] == "advance"
    assert w.status() == "ramping(1)"
    assert _gate_rows(w.service)[-1].action == "advance"
