"""The preflight's narrative and the incident history the risk model reads from investigations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.models import Alert, Cause, InvestigationView, RootCause
from agent.preflight_report import InvestigationIncidents, render
from lifecycle.preflight import PreflightReport, PreflightStep, RiskSummary
from tools.result import CheckResult

NOW = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


def _inv(i: int, days_ago: float, cause: Cause, experiment: str | None) -> InvestigationView:
    return InvestigationView(
        id=f"inv-{i}",
        status="completed",
        alert=Alert(metric="revenue", fired_at=NOW, experiment=experiment),
        created_at=NOW - timedelta(days=days_ago),
        root_causes=[RootCause(cause=cause, experiment=experiment, confidence=0.9)],
    )


class Store:
    def __init__(self, views: list[InvestigationView]) -> None:
        self.views = views

    def list_investigations(self, limit: int = 50) -> list[InvestigationView]:
        return self.views[:limit]


def test_incidents_count_causes_per_owner_and_layer_in_the_window() -> None:
    store = Store(
        [
            _inv(1, 10, "miscalibration", "879"),
            _inv(2, 20, "model_fallback", "880"),
            _inv(3, 30, "none", "879"),  # healthy: not an incident
            _inv(4, 400, "ne_regression", "879"),  # too old
            _inv(5, 5, "infra_outage", None),  # no experiment to blame
            _inv(6, 5, "stale_model", "999"),  # unknown experiment
        ]
    )
    owners = {"879": ("alice", "ranking"), "880": ("bob", "ranking"), "901": ("alice", "ads")}
    history = InvestigationIncidents(store, owners)
    since = NOW - timedelta(days=180)
    assert history.incidents(since=since, owner="alice") == 1
    assert history.incidents(since=since, owner="bob") == 1
    assert history.incidents(since=since, layer="ranking") == 2
    assert history.incidents(since=since, layer="ads") == 0
    assert history.incidents(since=NOW - timedelta(days=500), owner="alice") == 2


def test_render_names_every_step_the_failing_checks_and_the_decision() -> None:
    bad = CheckResult(check="calibration", verdict="fail", summary="Miscalibrated: 1.40.", arm="t")
    good = CheckResult(check="ne", verdict="ok", summary="NE holds.")
    report = PreflightReport(
        experiment_id="879",
        name="Ranking",
        owner="alice",
        layer="ranking",
        candidates={"t": "ctr_v42"},
        reference="ctr_v41",
        checked_at=NOW,
        steps=[
            PreflightStep(name="validation", verdict="ok", summary="Valid."),
            PreflightStep(name="replay", verdict="fail", summary="Replayed.", checks=[bad, good]),
        ],
        risk=RiskSummary(
            probability=0.3, percentile=0.97, zone="red", kind="logistic", top=[("x", 1, 0.2)]
        ),
        zone="red",
        decision="refused",
        seconds=0.1,
    )
    text = render(report)
    lines = text.splitlines()
    assert lines[0].startswith('Before starting experiment 879 ("Ranking"')
    assert lines[1] == "✓ configuration validation: Valid."
    assert lines[2] == "✗ offline replay of logged requests: Replayed."
    assert lines[3] == "    ✗ calibration (arm t): Miscalibrated: 1.40."
    assert "NE holds" not in text  # passing checks stay in the step's summary
    assert "Risk score: 30.0% (red; riskier than 97% of past launches" in text
    assert lines[-1].startswith("Decision: red — refused because offline replay")
