"""Localize and plan: when it started, whom to suspect, and which checks to run on whom.

For an alert naming an experiment, the suspect is that experiment. For a global alert, the
attribution check tests, for every arm of every experiment, whether its effect against its own
control moved between the baseline and the window (a difference-in-differences, one-sided in the
metric's bad direction, Holm-adjusted over all arms), on the alert's metric and on the playbook's
scan metrics (business metrics, and fallback, errors, invalid predictions: symptoms a faulty arm
owns outright), Bonferroni-adjusted over the metrics scanned. The experiments whose adjusted
p-value clears the playbook's ``alpha`` are the suspects, most
significant first; only when the alert's metric itself moved significantly do its largest
contributors fill the remaining places. Experiments that merely carry noise are not examined, so
the suspect list stays short and a dozen concurrent experiments do not dilute it. The production
model is examined too (a fault of the model serving everyone has no control arm to compare with),
also behind an alert naming an experiment when its metric is one the playbook looks beyond the
experiment for (``beyond_experiment``: revenue and CTR move with anything the arms share), or
once a check found every arm of the alerted experiment shifted at once (:func:`shared_suspect`).
The onset is the change point of the alert's metric. The plan is every playbook check on every
suspect of a scope the check runs on; the checks then run in parallel (``Send`` in the graph).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import get_args

from agent.models import Alert
from agent.playbook import Playbook, SeriesMetric
from agent.state import CheckOutcome, CheckTask, Localization, Suspect, Window
from tools.checks.attribution import ATTRIBUTABLE as _CHECK_ATTRIBUTABLE
from tools.registry import Checks, run_check
from tools.result import CheckResult
from tools.vocabulary import MetricName, is_metric
from tools.vocabulary import as_utc as utc

__all__ = [
    "ATTRIBUTABLE",
    "SERIES_METRICS",
    "Attributed",
    "attributed_experiments",
    "elsewhere",
    "localize",
    "plan",
    "run_task",
    "shared_models",
    "shared_suspect",
    "utc",
]

_log = logging.getLogger(__name__)
_MIN_BASELINE = 10
"""Fewest baseline minutes kept before an onset when the telemetry starts late."""

SERIES_METRICS: tuple[str, ...] = get_args(SeriesMetric)
# Alert metrics the attribution check can split by experiment (per-request rates and means), and
# the sample ratio (every experiment's split tested at once: an SRM alert naming no experiment).
ATTRIBUTABLE: tuple[str, ...] = (
    *(m for m in _CHECK_ATTRIBUTABLE if m in SERIES_METRICS),
    "srm",
)
_EXPERIMENT_COLUMNS = ("experiment_id", "experiment")
_SHARE_COLUMNS = (
    "share_of_change",
    "share",
    "share_of_delta",
    "explained_share",
    "contribution_share",
)


def _search_window(alert: Alert, playbook: Playbook) -> Window:
    end = utc(alert.fired_at)
    start = end - timedelta(minutes=playbook.window.lookback_minutes)
    if alert.since is not None:
        since = utc(alert.since) - timedelta(minutes=playbook.window.min_minutes)
        start = min(start, since)
    return Window(start=start, end=end)


def _check_window(
    search: Window, onset: datetime | None, playbook: Playbook, first: datetime | None = None
) -> Window:
    """The checks' window: from the onset (else the search window's start) to the alert.

    When the telemetry begins inside the search window (a world, a warehouse or an experiment
    younger than the look-back), a window starting before the first row has no baseline at all:
    every comparison with the subject's own past would be blind. The window then starts late
    enough to leave a baseline: half of the minutes the window can spare, at most the playbook's
    baseline; an onset found earlier keeps at least :data:`_MIN_BASELINE` minutes before it.
    """
    start = search.start
    latest = search.end - timedelta(minutes=playbook.window.min_minutes)
    if first is not None and first > start - timedelta(minutes=playbook.window.baseline_minutes):
        spare = max((latest - first).total_seconds() / 60.0, 0.0)
        keep = min(spare / 2.0, float(playbook.window.baseline_minutes))
        if onset is not None:
            keep = min(keep, max(float(_MIN_BASELINE), (utc(onset) - first).total_seconds() / 60))
        start = max(start, min(first + timedelta(minutes=math.floor(keep)), latest))
    if onset is None:
        return Window(start=start, end=search.end)
    return Window(start=max(start, min(utc(onset), latest)), end=search.end)


def _first_minute(toolbox: Checks, search: Window, experiment: str | None) -> datetime | None:
    """The first minute of the search window with traffic of the alert's subject, if any."""
    try:
        frame = toolbox.metric_series("requests", search.start, search.end, experiment)
    except Exception as exc:  # the coverage step reports unreadable telemetry; keep the window
        _log.debug("first telemetry minute unavailable: %s", exc)
        return None
    if frame is None or not len(frame) or "value" not in frame:
        return None
    seen = frame[frame["value"].fillna(0.0) > 0]
    if seen.empty:
        return None
    first = seen["minute"].min()
    return utc(first.to_pydatetime()) if hasattr(first, "to_pydatetime") else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Attributed:
    """One experiment's part of a metric's change (from an attribution result)."""

    experiment: str
    share: float
    p_value: float | None
    p_adjusted: float | None = None

    @property
    def evidence(self) -> float:
        """The p-value to judge it by: the multiplicity-adjusted one when given."""
        if self.p_adjusted is not None:
            return self.p_adjusted
        return self.p_value if self.p_value is not None else 1.0


