"""Staleness check: age of the served snapshot vs its refresh cadence and vs control; NE drift.

A model that stops refreshing keeps serving one ``model_version`` whose ``trained_at`` ages past
the cadence (plus the usual training-to-publication lag), often while newer snapshots exist; the
world then drifts away from it, so its NE climbs relative to control or its own baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tools.checks._common import fmt_time, no_data, params_of, subject_name, table
from tools.checks._engine import SubjectFrame
from tools.result import CheckResult, Effect, Evidence, Scalar
from tools.stats import p_from_z
from tools.telemetry import to_datetime, to_minute

__all__ = ["StalenessParams", "staleness_check"]


@dataclass(frozen=True)
class StalenessParams:
    """Thresholds of the staleness check.

    Attributes:
        fail_overdue: Fail when the served snapshot is older than cadence + lag by more than this
            share of the cadence (0.1: six minutes late for an hourly model).
        lag_minutes: Normal training-to-serving lag; None reads it from the model's snapshots.
        trend_alpha: p-value below which the NE drift (vs control or baseline) counts.
        trend_min_per_hour: Smallest NE drift (relative, per hour) that counts.
        min_requests: Fewest requests per arm in the window.
    """

    fail_overdue: float = 0.1
    lag_minutes: float | None = None
    trend_alpha: float = 1e-3
    trend_min_per_hour: float = 0.01
    min_requests: int = 200


@dataclass(frozen=True)
class _Age:
    arm: str
    model_id: str
    version: str
    trained_at: int | None
    last_change: int | None
    age: float
    refresh: int | None
    lag: float
    newer: str | None
    newer_published: int | None

    @property
    def overdue(self) -> float:
        """Minutes past cadence + lag (negative while fresh); NaN without a cadence."""
        if self.refresh is None or not np.isfinite(self.age):
            return float("nan")
        return self.age - (self.refresh + self.lag)


def _served(frame: SubjectFrame, arm: str) -> pd.DataFrame:
    """Dominant (model_id, model_version) per minute of ``arm`` over the fetched range."""
    c = frame.cube[frame.cube["arm"] == arm]
    by: pd.DataFrame = c.groupby(["minute", "model_id", "model_version"])[["n"]].sum()
    by = by.reset_index().sort_values(["minute", "n"], ascending=[True, False])
    out: pd.DataFrame = by.drop_duplicates("minute").set_index("minute")
    return out


def _age(
    frame: SubjectFrame,
    arm: str,
    snapshots: pd.DataFrame,
    refresh: Mapping[str, int | None],
    p: StalenessParams,
) -> _Age | None:
    served = _served(frame, arm)
    w = frame.window
    served = served[served.index < w.end]
    if served.empty:
        return None
    last_minute = int(served.index.max())
    model_id, version = str(served["model_id"].iloc[-1]), str(served["model_version"].iloc[-1])
    snaps = snapshots[snapshots["model_id"] == model_id]
    row = snaps[snaps["model_version"] == version]
    trained = to_minute(row["trained_at"].iloc[0].to_pydatetime()) if len(row) else None
    lags = (snaps["published_at"] - snaps["trained_at"]).dt.total_seconds() / 60
    lag = (
        p.lag_minutes if p.lag_minutes is not None else (float(lags.median()) if len(lags) else 0.0)
    )
    same = (served["model_id"] == model_id) & (served["model_version"] == version)
    changes = served.index[~same.to_numpy()]
    last_change = int(changes.max()) + 1 if len(changes) else None
    # Age when the data ends (not at the window's end, which may lie in the future).
    age = float(last_minute + 1 - trained) if trained is not None else float("nan")
    newer = snaps[
        (snaps["trained_at"] > (row["trained_at"].iloc[0] if len(row) else pd.Timestamp.max))
        & (snaps["published_at"] < to_datetime(w.end))
    ].sort_values("published_at")
    return _Age(
        arm,
        model_id,
        version,
        trained,
        last_change,
        age,
        refresh.get(arm),
        lag,
        str(newer["model_version"].iloc[0]) if len(newer) else None,
        to_minute(newer["published_at"].iloc[0].to_pydatetime()) if len(newer) else None,
    )


def _ne_trend(frame: SubjectFrame, arm: str, p: StalenessParams) -> tuple[float, float, float]:
    """Slope of per-minute log loss (relative to the arm's mean, per hour) vs the reference.

    The reference is the control arm (same minutes) when there is one, else nothing (a model's
    own trend). Returns ``(slope per hour, z, p)``.
    """
    w = frame.window
    t = frame.minute_sums(arm).loc[w.fetch_start : w.end - 1]
    y = (t["sum_ll"] / t["n_ll"].where(t["n_ll"] > 0)).to_numpy(float)
    n = t["n_ll"].to_numpy(float)
    if frame.control is not None and frame.control != arm and frame.control in frame.arms:
        r = frame.minute_sums(frame.control).loc[w.fetch_start : w.end - 1]
        yr = (r["sum_ll"] / r["n_ll"].where(r["n_ll"] > 0)).to_numpy(float)
        y = y - yr
        n = 1 / (1 / np.maximum(n, 1) + 1 / np.maximum(r["n_ll"].to_numpy(float), 1))
    ok = np.isfinite(y) & (n > 0)
    if ok.sum() < 10:
        return 0.0, 0.0, 1.0
    x = np.arange(len(y), dtype=float)[ok] / 60.0
    yy, ww = y[ok], n[ok]
    xm, ym = np.average(x, weights=ww), np.average(yy, weights=ww)
    sxx = float(np.sum(ww * (x - xm) ** 2))
    if sxx <= 0:
        return 0.0, 0.0, 1.0
    slope = float(np.sum(ww * (x - xm) * (yy - ym)) / sxx)
    resid = yy - ym - slope * (x - xm)
    sigma2 = float(np.sum(ww * resid**2) / max(ok.sum() - 2, 1))
    se = float(np.sqrt(sigma2 / sxx))
    level = float(np.average((t["sum_ll"] / t["n_ll"].where(t["n_ll"] > 0)).to_numpy(float)[ok]))
    z = slope / se if se > 0 else 0.0
    return slope / level if level > 0 else 0.0, z, p_from_z(z, "up")


def staleness_check(
    frame: SubjectFrame,
    snapshots: pd.DataFrame,
    *,
    refresh: Mapping[str, int | None],
    params: StalenessParams | None = None,
) -> CheckResult:
    """Served snapshot age per arm vs refresh cadence and control, plus the NE drift.

    Args:
        frame: The subject's wide aggregate (its ``model_version`` per minute tells what served).
        snapshots: ``model_snapshots`` rows of the served models.
        refresh: Refresh cadence in minutes per arm (None: the model does not refresh).
        params: Thresholds.

    Returns:
        ``fail`` when an arm's snapshot is overdue by more than ``fail_overdue`` of its cadence;
        ``warn`` when it is overdue by less, or when NE drifts up significantly.
    """
    p = params or StalenessParams()
    settings = params_of(p)
    w = frame.window
    ages = [
        a
        for arm in frame.arms
        if frame.sums(arm, w.start, w.end)["n"] >= p.min_requests
        and (a := _age(frame, arm, snapshots, refresh, p)) is not None
    ]
    if not ages:
        return no_data(
            "staleness", frame, f"No served traffic for {subject_name(frame)}.", settings
        )
    trends = {a.arm: _ne_trend(frame, a.arm, p) for a in ages}
    rows: list[dict[str, Scalar]] = []
    for a in ages:
        slope, _, pv = trends[a.arm]
        rows.append(
            {
                "arm": a.arm,
                "model_id": a.model_id,
                "served_version": a.version,
                "age_minutes": a.age,
                "refresh_minutes": a.refresh,
                "lag_minutes": a.lag,
                "overdue_minutes": a.overdue,
                "newer_version": a.newer,
                "ne_drift_per_hour": slope,
                "ne_drift_p": pv,
            }
        )
    evidence: list[Evidence] = [table("served snapshot per arm", pd.DataFrame(rows))]
    cadenced = [a for a in ages if a.refresh is not None and np.isfinite(a.overdue)]
    worst = max(cadenced, key=lambda a: a.overdue / float(a.refresh or 1), default=None)
    control_age = next((a.age for a in ages if a.arm == frame.control), None)
    if worst is not None and worst.overdue > 0:
        refresh_min = float(worst.refresh or 1)
        failing = worst.overdue > p.fail_overdue * refresh_min
        missed = (worst.trained_at or w.end) + int(worst.lag + refresh_min)
        # Stale since the last refresh that happened: when the stuck version began serving
        # (else its publication); the pipeline broke after it.
        since = (
            worst.last_change
            if worst.last_change is not None
            else ((worst.trained_at or w.end) + int(worst.lag))
        )
        who = f"arm {worst.arm} of " if frame.control is not None else ""
        text = (
            f"Model {worst.model_id} serving {who}{subject_name(frame)} is stale: snapshot "
            f"{worst.version} is {worst.age:.0f} min old against a {refresh_min:.0f}-minute "
            f"refresh (+{worst.lag:.0f} min lag): it has served since {fmt_time(since)} UTC and "
            f"missed its refresh at {fmt_time(missed)} UTC"
        )
        if worst.newer is not None:
            text += f" although {worst.newer} was published at {fmt_time(worst.newer_published)}"
        if control_age is not None and worst.arm != frame.control:
            text += f"; control's snapshot is {control_age:.0f} min old"
        slope, _, pv = trends[worst.arm]
        if pv < p.trend_alpha and slope >= p.trend_min_per_hour:
            text += f"; NE drifts up {slope:.1%}/h"
        return CheckResult(
            check="staleness",
            verdict="fail" if failing else "warn",
            summary=text + ".",
            effect=Effect(
                name="served snapshot age beyond cadence + lag",
                estimate=worst.overdue,
                unit="minutes",
            ),
            p_value=None,
            onset=to_datetime(missed),
            experiment=frame.subject.experiment_id,
            arm=worst.arm if frame.control is not None else None,
            evidence=evidence,
            params=settings,
        )
    drifting = [
        a
        for a in ages
        if trends[a.arm][2] < p.trend_alpha and trends[a.arm][0] >= p.trend_min_per_hour
    ]
    if drifting:
        a = max(drifting, key=lambda x: trends[x.arm][1])
        slope, _z, pv = trends[a.arm]
        return CheckResult(
            check="staleness",
            verdict="warn",
            summary=(
                f"Snapshots of {subject_name(frame)} are on cadence, but NE of "
                f"{'arm ' + a.arm if frame.control is not None else 'the model'} drifts up "
                f"{slope:.1%}/h."
            ),
            effect=Effect(name="NE drift per hour", estimate=100 * slope, unit="%"),
            p_value=pv,
            experiment=frame.subject.experiment_id,
            arm=a.arm if frame.control is not None else None,
            evidence=evidence,
            params=settings,
        )
    if not cadenced:
        return no_data(
            "staleness",
            frame,
            f"The models of {subject_name(frame)} have no refresh cadence to check against.",
            settings,
        ).model_copy(update={"evidence": evidence})
    top = max(cadenced, key=lambda a: a.overdue)
    return CheckResult(
        check="staleness",
        verdict="ok",
        summary=f"Snapshots of {subject_name(frame)} are fresh (oldest {top.age:.0f} min).",
        effect=Effect(
            name="served snapshot age beyond cadence + lag", estimate=top.overdue, unit="minutes"
        ),
        experiment=frame.subject.experiment_id,
        evidence=evidence,
        params=settings,
    )
