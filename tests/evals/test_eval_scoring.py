"""The scorer on hand-made expected/got pairs whose figures are known."""

from __future__ import annotations

import pytest

from evals.scoring import (
    Expected,
    Got,
    RankedCause,
    ResultRow,
    RunTop,
    combine_runs,
    crashed,
    score,
    summarize,
)


def _got(*causes: tuple[str, str | None], onset: float | None = None, mit: str = "none") -> Got:
    return Got(
        causes=[RankedCause(cause=c, experiment=e) for c, e in causes],
        onset_minute=onset,
        mitigation=mit,
        seconds=1.0,
    )


FALLBACK = Expected(
    root_cause="model_fallback", experiment="879", onset_minute=152, mitigation="kill_experiment"
)
HEALTHY = Expected(root_cause="none", mitigation="none")


def test_exact_hit_passes_every_criterion() -> None:
    row = score("a", FALLBACK, _got(("model_fallback", "879"), onset=150, mit="kill_experiment"))
    assert (row.rank, row.hit1, row.hit3) == (1, True, True)
    assert row.experiment_hit and row.onset_hit and row.mitigation_hit
    assert row.onset_error == -2
    assert row.false_positive is None
    assert row.passed and row.why == []
    assert row.ranks == ["model_fallback@879"]


def test_second_rank_is_ac3_not_ac1_and_reads_the_top_experiment() -> None:
    got = _got(
        ("miscalibration", "880"), ("model_fallback", "879"), onset=152, mit="kill_experiment"
    )
    row = score("b", FALLBACK, got)
    assert (row.rank, row.hit1, row.hit3) == (2, False, True)
    assert row.experiment_hit is False  # the top cause blames 880
    assert not row.passed
    assert any(w.startswith("cause:") for w in row.why)
    assert any(w.startswith("experiment:") for w in row.why)


def test_fourth_rank_misses_ac3() -> None:
    got = _got(
        ("ne_regression", None),
        ("stale_model", None),
        ("miscalibration", None),
        ("model_fallback", "879"),
    )
    row = score("c", FALLBACK, got)
    assert (row.rank, row.hit1, row.hit3) == (4, False, False)


@pytest.mark.parametrize(
    ("onset", "hit"), [(157.0, True), (147.0, True), (157.5, False), (146.0, False), (None, False)]
)
def test_onset_tolerance_is_five_minutes_both_ways(onset: float | None, hit: bool) -> None:
    row = score("d", FALLBACK, _got(("model_fallback", "879"), onset=onset, mit="kill_experiment"))
    assert row.onset_hit is hit
    if onset is None:
        assert row.onset_error is None
        assert "no onset" in " ".join(row.why)


def test_scenario_without_onset_or_experiment_is_not_scored_on_them() -> None:
    expected = Expected(root_cause="infra_outage", mitigation="escalate_infra")
    row = score("e", expected, _got(("infra_outage", None), onset=999, mit="escalate_infra"))
    assert row.onset_hit is None and row.onset_error is None
    assert row.experiment_hit is None
    assert row.passed


def test_healthy_naming_nothing_or_none_is_a_hit() -> None:
    empty = score("h1", HEALTHY, _got())
    named_none = score("h2", HEALTHY, _got(("none", None), ("miscalibration", "1")))
    for row in (empty, named_none):
        assert row.hit1 and row.hit3 and row.rank == 1
        assert row.false_positive is False
        assert row.mitigation_hit and row.passed


def test_healthy_blamed_on_a_cause_is_a_false_positive() -> None:
    row = score("h3", HEALTHY, _got(("miscalibration", "1"), ("none", None), mit="kill_experiment"))
    assert row.false_positive is True
    assert row.hit1 is False and row.hit3 is True and row.rank == 2
    assert row.mitigation_hit is False


def test_crash_is_a_failed_row_that_names_the_error() -> None:
    row = score("x", FALLBACK, crashed("ValueError: boom", seconds=0.5))
    assert not row.passed and row.error == "ValueError: boom"
    assert row.why == ["crashed: ValueError: boom"]
    assert (row.hit1, row.hit3, row.experiment_hit, row.onset_hit, row.mitigation_hit) == (
        False,
        False,
        False,
        False,
        False,
    )
    healthy = score("y", HEALTHY, crashed("boom"))
    assert healthy.hit1 is False and healthy.false_positive is False and not healthy.passed


