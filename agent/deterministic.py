"""The deterministic reasoner: the playbook's rules over check verdicts, no network.

Ranking, in order (each step is a rule of the playbook, never a rule about a scenario):

1. A cause is *matched* on a subject (an experiment, a model, all traffic) when one of its signals
   holds: a check on that subject (or on all traffic) returned one of the signal's verdicts.
2. A cause is *supported* when a **primary** signal failed; a failure of a controlled comparison
   (test arm vs control, model vs its own baseline) is what can blame something. On an
   experiment, a finding counts only when it is located in one arm: a shift of every arm at once
   is not the experiment's doing, nor is a gap whose worse side is the control unless the
   control alone left its own baseline (``control_moved``; else a test arm is simply better).
   A control arm serving the production model is weighed against the model's own finding as a
   test arm is (step 4: one fault seen twice).
3. A cause is *ruled out* when a rule-out finding holds, e.g. an infrastructure outage on all
   traffic rules out blaming a model; it is reported as ruled out, not ranked. A finding on all
   traffic does not rule out an experiment cause whose primary failure is a gap between a test
   arm and its control: what hits every arm alike cannot open a gap between them (two faults at
   once are both ranked). Nor does a rule-out finding too small to account for the symptom:
   when both are shares of requests (pp) it must reach half of it (0.13 pp more errors on every
   arm do not explain one arm missing 22 pp of its units); nor one that began clearly after the
   symptom (an outage from 03:12 does not explain a model stale since 02:30).
4. A supported cause is *explained* when a more specific cause it lists in ``explained_by`` is
   supported on the same subject (a fallback to a weak model also worsens NE) and reaches every
   request of the symptom and only those (a fallback on ``country=BR`` does not explain invalid
   predictions in every country; a stale model does not explain a miscalibration on ios only,
   which it would have shown everywhere); it ranks after. One fault seen twice is explained
   too: the same cause on an experiment's arm and on the model it serves is the arm's when the
   model's effect is a fraction of the arm's (diluted in the model's traffic), the model's when
   it is as large.
5. A cause is a *candidate* when its primary signal only warned, on the alerted experiment (all
   traffic for a global alert), in the check of the alert's own metric (an SRM alert whose SRM
   check says "possible issue", an error-rate alert whose infra check warns; a CTR alert whose
   calibration check says the logged clicks per request moved while the predictions held; for a
   global alert, or an experiment's business metric, on all traffic or the production model,
   which serves most of it): evidence that matches the alert is not noise, so it ranks before
   ``none``, with the lower confidence of a warning. Any other warning of a primary signal is a
   *hint*: ranked after ``none``, never dropped.
6. Order: supported, then explained, then candidates, then ``none`` unless something ranks
   above, then hints and causes matched only by secondary failures. Among supported causes
   behind a global alert, how much of the alert's traffic the subject reaches comes first (an
   experiment's share of all traffic; the production model and all traffic reach nearly all of
   it): two faults at once rank by how much of the alerted change each can explain. Behind a
   CTR or revenue alert, a cause whose finding is a share of requests (a fallback, errors) too
   small to account for the fall in clicks per request another supported finding on the same
   requests measured ranks after the causes that can (a 0.16 pp fallback does not explain 30 %
   fewer clicks per request). Ties: the score (signal weights, a fail counting twice a
   warning; a secondary finding confined to a slice the cause is not confined to does not
   count, a cause on every request would have shown it everywhere); then a cause known to
   account for the alerted change (its primary failure is the alert's own metric on the
   alert's scope, e.g. a CTR alert's clicks per request falling with the predictions held, or
   a share of requests as large as that fall) before one whose finding is on another metric (a
   worse NE behind a CTR alert may explain none of it); then the strength of the evidence
   (smallest p-value), then the suspect's rank.

Confidence is a noisy-OR of the matched signals (a fail of weight 1 counts 0.8, a warning 0.3),
discounted when explained, made non-increasing down the ranking. With no failure at all the
answer is ``none``: noise or seasonality, nothing to mitigate. A candidate ranked first on a
warning alone is *inconclusive*: nothing is proposed and the investigation watches (follow-ups
confirm it with a failure or clear it). So is a ``none`` on top while a hint's warning comes from
a check that can move the alert's metric (any cause's check for revenue and CTR, the metric's own
check otherwise): evidence that is not yet a failure is not yet noise either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from agent._candidates import (
    Candidate,
    accounts_for_clicks,
    began_before,
    explain,
    large_enough,
    measures_alert,
    primary_effect,
    reach_of,
)
from agent.coverage import ALERT_CHECKS, MOVES_BUSINESS
from agent.models import Alert, RootCause
from agent.playbook import CauseRule, Playbook, Signal, states
from agent.reasoning import DiagnosisInput
from agent.state import CheckOutcome, Diagnosis, Suspect
from tools.result import CheckResult

__all__ = ["DeterministicReasoner", "cause_onset", "rank_causes"]

_FAIL_P = 0.8
_WARN_P = 0.3
_MAX_CONFIDENCE = 0.97
_ALERT_FINDINGS: Mapping[str, tuple[str, Mapping[str, str]]] = {
    **{metric: (check, {}) for metric, check in ALERT_CHECKS.items()},
    # CTR is clicks per request: a calibration finding whose logged clicks per request moved
    # (the predictions held) is a finding on the alert's own metric.
    "ctr": ("calibration", {"moved": "clicks"}),
}
"""Per alert metric, the check (and the params of its result) that measures the metric itself."""
_MAX_CAUSES = 5


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
    if result.arm is not None and result.arm == control:
        return result.params.get("control_moved") is True
    return result.arm is not None


def _as_warning(sig: Signal) -> Signal:
    return sig.model_copy(update={"verdicts": [*sig.verdicts, "warn"]})


def _on_focus(
    sig: Signal,
    subject: Suspect,
    result: CheckResult,
    focus: tuple[frozenset[str], str, Mapping[str, str]] | None,
) -> bool:
    """Whether ``sig`` is a primary signal read from the check of the alert's own metric (with
    the params that make it that metric) on the alert's scope."""
    return (
        sig.primary
        and focus is not None
        and subject.key in focus[0]
        and sig.check == focus[1]
        and states(result, focus[2])
    )


