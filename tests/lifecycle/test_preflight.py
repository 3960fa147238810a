"""The preflight's orchestration: steps in order, the decision rule, resources and validation."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from lifecycle.inference import InferenceUnavailable, Scored
from lifecycle.preflight import Capacity, ModelCost, Preflight, PreflightStep, decide
from lifecycle.risk import LAUNCH_FEATURES, RiskModel, Zone
from lifecycle.service import ExperimentService
from lifecycle.validation import parse_experiment_file
from tests.lifecycle.conftest import Clock, world
from tools.errors import TelemetryUnavailable
from tools.result import Verdict

N = 20_000


class Requests:
    """Logged production requests: a calibrated model's predictions and clicks drawn from them."""

    def __init__(self) -> None:
        rng = np.random.default_rng(11)
        p = np.clip(np.exp(rng.normal(np.log(0.02), 0.7, N)), 1e-4, 0.5)
        self.frame = pd.DataFrame(
            {
                "request_id": np.arange(N),
                "prediction": p,
                "label": (rng.random(N) < p).astype(float),
            }
        )
        self.calls: list[tuple[str | None, int]] = []

    def sample_requests(
        self, start: datetime, end: datetime, *, model_id: str | None = None, limit: int = 20_000
    ) -> pd.DataFrame:
        assert start < end and start.tzinfo is not None
        self.calls.append((model_id, limit))
        return self.frame.head(limit)


class Runner:
    """Scores with the logged prediction, times a factor per model; fixed latency per model."""

    def __init__(self, factors: dict[str, float], ms: dict[str, float] | None = None) -> None:
        self.factors = factors
        self.ms = ms or {}
        self.scored: list[str] = []

    def score(self, model_id: str, version: str | None, requests: pd.DataFrame) -> Scored:
        self.scored.append(model_id)
        pred = requests["prediction"].to_numpy(float) * self.factors.get(model_id, 1.0)
        n = len(requests)
        return Scored(pred, np.full(n, self.ms.get(model_id, 2.0)), 0.01)


class DownRunner:
    def score(self, model_id: str, version: str | None, requests: pd.DataFrame) -> Scored:
        raise InferenceUnavailable("connection refused")


@pytest.fixture
def drafts(service: ExperimentService) -> ExperimentService:
    service.create(parse_experiment_file(world()), "alice", reason="drafts")
    return service


def _risk() -> RiskModel:
    rng = np.random.default_rng(2)
    x = pd.DataFrame(rng.random((400, len(LAUNCH_FEATURES))), columns=list(LAUNCH_FEATURES))
    x["offline_fail"] = (rng.random(400) < 0.1).astype(float)
    y = ((x["offline_fail"] > 0) | (rng.random(400) < 0.05)).astype(int)
    return RiskModel.fit(x, y, kind="logistic")


def test_healthy_candidate_runs_every_step_in_order(
    drafts: ExperimentService, clock: Clock
) -> None:
    requests, runner = Requests(), Runner({})
    report = Preflight(drafts, runner=runner, requests=requests, risk=_risk(), clock=clock).run(
        "879"
    )
    assert [s.name for s in report.steps] == ["validation", "replay", "resources", "risk"]
    assert report.candidates == {"test": "ctr_v42"} and report.reference == "ctr_v41"
    assert requests.calls == [("ctr_v41", 20_000)]
    assert runner.scored == ["ctr_v41", "ctr_v42"]
    assert not report.failed
    assert report.decision in ("start", "needs_approval")
    assert report.resources[0].cost_source == "measured"
    # 50 % of the layer, half of it in test, at 20,000 requests/s: 5,000/s x 2 ms = 10 cores.
    assert report.resources[0].cores_needed == pytest.approx(10.0)


def test_miscalibrated_candidate_is_refused(drafts: ExperimentService, clock: Clock) -> None:
    report = Preflight(
        drafts, runner=Runner({"ctr_v42": 1.5}), requests=Requests(), risk=_risk(), clock=clock
    ).run("879")
    assert report.decision == "refused" and report.zone == "red"
    assert [s.name for s in report.failed] == ["replay"]
    assert report.risk is not None and report.risk.top[0][0] == "offline_fail"


