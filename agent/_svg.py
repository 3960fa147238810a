"""Small hand-written SVG charts for the HTML report: lines over time and horizontal bars.

A report carries at most three small charts; drawing them with matplotlib cost more than the
whole investigation's statistics, so they are written as SVG text directly: a polyline per series
(NaN minutes break the line rather than drop to zero), an optional onset marker, ``HH:MM`` ticks
on round minutes, a legend. Every text is XML-escaped. The output is deterministic, a few KB, and
renders in any browser (embedded as a ``data:image/svg+xml`` URI).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from xml.sax.saxutils import escape

__all__ = ["bar_chart", "line_chart"]

_PALETTE = ("#4472c4", "#ed7d31", "#70ad47", "#7f3f98", "#a5a5a5", "#ffc000", "#264478")
_FONT = 'font-family="sans-serif" font-size="11"'
_TICKS = 6


def _fmt(v: float) -> str:
    """A compact tick label."""
    if v == 0 or not math.isfinite(v):
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values spanning ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _time_ticks(lo: float, hi: float) -> list[float]:
    """Epoch seconds of round minutes, about ``_TICKS`` of them, spanning ``[lo, hi]``."""
    span = (hi - lo) / 60
    step = 60 * next((s for s in (5, 10, 15, 30, 60, 120, 240) if span / s <= _TICKS), 480)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) // step) + 1)]


def _hhmm(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M")


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    *,
    marker: float | None = None,
    marker_label: str = "onset",
    timed: bool = True,
    width: int = 640,
    height: int = 220,
) -> str | None:
    """Lines over a shared x axis; None when nothing is finite.

    Args:
        series: ``(label, xs, ys)`` per line; ``xs`` are epoch seconds when ``timed``.
        title: The chart's title.
        marker: An x value to mark with a dashed red line (the onset).
        marker_label: The marker's legend label.
        timed: Label the x axis ``HH:MM`` (UTC) instead of numbers.
        width: Pixels.
        height: Pixels.

    Returns:
        The SVG document.
    """
    points = [
        (x, y)
        for _, xs, ys in series
        for x, y in zip(xs, ys, strict=False)
        if math.isfinite(x) and math.isfinite(y)
    ]
    if not points:
        return None
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    if marker is not None and math.isfinite(marker):
        x_lo, x_hi = min(x_lo, marker), max(x_hi, marker)
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    left, right, top, bottom = 58, 10, 24, 26
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2:.0f}" y="15" text-anchor="middle" {_FONT}>{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for v in _nice_ticks(y_lo, y_hi):
        y = sy(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{_fmt(v)}</text>'
        )
    ticks = _time_ticks(x_lo, x_hi) if timed else _nice_ticks(x_lo, x_hi)
    for v in ticks:
        x = sx(v)
        label = _hhmm(v) if timed else _fmt(v)
        out.append(
            f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" {_FONT}>{label}</text>'
        )
    legend: list[tuple[str, str, str]] = []
    for k, (label, xs, ys) in enumerate(series):
        color = _PALETTE[k % len(_PALETTE)]
        runs: list[list[str]] = [[]]
        for x, y in zip(xs, ys, strict=False):
            if math.isfinite(x) and math.isfinite(y):
                runs[-1].append(f"{sx(x):.1f},{sy(y):.1f}")
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="1.5" fill="{color}"/>')
            elif run:
                pts = " ".join(run)
                out.append(
                    f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.2"/>'
                )
        legend.append((label, color, ""))
    if marker is not None and math.isfinite(marker):
        x = sx(marker)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="red" '
            'stroke-dasharray="4 3"/>'
        )
        legend.append((marker_label, "red", ' stroke-dasharray="4 3"'))
    for k, (label, color, dash) in enumerate(legend):
        y = top + 12 + 13 * k
        out.append(
            f'<line x1="{left + 6}" x2="{left + 22}" y1="{y - 4}" y2="{y - 4}" '
            f'stroke="{color}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{left + 26}" y="{y}" {_FONT}>{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    labels: Sequence[str], values: Sequence[float], title: str, x_label: str, width: int = 480
) -> str | None:
    """Horizontal bars, first label on top; None when there is nothing to draw.

    Args:
        labels: One per bar.
        values: Bar lengths (non-finite ones are drawn as zero).
        title: The chart's title.
        x_label: What the bar length means.
        width: Pixels.

    Returns:
        The SVG document.
    """
    if not labels:
        return None
    vals = [v if math.isfinite(v) else 0.0 for v in values]
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    if hi <= lo:
        hi = lo + 1
    left, right, top, row = 150, 16, 24, 20
    height = top + row * len(labels) + 34
    pw = width - left - right

    def sx(x: float) -> float:
        return left + (x - lo) / (hi - lo) * pw

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2:.0f}" y="15" text-anchor="middle" {_FONT}>{escape(title)}</text>',
    ]
    zero = sx(0.0)
    for k, (label, v) in enumerate(zip(labels, vals, strict=True)):
        y = top + row * k
        x0, x1 = sorted((zero, sx(v)))
        out.append(
            f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 0.5):.1f}" height="{row - 6}" '
            f'fill="{_PALETTE[0]}"/>'
        )
        out.append(
            f'<text x="{left - 4}" y="{y + row / 2 + 4:.1f}" text-anchor="end" {_FONT}>'
            f"{escape(label)}</text>"
        )
    base = top + row * len(labels)
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{base}" y2="{base}" stroke="#999"/>')
    for v in _nice_ticks(lo, hi):
        out.append(
            f'<text x="{sx(v):.1f}" y="{base + 13}" text-anchor="middle" {_FONT}>{_fmt(v)}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2:.0f}" y="{height - 4}" text-anchor="middle" {_FONT}>'
        f"{escape(x_label)}</text>"
    )
    out.append("</svg>")
    return "".join(out)
