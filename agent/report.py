"""Reports: self-contained HTML (jinja2, plots as base64 PNG) and Markdown, written to disk.

Three plots, each drawn only when its data exists: the alert metric per minute with the onset
marked; test vs control for the top cause's failing check (its ``series`` evidence); and the
attribution breakdown (share of the change per experiment). Matplotlib runs on the Agg backend
(no display); every text in the HTML is escaped.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from agent.localize import attributed_experiments
from agent.narrative import ReportModel, render_markdown
from agent.state import CheckOutcome
from tools.result import Evidence

__all__ = ["alert_series_plot", "attribution_plot", "check_plot", "render_html", "write_report"]

_log = logging.getLogger(__name__)
_env = Environment(
    loader=PackageLoader("agent", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
# pyplot's state machine is not thread-safe; the investigation pool runs reports on threads.
_plot_lock = threading.Lock()


def _pyplot() -> Any:
    """pyplot on the Agg backend, imported on first use (the CLI's other commands skip it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _minutes(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values):
        return pd.to_datetime(values.astype("int64") * 60, unit="s")
    return pd.to_datetime(values, utc=True).dt.tz_localize(None)


def _trimmed(frame: pd.DataFrame) -> pd.DataFrame:
    """Without the leading minutes that have no traffic yet (all values zero or missing)."""
    values = pd.to_numeric(frame["value"], errors="coerce").fillna(0.0)
    live = frame.loc[values != 0, "t"]
    return frame if live.empty else frame[frame["t"] >= live.min()]


def alert_series_plot(
    frame: pd.DataFrame | None, metric: str, onset: datetime | None, scope: str = ""
) -> str | None:
    """The alert metric per minute (one line per arm) with the onset marked; base64 PNG."""
    if frame is None or len(frame) == 0 or "value" not in frame or "minute" not in frame:
        return None
    data = _trimmed(frame.assign(t=_minutes(frame["minute"])))
    with _plot_lock:
        fig, ax = _pyplot().subplots(figsize=(8, 3))
        groups = data.groupby("arm") if "arm" in data else [("all", data)]
        for arm, part in groups:
            part = part.sort_values("t")
            ax.plot(part["t"], part["value"], label=str(arm), linewidth=1)
        if onset is not None:
            ax.axvline(
                pd.Timestamp(onset.replace(tzinfo=None)),
                color="red",
                linestyle="--",
                label="onset",
            )
        ax.set_title(f"{metric} per minute{' — ' + scope if scope else ''}")
        ax.legend(loc="best", fontsize=8)
        fig.autofmt_xdate()
        return _png(fig)


def _series(evidence: Sequence[Evidence]) -> Evidence | None:
    return next(
        (e for e in evidence if e.kind == "series" and len(e.columns) >= 2 and e.rows), None
    )


def check_plot(outcome: CheckOutcome | None) -> str | None:
    """Test vs control (every line of the failing check's series evidence); base64 PNG."""
    if outcome is None:
        return None
    ev = _series(outcome.result.evidence)
    if ev is None:
        return None
    frame = pd.DataFrame(ev.rows, columns=ev.columns)
    x = frame.columns[0]
    try:
        t = pd.to_datetime(frame[x], utc=True).dt.tz_localize(None)
    except (ValueError, TypeError):
        t = frame[x]
    with _plot_lock:
        fig, ax = _pyplot().subplots(figsize=(8, 3))
        for col in frame.columns[1:]:
            values = pd.to_numeric(frame[col], errors="coerce")
            if values.notna().any():
                ax.plot(t, values, label=str(col), linewidth=1)
        ax.set_title(f"{outcome.result.check}: {ev.name}")
        ax.legend(loc="best", fontsize=8)
        fig.autofmt_xdate()
        return _png(fig)


def attribution_plot(outcome: CheckOutcome | None) -> str | None:
    """Share of the change explained per experiment (horizontal bars); base64 PNG."""
    if outcome is None:
        return None
    rows = attributed_experiments(outcome.result)[:10]
    if not rows:
        return None
    with _plot_lock:
        fig, ax = _pyplot().subplots(figsize=(6, 0.4 * len(rows) + 1))
        ax.barh(
            [r.experiment for r in reversed(rows)],
            [r.share for r in reversed(rows)],
            color="#4472c4",
        )
        ax.set_xlabel("share of the change explained")
        ax.set_title("Attribution by experiment")
        return _png(fig)


def render_html(model: ReportModel) -> str:
    """The report as one self-contained HTML page (no external resources)."""
    return _env.get_template("report.html.j2").render(report=model)


def write_report(folder: Path, investigation_id: str, model: ReportModel) -> tuple[str, str, Path]:
    """Render and write ``<id>.md`` and ``<id>.html`` under ``folder``.

    Returns:
        The Markdown, the HTML and the HTML file's path.
    """
    markdown = render_markdown(model)
    html = render_html(model)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{investigation_id}.md").write_text(markdown, encoding="utf-8")
    path = folder / f"{investigation_id}.html"
    path.write_text(html, encoding="utf-8")
    return markdown, html, path
