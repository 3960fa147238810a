"""The snapshots an arm serves now, each aged against its cadence, and where a pinned one serves.

Every version still serving a material share of an arm's recent traffic is aged, not only the one
serving most of it: a snapshot pinned in one ad type or one country while the rest of the arm
moved on is a stale model too, and the finding names where it serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from tools.checks._engine import SubjectFrame
from tools.telemetry import to_datetime, to_minute

__all__ = ["Served", "serving"]

_SHARP = 0.1
"""A version localises to the dimension values where it serves over 90 % (under 10 % elsewhere)."""


@dataclass(frozen=True)
class Served:
    """One snapshot still serving (part of) an arm."""

    arm: str
    model_id: str
    version: str
    trained_at: int | None
    first: int
    last: int
    share: float
    refresh: int | None
    lag: float
    newer: str | None
    newer_published: int | None
    where: Mapping[str, tuple[str, ...]]

    @property
    def age(self) -> float:
        """Minutes from training to the last minute it served."""
        return float(self.last + 1 - self.trained_at) if self.trained_at is not None else math.nan

    @property
    def overdue(self) -> float:
        """Minutes past cadence + lag (negative while fresh); NaN without a cadence."""
        if self.refresh is None or not np.isfinite(self.age):
            return float("nan")
        return self.age - (self.refresh + self.lag)

    @property
    def due(self) -> int | None:
        """The minute its successor was due to serve."""
        if self.trained_at is None or self.refresh is None:
            return None
        return self.trained_at + int(self.lag + self.refresh)

    def place(self) -> str:
        """`` in ad_type story, video`` when it serves only part of the arm, else empty."""
        parts = [f"{dim} {', '.join(values)}" for dim, values in self.where.items()]
        return f" in {' and '.join(parts)}" if parts else ""


def serving(
    frame: SubjectFrame,
    arm: str,
    snapshots: pd.DataFrame,
    refresh: int | None,
    *,
    recent_minutes: int,
    min_share: float,
    lag_minutes: float | None,
) -> list[Served]:
    """Every version serving at least ``min_share`` of ``arm``'s recent requests.

    Args:
        frame: The subject's wide aggregate.
        arm: The arm.
        snapshots: ``model_snapshots`` rows of the served models.
        refresh: The arm's refresh cadence in minutes (None: not refreshing).
        recent_minutes: The minutes at the end of the data that say what is served now.
        min_share: Smallest share of the recent requests that counts as served.
        lag_minutes: Normal training-to-serving lag; None reads it from the snapshots.

    Returns:
        The served versions, each aged at the last minute it served; an overdue one that serves
        only part of the arm says where.
    """
    w = frame.window
    keys = ["model_id", "model_version"]
    c = frame.cube
    arm_rows = c.loc[c["arm"].to_numpy() == arm, ["minute", "n", *keys, *frame.dims]]
    minute = arm_rows["minute"].to_numpy()
    rows = arm_rows[(minute < w.end) & (arm_rows["n"].to_numpy() > 0)]
    if rows.empty:
        return []
    end = int(rows["minute"].max())
    recent = rows[rows["minute"].to_numpy() > end - recent_minutes]
    total = float(recent["n"].sum())
    by = recent.groupby(keys, sort=False, observed=True)["n"].sum()
    span = rows.groupby(keys, sort=False, observed=True)["minute"]
    firsts, lasts = span.min().to_dict(), span.max().to_dict()
    out: list[Served] = []
    raw_keys: list[object] = []
    per_model: dict[str, tuple[pd.DataFrame, float]] = {}
    for key, n in by.items():
        model_id, version = (str(k) for k in key) if isinstance(key, tuple) else ("", "")
        share = float(n) / total if total > 0 else 0.0
        if share < min_share:
            continue
        if model_id not in per_model:
            mine = snapshots[snapshots["model_id"] == model_id]
            lags = (mine["published_at"] - mine["trained_at"]).dt.total_seconds() / 60
            per_model[model_id] = (mine, float(lags.median()) if len(lags) else 0.0)
        snaps, median_lag = per_model[model_id]
        row = snaps[snaps["model_version"] == version]
        trained = to_minute(row["trained_at"].iloc[0].to_pydatetime()) if len(row) else None
        lag = lag_minutes if lag_minutes is not None else median_lag
        newer = snaps[
            (snaps["trained_at"] > (row["trained_at"].iloc[0] if len(row) else pd.Timestamp.max))
            & (snaps["published_at"] < to_datetime(w.end))
        ].sort_values("published_at")
        first, last = int(firsts[key]), int(lasts[key])
        out.append(
            Served(
                arm=arm,
                model_id=str(model_id),
                version=str(version),
                trained_at=trained,
                first=int(first),
                last=int(last),
                share=share,
                refresh=refresh,
                lag=lag,
                newer=str(newer["model_version"].iloc[0]) if len(newer) else None,
                newer_published=(
                    to_minute(newer["published_at"].iloc[0].to_pydatetime()) if len(newer) else None
                ),
                where={},
            )
        )
        raw_keys.append(key)
    # Where a version serves is asked only of one overdue while others serve the same arm.
    partial = [i for i, a in enumerate(out) if a.overdue > 0 and a.share < 1.0 - min_share]
    if partial:
        tables = _dim_tables(frame, recent, keys)
        for i in partial:
            out[i] = replace(out[i], where=_where(tables, raw_keys[i]))
    return out


def _dim_tables(
    frame: SubjectFrame, recent: pd.DataFrame, keys: list[str]
) -> dict[str, pd.DataFrame]:
    """Per dimension: recent requests per (model, version) x dimension value."""
    out = {}
    for dim in frame.dims:
        if dim in recent.columns:
            tab = recent.groupby([*keys, dim])["n"].sum().unstack(dim, fill_value=0)
            out[dim] = tab
    return out


def _where(tables: Mapping[str, pd.DataFrame], key: object) -> dict[str, tuple[str, ...]]:
    """The dimension values a version serves (nearly) all of, when it serves (nearly) none of
    the others: where a pinned snapshot lives while the rest of the arm moved on."""
    out: dict[str, tuple[str, ...]] = {}
    for dim, tab in tables.items():
        totals = tab.sum(axis=0)
        at = list(tab.index).index(key) if key in tab.index else None
        own = (
            pd.Series(tab.to_numpy(float)[at], index=tab.columns) if at is not None else totals * 0
        )
        share = own / totals.where(totals > 0)
        held = [str(v) for v in share.index if share[v] >= 1.0 - _SHARP]
        rest = share[[str(v) not in held for v in share.index]].dropna()
        # A dimension localises only when the version serves all of some values, none of others.
        if held and len(rest) and bool((rest <= _SHARP).all()):
            out[dim] = tuple(sorted(held))
    return out
