"""Shadow mode in the simulated world goes through lifecycle's own functions (issue 18).

A fixed-traffic world: allocation (``assign_many``) puts nobody in a shadow experiment, the
exposures say so, and the shadow log's arms are exactly ``lifecycle.shadow.shadow_many``'s, one
sample per candidate arm. A controller-driven world: the shadow run is logged while the world
runs, the real rollout controller judges each arm and pauses a broken candidate before anyone is
served it; ``vigil eval``'s rollout scoring reads that outcome.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from evals.rollout_scoring import score_rollout
from evals.sim import minute_to_ts, parse_scenario, simulate
from evals.sim.bridge import world_snapshot
from evals.sim.ramp import simulate_ramp
from evals.sim.scenario import RampExpect
from lifecycle.inference import ShadowLog
from lifecycle.service import ExperimentService
from lifecycle.shadow import shadow_many

ARMS = {
    "control": {"model": "ctr_v41"},
    "test": {"model": "ctr_v42"},
    "test2": {"model": "ctr_v45"},
}
MODELS = [
    {"id": "ctr_v41", "quality": 0.75},
    {"id": "ctr_v42", "quality": 0.76},
    {"id": "ctr_v45", "quality": 0.2},  # broken: far noisier than production
]


def _world(minutes: int, rpm: int, experiment: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "shadow-test",
        "seed": 9,
        "world": {
            "start": "2026-11-20T06:00:00Z",
            "minutes": minutes,
            "requests_per_minute": rpm,
            "models": MODELS,
            "production_model": "ctr_v41",
            "experiments": [
                {"id": "88", "name": "candidates", "layer": "ranking", "shadow": True, **experiment}
            ],
        },
        "alert": {"metric": "revenue", "minute": minutes - 1},
        "expect": {"root_cause": "none", "mitigation": "none"},
    }


def _read(url: str, sql: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(sql))
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    finally:
        engine.dispose()


def test_the_simulator_serves_nobody_the_shadow_and_logs_the_arms_lifecycle_draws(
    tmp_path: Path,
) -> None:
    scenario = parse_scenario(_world(8, 1500, {"traffic_pct": 60, "arms": ARMS}))
    url = f"duckdb:///{tmp_path / 't.duckdb'}"
    simulate(scenario, url)
    # Nobody is in a shadow experiment: no exposure is logged for it, so its SRM starts clean.
    assert _read(url, "SELECT count(*) AS n FROM exposures WHERE experiment_id = '88'")["n"][0] == 0
    requests = _read(url, "SELECT request_id, unit_id, model_id, fallback FROM requests")
    snapshot = world_snapshot(scenario)
    names = snapshot.get("88").arms
    drawn = shadow_many(snapshot, requests["unit_id"].to_numpy(dtype=np.int64), "88")
    scored = requests[drawn >= 0]
    assert len(scored) > 1000
    # The units that draw a candidate are served production (control's model), not the candidate.
    assert set(scored.loc[~scored["fallback"].astype(bool), "model_id"]) == {"ctr_v41"}
    # The shadow log's arm for each request is lifecycle's shadow_many for its unit.
    expected = {
        int(r): names[int(a)] for r, a in zip(requests["request_id"], drawn, strict=True) if a >= 0
    }
    shadow = _read(url, "SELECT request_id, arm, model_id FROM shadow_predictions")
    assert dict(zip(shadow["request_id"].astype(int), shadow["arm"], strict=True)) == expected
    assert set(zip(shadow["arm"], shadow["model_id"], strict=True)) == {
        ("test", "ctr_v42"),
        ("test2", "ctr_v45"),
    }
    # Read back one sample per candidate arm, so each is judged on its own.
    samples = ShadowLog(url).shadow_samples(
        "88", minute_to_ts(scenario, 0), minute_to_ts(scenario, 8)
    )
    assert [(s.arm, len(s.labels)) for s in samples] == [
        (arm, int((shadow["arm"] == arm).sum())) for arm in ("test", "test2")
    ]


def test_the_controller_pauses_a_broken_arm_in_shadow_before_anyone_is_served(
    tmp_path: Path,
) -> None:
    stages = [{"percent": 10, "min_minutes": 5}, {"percent": 100, "min_minutes": 5}]
    rollout = {"stages": stages, "tick_minutes": 5, "guardrails": [{"metric": "srm"}]}
    scenario = parse_scenario(_world(70, 700, {"rollout": rollout, "arms": ARMS}))
    telemetry = f"duckdb:///{tmp_path / 't.duckdb'}"
    state = f"sqlite:///{tmp_path / 's.db'}"
    summary = simulate_ramp(scenario, telemetry, state)
    out = summary.outcomes["88"]
    # The shadow run was logged while the world ran and judged at its 60th minute.
    assert (out.shadow, out.shadow_minute, out.final_state) == ("failed", 60, "paused")
    assert out.shadow_summary is not None and "failed in arm test2" in out.shadow_summary
    assert out.max_coverage_pct == 0.0 and out.exposure_traffic_minutes == 0.0
    with ExperimentService(state) as service:
        (pause,) = [e for e in service.audit(experiment_id="88") if e.action == "pause"]
    assert pause.actor == "rollout-gate" and "arm test2" in pause.reason
    arms = _read(telemetry, "SELECT DISTINCT arm FROM exposures WHERE experiment_id = '88'")
    assert arms.empty  # nobody was ever in it
    logged = _read(telemetry, "SELECT arm, max(ts) AS last FROM shadow_predictions GROUP BY arm")
    assert set(logged["arm"]) == {"test", "test2"}
    assert (pd.to_datetime(logged["last"]) < minute_to_ts(scenario, 60)).all()  # paused: none since
    scored = score_rollout(
        {"experiment_id": "88", **asdict(out)},
        RampExpect(experiment="88", rolled_back=True, shadow="failed"),
    )
    assert scored.passed and scored.shadow == "failed"
    wrong = score_rollout(
        {"experiment_id": "88", **asdict(out)},
        RampExpect(experiment="88", rolled_back=False, shadow="passed"),
    )
    assert not wrong.passed and any("shadow run failed" in w for w in wrong.why)


def test_the_shadow_log_is_written_a_slice_at_a_time_without_losing_or_repeating_a_request(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from datetime import timedelta

    import evals.sim.shadow as shadow_log

    monkeypatch.setattr(shadow_log, "SHADOW_CHUNK", timedelta(minutes=3))  # 8 minutes: 3 slices
    scenario = parse_scenario(_world(8, 400, {"traffic_pct": 60, "arms": ARMS}))
    url = f"duckdb:///{tmp_path / 't.duckdb'}"
    simulate(scenario, url)
    requests = _read(url, "SELECT request_id, unit_id FROM requests")
    drawn = shadow_many(world_snapshot(scenario), requests["unit_id"].to_numpy(np.int64), "88")
    shadow = _read(url, "SELECT request_id FROM shadow_predictions")
    assert shadow["request_id"].is_unique
    assert sorted(shadow["request_id"].astype(int)) == sorted(
        requests.loc[drawn >= 0, "request_id"].astype(int)
    )