def attributed_experiments(result: CheckResult) -> list[Attributed]:
    """The experiments an attribution result credits with the change, strongest evidence first.

    Reads the first evidence table that names experiments: either an experiment column
    (``experiment_id`` / ``experiment``), or ``kind`` + ``candidate`` rows where kind is
    ``experiment`` and the candidate is ``EXPERIMENT`` or ``EXPERIMENT/ARM`` (an experiment
    stands for its best-evidenced arm). The share is the first of ``share_of_change`` /
    ``share`` / ``share_of_delta`` / ``explained_share`` / ``contribution_share`` present;
    ``p_value`` and ``p_adjusted`` are read when present. Order: adjusted (else raw) p-value,
    then the larger share.
    """
    for ev in result.evidence:
        cols = [c.lower() for c in ev.columns]
        share_col = next((cols.index(c) for c in _SHARE_COLUMNS if c in cols), None)
        exp_col = next((cols.index(c) for c in _EXPERIMENT_COLUMNS if c in cols), None)
        kind_col = cols.index("kind") if "kind" in cols else None
        cand_col = cols.index("candidate") if "candidate" in cols else None
        p_col = cols.index("p_value") if "p_value" in cols else None
        q_col = cols.index("p_adjusted") if "p_adjusted" in cols else None
        if share_col is None or (exp_col is None and (kind_col is None or cand_col is None)):
            continue
        best: dict[str, Attributed] = {}
        for row in ev.rows:
            if exp_col is not None:
                exp = row[exp_col]
            elif kind_col is not None and cand_col is not None and row[kind_col] == "experiment":
                exp = str(row[cand_col]).split("/", 1)[0]
            else:
                continue
            if exp is None or str(exp) in ("", "(none)", "none", "other"):
                continue
            share = _number(row[share_col])
            p = _number(row[p_col]) if p_col is not None else None
            q = _number(row[q_col]) if q_col is not None else None
            if share is None:
                continue
            found = Attributed(str(exp), share, p, q)
            seen = best.get(str(exp))
            if seen is None or (found.evidence, -found.share) < (seen.evidence, -seen.share):
                best[str(exp)] = found
        return sorted(best.values(), key=lambda a: (a.evidence, -a.share))
    return []


def _safe(run: Callable[[], CheckResult], check: str) -> CheckOutcome | None:
    subject = Suspect(scope="global")
    try:
        result = run()
    except Exception as exc:  # a check failing must not fail the investigation; it is reported
        _log.warning("localize check %s failed: %s", check, exc)
        _log.debug("localize check %s traceback", check, exc_info=True)
        return None
    return CheckOutcome(key=f"{check}@localize", subject=subject, result=result)


