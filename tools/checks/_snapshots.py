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
import numpy.typing as npt
import pandas as pd

from tools.checks._engine import SubjectFrame
from tools.telemetry import to_datetime, to_minute

__all__ = ["Served", "Versions", "serving", "top_served", "versions"]

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
    refresh: Mapping[str, int | None],
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
        refresh: Refresh cadence in minutes per model id (absent or None: the model does not
            refresh). Per model, not per arm: an arm also serves the models other layers'
            experiments put on part of its requests, each on its own cadence.
        recent_minutes: The minutes at the end of the data that say what is served now.
        min_share: Smallest share of the recent requests that counts as served.
        lag_minutes: Normal training-to-serving lag; None reads it from the snapshots.

    Returns:
        The served versions, each aged at the last minute it served; an overdue one that serves
        only part of the arm says where.
    """
    w = frame.window
    keys = ["model_id", "model_version"]
    v = versions(frame, arm)
    inside = v.minute < w.end
    if not inside.any():
        return []
    minute, pair = v.minute[inside], v.pair[inside]
    end = int(minute.max())
    recent_rows = minute > end - recent_minutes
    recent_pair, recent_n = pair[recent_rows], v.n[inside][recent_rows]
    # Requests are counts: their float sums are exact in any order.
    total = float(recent_n.sum())
    seen, first_at, inverse = np.unique(recent_pair, return_index=True, return_inverse=True)
    by_n = np.bincount(inverse.ravel(), weights=recent_n, minlength=seen.size)
    firsts, lasts = _extremes(pair, minute)
    out: list[Served] = []
    raw_keys: list[object] = []
    per_model: dict[str, _Model] = {}
    until = np.datetime64(to_datetime(w.end))
    for i in np.argsort(first_at, kind="stable"):  # in order of appearance, as groupby(sort=False)
        code = int(seen[i])
        key = v.keys[code]
        model_id, version = key
        share = float(by_n[i]) / total if total > 0 else 0.0
        if share < min_share:
            continue
        if model_id not in per_model:
            per_model[model_id] = _Model.of(snapshots, model_id)
        m = per_model[model_id]
        at = np.flatnonzero(m.versions == version)
        trained = _minute(m.trained[at[0]]) if at.size else None
        lag = lag_minutes if lag_minutes is not None else m.median_lag
        later = (m.trained > m.trained[at[0]]) if at.size else np.zeros(len(m.versions), bool)
        newer = np.flatnonzero(later & (m.published < until))
        if newer.size:  # the first published (the order pandas' sort_values gives)
            newer = newer[np.argsort(m.published[newer], kind="quicksort")]
        first, last = firsts[code], lasts[code]
        out.append(
            Served(
                arm=arm,
                model_id=str(model_id),
                version=str(version),
                trained_at=trained,
                first=int(first),
                last=int(last),
                share=share,
                refresh=refresh.get(str(model_id)),
                lag=lag,
                newer=str(m.versions[newer[0]]) if newer.size else None,
                newer_published=_minute(m.published[newer[0]]) if newer.size else None,
                where={},
            )
        )
        raw_keys.append(key)
    # Where a version serves is asked only of one overdue while others serve the same arm.
    partial = [i for i, a in enumerate(out) if a.overdue > 0 and a.share < 1.0 - min_share]
    if partial:
        c = frame.cube
        rows = c.loc[c["arm"].to_numpy() == arm, ["minute", "n", *keys, *frame.dims]]
        rows = rows[(rows["minute"].to_numpy() < w.end) & (rows["n"].to_numpy() > 0)]
        recent = rows[rows["minute"].to_numpy() > end - recent_minutes]
        tables = _dim_tables(frame, recent, keys)
        for i in partial:
            out[i] = replace(out[i], where=_where(tables, raw_keys[i]))
    return out


@dataclass(frozen=True)
class _Model:
    """One model's snapshots as arrays, and its median training-to-publishing lag."""

    versions: npt.NDArray[np.object_]
    trained: npt.NDArray[np.datetime64]
    published: npt.NDArray[np.datetime64]
    median_lag: float

    @classmethod
    def of(cls, snapshots: pd.DataFrame, model_id: str) -> _Model:
        mine = snapshots[snapshots["model_id"] == model_id]
        lags = (mine["published_at"] - mine["trained_at"]).dt.total_seconds() / 60
        return cls(
            mine["model_version"].to_numpy(object),
            mine["trained_at"].to_numpy(),
            mine["published_at"].to_numpy(),
            float(lags.median()) if len(lags) else 0.0,
        )


