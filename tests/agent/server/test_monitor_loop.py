"""The serve loop hands monitor alerts to the investigator; ``vigil monitor --once`` does too."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agent.cli import serve as serve_cli
from agent.models import Alert
from agent.server import create_app
from lifecycle.alerts import AlertLedger
from lifecycle.config import Arm, Experiment, ExperimentFile, Guardrail, Layer
from lifecycle.monitors import Monitors
from lifecycle.service import ExperimentService
from tests.agent.server.conftest import make_settings
from tests.agent.server.fakes import FakeInvestigator
from tests.lifecycle.test_monitors import NOW, write_telemetry
from tools.telemetry import TelemetryReader


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_telemetry(tmp_path_factory.mktemp("loop"), seed=3, per_arm=8_000)


def _experiments(state_url: str) -> ExperimentService:
    service = ExperimentService(state_url)
    arms = {name: Arm() for name in ("control", "fallback")}
    guardrails = [Guardrail(metric="fallback_rate"), Guardrail(metric="srm")]
    service.create(
        ExperimentFile(
            layers=[Layer(id="ranking")],
            experiments=[
                Experiment(
                    id="879",
                    name="fallback",
                    owner="alice",
                    layer="ranking",
                    traffic_pct=10,
                    arms=arms,
                    guardrails=guardrails,
                )
            ],
        ),
        "setup",
        start=True,
    )
    return service


def test_monitor_round_starts_investigations_once(tmp_path: Path, telemetry: str) -> None:
    settings = make_settings(tmp_path, workers=1, queue_size=0, monitor_lookback_minutes=180)
    experiments = _experiments(settings.state_url)
    ledger = AlertLedger(settings.state_url)
    monitors = Monitors(experiments, TelemetryReader(telemetry), ledger, lookback_minutes=180)
    gate = threading.Event()
    investigator = FakeInvestigator(experiments, gate=gate)
    app = create_app(
        settings,
        investigator=investigator,
        experiments=experiments,
        ledger=ledger,
        monitor=lambda: monitors.evaluate(NOW),
    )
    with TestClient(app):
        loop = app.state.vigil.monitor
        first = loop.run_once()
        assert len(first) == 1  # fallback_rate breached; srm holds
        view = investigator.get(first[0])
        assert view.alert.source == "monitor" and view.alert.metric == "fallback_rate"
        assert view.alert.experiment == "879" and view.alert.labels["arm"] == "fallback"
        assert ledger.find("monitor", "879:fallback_rate").investigation_id == first[0]
        assert loop.run_once() == []  # open: not fired twice
        gate.set()
        assert app.state.vigil.pool.wait_idle(10)
        assert investigator.runs == first


def test_monitor_alert_refused_by_a_full_queue_fires_next_round(
    tmp_path: Path, telemetry: str
) -> None:
    settings = make_settings(tmp_path, workers=1, queue_size=0)
    experiments = _experiments(settings.state_url)
    ledger = AlertLedger(settings.state_url)
    monitors = Monitors(experiments, TelemetryReader(telemetry), ledger, lookback_minutes=180)
    gate = threading.Event()
    investigator = FakeInvestigator(experiments, gate=gate)
    app = create_app(
        settings,
        investigator=investigator,
        experiments=experiments,
        ledger=ledger,
        monitor=lambda: monitors.evaluate(NOW),
    )
    with TestClient(app):
        pool = app.state.vigil.pool

        pool.submit(Alert(metric="ctr", fired_at=NOW))  # occupies the only slot
        assert app.state.vigil.monitor.run_once() == []
        assert ledger.open_alerts("monitor") == []  # withdrawn, not lost
        gate.set()
        assert pool.wait_idle(10)
        assert len(app.state.vigil.monitor.run_once()) == 1


def test_vigil_monitor_once(
    tmp_path: Path, telemetry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    _experiments(state).close()
    monkeypatch.setenv("VIGIL_MONITOR_LOOKBACK_MINUTES", "180")
    app = typer.Typer()
    serve_cli.register(app)
    args = ["monitor", "--once", "--no-investigate", "--telemetry", telemetry, "--state", state]
    args += ["--at", NOW.strftime("%Y-%m-%dT%H:%M:%S")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 monitors at 2026-11-20 08:00 UTC: 1 alert(s) fired" in result.output
    assert "fallback_rate" in result.output
    again = CliRunner().invoke(app, args)
    assert "0 alert(s) fired" in again.output
    (record,) = AlertLedger(state).open_alerts("monitor")
    assert record.key == "879:fallback_rate"
    assert record.fired_at == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    bad = CliRunner().invoke(app, ["monitor", "--at", "2026-11-20T08:00:00"])
    assert bad.exit_code != 0 and "--at needs --once" in bad.output
