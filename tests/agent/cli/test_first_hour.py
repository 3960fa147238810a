"""A new user's first hour: nothing fails silently, errors name the field, outputs are usable.

Each test is one thing a user relies on: ``vigil sim`` twice does not double the telemetry, an
empty ``--json`` file is blamed as such, a misspelled ``VIGIL_*`` variable is warned about, every
validation problem is shown with the nearest valid key, ``apply`` is idempotent, ``audit`` shows
the kills that stopped an experiment, and the product's CLI imports no ``evals``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import ENTRY_POINT_GROUP, _register_all, app
from agent.settings import unknown_env_settings

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "experiments.yaml"

TINY = {
    "name": "tiny",
    "seed": 1,
    "world": {
        "start": "2026-11-20T06:00:00Z",
        "minutes": 20,
        "requests_per_minute": 200,
        "models": [{"id": "m1", "quality": 0.7}, {"id": "m2", "quality": 0.7}],
        "production_model": "m1",
        "experiments": [
            {
                "id": "5",
                "name": "E",
                "layer": "ranking",
                "traffic_pct": 50,
                "arms": {"control": {"model": "m1"}, "test": {"model": "m2"}},
            }
        ],
    },
    "alert": {"metric": "revenue", "minute": 15, "experiment": "5"},
    "expect": {"root_cause": "none"},
}


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    _register_all()
    return CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("VIGIL_ACTOR", "tester")
    return tmp_path


def _requests(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as conn:
        row = conn.execute("SELECT count(*) FROM requests").fetchone()
    assert row is not None
    return int(row[0])


def test_sim_twice_refuses_instead_of_doubling_the_telemetry(cli: CliRunner, home: Path) -> None:
    scenario = home / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(TINY))
    db = home / "t.duckdb"
    url = f"duckdb:///{db}"
    first = cli.invoke(app, ["sim", str(scenario), "--db", url])
    assert first.exit_code == 0, first.output
    once = _requests(db)
    assert once > 0

    again = cli.invoke(app, ["sim", str(scenario), "--db", url])
    assert again.exit_code == 1
    assert "--replace" in again.output and "--append" in again.output
    assert _requests(db) == once  # nothing was added

    replaced = cli.invoke(app, ["sim", str(scenario), "--db", url, "--replace"])
    assert replaced.exit_code == 0, replaced.output
    assert _requests(db) == once
    appended = cli.invoke(app, ["sim", str(scenario), "--db", url, "--append"])
    assert appended.exit_code == 0, appended.output
    assert _requests(db) == 2 * once  # asked for explicitly


def test_sim_errors_list_every_problem_with_the_nearest_key(cli: CliRunner, home: Path) -> None:
    bad = json.loads(json.dumps(TINY))
    exp = bad["world"]["experiments"][0]
    exp["trafic_pct"] = exp.pop("traffic_pct")
    exp["arms"]["test"] = {"modle": "m2"}
    bad["fautls"] = []
    scenario = home / "bad.yaml"
    scenario.write_text(yaml.safe_dump(bad))
    result = cli.invoke(app, ["sim", str(scenario), "--db", f"duckdb:///{home / 't.duckdb'}"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("invalid:")]
    # traffic_pct is optional now (an experiment may give a rollout plan instead): the misspelt
    # key's own line says what to write.
    assert len(lines) == 3, result.output
    said = "\n".join(lines)
    assert "world.experiments[0].trafic_pct: unknown key; did you mean `traffic_pct`?" in said
    assert "world.experiments[0].arms.test.modle: unknown key; did you mean `model`?" in said
    assert "fautls: unknown key; did you mean `faults`?" in said


def test_bench_blames_an_empty_json_file_not_only(cli: CliRunner, home: Path) -> None:
    empty = home / "bench.json"
    empty.write_text("")
    result = cli.invoke(app, ["bench", "--json", str(empty), "--only", "allocation", "--quick"])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "--json" in said and "bench.json" in said and "empty" in said
    assert "--only" not in said
    assert empty.read_text() == ""  # untouched


def test_a_misspelled_setting_is_warned_about_with_the_nearest_name(
    cli: CliRunner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"VIGIL_TELEMTRY_URL": "duckdb:///x", "VIGIL_STATE_URL": "sqlite://", "PATH": "/bin"}
    assert unknown_env_settings(env) == [("VIGIL_TELEMTRY_URL", "VIGIL_TELEMETRY_URL")]
    monkeypatch.setenv("VIGIL_TELEMTRY_URL", "duckdb:///x")
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{home / 'state.db'}")
    result = cli.invoke(app, ["experiments", "list"])
    assert result.exit_code == 0, result.output
    assert "VIGIL_TELEMTRY_URL" in result.output and "VIGIL_TELEMETRY_URL?" in result.output


def test_validate_shows_every_problem_and_the_effective_split(
    cli: CliRunner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{home / 'state.db'}")
    good = cli.invoke(app, ["experiments", "validate", "-f", str(EXAMPLE)])
    assert good.exit_code == 0, good.output
    assert "902: 20 % of layer ad_load; arms control 50.0%, sparse 25.0%, dense 25.0%" in (
        good.output
    )
    data = yaml.safe_load(EXAMPLE.read_text())
    exp = data["experiments"][0]
    exp["trafic_pct"] = exp.pop("traffic_pct")
    exp["arms"]["test"]["wieght"] = 1
    data["experiments"][1]["arms"]["test"]["weight"] = -1
    bad = home / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = cli.invoke(app, ["experiments", "validate", "-f", str(bad)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("invalid:")]
    assert len(lines) == 4, result.output
    said = "\n".join(lines)
    assert "experiments[0].trafic_pct: unknown key; did you mean `traffic_pct`? (got 10)" in said
    assert "experiments[0].arms.test.wieght: unknown key; did you mean `weight`?" in said
    assert "experiments[0].traffic_pct: a required field is missing" in said
    assert "experiments[1].arms.test.weight" in said and "(got -1)" in said


def test_apply_creates_then_changes_nothing(
    cli: CliRunner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{home / 'state.db'}")
    first = cli.invoke(app, ["experiments", "apply", "-f", str(EXAMPLE), "--start"])
    assert first.exit_code == 0, first.output
    assert "4 experiment(s) started" in first.output
    audit_before = json.loads(cli.invoke(app, ["audit", "--json"]).output)
    second = cli.invoke(app, ["experiments", "apply", "-f", str(EXAMPLE), "--start"])
    assert second.exit_code == 0, second.output
    assert "nothing changed" in second.output
    assert json.loads(cli.invoke(app, ["audit", "--json"]).output) == audit_before

    # Metadata is edited to match the file, audited, and a rerun changes nothing again.
    data = yaml.safe_load(EXAMPLE.read_text())
    first_id = str(data["experiments"][0]["id"])
    data["experiments"][0]["name"] = "Renamed"
    data["experiments"][0]["owner"] = "dana"
    changed = home / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    edited = cli.invoke(app, ["experiments", "apply", "-f", str(changed)])
    assert edited.exit_code == 0, edited.output
    assert f"{first_id} edited" in edited.output and "name, owner" in edited.output
    shown = json.loads(cli.invoke(app, ["experiments", "show", first_id, "--json"]).output)
    assert shown["name"] == "Renamed" and shown["owner"] == "dana"
    trail = json.loads(cli.invoke(app, ["audit", "--json"]).output)
    assert [e["action"] for e in trail[len(audit_before) :]] == ["edit"]
    again = cli.invoke(app, ["experiments", "apply", "-f", str(changed)])
    assert "nothing changed" in again.output

    # A field that decides allocation is refused, naming it; nothing changes.
    data["experiments"][0]["traffic_pct"] = 42
    changed.write_text(yaml.safe_dump(data))
    refused = cli.invoke(app, ["experiments", "apply", "-f", str(changed)])
    assert refused.exit_code == 2
    assert "experiments[0]" in refused.output and "traffic_pct" in refused.output
    assert json.loads(cli.invoke(app, ["audit", "--json"]).output) == trail


def test_audit_of_an_experiment_includes_the_kills_that_stopped_it(
    cli: CliRunner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{home / 'state.db'}")
    assert cli.invoke(app, ["experiments", "create", "-f", str(EXAMPLE), "--start"]).exit_code == 0
    for args in (
        ["ranking", "--scope", "layer"],
        ["--scope", "global"],
        ["ad_load", "--scope", "layer"],
    ):
        done = cli.invoke(app, ["kill", *args, "--reason", "test"])
        assert done.exit_code == 0, done.output
    rows = json.loads(cli.invoke(app, ["audit", "--experiment", "879", "--json"]).output)
    kills = [r["target"] for r in rows if r["action"] == "kill"]
    assert kills == ["layer:ranking", "global:*"]  # not the ad_load layer's
    unknown = cli.invoke(app, ["audit", "--experiment", "nope"])
    assert unknown.exit_code == 1 and "nope" in unknown.output
    no_target = cli.invoke(app, ["kill", "--reason", "x"])
    assert no_target.exit_code == 2
    assert "an experiment kill switch" in no_target.output


def test_config_show_redacts_secrets(
    cli: CliRunner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_LLM_API_KEY", "sk-very-secret")
    monkeypatch.setenv("VIGIL_STATE_URL", "postgresql+psycopg://vigil:hunter2@db:5432/vigil")
    monkeypatch.setenv("VIGIL_API_TOKENS", '{"tok-123": "alice"}')
    result = cli.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert "sk-very-secret" not in result.output and shown["llm_api_key"] == "***"
    assert "hunter2" not in result.output and shown["state_url"].startswith("postgresql+psycopg")
    assert "tok-123" not in result.output and list(shown["api_tokens"].values()) == ["alice"]


def test_the_settings_page_is_the_settings_model(cli: CliRunner) -> None:
    result = cli.invoke(app, ["config", "docs"])
    assert result.exit_code == 0
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == result.output


def test_doctor_finds_missing_columns_and_names_the_extra(
    cli: CliRunner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = home / "w.duckdb"
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE TABLE requests (ts TIMESTAMP, request_id BIGINT)")
        conn.execute(
            "CREATE TABLE exposures (ts TIMESTAMP, request_id BIGINT, unit_id BIGINT,"
            " experiment_id VARCHAR, arm VARCHAR)"
        )
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{home / 'state.db'}")
    result = cli.invoke(app, ["doctor", "--telemetry", f"duckdb:///{db}"])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "table requests: requests lacks unit_id" in said
    assert (
        "table exposures: requests" not in said and "exposures: every column, but no rows" in said
    )
    pg = cli.invoke(app, ["doctor", "--telemetry", "trino://h:1/c"])
    assert "trino" in pg.output and pg.exit_code == 1


def test_the_product_cli_imports_no_evals_and_evals_plugs_in() -> None:
    code = (
        "import importlib, pkgutil, sys, agent, lifecycle, tools\n"
        "for pkg in (agent, lifecycle, tools):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if '.migrations' not in m.name:\n"
        "            importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'evals' or m.startswith('evals.'))\n"
        "assert not bad, bad\n"
        "assert 'agent.cli.doctor' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    [ep] = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "evals"]
    assert ep.value == "evals.cli:register"
    _register_all()
    names = {c.name for c in app.registered_commands}
    assert {"sim", "eval", "bench", "demo"} <= names


def test_the_worked_mapping_example_of_the_telemetry_contract_passes_doctor(
    cli: CliRunner, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    doc = (ROOT / "docs" / "telemetry.md").read_text(encoding="utf-8")
    worked = doc.split("### Worked example", 1)[1]
    ddl = re.search(r"```sql\n(.*?)```", worked, re.S)
    env = re.search(r"```sh\n(.*?)```", worked, re.S)
    assert ddl is not None and env is not None
    db = home / "warehouse.duckdb"
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE SCHEMA ads; CREATE SCHEMA ml;")
        conn.execute(ddl.group(1))
    settings = dict(re.findall(r"(VIGIL_TELEMETRY_(?:TABLES|COLUMNS))='(.*?)'", env.group(1), re.S))
    assert set(settings) == {"VIGIL_TELEMETRY_TABLES", "VIGIL_TELEMETRY_COLUMNS"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{home / 'state.db'}")
    result = cli.invoke(app, ["doctor", "--telemetry", f"duckdb:///{db}"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    for table in ("ads.request_log", "ads.assignments", "ml.model_releases"):
        assert f"{table}: every column" in said


def test_no_help_text_points_outside_the_repository(cli: CliRunner) -> None:
    import typer.main

    root = typer.main.get_command(app)
    seen = 0
    stack: list[tuple[list[str], Any]] = [([], root)]
    while stack:
        path, command = stack.pop()
        result = cli.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "DESIGN" not in result.output and "§" not in result.output, path
        seen += 1
        if hasattr(command, "commands"):  # a group
            stack.extend(([*path, name], sub) for name, sub in command.commands.items())
    assert seen > 25  # every command and group was read


def test_an_alert_over_missing_telemetry_fails_in_one_line_not_an_all_clear(
    cli: CliRunner, home: Path
) -> None:
    alert = home / "alert.json"
    alert.write_text(
        json.dumps({"metric": "revenue", "fired_at": "2026-11-20T08:38:00Z", "name": "Drop"})
    )
    missing = home / "nowhere.duckdb"
    result = cli.invoke(
        app, ["investigate", "--alert", str(alert), "--telemetry", f"duckdb:///{missing}"]
    )
    assert result.exit_code == 1, result.output
    assert "failed" in result.output
    assert "noise" not in result.output and "Traceback" not in result.output
