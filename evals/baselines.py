"""Baseline reasoners, plugged into the agent's graph so that the same scorer measures them.

They implement :class:`agent.reasoning.Reasoner` and run in the same pipeline as the agent's own
reasoners (same localisation, same checks, same admissibility rule, same proposals), so the gap
between their figures and the deterministic reasoner's is the value of the agent's reasoning.

- :class:`LargestChangeReasoner` blames the experiment whose alert metric moved most, test vs
  control, in the window before the alert against the baseline window before that; it names the
  cause most associated with the alert metric (:data:`METRIC_CAUSE`), or ``none`` when no
  experiment moved beyond noise.
- :class:`RandomReasoner` ranks the cause vocabulary in a random order on randomly chosen
  suspects, seeded, so a run is reproducible.

The graph keeps only causes that cite a failing check on their own subject that supports them
(:func:`agent.reasoning.guard`); a baseline (:class:`agent.reasoning.Baseline`) left with no
admissible cause answers ``none``, never the deterministic reasoner's diagnosis.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from agent.localize import SERIES_METRICS
from agent.models import CAUSES, Cause, RootCause
from agent.reasoning import Baseline, DiagnosisInput, failing
from agent.state import Diagnosis, Suspect
from tools.vocabulary import MetricName

__all__ = [
    "BASELINES",
    "METRIC_CAUSE",
    "NOISE_Z",
    "ArmChange",
    "LargestChangeReasoner",
    "RandomReasoner",
    "arm_changes",
    "windows",
]

# The cause a metric's regression is most associated with (the simplest naming rule).
METRIC_CAUSE: Mapping[str, Cause] = {
    "revenue": "ne_regression",
    "ctr": "ne_regression",
    "ne": "ne_regression",
    "calibration": "miscalibration",
    "fallback_rate": "model_fallback",
    "error_rate": "infra_outage",
    "latency_p99": "infra_outage",
    "srm": "allocation_bug",
}
# A change smaller than this many standard errors is noise.
NOISE_Z = 4.0
_MIN_MINUTES = 3


def _none(confidence: float, why: str) -> RootCause:
    return RootCause(cause="none", confidence=confidence, explanation=why)


@dataclass(frozen=True)
class ArmChange:
    """How much one arm's metric moved against control, window vs baseline."""

    experiment: str
    arm: str
    change: float
    z: float


def _diff_series(frame: pd.DataFrame, arm: str, control: str) -> pd.Series:
    wide = frame.pivot_table(index="minute", columns="arm", values="value", aggfunc="mean")
    # A minute where every arm reads 0 has no traffic (e.g. before the telemetry starts).
    wide = wide[(wide.fillna(0.0) != 0.0).any(axis=1)]
    if arm not in wide.columns or control not in wide.columns:
        return pd.Series(dtype=float)
    return (wide[arm] - wide[control]).dropna()


def _z(after: pd.Series, before: pd.Series) -> tuple[float, float]:
    if len(after) < _MIN_MINUTES or len(before) < _MIN_MINUTES:
        return 0.0, 0.0
    change = float(after.mean() - before.mean())
    se = math.sqrt(float(after.var(ddof=1)) / len(after) + float(before.var(ddof=1)) / len(before))
    if not math.isfinite(se) or se <= 0:
        return change, 0.0
    return change, abs(change) / se


def windows(given: DiagnosisInput) -> tuple[datetime, datetime, datetime]:
    """(baseline start, window start, window end) of the comparison.

    The window runs from the localised onset to the alert; when localisation found no onset, it
    is the playbook's shortest window before the alert (the most recent minutes). The baseline is
    the playbook's baseline length before the window.
    """
    loc = given.localization
    end = loc.window.end
    if loc.onset is not None:
        start = loc.window.start
    else:
        start = max(loc.window.start, end - timedelta(minutes=given.playbook.window.min_minutes))
    return start - timedelta(minutes=given.playbook.window.baseline_minutes), start, end