def on_alerted(c: Candidate, alert: Alert | None) -> bool:
    """Whether ``c`` is on the experiment the alert names (True for a global alert): the
    experiment's own unexplained fault explains its alert before one found on a subject the
    investigation widened to (another experiment, a model)."""
    return (
        alert is None
        or alert.experiment is None
        or c.subject.key == f"experiment:{alert.experiment}"
    )


def moves_alert(c: Candidate, alert: Alert | None) -> bool:
    """Whether ``c``'s cause can move the alerted metric (the playbook's ``moves``)."""
    return alert is None or c.rule.moves is None or alert.metric in c.rule.moves


def _primary_states(
    rule: CauseRule, matched: Sequence[CheckOutcome], params: Mapping[str, str]
) -> bool:
    """Whether the cause's failing primary finding among ``matched`` has ``params``."""
    primary = {sig.check for sig in rule.signals if sig.primary}
    return any(
        o.result.check in primary and o.result.verdict == "fail" and states(o.result, params)
        for o in matched
    )


def _home(rule: CauseRule, results: dict[str, CheckOutcome]) -> dict[str, str]:
    """Where the cause's failing primary finding is located ({}: its whole subject)."""
    for sig in rule.signals:
        outcome = results.get(sig.check)
        if (
            sig.primary
            and outcome is not None
            and outcome.result.verdict == "fail"
            and sig.matches(outcome.result)
        ):
            return dict(outcome.result.where)
    return {}


