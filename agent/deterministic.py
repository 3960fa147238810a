"""The deterministic reasoner: the playbook's rules over check verdicts, no network.

Ranking, in order (each step is a rule of the playbook, never a rule about a scenario):

1. A cause is *matched* on a subject (an experiment, a model, all traffic) when one of its signals
   holds: a check on that subject (or on all traffic) returned one of the signal's verdicts.
2. A cause is *supported* when a **primary** signal failed; a failure of a controlled comparison
   (test arm vs control, model vs its own baseline) is what can blame something. On an
   experiment, a finding counts only when it is located in a non-control arm: a shift of every
   arm at once (or of the control) is not the experiment's doing.
3. A cause is *ruled out* when a rule-out finding holds, e.g. an infrastructure outage on all
   traffic rules out blaming a model; it is reported as ruled out, not ranked. A finding on all
   traffic does not rule out an experiment cause whose primary failure is a gap between a test
   arm and its control: what hits every arm alike cannot open a gap between them (two faults at
   once are both ranked).
4. A supported cause is *explained* when a more specific cause it lists in ``explained_by`` is
   supported on the same subject (a fallback to a weak model also worsens NE); it ranks after.
5. A cause is a *candidate* when its primary signal only warned, on the alerted experiment (all
   traffic for a global alert), in the check of the alert's own metric (an SRM alert whose SRM
   check says "possible issue", an error-rate alert whose infra check warns; for a global alert,
   on all traffic or the production model, which serves most of it):
   evidence that matches the alert is not noise, so it ranks before ``none``, with the lower
   confidence of a warning.
6. Order: supported, then explained, then candidates, then ``none`` unless something ranks
   above, then causes matched only by secondary failures. Ties: the score (signal weights, a
   fail counting twice a warning), then the strength of the evidence (smallest p-value), then
   the suspect's rank.

Confidence is a noisy-OR of the matched signals (a fail of weight 1 counts 0.8, a warning 0.3),
discounted when explained, made non-increasing down the ranking. With no failure at all the
answer is ``none``: noise or seasonality, nothing to mitigate. A candidate ranked first on a
warning alone is *inconclusive*: nothing is proposed and the investigation watches (follow-ups
confirm it with a failure or clear it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.coverage import ALERT_CHECKS
from agent.models import Alert, RootCause
from agent.playbook import CauseRule, Playbook, Signal
from agent.reasoning import DiagnosisInput
from agent.state import CheckOutcome, Diagnosis, Suspect
from tools.result import CheckResult

__all__ = ["DeterministicReasoner", "cause_onset", "rank_causes"]

_FAIL_P = 0.8
_WARN_P = 0.3
_EXPLAINED_DISCOUNT = 0.4
_EXPLAINS_SHARE = 0.5
"""An explaining cause must reach this share of the explained symptom (same unit)."""
_MAX_CONFIDENCE = 0.97
_MAX_CAUSES = 5


@dataclass
class _Candidate:
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

    @property
    def tier(self) -> int:
        if self.supported and self.explained_by is None:
            return 0
        if self.supported:
            return 1
        if self.warned:
            return 2
        return 3


def _primary_effect(c: _Candidate) -> tuple[float, str] | None:
    """The size and unit of the candidate's failing primary finding, when it states one."""
    primary = {sig.check for sig in c.rule.signals if sig.primary}
    for o in c.matched:
        effect = o.result.effect
        if o.result.check in primary and o.result.verdict == "fail" and effect is not None:
            return abs(effect.estimate), effect.unit
    return None


def _can_explain(other: _Candidate, c: _Candidate) -> bool:
    """Whether ``other`` is large enough to explain ``c``'s symptom.

    A cause explains another's symptom only for the requests it touches: a fallback on 0.6 % of
    requests cannot account for 20 % invalid predictions. When both primary findings are
    measured in the same unit (shares of requests, pp), the explaining one must reach half the
    explained one; otherwise (different units) the playbook's ``explained_by`` stands.
    """
    mine, theirs = _primary_effect(c), _primary_effect(other)
    if mine is None or theirs is None or mine[1] != theirs[1]:
        return True
    return theirs[0] >= _EXPLAINS_SHARE * mine[0]


def _subjects(given: DiagnosisInput) -> list[Suspect]:
    subjects = list(given.localization.suspects)
    if not any(s.scope == "global" for s in subjects):
        subjects.append(Suspect(scope="global"))
    return subjects


def _results_for(outcomes: Sequence[CheckOutcome], subject: Suspect) -> dict[str, CheckOutcome]:
    """The subject's own outcomes, plus all-traffic ones it has no own result for."""
    own = {o.result.check: o for o in outcomes if o.subject.key == subject.key and not o.error}
    for o in outcomes:
        if o.subject.scope == "global" and not o.error:
            own.setdefault(o.result.check, o)
    return own


def _strength(outcomes: Sequence[CheckOutcome]) -> float:
    """-log10 of the smallest p-value among failures (capped), 1.0 when none is given."""
    ps = [o.result.p_value for o in outcomes if o.result.verdict == "fail"]
    known = [p for p in ps if p is not None]
    if not known:
        return 1.0 if ps else 0.0
    return min(300.0, -math.log10(max(min(known), 1e-300)))


