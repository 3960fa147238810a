"""The reasoner seam: what a reasoner is given, what it returns, and the rule every cause obeys.

:class:`Reasoner` is a public protocol so that evals can plug baselines (``largest-change``,
``random``) next to the deterministic and LLM reasoners. Whatever a reasoner says, the graph keeps
only causes that cite a failing check on their own subject that supports them (:func:`guard`,
:func:`ground`): other cited checks are dropped, ``none`` is refused while such a check fails on
the alerted experiment, and a summary that argued for dropped causes is replaced by a template. No
reasoner can act: mitigations come from the playbook, and only an approved proposal is executed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.models import Alert, RootCause
from agent.playbook import Playbook
from agent.state import CheckOutcome, Diagnosis, Localization, Suspect
from tools.registry import Checks

__all__ = [
    "Baseline",
    "DiagnosisInput",
    "ExperimentMeta",
    "Grounding",
    "Reasoner",
    "admissible",
    "candidate_causes",
    "failing",
    "failing_on_alerted",
    "ground",
    "guard",
    "subject_of",
    "supporting_checks",
]


@dataclass(frozen=True)
class ExperimentMeta:
    """What the report and the proposals need to know about an experiment.

    Attributes:
        id: Experiment id.
        name: Its human name.
        owner: Who answers for it (may approve its mitigations).
        traffic_share: Share of all traffic it currently enrols (0..1), None if unknown.
        models: Model id per arm.
        control: The control arm's name.
    """

    id: str
    name: str
    owner: str
    traffic_share: float | None = None
    models: dict[str, str | None] = field(default_factory=dict)
    control: str = "control"


@dataclass(frozen=True)
class DiagnosisInput:
    """Everything a reasoner may look at.

    Attributes:
        alert: What fired (untrusted text in ``summary`` / ``annotations``).
        playbook: The alert's playbook (its rules and vocabulary).
        localization: Onset, window, suspects and where.
        outcomes: The results of the planned checks, in plan order.
        experiments: What is known of the suspect experiments, by id.
        toolbox: The checks, for reasoners that run more of them (the LLM); None when absent.
    """

    alert: Alert
    playbook: Playbook
    localization: Localization
    outcomes: Sequence[CheckOutcome]
    experiments: dict[str, ExperimentMeta] = field(default_factory=dict)
    toolbox: Checks | None = None


@runtime_checkable
class Reasoner(Protocol):
    """Ranks causes from check results and writes the narrative."""

    name: str

    def diagnose(self, given: DiagnosisInput) -> Diagnosis:
        """Rank the causes, best first (``none`` first for a healthy world)."""
        ...


class Baseline:
    """A reasoner measured on its own answers (the evals' baselines), not one Vigil relies on.

    The graph guards its causes like any other's, but when none is admissible its answer is
    ``none`` rather than the deterministic result: a baseline credited with the deterministic
    reasoner's diagnosis would measure nothing.
    """


def subject_of(cause: RootCause) -> Suspect:
    """The subject a cause is located in: its experiment, else its model, else all traffic."""
    if cause.experiment is not None:
        return Suspect(scope="experiment", id=cause.experiment)
    if cause.model is not None:
        return Suspect(scope="model", id=cause.model)
    return Suspect(scope="global")


def failing(
    outcomes: Sequence[CheckOutcome], subject: Suspect, verdicts: Sequence[str] = ("fail",)
) -> set[str]:
    """Names of the checks whose verdict is in ``verdicts`` on ``subject`` or on all traffic."""
    return {
        o.result.check
        for o in outcomes
        if o.result.verdict in verdicts and o.subject.key in (subject.key, "global")
    }


def supporting_checks(playbook: Playbook) -> dict[str, set[str]]:
    """The checks whose failure supports each cause of ``playbook`` (its rules' signals)."""
    return {rule.cause: {s.check for s in rule.signals} for rule in playbook.causes}


def failing_on_alerted(
    outcomes: Sequence[CheckOutcome],
    alert: Alert,
    playbook: Playbook,
    suspects: Sequence[Suspect] = (),
) -> set[str]:
    """Checks that support some cause and fail where the alert points.

    While any does, ``none`` (healthy) is no answer: something a playbook calls a cause failed
    there. An experiment's alert points at that experiment; a global alert at all traffic and at
    the suspects localization found for it (the production model, the experiments that explain
    the delta).
    """
    signals = set().union(*supporting_checks(playbook).values())
    if alert.experiment is not None:
        keys = {f"experiment:{alert.experiment}"}
    else:
        keys = {"global", *(s.key for s in suspects)}
    return {
        o.result.check
        for o in outcomes
        if o.result.verdict == "fail" and o.subject.key in keys and o.result.check in signals
    }


@dataclass(frozen=True)
class Grounding:
    """What the guard made of one cause.

    Attributes:
        cause: The cause as it stands, citing only checks that failed on its subject and support
            it; None when it is rejected.
        note: Why it was rejected, or which cited checks were dropped; "" when it stood as given.
    """

    cause: RootCause | None
    note: str = ""


def ground(
    cause: RootCause,
    outcomes: Sequence[CheckOutcome],
    *,
    playbook: Playbook | None = None,
    alert: Alert | None = None,
    suspects: Sequence[Suspect] = (),
) -> Grounding:
    """Keep a cause only on the evidence that supports it (DESIGN §6).

    1. ``none`` cites nothing; it is rejected while a check supporting some cause fails on the
       alerted experiment (when ``alert`` and ``playbook`` are given).
    2. A real cause keeps the cited checks that failed on its own subject (or on all traffic) and,
       when ``playbook`` is given, that are signals of that cause in it.
    3. With at least one such check the cause stands, the other cited checks dropped (the note
       names them); with none it is rejected.

    Args:
        cause: The reasoner's cause.
        outcomes: Every check result of the investigation (planned and the reasoner's own).
        playbook: The alert's playbook, which says which checks support which cause.
        alert: What fired, for the rule on ``none``.
        suspects: Localization's suspects, where a global alert points.

    Returns:
        The cause as it stands (or None) and the note for the report.
    """
    if cause.cause == "none":
        if alert is not None and playbook is not None:
            found = failing_on_alerted(outcomes, alert, playbook, suspects)
            if found:
                where = (
                    f"experiment {alert.experiment}"
                    if alert.experiment
                    else "all traffic or its suspects"
                )
                return Grounding(None, f"none: {sorted(found)} failed on {where}")
        return Grounding(cause.model_copy(update={"evidence": []}))
    subject = subject_of(cause)
    failed = failing(outcomes, subject)
    if playbook is not None:
        supports = supporting_checks(playbook).get(cause.cause, set())
        if not supports:
            why = f"{cause.cause}: the {playbook.name} playbook has no rule for it"
            return Grounding(None, why)
        failed &= supports
    cited = list(dict.fromkeys(cause.evidence))
    kept = [name for name in cited if name in failed]
    if not kept:
        return Grounding(None, f"{cause.cause}: cites no check that failed on {subject.key}")
    dropped = [name for name in cited if name not in failed]
    if not dropped:
        return Grounding(cause)
    note = (
        f"{cause.cause} on {subject.key}: kept on {kept}; cited checks {dropped} dropped "
        "(they did not fail there, or do not support this cause)"
    )
    return Grounding(cause.model_copy(update={"evidence": kept}), note)


def admissible(
    cause: RootCause,
    outcomes: Sequence[CheckOutcome],
    *,
    playbook: Playbook | None = None,
    alert: Alert | None = None,
) -> str | None:
    """Why a cause must be rejected, or None when it stands (perhaps on fewer checks).

    See :func:`ground`: a real cause stands when it cites at least one check that failed on its
    own subject (or on all traffic) and, with a playbook, supports it.
    """
    grounded = ground(cause, outcomes, playbook=playbook, alert=alert)
    return grounded.note if grounded.cause is None else None


def candidate_causes(
    outcomes: Sequence[CheckOutcome],
    playbook: Playbook,
    alert: Alert,
    suspects: Sequence[Suspect] = (),
) -> list[RootCause]:
    """Every cause :func:`ground` lets stand as it is: the answers a reasoner may choose from.

    1. For each subject with a failing check, and each cause whose playbook rule covers that
       subject's scope and has a primary signal that failed there (or on all traffic): the cause
       on that subject, citing every check that failed there and supports it. Its ``arm`` and
       ``where`` are those of the first such check that failed on the subject itself.
    2. ``none``, while no check supporting a cause fails where the alert points.

    Each candidate is checked with :func:`ground` (it stands unchanged), so a reasoner that picks
    only candidates is never rejected. The confidence is a placeholder (0.5) for the reasoner to
    set.

    Args:
        outcomes: Every check result of the investigation.
        playbook: The alert's playbook (which checks support which cause, in which scopes).
        alert: What fired (where ``none`` is judged).
        suspects: Localization's suspects, where a global alert points.

    Returns:
        Candidates in the order of the subjects' first failing check, then the playbook's rules;
        ``none`` last.
    """
    found: dict[tuple[str, str], RootCause] = {}
    for outcome in outcomes:
        if outcome.result.verdict != "fail":
            continue
        subject = outcome.subject
        failed = failing(outcomes, subject)
        for rule in playbook.causes:
            if subject.scope not in rule.scopes or (rule.cause, subject.key) in found:
                continue
            signals = list(dict.fromkeys(s.check for s in rule.signals if s.check in failed))
            if not any(s.primary and s.check in failed for s in rule.signals):
                continue  # a cause is proposed on its primary finding, as the rules do
            own = [
                o.result
                for name in signals
                for o in outcomes
                if o.result.check == name
                and o.result.verdict == "fail"
                and o.subject.key == subject.key
            ]
            located = next((r for r in own if r.arm or r.where), None)
            candidate = RootCause(
                cause=rule.cause,
                experiment=subject.id if subject.scope == "experiment" else None,
                model=subject.id if subject.scope == "model" else None,
                arm=located.arm if located is not None else None,
                where=dict(located.where) if located is not None else {},
                confidence=0.5,
                evidence=sorted(signals),
            )
            grounded = ground(
                candidate, outcomes, playbook=playbook, alert=alert, suspects=suspects
            )
            if grounded.cause == candidate and not grounded.note:
                found[(rule.cause, subject.key)] = candidate
    out = list(found.values())
    if not failing_on_alerted(outcomes, alert, playbook, suspects):
        out.append(RootCause(cause="none", confidence=0.5))
    return out


def _templated(causes: Sequence[RootCause], playbook: Playbook) -> str:
    labels = {rule.cause: rule.label for rule in playbook.causes}
    parts = []
    for c in causes:
        if c.cause == "none":
            parts.append("no check supporting a cause failed (noise or seasonality)")
            continue
        subject = subject_of(c)
        where = "".join(f", {k}={v}" for k, v in sorted(c.where.items()))
        on = "all traffic" if subject.scope == "global" else f"{subject.scope} {subject.id}"
        parts.append(
            f"{labels.get(c.cause, c.cause)} on {on}{where} (failing: {', '.join(c.evidence)})"
        )
    return "Causes that stand after Vigil's checks: " + "; ".join(parts) + "."


def guard(diagnosis: Diagnosis, given: DiagnosisInput) -> Diagnosis:
    """A reasoner's diagnosis with every cause grounded (:func:`ground`), notes for the report.

    Causes that cite no supporting failing check are removed ("Rejected cause ..."), cited checks
    that do not support a kept cause are dropped ("Evidence trimmed ..."). When anything was
    removed or trimmed, the reasoner's own summary is replaced by a templated one over the causes
    that stand, so the report never argues for a rejected cause. ``causes`` may come back empty:
    the caller then falls back.
    """
    outcomes = list(given.outcomes) + list(diagnosis.extra)
    kept: list[RootCause] = []
    notes: list[str] = []
    changed = False
    for cause in diagnosis.causes:
        grounded = ground(
            cause,
            outcomes,
            playbook=given.playbook,
            alert=given.alert,
            suspects=given.localization.suspects,
        )
        if grounded.cause is None:
            notes.append(f"Rejected cause {grounded.note}")
            changed = True
            continue
        if grounded.note:
            notes.append(f"Evidence trimmed: {grounded.note}")
            changed = True
        kept.append(grounded.cause)
    if not changed:
        return diagnosis
    narrative = diagnosis.narrative
    if kept and narrative:
        narrative = _templated(kept, given.playbook)
        notes.append(
            "The model's own summary was replaced by this template because Vigil dropped some "
            "of what it argued for."
        )
    return diagnosis.model_copy(
        update={"causes": kept, "notes": [*diagnosis.notes, *notes], "narrative": narrative}
    )
