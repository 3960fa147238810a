"""Issue 13, the agent side: the scope an alert is judged on, when "no root cause" is an all-clear,
and how warnings rank.

- An alert on an experiment's business metric (revenue, CTR) also examines what every arm shares
  (the production model, all traffic): a cause outside the experiment moves its arms together,
  which no comparison inside it can see.
- A business metric has no check of its own: "no root cause" is an all-clear only when each check
  of a cause that could move it saw, on the experiment or on what its arms share.
- A warning on the alert's own metric is a candidate (CTR: calibration's "clicks per request
  moved, predictions held"); any other warning of a primary signal is ranked, after ``none``.
"""

from __future__ import annotations

from agent.deterministic import rank_causes
from agent.localize import localize
from agent.models import Alert, AlertMetric
from agent.playbook import load_playbooks
from agent.state import CheckOutcome, Suspect
from tests.agent.conftest import alert
from tests.agent.fakes import FakeToolbox, at, fail
from tools.result import CheckResult, Effect

MODEL = Suspect(scope="model", id="ctr_v41")
ALL = Suspect(scope="global")
# Logged clicks fell by a third on the production model; its predictions held.
LOST_CLICKS = fail(
    "calibration",
    "Calibration of model ctr_v41 is 1.5 against its training calibration 1.0.",
    arm=None,
    estimate=1.5,
    unit="ratio",
    params={"scope": "subject", "moved": "clicks"},
)


def _blind(check: str, subject: str) -> CheckResult:
    return CheckResult(
        check=check,
        verdict="inconclusive",
        summary=f"The {check} check of {subject} could not rule out a change of that size.",
    )


def _clicks_warning() -> CheckResult:
    return CheckResult(
        check="calibration",
        verdict="warn",
        summary="Calibration of model ctr_v41 is 1.2 (clicks per request -16 %, predictions held).",
        p_value=1e-3,
        effect=Effect(name="calibration ratio", estimate=1.2, unit="ratio"),
        params={"scope": "subject", "moved": "clicks"},
    )


class _NoChange:
    """change_point finds nothing; nothing else is asked for an experiment's alert."""

    def change_point(self, **_: object) -> CheckResult:
        return CheckResult(check="change_point", verdict="ok", summary="no change")

    def metric_series(self, *_: object, **__: object) -> None:
        return None


def _suspects(metric: str) -> list[str]:
    ranking = load_playbooks().get("ranking")
    found = Alert(metric=metric, fired_at=at(160), experiment="879")  # type: ignore[arg-type]
    loc = localize(found, ranking, _NoChange(), "ctr_v41", ["879"])  # type: ignore[arg-type]
    return [s.key for s in loc.suspects]


def test_a_business_alert_on_an_experiment_also_examines_what_its_arms_share():
    for metric in ("revenue", "ctr"):
        assert _suspects(metric) == ["experiment:879", "model:ctr_v41", "global"]
    # An NE alert is about the experiment's own model comparison: its arms vs its control.
    assert _suspects("ne") == ["experiment:879", "global"]


def test_a_cause_outside_the_alerted_experiment_is_found_and_said(harness):
    h = harness(FakeToolbox({"calibration@model:ctr_v41": LOST_CLICKS}, onset=at(150)))
    view = h.investigator().investigate(alert(metric="ctr"))
    top = view.root_causes[0]
    assert (top.cause, top.model, top.experiment) == ("logging_loss", "ctr_v41", None)
    assert view.status == "awaiting_approval"
    assert "The cause lies outside experiment 879, in model ctr_v41" in view.report_markdown
    assert "no check found a gap between its arms" in view.report_markdown


def test_a_business_alert_is_no_all_clear_while_a_check_saw_nowhere(harness):
    blind = {
        "calibration@experiment:879": _blind("calibration", "experiment 879"),
        "calibration@model:ctr_v41": _blind("calibration", "model ctr_v41"),
    }
    view = harness(FakeToolbox(blind, onset=at(150))).investigator().investigate(alert())
    assert view.status == "watching"
    assert view.root_causes[0].cause == "none" and view.root_causes[0].confidence == 0.0
    assert "could not rule out" in view.root_causes[0].explanation
    # The model's calibration saw: the experiment's blind one is covered, the all-clear stands.
    seen = {"calibration@experiment:879": blind["calibration@experiment:879"]}
    view = harness(FakeToolbox(seen, onset=at(150))).investigator().investigate(alert())
    assert view.status == "completed"
    # A blind SRM check cannot leave a revenue alert open: lost units do not move revenue.
    srm = {"srm@experiment:879": _blind("srm", "experiment 879")}
    view = harness(FakeToolbox(srm, onset=at(150))).investigator().investigate(alert())
    assert view.status == "completed"


