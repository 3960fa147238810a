"""The deterministic reasoner: each cause from its verdicts, rule-outs, explanations, healthy."""

from __future__ import annotations

import pytest

from agent.deterministic import rank_causes
from agent.models import Alert
from agent.playbook import load_playbooks
from agent.reasoning import admissible
from agent.state import CheckOutcome, Suspect
from tests.agent.fakes import at, fail, ok
from tools.result import CheckResult, Effect

EXP = Suspect(scope="experiment", id="879")
MODEL = Suspect(scope="model", id="ctr_v41")
ALL = Suspect(scope="global")
CHECKS = ("prediction", "calibration", "ne", "staleness", "fallback", "srm")
# Every arm's calibration rose together: a shared (measurement) cause, not one arm.
LOST_CLICKS = fail(
    "calibration",
    "every arm at once",
    arm=None,
    estimate=1.3,
    unit="ratio",
    params={"scope": "all_arms"},
)


def warn(check: str, summary: str = "a small shift") -> CheckResult:
    return CheckResult(check=check, verdict="warn", summary=summary, p_value=0.005)


def outcomes(subject: Suspect, **verdicts: CheckResult) -> list[CheckOutcome]:
    """Every experiment/model check on ``subject`` (ok unless given) plus infra on all traffic."""
    out = []
    for check in CHECKS:
        if subject.scope == "model" and check == "srm":
            continue
        result = verdicts.get(check) or ok(check)
        out.append(CheckOutcome(key=f"{check}@{subject.key}", subject=subject, result=result))
    infra = verdicts.get("infra") or ok("infra")
    out.append(CheckOutcome(key="infra@global", subject=ALL, result=infra))
    return out


@pytest.fixture(scope="module")
def ranking():
    return load_playbooks().get("ranking")


@pytest.mark.parametrize(
    ("verdicts", "cause"),
    [
        ({"fallback": fail("fallback", "falls back"), "ne": fail("ne", "worse")}, "model_fallback"),
        (
            {"prediction": fail("prediction", "NaN"), "ne": fail("ne", "worse")},
            "prediction_collapse",
        ),
        ({"staleness": fail("staleness", "old"), "ne": warn("ne")}, "stale_model"),
        (
            {"calibration": fail("calibration", "1.4"), "prediction": warn("prediction")},
            "miscalibration",
        ),
        ({"calibration": fail("calibration", "1.4", estimate=1.4, unit="ratio")}, "miscalibration"),
        ({"calibration": LOST_CLICKS}, "logging_loss"),
        ({"ne": fail("ne", "worse")}, "ne_regression"),
        ({"srm": fail("srm", "ratio off")}, "allocation_bug"),
        ({"infra": fail("infra", "errors", arm=None)}, "infra_outage"),
    ],
)
def test_each_cause_ranks_first_from_its_verdicts(ranking, verdicts, cause):
    causes, _ = rank_causes(ranking, [EXP, ALL], outcomes(EXP, **verdicts))
    assert causes[0].cause == cause
    assert admissible(causes[0], outcomes(EXP, **verdicts)) is None
    confidences = [c.confidence for c in causes]
    assert confidences == sorted(confidences, reverse=True)


def test_experiment_cause_is_located_in_the_experiment_and_arm(ranking):
    causes, _ = rank_causes(ranking, [EXP, ALL], outcomes(EXP, fallback=fail("fallback", "x")))
    top = causes[0]
    assert (top.experiment, top.arm, top.model) == ("879", "test", None)
    assert top.evidence[0] == "fallback"


def test_model_cause_is_located_in_the_model(ranking):
    causes, _ = rank_causes(
        ranking, [MODEL, ALL], outcomes(MODEL, prediction=fail("prediction", "x", arm=None))
    )
    assert (causes[0].cause, causes[0].model, causes[0].experiment) == (
        "prediction_collapse",
        "ctr_v41",
        None,
    )


def test_healthy_world_is_none_even_with_warnings(ranking):
    for verdicts in ({}, {"ne": warn("ne"), "calibration": warn("calibration")}):
        causes, ruled = rank_causes(ranking, [EXP, ALL], outcomes(EXP, **verdicts))
        assert [c.cause for c in causes] == ["none"]
        assert causes[0].confidence >= 0.5
        assert ruled == []


