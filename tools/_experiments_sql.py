"""Every experiment's sums per arm and minute (or span): the exposure join of all experiments.

What attribution and infra's owner split read (:meth:`tools._queries.Queries.experiments`). On
DuckDB the join runs in pieces of request time, each within the store's memory limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tools._dialect_sql import as_int
from tools._queries import EXPOSURE_MARGIN, _int, _invalid, log_loss_of
from tools.aggregates import LOGLOSS_EPS, to_datetime, to_minute

if TYPE_CHECKING:
    from tools._queries import Queries

__all__ = ["EXPERIMENT_SUMS", "JOIN_SLICE_MINUTES", "LOG_LOSS_SUMS", "experiments_statement"]

EXPERIMENT_SUMS: tuple[str, ...] = (
    "n",
    "sum_label",
    "sum_revenue",
    "sum_revenue2",
    "n_error",
    "n_fallback",
    "n_pred",
    "n_invalid",
    "sum_pred",
)
"""The sums :meth:`Queries.experiments` computes by default, in the order of its columns."""

LOG_LOSS_SUMS: tuple[str, ...] = ("sum_ll", "sum_ll2", "sum_lp", "sum_lp2", "sum_lp3", "sum_lp4")
"""Sums computed only when asked for (attribution of an NE alert): each request's log loss and
its square, and the first to fourth powers of the logarithm of its valid prediction (the spread
of an arm's predictions on the log scale, where a CTR model's predictions are near normal, and
how sure that spread is). Logarithms per joined row."""

_READS: dict[str, tuple[str, ...]] = {
    "n": (),
    "sum_label": ("label",),
    "sum_revenue": ("revenue",),
    "sum_revenue2": ("revenue",),
    "n_error": ("error",),
    "n_fallback": ("fallback",),
    "n_pred": ("prediction",),
    "n_invalid": ("prediction", "error"),
    "sum_pred": ("prediction",),
    "sum_ll": ("prediction", "label"),
    "sum_ll2": ("prediction", "label"),
    "sum_lp": ("prediction",),
    "sum_lp2": ("prediction",),
    "sum_lp3": ("prediction",),
    "sum_lp4": ("prediction",),
}
"""The requests' columns each sum reads."""

JOIN_SLICE_MINUTES = 60
"""Request time per piece of :meth:`Queries.experiments`' exposure join on DuckDB: at the checks
bench's 12 k exposures a minute a piece's hash table fits the default memory limit with room to
spare (four-hour pieces were as fast there, but would spill at three times the traffic)."""


def experiments_statement(
    q: Queries,
    lo: datetime,
    hi: datetime,
    spans: Sequence[tuple[int, int]] = (),
    sums: Sequence[str] = EXPERIMENT_SUMS,
) -> sa.Select[Any]:
    """The statement of :meth:`Queries.experiments`: sums per experiment x arm x minute over every
    experiment's exposed requests.

    With ``spans`` (epoch-minute ranges ``[a, b)``), per experiment x arm x span instead:
    ``minute`` is the first minute of the span a row's minute falls in (the first that
    holds it), and rows in no span are left out. Attribution needs only these sums, and a
    thousand experiments' arms by minute is a large answer to move and a large hash table.
    ``sums`` (of :data:`EXPERIMENT_SUMS`) are the sums computed: each costs a pass over the
    joined rows (attribution of revenue reads three of the nine: 20-25 % less time in the
    checks bench).

    On DuckDB the join runs in pieces of at most :data:`JOIN_SLICE_MINUTES` of request time,
    cut at every span bound (``UNION ALL``, then one ``GROUP BY``): each piece's hash table
    stays within the store's memory limit, where the whole window's spilled to disk, and a
    piece's span is a constant, not a ``CASE`` per row (the checks bench's 10 M requests and
    6 M exposures, attribution's two spans: 3.2 s of CPU in one piece, 1.6 s in 60-minute
    pieces, 1.9 s in 30-minute ones; the join alone, ``count(*)``, 0.9 s). Exposures are
    read per piece with :data:`EXPOSURE_MARGIN`; each request is in one piece only, so every
    exposure joins exactly once.
    """
    covered = _merged(spans, to_minute(lo), to_minute(hi, ceil=True))
    if spans and covered is not None:
        # The spans cover one range: read only it; no row falls outside every span.
        lo = max(lo, to_datetime(covered[0]))
        hi = min(hi, to_datetime(covered[1]))
    chosen = [name for name in (*EXPERIMENT_SUMS, *LOG_LOSS_SUMS) if name in sums]
    reads = list(dict.fromkeys(col for name in chosen for col in _READS[name]))
    pieces = _pieces(lo, hi, spans) if q.dialect == "duckdb" else []
    rows = (
        sa.union_all(*(_part(q, a, b, spans, False, label, reads) for a, b, label in pieces))
        if len(pieces) > 1
        else _part(q, lo, hi, spans, covered is None, None, reads)
    ).subquery("j")
    # Grouped outside the join: the span's CASE (its bounds may be bound parameters) is written
    # once, not again in GROUP BY.
    keys = [rows.c.experiment_id, rows.c.arm, rows.c.minute]
    return sa.select(*keys, *_sums(rows.c, chosen)).group_by(*keys)