def _attribute(
    toolbox: Checks,
    metrics: Sequence[MetricName],
    recent: Window,
    playbook: Playbook,
    tag: str = "localize",
) -> list[tuple[str, CheckOutcome]]:
    """Attribution of each metric over ``recent`` against the playbook's baseline before it."""
    out: list[tuple[str, CheckOutcome]] = []
    baseline_start = recent.start - timedelta(minutes=playbook.window.baseline_minutes)
    for m in dict.fromkeys(metrics):
        found = _safe(
            partial(
                toolbox.attribution,
                metric=m,
                start=recent.start,
                end=recent.end,
                baseline_start=baseline_start,
                baseline_end=recent.start,
            ),
            "attribution",
        )
        if found is not None:
            out.append((m, found.model_copy(update={"key": f"attribution:{m}@{tag}"})))
    return out


def _pick(
    found: Sequence[tuple[str, CheckOutcome]],
    metric: str,
    playbook: Playbook,
    known: set[str],
) -> list[Suspect]:
    """Experiments whose arm-vs-control effect moved significantly; then, when the alert's metric
    itself moved, its largest contributors (see the module docstring)."""
    spec = playbook.suspects
    picked: dict[str, Suspect] = {}

    def add(exp: str, reason: str, share: float) -> None:
        if len(picked) < spec.max_experiments and exp not in picked and (not known or exp in known):
            picked[exp] = Suspect(scope="experiment", id=exp, reason=reason, share=share)

    # Holm within each metric (in the check), Bonferroni across the metrics scanned.
    family = max(len(found), 1)
    significant: list[tuple[float, float, str, str]] = []
    for m, outcome in found:
        for a in attributed_experiments(outcome.result):
            q = min(1.0, a.evidence * family)
            if a.p_value is None or q > spec.alpha:
                continue
            reason = f"its {m} moved against its control (adjusted p={q:.2g}"
            reason += f", {a.share:.0%} of the change)" if a.share > 0 else ")"
            significant.append((q, -a.share, a.experiment, reason))
    for _q, neg_share, exp, reason in sorted(significant):
        add(exp, reason, -neg_share)
    for m, outcome in found:
        if m != metric or outcome.result.verdict not in ("fail", "warn"):
            continue
        for a in attributed_experiments(outcome.result):
            if a.share >= spec.min_share:
                add(a.experiment, f"explains {a.share:.0%} of the {m} change", a.share)
    return list(picked.values())


def localize(
    alert: Alert,
    playbook: Playbook,
    toolbox: Checks,
    production_model: str | None = None,
    known_experiments: Sequence[str] = (),
) -> Localization:
    """Find the onset, the suspects and the dimension values of an alert.

    Args:
        alert: What fired.
        playbook: Its window and suspect rules.
        toolbox: The checks (``change_point``, ``attribution``).
        production_model: The model serving traffic outside experiments.
        known_experiments: Experiments that exist (an attribution may only name these).

    Returns:
        The localization (its ``results`` hold the change-point and attribution outcomes).
    """
    search = _search_window(alert, playbook)
    metric = playbook.onset_metric or alert.metric
    results: list[CheckOutcome] = []
    onset: datetime | None = None
    if metric in SERIES_METRICS and is_metric(metric):
        found = _safe(
            partial(
                toolbox.change_point,
                metric=metric,
                start=search.start,
                end=search.end,
                experiment_id=alert.experiment,
            ),
            "change_point",
        )
        if found is not None:
            results.append(found)
            onset = utc(found.result.onset) if found.result.onset is not None else None
    window = _check_window(
        search, onset, playbook, _first_minute(toolbox, search, alert.experiment)
    )
    baseline = Window(
        start=window.start - timedelta(minutes=playbook.window.baseline_minutes), end=window.start
    )
    # Attribution compares the incident with what came before: from the onset when known, else
    # the most recent minutes (alerts fire soon after a regression starts).
    recent = (
        window
        if onset is not None
        else Window(
            start=search.end - timedelta(minutes=playbook.window.min_minutes), end=search.end
        )
    )
    suspects: list[Suspect] = []
    where: dict[str, str] = {}
    if alert.experiment is not None:
        suspects.append(Suspect(scope="experiment", id=alert.experiment, reason="named by alert"))
        spec = playbook.suspects
        if alert.metric in spec.beyond_experiment and spec.production_model and production_model:
            # Every arm shares the production model and the logging: a cause outside the
            # experiment moves its arms together, which no comparison inside it can see.
            suspects.append(
                Suspect(
                    scope="model",
                    id=production_model,
                    reason="serves traffic outside tests (and the experiment's shared arms)",
                )
            )
    else:
        spec = playbook.suspects
        if spec.max_experiments > 0:
            scanned: list[MetricName] = [
                m
                for m in [metric, *playbook.suspects.scan_metrics]
                if m in ATTRIBUTABLE and is_metric(m)
            ]
            attributions = _attribute(toolbox, scanned, recent, playbook)
            results += [outcome for _, outcome in attributions]
            if attributions and attributions[0][0] == metric:
                where = dict(attributions[0][1].result.where)
            suspects += _pick(attributions, metric, playbook, set(known_experiments))
        if spec.production_model and production_model:
            suspects.append(
                Suspect(scope="model", id=production_model, reason="serves traffic outside tests")
            )
    suspects.append(Suspect(scope="global"))
    return Localization(
        onset=onset,
        window=window,
        baseline=baseline,
        suspects=suspects,
        where=where,
        results=results,
    )