def _suite() -> list[ResultRow]:
    return [
        # hit on everything
        score("f1", FALLBACK, _got(("model_fallback", "879"), onset=153, mit="kill_experiment")),
        # rank 2, onset off by 10, wrong mitigation
        score(
            "f2",
            FALLBACK,
            _got(("ne_regression", "879"), ("model_fallback", "879"), onset=162, mit="ramp_down"),
        ),
        # infra, no experiment/onset stated
        score(
            "i1",
            Expected(root_cause="infra_outage", mitigation="escalate_infra"),
            _got(("infra_outage", None), mit="escalate_infra"),
        ),
        # healthy: correct, then false positive
        score("h1", HEALTHY, _got()),
        score("h2", HEALTHY, _got(("miscalibration", "879"), mit="kill_experiment")),
    ]


def test_summarize_gives_the_known_figures() -> None:
    figures = summarize(_suite())
    assert figures["scenarios"] == 5
    assert figures["ac1"] == pytest.approx(3 / 5)
    assert figures["ac3"] == pytest.approx(4 / 5)
    assert figures["experiment_acc"] == pytest.approx(2 / 2)
    assert figures["onset_acc"] == pytest.approx(1 / 2)
    assert figures["mitigation_acc"] == pytest.approx(3 / 5)
    assert figures["false_positive_rate"] == pytest.approx(1 / 2)
    assert figures["unsafe_actions"] == 0
    assert figures["median_seconds"] == pytest.approx(1.0)
    assert [r["name"] for r in figures["results"]] == ["f1", "f2", "i1", "h1", "h2"]
    by_kind = figures["by_kind"]
    assert set(by_kind) == {"model_fallback", "infra_outage", "none"}
    assert by_kind["model_fallback"]["ac1"] == pytest.approx(0.5)
    assert by_kind["model_fallback"]["failed"] == ["f2"]
    assert by_kind["none"]["false_positive_rate"] == pytest.approx(0.5)
    assert by_kind["infra_outage"]["onset_acc"] is None


def test_empty_denominators_are_none_not_zero() -> None:
    figures = summarize(
        [score("i1", Expected(root_cause="infra_outage"), _got(("infra_outage", None)))]
    )
    assert figures["false_positive_rate"] is None
    assert figures["onset_acc"] is None and figures["experiment_acc"] is None
    assert figures["mitigation_acc"] is None
    assert figures["ac1"] == 1.0


def test_unsafe_actions_fail_the_row_and_add_up() -> None:
    got = _got(("model_fallback", "879"), onset=152, mit="kill_experiment").model_copy(
        update={"unsafe_actions": 2}
    )
    row = score("u", FALLBACK, got)
    assert not row.passed and "unsafe" in row.why[0]
    assert summarize([row, *_suite()])["unsafe_actions"] == 2


def test_fault_kind_groups_rows_when_given() -> None:
    expected = FALLBACK.model_copy(update={"kind": "model_fallback+infra"})
    row = score("k", expected, _got(("model_fallback", "879")))
    assert row.kind == "model_fallback+infra"


def test_repeats_report_means_and_spread() -> None:
    first = _suite()
    second = [
        score(
            r.name,
            r.expected,
            _got(
                (r.expected.root_cause, r.expected.experiment),
                onset=r.expected.onset_minute,
                mit=r.expected.mitigation or "none",
            ),
            run=1,
        )
        for r in first
    ]
    figures = combine_runs([first, second])
    assert figures["scenarios"] == 5
    assert figures["ac1"] == pytest.approx((3 / 5 + 1.0) / 2)
    spread = figures["repeat"]["figures"]["ac1"]
    assert spread["min"] == pytest.approx(0.6) and spread["max"] == pytest.approx(1.0)
    assert spread["std"] > 0
    assert figures["repeat"]["n"] == 2
    assert len(figures["results"]) == 10
    assert {r["run"] for r in figures["results"]} == {0, 1}
    assert combine_runs([first]) == summarize(first)
    with pytest.raises(ValueError, match="at least one run"):
        combine_runs([])