def test_an_outage_on_all_traffic_rules_out_blaming_a_model(ranking):
    found = outcomes(
        MODEL,
        fallback=fail("fallback", "falls back", arm=None),
        infra=fail("infra", "errors", arm=None),
    )
    causes, ruled = rank_causes(ranking, [MODEL, ALL], found)
    assert causes[0].cause == "infra_outage"
    assert all(c.model is None for c in causes)
    assert ("model_fallback", ruled[0][1]) in ruled
    assert "infrastructure outage" in ruled[0][1]


def test_an_outage_does_not_explain_a_gap_between_test_arm_and_control(ranking):
    # An outage hits every arm alike; a fallback gap located in the test arm is a second fault.
    found = outcomes(
        EXP, fallback=fail("fallback", "falls back"), infra=fail("infra", "errors", arm=None)
    )
    causes, ruled = rank_causes(ranking, [EXP, ALL], found)
    ranked = {(c.cause, c.experiment) for c in causes}
    assert {("infra_outage", None), ("model_fallback", "879")} <= ranked
    assert "model_fallback" not in {cause for cause, _ in ruled}


def test_a_specific_cause_explains_the_generic_symptom(ranking):
    found = outcomes(EXP, fallback=fail("fallback", "x"), ne=fail("ne", "worse", p=1e-30))
    causes, _ = rank_causes(ranking, [EXP, ALL], found)
    names = [c.cause for c in causes]
    assert names.index("model_fallback") < names.index("ne_regression")
    assert "explained by model_fallback" in causes[names.index("ne_regression")].explanation


def test_changed_predictions_rule_out_logging_loss(ranking):
    found = outcomes(EXP, calibration=LOST_CLICKS, prediction=warn("prediction"))
    causes, ruled = rank_causes(ranking, [EXP, ALL], found)
    assert [c.cause for c in causes] == ["none"]  # all arms moved: not the experiment's doing
    assert [r[0] for r in ruled] == ["logging_loss"]


def test_which_side_moved_is_the_calibration_check_s_to_say(ranking):
    # Every click of the model lost 70 % while a second fault (a noisier model on one ad type)
    # shifts its prediction distribution: the shift is no evidence about the clicks.
    shifted = warn("prediction").model_copy(
        update={"effect": Effect(name="population stability index", estimate=0.36, unit="psi")}
    )
    lost = fail(
        "calibration",
        "clicks per request -76 %, the predictions held",
        arm=None,
        estimate=3.06,
        unit="ratio",
        params={"scope": "subject", "moved": "clicks"},
    )
    causes, ruled = rank_causes(
        ranking, [MODEL, ALL], outcomes(MODEL, calibration=lost, prediction=shifted)
    )
    assert causes[0].cause == "logging_loss" and "logging_loss" not in [r[0] for r in ruled]
    # When the calibration cannot tell, the shift rules lost logs out and supports a
    # miscalibration.
    unsure = lost.model_copy(update={"params": {"scope": "subject"}})
    causes, ruled = rank_causes(
        ranking, [MODEL, ALL], outcomes(MODEL, calibration=unsure, prediction=shifted)
    )
    assert causes[0].cause == "miscalibration"
    assert "logging_loss" not in [c.cause for c in causes]
    # When it saw the predictions move, lost logs are ruled out.
    rose = lost.model_copy(update={"params": {"scope": "subject", "moved": "predictions"}})
    _, ruled = rank_causes(ranking, [MODEL, ALL], outcomes(MODEL, calibration=rose))
    assert "logging_loss" in [r[0] for r in ruled]


@pytest.mark.parametrize(("estimate", "cause"), [(1.4, "logging_loss"), (0.8, "miscalibration")])
def test_lost_clicks_can_only_raise_calibration(ranking, estimate, cause):
    moved = fail(
        "calibration",
        "vs own baseline",
        arm=None,
        estimate=estimate,
        unit="ratio",
        params={"scope": "subject"},
    )
    causes, _ = rank_causes(ranking, [MODEL, ALL], outcomes(MODEL, calibration=moved))
    assert (causes[0].cause, causes[0].model) == (cause, "ctr_v41")


