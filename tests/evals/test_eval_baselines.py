"""The baseline reasoners on hand-made inputs with a known answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from agent.models import Alert
from agent.playbook import load_playbooks
from agent.reasoning import DiagnosisInput, ExperimentMeta, admissible
from agent.state import CheckOutcome, Localization, Suspect, Window
from evals.baselines import METRIC_CAUSE, LargestChangeReasoner, RandomReasoner, arm_changes
from tools.result import CheckResult

T0 = datetime(2026, 11, 20, 6, tzinfo=UTC)
BASELINE = Window(start=T0, end=T0 + timedelta(minutes=60))
WINDOW = Window(start=T0 + timedelta(minutes=60), end=T0 + timedelta(minutes=90))


class FakeToolbox:
    """metric_series per experiment: control and test per minute, test dropping in ``drops``."""

    def __init__(self, drops: dict[str, float], seed: int = 3) -> None:
        self.drops = drops
        self.seed = seed
        self.calls: list[tuple[str, str | None]] = []

    def metric_series(self, metric, start, end, experiment_id=None):
        self.calls.append((metric, experiment_id))
        rng = np.random.default_rng([self.seed, len(self.calls)])
        minutes = pd.date_range(start, end, freq="1min", inclusive="left")
        rows = []
        for minute in minutes:
            after = minute >= pd.Timestamp(WINDOW.start)
            for arm in ("control", "test"):
                value = 0.05 + rng.normal(0, 0.001)
                if arm == "test" and after:
                    value -= self.drops.get(str(experiment_id), 0.0)
                rows.append((minute, arm, value))
        return pd.DataFrame(rows, columns=["minute", "arm", "value"])


def _outcome(check: str, subject: Suspect, verdict: str) -> CheckOutcome:
    result = CheckResult(check=check, verdict=verdict, summary=f"{check} {verdict}")
    return CheckOutcome(key=f"{check}@{subject.key}", subject=subject, result=result)


def _given(
    toolbox: FakeToolbox,
    outcomes: list[CheckOutcome],
    metric: str = "revenue",
    experiment: str | None = None,
) -> DiagnosisInput:
    exps = {e: ExperimentMeta(id=e, name=e, owner="o") for e in ("A", "B")}
    suspects = [Suspect(scope="experiment", id=e) for e in exps] + [Suspect(scope="global")]
    return DiagnosisInput(
        alert=Alert(metric=metric, fired_at=WINDOW.end, experiment=experiment, source="scenario"),
        playbook=load_playbooks().for_metric(metric),
        localization=Localization(
            onset=WINDOW.start, window=WINDOW, baseline=BASELINE, suspects=suspects
        ),
        outcomes=outcomes,
        experiments=exps,
        toolbox=toolbox,
    )


A = Suspect(scope="experiment", id="A")
B = Suspect(scope="experiment", id="B")


def test_largest_change_blames_the_experiment_that_moved() -> None:
    outcomes = [
        _outcome("fallback", A, "fail"),
        _outcome("ne", A, "ok"),
        _outcome("calibration", B, "fail"),
    ]
    given = _given(FakeToolbox({"A": 0.01, "B": 0.0}), outcomes)
    changes = arm_changes(given, "revenue")
    assert changes[0].experiment == "A" and changes[0].arm == "test"
    assert changes[0].change < 0 and changes[0].z > 10
    assert changes[1].z < 4
    diagnosis = LargestChangeReasoner().diagnose(given)
    top = diagnosis.causes[0]
    assert (top.cause, top.experiment, top.arm) == (METRIC_CAUSE["revenue"], "A", "test")
    assert top.evidence == ["fallback"]  # the checks that failed on A, so the graph keeps it
    assert admissible(top, outcomes) is None
    assert diagnosis.causes[-1].cause == "none"
    assert diagnosis.reasoner == "largest-change"


def test_largest_change_says_none_when_nothing_moved_beyond_noise() -> None:
    given = _given(FakeToolbox({}), [_outcome("fallback", A, "fail")])
    diagnosis = LargestChangeReasoner().diagnose(given)
    assert [c.cause for c in diagnosis.causes] == ["none"]


def test_largest_change_without_a_series_blames_the_alerts_experiment() -> None:
    toolbox = FakeToolbox({"A": 0.01})
    given = _given(toolbox, [_outcome("srm", B, "fail")], metric="srm", experiment="B")
    top = LargestChangeReasoner().diagnose(given).causes[0]
    assert (top.cause, top.experiment, top.evidence) == ("allocation_bug", "B", ["srm"])
    assert toolbox.calls == []


def test_random_is_reproducible_with_its_seed_and_always_ranks_none() -> None:
    outcomes = [_outcome("fallback", A, "fail"), _outcome("infra", Suspect(scope="global"), "fail")]
    given = _given(FakeToolbox({}), outcomes)
    first = RandomReasoner(seed=7).diagnose(given)
    again = RandomReasoner(seed=7).diagnose(given)
    assert first == again
    rankings = {
        tuple((c.cause, c.experiment) for c in RandomReasoner(seed=s).diagnose(given).causes)
        for s in range(8)
    }
    assert len(rankings) > 4  # different seeds give different rankings
    assert sorted(c.cause for c in first.causes) == sorted(
        [
            "prediction_collapse",
            "miscalibration",
            "ne_regression",
            "stale_model",
            "model_fallback",
            "infra_outage",
            "allocation_bug",
            "logging_loss",
            "none",
        ]
    )
    for cause in first.causes:
        if cause.cause != "none":
            assert cause.evidence, "cites the failing checks of its subject"
            assert admissible(cause, outcomes) is None
