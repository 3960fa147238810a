"""The agent's CLI: investigate (scenario and alert files), approve, reject, list, report, demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import _register_all, app
from evals.demo import run_demo

SMALL = {
    "name": "cli-fallback",
    "description": "The test arm of 879 falls back for 40% of its requests.",
    "seed": 2,
    "world": {
        "start": "2026-11-20T06:00:00Z",
        "minutes": 130,
        "requests_per_minute": 1200,
        "models": [{"id": "ctr_v41", "quality": 0.75}, {"id": "ctr_v42", "quality": 0.77}],
        "production_model": "ctr_v41",
        "experiments": [
            {
                "id": "879",
                "name": "Ranking Model Improvements",
                "owner": "alice",
                "layer": "ranking",
                "traffic_pct": 30,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
            },
            {
                "id": "884",
                "name": "Ad Load",
                "owner": "erin",
                "layer": "ad_load",
                "traffic_pct": 30,
                "arms": {"control": {"ad_load": 1.0}, "test": {"ad_load": 1.02}},
            },
        ],
    },
    "faults": [
        {"kind": "model_fallback", "experiment": "879", "start_minute": 100, "severity": 0.4}
    ],
    "alert": {"metric": "revenue", "minute": 112, "experiment": "879"},
    "expect": {
        "root_cause": "model_fallback",
        "experiment": "879",
        "mitigation": "kill_experiment",
    },
}


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    _register_all()
    return CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("VIGIL_LLM_BASE_URL", "VIGIL_LLM_MODEL", "VIGIL_SLACK_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIGIL_ONCALL", '["carol"]')
    return tmp_path


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("{not json", "--alert"),
        ({"metric": "revenue"}, "fired_at"),
        ({"metric": "profit", "fired_at": "2026-11-20T08:00:00Z"}, "metric"),
        ({"metric": "revenue", "fired_at": "2026-11-20T08:00:00Z", "colour": "red"}, "colour"),
        (
            {
                "version": "4",
                "status": "firing",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {"alertname": "RevenueDrop"},
                        "startsAt": "2026-11-20T08:00:00Z",
                        "fingerprint": "abc",
                    }
                ],
            },
            "alerts[0].labels.metric",
        ),
        ({"version": "4", "status": "firing", "alerts": [{"status": "firing"}]}, "alerts.0.labels"),
    ],
)
def test_malformed_alert_is_a_clear_error_with_exit_code_2(cli, workdir, payload, field):
    path = workdir / "alert.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    result = cli.invoke(app, ["investigate", "--alert", str(path)])
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert not (workdir / ".vigil" / "reports").exists()


def test_investigate_needs_exactly_one_source(cli, workdir):
    result = cli.invoke(app, ["investigate"])
    assert result.exit_code == 2 and "--scenario/--alert" in result.output


def test_scenario_investigation_then_approval_from_another_process(cli, workdir):
    scenario = _write(workdir / "s.yaml", SMALL)
    out = workdir / "out.json"
    result = cli.invoke(app, ["investigate", "--scenario", str(scenario), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "Issue identified with increased model fallback" in result.output
    summary = json.loads(out.read_text())
    assert set(summary) == {
        "id",
        "status",
        "onset",
        "root_causes",
        "mitigations",
        "report_path",
        "next_followup_at",
        "followups",
        "joined_alerts",
    }
    assert summary["status"] == "awaiting_approval"
    assert summary["root_causes"][0] == {
        "cause": "model_fallback",
        "experiment": "879",
        "confidence": summary["root_causes"][0]["confidence"],
        "evidence": ["fallback"],
    }
    [mitigation] = summary["mitigations"]
    assert (mitigation["action"], mitigation["target"], mitigation["status"]) == (
        "kill_experiment",
        "879",
        "proposed",
    )
    assert Path(summary["report_path"]).exists()

    # The scenario's world has stores of its own; the default store holds no experiment.
    assert (workdir / ".vigil" / "worlds" / "cli-fallback" / "state.db").exists()
    world = ["--world", "cli-fallback"]
    refused = cli.invoke(app, ["approve", mitigation["id"], "--as", "mallory", *world])
    assert refused.exit_code == 1 and "mallory" in refused.output
    approved = cli.invoke(app, ["approve", mitigation["id"], "--as", "alice", *world])
    assert approved.exit_code == 0, approved.output
    # A scenario world goes on after the action (30 minutes by default); then it is verified.
    said = " ".join(approved.output.split())  # the console wraps long lines
    assert "simulated 30 minutes of cli-fallback after the action" in said
    assert f"{mitigation['id']}: kill_experiment 879 executed, approved by alice" in said
    assert "verification: recovered — fallback_rate recovered" in said

    listed = cli.invoke(app, ["investigations", "--json", *world])
    assert listed.exit_code == 0
    rows = json.loads(listed.output)
    assert rows[0]["id"] == summary["id"]
    assert rows[0]["status"] == "completed"
    html = cli.invoke(app, ["report", summary["id"], "--html", *world])
    assert html.exit_code == 0 and html.output.startswith("<!DOCTYPE html>")
    # Redirected, the report is its Markdown, not terminal-wrapped text.
    markdown = cli.invoke(app, ["report", summary["id"], *world])
    assert markdown.stdout.startswith("# Vigil investigation")
    assert "**Root cause:**" in markdown.stdout
    # ... and only the Markdown: where it stands goes to standard error.
    assert f"{summary['id']}: completed" not in markdown.stdout
    assert f"{summary['id']}: completed" in markdown.stderr
    again = cli.invoke(app, ["reject", mitigation["id"], "--as", "alice", *world])
    assert again.exit_code == 1 and "cannot reject" in again.output
    unknown = cli.invoke(app, ["approve", mitigation["id"], "--as", "alice", "--world", "nope"])
    assert unknown.exit_code == 2 and "known worlds: cli-fallback" in unknown.output


def test_quiet_keeps_the_ids_and_reject_names_who(cli, workdir):
    scenario = _write(workdir / "s.yaml", dict(SMALL, name="cli-quiet"))
    result = cli.invoke(app, ["investigate", "--scenario", str(scenario), "-q"])
    assert result.exit_code == 0, result.output
    assert "Issue identified" not in result.output  # no report
    [line] = [x for x in result.output.splitlines() if x.strip().startswith("mitigation ")]
    mitigation_id = line.split()[1].rstrip(":")
    assert mitigation_id.startswith("inv-") and "(proposed)" in line
    # The world's monitors look at its own clock (minute 113), not the wall clock.
    watched = cli.invoke(
        app,
        ["monitor", "--once", "--no-investigate", "--world", "cli-quiet"],
        env={"COLUMNS": "250"},
    )
    assert watched.exit_code == 0, watched.output
    said = " ".join(watched.output.split())
    assert "4 monitors at 2026-11-20 07:53 UTC" in said
    assert "regression ≤ 2.0%" in said and "units per arm" in said
    rejected = cli.invoke(app, ["reject", mitigation_id, "--as", "alice", "--world", "cli-quiet"])
    assert rejected.exit_code == 0, rejected.output
    assert "kill_experiment 879 rejected by alice" in rejected.output


def test_a_changed_scenario_is_refused_before_it_is_simulated(cli, workdir):
    scenario = _write(workdir / "s.yaml", dict(SMALL, name="cli-changed"))
    assert cli.invoke(app, ["investigate", "--scenario", str(scenario), "-q"]).exit_code == 0
    telemetry = workdir / ".vigil" / "worlds" / "cli-changed" / "telemetry.duckdb"
    written = telemetry.stat().st_mtime_ns
    changed = json.loads(json.dumps(SMALL))
    changed["name"] = "cli-changed"
    changed["world"]["experiments"][0]["traffic_pct"] = 20
    _write(scenario, changed)
    refused = cli.invoke(app, ["investigate", "--scenario", str(scenario), "-q"])
    assert refused.exit_code == 2
    assert "world.experiments[0].id" in refused.output and "--fresh" in refused.output
    assert telemetry.stat().st_mtime_ns == written  # detected before simulating
    fresh = cli.invoke(app, ["investigate", "--scenario", str(scenario), "-q", "--fresh"])
    assert fresh.exit_code == 0, fresh.output


def test_demo_runs_the_whole_loop(workdir):
    demo = dict(SMALL, name="cli-demo")
    path = _write(workdir / "demo.yaml", demo)
    result = run_demo(workdir / ".vigil" / "demo", path, echo=False)
    assert result["top_cause"] == "model_fallback"
    assert result["action"] == "kill_experiment"
    assert result["is_enabled_after"] is False
    assert result["recovered"] is True and result["status"] == "verified"
    assert result["audit_actions"].count("kill") == 1
    assert Path(result["report_path"]).exists()


SUITE = Path(__file__).parents[3] / "evals" / "scenarios"


def test_rollback_of_the_production_model_executes_and_verifies(cli, workdir):
    from agent.settings import get_settings
    from evals.cli import world_settings
    from lifecycle.service import ExperimentService

    scenario = SUITE / "prod-collapse-constant.yaml"  # the suite's: expects rollback_model
    out = workdir / "out.json"
    result = cli.invoke(app, ["investigate", "--scenario", str(scenario), "--json", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["root_causes"][0]["cause"] == "prediction_collapse"
    [mitigation] = summary["mitigations"]
    assert (mitigation["action"], mitigation["target"]) == ("rollback_model", "ctr_v41")

    # The registry holds the versions the world published by the alert, the newest serving.
    settings = world_settings("prod-collapse-constant", get_settings())
    with ExperimentService.from_settings(settings) as service:
        versions = [(m.version, m.serving) for m in service.models() if m.id == "ctr_v41"]
    assert versions == [("261120.0600", False), ("261120.0700", False), ("261120.0800", True)]

    world = ["--world", "prod-collapse-constant"]
    approved = cli.invoke(
        app, ["approve", mitigation["id"], "--as", "carol", "--after", "25", *world]
    )
    assert approved.exit_code == 0, approved.output
    said = " ".join(approved.output.split())  # the console wraps long lines
    assert "simulated 25 minutes of prod-collapse-constant after the action" in said
    assert "rollback_model ctr_v41 executed, approved by carol" in said
    assert "verification: recovered" in said
    with ExperimentService.from_settings(settings) as service:
        serving = [m.version for m in service.models() if m.id == "ctr_v41" and m.serving]
        rollbacks = [e for e in service.audit() if e.action == "rollback_model"]
    assert serving == ["261120.0700"]  # the version before the faulty one serves again
    assert [(e.target, e.actor) for e in rollbacks] == [("ctr_v41", "carol")]
    assert mitigation["id"] in rollbacks[0].reason

    again = cli.invoke(app, ["approve", mitigation["id"], "--as", "carol", *world])
    assert again.exit_code == 0 and "executed" in again.output
    assert "nothing was done again" in again.output and "simulated" not in again.output
    with ExperimentService.from_settings(settings) as service:
        assert len([e for e in service.audit() if e.action == "rollback_model"]) == 1


def test_approve_exits_0_when_executed_and_says_verification_is_pending(cli, workdir):
    scenario = _write(workdir / "s.yaml", dict(SMALL, name="cli-pending"))
    out = workdir / "out.json"
    result = cli.invoke(app, ["investigate", "--scenario", str(scenario), "-q", "--json", str(out)])
    assert result.exit_code == 0, result.output
    [mitigation] = json.loads(out.read_text())["mitigations"]
    # No minutes simulated after the action: there is nothing yet to verify against.
    world = ["--world", "cli-pending", "--after", "0"]
    approved = cli.invoke(app, ["approve", mitigation["id"], "--as", "alice", *world])
    assert approved.exit_code == 0, approved.output
    said = " ".join(approved.output.split())
    assert "kill_experiment 879 executed, approved by alice" in said
    assert "verification pending:" in said
    assert "simulated" not in said
