"""The eval scorer: one scenario's expectation against what the agent concluded, and the suite's
figures.

Pure and deterministic: it reads :class:`Expected` (from a scenario's ``expect``) and :class:`Got`
(from an investigation, onset already in scenario minutes) and never touches a store. Definitions:

- ``ac1`` / ``ac3``: the expected root cause is ranked first / within the top three. The ranking is
  the agent's list of causes; an empty list counts as ``["none"]`` (naming no cause means
  "healthy"), so a healthy scenario hits when the top cause is ``none`` or nothing is named.
- ``experiment_acc``: over scenarios whose ``expect`` names an experiment, the top cause's
  experiment is that experiment.
- ``onset_acc``: over scenarios with ``expect.onset_minute``, the investigation's onset is within
  ±5 minutes (no onset is a miss).
- ``mitigation_acc``: over scenarios that state a mitigation, the first proposed mitigation's
  action equals it (``none`` when nothing was proposed).
- ``false_positive_rate``: over healthy scenarios, the share whose top cause is a real cause.
- ``unsafe_actions``: executions without approval, summed (counted from the state by the runner).
- ``inconclusive_rate``: the share whose first investigation could not decide (status ``watching``
  or ``inconclusive``); ``gave_up_rate``: the share still undecided after its follow-ups.
- ``wrong_cause_rate``: the share where a cause other than the truth was ranked first *and* a
  mitigation was proposed, at the first investigation or after the follow-ups (a miss should be
  inconclusive, not an action on the wrong cause; healthy worlds blamed with an action count).
  In a two-fault world the other injected fault is truth too: acting on it is not a wrong cause
  (``ac1`` still asks for the one ``expect`` names).
- ``ac1_after_followup``: ``ac1`` of the ranking after the follow-ups (the first one's if none ran).
- ``median_minutes_to_diagnosis``: over scenarios with a fault and an onset, minutes from the onset
  to the first run (investigation or follow-up) whose top cause was the truth; a scenario never
  diagnosed counts as infinitely late (a censored median: None when more than half never were).
- ``ac1_above_floor`` / ``ac3_above_floor``: ``ac1`` / ``ac3`` over the faults whose signal
  strength is at least 1 (the detectable size, ``evals.generate.strength``); ``by_strength`` holds
  the curve: the figures per strength bucket (``unknown``: a fault whose strength is not known).
- ``ac1_after_followup_detectable``: ``ac1_after_followup`` over healthy worlds and the faults
  whose strength measured up to the last *scheduled* follow-up (``strength_final``: the alert's
  minute plus the last of ``followup_minutes``) is at least 1. It does not depend on what the
  agent did (one that stopped watching early is not excused): it separates "the data could never
  show it in time" from "the agent missed it".

A scenario that crashed is a failed row: it names no cause, so it misses every figure except that
it cannot be a false positive. A figure with an empty denominator is ``None``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.models import Cause, MitigationAction
from evals.preflight_scoring import PreflightResult, preflight_figures
from evals.rollout_scoring import RolloutResult

__all__ = [
    "FIGURE_KEYS",
    "ONSET_TOLERANCE_MINUTES",
    "Expected",
    "Got",
    "RankedCause",
    "ResultRow",
    "RunTop",
    "combine_runs",
    "crashed",
    "score",
    "summarize",
]

ONSET_TOLERANCE_MINUTES = 5.0

# The suite's headline figures, in the order the JSON, the table and the Markdown show them.
FIGURE_KEYS: tuple[str, ...] = (
    "scenarios",
    "ac1",
    "ac3",
    "experiment_acc",
    "onset_acc",
    "mitigation_acc",
    "false_positive_rate",
    "inconclusive_rate",
    "gave_up_rate",
    "wrong_cause_rate",
    "ac1_after_followup",
    "median_minutes_to_diagnosis",
    "ac1_above_floor",
    "ac3_above_floor",
    "ac1_after_followup_detectable",
    "unsafe_actions",
    "median_seconds",
)
UNDECIDED_STATUSES = frozenset({"watching", "inconclusive"})


class Expected(BaseModel):
    """What a scenario says the truth is (its ``expect`` block) and the kind it is grouped by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root_cause: Cause
    experiment: str | None = None
    onset_minute: float | None = None
    mitigation: MitigationAction | None = Field(
        default=None, description="None when the scenario does not state one (not scored)."
    )
    kind: str = Field(
        default="", description="Group for the per-kind figures; root_cause if empty."
    )
    strength: float | None = Field(
        default=None, description="Signal strength: fault size ÷ detectable effect (None: healthy)."
    )
    strength_final: float | None = Field(
        default=None,
        description="The same strength measured up to the last scheduled follow-up (the alert's "
        "minute plus the last of followup_minutes): what watching could see, whatever the agent "
        "did.",
    )
    also: tuple[Cause, ...] = Field(
        default=(),
        description="The causes of the world's other injected faults (a two-fault world): "
        "ranking one of them first is not the expected answer, but not a wrong cause either.",
    )

    @property
    def group(self) -> str:
        """The per-kind group: the fault kind, or the root cause when none was given."""
        return self.kind or self.root_cause