def test_a_finding_in_every_arm_or_the_control_does_not_blame_the_experiment(ranking):
    for arm in (None, "control"):
        found = outcomes(EXP, fallback=fail("fallback", "moved", arm=arm))
        causes, _ = rank_causes(ranking, [EXP, ALL], found, {"879": "control"})
        assert [c.cause for c in causes] == ["none"], arm


def test_stronger_evidence_breaks_ties_between_suspects(ranking):
    other = Suspect(scope="experiment", id="880")
    strong = CheckOutcome(
        key="fallback@experiment:880",
        subject=other,
        result=fail("fallback", "strong", p=1e-20, experiment="880"),
    )
    found = [*outcomes(EXP, fallback=fail("fallback", "weak", p=1e-4)), strong]
    causes, _ = rank_causes(ranking, [EXP, other, ALL], found)
    assert [c.experiment for c in causes[:2]] == ["880", "879"]


def test_admissible_rejects_causes_without_a_failing_check():
    found = outcomes(EXP, fallback=fail("fallback", "x"))
    from agent.models import RootCause

    assert (
        admissible(
            RootCause(
                cause="model_fallback", experiment="879", confidence=0.9, evidence=["fallback"]
            ),
            found,
        )
        is None
    )
    assert "cites no check" in str(
        admissible(RootCause(cause="infra_outage", confidence=0.9), found)
    )
    assert "cites no check" in str(
        admissible(
            RootCause(cause="ne_regression", experiment="879", confidence=0.9, evidence=["ne"]),
            found,
        )
    )
    # A failing check on another experiment is no evidence for this one.
    assert (
        admissible(
            RootCause(
                cause="model_fallback", experiment="880", confidence=0.9, evidence=["fallback"]
            ),
            found,
        )
        is not None
    )
    assert admissible(RootCause(cause="none", confidence=0.9), found) is None


def _alert(metric: str) -> Alert:
    return Alert(metric=metric, fired_at=at(158), experiment="879")  # type: ignore[arg-type]


def test_a_warning_of_the_alerts_own_check_is_a_candidate_not_noise(ranking):
    possible = warn("srm", "Possible issue: units 46.9 % vs a configured 50 %")
    found = outcomes(EXP, srm=possible)
    causes, _ = rank_causes(ranking, [EXP, ALL], found, alert=_alert("srm"))
    assert [c.cause for c in causes][:2] == ["allocation_bug", "none"]
    assert causes[0].experiment == "879" and causes[0].evidence == ["srm"]
    # A warning is weaker evidence than a failure.
    failed, _ = rank_causes(
        ranking, [EXP, ALL], outcomes(EXP, srm=fail("srm", "off")), alert=_alert("srm")
    )
    assert causes[0].confidence < failed[0].confidence
    # The same warning behind an alert on another metric is not what the alert is about: a hint,
    # ranked after ``none`` (noise stays the answer), never dropped.
    other, _ = rank_causes(ranking, [EXP, ALL], found, alert=_alert("revenue"))
    assert [c.cause for c in other] == ["none", "allocation_bug"]
    assert other[1].confidence <= other[0].confidence


@pytest.mark.parametrize(
    ("moved", "cause", "ruled"),
    [
        ("predictions", "miscalibration", "logging_loss"),
        ("clicks", "logging_loss", "miscalibration"),
    ],
)
def test_a_model_calibration_rise_is_blamed_on_the_side_that_moved(ranking, moved, cause, ruled):
    # Σ prediction ÷ Σ label rose 40 % on the production model: predictions up, or clicks down.
    rise = fail(
        "calibration",
        "rose",
        arm=None,
        estimate=1.4,
        unit="ratio",
        params={"moved": moved, "scope": "subject"},
    )
    causes, ruled_out = rank_causes(ranking, [MODEL, ALL], outcomes(MODEL, calibration=rise))
    assert causes[0].cause == cause
    assert ruled in {name for name, _ in ruled_out}
    assert ruled not in {c.cause for c in causes}


def _slope(ratio: float, beyond: bool) -> CheckResult:
    """The NE check's finding that the reliability slope fell to ``ratio`` of its reference."""
    return fail(
        "ne",
        "became over-confident (a noisier model)",
        effect="reliability slope ratio (test ÷ reference)",
        estimate=ratio,
        unit="ratio",
        params={"beyond_rescaling": beyond},
    )


