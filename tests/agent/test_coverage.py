"""No data is not health: investigations that cannot see end inconclusive or failed, with a reason.

Each test runs a whole investigation through the :class:`Investigator` (the graph, the reasoner,
the report) over real telemetry readers where the point is the telemetry, fakes elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent.models import Alert
from agent.reasoning import ExperimentMeta
from tests.agent.conftest import alert
from tests.agent.fakes import FakeCatalog, FakeToolbox, at
from tests.tools import synth
from tools.telemetry import TelemetryReader

_E1 = ExperimentMeta(
    id="e1",
    name="synthetic",
    owner="alice",
    traffic_share=0.5,
    models={"control": "m_prod", "test": "m_test"},
)


def _synthetic_box(url: str) -> object:
    """The real checks over the telemetry at ``url`` (written by the caller, or missing)."""
    return synth.toolbox(TelemetryReader(sa.create_engine(url)))


def _not_an_all_clear(view, status: str, words: str) -> None:  # type: ignore[no-untyped-def]
    # Could not see: watched (re-run on fresh data) while follow-ups remain (agent.followups).
    want = "watching" if status == "inconclusive" else status
    assert view.status == want, (view.status, view.error)
    top = view.root_causes[0]
    assert top.cause == "none" and top.confidence == 0.0
    assert top.explanation.startswith("No root cause could be established:")
    assert words in top.explanation
    assert "No root cause could be established" in view.report_markdown
    assert "noise or seasonality" not in view.report_markdown
    assert view.mitigations == []


def test_an_unknown_experiment_fails_with_its_name(harness) -> None:
    h = harness(FakeToolbox())
    view = h.investigator().investigate(alert(experiment="999"))
    _not_an_all_clear(view, "failed", "experiment 999 is not known to the state store")
    assert view.error is not None and "999" in view.error
    assert h.toolbox.calls == [] or all(c[0] == "metric_series" for c in h.toolbox.calls)
    assert ("finished", view.id, "failed") in h.notifier.events


def test_a_missing_duckdb_file_fails_rather_than_clearing(
    harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nowhere.duckdb"
    box = _synthetic_box(f"duckdb:///{missing}")
    h = harness(box)  # type: ignore[arg-type]
    h.catalog = FakeCatalog({"e1": _E1}, production_model="m_prod")
    with caplog.at_level("WARNING"):
        view = h.investigator().investigate(alert(experiment="e1", metric="calibration"))
    _not_an_all_clear(view, "failed", "the telemetry cannot be read")
    # One line per failing check at WARNING; tracebacks only at DEBUG.
    assert not any(r.exc_info for r in caplog.records if r.levelname == "WARNING")


def test_a_global_alert_on_a_missing_file_fails(harness, tmp_path: Path) -> None:
    box = _synthetic_box(f"duckdb:///{tmp_path / 'nowhere.duckdb'}")
    h = harness(box)  # type: ignore[arg-type]
    h.catalog = FakeCatalog({"e1": _E1}, production_model="m_prod")
    view = h.investigator().investigate(alert(experiment=None))
    _not_an_all_clear(view, "failed", "the telemetry cannot be read")


@pytest.fixture(scope="module")
def healthy_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"duckdb:///{tmp_path_factory.mktemp('cov') / 'healthy.duckdb'}"
    synth.write(url, *synth.build(synth.World(minutes=120, rpm=1500)))
    return url


def _real(harness, url: str):  # type: ignore[no-untyped-def]
    h = harness(_synthetic_box(url))
    h.catalog = FakeCatalog({"e1": _E1}, production_model="m_prod")
    return h


def test_an_alert_dated_after_the_telemetry_is_inconclusive(harness, healthy_url: str) -> None:
    h = _real(harness, healthy_url)
    future = Alert(metric="revenue", fired_at=datetime(2030, 1, 1, tzinfo=UTC), experiment="e1")
    view = h.investigator().investigate(future)
    _not_an_all_clear(view, "inconclusive", "no telemetry rows for experiment e1")
    assert "after the telemetry" in view.root_causes[0].explanation


def test_an_alert_at_year_9999_is_not_an_all_clear(harness, healthy_url: str) -> None:
    h = _real(harness, healthy_url)
    far = Alert(metric="revenue", fired_at=datetime(9999, 12, 31, tzinfo=UTC), experiment="e1")
    view = h.investigator().investigate(far)
    assert view.status in ("watching", "inconclusive", "failed"), view.status
    assert view.root_causes[0].cause == "none"
    assert view.root_causes[0].explanation.startswith("No root cause could be established:")


def test_the_same_world_with_data_completes(harness, healthy_url: str) -> None:
    h = _real(harness, healthy_url)
    view = h.investigator().investigate(
        Alert(metric="revenue", fired_at=synth.at(119).replace(tzinfo=UTC), experiment="e1")
    )
    assert view.status == "completed", (view.status, view.root_causes[0].explanation)
    assert view.root_causes[0].cause == "none" and view.root_causes[0].confidence > 0


def test_a_scripted_blind_check_of_the_alert_metric_is_inconclusive(harness) -> None:
    from tools.result import CheckResult

    blind = CheckResult(
        check="calibration",
        verdict="inconclusive",
        summary="Calibration of experiment 879 could not rule out a change of ±25%.",
        experiment="879",
    )
    h = harness(FakeToolbox({"calibration@experiment:879": blind}, onset=at(150)))
    view = h.investigator().investigate(alert(metric="calibration"))
    _not_an_all_clear(view, "inconclusive", "could not rule out a change of ±25%")
    # The same blind calibration check behind a revenue alert leaves the others to answer, but
    # the report names what could not be ruled out instead of calling it noise.
    other = h.investigator().investigate(alert(metric="revenue"))
    assert other.status == "completed"
    assert "calibration could not rule out" in other.root_causes[0].explanation
    assert "noise or seasonality" not in other.report_markdown


def test_an_srm_alert_with_a_warning_srm_check_ranks_the_allocation_bug(harness) -> None:
    from tools.result import CheckResult

    possible = CheckResult(
        check="srm",
        verdict="warn",
        summary="Sample ratio mismatch in experiment 879: arm test has 46.9 % of units (p=2e-4).",
        p_value=2e-4,
        experiment="879",
        arm="test",
    )
    h = harness(FakeToolbox({"srm@experiment:879": possible}, onset=at(150)))
    view = h.investigator().investigate(alert(metric="srm"))
    assert view.root_causes[0].cause == "allocation_bug"
    assert view.root_causes[0].confidence < 0.5  # a warning's strength, not a failure's
    assert "noise or seasonality" not in view.report_markdown
    # Too weak to act on: nothing is proposed, and follow-ups confirm or clear it.
    assert view.status == "watching"
    assert not view.mitigations
    assert "only a warning supports allocation_bug" in view.report_markdown


def test_an_ne_failure_is_not_acted_on_while_staleness_cannot_yet_rule_out_a_stale_model(
    harness,
) -> None:
    """NE fails in the test arm while its snapshot is just past its refresh: a stale model would
    explain the NE (and calls for another mitigation), so nothing is proposed until the
    staleness check settles; NE regression still ranks first."""
    from tests.agent.fakes import fail
    from tools.result import CheckResult, Effect

    def staleness(overdue: float, summary: str) -> CheckResult:
        return CheckResult(
            check="staleness",
            verdict="inconclusive",
            summary=summary,
            effect=Effect(
                name="served snapshot age beyond cadence + lag", estimate=overdue, unit="minutes"
            ),
            experiment="879",
            arm="test",
        )

    worse = fail("ne", "NE of experiment 879 rose 6 % in arm test.", experiment="879")
    late = staleness(
        8.0, "Model ctr_v42 may be stale: stale unless a new snapshot serves by 08:40."
    )
    scripted = {"ne@experiment:879": worse}
    h = harness(FakeToolbox({**scripted, "staleness@experiment:879": late}, onset=at(150)))
    view = h.investigator().investigate(alert(metric="ne"))
    assert view.root_causes[0].cause == "ne_regression"
    assert view.status == "watching" and not view.mitigations
    assert "stale_model would explain it and is not ruled out yet" in view.report_markdown
    # With the snapshot known fresh, the same NE failure is acted on.
    settled = harness(FakeToolbox(scripted, onset=at(150)))
    acted = settled.investigator().investigate(alert(metric="ne"))
    assert acted.root_causes[0].cause == "ne_regression"
    assert acted.status == "awaiting_approval" and acted.mitigations
    # A fresh snapshot whose NE shape cannot be told yet is nothing late: the NE finding stands.
    fresh = staleness(-40.0, "Snapshots are fresh; too soon to tell a step from a ramp.")
    unclear = harness(FakeToolbox({**scripted, "staleness@experiment:879": fresh}, onset=at(150)))
    still = unclear.investigator().investigate(alert(metric="ne"))
    assert still.status == "awaiting_approval" and still.mitigations


def test_an_overdue_snapshot_leaves_a_steady_ne_alert_open(harness) -> None:
    from tools.result import CheckResult

    unsure = CheckResult(
        check="staleness",
        verdict="inconclusive",
        summary="Model ctr_v42 may be stale: stale unless a new snapshot serves by 08:40 UTC.",
        experiment="879",
    )
    h = harness(FakeToolbox({"staleness@experiment:879": unsure}, onset=at(150)))
    view = h.investigator().investigate(alert(metric="ne"))
    _not_an_all_clear(view, "inconclusive", "may be stale")
    steady = harness(FakeToolbox({}, onset=at(150))).investigator().investigate(alert(metric="ne"))
    assert steady.status == "completed"


def test_a_steady_alert_metric_that_could_not_show_a_material_change_is_not_an_all_clear(
    harness,
) -> None:
    """The alert says calibration moved; its check saw no change but could only have seen ±25 %,
    not the ±10 % it fails on: the investigation watches, saying what would settle it."""
    from tools.result import CheckResult

    def steady(sees_material: bool) -> CheckResult:
        return CheckResult(
            check="calibration",
            verdict="ok",
            summary="Calibration of experiment 879 is steady: a change of ±19% would have shown.",
            experiment="879",
            params={
                "sees_material": sees_material,
                "material_effect_text": "±10% (calibration ratio)",
                "material_settle_text": "about 40 more minutes of traffic",
            },
        )

    blind = harness(FakeToolbox({"calibration@experiment:879": steady(False)}, onset=at(150)))
    view = blind.investigator().investigate(alert(metric="calibration"))
    _not_an_all_clear(view, "inconclusive", "but not a material change of ±10%")
    assert "about 40 more minutes of traffic would settle it" in view.root_causes[0].explanation
    able = harness(FakeToolbox({"calibration@experiment:879": steady(True)}, onset=at(150)))
    assert able.investigator().investigate(alert(metric="calibration")).status == "completed"
    # Behind a revenue alert the calibration check is not the alert's own: it does not hold it.
    other = blind.investigator().investigate(alert(metric="revenue"))
    assert other.status == "completed"
    assert "material change" not in other.report_markdown