def _evaluate(
    rule: CauseRule,
    subject: Suspect,
    order: int,
    results: dict[str, CheckOutcome],
    control: str,
    focus: tuple[frozenset[str], str, Mapping[str, str]] | None = None,
) -> Candidate | None:
    matched: list[CheckOutcome] = []
    supported = False
    warned = False
    hint = False
    on_alert = False
    score = 0.0
    miss = 1.0
    home = _home(rule, results)
    for sig in rule.signals:
        outcome = results.get(sig.check)
        if outcome is None:
            continue
        if not sig.primary and outcome.result.where and dict(outcome.result.where) != home:
            # A secondary finding confined to a slice the cause is not confined to: a cause on
            # every request would have shown it everywhere, so it is another fault's evidence.
            continue
        if not sig.primary and sig.same_slice and home and not outcome.result.where:
            continue  # over the whole subject, from a check that locates: not this slice's
        # The alert's own check warning on the alerted experiment: the primary signal's finding
        # at a warning's strength (its other conditions still hold).
        on_focus = _on_focus(sig, subject, outcome.result, focus)
        candidate = (
            on_focus
            and outcome.subject.key == subject.key
            and outcome.result.verdict == "warn"
            and _as_warning(sig).matches(outcome.result)
        )
        # A primary failure in the check of the alert's own metric, on the alert's scope: this
        # cause's finding is the alerted change itself.
        on_alert = on_alert or (
            on_focus
            and outcome.result.verdict == "fail"
            and sig.matches(outcome.result)
            and _located(sig, subject, outcome.result, control)
        )
        # Any other warning of a primary signal is a hint: ranked, but after ``none``.
        hinted = (
            sig.primary
            and outcome.result.verdict == "warn"
            and outcome.subject.key == subject.key
            and _as_warning(sig).matches(outcome.result)
        )
        if not (candidate or hinted) and not sig.matches(outcome.result):
            continue
        if outcome.subject.key == subject.key and not _located(
            sig, subject, outcome.result, control
        ):
            continue
        fail = outcome.result.verdict == "fail"
        matched.append(outcome)
        supported = supported or (sig.primary and fail)
        hint = hint or hinted
        warned = warned or candidate
        score += sig.weight * (1.0 if fail else 0.5)
        miss *= 1.0 - sig.weight * (_FAIL_P if fail else _WARN_P)
    if not matched or not (warned or hint or any(o.result.verdict == "fail" for o in matched)):
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
        if not large_enough(found.result, primary_effect(rule, matched)):
            continue  # too small to account for the symptom (a tiny outage, a large SRM)
        if began_before(found.result, rule, matched):
            continue  # the symptom began before the ruling finding: none of its doing
        if out.unless and _primary_states(rule, matched, out.unless):
            continue  # the cause's own finding says what this one only hints at
        ruled_out = out.reason
        break
    return Candidate(
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
        on_alert=on_alert,
    )


def _owned(c: Candidate) -> Candidate:
    """An all-traffic failure that one experiment arm owns (the infra check's "the excess errors
    sit in experiment E arm A, not in all traffic") is that experiment's, when the cause has an
    action on experiments: kill it, rather than escalate an outage nobody else has."""
    if "experiment" not in c.rule.mitigation:
        return c
    primary = {sig.check for sig in c.rule.signals if sig.primary}
    owner = next(
        (
            o.result.experiment
            for o in c.matched
            if o.result.check in primary
            and o.result.verdict == "fail"
            and o.result.experiment is not None
            and o.result.arm is not None
        ),
        None,
    )
    if owner is None:
        return c
    c.subject = Suspect(scope="experiment", id=owner, reason="owns the all-traffic finding")
    return c


def _explanation(candidate: Candidate) -> str:
    parts = [f"{o.result.check}: {o.result.summary}" for o in candidate.matched]
    text = " ".join(parts)
    if candidate.explained_by:
        text += f" (also explained by {candidate.explained_by}, which ranks higher)"
    return text


def _root_cause(candidate: Candidate) -> RootCause:
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
    reach: Mapping[str, float] | None = None,
) -> tuple[list[RootCause], list[tuple[str, str]]]:
    """Rank causes by the playbook's rules (see the module docstring).

    Args:
        playbook: Its causes, signals, rule-outs and explanations.
        suspects: The subjects examined, most suspect first.
        outcomes: The check outcomes.
        controls: Experiment id -> its control arm (``control`` when not given).
        alert: What fired; a warning of its own metric's check on its experiment is a
            candidate (None: only failures count).
        reach: Experiment id -> its share of all traffic; behind a global alert, supported
            causes in experiments rank by it (None: by evidence alone).

    Returns:
        The ranked causes (``none`` first when nothing failed) and the ruled-out
        ``(cause, reason)`` pairs.
    """
    candidates: list[Candidate] = []
    focus = None
    subjects = list(suspects)
    found_on = _ALERT_FINDINGS.get(alert.metric) if alert is not None else None
    if alert is not None and found_on is not None:
        # A global alert's scope is all traffic, and the production model serves most of it;
        # an experiment's business metric also moves with what its arms share (the model).
        shared = {"global", *(s.key for s in subjects if s.scope == "model")}
        keys: set[str] = set()
        if alert.experiment is not None:
            keys.add(f"experiment:{alert.experiment}")
        if alert.experiment is None or alert.metric not in ALERT_CHECKS:
            keys |= shared
        focus = (frozenset(keys), *found_on)
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
                candidates.append(_owned(found) if subject.scope == "global" else found)
    ruled = [c for c in candidates if c.ruled_out is not None]
    live = [c for c in candidates if c.ruled_out is None]
    explain([c for c in live if c.supported])
    bounded = {id(c) for c in live if not accounts_for_clicks(c, live, alert)}
    measured = {id(c) for c in live if measures_alert(c, live, alert)}
    live.sort(
        key=lambda c: (
            c.tier,
            not moves_alert(c, alert),
            not on_alerted(c, alert),
            -reach_of(c, alert, reach),
            id(c) in bounded,
            -c.score,
            id(c) not in measured,
            -c.strength,
            c.order,
        )
    )
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
        reach = {
            k: v.traffic_share for k, v in given.experiments.items() if v.traffic_share is not None
        }
        causes, ruled_out = rank_causes(
            given.playbook, _subjects(given), given.outcomes, controls, given.alert, reach
        )
        top = causes[0] if causes else None
        cited = {o.result.check: o.result for o in given.outcomes if not o.error}

        def watching(reason: str) -> Diagnosis:
            return Diagnosis(
                causes=causes,
                reasoner=self.name,
                ruled_out=ruled_out,
                conclusion="inconclusive",
                reason=reason,
            )

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
                return watching(why + "; watching for it to confirm or clear")
            rival = _open_explanation(given.playbook, top, given.outcomes)
            if rival is not None:
                return watching(rival)
        if top is not None and top.cause == "none":
            hint = _watched_hint(given.playbook, causes, given.outcomes, given.alert)
            if hint is not None:
                return watching(hint + "; watching for it to confirm or clear")
        return Diagnosis(causes=causes, reasoner=self.name, ruled_out=ruled_out)