def test_candidate_that_does_not_fit_the_tier_fails_resources(
    drafts: ExperimentService, clock: Clock
) -> None:
    runner = Runner({}, ms={"ctr_v42": 2.0})
    small = Capacity(peak_rps=20_000, cores=8, memory_gb=16, utilisation=0.5)
    report = Preflight(drafts, runner=runner, requests=Requests(), capacity=small, clock=clock).run(
        "879"
    )
    resources = next(s for s in report.steps if s.name == "resources")
    assert resources.verdict == "fail" and "does not fit" in resources.summary.lower()
    assert report.decision == "refused"


def test_declared_cost_is_used_without_a_replay(drafts: ExperimentService, clock: Clock) -> None:
    report = Preflight(
        drafts, declared={"ctr_v42": ModelCost(ms_per_request=0.5, memory_gb=500)}, clock=clock
    ).run("879")
    replay = next(s for s in report.steps if s.name == "replay")
    assert replay.verdict == "inconclusive"
    est = report.resources[0]
    assert est.cost_source == "declared" and est.memory_gb_needed == 500 and not est.fits
    # No risk model: the risk step is inconclusive; the failed resources step refuses anyway.
    assert report.decision == "refused"


def test_unreachable_inference_server_is_inconclusive_not_a_pass(
    drafts: ExperimentService, clock: Clock
) -> None:
    report = Preflight(drafts, runner=DownRunner(), requests=Requests(), clock=clock).run("879")
    replay = next(s for s in report.steps if s.name == "replay")
    assert replay.verdict == "inconclusive" and "connection refused" in replay.summary
    assert report.decision == "needs_approval" and report.zone == "yellow"


def test_a_running_experiment_fails_validation(service: ExperimentService, clock: Clock) -> None:
    service.create(parse_experiment_file(world()), "alice", start=True, reason="launch")
    report = Preflight(service, clock=clock).run("879")
    assert report.steps[0].verdict == "fail" and "not a draft" in report.steps[0].summary
    assert report.decision == "refused"


def test_parameter_change_has_nothing_to_replay(drafts: ExperimentService, clock: Clock) -> None:
    runner = Runner({})
    report = Preflight(drafts, runner=runner, requests=Requests(), clock=clock).run("901")
    assert report.candidates == {} and runner.scored == []
    assert next(s for s in report.steps if s.name == "replay").verdict == "ok"


@pytest.mark.parametrize(
    ("verdicts", "zone", "expected"),
    [
        (["ok", "ok"], "green", ("green", "start")),
        (["ok", "warn"], "yellow", ("yellow", "needs_approval")),
        (["ok", "ok"], "red", ("red", "refused")),
        (["fail", "ok"], "green", ("red", "refused")),
        (["ok", "inconclusive"], None, ("yellow", "needs_approval")),
        (["ok", "inconclusive"], "green", ("yellow", "needs_approval")),
        (["no_data", "ok"], "red", ("red", "refused")),
    ],
)
def test_decision_rule(
    verdicts: list[Verdict], zone: Zone | None, expected: tuple[str, str]
) -> None:
    steps = [PreflightStep(name="replay", verdict=v, summary="") for v in verdicts]
    assert decide(steps, zone) == expected


class DownTelemetry:
    def sample_requests(
        self, start: datetime, end: datetime, *, model_id: str | None = None, limit: int = 20_000
    ) -> pd.DataFrame:
        raise TelemetryUnavailable("warehouse timed out")


def test_unreachable_telemetry_is_inconclusive(drafts: ExperimentService, clock: Clock) -> None:
    report = Preflight(drafts, runner=Runner({}), requests=DownTelemetry(), clock=clock).run("879")
    replay = next(s for s in report.steps if s.name == "replay")
    assert replay.verdict == "inconclusive" and "warehouse timed out" in replay.summary
    assert report.decision == "needs_approval"
