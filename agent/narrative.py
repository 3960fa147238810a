"""The report's words: a structured report model and its Markdown rendering, from templates.

The report reads like the product's own example: what was investigated and since when, every check
with a ✓ or ✗ and one sentence, the cause and its evidence, the proposed mitigation and where it
stands. Both the Markdown and the HTML report (:mod:`agent.report`) render this one model. Alert
text is untrusted: it is shown only as a quote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agent.actions import spec
from agent.models import Alert, MitigationView, RootCause
from agent.playbook import Playbook
from agent.reasoning import ExperimentMeta
from agent.state import CheckOutcome, Diagnosis, Localization, Suspect
from tools.vocabulary import VERDICT_MARKS

__all__ = [
    "METRIC_LABELS",
    "CheckLine",
    "ReportModel",
    "SubjectSection",
    "build_report",
    "check_line",
    "render_markdown",
]

METRIC_LABELS: Mapping[str, str] = {
    "revenue": "revenue",
    "ctr": "click-through rate",
    "ne": "normalized entropy",
    "calibration": "calibration",
    "fallback_rate": "fallback rate",
    "error_rate": "error rate",
    "latency_p99": "p99 latency",
    "srm": "sample ratio",
}
_MARKS = VERDICT_MARKS
_STATUS_WORDS = {
    "proposed": "awaiting approval",
    "approved": "approved, executing",
    "rejected": "rejected",
    "executing": "executing",
    "executed": "executed",
    "failed": "failed",
    "verified": "executed and verified",
}


@dataclass(frozen=True)
class CheckLine:
    """One check in the report."""

    mark: str
    verdict: str
    text: str
    summary: str
    check: str


@dataclass(frozen=True)
class SubjectSection:
    """The checks of one subject (an experiment, a model, all traffic)."""

    title: str
    note: str
    lines: list[CheckLine]


@dataclass
class ReportModel:
    """Everything a report shows, in order."""

    title: str
    headline: str
    alert_quote: str
    sections: list[SubjectSection]
    cause: str
    evidence: list[str]
    others: list[str]
    ruled_out: list[str]
    mitigations: list[str]
    notes: list[str]
    narrative: str
    footer: str
    plots: dict[str, str] = field(default_factory=dict)
    conclusion: str = "conclusive"


def _when(ts: datetime | None) -> str:
    return ts.strftime("%H:%M") if ts is not None else "an unknown time"


def _experiment(exp_id: str, experiments: Mapping[str, ExperimentMeta]) -> str:
    meta = experiments.get(exp_id)
    return f'experiment {exp_id} ("{meta.name}")' if meta is not None else f"experiment {exp_id}"


def _subject_title(subject: Suspect, experiments: Mapping[str, ExperimentMeta]) -> str:
    if subject.scope == "experiment" and subject.id is not None:
        text = _experiment(subject.id, experiments)
        return text[:1].upper() + text[1:]
    if subject.scope == "model":
        return f"Model {subject.id}"
    return "All traffic"


def check_line(outcome: CheckOutcome, playbook: Playbook) -> CheckLine:
    """The ✓/✗ line of one check, worded by the playbook's labels."""
    spec = playbook.spec(outcome.result.check)
    label = spec.label if spec is not None else outcome.result.check
    verdict = outcome.result.verdict
    if verdict == "ok":
        text = f"No issues were found with {label}"
    elif verdict == "fail":
        text = f"Issue identified with {spec.issue if spec is not None else label}"
    elif verdict == "warn":
        text = f"Possible issue with {label}"
    elif verdict == "inconclusive":
        text = f"Could not rule out an issue with {label}"
    else:
        text = f"Not enough data to judge {label}"
    return CheckLine(
        _MARKS.get(verdict, "?"), verdict, text, outcome.result.summary, outcome.result.check
    )


def _cause_text(
    cause: RootCause, playbook: Playbook, experiments: Mapping[str, ExperimentMeta]
) -> str:
    rule = playbook.rule(cause.cause)
    label = rule.label if rule is not None else cause.cause.replace("_", " ")
    where = ""
    if cause.experiment:
        where = f" in {_experiment(cause.experiment, experiments)}"
    elif cause.model:
        where = f" in model {cause.model}"
    if cause.arm:
        where += f", arm `{cause.arm}`"
    if cause.where:
        where += ", where " + ", ".join(f"{k}={v}" for k, v in sorted(cause.where.items()))
    return f"{label} (`{cause.cause}`){where} — confidence {cause.confidence:.0%}"