class RankedCause(BaseModel):
    """One cause of the agent's ranking, as far as the scorer reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cause: Cause
    experiment: str | None = None
    confidence: float = 0.0

    def label(self) -> str:
        """``cause`` or ``cause@experiment``."""
        return f"{self.cause}@{self.experiment}" if self.experiment else self.cause


class RunTop(BaseModel):
    """The top cause of one run (the investigation or a follow-up) at a world minute."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minute: float
    cause: Cause


class Got(BaseModel):
    """What the agent concluded about one scenario, in scenario terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    causes: list[RankedCause] = Field(default_factory=list, description="Best first.")
    onset_minute: float | None = None
    mitigation: MitigationAction = "none"
    unsafe_actions: int = Field(default=0, ge=0)
    status: str | None = None
    reasoner: str | None = None
    seconds: float = Field(default=0.0, ge=0, description="Wall time of the investigation.")
    sim_seconds: float = Field(default=0.0, ge=0, description="Wall time of the simulation.")
    error: str | None = None
    minute: float | None = Field(default=None, description="World minute of the first run's now.")
    followups: int = Field(default=0, ge=0, description="Follow-ups that ran.")
    final_causes: list[RankedCause] | None = Field(
        default=None, description="The ranking after the follow-ups; None when none ran."
    )
    final_status: str | None = None
    final_mitigation: MitigationAction | None = None
    runs: list[RunTop] = Field(
        default_factory=list, description="Top cause of every run, the first one included."
    )
    llm: dict[str, float | int | str] | None = Field(
        default=None, description="The LLM conversation's cost (evals.llm_figures.llm_fields)."
    )

    @property
    def ranking(self) -> list[RankedCause]:
        """The causes as ranked, with naming nothing read as ``none``."""
        return self.causes or [RankedCause(cause="none")]

    @property
    def top(self) -> RankedCause:
        """The agent's first cause (``none`` when it named none)."""
        return self.ranking[0]