def _ranked(metric: str, result: CheckResult) -> list[str]:
    ranking = load_playbooks().get("ranking")
    found = [CheckOutcome(key="calibration@model:ctr_v41", subject=MODEL, result=result)]
    global_alert = Alert(metric=metric, fired_at=at(158))  # type: ignore[arg-type]
    causes, _ = rank_causes(ranking, [MODEL, ALL], found, alert=global_alert)
    return [c.cause for c in causes]


def test_a_warning_on_the_alerts_own_metric_is_a_candidate_others_rank_after_none():
    # CTR is clicks per request: the clicks that moved are the alert's own metric.
    assert _ranked("ctr", _clicks_warning())[:2] == ["logging_loss", "none"]
    # Behind a revenue alert the same warning is ranked, but after noise.
    assert _ranked("revenue", _clicks_warning())[:2] == ["none", "logging_loss"]
    # A rise whose predictions moved is not the CTR: not a candidate of a CTR alert.
    moved = _clicks_warning().model_copy(
        update={"params": {"scope": "subject", "moved": "predictions"}}
    )
    assert _ranked("ctr", moved)[0] == "none"


def test_a_warning_ranked_first_is_watched_not_acted_on(harness):
    box = FakeToolbox({"calibration@model:ctr_v41": _clicks_warning()}, onset=at(150))
    view = harness(box).investigator().investigate(alert(experiment=None, metric="ctr"))
    assert view.root_causes[0].cause == "logging_loss"
    assert view.status == "watching" and not view.mitigations


def _on(subject: Suspect, result: CheckResult) -> CheckOutcome:
    return CheckOutcome(key=f"{result.check}@{subject.key}", subject=subject, result=result)


def _every_arm(check: str, what: str, p: float) -> CheckResult:
    """A warning that ``what`` moved in every arm of experiment 879 at once (a shared cause)."""
    return CheckResult(
        check=check,
        verdict="warn",
        summary=f"{what} moved in every arm of experiment 879 at once, a shared cause.",
        p_value=p,
        params={"scope": "all_arms"},
    )


EXP = Suspect(scope="experiment", id="4375")
BR = {"country": "BR"}


def test_two_faults_rank_by_how_much_of_a_global_alert_each_reaches():
    ranking = load_playbooks().get("ranking")
    # A fallback in one arm of a 5 % experiment, on country=BR only; the production model (which
    # that arm serves) sees it diluted. The model's own predictions are invalid everywhere.
    arm = fail("fallback", "arm3 78 % vs 0 %", arm="arm3", estimate=78.0).model_copy(
        update={"where": BR}
    )
    diluted = fail("fallback", "model 11.7 % vs 0.1 %", arm=None, estimate=11.5).model_copy(
        update={"where": BR}
    )
    invalid = fail("prediction", "4.1 % invalid", arm=None, estimate=4.1)
    found = [_on(EXP, arm), _on(MODEL, diluted), _on(MODEL, invalid)]
    ne_alert = Alert(metric="ne", fired_at=at(158))
    causes, _ = rank_causes(
        ranking, [EXP, MODEL, ALL], found, {"4375": "control"}, ne_alert, {"4375": 0.05}
    )
    ranked = [(c.cause, c.experiment or c.model) for c in causes]
    # The model's invalid predictions reach all of the alert's traffic; a fallback on BR cannot
    # explain invalid predictions everywhere; the model's fallback is the arm's, diluted.
    assert ranked[:3] == [
        ("prediction_collapse", "ctr_v41"),
        ("model_fallback", "4375"),
        ("model_fallback", "ctr_v41"),
    ]
    assert "in experiment 4375" in causes[2].explanation
    # Without the experiment's traffic share, evidence alone orders the two faults; both rank.
    causes, _ = rank_causes(ranking, [EXP, MODEL, ALL], found, {"4375": "control"}, ne_alert)
    assert {("prediction_collapse", "ctr_v41"), ("model_fallback", "4375")} == {
        (c.cause, c.experiment or c.model) for c in causes[:2]
    }


