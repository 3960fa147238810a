"""The registry's declared serving cost (issue 18): stored with the model version, migrated onto
older stores, and used by the preflight's resource estimate before the replay's measurement."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from lifecycle.config import ModelEntry
from lifecycle.preflight import Capacity, ModelCost, Preflight, PreflightReport, ResourceEstimate
from lifecycle.service import ExperimentService
from lifecycle.store import migrate, open_engine
from lifecycle.validation import parse_experiment_file
from tests.lifecycle.conftest import Clock, world
from tests.lifecycle.test_preflight import Requests, Runner
from tools.errors import ConfigError
from tools.result import Verdict

# 879 takes 50 % of the layer, half of it in test: 5,000 of the tier's 20,000 requests/s.
TIER = Capacity(peak_rps=20_000, cores=16, memory_gb=32, utilisation=0.5)  # 8 cores, 16 GB


def _with_cost(ms: float | None, memory: float | None) -> dict[str, object]:
    data = world()
    data["models"][2] |= {"ms_per_request": ms, "memory_gb": memory}
    return data


def _resources(report: PreflightReport) -> tuple[Verdict, str, list[ResourceEstimate]]:
    step = next(s for s in report.steps if s.name == "resources")
    return step.verdict, step.summary, report.resources


def test_the_registry_keeps_a_declared_cost(service: ExperimentService) -> None:
    service.create(parse_experiment_file(_with_cost(0.4, 6.0)), "alice")
    entry = next(m.entry for m in service.models() if m.id == "ctr_v42")
    assert (entry.ms_per_request, entry.memory_gb) == (0.4, 6.0)
    # A registered version cannot change its declared cost: a new version declares a new one.
    with pytest.raises(ConfigError, match="ms_per_request"):
        service.register_models([ModelEntry(id="ctr_v42", version="1", ms_per_request=9)], "bob")
    assert service.register_models(
        [ModelEntry(id="ctr_v42", version="2", ms_per_request=9)], "bob"
    ) == ["ctr_v42@2"]
    with pytest.raises(ValueError, match="greater than 0"):
        ModelEntry(id="m", ms_per_request=0)


@pytest.mark.parametrize(
    ("ms", "memory", "fits"),
    [(1.0, 8.0, True), (2.0, 8.0, False), (1.0, 20.0, False)],  # 5, 10 cores; 20 GB
)
def test_a_declared_cost_decides_whether_the_candidate_fits(
    service: ExperimentService, clock: Clock, ms: float, memory: float, fits: bool
) -> None:
    service.create(parse_experiment_file(_with_cost(ms, memory)), "alice")
    # The replay measures 0.1 ms per request: the declared cost is used, the measured one shown.
    runner = Runner({}, ms={"ctr_v42": 0.1})
    preflight = Preflight(service, runner=runner, requests=Requests(), capacity=TIER, clock=clock)
    verdict, summary, (est,) = _resources(preflight.run("879"))
    assert est.cost_source == "declared" and est.declared_by == "registry"
    assert est.measured_ms_per_request == pytest.approx(0.1)
    assert est.cores_needed == pytest.approx(5_000 * ms / 1000)
    assert est.fits is fits
    assert verdict == ("ok" if fits else "fail")
    assert "declared in the registry; the replay measured 0.100" in str(summary)


def test_the_model_costs_setting_is_a_fallback_behind_the_registry(
    service: ExperimentService, clock: Clock
) -> None:
    service.create(parse_experiment_file(_with_cost(None, 4.0)), "alice")
    setting = {"ctr_v42": ModelCost(ms_per_request=3.0, memory_gb=64.0)}
    preflight = Preflight(service, declared=setting, capacity=TIER, clock=clock)
    _, summary, (est,) = _resources(preflight.run("879"))
    # No cost per request in the registry: the setting's; the registry's memory wins over it.
    assert est.declared_by == "settings" and est.cost_ms_per_request == 3.0
    assert est.memory_gb_needed == 4.0
    assert "model_costs setting" in str(summary)
    # Without any declaration the replay's measurement is the cost.
    runner = Runner({}, ms={"ctr_v42": 0.2})
    preflight = Preflight(service, runner=runner, requests=Requests(), capacity=TIER, clock=clock)
    _, _, (measured,) = _resources(preflight.run("879"))
    assert measured.cost_source == "measured" and measured.declared_by is None


def test_a_store_at_0002_keeps_its_models_and_declares_no_cost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = open_engine(url)
    assert migrate(engine, "0002") == "0002"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO models (id, version, seq, status, description, registered_at) "
                "VALUES ('ctr_v41', '1', 1, 'active', '', '2026-11-20 06:00:00')"
            )
        )
    engine.dispose()
    with ExperimentService(url) as service:  # opening migrates to head
        (model,) = service.models()
        assert (model.id, model.entry.ms_per_request, model.entry.memory_gb) == (
            "ctr_v41",
            None,
            None,
        )
        service.register_models([ModelEntry(id="ctr_v41", version="2", memory_gb=2.5)], "a")
        assert service.models()[-1].entry.memory_gb == 2.5