# -- follow-ups, wrong causes, strength ---------------------------------------------------------


def _ranked(*causes: str) -> list[RankedCause]:
    return [RankedCause(cause=c) for c in causes]


NE = Expected(
    root_cause="ne_regression", onset_minute=100, mitigation="rollback_model", strength=1.5
)


def test_a_wrong_cause_with_a_mitigation_is_a_wrong_cause_without_one_is_not() -> None:
    acted = score("w", NE, _got(("miscalibration", None), mit="rollback_model"))
    assert acted.wrong_cause and not acted.hit1
    unsure = score("u", NE, _got(("miscalibration", None), mit="none"))
    assert not unsure.wrong_cause
    healthy_blamed = score("h", HEALTHY, _got(("logging_loss", None), mit="escalate_data"))
    assert healthy_blamed.wrong_cause and healthy_blamed.false_positive
    right = score("r", NE, _got(("ne_regression", None), mit="rollback_model"))
    assert not right.wrong_cause


def test_the_other_fault_of_a_two_fault_world_is_a_miss_not_a_wrong_cause() -> None:
    two = NE.model_copy(update={"also": ("stale_model",)})
    other = score("t", two, _got(("stale_model", None), mit="escalate_data"))
    assert not other.hit1 and not other.wrong_cause
    unrelated = score("x", two, _got(("logging_loss", None), mit="escalate_data"))
    assert unrelated.wrong_cause


def test_watching_then_diagnosed_by_a_follow_up() -> None:
    got = Got(
        causes=[],
        status="watching",
        minute=106,
        followups=2,
        final_causes=_ranked("ne_regression", "stale_model"),
        final_status="awaiting_approval",
        final_mitigation="rollback_model",
        runs=[
            RunTop(minute=106, cause="none"),
            RunTop(minute=116, cause="none"),
            RunTop(minute=126, cause="ne_regression"),
        ],
    )
    row = score("f", NE, got)
    assert row.inconclusive and not row.gave_up
    assert not row.hit1 and row.hit1_final and row.hit3_final
    assert row.minutes_to_diagnosis == 26.0
    assert not row.wrong_cause
    assert (row.strength, row.strength_bucket) == (1.5, "1-2")


def test_a_wrong_cause_acted_on_after_a_follow_up_counts() -> None:
    got = Got(
        status="watching",
        minute=106,
        followups=1,
        final_causes=_ranked("logging_loss"),
        final_status="awaiting_approval",
        final_mitigation="escalate_data",
    )
    row = score("g", NE, got)
    assert row.wrong_cause and not row.hit1_final and row.minutes_to_diagnosis is None


def test_gave_up_is_undecided_not_wrong() -> None:
    got = Got(
        status="watching",
        minute=106,
        followups=3,
        final_causes=[],
        final_status="inconclusive",
        final_mitigation="none",
    )
    row = score("i", NE, got)
    assert row.inconclusive and row.gave_up and not row.wrong_cause and not row.hit1_final


def test_a_first_run_hit_is_diagnosed_at_its_minute_without_follow_ups() -> None:
    row = score(
        "d", NE, Got(causes=_ranked("ne_regression"), status="awaiting_approval", minute=111)
    )
    assert row.hit1_final and row.minutes_to_diagnosis == 11.0 and not row.inconclusive