def test_a_model_fault_of_full_size_is_not_blamed_on_an_arm_it_serves():
    ranking = load_playbooks().get("ranking")
    # The model falls back on 12 % of its requests, and so does the arm it serves (vs a control
    # on another model): the model is the source, the experiment's gap is its doing.
    arm = fail("fallback", "arm3 12 % vs 0 %", arm="arm3", estimate=12.0)
    model = fail("fallback", "model 12 % vs 0.1 %", arm=None, estimate=11.9)
    found = [_on(EXP, arm), _on(MODEL, model)]
    causes, _ = rank_causes(ranking, [EXP, MODEL, ALL], found, {"4375": "control"})
    ranked = [(c.cause, c.experiment or c.model) for c in causes]
    assert ranked[:2] == [("model_fallback", "ctr_v41"), ("model_fallback", "4375")]
    assert "in model ctr_v41" in causes[1].explanation
    assert causes[1].confidence < causes[0].confidence


def test_arms_that_moved_together_send_the_investigation_to_what_they_share(harness):
    # An NE alert on experiment 879: its NE check finds every arm worse at once (not one arm's
    # doing); the production model both arms serve has a worse NE against its own baseline.
    together = _every_arm("ne", "NE", 1e-4)
    worse = fail("ne", "NE of model ctr_v41 rose to 0.95 from 0.85.", arm=None, estimate=0.1)
    box = FakeToolbox({"ne@experiment:879": together, "ne@model:ctr_v41": worse}, onset=at(150))
    view = harness(box).investigator().investigate(alert(metric="ne"))
    top = view.root_causes[0]
    assert (top.cause, top.model) == ("ne_regression", "ctr_v41")
    assert "The cause lies outside experiment 879, in model ctr_v41" in view.report_markdown
    # Without the shared shift, an NE alert stays with the experiment: the model is not asked.
    box = FakeToolbox({"ne@model:ctr_v41": worse}, onset=at(150))
    view = harness(box).investigator().investigate(alert(metric="ne"))
    assert view.root_causes[0].cause == "none"
    assert not any(kw.get("model_id") for _, kw in box.calls)


def test_a_control_arm_that_alone_left_its_baseline_is_the_experiment_s_fault(harness):
    # A calibration alert on experiment 879 whose control arm over-predicts 1.7x since the onset
    # while its test arm held (the engine's ``control_moved``). The production model the control
    # serves is examined too: it moved 1.1x, the control's fault diluted in it.
    control = fail(
        "calibration",
        "arm test 0.98 vs control 1.70",
        arm="control",
        estimate=0.58,
        unit="ratio",
        params={"scope": "arm", "control_moved": True},
    )
    diluted = fail("calibration", "model 1.1 vs 1.0", arm=None, estimate=1.1, unit="ratio")
    box = FakeToolbox(
        {"calibration@experiment:879": control, "calibration@model:ctr_v41": diluted},
        onset=at(150),
    )
    view = harness(box).investigator().investigate(alert(metric="calibration"))
    assert any(kw.get("model_id") == "ctr_v41" for _, kw in box.calls)
    ranked = [(c.cause, c.experiment or c.model) for c in view.root_causes[:2]]
    assert ranked == [("miscalibration", "879"), ("miscalibration", "ctr_v41")]
    assert view.mitigations and view.mitigations[0].action == "kill_experiment"
    # The model moved as far as the control: the control only serves the model's fault.
    shared = diluted.model_copy(
        update={"effect": diluted.effect.model_copy(update={"estimate": 1.7})}  # type: ignore[union-attr]
    )
    box = FakeToolbox(
        {"calibration@experiment:879": control, "calibration@model:ctr_v41": shared},
        onset=at(150),
    )
    view = harness(box).investigator().investigate(alert(metric="calibration"))
    assert (view.root_causes[0].cause, view.root_causes[0].model) == ("miscalibration", "ctr_v41")
    # A gap whose worse side is a control that held its baseline is a better test arm: nothing
    # is blamed, the model is not asked, and the report does not call it noise.
    standing = control.model_copy(update={"params": {"scope": "arm"}})
    box = FakeToolbox({"calibration@experiment:879": standing}, onset=at(150))
    view = harness(box).investigator().investigate(alert(metric="calibration"))
    assert view.root_causes[0].cause == "none"
    assert not any(kw.get("model_id") for _, kw in box.calls)
    assert "no check found a failure" not in view.report_markdown
    assert "calibration (Experiment 879" in view.report_markdown


