"""Suspects of a global alert come from significant arm-vs-control shifts; the onset from the cause.

A scripted toolbox returns attribution tables with known p-values (Holm-adjusted, as the check
writes them), so the picking rule is tested on its own: significant experiments in order of
evidence, Bonferroni over the metrics scanned, noise never, the largest contributors only when
the alert's metric itself moved. ``cause_onset`` dates the top cause by its own primary check.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Literal

import pytest

from agent._svg import bar_chart, line_chart
from agent.deterministic import cause_onset
from agent.localize import attributed_experiments, localize
from agent.models import Alert, RootCause
from agent.playbook import load_playbooks
from agent.state import CheckOutcome, Suspect
from tests.agent.fakes import at, fail, ok
from tools.result import CheckResult, Evidence

COLUMNS = ["kind", "candidate", "contribution", "share_of_change", "p_value", "p_adjusted"]


def attribution(
    rows: list[tuple[str, float, float, float]], verdict: Literal["ok", "warn", "fail"] = "ok"
) -> CheckResult:
    """An attribution result: ``(candidate, share, p, p_adjusted)`` per experiment arm."""
    table = [["experiment", c, share * 0.001, share, p, q] for c, share, p, q in rows]
    return CheckResult(
        check="attribution",
        verdict=verdict,
        summary="scripted",
        evidence=[Evidence(name="candidates", kind="table", columns=COLUMNS, rows=table)],
    )


class ScriptedToolbox:
    """change_point finds nothing; attribution returns the table scripted per metric."""

    def __init__(self, per_metric: dict[str, CheckResult]) -> None:
        self.per_metric = per_metric
        self.asked: list[str] = []

    def change_point(self, **_: Any) -> CheckResult:
        return ok("change_point")

    def attribution(self, metric: str, **_: Any) -> CheckResult:
        self.asked.append(metric)
        return self.per_metric.get(metric, attribution([]))


NOISE = [(f"{900 + k}/test", 1.5 - 0.2 * k, 0.2 + 0.05 * k, 1.0) for k in range(6)]
KNOWN = [str(900 + k) for k in range(20)]


@pytest.fixture(scope="module")
def ranking():
    return load_playbooks().get("ranking")


def _suspects(ranking, per_metric: dict[str, CheckResult]) -> list[str]:
    alert = Alert(metric="ctr", fired_at=at(160))
    loc = localize(alert, ranking, ScriptedToolbox(per_metric), "ctr_v41", KNOWN)
    return [s.id or s.scope for s in loc.suspects if s.scope == "experiment"]


def test_a_significant_shift_is_suspect_whatever_its_share(ranking):
    # 911's arm moved against its control (p_adj 1e-6) though the global CTR rose (share < 0);
    # the noise experiments carry large shares of a change that is mostly noise.
    ctr = attribution([*NOISE, ("911/test", -10.5, 1e-7, 1e-6)])
    assert _suspects(ranking, {"ctr": ctr}) == ["911"]


def test_noise_alone_names_no_suspect(ranking):
    assert _suspects(ranking, {"ctr": attribution(NOISE)}) == []


def test_the_alpha_is_shared_by_the_metrics_scanned(ranking):
    # p_adj 0.004 clears alpha 0.01 alone but not over the five metrics the ranking playbook
    # scans (0.004 x 5 = 0.02).
    ctr = attribution([*NOISE, ("911/test", 0.3, 1e-4, 0.004)])
    assert _suspects(ranking, {"ctr": ctr}) == []
    revenue = attribution([("905/test", 0.9, 1e-8, 1e-7)])
    assert _suspects(ranking, {"ctr": ctr, "revenue": revenue}) == ["905"]


def test_most_significant_first_and_bounded(ranking):
    fallback = attribution([(f"{910 + k}/test", 0.2, 1e-9, 10.0 ** (-9 + k)) for k in range(5)])
    assert _suspects(ranking, {"fallback_rate": fallback}) == ["910", "911", "912"]


def test_largest_contributors_fill_in_only_when_the_alert_metric_moved(ranking):
    moved = attribution(NOISE, verdict="fail")
    assert _suspects(ranking, {"ctr": moved}) == ["900", "901", "902"]
    assert _suspects(ranking, {"ctr": attribution(NOISE, verdict="ok")}) == []


def test_attributed_experiments_order_by_adjusted_evidence():
    result = attribution([("900/test", 3.5, 0.9, 1.0), ("911/test", -10.5, 1e-7, 1e-6)])
    assert [a.experiment for a in attributed_experiments(result)] == ["911", "900"]


def _outcome(subject: Suspect, result: CheckResult) -> CheckOutcome:
    return CheckOutcome(key=f"{result.check}@{subject.key}", subject=subject, result=result)


def test_onset_comes_from_the_top_causes_primary_check_on_its_subject():
    model = Suspect(scope="model", id="ctr_v41")
    other = Suspect(scope="experiment", id="879")
    outcomes = [
        # Plan order puts calibration and NE first; another subject failed earlier still.
        _outcome(other, fail("ne", "worse", onset=at(90))),
        _outcome(model, fail("calibration", "drifts", onset=at(150))),
        _outcome(model, fail("ne", "drifts", onset=at(160))),
        _outcome(model, fail("staleness", "missed its refresh", arm=None, onset=at(120))),
    ]
    cause = RootCause(
        cause="stale_model",
        model="ctr_v41",
        confidence=0.9,
        evidence=["staleness", "ne", "calibration"],
    )
    assert cause_onset(cause, outcomes) == at(120)
    # Without a dated primary finding, the next cited check on the same subject dates it.
    assert cause_onset(cause, outcomes[:3]) == at(160)
    assert cause_onset(cause, outcomes[:1]) is None


def test_svg_charts_are_well_formed_escaped_and_break_at_gaps():
    nan = float("nan")
    xs = [1_790_000_000.0 + 60 * i for i in range(6)]
    svg = line_chart(
        [("test <b>", xs, [1.0, 2.0, nan, 2.0, 3.0, 1.0]), ("control", xs, [1.0] * 6)],
        "ctr & more",
        marker=xs[3],
    )
    assert svg is not None
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 3  # the NaN splits the first line in two
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "test <b>" in texts and "ctr & more" in texts
    assert line_chart([("x", xs, [nan] * 6)], "empty") is None
    bars = bar_chart(["911 (97%)", "900 (3%)"], [6.0, 0.1], "Attribution", "-log10 p")
    assert bars is not None
    assert len(ET.fromstring(bars).findall(f"{ns}rect")) == 3  # background + two bars


@pytest.mark.parametrize(
    ("first", "onset", "start"),
    [
        (None, None, 40),  # telemetry older than the look-back: the search window as is
        (0, None, 44),  # world born at minute 0, alert at 118: half the spare minutes as baseline
        (0, 79, 79),  # an onset well after the first row: the window starts there
        (0, 5, 10),  # an onset too close to the first row keeps ten baseline minutes
    ],
)
def test_the_checks_window_leaves_a_baseline_when_the_telemetry_starts_late(
    first: int | None, onset: int | None, start: int
) -> None:
    from agent.localize import _check_window
    from agent.state import Window

    playbook = load_playbooks().get("ranking")  # look-back 120, at least 30, baseline 120
    search = Window(start=at(-2), end=at(118))
    if first is None:
        search = Window(start=at(40), end=at(160))
    window = _check_window(
        search,
        at(onset) if onset is not None else None,
        playbook,
        at(first) if first is not None else None,
    )
    assert window.start == at(start)
    assert window.end == search.end
