"""The reasoner seam: what a reasoner is given, what it returns, and the rule every cause obeys.

:class:`Reasoner` is a public protocol so that evals can plug baselines (``largest-change``,
``random``) next to the deterministic and LLM reasoners. Whatever a reasoner says, the graph keeps
only causes that cite a failing check on their own subject (:func:`admissible`), and no reasoner
can act: mitigations come from the playbook, and only an approved proposal is executed.
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
    "DiagnosisInput",
    "ExperimentMeta",
    "Reasoner",
    "admissible",
    "failing",
    "subject_of",
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


def admissible(cause: RootCause, outcomes: Sequence[CheckOutcome]) -> str | None:
    """Why a cause must be rejected, or None when it stands.

    A real cause stands only when it cites at least one check that failed on its own subject (or
    on all traffic), and every check it cites at least warned there; ``none`` cites nothing.
    """
    if cause.cause == "none":
        return None
    subject = subject_of(cause)
    if not set(cause.evidence) & failing(outcomes, subject):
        return f"{cause.cause}: cites no check that failed on {subject.key}"
    flagged = failing(outcomes, subject, ("fail", "warn"))
    unsupported = [name for name in cause.evidence if name not in flagged]
    if unsupported:
        return f"{cause.cause}: cited checks {unsupported} found nothing on {subject.key}"
    return None