def test_a_tiny_fallback_does_not_outrank_the_fall_in_clicks_it_cannot_account_for():
    ranking = load_playbooks().get("ranking")
    # Two faults on the production model: 30 % of clicks unlogged (predictions held), and a
    # fallback on 0.16 pp more of its requests. Evidence alone would put the fallback first.
    lost = LOST_CLICKS.model_copy(
        update={"params": {**LOST_CLICKS.params, "ctr_change": -0.30}, "p_value": 1e-5}
    )
    fallback = fail("fallback", "0.26 % vs 0.10 %", arm=None, estimate=0.16, p=1e-12)
    found = [_on(MODEL, lost), _on(MODEL, fallback)]
    by_metric: dict[str, list[str]] = {}
    metrics: tuple[AlertMetric, ...] = ("ctr", "revenue", "fallback_rate")
    for metric in metrics:
        fired = Alert(metric=metric, fired_at=at(158))
        causes, _ = rank_causes(ranking, [MODEL, ALL], found, alert=fired)
        by_metric[metric] = [c.cause for c in causes[:2]]
    # Behind a CTR or revenue alert the fallback could move clicks per request by 0.16 % at
    # most: the lost clicks explain the alert, the fallback still ranks.
    assert by_metric["ctr"] == ["logging_loss", "model_fallback"]
    assert by_metric["revenue"] == ["logging_loss", "model_fallback"]
    # A fallback-rate alert is about the fallback itself: size against clicks does not apply.
    assert by_metric["fallback_rate"] == ["model_fallback", "logging_loss"]
    # A fallback as large as the movement can account for it: evidence orders them again.
    big = fail("fallback", "30 % vs 0.1 %", arm=None, estimate=30.0, p=1e-12)
    causes, _ = rank_causes(
        ranking,
        [MODEL, ALL],
        [_on(MODEL, lost), _on(MODEL, big)],
        alert=Alert(metric="ctr", fired_at=at(158)),
    )
    assert [c.cause for c in causes[:2]] == ["model_fallback", "logging_loss"]


def test_at_equal_evidence_the_finding_on_the_alerted_metric_ranks_first():
    ranking = load_playbooks().get("ranking")
    # Two faults on the production model: a third of its clicks unlogged in Brazil (predictions
    # held: CTR itself fell; confined to one country, so it does not explain NE everywhere) and
    # a worse NE, the stronger p-value. Each has one primary failure.
    worse = fail("ne", "NE rose to 1.31 from 0.91", arm=None, estimate=0.4, unit="NE", p=1e-12)
    lost = LOST_CLICKS.model_copy(update={"p_value": 1e-5, "where": BR})
    found = [_on(MODEL, worse), _on(MODEL, lost)]
    order = {}
    for metric in ("ctr", "ne", "revenue"):
        causes, _ = rank_causes(
            ranking, [MODEL, ALL], found, alert=Alert(metric=metric, fired_at=at(158))
        )
        order[metric] = [c.cause for c in causes[:2]]
    # Behind a CTR alert the lost clicks are the alerted change; the worse NE may explain none.
    assert order["ctr"] == ["logging_loss", "ne_regression"]
    # Behind an NE alert the worse NE is; behind revenue (no check of its own) evidence orders.
    assert order["ne"] == ["ne_regression", "logging_loss"]
    assert order["revenue"] == ["ne_regression", "logging_loss"]


