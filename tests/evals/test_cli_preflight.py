"""``vigil preflight`` and ``vigil experiments start`` on a simulated world: the narrative report,
green / yellow / red, the yellow start approved once through ``vigil approve``, the audited red
override by on-call only.

The replay goes through the real V2 client to a scripted V2 endpoint on loopback that answers
each model's prediction as the logged one times a factor (ctr_v43: 1.4, miscalibrated); the real
MLServer is exercised in tests/lifecycle/test_inference.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import _register_all, app
from evals.launch_history import simulate_launches
from evals.replay import PREFLIGHT_MINUTES as MINUTES
from evals.replay import PREFLIGHT_SCENARIO as SCENARIO
from evals.replay import preflight_world
from evals.sim import parse_scenario
from lifecycle.service import ExperimentService

FACTORS = {"ctr_v41": 1.0, "ctr_v42": 1.0, "ctr_v43": 1.4, "ctr_v44": 1.0}


class _V2(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(200, {"name": self.path.rsplit("/", 1)[-1]})

    def do_POST(self) -> None:
        model = self.path.split("/")[3]
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        tensor = body["inputs"][0]
        data = [min(x * FACTORS[model], 1.0) for x in tensor["data"]]
        self._answer(200, {"outputs": [{"name": "p", "shape": [len(data)], "data": data}]})

    def _answer(self, status: int, payload: object) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def v2_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _V2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("cli-preflight"))
    world = preflight_world(parse_scenario(SCENARIO), root)
    world.close()
    simulate_launches(2000, seed=5).to_csv(root / "history.csv", index=False)
    return root


@pytest.fixture
def cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    _register_all()
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("VIGIL_HOME", str(home))
    monkeypatch.setenv("VIGIL_STATE_URL", f"sqlite:///{home / 'state.db'}")
    monkeypatch.setenv("VIGIL_TELEMETRY_URL", f"duckdb:///{home / 'telemetry.duckdb'}")
    monkeypatch.setenv("VIGIL_ONCALL", '["carol"]')
    monkeypatch.setenv("VIGIL_ACTOR", "bob")
    return CliRunner()


@pytest.fixture
def replaying(cli: CliRunner, v2_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("VIGIL_INFERENCE_URL", v2_url)
    monkeypatch.setenv("VIGIL_INFERENCE_FEATURES", '["prediction"]')
    return cli


AT = (parse_scenario(SCENARIO).start + timedelta(minutes=MINUTES)).strftime("%Y-%m-%dT%H:%M:%S")


def _status(home: Path, exp: str) -> str:
    with ExperimentService(f"sqlite:///{home / 'state.db'}") as svc:
        return svc.get(exp).status


def test_1_train_then_preflight_without_a_replay_is_yellow(cli: CliRunner, home: Path) -> None:
    trained = cli.invoke(app, ["risk", "train", "--history", str(home / "history.csv")])
    assert trained.exit_code == 0, trained.output
    assert (home / "risk_model.joblib").exists()
    result = cli.invoke(app, ["preflight", "900", "--at", AT])
    assert result.exit_code == 3, result.output  # nothing replayed: never green
    assert result.output.startswith('Before starting experiment 900 ("healthy"')
    assert "? offline replay of logged requests: Not replayed" in result.output
    assert "Risk score:" in result.output and "Decision: yellow" in result.output
    assert _status(home, "900") == "draft"


def test_2_miscalibrated_candidate_is_red(replaying: CliRunner, home: Path) -> None:
    result = replaying.invoke(app, ["preflight", "901", "--at", AT])
    assert result.exit_code == 4, result.output
    assert "✗ offline replay of logged requests" in result.output
    assert "✗ calibration (arm test): Miscalibrated" in result.output
    assert "Decision: red" in result.output


def test_3_red_start_refused_then_overridden_by_oncall_only(
    replaying: CliRunner, home: Path
) -> None:
    refused = replaying.invoke(app, ["experiments", "start", "901", "--at", AT])
    assert refused.exit_code == 4 and _status(home, "901") == "draft"
    bob = replaying.invoke(app, ["experiments", "start", "901", "--at", AT, "--override", "fix"])
    assert bob.exit_code == 1 and "not on-call" in bob.output
    assert _status(home, "901") == "draft"
    carol = replaying.invoke(
        app,
        ["experiments", "start", "901", "--at", AT, "--override", "known", "--actor", "carol"],
    )
    assert carol.exit_code == 0, carol.output
    assert _status(home, "901") == "ramping"
    with ExperimentService(f"sqlite:///{home / 'state.db'}") as svc:
        start = next(e for e in svc.audit("901") if e.action == "start")
    assert start.actor == "carol" and "overridden by on-call carol: known" in start.reason


def test_4_yellow_start_waits_for_oncall_and_runs_once(cli: CliRunner, home: Path) -> None:
    started = cli.invoke(app, ["experiments", "start", "900", "--at", AT])
    assert started.exit_code == 3, started.output
    mitigation = started.output.split("mitigation ")[1].split(" ")[0]
    assert _status(home, "900") == "draft"
    denied = cli.invoke(app, ["approve", mitigation, "--as", "bob"])
    assert denied.exit_code != 0 and _status(home, "900") == "draft"
    approved = cli.invoke(app, ["approve", mitigation, "--as", "carol"])
    assert approved.exit_code == 0, approved.output
    assert _status(home, "900") == "ramping"
    again = cli.invoke(app, ["approve", mitigation, "--as", "carol"])
    assert again.exit_code == 0 and "nothing was done again" in again.output
    with ExperimentService(f"sqlite:///{home / 'state.db'}") as svc:
        starts = [e for e in svc.audit("900") if e.action == "start"]
    assert len(starts) == 1 and starts[0].key == mitigation