def _findings_on(alert: Alert, outcomes: Sequence[CheckOutcome]) -> list[CheckResult]:
    """The failures and warnings of the checks on the experiment the alert names."""
    key = f"experiment:{alert.experiment}"
    return [
        o.result for o in outcomes if o.subject.key == key and o.result.verdict in ("warn", "fail")
    ]


def shared_suspect(
    alert: Alert,
    playbook: Playbook,
    localization: Localization,
    outcomes: Sequence[CheckOutcome],
    production_model: str | None,
) -> Suspect | None:
    """The production model, when the alerted experiment's arms moved together, or its control
    alone, and the model is unjudged.

    A check that finds every arm of the alerted experiment shifted at once (``scope: all_arms``)
    says the cause is outside the experiment, in what its arms share; one that finds the control
    arm alone left its baseline (``control_moved``) points at the control's configuration or at
    the model it serves (most often the production model). An alert whose metric the playbook
    does not look beyond the experiment for then examines the production model too: the
    reasoner weighs its finding against the arm's (one fault seen twice).
    """
    if alert.experiment is None or not playbook.suspects.production_model or not production_model:
        return None
    if any(s.scope == "model" and s.id == production_model for s in localization.suspects):
        return None
    moved = _findings_on(alert, outcomes)
    if any(r.params.get("scope") == "all_arms" for r in moved):
        reason = "serves the experiment's arms, which moved together"
    elif any(r.params.get("control_moved") is True for r in moved):
        reason = "serves the experiment's control arm, which alone left its baseline"
    else:
        return None
    return Suspect(scope="model", id=production_model, reason=reason)


def shared_models(
    outcomes: Sequence[CheckOutcome],
    models: Mapping[str, Mapping[str, str | None]],
    production_model: str | None,
    suspects: Sequence[Suspect],
    most: int = 3,
) -> list[Suspect]:
    """The next subjects to examine when a failing experiment arm serves a model that other
    experiments' arms serve too.

    A new model tested in the arms of several experiments at once fails in each of them: the
    model, not one experiment, is the cause, and killing one experiment leaves the others
    exposed. A fault of one arm's own serving path fails there only. So the other experiments
    serving the model are examined first (up to ``most``); once the same check fails in the
    arms of two experiments serving it, the model itself is (its own traffic against its own
    baseline), and the reasoner weighs one fault seen twice. A model only one experiment serves
    is that experiment's; the production model is examined on its own terms.

    Args:
        outcomes: The checks' outcomes so far.
        models: Model id per arm, per experiment id.
        production_model: The model serving traffic outside experiments.
        suspects: The suspects already examined (or being added).
        most: Most other experiments examined per model.
    """
    seen = {s.key for s in suspects}
    failing: dict[str, dict[str, set[str]]] = {}
    for o in outcomes:
        r = o.result
        if o.subject.scope != "experiment" or r.verdict != "fail" or r.arm is None:
            continue
        # The model the finding names (a stale snapshot of another layer's model on the arm's
        # units), else the arm's own.
        named = r.params.get("model")
        model = named if isinstance(named, str) else models.get(o.subject.id or "", {}).get(r.arm)
        if model and model != production_model:
            failing.setdefault(model, {}).setdefault(o.subject.id or "", set()).add(r.check)
    out: list[Suspect] = []
    for model, by_experiment in failing.items():
        sharers = sorted(e for e, arms in models.items() if model in arms.values())
        if len(set(sharers) | set(by_experiment)) < 2:
            continue
        both = set.intersection(*by_experiment.values()) if len(by_experiment) >= 2 else set()
        if both:
            if f"model:{model}" not in seen:
                named = ", ".join(sorted(by_experiment))
                reason = f"{', '.join(sorted(both))} failed in the arms serving it in {named}"
                out.append(Suspect(scope="model", id=model, reason=reason))
                seen.add(f"model:{model}")
            continue
        failed = next(iter(by_experiment))
        others = [e for e in sharers if e not in by_experiment and f"experiment:{e}" not in seen]
        for e in others[:most]:
            reason = f"its arm serves model {model}, which failed in experiment {failed}"
            out.append(Suspect(scope="experiment", id=e, reason=reason))
            seen.add(f"experiment:{e}")
    return out


