"""The deterministic reasoner's candidates, and the rules that say one explains another.

A cause *explains* another's symptom only for the requests it touches (see
:mod:`agent.deterministic`, step 4): same subject (or all traffic), the explaining finding at
least as broad in its dimension values and, in the same unit, at least half as large. One fault
seen on an experiment's arm and on the model it serves is explained by where it comes from: the
arm when the model's effect is a fraction of the arm's, the model when it is as large.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from agent.models import Alert
from agent.playbook import CauseRule
from agent.state import CheckOutcome, Suspect
from tools.result import CheckResult

__all__ = [
    "EXPLAINED_DISCOUNT",
    "EXPLAINS_SHARE",
    "Candidate",
    "accounts_for_clicks",
    "explain",
    "large_enough",
    "measures_alert",
    "primary_effect",
    "reach_of",
    "sized_for_clicks",
]

EXPLAINED_DISCOUNT = 0.4
EXPLAINS_SHARE = 0.5
"""An explaining cause must reach this share of the explained symptom (same unit)."""


@dataclass
class Candidate:
    """A cause matched on one subject, with what supports it and where it ranks."""

    rule: CauseRule
    subject: Suspect
    order: int
    matched: list[CheckOutcome]
    supported: bool
    score: float
    strength: float
    confidence: float
    ruled_out: str | None = None
    explained_by: str | None = None
    warned: bool = False
    on_alert: bool = False
    """A primary failure in the check of the alert's own metric, on the alert's scope."""

    @property
    def tier(self) -> int:
        """0 supported, 1 explained, 2 a candidate (warned on the alert's metric), 3 after none."""
        if self.supported and self.explained_by is None:
            return 0
        if self.supported:
            return 1
        if self.warned:
            return 2
        return 3


def primary_effect(rule: CauseRule, matched: Sequence[CheckOutcome]) -> tuple[float, str] | None:
    """The size and unit of the failing primary finding among ``matched``, when it states one.

    The size is the distance from no effect: a difference's absolute value, a ratio's
    ``|log ratio|`` (a reliability slope at 0.43 of its reference is a larger fall than one at
    0.85; a calibration of 0.5 as far off as one of 2).
    """
    primary = {sig.check for sig in rule.signals if sig.primary}
    for o in matched:
        effect = o.result.effect
        if o.result.check in primary and o.result.verdict == "fail" and effect is not None:
            if effect.unit == "ratio":
                size = abs(math.log(effect.estimate)) if effect.estimate > 0 else math.inf
                return size, effect.unit
            return abs(effect.estimate), effect.unit
    return None


def _primary_effect(c: Candidate) -> tuple[float, str] | None:
    return primary_effect(c.rule, c.matched)


ONSET_SLACK = timedelta(minutes=15)
"""How much earlier than a rule-out finding a symptom must have begun to be none of its doing
(onsets are estimated from noisy minutes; an outage's symptoms begin with it)."""


def began_before(finding: CheckResult, rule: CauseRule, matched: Sequence[CheckOutcome]) -> bool:
    """Whether the cause's failing primary finding began clearly before ``finding`` (by more
    than :data:`ONSET_SLACK`): an outage that started at 03:12 does not explain a model that went
    stale at 02:30, so it does not rule that out (two faults at once are both ranked)."""
    if finding.onset is None:
        return False
    primary = {sig.check for sig in rule.signals if sig.primary}
    return any(
        o.result.check in primary
        and o.result.verdict == "fail"
        and o.result.onset is not None
        and o.result.onset < finding.onset - ONSET_SLACK
        for o in matched
    )


def large_enough(finding: CheckResult, symptom: tuple[float, str] | None) -> bool:
    """Whether ``finding`` is large enough to rule out a cause whose primary finding is
    ``symptom``: when both are shares of requests (pp) it must reach :data:`EXPLAINS_SHARE` of
    it (a 0.1 pp rise of errors on every arm cannot account for one arm missing 20 pp of its
    units). Ratios of different statistics do not compare (a rule-out on them states its own
    size test, as NE's ``beyond_rescaling`` does); without sizes nothing bounds it."""
    effect = finding.effect
    if symptom is None or effect is None or not effect.unit == symptom[1] == "pp":
        return True
    return abs(effect.estimate) >= EXPLAINS_SHARE * symptom[0]


def _can_explain(other: Candidate, c: Candidate) -> bool:
    """Whether ``other`` is large enough to explain ``c``'s symptom.

    A cause explains another's symptom only for the requests it touches: a fallback on 0.6 % of
    requests cannot account for 20 % invalid predictions. When both primary findings are
    measured in the same unit (shares of requests, pp), the explaining one must reach half the
    explained one; otherwise (different units) the playbook's ``explained_by`` stands.
    """
    if not _as_broad(other, c):
        return False
    mine, theirs = _primary_effect(c), _primary_effect(other)
    if mine is None or theirs is None or mine[1] != theirs[1]:
        return True
    return theirs[0] >= EXPLAINS_SHARE * mine[0]


def _where(c: Candidate) -> dict[str, str]:
    """The dimension values the candidate's failing primary finding is located in."""
    primary = {sig.check for sig in c.rule.signals if sig.primary}
    for o in c.matched:
        if o.result.check in primary and o.result.verdict == "fail":
            return dict(o.result.where)
    return {}


def _as_broad(other: Candidate, c: Candidate) -> bool:
    """Whether ``other``'s finding reaches every request of ``c``'s symptom, and only those.

    A fallback on ``country=BR`` cannot explain invalid predictions in every country: the
    explaining finding's dimension values must be the explained one's. Nor can a cause on every
    request (a stale model) explain a symptom confined to one slice (a miscalibration on ios
    only, diluted below any threshold over the arm): what acts on every request would have
    shown its symptom everywhere, and the whole subject is where a check has the most power.
    """
    return _where(other) == _where(c)


def _diluted(model: Candidate, experiment: Candidate) -> bool | None:
    """Whether a model's finding is an experiment arm's same finding, diluted in the model.

    The same cause supported on an experiment's test arm and on a model: a fault of the arm
    reaches only the arm's share of the model's traffic, so the model's effect is a fraction of
    the arm's; a fault of the model moves every arm it serves by its full size (then the
    experiment's gap is the model's doing). Same unit and place only; otherwise undecided (None).
    """
    mine, theirs = _primary_effect(model), _primary_effect(experiment)
    if (
        mine is None
        or theirs is None
        or mine[1] != theirs[1]
        or _where(model) != _where(experiment)
    ):
        return None
    return mine[0] < EXPLAINS_SHARE * theirs[0]


def reach_of(c: Candidate, alert: Alert | None, reach: Mapping[str, float] | None) -> float:
    """How much of a global alert's traffic the candidate's subject can move (1 when unknown).

    Behind a global alert, a cause in an experiment explains at most its share of the change;
    the production model and all traffic reach (nearly) all of it; a cause on all traffic
    confined to a slice (an outage of one country) only that slice's share of the traffic. Only
    supported, unexplained causes are ordered by it: two faults at once rank by how much of the
    alert each explains.
    """
    if alert is None or alert.experiment is not None or c.tier != 0 or reach is None:
        return 1.0
    if c.subject.scope == "global":
        # An outage of one country reaches that country's traffic only. (Not so for a model's
        # slice: its whole-model findings, NE above all, may be the slice's fault diluted, so
        # the slice's share would rank the echo above its source.)
        return _where_share(c)
    share = reach.get(c.subject.id or "") if c.subject.scope == "experiment" else None
    return 1.0 if share is None else share


def _where_share(c: Candidate) -> float:
    """The share of its subject's requests the candidate's failing primary finding is confined to
    (``params["where_share"]``; 1 when it is not confined or does not say)."""
    primary = {sig.check for sig in c.rule.signals if sig.primary}
    for o in c.matched:
        share = o.result.params.get("where_share")
        if (
            o.result.check in primary
            and o.result.verdict == "fail"
            and o.result.where
            and isinstance(share, int | float)
            and 0.0 <= share <= 1.0
        ):
            return float(share)
    return 1.0


CLICK_ALERTS = frozenset({"ctr", "revenue"})
"""Alerted metrics that move with the logged clicks per request."""


def _clicks_moved(c: Candidate) -> float | None:
    """The relative change of clicks per request a failing finding of ``c`` measured."""
    for o in c.matched:
        moved = o.result.params.get("ctr_change")
        if o.result.verdict == "fail" and isinstance(moved, int | float):
            return abs(float(moved))
    return None


def sized_for_clicks(c: Candidate, live: list[Candidate], alert: Alert | None) -> bool | None:
    """Whether ``c`` is large enough to account for the clicks-per-request movement behind a
    CTR or revenue alert, as far as its size tells (None: nothing measures it against one).

    A cause whose primary finding is a share of requests (a fallback, errors, invalid
    predictions: unit pp) moves clicks per request by at most that share, even if every request
    it touched lost every click: a 0.16 pp fallback cannot account for 30 % fewer clicks per
    request that another supported finding on the same requests measured. Such a cause still
    ranks (it is real), after the ones that can.
    """
    if alert is None or alert.metric not in CLICK_ALERTS or c.tier != 0:
        return None
    effect = _primary_effect(c)
    if effect is None or effect[1] != "pp":
        return None
    moved = [
        m
        for other in live
        if other is not c
        and other.tier == 0
        and other.subject.key in (c.subject.key, "global")
        and (m := _clicks_moved(other)) is not None
    ]
    if not moved:
        return None
    return effect[0] / 100.0 >= EXPLAINS_SHARE * max(moved)


def accounts_for_clicks(c: Candidate, live: list[Candidate], alert: Alert | None) -> bool:
    """:func:`sized_for_clicks`, True when nothing bounds the cause."""
    return sized_for_clicks(c, live, alert) is not False


def measures_alert(c: Candidate, live: list[Candidate], alert: Alert | None) -> bool:
    """Whether ``c`` is known to account for the alerted change: its primary failure is in the
    check of the alert's own metric on the alert's scope (``on_alert``: a CTR alert's lost
    clicks), or it is a share of requests as large as the clicks-per-request move
    (:func:`sized_for_clicks`). At equal evidence such a cause ranks before one whose finding
    is on another metric (a worse NE behind a CTR alert), which may explain none of it."""
    return c.on_alert or sized_for_clicks(c, live, alert) is True


def explain(supported: list[Candidate]) -> None:
    """Mark each supported candidate another one explains (in place), discounting it."""
    for c in supported:
        for other in supported:
            same_place = (
                other.subject.key in (c.subject.key, "global") or c.subject.scope == "global"
            )
            if other.rule.cause in c.rule.explained_by and same_place and _can_explain(other, c):
                c.explained_by = other.rule.cause
                c.confidence *= EXPLAINED_DISCOUNT
                break
    for c in supported:
        for other in supported:
            if (
                c.explained_by is not None
                or other.explained_by is not None
                or c.rule.cause != other.rule.cause
                or c.subject.scope != "model"
                or other.subject.scope != "experiment"
            ):
                continue
            diluted = _diluted(c, other)
            if diluted is None:
                continue
            # One fault seen twice: the subject it comes from explains the other's finding.
            source, echo = (other, c) if diluted else (c, other)
            echo.explained_by = f"{source.rule.cause} in {source.subject.scope} {source.subject.id}"
            echo.confidence *= EXPLAINED_DISCOUNT