def _minute(at: np.datetime64) -> int:
    return to_minute(pd.Timestamp(at).to_pydatetime())


@dataclass(frozen=True)
class Versions:
    """An arm's rows with requests: their minute, requests and (model, version) pair.

    ``pair`` indexes ``keys``, the (model_id, model_version) pairs of the whole subject.
    """

    minute: npt.NDArray[np.int64]
    n: npt.NDArray[np.float64]
    pair: npt.NDArray[np.int64]
    keys: list[tuple[str, str]]

    def first_served(self) -> dict[tuple[str, str], int]:
        """(model_id, model_version) -> the first minute it served the arm."""
        firsts, _ = _extremes(self.pair, self.minute)
        return {self.keys[code]: first for code, first in firsts.items()}


def versions(frame: SubjectFrame, arm: str) -> Versions:
    """``arm``'s rows with requests and what served them, from the frame's arrays (computed
    once per frame and arm)."""

    def build() -> Versions:
        codes, uniques = frame.key_codes(["arm", "model_id", "model_version"])
        n = frame.row_column("n")
        keep = (codes[0] == frame.code("arm", arm)) & (n > 0)
        ids, vers = [str(v) for v in uniques[1]], [str(v) for v in uniques[2]]
        seen, pair = np.unique(codes[1][keep] * len(vers) + codes[2][keep], return_inverse=True)
        keys = [(ids[int(c) // len(vers)], vers[int(c) % len(vers)]) for c in seen]
        return Versions(frame.row_minutes()[keep], n[keep], pair.ravel(), keys)

    return frame.derived(f"versions:{arm}", build)


def _extremes(
    pair: npt.NDArray[np.int64], minute: npt.NDArray[np.int64]
) -> tuple[dict[int, int], dict[int, int]]:
    """Pair code -> its first and its last minute."""
    if not pair.size:
        return {}, {}
    order = np.argsort(pair, kind="stable")
    p, m = pair[order], minute[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    codes = [int(c) for c in p[starts]]
    lo, hi = np.minimum.reduceat(m, starts), np.maximum.reduceat(m, starts)
    return (
        dict(zip(codes, (int(x) for x in lo), strict=True)),
        dict(zip(codes, (int(x) for x in hi), strict=True)),
    )


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


def top_served(
    frame: SubjectFrame, keys: tuple[str, ...]
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Per arm, the values of ``keys`` (``model_id``, ``model_version``) that served most of its
    window requests; and every model id serving in the window, sorted (computed once per frame).

    Ties go as ``group.sort_values("n").iloc[-1]`` breaks them (a quicksort by requests, the last).
    """

    def build() -> tuple[dict[str, tuple[str, ...]], list[str]]:
        w = frame.window
        by = frame.grouped(["arm", *keys], (w.start, w.end))
        arms = by["arm"].to_numpy(object)
        n = by["n"].to_numpy(np.float64)
        values = [by[k].to_numpy(object) for k in keys]
        top: dict[str, tuple[str, ...]] = {}
        for arm in sorted({str(a) for a in arms}):
            rows = np.flatnonzero(arms == arm)
            last = rows[np.argsort(n[rows], kind="quicksort")[-1]]
            top[arm] = tuple(str(v[last]) for v in values)
        ids = sorted({str(m) for m in by["model_id"].unique().tolist()}) if len(by) else []
        return top, ids

    return frame.derived(f"top_served:{','.join(keys)}", build)