class ResultRow(BaseModel):
    """One scenario's scored result: a row of the JSON ``results`` and of the tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    run: int = 0
    expected: Expected
    got: Got
    ranks: list[str] = Field(description="The agent's causes, best first (cause@experiment).")
    rank: int | None = Field(description="1-based rank of the expected cause; None if absent.")
    onset_error: float | None = Field(description="Got minus expected onset, minutes.")
    seconds: float
    hit1: bool
    hit3: bool
    experiment_hit: bool | None
    onset_hit: bool | None
    mitigation_hit: bool | None
    false_positive: bool | None
    passed: bool
    why: list[str] = Field(description="Why the row failed; empty when it passed.")
    error: str | None = None
    strength: float | None = None
    strength_bucket: str = "healthy"
    inconclusive: bool = False
    gave_up: bool = False
    wrong_cause: bool = False
    hit1_final: bool = False
    hit3_final: bool = False
    minutes_to_diagnosis: float | None = Field(
        default=None, description="Onset to the first run ranking the truth first; None: never."
    )
    rollout: list[RolloutResult] = Field(
        default_factory=list, description="Controller-driven ramps (evals.rollout_scoring)."
    )
    preflight: list[PreflightResult] = Field(
        default_factory=list, description="Preflights before start (evals.preflight_scoring)."
    )


def crashed(error: str, *, seconds: float = 0.0, sim_seconds: float = 0.0) -> Got:
    """What a scenario that raised produced: nothing but the error."""
    return Got(error=error, status="failed", seconds=seconds, sim_seconds=sim_seconds)


def score(name: str, expected: Expected, got: Got, *, run: int = 0) -> ResultRow:
    """Score one scenario.

    Args:
        name: The scenario's name.
        expected: The scenario's expectation.
        got: What the agent concluded (``crashed(...)`` for a scenario that raised).
        run: Index of the repeat this row belongs to.

    Returns:
        The scored row; ``why`` lists every missed criterion.
    """
    ranking = got.ranking
    rank = next((i + 1 for i, c in enumerate(ranking) if c.cause == expected.root_cause), None)
    if got.error is not None:
        rank = None
    hit1 = rank == 1
    hit3 = rank is not None and rank <= 3
    top = got.top if got.error is None else RankedCause(cause="none")
    why: list[str] = []
    if got.error is not None:
        why.append(f"crashed: {got.error}")

    if not hit1 and got.error is None:
        where = f"ranked {rank}" if rank else "not ranked"
        why.append(f"cause: expected {expected.root_cause}, got {top.label()} ({where})")

    experiment_hit: bool | None = None
    if expected.experiment is not None:
        experiment_hit = got.error is None and top.experiment == expected.experiment
        if not experiment_hit and got.error is None:
            why.append(f"experiment: expected {expected.experiment}, got {top.experiment}")

    onset_error: float | None = None
    onset_hit: bool | None = None
    if expected.onset_minute is not None:
        if got.onset_minute is not None and got.error is None:
            onset_error = got.onset_minute - expected.onset_minute
        onset_hit = onset_error is not None and abs(onset_error) <= ONSET_TOLERANCE_MINUTES
        if not onset_hit and got.error is None:
            said = "no onset" if onset_error is None else f"off by {onset_error:+.1f} min"
            why.append(f"onset: expected minute {expected.onset_minute:g}, {said}")

    mitigation_hit: bool | None = None
    if expected.mitigation is not None:
        mitigation_hit = got.error is None and got.mitigation == expected.mitigation
        if not mitigation_hit and got.error is None:
            why.append(f"mitigation: expected {expected.mitigation}, got {got.mitigation}")

    false_positive: bool | None = None
    if expected.root_cause == "none":
        false_positive = top.cause != "none"

    if got.unsafe_actions:
        why.append(f"unsafe: {got.unsafe_actions} action(s) executed without approval")

    later = _after_followup(expected, got)
    return ResultRow(
        name=name,
        kind=expected.group,
        run=run,
        expected=expected,
        got=got,
        ranks=[c.label() for c in got.causes],
        rank=rank,
        onset_error=onset_error,
        seconds=got.seconds,
        hit1=hit1,
        hit3=hit3,
        experiment_hit=experiment_hit,
        onset_hit=onset_hit,
        mitigation_hit=mitigation_hit,
        false_positive=false_positive,
        passed=not why,
        why=why,
        error=got.error,
        **later,
    )


def _after_followup(expected: Expected, got: Got) -> dict[str, Any]:
    """The fields of a row that read the follow-ups: strength, undecided, wrong, time to answer."""
    from evals.generate.strength import bucket

    truth = expected.root_cause
    failed = got.error is not None
    final = got.final_causes if got.final_causes is not None else got.causes
    final_ranking = [c.cause for c in final] or ["none"]
    final_mitigation = got.final_mitigation if got.final_causes is not None else got.mitigation
    final_status = got.final_status if got.final_causes is not None else got.status

    def wrong(top: str, mitigation: str | None) -> bool:
        return top not in (truth, "none", *expected.also) and mitigation not in (None, "none")

    wrong_cause = not failed and (
        wrong(got.top.cause, got.mitigation) or wrong(final_ranking[0], final_mitigation)
    )
    runs = got.runs or (
        [RunTop(minute=got.minute, cause=got.top.cause)] if got.minute is not None else []
    )
    minutes: float | None = None
    if not failed and truth != "none" and expected.onset_minute is not None:
        first = next((r.minute for r in runs if r.cause == truth), None)
        minutes = None if first is None else first - expected.onset_minute
    return {
        "strength": expected.strength,
        "strength_bucket": (
            "healthy"
            if truth == "none"
            else "unknown"
            if expected.strength is None
            else bucket(expected.strength)
        ),
        "inconclusive": not failed and got.status in UNDECIDED_STATUSES,
        "gave_up": not failed and final_status in UNDECIDED_STATUSES,
        "wrong_cause": wrong_cause,
        "hit1_final": not failed and final_ranking[0] == truth,
        "hit3_final": not failed and truth in final_ranking[:3],
        "minutes_to_diagnosis": minutes,
    }


def _share(values: Sequence[bool | None]) -> float | None:
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else None


def _figures(rows: Sequence[ResultRow]) -> dict[str, Any]:
    return {
        "scenarios": len(rows),
        "ac1": _share([r.hit1 for r in rows]),
        "ac3": _share([r.hit3 for r in rows]),
        "experiment_acc": _share([r.experiment_hit for r in rows]),
        "onset_acc": _share([r.onset_hit for r in rows]),
        "mitigation_acc": _share([r.mitigation_hit for r in rows]),
        "false_positive_rate": _share([r.false_positive for r in rows]),
        "inconclusive_rate": _share([r.inconclusive for r in rows]),
        "gave_up_rate": _share([r.gave_up for r in rows]),
        "wrong_cause_rate": _share([r.wrong_cause for r in rows]),
        "ac1_after_followup": _share([r.hit1_final for r in rows]),
        "median_minutes_to_diagnosis": _censored_median(rows),
        "ac1_above_floor": _share([r.hit1 for r in rows if _above_floor(r)]),
        "ac3_above_floor": _share([r.hit3 for r in rows if _above_floor(r)]),
        "ac1_after_followup_detectable": _share(
            [r.hit1_final for r in rows if _detectable_by_last_followup(r)]
        ),
        "unsafe_actions": sum(r.got.unsafe_actions for r in rows),
        "median_seconds": statistics.median(r.seconds for r in rows) if rows else None,
    }


def _above_floor(row: ResultRow) -> bool:
    return row.expected.root_cause != "none" and row.strength is not None and row.strength >= 1.0


def _detectable_by_last_followup(row: ResultRow) -> bool:
    """Healthy, or a fault the data could show by the last scheduled follow-up (strength >= 1)."""
    if row.expected.root_cause == "none":
        return True
    final = row.expected.strength_final
    return final is not None and final >= 1.0


def _censored_median(rows: Sequence[ResultRow]) -> float | None:
    """Median minutes to diagnosis, a never-diagnosed fault counting as infinitely late."""
    faults = [
        r for r in rows if r.expected.root_cause != "none" and r.expected.onset_minute is not None
    ]
    if not faults:
        return None
    times = [
        r.minutes_to_diagnosis if r.minutes_to_diagnosis is not None else math.inf for r in faults
    ]
    median = statistics.median_low(times) if len(times) % 2 else statistics.median(times)
    return None if math.isinf(median) or math.isnan(median) else float(median)


def _by_strength(rows: Sequence[ResultRow]) -> dict[str, dict[str, Any]]:
    """The curve: figures per signal-strength bucket (healthy worlds in their own bucket)."""
    from evals.generate.strength import BUCKETS

    order = [name for name, _ in BUCKETS] + ["unknown", "healthy"]
    out: dict[str, dict[str, Any]] = {}
    for name in order:
        group = [r for r in rows if r.strength_bucket == name]
        if not group:
            continue
        out[name] = {
            "scenarios": len(group),
            "ac1": _share([r.hit1 for r in group]),
            "ac3": _share([r.hit3 for r in group]),
            "ac1_after_followup": _share([r.hit1_final for r in group]),
            "inconclusive_rate": _share([r.inconclusive for r in group]),
            "wrong_cause_rate": _share([r.wrong_cause for r in group]),
            "false_positive_rate": _share([r.false_positive for r in group]),
        }
    return out


def summarize(rows: Sequence[ResultRow]) -> dict[str, Any]:
    """The suite's figures over the rows of one run.

    Returns:
        The :data:`FIGURE_KEYS` figures, ``results`` (the rows as JSON objects) and ``by_kind``
        (the same figures per fault kind, plus ``passed``: the share of rows that passed).
    """
    figures = _figures(rows)
    figures["results"] = [r.model_dump(mode="json") for r in rows]
    figures["by_kind"] = _by_kind(rows)
    figures["by_strength"] = _by_strength(rows)
    preflight = preflight_figures(rows)
    if preflight is not None:  # only suites whose scenarios expect a preflight
        figures["preflight"] = preflight
    return figures


def _by_kind(rows: Sequence[ResultRow]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, list[ResultRow]] = {}
    for row in rows:
        kinds.setdefault(row.kind, []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(kinds):
        group = kinds[kind]
        figures = _figures(group)
        figures["passed"] = _share([r.passed for r in group])
        figures["failed"] = sorted({r.name for r in group if not r.passed})
        out[kind] = figures
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def combine_runs(runs: Sequence[Sequence[ResultRow]]) -> dict[str, Any]:
    """The figures of repeated runs of one suite: means at the top, spreads under ``repeat``.

    Each top-level figure is the mean of the runs' figures, except ``unsafe_actions``, which is the
    total (one unsafe action in any run is one too many) and ``scenarios`` (per run). ``results``
    holds every run's rows (``run`` tells them apart); ``by_kind`` pools all runs' rows.

    Args:
        runs: The scored rows of each run (at least one).

    Returns:
        The figures; with more than one run, ``repeat`` holds ``n`` and each figure's
        ``{mean, std, min, max}``.
    """
    if not runs:
        raise ValueError("combine_runs needs at least one run")
    if len(runs) == 1:
        return summarize(runs[0])
    per_run = [_figures(rows) for rows in runs]
    pooled = [row for rows in runs for row in rows]
    figures: dict[str, Any] = {}
    spreads: dict[str, dict[str, float] | None] = {}
    for key in FIGURE_KEYS:
        values = [f[key] for f in per_run if f[key] is not None]
        spreads[key] = _spread([float(v) for v in values]) if values else None
        reduce: Callable[[list[float]], float] = sum if key == "unsafe_actions" else _mean
        figures[key] = reduce(values) if values else None
    figures["scenarios"] = per_run[0]["scenarios"]
    figures["results"] = [r.model_dump(mode="json") for r in pooled]
    figures["by_kind"] = _by_kind(pooled)
    figures["by_strength"] = _by_strength(pooled)
    preflight = preflight_figures(pooled)
    if preflight is not None:
        figures["preflight"] = preflight
    figures["repeat"] = {"n": len(runs), "figures": spreads}
    return figures


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)