def _outside(
    alert: Alert,
    top: RootCause,
    outcomes: Sequence[CheckOutcome],
    experiments: Mapping[str, ExperimentMeta],
) -> str:
    """Why a cause outside the alerted experiment was blamed for its alert ("" when inside)."""
    if alert.experiment is None or top.experiment == alert.experiment:
        return ""
    meta = experiments.get(alert.experiment)
    control = meta.control if meta is not None else "control"
    key = f"experiment:{alert.experiment}"
    gap = [
        o.result.check
        for o in outcomes
        if o.subject.key == key
        and o.result.verdict == "fail"
        and o.result.arm is not None
        and o.result.arm != control
    ]
    if top.experiment:
        where = _experiment(top.experiment, experiments)
        return f"The cause lies outside experiment {alert.experiment}, in {where}."
    shared = f"model {top.model}" if top.model else "all traffic"
    text = f"The cause lies outside experiment {alert.experiment}, in {shared} (shared by its arms)"
    if gap:
        return text + f" (its own {', '.join(dict.fromkeys(gap))} also failed in a test arm)."
    return (
        text + ": no check found a gap between its arms, which moved together, so the "
        "experiment itself is not to blame."
    )


def _mitigation_text(m: MitigationView) -> str:
    verb = spec(m.action).describe(m.target)
    status = _STATUS_WORDS.get(m.status, m.status)
    if m.effect == "already_in_effect":
        status = "already in effect: nothing changed"
    if m.approved_by and m.status != "proposed":
        status += f" by {m.approved_by}"
    if m.recovered is not None:
        status += ", metric recovered" if m.recovered else ", metric has NOT recovered"
    elif m.verification_pending:
        status += f", verification pending: {m.verification_pending}"
    elif m.status == "executed":
        status += ", recovery pending"
    measured = f" Verification: {m.verification}" if m.verification else ""
    return (
        f"{verb} ({status}) — blast radius {m.blast_radius:.1%} of traffic. "
        f"Expected effect: {m.expected_effect}{measured} [id `{m.id}`]"
    )