def test_a_cause_on_every_request_does_not_explain_a_symptom_confined_to_one_slice():
    ranking = load_playbooks().get("ranking")
    # Two faults in one arm: its model stopped refreshing (every request), and its predictions
    # are miscalibrated on ios only (the slice scan; diluted below any threshold over the arm).
    ios = {"platform": "ios"}
    stale = fail("staleness", "snapshot 300 min old against a 60-minute refresh", arm="test")
    confined = fail(
        "calibration", "ios 1.9 vs 1.0", arm="test", estimate=1.9, unit="ratio",
        params={"scope": "subject", "moved": "predictions"},
    ).model_copy(update={"where": ios})  # fmt: skip
    everywhere = confined.model_copy(update={"where": {}})
    alert = Alert(metric="calibration", experiment="4375", fired_at=at(158))

    def ranked(found: list[CheckResult]) -> list[tuple[str, bool]]:
        """The top two causes and whether each is explained by one ranked above it."""
        outcomes = [_on(EXP, r) for r in found]
        causes, _ = rank_causes(ranking, [EXP, MODEL, ALL], outcomes, {"4375": "control"}, alert)
        return [(c.cause, "also explained by" in c.explanation) for c in causes[:2]]

    # Confined to ios: two faults, both ranked; the alert's own metric first.
    assert ranked([stale, confined]) == [("miscalibration", False), ("stale_model", False)]
    # On every request of the arm: one fault seen twice, the stale model explains it.
    assert ranked([stale, everywhere]) == [("stale_model", False), ("miscalibration", True)]


def test_a_snapshot_pinned_on_one_slice_owns_the_worse_ne_it_causes():
    ranking = load_playbooks().get("ranking")
    # The production model's ios traffic keeps an old snapshot (staleness locates it on ios);
    # NE of the whole model rose with it. Behind an NE alert the NE check is the alert's own
    # metric, but the stale snapshot's evidence (its age and the NE it worsened) weighs more.
    ios = {"platform": "ios"}
    stale = fail("staleness", "ios keeps a 300-min-old snapshot", arm=None).model_copy(
        update={"where": ios}
    )
    worse = fail("ne", "NE rose to 0.95 from 0.88", arm=None, estimate=0.07, unit="NE", p=1e-12)
    alert = Alert(metric="ne", fired_at=at(158))
    causes, _ = rank_causes(
        ranking, [MODEL, ALL], [_on(MODEL, stale), _on(MODEL, worse)], alert=alert
    )
    assert [c.cause for c in causes[:2]] == ["stale_model", "ne_regression"]


def test_a_noisier_arm_seen_diluted_on_the_model_it_serves_is_the_arm_s():
    # An arm of a 20 % experiment serving the production model turns noisier: its reliability
    # slope falls to 0.43 of control's; the model's, to 0.85 of its baseline. A ratio's size is
    # its distance from 1 (on the log scale): the model's fall is the arm's, diluted.
    ranking = load_playbooks().get("ranking")
    slope = "reliability slope ratio (test ÷ reference)"
    arm = fail("ne", "arm test 0.37 vs 0.87", effect=slope, estimate=0.43, unit="ratio")
    model = fail("ne", "model 0.74 vs 0.87", arm=None, effect=slope, estimate=0.85, unit="ratio")
    ctr = Alert(metric="ctr", fired_at=at(158))
    causes, _ = rank_causes(
        ranking, [EXP, MODEL, ALL], [_on(EXP, arm), _on(MODEL, model)], {"4375": "control"}, ctr
    )
    assert (causes[0].cause, causes[0].experiment) == ("ne_regression", "4375")
    echo = next(c for c in causes if c.cause == "ne_regression" and c.model == "ctr_v41")
    assert "in experiment 4375" in echo.explanation


def test_a_cause_that_cannot_move_the_alerted_metric_ranks_after_one_that_can():
    # Behind a global NE alert: a third of a 5 % experiment arm's predictions invalid, and an
    # outage failing 5 % of requests on BR. The outage reaches all traffic, the arm 5 % of it,
    # but errored requests serve no ad and move no model's NE: the collapse explains the alert.
    ranking = load_playbooks().get("ranking")
    invalid = fail("prediction", "arm test 32.7 % invalid", estimate=32.7)
    outage = fail("infra", "errors 4.9 % vs 0.04 % on BR", arm=None, estimate=4.9).model_copy(
        update={"where": BR}
    )
    found = [_on(EXP, invalid), _on(ALL, outage)]
    for metric, first in (("ne", "prediction_collapse"), ("revenue", "infra_outage")):
        fired = Alert(metric=metric, fired_at=at(158))
        causes, _ = rank_causes(
            ranking, [EXP, MODEL, ALL], found, {"4375": "control"}, fired, {"4375": 0.05}
        )
        names = [c.cause for c in causes]
        assert names[0] == first and {"prediction_collapse", "infra_outage"} <= set(names)