def _part(
    q: Queries,
    lo: datetime,
    hi: datetime,
    spans: Sequence[tuple[int, int]],
    gaps: bool,
    label: int | None,
    reads: Sequence[str],
) -> sa.Select[Any]:
    """The exposure join over ``[lo, hi)`` of request time: its rows, with the columns the sums
    read (``reads``).

    ``label``: every row of the piece lies in the span starting at this minute (a constant, no
    expression per row); else the span is found per row (``gaps``: leave out rows in no span),
    or, without spans, the row's minute.
    """
    r = q.schema.table("requests", "r")
    e = q.schema.table("exposures", "e")
    ts = r.c("ts")
    where = [
        q.in_window(ts, lo, hi),
        q.in_window(e.c("ts"), lo - EXPOSURE_MARGIN, hi + EXPOSURE_MARGIN),
    ]
    minute: sa.ColumnElement[Any]
    if label is not None:
        minute = _int(label)
    elif spans:
        # The span from the request's timestamp against each span's bounds: no minute
        # arithmetic per row, and zone maps still apply.
        whens = [
            (q.in_window(ts, to_datetime(a), to_datetime(b)), _int(a))
            for a, b in ((int(a), int(b)) for a, b in spans)
        ]
        minute = sa.case(*whens, else_=sa.null())
        if gaps:
            where.append(minute.is_not(None))
    else:
        minute = q.minute(ts)
    values = [r.c(name).label(name) for name in reads]
    return (
        sa.select(
            e.c("experiment_id").label("experiment_id"),
            e.c("arm").label("arm"),
            minute.label("minute"),
            *values,
        )
        .select_from(r.clause.join(e.clause, e.c("request_id") == r.c("request_id")))
        .where(*where)
    )


def _sums(c: Any, chosen: Sequence[str]) -> list[sa.ColumnElement[Any]]:
    """The ``chosen`` sums of :func:`experiments_statement` over the rows of :func:`_part`."""

    def valid() -> sa.ColumnElement[Any]:
        p = c.prediction
        return sa.case((sa.and_(p >= 0.0, p <= 1.0), p), else_=sa.null())

    def log_loss() -> sa.ColumnElement[Any]:
        return log_loss_of(valid(), as_int(c.label))

    def log_p() -> sa.ColumnElement[Any]:
        p = valid()
        return sa.func.ln(sa.case((p < LOGLOSS_EPS, LOGLOSS_EPS), else_=p))

    build: dict[str, Callable[[], sa.ColumnElement[Any]]] = {
        "n": lambda: sa.func.count(),
        "sum_label": lambda: sa.func.sum(as_int(c.label)),
        "sum_revenue": lambda: sa.func.sum(c.revenue),
        "sum_revenue2": lambda: sa.func.sum(c.revenue * c.revenue),
        "n_error": lambda: sa.func.sum(as_int(c.error)),
        "n_fallback": lambda: sa.func.sum(as_int(c.fallback)),
        "n_pred": lambda: sa.func.count(valid()),
        "n_invalid": lambda: _invalid(valid(), as_int(c.error)),
        "sum_pred": lambda: sa.func.sum(valid()),
        "sum_ll": lambda: sa.func.sum(log_loss()),
        "sum_ll2": lambda: sa.func.sum(log_loss() * log_loss()),
        "sum_lp": lambda: sa.func.sum(log_p()),
        "sum_lp2": lambda: sa.func.sum(log_p() * log_p()),
        "sum_lp3": lambda: sa.func.sum(log_p() * log_p() * log_p()),
        "sum_lp4": lambda: sa.func.sum(log_p() * log_p() * log_p() * log_p()),
    }
    return [build[name]().label(name) for name in chosen]


def _merged(spans: Sequence[tuple[int, int]], lo: int, hi: int) -> tuple[int, int] | None:
    """The one range ``[a, b)`` (clipped to ``[lo, hi)``) the spans cover without a gap, or
    None when they leave a gap inside it."""
    if not spans:
        return None
    ordered = sorted((max(int(a), lo), min(int(b), hi)) for a, b in spans)
    ordered = [(a, b) for a, b in ordered if b > a]
    if not ordered:
        return None
    a, b = ordered[0]
    for x, y in ordered[1:]:
        if x > b:
            return None
        b = max(b, y)
    return a, b


def _pieces(
    lo: datetime, hi: datetime, spans: Sequence[tuple[int, int]]
) -> list[tuple[datetime, datetime, int | None]]:
    """``[lo, hi)`` cut into pieces of at most :data:`JOIN_SLICE_MINUTES`, and at every span
    bound, each with the start of the first span holding it (pieces in no span are left out);
    without spans, every piece with None."""
    step = timedelta(minutes=JOIN_SLICE_MINUTES)
    cuts = {lo, hi}
    a = lo + step
    while a < hi:
        cuts.add(a)
        a += step
    for x, y in spans:
        cuts.update(t for t in (to_datetime(x), to_datetime(y)) if lo < t < hi)
    edges = sorted(cuts)
    out: list[tuple[datetime, datetime, int | None]] = []
    for a, b in pairwise(edges):
        if not spans:
            out.append((a, b, None))
            continue
        m = to_minute(a)
        label = next((int(x) for x, y in spans if int(x) <= m < int(y)), None)
        if label is not None:
            out.append((a, b, label))
    return out