def test_suite_figures_over_follow_ups_and_strength() -> None:
    def at(name: str, strength: float, first: str, final: str | None, minute: float) -> ResultRow:
        expected = Expected(root_cause="model_fallback", onset_minute=100, strength=strength)
        got = Got(
            causes=_ranked(first),
            status="awaiting_approval" if first != "none" else "watching",
            mitigation="kill_experiment" if first != "none" else "none",
            minute=106,
            followups=1 if final else 0,
            final_causes=_ranked(final) if final else None,
            final_status="awaiting_approval" if final else None,
            final_mitigation="kill_experiment" if final else None,
            runs=[RunTop(minute=106, cause=first)]
            + ([RunTop(minute=minute, cause=final)] if final else []),
        )
        return score(name, expected, got)

    rows = [
        at("a", 5.0, "model_fallback", None, 106),  # diagnosed at once: 6 min
        at("b", 1.2, "none", "model_fallback", 116),  # after a follow-up: 16 min
        at("c", 0.3, "none", "none", 146),  # never: infinitely late
        at("d", 0.7, "infra_outage", None, 106),  # wrong, acted on
        score("e", HEALTHY, Got(causes=_ranked("none"), status="completed", minute=106)),
    ]
    figures = summarize(rows)
    assert figures["ac1"] == pytest.approx(2 / 5)  # a and the healthy e
    assert figures["ac1_after_followup"] == pytest.approx(3 / 5)
    assert figures["inconclusive_rate"] == pytest.approx(2 / 5)  # b, c
    assert figures["gave_up_rate"] == pytest.approx(0.0)  # c's follow-up completed
    assert figures["wrong_cause_rate"] == pytest.approx(1 / 5)
    # Faults: 6, 16, inf, inf -> the censored median of four is (16 + inf) / 2 = inf -> None.
    assert figures["median_minutes_to_diagnosis"] is None
    assert summarize(rows[:3])["median_minutes_to_diagnosis"] == 16.0
    assert figures["ac1_above_floor"] == pytest.approx(1 / 2)  # a hit, b missed at first
    assert figures["ac3_above_floor"] == pytest.approx(1 / 2)
    curve = figures["by_strength"]
    assert list(curve) == ["<0.5", "0.5-1", "1-2", ">=4", "healthy"]
    assert curve["1-2"]["ac1"] == 0.0 and curve["1-2"]["ac1_after_followup"] == 1.0
    assert curve["0.5-1"]["wrong_cause_rate"] == 1.0
    assert curve["healthy"]["false_positive_rate"] == 0.0
    again = combine_runs([rows, rows])
    assert again["wrong_cause_rate"] == pytest.approx(1 / 5)
    assert again["by_strength"]["1-2"]["scenarios"] == 2


def test_detectable_by_the_last_follow_up_does_not_excuse_an_agent_that_stopped_early() -> None:
    """The denominator is set by the data (strength at the last scheduled follow-up), not by
    whether the agent kept watching: a fault that more traffic would have shown counts as a miss
    when the agent called it healthy at once."""

    def fault(name: str, final: float, got: Got) -> ResultRow:
        expected = Expected(
            root_cause="logging_loss", onset_minute=100, strength=0.6, strength_final=final
        )
        return score(name, expected, got)

    stopped = Got(causes=_ranked("none"), status="completed", minute=106)
    watched = Got(
        causes=_ranked("none"),
        status="watching",
        minute=106,
        followups=3,
        final_causes=_ranked("logging_loss"),
        final_status="awaiting_approval",
        final_mitigation="escalate_data",
    )
    rows = [
        fault("stopped-early", 1.4, stopped),  # could have been seen by +40 min: a miss
        fault("watched", 1.4, watched),  # seen by a follow-up: a hit
        fault("never-visible", 0.7, stopped),  # too small even at +40 min: not counted
        score("healthy", HEALTHY, Got(causes=_ranked("none"), status="completed", minute=106)),
    ]
    figures = summarize(rows)
    assert figures["ac1_after_followup_detectable"] == pytest.approx(2 / 3)
    assert figures["ac1_after_followup"] == pytest.approx(2 / 4)


def test_a_generated_two_fault_world_names_its_other_fault() -> None:
    from evals.generate import generate_scenario
    from evals.runner import _expected
    from evals.sim import parse_scenario

    two = next(
        parse_scenario(d)
        for d in map(generate_scenario, range(10020, 10400))
        if len(d["faults"]) == 2 and d["faults"][0]["kind"] != d["faults"][1]["kind"]
    )
    expected = _expected(two)
    assert expected.root_cause == two.faults[0].kind
    assert expected.also == (two.faults[1].kind,)
