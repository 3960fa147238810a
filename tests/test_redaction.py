"""No password of a URL in anything Vigil prints or logs.

Every command that shows a store's URL runs with URLs holding a password (on a port where nothing
listens, so each also fails and prints its error), and its output, errors and log lines are
searched for the password. The HTTP error bodies and the helper itself are checked too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agent.cli import _register_all, app
from agent.server.errors import install_error_handlers
from agent.settings import Settings
from tools.errors import RetryableError
from tools.redaction import hide_passwords, redact_url

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3cretPW"

SCENARIO = {
    "name": "redaction",
    "seed": 1,
    "world": {
        "start": "2026-11-20T06:00:00Z",
        "minutes": 5,
        "requests_per_minute": 100,
        "models": [{"id": "m1", "quality": 0.7}],
        "production_model": "m1",
    },
    "alert": {"metric": "revenue", "minute": 4},
    "expect": {"root_cause": "none"},
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    port = _closed_port()
    pg = f"postgresql+psycopg://vigil:{SECRET}@127.0.0.1:{port}"
    values = {
        "VIGIL_HOME": str(tmp_path / "home"),
        "VIGIL_STATE_URL": f"{pg}/vigil",
        "VIGIL_TELEMETRY_URL": f"{pg}/telemetry",
        "VIGIL_CHECKPOINT_URL": f"postgresql://vigil:{SECRET}@127.0.0.1:{port}/cp",
        "VIGIL_LLM_BASE_URL": f"http://bot:{SECRET}@127.0.0.1:{port}/v1",
        "VIGIL_LLM_MODEL": "m",
        "VIGIL_LLM_MAX_RETRIES": "0",
        "VIGIL_ACTOR": "tester",
        "COLUMNS": "250",
        "PGCONNECT_TIMEOUT": "2",
    }
    for name in Settings.model_fields:
        monkeypatch.delenv(f"VIGIL_{name.upper()}", raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return values


def test_the_helpers_hide_every_password() -> None:
    url = f"postgresql+psycopg://u:{SECRET}@h:5432/d"
    assert redact_url(url) == "postgresql+psycopg://u:***@h:5432/d"
    text = f"could not reach https://bot:{SECRET}@api/v1 nor redis://:{SECRET}@h:6379/0"
    assert SECRET not in hide_passwords(text) and hide_passwords(text).count("***") == 2
    assert hide_passwords("sqlite:///a.db and duckdb:///b.duckdb") == (
        "sqlite:///a.db and duckdb:///b.duckdb"
    )


def test_commands_print_no_password(env: dict[str, str], tmp_path: Path) -> None:
    _register_all()
    cli = CliRunner()
    scenario = tmp_path / "world.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    db = env["VIGIL_TELEMETRY_URL"]
    commands = [
        ["config", "show"],
        ["config", "show", "--json"],
        ["doctor"],
        ["sim", str(scenario), "--db", db],
        ["investigate", "--alert", str(ROOT / "examples" / "alert.json"), "--telemetry", db],
        ["experiments", "list"],
        ["investigations"],
    ]
    for args in commands:
        result = cli.invoke(app, args)
        shown = result.output + (result.stderr if result.stderr_bytes is not None else "")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            shown += repr(result.exception)
        assert SECRET not in shown, (args, shown)
        assert "vigil:***@127.0.0.1" in shown, (args, shown)  # the URL is shown, redacted
    shown = json.loads(cli.invoke(app, ["config", "show", "--json"]).output)
    assert shown["state_url"].startswith("postgresql+psycopg://vigil:***@")
    assert shown["llm_base_url"].startswith("http://bot:***@")
    assert "http://bot:***@127.0.0.1" in cli.invoke(app, ["doctor"]).output


_LOGGING = """
import logging, sys
from agent.cli import _register_all, app
_register_all()
app(["-v", "config", "show"], standalone_mode=False)  # the CLI configures logging
url = sys.argv[1]
try:
    raise RuntimeError(f"connection to {url} failed")
except RuntimeError as exc:
    logging.getLogger("agent.server.errors").error("database error: %s", exc, exc_info=exc)
logging.getLogger("lifecycle.store").warning("retrying " + url)
"""


def test_logs_carry_no_password(env: dict[str, str]) -> None:
    """In a real process configured by the CLI, log lines (tracebacks too) hide the password."""
    done = subprocess.run(
        [sys.executable, "-c", _LOGGING, env["VIGIL_STATE_URL"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("vigil:***@127.0.0.1") == 3  # message, traceback, warning
    assert SECRET not in done.stdout + done.stderr


def test_http_error_bodies_carry_no_password() -> None:
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/boom")
    def boom() -> None:
        raise RetryableError(f"state database postgresql://u:{SECRET}@db/x is unreachable")

    answer = TestClient(api).get("/boom")
    assert answer.status_code == 503
    assert SECRET not in answer.text and "u:***@db" in answer.text
