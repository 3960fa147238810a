"""No data is not health: whether an investigation could see what its alert is about.

A diagnosis whose top cause is ``none`` is an all-clear only when the checks on the alert's subject
had data and enough of it. Otherwise the investigation ends

1. ``failed`` (could not run) when the alert names an experiment the state store does not know,
   or the telemetry cannot be read (a missing DuckDB file, missing tables);
2. ``inconclusive`` (could not see) when the alert's subject has no telemetry rows in the window
   (a lagging warehouse, a wrong column mapping, an alert dated after the last row), when no
   check on it could judge anything, or when the check of the alert's own metric (calibration for
   a calibration alert, SRM for an SRM alert ...) had too small a sample to rule out an effect of
   the size in question; a business metric (revenue, CTR) has no check of its own, so each check
   of a cause that could move it must have seen on the alert's subject or on what the subject's
   arms share (the production model, all traffic): one that saw nowhere leaves it open;

with the reason in one line, and the ``none`` cause says "No root cause could be established".
A diagnosis that ranks a real cause stands: evidence found is evidence, whatever else was blind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from agent.models import Alert, RootCause
from agent.state import CheckOutcome, Diagnosis, Localization
from tools.errors import ConfigError, NotFoundError, TelemetryError

__all__ = [
    "ALERT_CHECKS",
    "ALSO_MOVES",
    "MOVES_BUSINESS",
    "NO_ROOT_CAUSE",
    "Blindness",
    "blind_spot",
    "not_ruled_out",
    "unexplained_shift",
    "unknown_experiment",
    "with_coverage",
]

NO_ROOT_CAUSE = "No root cause could be established"

Blindness = tuple[Literal["inconclusive", "failed"], str]
"""An investigation's status when it could not see, and why (one line)."""

_MAX_REASONS = 2
# The check that measures an alert's own metric: when it is the one that could not see, the alert
# is unanswered. (Business metrics have no check of their own; every cause could move them.)
ALERT_CHECKS: Mapping[str, str] = {
    "calibration": "calibration",
    "ne": "ne",
    "fallback_rate": "fallback",
    "srm": "srm",
    "error_rate": "infra",
    "latency_p99": "infra",
}


MOVES_BUSINESS: frozenset[str] = frozenset(
    {"prediction", "calibration", "ne", "staleness", "fallback", "infra"}
)
"""Checks of the causes that change what a request earns or how often it is clicked (revenue,
CTR). An allocation bug loses units, not clicks: the SRM check is not among them."""


ALSO_MOVES: Mapping[str, frozenset[str]] = {
    "ne": frozenset({"staleness"}),
    "calibration": frozenset({"staleness"}),
}
"""Checks (beyond the alert metric's own) whose ``inconclusive`` leaves that metric's all-clear
open: a stale model degrades NE and calibration gradually, so the metric's own check can be
steady while the snapshot is already overdue within its margin ("stale unless a new snapshot
serves by 10:24"), a question the next minutes settle."""


def _line(text: str) -> str:
    from tools.redaction import hide_passwords

    first = text.strip().splitlines()[0] if text.strip() else text
    return hide_passwords(first.rstrip("."))


def unknown_experiment(alert: Alert, known: Mapping[str, Any]) -> Blindness | None:
    """``failed`` when the alert names an experiment the state store does not know."""
    if alert.experiment is not None and alert.experiment not in known:
        return "failed", f"experiment {alert.experiment} is not known to the state store"
    return None


def _own(alert: Alert, outcomes: Sequence[CheckOutcome]) -> list[CheckOutcome]:
    """The outcomes about the alert's subject: its experiment's, else every subject's."""
    if alert.experiment is None:
        return list(outcomes)
    return [o for o in outcomes if o.subject.key == f"experiment:{alert.experiment}"]


def _probe(toolbox: Any, alert: Alert, loc: Localization, now: datetime | None) -> Blindness:
    """Why nothing could be judged: read the alert's subject's traffic once and say what failed."""
    scope = f"experiment {alert.experiment}" if alert.experiment else "all traffic"
    span = f"{loc.window.start:%Y-%m-%d %H:%M}–{loc.window.end:%H:%M} UTC"
    try:
        window = loc.window
        frame = toolbox.metric_series("requests", window.start, window.end, alert.experiment)
    except TelemetryError as exc:
        return "failed", f"the telemetry cannot be read: {_line(str(exc))}"
    except NotFoundError as exc:
        return "failed", f"the telemetry does not know {scope}: {_line(str(exc))}"
    except ConfigError as exc:
        return "failed", f"the alert's window cannot be read: {_line(str(exc))}"
    except Exception as exc:  # any reader failure is a reason to report, not a traceback
        return "failed", f"the telemetry cannot be read: {type(exc).__name__}: {_line(str(exc))}"
    rows = 0.0
    if frame is not None and len(frame) and "value" in frame:
        rows = float(frame["value"].fillna(0).sum())
    if rows <= 0:
        reason = f"no telemetry rows for {scope} in {span}"
        if now is not None and alert.fired_at > now:
            reason += f" (the alert is dated {alert.fired_at:%Y-%m-%d %H:%M}, after the telemetry)"
        return "inconclusive", reason
    return "inconclusive", f"no check could judge {scope} in {span}"


