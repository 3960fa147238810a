"""The experiment core's commands, run through Typer against a temporary state store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from agent.cli import core
from tests.lifecycle.conftest import world

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "experiments.yaml"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("VIGIL_ACTOR", "tester")
    monkeypatch.setenv("COLUMNS", "200")
    app = typer.Typer()
    core.register(app)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_the_example_file_validates_and_creates(cli: Callable[..., str]) -> None:
    assert "valid" in cli("experiments", "validate", "-f", str(EXAMPLE))
    assert "879, 880, 901, 902" in cli("experiments", "create", "-f", str(EXAMPLE), "--start")
    listed = json.loads(cli("experiments", "list", "--json"))
    assert [(e["id"], e["status"]) for e in listed] == [
        ("879", "ramping"),
        ("880", "ramping"),
        ("901", "ramping"),
        ("902", "ramping"),
    ]
    shown = cli("experiments", "show", "902")
    assert "sparse" in shown and "native" in shown
    # Creating it again is refused, naming the field and the value; nothing changes.
    out = cli("experiments", "create", "-f", str(EXAMPLE), code=2)
    assert "experiments[0].id" in out and "'879'" in out


def test_validate_reports_every_problem(cli: Callable[..., str], tmp_path: Path) -> None:
    data = world()
    data["experiments"][0]["arms"]["test"]["model"] = "ctr_v99"
    data["experiments"][1]["targeting"] = {"country": ["XX"]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = cli("experiments", "validate", "-f", str(path), code=2)
    assert "experiments[0].arms.test.model" in out and "'ctr_v99'" in out
    assert "experiments[1].targeting.country[0]" in out and "'XX'" in out
    data["experiments"][1]["arms"]["test"]["weight"] = -1
    path.write_text(yaml.safe_dump(data))
    out = cli("experiments", "validate", "-f", str(path), code=2)
    assert "experiments[1].arms.test.weight" in out and "-1" in out


def test_kill_release_rollout_and_audit(cli: Callable[..., str], tmp_path: Path) -> None:
    cli("experiments", "create", "-f", str(EXAMPLE), "--start")
    assert "killed experiment 879" in cli("kill", "879", "--reason", "fallback spike")
    assert "already killed" in cli("kill", "879", "--reason", "again")
    assert "refused" in cli("kill", "nope", "--reason", "x", code=1)
    assert "invalid" in cli("kill", "879", "--reason", "x", "--scope", "planet", code=2)
    assert "killed everything" in cli("kill", "--scope", "global", "--reason", "stop")
    assert "released everything" in cli("release", "--scope", "global", "--reason", "ok")
    assert "released experiment 879" in cli("release", "879", "--reason", "fixed")
    status = json.loads(cli("rollout", "status", "879", "--json"))
    assert (status["status"], status["prior"]) == ("paused", "ramping")
    cli("rollout", "resume", "879", "--reason", "go")
    stats = tmp_path / "stats.yaml"
    stats.write_text(
        yaml.safe_dump(
            {
                "units": {"control": 5000, "test": 5600},
                "metrics": {
                    "revenue_per_request": {
                        "control": {"n": 100000, "mean": 0.05, "var": 0.01},
                        "test": {"n": 100000, "mean": 0.05, "var": 0.01},
                    }
                },
            }
        )
    )
    out = cli("rollout", "advance", "879", "--stats", str(stats))
    assert "rollback: ramping(0) → paused" in out and "sample ratio mismatch" in out
    stats.write_text(yaml.safe_dump({"units": {"control": -1}}))
    assert "stats.units.control" in cli("rollout", "advance", "880", "--stats", str(stats), code=2)
    assert "forced: ramping(0) → ramping(1)" in cli(
        "rollout", "advance", "880", "--force", "--reason", "owner sign-off"
    )
    assert "cannot advance from paused" in cli("rollout", "advance", "879", code=1)
    entries = json.loads(cli("audit", "--experiment", "879", "--json"))
    # The global kill stopped 879 too, so its audit trail shows it.
    assert [(e["action"], e["target"]) for e in entries] == [
        ("create", None),
        ("submit", None),
        ("start", None),
        ("kill", "experiment:879"),
        ("kill", "global:*"),
        ("release", "global:*"),
        ("release", "experiment:879"),
        ("resume", None),
        ("rollback", None),
    ]
    assert entries[3]["actor"] == "tester" and entries[3]["reason"] == "fallback spike"
    table = cli("audit", "-n", "3")
    assert "advance_forced" in table and "owner sign-off" in table
    assert "ctr_v41" in cli("models", "list")
    assert "no earlier active version" in cli(
        "models", "rollback", "ctr_v41", "--reason", "x", code=1
    )