def _located(sig: Signal, subject: Suspect, result: CheckResult, control: str) -> bool:
    """Whether a finding on ``subject`` may count for ``sig`` (see :class:`Signal`)."""
    if subject.scope != "experiment" or sig.located == "anywhere":
        return True
    return result.arm is not None and result.arm != control


def _as_warning(sig: Signal) -> Signal:
    return sig.model_copy(update={"verdicts": [*sig.verdicts, "warn"]})


def _evaluate(
    rule: CauseRule,
    subject: Suspect,
    order: int,
    results: dict[str, CheckOutcome],
    control: str,
    focus: tuple[frozenset[str], str] | None = None,
) -> _Candidate | None:
    matched: list[CheckOutcome] = []
    supported = False
    warned = False
    score = 0.0
    miss = 1.0
    for sig in rule.signals:
        outcome = results.get(sig.check)
        if outcome is None:
            continue
        # The alert's own check warning on the alerted experiment: the primary signal's finding
        # at a warning's strength (its other conditions still hold).
        candidate = (
            sig.primary
            and focus is not None
            and subject.key in focus[0]
            and sig.check == focus[1]
            and outcome.subject.key == subject.key
            and outcome.result.verdict == "warn"
            and _as_warning(sig).matches(outcome.result)
        )
        if not candidate and not sig.matches(outcome.result):
            continue
        if outcome.subject.key == subject.key and not _located(
            sig, subject, outcome.result, control
        ):
            continue
        fail = outcome.result.verdict == "fail"
        matched.append(outcome)
        supported = supported or (sig.primary and fail)
        warned = warned or candidate
        score += sig.weight * (1.0 if fail else 0.5)
        miss *= 1.0 - sig.weight * (_FAIL_P if fail else _WARN_P)
    if not matched or not (warned or any(o.result.verdict == "fail" for o in matched)):
        return None
    ruled_out = None
    controlled = subject.scope == "experiment" and any(
        sig.primary
        and sig.located == "test_arm"
        and o.result.verdict == "fail"
        and o.subject.key == subject.key
        and o.result.check == sig.check
        and _located(sig, subject, o.result, control)
        for sig in rule.signals
        for o in matched
    )
    for out in rule.ruled_out_by:
        found = results.get(out.check)
        if found is None or not out.matches(found.result):
            continue
        if out.all_traffic and found.result.arm is not None:
            continue
        if out.spares_controlled and controlled and found.subject.key != subject.key:
            continue
        ruled_out = out.reason
        break
    return _Candidate(
        rule=rule,
        subject=subject,
        order=order,
        matched=matched,
        supported=supported,
        score=score,
        strength=_strength(matched),
        confidence=min(_MAX_CONFIDENCE, 1.0 - miss),
        ruled_out=ruled_out,
        warned=warned,
    )


def _explanation(candidate: _Candidate) -> str:
    parts = [f"{o.result.check}: {o.result.summary}" for o in candidate.matched]
    text = " ".join(parts)
    if candidate.explained_by:
        text += f" (also explained by {candidate.explained_by}, which ranks higher)"
    return text


def _root_cause(candidate: _Candidate) -> RootCause:
    primary = next(
        (o for o in candidate.matched if o.result.verdict == "fail"), candidate.matched[0]
    )
    subject = candidate.subject
    return RootCause(
        cause=candidate.rule.cause,
        experiment=subject.id if subject.scope == "experiment" else None,
        model=subject.id if subject.scope == "model" else None,
        arm=primary.result.arm,
        where=dict(primary.result.where),
        confidence=round(candidate.confidence, 3),
        evidence=[o.result.check for o in candidate.matched],
        explanation=_explanation(candidate),
    )