def build_report(
    investigation_id: str,
    alert: Alert,
    playbook: Playbook,
    localization: Localization,
    outcomes: Sequence[CheckOutcome],
    diagnosis: Diagnosis,
    mitigations: Sequence[MitigationView],
    experiments: Mapping[str, ExperimentMeta],
    onset: datetime | None,
) -> ReportModel:
    """Assemble the report model from an investigation's pieces."""
    metric = METRIC_LABELS.get(alert.metric, alert.metric)
    if alert.experiment:
        scope = f"in {_experiment(alert.experiment, experiments)}"
    else:
        scope = "across all traffic"
    headline = (
        f"After investigating the {metric} regression starting at {_when(onset)} {scope}, "
        "I have concluded that:"
    )
    sections: list[SubjectSection] = []
    planned = [o for o in outcomes if "#" not in o.key]
    for suspect in localization.suspects:
        lines = [check_line(o, playbook) for o in planned if o.subject.key == suspect.key]
        if lines:
            sections.append(
                SubjectSection(_subject_title(suspect, experiments), suspect.reason, lines)
            )
    asked = [o for o in outcomes if "#" in o.key]
    if asked:
        lines = [check_line(o, playbook) for o in asked]
        lines = [
            CheckLine(ln.mark, ln.verdict, f"{ln.text} ({o.subject.key})", ln.summary, ln.check)
            for ln, o in zip(lines, asked, strict=True)
        ]
        sections.append(SubjectSection("Checks the reasoner ran", "", lines))
    causes = list(diagnosis.causes)
    top = causes[0] if causes else RootCause(cause="none", confidence=0.5)
    if top.cause == "none" and diagnosis.conclusion != "conclusive":
        cause = f"No root cause could be established: {diagnosis.reason}."
        if diagnosis.conclusion == "failed":
            cause += " The investigation could not run; this is not an all-clear."
        else:
            cause += " This is not an all-clear: the checks could not see enough."
    elif top.cause == "none" and "could not rule out" in top.explanation:
        cause = f"No root cause found: {top.explanation[:1].lower()}{top.explanation[1:]}"
    elif top.cause == "none" and any(o.result.verdict == "fail" for o in planned):
        failed = ", ".join(
            dict.fromkeys(
                f"{o.result.check} ({_subject_title(o.subject, experiments)})"
                for o in planned
                if o.result.verdict == "fail"
            )
        )
        cause = (
            f"No root cause: {failed} failed, but in no way the playbook blames on a cause (a "
            "gap whose worse side is a control arm that held its own baseline is a better test "
            "arm; a shift of every arm at once is not the experiment's). Read the failing checks "
            "above before dismissing the alert."
        )
    elif top.cause == "none":
        cause = (
            "No root cause: no check found a failure, so the alert is most likely noise or "
            "seasonality."
        )
    else:
        cause = _cause_text(top, playbook, experiments)
        outside = _outside(alert, top, outcomes, experiments)
        if outside:
            cause += f". {outside}"
    places = {
        f"experiment:{top.experiment}" if top.experiment else "",
        f"model:{top.model}" if top.model else "",
        "global",
    }
    evidence = list(
        dict.fromkeys(
            f"{o.result.check} ({_subject_title(o.subject, experiments)}): {o.result.summary}"
            for name in top.evidence
            for o in outcomes
            if o.result.check == name
            and o.result.verdict in ("fail", "warn")
            and o.subject.key in places
        )
    )
    others = [_cause_text(c, playbook, experiments) for c in causes[1:]]
    ruled_out = [f"{cause_name}: {reason}" for cause_name, reason in diagnosis.ruled_out]
    mitigation_lines = [_mitigation_text(m) for m in mitigations]
    if not mitigation_lines and diagnosis.conclusion != "conclusive":
        mitigation_lines = ["none — no cause was established to act on."]
    elif not mitigation_lines:
        mitigation_lines = ["none — nothing to mitigate."]
    window = localization.window
    footer = (
        f"Investigation {investigation_id} · reasoner: {diagnosis.reasoner} · playbook: "
        f"{playbook.name} · window {window.start:%Y-%m-%d %H:%M}–{window.end:%H:%M} UTC · "
        f"{len(outcomes)} checks"
    )
    quote = alert.summary or alert.annotations.get("summary", "") or alert.name
    return ReportModel(
        title=f"Vigil investigation {investigation_id}: {metric} {scope}",
        headline=headline,
        alert_quote=quote,
        sections=sections,
        cause=cause,
        evidence=evidence,
        others=others,
        ruled_out=ruled_out,
        mitigations=mitigation_lines,
        notes=list(diagnosis.notes),
        narrative=diagnosis.narrative,
        footer=footer,
        conclusion=diagnosis.conclusion,
    )


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines() if line.strip())


def render_markdown(model: ReportModel) -> str:
    """The report as Markdown."""
    out = [f"# {model.title}", ""]
    if model.alert_quote:
        out += ["Alert text (as received, untrusted):", "", _quote(model.alert_quote), ""]
    out += [model.headline, ""]
    for section in model.sections:
        note = f" — {section.note}" if section.note else ""
        out += [f"**{section.title}**{note}", ""]
        out += [f"- {ln.mark} {ln.text}. {ln.summary}" for ln in section.lines]
        out.append("")
    out += [f"**Root cause:** {model.cause}", ""]
    if model.evidence:
        out += ["**Evidence:**", ""] + [f"- {e}" for e in model.evidence] + [""]
    if model.others:
        out += ["**Other candidates:**", ""]
        out += [f"{i}. {o}" for i, o in enumerate(model.others, start=2)] + [""]
    if model.ruled_out:
        out += ["**Ruled out:**", ""] + [f"- {r}" for r in model.ruled_out] + [""]
    out += ["**Proposed mitigation:** " + model.mitigations[0], ""]
    out += [f"- also: {m}" for m in model.mitigations[1:]]
    if model.narrative:
        out += ["**Reasoner's summary** (model-written):", "", _quote(model.narrative), ""]
    if model.notes:
        out += ["**Notes:**", ""] + [f"- {n}" for n in model.notes] + [""]
    out += [f"_{model.footer}_", ""]
    return "\n".join(out)