def test_a_cause_confined_to_one_slice_reaches_only_that_slice_s_traffic():
    # Behind a global CTR alert: an arm of a 30 % experiment turned noisier, and an outage fails
    # 2 % of requests on BR, 12 % of all traffic. Both can move CTR; the outage reaches 12 % of
    # the alert's traffic, the experiment 30 %. Unconfined (or its slice's share unknown) the
    # outage reaches everything and comes first.
    ranking = load_playbooks().get("ranking")
    slope = "reliability slope ratio (test ÷ reference)"
    noisier = fail("ne", "arm test 0.40 vs 0.82", effect=slope, estimate=0.49, unit="ratio")
    outage = fail("infra", "errors 1.98 % vs 0.04 % on BR", arm=None, estimate=1.94)
    on_br = outage.model_copy(update={"where": BR, "params": {"where_share": 0.12}})
    ctr = Alert(metric="ctr", fired_at=at(158))
    for infra, first in (
        (on_br, "ne_regression"),
        (outage.model_copy(update={"params": {"where_share": 0.12}}), "infra_outage"),
        (outage.model_copy(update={"where": BR}), "infra_outage"),
        (on_br.model_copy(update={"params": {"where_share": 0.6}}), "infra_outage"),
    ):
        found = [_on(EXP, noisier), _on(ALL, infra)]
        causes, _ = rank_causes(
            ranking, [EXP, MODEL, ALL], found, {"4375": "control"}, ctr, {"4375": 0.3}
        )
        assert [c.cause for c in causes[:2]] == [
            first,
            ({"ne_regression", "infra_outage"} - {first}).pop(),
        ]


def test_clicks_lost_everywhere_are_no_evidence_of_a_model_stale_on_one_platform():
    # Two faults on the production model behind a CTR alert: 61 % of all clicks unlogged (the
    # predictions held), and its snapshot stale on web only. The whole model's calibration and
    # NE moved: evidence of the lost clicks, not of a staleness confined to web.
    stale = fail("staleness", "stale in platform web: 85 min old", arm=None).model_copy(
        update={"where": {"platform": "web"}}
    )
    lost = LOST_CLICKS.model_copy(update={"params": {**LOST_CLICKS.params, "ctr_change": -0.61}})
    worse = CheckResult(
        check="ne", verdict="warn", summary="NE rose to 1.048 from 0.895", p_value=0.0075
    )
    found = [_on(MODEL, stale), _on(MODEL, lost), _on(MODEL, worse)]
    ranking = load_playbooks().get("ranking")
    causes, _ = rank_causes(
        ranking, [MODEL, ALL], found, alert=Alert(metric="ctr", fired_at=at(158))
    )
    assert [c.cause for c in causes[:2]] == ["logging_loss", "stale_model"]
    stale_cause = causes[1]
    assert "calibration:" not in stale_cause.explanation


def test_a_skewed_split_ranks_after_a_fault_that_moves_the_alerted_metric():
    # Behind a global revenue alert: experiment 761's split is off by 20 % (an SRM, the stronger
    # p-value, the larger experiment), and a third of experiment 720's predictions are invalid.
    # A skewed split moves revenue only by its arms' difference; the collapse moves it outright.
    ranking = load_playbooks().get("ranking")
    alloc, collapse = Suspect(scope="experiment", id="761"), Suspect(scope="experiment", id="720")
    srm = fail("srm", "units 40 % vs 50 % configured", arm="test", estimate=10.0, p=1e-30)
    invalid = fail("prediction", "arm test 30 % invalid", estimate=30.0, p=1e-12)
    found = [_on(alloc, srm), _on(collapse, invalid)]
    controls, reach = {"761": "control", "720": "control"}, {"761": 0.4, "720": 0.2}
    for metric, first in (("revenue", "prediction_collapse"), ("srm", "allocation_bug")):
        fired = Alert(metric=metric, fired_at=at(158))
        causes, _ = rank_causes(ranking, [alloc, collapse, ALL], found, controls, fired, reach)
        assert [c.cause for c in causes[:2]] == [
            first,
            ({"prediction_collapse", "allocation_bug"} - {first}).pop(),
        ]