def rank_causes(
    playbook: Playbook,
    suspects: Sequence[Suspect],
    outcomes: Sequence[CheckOutcome],
    controls: Mapping[str, str] | None = None,
    alert: Alert | None = None,
) -> tuple[list[RootCause], list[tuple[str, str]]]:
    """Rank causes by the playbook's rules (see the module docstring).

    Args:
        playbook: Its causes, signals, rule-outs and explanations.
        suspects: The subjects examined, most suspect first.
        outcomes: The check outcomes.
        controls: Experiment id -> its control arm (``control`` when not given).
        alert: What fired; a warning of its own metric's check on its experiment is a
            candidate (None: only failures count).

    Returns:
        The ranked causes (``none`` first when nothing failed) and the ruled-out
        ``(cause, reason)`` pairs.
    """
    candidates: list[_Candidate] = []
    focus = None
    subjects = list(suspects)
    if alert is not None and alert.metric in ALERT_CHECKS:
        # A global alert's scope is all traffic, and the production model serves most of it.
        keys = (
            {"global", *(s.key for s in subjects if s.scope == "model")}
            if alert.experiment is None
            else {f"experiment:{alert.experiment}"}
        )
        focus = (frozenset(keys), ALERT_CHECKS[alert.metric])
    if not any(s.scope == "global" for s in subjects):
        subjects.append(Suspect(scope="global"))
    for order, subject in enumerate(subjects):
        results = _results_for(outcomes, subject)
        for rule in playbook.causes:
            if subject.scope not in rule.scopes:
                continue
            control = (controls or {}).get(subject.id or "", "control")
            found = _evaluate(rule, subject, order, results, control, focus)
            if found is not None:
                candidates.append(found)
    ruled = [c for c in candidates if c.ruled_out is not None]
    live = [c for c in candidates if c.ruled_out is None]
    supported = [c for c in live if c.supported]
    for c in supported:
        for other in supported:
            same_place = (
                other.subject.key in (c.subject.key, "global") or c.subject.scope == "global"
            )
            if other.rule.cause in c.rule.explained_by and same_place and _can_explain(other, c):
                c.explained_by = other.rule.cause
                c.confidence *= _EXPLAINED_DISCOUNT
                break
    live.sort(key=lambda c: (c.tier, -c.score, -c.strength, c.order))
    causes: list[RootCause] = []
    head = [c for c in live if c.tier < 3]
    tail = [c for c in live if c.tier == 3]
    causes = [_root_cause(c) for c in head]
    if not any(c.tier < 2 for c in head):
        # Only warnings, if anything: noise stays possible (below any candidate of the alert's).
        doubt = max((c.confidence for c in head + tail), default=0.0)
        explanation = "No check found a failure: noise or seasonality."
        if head:
            explanation = "Only warnings support the causes above: noise remains possible."
        causes.append(
            RootCause(
                cause="none",
                confidence=round(max(0.5, 1.0 - doubt), 3),
                explanation=explanation,
            )
        )
    causes += [_root_cause(c) for c in tail]
    causes = causes[:_MAX_CAUSES]
    for i in range(1, len(causes)):
        if causes[i].confidence > causes[i - 1].confidence:
            causes[i] = causes[i].model_copy(update={"confidence": causes[i - 1].confidence})
    seen: set[tuple[str, str]] = set()
    ruled_out: list[tuple[str, str]] = []
    for c in ruled:
        pair = (c.rule.cause, c.ruled_out or "")
        if pair not in seen:
            seen.add(pair)
            ruled_out.append(pair)
    return causes, ruled_out


def _subject_key(cause: RootCause) -> str:
    if cause.experiment is not None:
        return f"experiment:{cause.experiment}"
    if cause.model is not None:
        return f"model:{cause.model}"
    return "global"


def cause_onset(cause: RootCause, outcomes: Sequence[CheckOutcome]) -> datetime | None:
    """When ``cause`` started: the onset its own evidence dates, primary signal first.

    The onset comes from a failing check the cause cites (a warning when none fails), on the
    cause's subject (its experiment,
    its model, else all traffic) before any other subject, and in the order of ``cause.evidence``
    (a rule lists its primary signal first). Another subject's failure, or a secondary symptom
    that surfaced later (NE drifting after a model stopped refreshing), does not date the cause.

    Args:
        cause: A ranked cause (its ``evidence`` names the checks that support it).
        outcomes: The check outcomes of the investigation.

    Returns:
        The onset, or None when no failing evidence carries one.
    """
    own = _subject_key(cause)
    cited = [
        o
        for o in outcomes
        if o.result.check in cause.evidence
        and o.result.onset is not None
        and not o.error
        and o.subject.key in (own, "global")
    ]
    # A cause ranked on a warning (the alert's own check) is dated by that warning.
    dated = [o for o in cited if o.result.verdict == "fail"] or [
        o for o in cited if o.result.verdict == "warn"
    ]
    if not dated:
        return None
    best = min(
        dated,
        key=lambda o: (o.subject.key != own, cause.evidence.index(o.result.check)),
    )
    return best.result.onset


class DeterministicReasoner:
    """Ranks causes with the playbook's rules; the narrative comes from the report templates."""

    name = "deterministic"

    def diagnose(self, given: DiagnosisInput) -> Diagnosis:
        """Rank the causes of ``given`` (see :func:`rank_causes`)."""
        controls = {k: v.control for k, v in given.experiments.items()}
        causes, ruled_out = rank_causes(
            given.playbook, _subjects(given), given.outcomes, controls, given.alert
        )
        top = causes[0] if causes else None
        cited = {o.result.check: o.result for o in given.outcomes if not o.error}
        if top is not None and top.cause != "none":
            failing = [
                o
                for o in given.outcomes
                if o.result.check in top.evidence and o.result.verdict == "fail" and not o.error
            ]
            if not failing:
                # A candidate ranked on a warning: not enough to act on, too much to call noise.
                shown = cited.get(top.evidence[0]) if top.evidence else None
                why = f"only a warning supports {top.cause}"
                if shown is not None:
                    why += f" ({shown.summary.rstrip('.')})"
                return Diagnosis(
                    causes=causes,
                    reasoner=self.name,
                    ruled_out=ruled_out,
                    conclusion="inconclusive",
                    reason=why + "; watching for it to confirm or clear",
                )
        return Diagnosis(causes=causes, reasoner=self.name, ruled_out=ruled_out)
