"""Staleness check: age of every served snapshot vs its refresh cadence, and NE's shape (ramp/step).

A model that stops refreshing keeps serving one ``model_version`` whose ``trained_at`` ages past
the cadence (plus the usual training-to-publication lag), often while newer snapshots exist and
serve elsewhere (another arm, another slice of the same arm). Every version still serving a
material share of an arm's recent traffic is aged, not only the one serving most of it, so a
snapshot pinned in one ad type or one country is seen, and the finding names where it serves.

The world then drifts away from the pinned model: its log loss degrades as a *ramp* since the
drift began, with no version change. A worse model (an NE regression) degrades as a *step*, at a
version change or not, with fresh snapshots. :mod:`tools.checks._shape` tells the two apart on
two series per arm (against control, else the subject's own): the mean log loss (minutes pooled
into blocks of about 20 clicks) and the reliability slope per histogram block; the ramp test is
one-sided, Bonferroni-corrected over the two series and the arms, with its power (the smallest
drift per hour it detects) stated; the summary says which evidence ruled the other out.

Verdicts: ``fail`` when a served snapshot is overdue by more than ``fail_overdue`` of its cadence
(read, not estimated), or when NE ramps up materially and significantly (``trend_alpha``) with
no new snapshot since the ramp began; ``inconclusive`` when a snapshot is just past its due time
but not yet by the margin, or when NE moved with no version change and its shape cannot be told
yet (each says what would settle it: the time by which a new snapshot must serve); ``warn`` on a
weaker ramp; ``ok`` when every served snapshot is within its cadence and NE shows no ramp (a
step that held is said to be a worse model, not a stale one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from tools.checks._common import fmt_p, fmt_time, no_data, params_of, subject_name, table
from tools.checks._engine import SubjectFrame
from tools.checks._shape import Shape, series_shape, slope_series
from tools.checks._snapshots import Served, serving, versions
from tools.result import CheckResult, Effect, Evidence, Scalar
from tools.telemetry import HistogramSpec, to_datetime

__all__ = ["StalenessParams", "staleness_check"]


@dataclass(frozen=True)
class StalenessParams:
    """Thresholds of the staleness check.

    Attributes:
        fail_overdue: Fail when a served snapshot is older than cadence + lag by more than this
            share of the cadence (0.1: six minutes late for an hourly model).
        lag_minutes: Normal training-to-serving lag; None reads it from the model's snapshots.
        trend_alpha: One-sided level of the ramp test (NE rising after its best step) to fail.
        trend_alpha_warn: The same, to warn.
        ramp_min_rise: Smallest NE rise a ramp must have reached since its onset, relative to the
            level (0.03: NE's own failure floor) for a failure.
        ramp_min_slope_drop: The same for a ramp of the reliability slope (0.15: NE's floor for
            a drop of the slope).
        min_share: A version serving at least this share of an arm's recent requests is served.
        recent_minutes: The minutes at the end of the data that say what is served now.
        min_requests: Fewest requests per arm in the window.
    """

    fail_overdue: float = 0.1
    lag_minutes: float | None = None
    trend_alpha: float = 1e-3
    trend_alpha_warn: float = 1e-2
    ramp_min_rise: float = 0.03
    ramp_min_slope_drop: float = 0.15
    min_share: float = 0.02
    recent_minutes: int = 10
    min_requests: int = 200


_COLUMNS = ["n_ll", "sum_ll", "sum_label_v"]
_BLOCK_CLICKS = 20.0
"""Clicks per point of the NE series: fewer make a minute's mean log loss too skewed to test."""
_MAX_BLOCK = 10


def _series(frame: SubjectFrame, arm: str, where: Mapping[str, tuple[str, ...]]) -> pd.DataFrame:
    """Per-minute log-loss sums of ``arm``, restricted to ``where``, over the fetched range."""
    w = frame.window
    if not where:
        return frame.minute_sums(arm)[_COLUMNS]
    c = frame.cube
    mask = c["arm"] == arm
    for dim, values in where.items():
        mask &= c[dim].astype(str).isin(values)
    by: pd.DataFrame = c[mask].groupby("minute")[_COLUMNS].sum()
    return by.reindex(range(w.fetch_start, w.end), fill_value=0.0)


def _blocks(t: pd.DataFrame, k: int) -> pd.DataFrame:
    """The per-minute sums added up over blocks of ``k`` minutes (the last block may be short)."""
    out: pd.DataFrame = t.groupby(np.arange(len(t)) // k).sum()
    return out


def _in_minutes(s: Shape, k: int) -> Shape:
    """A shape fitted on blocks of ``k`` minutes, restated per minute."""
    if k == 1:
        return s
    return replace(
        s,
        onset=s.onset * k,
        ramp_onset=None if s.ramp_onset is None else s.ramp_onset * k,
        after=s.after * k,
        slope=s.slope / k,
        se=s.se / k,
    )


def _shape(frame: SubjectFrame, arm: str, where: Mapping[str, tuple[str, ...]]) -> Shape | None:
    """NE's step-or-ramp fit for ``arm`` (in ``where``): against control when it has one.

    Minutes are pooled into blocks holding about 20 clicks of the smaller side (at most 10
    minutes; with fewer clicks than that there is no NE shape to tell).
    """
    t = _series(frame, arm, where)
    control = frame.control
    has_ref = control is not None and control != arm and control in frame.arms
    r = _series(frame, str(control), where) if has_ref else None
    clicks = t["sum_label_v"].to_numpy(float)
    if r is not None:
        clicks = np.minimum(clicks, r["sum_label_v"].to_numpy(float))
    rate = float(np.median(clicks[clicks > 0])) if (clicks > 0).any() else 0.0
    k = math.ceil(_BLOCK_CLICKS / rate) if rate > 0 else _MAX_BLOCK + 1
    if k > _MAX_BLOCK:
        return None
    t = _blocks(t, k)
    n = t["n_ll"].to_numpy(float)
    y = t["sum_ll"].to_numpy(float) / np.where(n > 0, n, np.nan)
    segment = max(3, 10 // k)
    if r is None:
        fitted = series_shape(y, n, trend=True, min_segment=segment)
        return _in_minutes(fitted, k) if fitted is not None else None
    r = _blocks(r, k)
    nr = r["n_ll"].to_numpy(float)
    yr = r["sum_ll"].to_numpy(float) / np.where(nr > 0, nr, np.nan)
    weight = np.where(
        (n > 0) & (nr > 0), 1.0 / (1.0 / np.maximum(n, 1) + 1.0 / np.maximum(nr, 1)), 0.0
    )
    scale = float(r["sum_ll"].sum() / r["n_ll"].sum()) if r["n_ll"].sum() > 0 else None
    fitted = series_shape(y - yr, weight, trend=False, min_segment=segment, scale=scale)
    return _in_minutes(fitted, k) if fitted is not None else None


@dataclass(frozen=True)
class _Fit:
    """One statistic's step-or-ramp fit: NE (log loss) or the reliability slope."""

    what: str
    sign: str
    shape: Shape
    floor: float


def _fits(
    frame: SubjectFrame,
    arm: str,
    where: Mapping[str, tuple[str, ...]],
    hist: pd.DataFrame | None,
    histogram: HistogramSpec | None,
    block: int,
    p: StalenessParams,
    family: int = 1,
) -> _Fit | None:
    """The more telling of NE's and the reliability slope's shape for ``arm``: the one that
    ramps, else the one with the clearest step."""
    out = []
    ll = _shape(frame, arm, where)
    if ll is not None:
        out.append(_Fit("NE", "+", ll, p.ramp_min_rise))
    if hist is not None and histogram is not None and not where:
        ref = frame.control if frame.control in frame.arms and frame.control != arm else None
        series = slope_series(hist, histogram, block, frame.window, arm, ref)
        if series is not None:
            fitted = series_shape(
                series[0], series[1], trend=False, min_segment=max(3, 10 // block), scale=series[2]
            )
            if fitted is not None:
                fitted = _in_minutes(fitted, block)
                out.append(_Fit("the reliability slope", "-", fitted, p.ramp_min_slope_drop))
    if not out:
        return None
    # Ramp p-values are Bonferroni-corrected for the statistics and arms tried; the one that ramps
    # speaks, else the one whose step is the clearest (it is the one that could hold it).
    tried = len(out) * max(family, 1)
    fits = [
        replace(f, shape=replace(f.shape, p_value=min(1.0, f.shape.p_value * tried))) for f in out
    ]
    ramp = min(fits, key=lambda f: f.shape.p_value)
    if _ramps(ramp, p.trend_alpha_warn):
        return ramp
    return max(fits, key=lambda f: f.shape.step_z)


def _ramps(f: _Fit | None, alpha: float) -> bool:
    return f is not None and f.shape.slope > 0 and f.shape.p_value < alpha


def _stepped(f: _Fit | None, p: StalenessParams) -> bool:
    """It rose at its best step, significantly after correcting for where the step was sought."""
    return f is not None and f.shape.step > 0 and f.shape.step_p() < p.trend_alpha


def _shape_text(
    f: _Fit | None, frame: SubjectFrame, p: StalenessParams, moved: bool, aged: bool = False
) -> str:
    """What the shape says about staleness, with the power of the ramp test.

    ``aged``: the snapshot's age already shows it stale (the shape only describes NE then).
    """
    if f is None:
        return ""
    s = f.shape
    onset = frame.window.fetch_start + s.onset
    began = frame.window.fetch_start + s.start
    step = f"{f.sign}{s.step / s.level:.1%}"
    rate = s.mde_per_hour(p.trend_alpha)
    mde = f"{rate:.1%}/h" if math.isfinite(rate) else "any rate"
    if aged and not _ramps(f, p.trend_alpha_warn):
        return f"{f.what} moved at {fmt_time(onset)} UTC ({step})" if _stepped(f, p) else ""
    if _ramps(f, p.trend_alpha_warn):
        return (
            f"{f.what} degraded gradually since {fmt_time(began)} UTC "
            f"({f.sign}{s.slope_per_hour():.1%}/h, {f.sign}{s.rise():.1%} so far, "
            f"{fmt_p(s.p_value)})"
            + ("" if moved else " with no version change: a model not keeping up with the world")
        )
    if _stepped(f, p):
        change = "at a version change" if moved else "with no version change"
        if s.held(p.trend_alpha):
            return (
                f"{f.what} moved as a step at {fmt_time(onset)} UTC ({step}, {change}) and held: "
                f"no ramp (a drift of {mde} or more would have shown), a worse model rather "
                "than a stale one"
            )
        return (
            f"{f.what} moved at {fmt_time(onset)} UTC ({step}, {change}); too soon to tell a "
            f"step from a ramp (a drift of {mde} or more would show)"
        )
    return f"{f.what} shows no ramp (a drift of {mde} or more would have shown)"


def _began_after(frame: SubjectFrame, arm: str, minute: int, slack: int = 3) -> bool:
    """Whether ``arm`` began serving a new version more than ``slack`` minutes after ``minute``
    (a ramp with no new snapshot since it began is a model left behind by the world)."""
    firsts = versions(frame, arm).first_served().values()
    return any(first > minute + slack for first in firsts)


def _moved_near(frame: SubjectFrame, arm: str, minute: int, slack: int = 3) -> bool:
    """Whether ``arm`` began serving a version within ``slack`` minutes of ``minute``."""
    firsts = versions(frame, arm).first_served().values()
    return any(abs(f - minute) <= slack for f in firsts if f > frame.window.fetch_start)


def _row(a: Served, f: _Fit | None, p: StalenessParams) -> dict[str, Scalar]:
    s = f.shape if f is not None else None
    return {
        "arm": a.arm,
        "model_id": a.model_id,
        "served_version": a.version,
        "share_recent": a.share,
        "where": "; ".join(f"{d}={','.join(v)}" for d, v in a.where.items()),
        "age_minutes": a.age,
        "refresh_minutes": a.refresh,
        "lag_minutes": a.lag,
        "overdue_minutes": a.overdue,
        "newer_version": a.newer,
        "drift_of": f.what if f is not None else None,
        "drift_per_hour": s.slope_per_hour() if s is not None else None,
        "drift_p": s.p_value if s is not None else None,
        "drift_mde_per_hour": s.mde_per_hour(p.trend_alpha) if s is not None else None,
    }


def staleness_check(
    frame: SubjectFrame,
    snapshots: pd.DataFrame,
    *,
    refresh: Mapping[str, int | None],
    hist: pd.DataFrame | None = None,
    histogram: HistogramSpec | None = None,
    block_minutes: int = 1,
    params: StalenessParams | None = None,
) -> CheckResult:
    """Served snapshot ages per arm vs refresh cadence and control, and NE's step-or-ramp shape.

    Args:
        frame: The subject's wide aggregate (its ``model_version`` per minute tells what served).
        snapshots: ``model_snapshots`` rows of the served models.
        refresh: Refresh cadence in minutes per served model id (absent or None: the model
            does not refresh).
        hist: The subject's prediction histogram (the reliability slope per block), if fetched.
        histogram: The histogram's bins.
        block_minutes: The histogram's time block.
        params: Thresholds.

    Returns:
        See the module docstring for the verdicts.
    """
    p = params or StalenessParams()
    settings = params_of(p)
    w = frame.window
    arms = [a for a in frame.arms if frame.span(a, w.start, w.end)["n"] >= p.min_requests]
    served = [
        s
        for arm in arms
        for s in serving(
            frame,
            arm,
            snapshots,
            refresh,
            recent_minutes=p.recent_minutes,
            min_share=p.min_share,
            lag_minutes=p.lag_minutes,
        )
    ]
    if not served:
        return no_data(
            "staleness", frame, f"No served traffic for {subject_name(frame)}.", settings
        )
    cadenced = [a for a in served if a.refresh is not None and np.isfinite(a.overdue)]
    worst = max(cadenced, key=lambda a: a.overdue / float(a.refresh or 1), default=None)
    # NE's shape per arm that could be stale: the test arms against control, else the subject.
    tested = [a for a in arms if a != frame.control] or arms
    shapes: dict[str, _Fit | None] = {}
    for arm in tested:
        local = worst.where if worst is not None and worst.arm == arm and worst.overdue > 0 else {}
        shapes[arm] = _fits(frame, arm, local, hist, histogram, block_minutes, p, len(tested))
    fitted = {a: f for a, f in shapes.items() if f is not None}
    ramp_arm = min(fitted, key=lambda a: fitted[a].shape.p_value, default=None)
    rows = [_row(a, shapes.get(a.arm), p) for a in served]
    evidence: list[Evidence] = [table("served snapshots per arm", pd.DataFrame(rows))]

    def who(arm: str) -> str:
        return f"arm {arm} of " if frame.control is not None else ""

    control_age = max((a.age for a in served if a.arm == frame.control), default=None)
    shape_param = "none"
    if ramp_arm is not None:
        f = shapes[ramp_arm]
        if _ramps(f, p.trend_alpha_warn):
            shape_param = "ramp"
        elif _stepped(f, p):
            shape_param = "step" if f is not None and f.shape.held(p.trend_alpha) else "unclear"
        else:
            shape_param = "flat"
    base = {**settings, "shape": shape_param}

    if worst is not None and worst.overdue > 0:
        refresh_min = float(worst.refresh or 1)
        f = shapes.get(worst.arm)
        moved = f is not None and (
            _began_after(frame, worst.arm, w.fetch_start + f.shape.start)
            if _ramps(f, p.trend_alpha_warn)
            else _moved_near(frame, worst.arm, w.fetch_start + f.shape.onset)
        )
        speaker = (
            f"Model {worst.model_id}{worst.place()}"
            if frame.subject.kind == "model"
            else f"Model {worst.model_id} serving {who(worst.arm)}{subject_name(frame)}"
            f"{worst.place()}"
        )
        failing = worst.overdue > p.fail_overdue * refresh_min
        text = (
            f"{speaker} {'is' if failing else 'may be'} stale: snapshot {worst.version} is "
            f"{worst.age:.0f} min old against a {refresh_min:.0f}-minute refresh "
            f"(+{worst.lag:.0f} min lag): it has served since {fmt_time(worst.first)} UTC and "
            f"{'missed its refresh at' if failing else 'its successor was due at'} "
            f"{fmt_time(worst.due)} UTC"
        )
        if worst.newer is not None:
            text += f" although {worst.newer} was published at {fmt_time(worst.newer_published)}"
            if worst.where:
                text += (
                    " and serves the rest of the arm" if frame.control else " and serves the rest"
                )
        if control_age is not None and worst.arm != frame.control:
            text += f"; control's snapshot is {control_age:.0f} min old"
        shape = _shape_text(f, frame, p, moved, aged=True)
        text += f"; {shape}" if shape else ""
        ramp = _ramps(f, p.trend_alpha_warn) and not moved
        # It stopped refreshing by its missed refresh; a ramp dates the drift if it began before.
        onset = worst.due
        if ramp and f is not None:
            began = max(w.fetch_start + f.shape.start, worst.first)
            onset = min(began, worst.due) if worst.due is not None else began
        if failing:
            verdict = "fail"
            summary = text + "."
        else:
            # Just past its due time: a new snapshot may still be on its way.
            verdict = "warn" if ramp else "inconclusive"
            deadline = (worst.due or w.end) + math.ceil(p.fail_overdue * refresh_min)
            wait = max(deadline - (worst.last + 1), 1)
            summary = (
                text + f". Stale unless a new snapshot serves by {fmt_time(deadline)} UTC: "
                f"about {wait} more minutes of traffic would settle it."
            )
        return CheckResult(
            check="staleness",
            verdict=verdict,
            summary=summary,
            effect=Effect(
                name="served snapshot age beyond cadence + lag",
                estimate=worst.overdue,
                unit="minutes",
            ),
            p_value=None,
            onset=to_datetime(onset) if onset is not None else None,
            experiment=frame.subject.experiment_id,
            arm=worst.arm if frame.control is not None else None,
            where={d: v[0] for d, v in worst.where.items() if len(v) == 1},
            evidence=evidence,
            # The stale model: an arm serves others' too (another layer's experiment on its units).
            params={**base, "stale_by": "age", "model": worst.model_id},
        )

    f = shapes.get(ramp_arm) if ramp_arm is not None else None
    if ramp_arm is not None and f is not None and _ramps(f, p.trend_alpha_warn):
        s = f.shape
        tau = w.fetch_start + s.onset
        # Only a refreshing model can stop refreshing; the snapshot serving now served through
        # the ramp (from before its best step), and no newer one began since the ramp did.
        mine = [
            a for a in served if a.arm == ramp_arm and a.first <= tau + 3 and a.refresh is not None
        ]
        a = max(mine, key=lambda x: x.age if np.isfinite(x.age) else -1.0) if mine else None
        onset = max(w.fetch_start + s.start, a.first) if a is not None else tau
        if a is not None and not _began_after(frame, ramp_arm, onset):
            failing = s.p_value < p.trend_alpha and s.rise() >= f.floor
            age = (
                f"snapshot {a.version} has served since {fmt_time(a.first)} UTC"
                + (f" ({a.age:.0f} min old" if np.isfinite(a.age) else " (age unknown")
                + (
                    f" against a {a.refresh}-minute refresh; the next is due at "
                    f"{fmt_time(a.due)} UTC)"
                    if a.refresh is not None
                    else ", no refresh cadence)"
                )
            )
            return CheckResult(
                check="staleness",
                verdict="fail" if failing else "warn",
                summary=(
                    f"{f.what[0].upper()}{f.what[1:]} of {who(ramp_arm)}{subject_name(frame)} "
                    f"degraded gradually since {fmt_time(onset)} UTC "
                    f"({f.sign}{s.slope_per_hour():.1%}/h, {f.sign}{s.rise():.1%} so far, "
                    f"{fmt_p(s.p_value)}) with no new snapshot: {age}. A ramp, not a step: the "
                    "model is not keeping up with the world (stale), not a worse model."
                ),
                effect=Effect(
                    name=f"{f.what} drift per hour", estimate=100 * s.slope_per_hour(), unit="%"
                ),
                p_value=s.p_value,
                mde=100 * s.mde_per_hour(p.trend_alpha),
                onset=to_datetime(onset),
                experiment=frame.subject.experiment_id,
                arm=ramp_arm if frame.control is not None else None,
                evidence=evidence,
                params={**base, "stale_by": "ramp"},
            )
    if not cadenced:
        return no_data(
            "staleness",
            frame,
            f"The models of {subject_name(frame)} have no refresh cadence to check against.",
            settings,
        ).model_copy(update={"evidence": evidence})
    top = max(cadenced, key=lambda a: a.overdue)
    moved = (
        f is not None
        and ramp_arm is not None
        and _moved_near(frame, ramp_arm, w.fetch_start + f.shape.onset)
    )
    shape = _shape_text(f, frame, p, moved)
    summary = (
        f"Snapshots of {subject_name(frame)} are fresh (oldest {top.age:.0f} min, next "
        f"refresh due by {fmt_time(top.due)} UTC)" + (f"; {shape}" if shape else "") + "."
    )
    unclear = shape_param == "unclear" and not moved
    if unclear:
        # NE rose with no version change and its shape cannot be told yet: a model that just
        # stopped refreshing looks like this until its successor is due.
        deadline = (top.due or w.end) + math.ceil(p.fail_overdue * float(top.refresh or 0))
        summary += (
            f" A stale snapshot is not ruled out: it would show by {fmt_time(deadline)} UTC "
            "(no new snapshot serving, or NE still rising)."
        )
    return CheckResult(
        check="staleness",
        verdict="inconclusive" if unclear else "ok",
        summary=summary,
        effect=Effect(
            name="served snapshot age beyond cadence + lag", estimate=top.overdue, unit="minutes"
        ),
        experiment=frame.subject.experiment_id,
        arm=ramp_arm if unclear and frame.control is not None else None,
        evidence=evidence,
        params={
            **base,
            "ramp_mde_per_hour": f.shape.mde_per_hour(p.trend_alpha) if f is not None else None,
        },
    )
