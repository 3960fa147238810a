"""``/metrics`` shows what the agent did: check durations and LLM calls, failures included.

The real app, the real ``Investigator`` (on the agent's fake checks and catalog) with the app's
metrics as its observer, and the LLM reasoner driven through the real ``openai`` client against
the scripted OpenAI-compatible server on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agent.server import create_app
from agent.server.metrics import ServerMetrics
from agent.service import Investigator
from agent.settings import Settings
from tests.agent.fake_llm import TOOL_PATH, ScriptedLLM, diagnosis, error, text, tool_call
from tests.agent.fakes import FakeActions, FakeCatalog, at
from tests.agent.server.conftest import make_settings
from tests.agent.server.fakes import make_experiments
from tests.agent.server.test_alertmanager import am_alert, payload
from tests.agent.test_llm import FALLBACK
from tests.agent.test_llm import world as _world
from tools.errors import TelemetryError


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


def _llm_settings(tmp_path: Path, llm: ScriptedLLM) -> Settings:
    return make_settings(
        tmp_path,
        llm_base_url=llm.url,
        llm_model="scripted",
        llm_timeout_s=5.0,
        llm_max_retries=1,
        llm_backoff_s=0.0,
        production_model="ctr_v41",
        incident_window_minutes=0,  # two alerts of 879, two investigations (no grouping)
        **TOOL_PATH,
    )


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _investigate(client: TestClient, fingerprint: str) -> dict[str, Any]:
    r = client.post("/alerts/alertmanager", json=payload(am_alert(fingerprint)))
    assert r.status_code == 202, r.text
    (ident,) = r.json()["investigations"]
    assert client.app.state.vigil.pool.wait_idle(30)
    view: dict[str, Any] = client.get(f"/investigations/{ident}").json()
    return view


def test_metrics_show_check_durations_and_llm_calls(tmp_path: Path, llm: ScriptedLLM) -> None:
    settings = _llm_settings(tmp_path, llm)
    metrics = ServerMetrics()
    box = _world()
    experiments = make_experiments(settings.state_url)
    investigator = Investigator(
        settings,
        toolbox_factory=lambda _alert: box,
        catalog=FakeCatalog(),
        actions=FakeActions(),
        clock=lambda: at(159),
        observer=metrics,
    )
    app = create_app(settings, investigator=investigator, experiments=experiments, metrics=metrics)
    args = {"start": at(120).isoformat(), "end": at(158).isoformat(), "experiment_id": "879"}
    try:
        with TestClient(app) as client:
            before = _samples(client)
            assert not any(name == "vigil_llm_calls_total" for name, _ in before)

            # 1. Three calls: a tool call, an unparsable answer (rejected), a valid diagnosis.
            llm.add(tool_call("fallback", args), text("no JSON here"), diagnosis([FALLBACK]))
            first = _investigate(client, "fp-llm-1")
            assert first["status"] == "awaiting_approval" and first["reasoner"] == "llm:scripted"

            # 2. The endpoint stays down (500 twice: one call, one retry): one failed call, and
            # the deterministic rules stand.
            llm.add(error(500), error(500))
            second = _investigate(client, "fp-llm-2")
            assert second["reasoner"] == "deterministic"
            assert second["root_causes"][0]["cause"] == "model_fallback"
            assert llm.remaining == 0 and len(llm.requests) == 5

            after = _samples(client)
    finally:
        investigator.close()
        experiments.close()

    model = (("model", "scripted"),)
    assert after[("vigil_llm_calls_total", model)] == 4.0
    failures = {
        dict(labels)["reason"]: value
        for (name, labels), value in after.items()
        if name == "vigil_llm_failures_total"
    }
    assert failures == {"invalid_answer": 1.0, "InternalServerError": 1.0}

    # Every check the investigations ran was timed: localization's and the fan-out's, and the
    # one the LLM asked for through its tool.
    fallback = (("check", "fallback"),)
    counts = {
        dict(labels)["check"]: value
        for (name, labels), value in after.items()
        if name == "vigil_check_duration_seconds_count"
    }
    ran: dict[str, int] = {}
    for check, _kwargs in box.calls:
        ran[check] = ran.get(check, 0) + 1
    assert counts == {check: float(n) for check, n in ran.items()}
    assert counts["fallback"] >= 3 and {"change_point", "prediction"} <= set(counts)
    assert after[("vigil_check_duration_seconds_sum", fallback)] > 0


def test_the_app_built_from_settings_reports_to_its_metrics(
    tmp_path: Path, llm: ScriptedLLM
) -> None:
    app = create_app(_llm_settings(tmp_path, llm))
    parts = app.state.vigil
    try:
        deps = parts.investigator.deps
        assert deps.reasoner.observer is parts.metrics
        box = deps.toolboxes.fresh(None)
        box.refresh()  # not a check: not observed
        assert _count(parts.metrics, "vigil_check_duration_seconds_count") == 0.0
        with pytest.raises(TelemetryError):  # no telemetry in this store; it still took time
            box.infra(at(100), at(158))
        assert _count(parts.metrics, "vigil_check_duration_seconds_count") == 1.0
    finally:
        parts.investigator.close()
        parts.experiments.close()
        parts.ledger.close()


def _count(metrics: ServerMetrics, name: str) -> float:
    return sum(
        s.value for family in metrics.registry.collect() for s in family.samples if s.name == name
    )