def test_behind_a_fallback_alert_a_stale_model_ranks_after_the_fallback():
    # Two faults on the production model: its snapshot stopped refreshing (staleness, the NE
    # slope and calibration all fail: more evidence) and 15 % of its requests fall back. A stale
    # snapshot still serves every request: it cannot move the fallback rate.
    ranking = load_playbooks().get("ranking")
    stale = fail("staleness", "snapshot 120 min old (30-min cadence)", arm=None, p=1e-20)
    worse = fail("ne", "slope 0.6 vs 0.9", arm=None, estimate=0.66, unit="ratio", p=1e-15)
    off = fail("calibration", "calibration 1.51", arm=None, estimate=1.51, unit="ratio", p=1e-9)
    fallback = fail("fallback", "15 % vs 0.5 %", arm=None, estimate=14.5, p=1e-6)
    found = [_on(MODEL, stale), _on(MODEL, worse), _on(MODEL, off), _on(MODEL, fallback)]
    for metric, first in (("fallback_rate", "model_fallback"), ("ne", "stale_model")):
        fired = Alert(metric=metric, fired_at=at(158))
        causes, _ = rank_causes(ranking, [MODEL, ALL], found, alert=fired)
        assert causes[0].cause == first, [c.cause for c in causes]
        assert {"stale_model", "model_fallback"} <= {c.cause for c in causes[:3]}


def test_errors_one_experiment_arm_owns_are_that_experiment_s_to_kill():
    # An error-rate alert: errors rose on all traffic, and the infra check found the excess in
    # experiment 4375's test arm alone. That is no outage to escalate: the arm's own serving
    # path fails, and killing the experiment ends it.
    from agent.mitigation import propose_for

    infra = load_playbooks().get("infra")
    owned = fail("infra", "excess errors sit in experiment 4375 arm test", arm="test")
    owned = owned.model_copy(update={"experiment": "4375"})
    fired = Alert(metric="error_rate", fired_at=at(158))
    causes, _ = rank_causes(infra, [EXP, MODEL, ALL], [_on(ALL, owned)], {"4375": "control"}, fired)
    assert (causes[0].cause, causes[0].experiment, causes[0].arm) == (
        "infra_outage",
        "4375",
        "test",
    )
    proposals = propose_for("inv-1", causes, infra, [_on(ALL, owned)], {})
    assert [(m.action, m.target) for m in proposals] == [("kill_experiment", "4375")]
    # Spread over all traffic (no arm owns it), it is an outage to escalate.
    spread = fail("infra", "errors 1 % vs 0.05 %", arm=None)
    causes, _ = rank_causes(
        infra, [EXP, MODEL, ALL], [_on(ALL, spread)], {"4375": "control"}, fired
    )
    assert (causes[0].cause, causes[0].experiment) == ("infra_outage", None)
    proposals = propose_for("inv-2", causes, infra, [_on(ALL, spread)], {})
    assert [m.action for m in proposals] == ["escalate_infra"]


def test_a_fault_already_over_is_said_to_be_before_the_action():
    # The arm's fallback ended 20 minutes before the alert: killing the experiment keeps it from
    # returning; the recovery is not the kill's doing, and the proposal says so.
    from agent.mitigation import propose_for

    ranking = load_playbooks().get("ranking")
    over = fail("fallback", "arm test 39.8 % vs 0.1 % from 14:50 to 15:35 UTC", estimate=39.7)
    over = over.model_copy(update={"params": {"ended": "2026-11-18T15:35:00"}})
    fired = Alert(metric="revenue", fired_at=at(158), experiment="4375")
    causes, _ = rank_causes(ranking, [EXP, ALL], [_on(EXP, over)], {"4375": "control"}, fired)
    (proposal,) = propose_for("inv-3", causes, ranking, [_on(EXP, over)], {})
    assert proposal.action == "kill_experiment"
    assert "already ended at 15:35 UTC" in proposal.expected_effect
    live = over.model_copy(update={"params": {}})
    (proposal,) = propose_for("inv-4", causes, ranking, [_on(EXP, live)], {})
    assert "already ended" not in proposal.expected_effect