@pytest.mark.parametrize(("beyond", "cause"), [(True, "ne_regression"), (False, "miscalibration")])
def test_a_slope_that_fell_more_than_the_calibration_moved_rules_out_miscalibration(
    ranking, beyond, cause
):
    calibration = fail("calibration", "arm test 0.71 vs control 1.00", estimate=0.71, unit="ratio")
    slope = _slope(0.22, beyond)
    causes, ruled = rank_causes(
        ranking, [EXP, ALL], outcomes(EXP, calibration=calibration, ne=slope)
    )
    assert causes[0].cause == cause
    assert ("miscalibration" in [r[0] for r in ruled]) is beyond


def test_an_overdue_snapshot_explains_clicks_lost_with_predictions_held(ranking):
    lost = fail(
        "calibration",
        "clicks per request -13 %, predictions held",
        arm=None,
        estimate=1.2,
        unit="ratio",
        params={"scope": "subject", "moved": "clicks"},
    )
    found = outcomes(MODEL, calibration=lost, staleness=fail("staleness", "overdue", arm=None))
    causes, _ = rank_causes(ranking, [MODEL, ALL], found)
    names = [c.cause for c in causes]
    assert names[0] == "stale_model"
    assert names.index("logging_loss") > 0


def test_a_warning_of_the_alert_s_own_check_on_the_production_model_is_a_candidate(ranking):
    fallback_warn = CheckResult(
        check="fallback", verdict="warn", summary="fallback 0.18 % from 0.10 %", p_value=1e-9
    )
    found = outcomes(MODEL, fallback=fallback_warn)
    alert = Alert(metric="fallback_rate", fired_at=at(160), source="cli", name="x", summary="x")
    causes, _ = rank_causes(ranking, [MODEL, ALL], found, alert=alert)
    assert (causes[0].cause, causes[0].model) == ("model_fallback", "ctr_v41")
    assert causes[1].cause == "none"  # only a warning: noise stays possible
    # Without the alert on its metric it is no candidate.
    causes, _ = rank_causes(ranking, [MODEL, ALL], found)
    assert causes[0].cause == "none"


def test_a_constant_on_one_slice_explains_that_slice_s_calibration(ranking):
    # The production model stuck at a constant near the mean CTR on web (a low-CTR slice): web's
    # calibration fails too. The collapse is the cause; a rescaling makes no constant, and the
    # collapse's failure is no evidence of one.
    web = {"platform": "web"}
    stuck = fail("prediction", "partly stuck at a constant", arm=None, estimate=48.9, p=1e-30)
    calib = fail("calibration", "1.55 against training", arm=None, estimate=1.55, unit="ratio")
    found = outcomes(
        MODEL,
        prediction=stuck.model_copy(update={"where": web}),
        calibration=calib.model_copy(update={"where": web, "p_value": 1e-40}),
    )
    causes, _ = rank_causes(ranking, [MODEL, ALL], found)
    names = [c.cause for c in causes]
    assert names[0] == "prediction_collapse", names
    assert names.index("miscalibration") > 0
    # A collapse over the whole model does not explain a calibration failure on web alone.
    found = outcomes(MODEL, prediction=stuck, calibration=calib.model_copy(update={"where": web}))
    causes, _ = rank_causes(ranking, [MODEL, ALL], found)
    explained = [c for c in causes if c.cause == "miscalibration"]
    assert explained and "explained by" not in explained[0].explanation


def test_a_small_fallback_does_not_explain_a_large_collapse(ranking):
    # 20 pp of invalid predictions cannot come from a fallback on 0.6 pp of requests: the
    # collapse ranks first. A fallback as large as the collapse still explains it.
    small = outcomes(
        EXP,
        prediction=fail("prediction", "NaN", estimate=20.3),
        fallback=fail("fallback", "falls back", estimate=0.58, p=1e-4),
    )
    causes, _ = rank_causes(ranking, [EXP, ALL], small)
    assert causes[0].cause == "prediction_collapse"
    assert "explained by" not in causes[0].explanation
    large = outcomes(
        EXP,
        prediction=fail("prediction", "stuck", estimate=20.3),
        fallback=fail("fallback", "falls back", estimate=19.0),
    )
    causes, _ = rank_causes(ranking, [EXP, ALL], large)
    names = [c.cause for c in causes]
    assert names.index("model_fallback") < names.index("prediction_collapse")