def _watched_hint(
    playbook: Playbook, causes: Sequence[RootCause], outcomes: Sequence[CheckOutcome], alert: Alert
) -> str | None:
    """Why a ``none`` on top is not yet an all-clear: a cause ranked after it whose primary check
    warned on its subject, in a check that can move the alert's metric (any cause's for revenue
    and CTR, the metric's own check otherwise). Such a warning is weaker than a failure but is
    evidence; a follow-up on fresh data confirms it (a failure) or clears it."""
    movers = (
        MOVES_BUSINESS
        if alert.metric not in ALERT_CHECKS
        else frozenset({ALERT_CHECKS[alert.metric]})
    )
    rules = {r.cause: r for r in playbook.causes}
    for cause in causes[1:]:
        rule = rules.get(cause.cause)
        if rule is None:
            continue
        primary = {s.check for s in rule.signals if s.primary} & movers & set(cause.evidence)
        key = _subject_key(cause)
        for o in outcomes:
            if (
                o.error is None
                and o.result.check in primary
                and o.result.verdict == "warn"
                and o.subject.key == key
            ):
                return f"no check failed, but {o.result.check} warned on {key} ({_line(o)})"
    return None


def _line(o: CheckOutcome) -> str:
    """The first sentence of an outcome's summary."""
    return o.result.summary.split(". ")[0].rstrip(".")


def _open_explanation(
    playbook: Playbook, top: RootCause, outcomes: Sequence[CheckOutcome]
) -> str | None:
    """Why acting on ``top`` must wait: a cause that would explain it is not yet ruled out.

    ``top`` is supported, but a more specific cause it lists in ``explained_by`` has its primary
    check on the same subject ``inconclusive`` on a pending fact rather than for want of power:
    an excess already observed that the next minutes confirm or clear (a snapshot 8 minutes past
    its refresh, within the margin before it fails) — a result with no power analysis (no
    minimal detectable effect, no ``mde_alpha``) and a positive effect. A fresh snapshot whose NE
    moved (shape not told yet) is not one: nothing is late, and the NE finding stands. The two
    causes call for different mitigations, so nothing is proposed until that check settles
    (follow-ups), and the reason names it. A rival that is only
    under-powered in another quantity (calibration could not rule out ±25 % beside an NE
    regression) does not hold the action: its size says nothing about the finding's. None when
    nothing is open.
    """
    rule = playbook.rule(top.cause)
    if rule is None:
        return None
    own = _subject_key(top)
    for name in rule.explained_by:
        other = playbook.rule(name)
        if other is None:
            continue
        primary = {s.check for s in other.signals if s.primary}
        for o in outcomes:
            r = o.result
            pending = (
                r.mde is None
                and "mde_alpha" not in r.params
                and r.effect is not None
                and r.effect.estimate > 0
            )
            if (
                o.error is None
                and o.subject.key == own
                and r.check in primary
                and r.verdict == "inconclusive"
                and pending
            ):
                return (
                    f"{top.cause} is supported, but {name} would explain it and is not ruled out "
                    f"yet ({r.summary.rstrip('.')}); watching until it settles"
                )
    return None