def blind_spot(
    alert: Alert,
    localization: Localization,
    outcomes: Sequence[CheckOutcome],
    toolbox: Any,
    now: datetime | None = None,
) -> Blindness | None:
    """Why the checks could not see the alert's subject, or None when they could.

    Args:
        alert: What fired.
        localization: Its window.
        outcomes: The planned checks' outcomes.
        toolbox: The checks (probed only when nothing could be judged).
        now: The telemetry's clock (an alert dated after it says so).

    Returns:
        ``("failed" | "inconclusive", reason)`` or None.
    """
    own = _own(alert, outcomes)
    judged = [o for o in own if o.error is None and o.result.verdict != "no_data"]
    if not judged:
        return _probe(toolbox, alert, localization, now)
    unsure = [o for o in judged if o.result.verdict == "inconclusive"]
    own_check = ALERT_CHECKS.get(alert.metric)
    if len(unsure) < len(judged) and own_check is not None:
        # Something could see: only the alert metric's own check being blind, or a check of a
        # cause that moves that metric without its own check seeing it yet (a snapshot just past
        # its refresh drifts NE slowly), leaves it open.
        also = ALSO_MOVES.get(own_check, frozenset())
        unsure = [o for o in unsure if o.result.check == own_check or o.result.check in also]
    elif len(unsure) < len(judged):
        # A business metric has no check of its own: every check of what could move it must
        # have seen, on the alert's subject or on what its arms share (the production model,
        # all traffic), which is where power against a move of the alert's size usually is.
        seen = {
            o.result.check
            for o in outcomes
            if o.error is None
            and o.result.verdict in ("ok", "warn", "fail")
            and (o.subject.scope != "experiment" or o.subject.id == alert.experiment)
        }
        unsure = [
            o for o in unsure if o.result.check in MOVES_BUSINESS and o.result.check not in seen
        ]
    if not unsure and own_check is not None:
        unsure = _blind_to_material(alert, own, own_check)
    if unsure:
        reasons = "; ".join(_why(o) for o in unsure[:_MAX_REASONS])
        more = f" (and {len(unsure) - _MAX_REASONS} more)" if len(unsure) > _MAX_REASONS else ""
        return "inconclusive", reasons + more
    return None


def _blind_to_material(
    alert: Alert, own: Sequence[CheckOutcome], own_check: str
) -> list[CheckOutcome]:
    """The alert metric's own check said ``ok`` but could not have seen a material change.

    Its ``ok`` is honest about the size in question (a ±25 % calibration change), yet the alert
    says this very metric moved: clearing it needs the power to see the smallest change the
    check fails on (a ±10 % calibration change, +3 % NE). For a global alert only all traffic
    and the models count (a small experiment's arms never have that power, and do not speak
    for the alert).
    """
    return [
        o
        for o in own
        if o.error is None
        and o.result.check == own_check
        and o.result.verdict == "ok"
        and o.result.params.get("sees_material") is False
        and (alert.experiment is not None or o.subject.scope != "experiment")
    ]


def _why(o: CheckOutcome) -> str:
    """One line on why an outcome leaves the alert open."""
    r = o.result
    if r.verdict != "ok":
        return _line(r.summary)
    more = r.params.get("material_settle_text")
    settle = f"; {more} would settle it" if more else ""
    material = r.params.get("material_effect_text", "a material change")
    return f"{_line(r.summary)}, but not a material change of {material}{settle}"


SHIFT_ALPHA = 1e-3
"""A shift of every arm at once this significant is no noise, even when nothing explains it."""


def unexplained_shift(alert: Alert, outcomes: Sequence[CheckOutcome]) -> Blindness | None:
    """Every arm of the alerted experiment moved at once, significantly (p < :data:`SHIFT_ALPHA`):
    a cause outside the experiment that no check located. Not an all-clear: inconclusive, with
    the finding named (used only when nothing was ranked)."""
    if alert.experiment is None:
        return None
    shifts = [
        o.result
        for o in _own(alert, outcomes)
        if o.error is None
        and o.result.verdict in ("warn", "fail")
        and o.result.params.get("scope") == "all_arms"
        and o.result.p_value is not None
        and o.result.p_value < SHIFT_ALPHA
    ]
    if not shifts:
        return None
    named = ", ".join(dict.fromkeys(f"{r.check} (p={r.p_value:.1g})" for r in shifts))
    return (
        "inconclusive",
        f"every arm of experiment {alert.experiment} moved at once ({named}): a cause outside "
        "the experiment that no check located, not noise",
    )


def not_ruled_out(alert: Alert, outcomes: Sequence[CheckOutcome]) -> str | None:
    """The alert's subject's checks that could not rule out a fault, as a clause; None if none.

    Their verdicts are ``inconclusive``: an all-clear must not pretend they looked and saw.
    """
    names = [
        o.result.check
        for o in _own(alert, outcomes)
        if o.error is None and o.result.verdict == "inconclusive"
    ]
    if not names:
        return None
    return ", ".join(dict.fromkeys(names))


def with_coverage(
    diagnosis: Diagnosis, blind: Blindness | None, unsure: str | None = None
) -> Diagnosis:
    """The diagnosis, made inconclusive or failed when the checks were blind and found nothing.

    A ranked cause other than ``none`` stands (evidence found is evidence); otherwise ``none``
    becomes "No root cause could be established: <reason>" with no confidence, and the diagnosis
    carries the status and the reason.
    """
    top = diagnosis.causes[0] if diagnosis.causes else None
    if top is not None and top.cause != "none":
        return diagnosis
    if blind is None:
        if unsure is None or top is None:
            return diagnosis
        caveat = top.model_copy(
            update={
                "explanation": (
                    f"No check found a failure, but {unsure} could not rule out a fault of the "
                    "size in question (more traffic would settle it); the others saw nothing."
                )
            }
        )
        return diagnosis.model_copy(update={"causes": [caveat, *diagnosis.causes[1:]]})
    status, reason = blind
    unknown = RootCause(cause="none", confidence=0.0, explanation=f"{NO_ROOT_CAUSE}: {reason}.")
    rest = [c for c in diagnosis.causes if c.cause != "none"]
    return diagnosis.model_copy(
        update={"causes": [unknown, *rest], "conclusion": status, "reason": reason}
    )