@pytest.mark.parametrize(("errors_pp", "ruled_out"), [(0.13, False), (15.0, True)])
def test_an_outage_rules_out_a_sample_ratio_mismatch_only_as_large_as_it(errors_pp, ruled_out):
    # One arm missing 21.9 pp of its units cannot come from 0.13 pp more failed requests on
    # every arm; an outage failing 15 pp of all requests can account for it.
    playbook = load_playbooks().get("allocation")
    found = [
        CheckOutcome(
            key="srm@experiment:879",
            subject=EXP,
            result=fail("srm", "arm test short of units", estimate=-21.9),
        ),
        CheckOutcome(
            key="infra@global",
            subject=ALL,
            result=fail("infra", "errors", arm=None, estimate=errors_pp),
        ),
    ]
    alert = Alert(metric="srm", fired_at=at(158), experiment="879")
    causes, ruled = rank_causes(playbook, [EXP, ALL], found, alert=alert)
    assert ("allocation_bug" in {c for c, _ in ruled}) is ruled_out
    if not ruled_out:
        assert [c.cause for c in causes][:2] == ["allocation_bug", "infra_outage"]


def _diagnose(ranking, suspects, found, metric):
    from agent.deterministic import DeterministicReasoner
    from agent.reasoning import DiagnosisInput
    from agent.state import Localization, Window

    alert = Alert(metric=metric, fired_at=at(160), source="cli", name="x", summary="x")
    window = Window(start=at(100), end=at(160))
    loc = Localization(window=window, baseline=Window(start=at(40), end=at(100)), suspects=suspects)
    return DeterministicReasoner().diagnose(DiagnosisInput(alert, ranking, loc, found))


def test_a_warning_that_could_move_the_alerted_metric_is_watched_not_called_noise(ranking):
    # A revenue alert; the production model's calibration only warned: not enough to act on,
    # too much to call noise. The investigation watches it (a follow-up confirms or clears it).
    shifted = CheckResult(
        check="calibration",
        verdict="warn",
        summary="Calibration moved to 0.83. More.",
        p_value=0.009,
    )
    diagnosis = _diagnose(ranking, [MODEL, ALL], outcomes(MODEL, calibration=shifted), "revenue")
    assert diagnosis.causes[0].cause == "none"
    assert diagnosis.conclusion == "inconclusive"
    assert "calibration warned on model:ctr_v41 (Calibration moved to 0.83)" in diagnosis.reason
    # Nothing warned: an all-clear. A warning of a check that cannot move the alert's own
    # metric (NE behind a fallback-rate alert) does not hold it open either.
    assert _diagnose(ranking, [MODEL, ALL], outcomes(MODEL), "revenue").conclusion == "conclusive"
    ne_warn = outcomes(MODEL, ne=warn("ne"))
    assert _diagnose(ranking, [MODEL, ALL], ne_warn, "fallback_rate").conclusion == "conclusive"


def test_an_outage_does_not_rule_out_a_fault_that_began_before_it(ranking):
    # The model went stale at minute 30; errors rose on all traffic from minute 72: both rank.
    stale = fail("staleness", "old", arm=None, onset=at(30), estimate=1.0, unit="h")
    errors = fail("infra", "errors", arm=None, onset=at(72))
    causes, ruled = rank_causes(
        ranking, [MODEL, ALL], outcomes(MODEL, staleness=stale, infra=errors)
    )
    assert {"stale_model", "infra_outage"} <= {c.cause for c in causes}
    assert not any(cause == "stale_model" for cause, _ in ruled)
    # Begun with the outage (within the onsets' slack), the outage explains it.
    along = fail("staleness", "old", arm=None, onset=at(65), estimate=1.0, unit="h")
    causes, ruled = rank_causes(
        ranking, [MODEL, ALL], outcomes(MODEL, staleness=along, infra=errors)
    )
    assert causes[0].cause == "infra_outage"
    assert any(cause == "stale_model" for cause, _ in ruled)