MOVED_METRIC: dict[str, MetricName] = {
    "fallback": "fallback_rate",
    "prediction": "invalid_rate",
    "calibration": "calibration",
    "ne": "ne",
}
"""The attributable metric a check's finding moves (what to attribute when every arm moved)."""


def elsewhere(
    alert: Alert,
    playbook: Playbook,
    localization: Localization,
    outcomes: Sequence[CheckOutcome],
    toolbox: Checks,
    known_experiments: Sequence[str] = (),
) -> tuple[list[Suspect], list[CheckOutcome]]:
    """Other experiments behind a shift of every arm of the alerted experiment at once.

    Every arm moving together is a cause outside the experiment: the production model (see
    :func:`shared_suspect`), or another layer's experiment whose arm reaches its units (a
    fallback in one ranking arm moves every arm of a UI test sharing those users). The metric
    each such finding moved is attributed to every experiment as for a global alert, over the
    investigation's window; those picked (never the alerted one) are examined too.

    Returns:
        The suspects picked and the attribution outcomes (for the report).
    """
    if alert.experiment is None or playbook.suspects.max_experiments <= 0:
        return [], []
    metrics = [
        MOVED_METRIC[r.check]
        for r in _findings_on(alert, outcomes)
        if r.params.get("scope") == "all_arms" and r.check in MOVED_METRIC
    ]
    if not metrics:
        return [], []
    found = _attribute(toolbox, metrics, localization.window, playbook, tag="elsewhere")
    known = set(known_experiments) - {alert.experiment}
    picked = [
        s.model_copy(
            update={"reason": f"moved every arm of experiment {alert.experiment}: {s.reason}"}
        )
        # No alert metric of its own here: only significant movers are picked, not contributors.
        for s in _pick(found, "", playbook, known)
        if s.id != alert.experiment
    ]
    return picked, [o for _, o in found]


def plan(playbook: Playbook, localization: Localization) -> list[CheckTask]:
    """Every playbook check on every suspect of a scope it runs on, in report order."""
    tasks: list[CheckTask] = []
    for suspect in localization.suspects:
        for spec in playbook.checks:
            if suspect.scope in spec.scopes:
                tasks.append(
                    CheckTask(
                        key=f"{spec.check}@{suspect.key}",
                        check=spec.check,
                        subject=suspect,
                        window=localization.window,
                    )
                )
    return tasks


def run_task(toolbox: Checks, task: CheckTask) -> CheckOutcome:
    """Run one planned check; a check that raises becomes a ``no_data`` outcome with its error."""
    subject = task.subject
    try:
        result = run_check(
            toolbox, task.check, task.window.start, task.window.end, subject.scope, subject.id
        )
    except Exception as exc:  # reported in the outcome and the report, never swallowed silently
        _log.warning("check %s failed: %s", task.key, exc)
        _log.debug("check %s traceback", task.key, exc_info=True)
        result = CheckResult(
            check=task.check,
            verdict="no_data",
            summary=f"The {task.check} check could not run: {exc}",
            experiment=subject.id if subject.scope == "experiment" else None,
        )
        return CheckOutcome(key=task.key, subject=subject, result=result, error=str(exc))
    return CheckOutcome(key=task.key, subject=subject, result=result)
