"""``VIGIL_HOME`` moves every default path: with it set, the commands write nothing in ``./.vigil``.

The commands a new user runs first (sim, experiments, investigate, approve-ready worlds, the demo,
reports, config) run in one working directory with ``VIGIL_HOME`` pointing elsewhere; every store,
report and world must land under ``VIGIL_HOME`` and the working directory must stay clean.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import _register_all, app
from agent.settings import Settings
from tests.evals.sim_worlds import fallback_world

ROOT = Path(__file__).resolve().parents[1]

FALLBACK = fallback_world("home-test", rpm=1500)


def test_defaults_follow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("VIGIL_STATE_URL", "sqlite:///elsewhere.db")
    settings = Settings()
    home = tmp_path / "h"
    assert settings.telemetry_url == f"duckdb:///{home / 'telemetry.duckdb'}"
    assert settings.checkpoint_url == str(home / "checkpoints.db")
    assert settings.reports_dir == home / "reports"
    assert settings.state_url == "sqlite:///elsewhere.db"  # set explicitly: kept
    monkeypatch.delenv("VIGIL_HOME")
    assert Settings().telemetry_url == "duckdb:///.vigil/telemetry.duckdb"


def test_commands_write_nothing_under_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"VIGIL_{name.upper()}", raising=False)
    monkeypatch.setenv("VIGIL_HOME", str(home))
    monkeypatch.setenv("VIGIL_ACTOR", "tester")
    monkeypatch.setenv("COLUMNS", "200")
    scenario = tmp_path / "world.yaml"
    scenario.write_text(yaml.safe_dump(FALLBACK))
    _register_all()
    cli = CliRunner()

    def run(*args: str, codes: tuple[int, ...] = (0,)) -> str:
        result = cli.invoke(app, list(args))
        assert result.exit_code in codes, (args, result.output, result.exception)
        return result.output

    shown = json.loads(run("config", "show", "--json"))
    assert all(str(home) in shown[k] for k in ("state_url", "telemetry_url", "checkpoint_url"))
    run("sim", str(scenario))
    run("experiments", "apply", "--file", str(ROOT / "examples" / "experiments.yaml"))
    run("investigate", "--scenario", str(scenario), "--quiet", codes=(0, 3))
    run("investigations", "--world", FALLBACK["name"])
    run("demo", "--scenario", str(scenario), codes=(0, 1))
    run("doctor", codes=(0, 1))

    assert sorted(p.name for p in work.iterdir()) == []  # no ./.vigil, nothing else
    assert (home / "telemetry.duckdb").exists() and (home / "state.db").exists()
    assert (home / "worlds" / FALLBACK["name"]).is_dir() and (home / "demo").is_dir()
    reports = list(home.rglob("reports/*"))
    assert reports, "an investigation wrote its report under VIGIL_HOME"
