"""``vigil bench --only console``: console page loads with 1,000 experiments, against 10.

Two state stores are filled through lifecycle (10 layers; half of the experiments started, so
ramping, the rest drafts; the audit log holds their creations and starts), each behind the real
app (the real ``Investigator``, no telemetry needed for these pages) driven in process by
Starlette's TestClient after signing in. Every page is loaded ``repeats`` times; the figures are
the median milliseconds per page at 1,000 experiments, at 10, their ratio, and whether each
1,000-experiment page stays under the issue's 300 ms. Besides: the first dashboard after the
server starts (``dashboard_first``: the console reads every experiment once, in the background
from the start, and this page may wait for it) and the dashboard right after a state change
(``dashboard_after_change``: a pause, read incrementally).
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from agent.server import create_app
from agent.service import Investigator
from evals.bench import BenchOptions
from lifecycle.config import Arm, Experiment, ExperimentFile, Layer, ModelEntry
from lifecycle.service import ExperimentService
from lifecycle.settings import Settings

__all__ = ["PAGES", "run"]

PAGES = {
    "dashboard": "/console/",
    "dashboard_fragment": "/console/fragments/dashboard",
    "experiments": "/console/experiments",
    "experiments_filtered": "/console/experiments?status=ramping&layer=layer2",
    "experiment": "/console/experiments/exp-0007",
    "audit": "/console/audit",
    "investigations": "/console/investigations",
    "builder": "/console/builder",
}
LIMIT_MS = 300.0


def _fill(settings: Settings, count: int) -> None:
    layers = 10
    per_layer = max(1, count // layers)
    service = ExperimentService.from_settings(settings)
    try:
        arms = {"control": Arm(model="ctr_a"), "test": Arm(model="ctr_b")}
        experiments = [
            Experiment(
                id=f"exp-{i:04d}",
                name=f"Experiment {i}",
                owner=f"owner{i % 17}",
                layer=f"layer{i % layers}",
                traffic_pct=round(100.0 / per_layer, 3) - 0.001,
                arms=arms,
            )
            for i in range(count)
        ]
        setup = ExperimentFile(
            layers=[Layer(id=f"layer{k}") for k in range(layers)],
            models=[ModelEntry(id="ctr_a"), ModelEntry(id="ctr_b")],
        )
        service.create(setup, "bench")
        # Half started (ramping), half drafts: one write each.
        service.create(ExperimentFile(experiments=experiments[0::2]), "bench", start=True)
        service.create(ExperimentFile(experiments=experiments[1::2]), "bench")
    finally:
        service.close()


def _settings(folder: Path) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db*"):
        old.unlink()
    return Settings(
        home=folder,
        state_url=f"sqlite:///{folder / 'state.db'}",
        telemetry_url=f"duckdb:///{folder / 'telemetry.duckdb'}",
        checkpoint_url=str(folder / "checkpoints.db"),
        reports_dir=folder / "reports",
        api_tokens={"tok-bench": "bench"},
        oncall=["bench"],
        monitor_interval_s=0,
        recovery_interval_s=3600,
    )


def _measure(settings: Settings, repeats: int) -> dict[str, float]:
    investigator = Investigator(settings)
    experiments = ExperimentService.from_settings(settings)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    out: dict[str, float] = {}
    try:
        with TestClient(app) as client:
            login = client.get("/console/login")
            found = re.search(r'name="csrf" value="([^"]+)"', login.text)
            assert found is not None, "the login form has no CSRF token"
            signed = client.post(
                "/console/login",
                data={"csrf": found.group(1), "token": "tok-bench", "next": "/console/"},
                follow_redirects=False,
            )
            assert signed.status_code == 303, signed.text
            began = time.perf_counter()
            client.get("/console/")  # first: the start-up read of every experiment may still run
            out["dashboard_first"] = round((time.perf_counter() - began) * 1000.0, 2)
            times = []
            for k in range(repeats):  # one state change before each load: read incrementally
                if k % 2 == 0:
                    experiments.pause("exp-0000", "bench", reason="bench")
                else:
                    experiments.resume("exp-0000", "bench", reason="bench")
                began = time.perf_counter()
                client.get("/console/")
                times.append((time.perf_counter() - began) * 1000.0)
            out["dashboard_after_change"] = round(statistics.median(times), 2)
            for name, path in PAGES.items():
                client.get(path)  # warm: templates compiled, connections open
                times = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    response = client.get(path)
                    times.append((time.perf_counter() - began) * 1000.0)
                    assert response.status_code == 200, f"{path}: {response.status_code}"
                out[name] = round(statistics.median(times), 2)
    finally:
        investigator.close()
        experiments.close()
    return out


def run(opts: BenchOptions) -> dict[str, Any]:
    """Median page times at 1,000 and at 10 experiments, their ratio, and the 300 ms verdict."""
    repeats = 5 if opts.quick else 15
    figures: dict[str, Any] = {"repeats": repeats, "limit_ms": LIMIT_MS}
    sizes = {"small": 10, "large": 1000}
    measured: dict[str, dict[str, float]] = {}
    for label, count in sizes.items():
        settings = _settings(opts.workdir / f"console-{count}")
        began = time.perf_counter()
        _fill(settings, count)
        figures[f"fill_seconds_{count}"] = round(time.perf_counter() - began, 2)
        measured[label] = _measure(settings, repeats)
    for extra in ("dashboard_first", "dashboard_after_change"):
        figures[extra] = {"ms_1000": measured["large"][extra], "ms_10": measured["small"][extra]}
    figures["pages"] = {
        name: {
            "ms_1000": measured["large"][name],
            "ms_10": measured["small"][name],
            "ratio": round(measured["large"][name] / max(measured["small"][name], 1e-6), 2),
            "under_limit": measured["large"][name] < LIMIT_MS,
        }
        for name in PAGES
    }
    figures["slowest_ms_1000"] = max(measured["large"][name] for name in PAGES)
    figures["all_under_limit"] = all(p["under_limit"] for p in figures["pages"].values())
    return figures