def arm_changes(given: DiagnosisInput, metric: MetricName) -> list[ArmChange]:
    """Every treatment arm's change of ``metric`` against control, largest z first.

    The change is the difference-in-differences of the per-minute metric: (test - control) in the
    window before the alert minus (test - control) in the baseline window before that (see
    :func:`windows`); ``z`` is that change over its standard error. Minutes with no traffic are
    left out.
    """
    changes: list[ArmChange] = []
    if given.toolbox is None:
        return changes
    base_start, start, end = windows(given)
    for exp_id, meta in given.experiments.items():
        frame = given.toolbox.metric_series(metric, base_start, end, experiment_id=exp_id)
        if frame is None or frame.empty:
            continue
        minutes = pd.to_datetime(frame["minute"], utc=True)
        in_window = (minutes >= pd.Timestamp(start)).to_numpy()
        for arm in sorted(set(frame["arm"].astype(str)) - {meta.control}):
            after = _diff_series(frame[in_window], arm, meta.control)
            before = _diff_series(frame[~in_window], arm, meta.control)
            change, z = _z(after, before)
            changes.append(ArmChange(experiment=exp_id, arm=arm, change=change, z=z))
    changes.sort(key=lambda c: (-c.z, c.experiment, c.arm))
    return changes


def _cited(given: DiagnosisInput, subject: Suspect) -> list[str]:
    # Only the planned checks count: the graph judges admissibility on those, not on localize's.
    return sorted(failing(given.outcomes, subject))


class LargestChangeReasoner(Baseline):
    """Blames the experiment with the largest change of the alert metric (a baseline)."""

    name = "largest-change"

    def __init__(self, noise_z: float = NOISE_Z) -> None:
        self.noise_z = noise_z

    def diagnose(self, given: DiagnosisInput) -> Diagnosis:
        """Blame the experiment arm whose alert metric moved most, or ``none``."""
        metric = given.alert.metric
        cause = METRIC_CAUSE[metric]
        if metric in SERIES_METRICS and given.toolbox is not None:
            changes = arm_changes(given, metric)
            top = changes[0] if changes and changes[0].z >= self.noise_z else None
            experiment, arm = (top.experiment, top.arm) if top else (None, None)
            why = (
                f"{metric} of {top.experiment}/{top.arm} moved {top.change:+.4g} vs control "
                f"({top.z:.1f} standard errors)"
                if top
                else f"no experiment's {metric} moved beyond {self.noise_z:g} standard errors"
            )
        else:
            # No per-minute series for this metric: the experiment the alert names, if any.
            experiment, arm = given.alert.experiment, None
            why = f"{metric} has no series; blaming the alert's experiment {experiment}"
        if experiment is None:
            return Diagnosis(causes=[_none(0.5, why)], reasoner=self.name)
        evidence = _cited(given, Suspect(scope="experiment", id=experiment))
        blamed = RootCause(
            cause=cause,
            experiment=experiment,
            arm=arm,
            confidence=0.5,
            evidence=evidence,
            explanation=why,
        )
        return Diagnosis(causes=[blamed, _none(0.5, "otherwise healthy")], reasoner=self.name)


class RandomReasoner(Baseline):
    """Ranks the causes in a seeded random order on random suspects (a baseline).

    Args:
        seed: The same seed and input give the same ranking, whichever process runs it.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def diagnose(self, given: DiagnosisInput) -> Diagnosis:
        """A random ranking of the whole cause vocabulary, ``none`` included.

        ``none`` is always somewhere in the ranking, so when the graph rejects every guess above
        it (no failing check on their subjects), the answer is ``none``.
        """
        rng = random.Random(f"{self.seed}:{given.alert.model_dump_json()}")
        subjects = list(given.localization.suspects) or [Suspect(scope="global")]
        order = list(CAUSES)
        rng.shuffle(order)
        causes: list[RootCause] = []
        for i, cause in enumerate(order):
            confidence = round(1.0 / (i + 2), 3)
            if cause == "none":
                causes.append(_none(confidence, "picked at random"))
                continue
            subject = rng.choice(subjects)
            causes.append(
                RootCause(
                    cause=cause,
                    experiment=subject.id if subject.scope == "experiment" else None,
                    model=subject.id if subject.scope == "model" else None,
                    confidence=confidence,
                    evidence=_cited(given, subject),
                    explanation="picked at random",
                )
            )
        return Diagnosis(causes=causes, reasoner=self.name)


BASELINES: Mapping[str, Any] = {
    LargestChangeReasoner.name: LargestChangeReasoner,
    RandomReasoner.name: RandomReasoner,
}