def test_every_arm_moved_by_another_layer_s_experiment_is_traced_there(harness):
    # A fallback-rate alert on 879: 7.5 pp more fallbacks in every arm of 879 at once (p 1e-12),
    # the production model clean. Experiment 884, in another layer, falls back for 40 % of its
    # test arm, which reaches half of 879's units: attribution of the fallback rate names it.
    together = _every_arm("fallback", "Fallback rate", 1e-12)
    culprit = fail("fallback", "arm test 40 % vs 0.1 %", estimate=39.9)
    results = {"fallback@experiment:879": together, "fallback@experiment:884": culprit}
    box = FakeToolbox(results, onset=at(150), attribution={"fallback_rate": [("884", 80.0, 1e-9)]})
    view = harness(box).investigator().investigate(alert(metric="fallback_rate"))
    top = view.root_causes[0]
    assert (top.cause, top.experiment) == ("model_fallback", "884")
    assert view.mitigations[0].action == "kill_experiment"
    assert view.mitigations[0].target == "884"
    # Nothing found elsewhere: a shift this strong is no noise; the investigation is not closed.
    box = FakeToolbox({"fallback@experiment:879": together}, onset=at(150))
    view = harness(box).investigator().investigate(alert(metric="fallback_rate"))
    assert view.root_causes[0].cause == "none" and view.status != "completed"
    assert "every arm of experiment 879 moved at once" in view.report_markdown


def test_a_model_tested_in_several_experiments_is_the_cause_when_it_fails_in_each(harness):
    # ctr_v42 serves the test arms of 879 and 880. Its slope fell in 879's test arm: 880, which
    # serves it too, is examined. Fallen there as well, and over all of the model's own traffic
    # as far: the model is the cause (roll it back), not 879 (whose kill would leave 880 on it).
    from tests.agent.fakes import FakeCatalog, default_experiments

    slope = "reliability slope ratio (test ÷ reference)"
    arm = fail("ne", "arm test 0.42 vs 0.84", effect=slope, estimate=0.5, unit="ratio")
    own = fail("ne", "model 0.43 vs 0.85", arm=None, effect=slope, estimate=0.51, unit="ratio")
    shared = default_experiments()
    shared["880"] = shared["880"].__class__(
        **{**shared["880"].__dict__, "models": {"control": "ctr_v41", "test": "ctr_v42"}}
    )
    both = {"ne@experiment:879": arm, "ne@experiment:880": arm, "ne@model:ctr_v42": own}
    h = harness(FakeToolbox(both, onset=at(150)))
    h.catalog = FakeCatalog(shared)
    view = h.investigator().investigate(alert(metric="ne"))
    top = view.root_causes[0]
    assert (top.cause, top.model) == ("ne_regression", "ctr_v42")
    assert [(m.action, m.target) for m in view.mitigations] == [("rollback_model", "ctr_v42")]
    # 880 serves the model and holds: the fault is 879's arm's own; the experiment is killed.
    alone = {"ne@experiment:879": arm, "ne@model:ctr_v42": own}
    h = harness(FakeToolbox(alone, onset=at(150)))
    h.catalog = FakeCatalog(shared)
    view = h.investigator().investigate(alert(metric="ne"))
    assert (view.root_causes[0].cause, view.root_causes[0].experiment) == ("ne_regression", "879")
    assert any(kw.get("experiment_id") == "880" for _, kw in h.toolbox.calls)
    assert not any(kw.get("model_id") == "ctr_v42" for _, kw in h.toolbox.calls)


def test_the_alerted_experiment_s_own_fault_ranks_before_one_found_elsewhere():
    # An NE alert on 4375: a third of its test arm's predictions are NaN. Widening found a stale
    # snapshot of a model another experiment serves, with more evidence (staleness, NE and
    # calibration all failing). Each is a fault; the alerted experiment's own explains its alert.
    ranking = load_playbooks().get("ranking")
    nan = fail("prediction", "arm test 32 % invalid", estimate=32.0, p=1e-30)
    model = Suspect(scope="model", id="tower73")
    stale = fail("staleness", "snapshot 130 min old", arm=None, p=1e-20)
    worse = fail("ne", "slope 0.6 vs 0.9", arm=None, estimate=0.66, unit="ratio", p=1e-15)
    off = fail("calibration", "1.4 vs 1.0", arm=None, estimate=1.4, unit="ratio", p=1e-9)
    found = [_on(EXP, nan), _on(model, stale), _on(model, worse), _on(model, off)]
    for named, first in (("4375", "prediction_collapse"), (None, "stale_model")):
        fired = Alert(metric="ne", fired_at=at(158), experiment=named)
        causes, _ = rank_causes(ranking, [EXP, model, ALL], found, {"4375": "control"}, fired)
        assert causes[0].cause == first, [c.cause for c in causes]
        assert {"prediction_collapse", "stale_model"} <= {c.cause for c in causes[:3]}
