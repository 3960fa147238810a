"""Reports: self-contained HTML (jinja2, plots as base64 SVG) and Markdown, written to disk.

Three plots, each drawn only when its data exists: the alert metric per minute with the onset
marked; test vs control for the top cause's failing check (its ``series`` evidence); and the
attribution breakdown (evidence per experiment). The charts are small SVG documents written
directly (:mod:`agent._svg`): matplotlib took longer to draw them than the investigation took to
run its statistics. Every text in the HTML and in the charts is escaped.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from agent._svg import bar_chart, line_chart
from agent.localize import attributed_experiments
from agent.models import Alert, FollowUp, InvestigationView
from agent.narrative import ReportModel, render_markdown
from agent.state import CheckOutcome
from tools.result import Evidence

__all__ = [
    "alert_series_plot",
    "attribution_plot",
    "check_plot",
    "followup_lines",
    "joined_lines",
    "render_html",
    "write_report",
]

_log = logging.getLogger(__name__)
_env = Environment(
    loader=PackageLoader("agent", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def inline_markdown(text: object) -> Markup:
    """The report's inline Markdown (``code``, **bold**) as HTML, everything else escaped."""
    safe = str(escape(str(text)))
    safe = _CODE.sub(r"<code>\1</code>", safe)
    return Markup(_BOLD.sub(r"<strong>\1</strong>", safe))


_env.filters["md"] = inline_markdown


def _b64(svg: str | None) -> str | None:
    return base64.b64encode(svg.encode("utf-8")).decode("ascii") if svg else None


def _seconds(t: pd.Series) -> pd.Series:
    """Naive UTC datetimes as float epoch seconds."""
    return t.astype("datetime64[ns]").astype("int64") / 1e9


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
    """The alert metric per minute (one line per arm) with the onset marked; base64 SVG."""
    if frame is None or len(frame) == 0 or "value" not in frame or "minute" not in frame:
        return None
    data = _trimmed(frame.assign(t=_minutes(frame["minute"])))
    data = data.assign(x=_seconds(data["t"]), value=pd.to_numeric(data["value"], errors="coerce"))
    groups = data.groupby("arm", sort=True) if "arm" in data else [("all", data)]
    lines = []
    for arm, part in groups:
        part = part.sort_values("x")
        lines.append((str(arm), part["x"].tolist(), part["value"].astype(float).tolist()))
    marker = pd.Timestamp(onset.replace(tzinfo=None)).value / 1e9 if onset is not None else None
    title = f"{metric} per minute{' — ' + scope if scope else ''} (UTC)"
    return _b64(line_chart(lines, title, marker=marker))


def _series(evidence: Sequence[Evidence]) -> Evidence | None:
    return next(
        (e for e in evidence if e.kind == "series" and len(e.columns) >= 2 and e.rows), None
    )


def check_plot(outcome: CheckOutcome | None) -> str | None:
    """Test vs control (every line of the failing check's series evidence); base64 SVG."""
    if outcome is None:
        return None
    ev = _series(outcome.result.evidence)
    if ev is None:
        return None
    frame = pd.DataFrame(ev.rows, columns=ev.columns)
    x = frame.columns[0]
    timed = True
    try:
        xs = _seconds(pd.to_datetime(frame[x], utc=True).dt.tz_localize(None))
    except (ValueError, TypeError):
        xs, timed = pd.to_numeric(frame[x], errors="coerce"), False
    lines = []
    for col in frame.columns[1:]:
        values = pd.to_numeric(frame[col], errors="coerce")
        if values.notna().any():
            lines.append((str(col), xs.astype(float).tolist(), values.astype(float).tolist()))
    title = f"{outcome.result.check}: {ev.name}"
    return _b64(line_chart(lines, title, timed=timed))


def attribution_plot(outcome: CheckOutcome | None) -> str | None:
    """Evidence per experiment, −log10 of its adjusted p-value (horizontal bars); base64 SVG.

    The bars show how strongly each experiment's arm-vs-control effect moved (the ranking the
    suspects come from); the share of the change each explains is in the label.
    """
    if outcome is None:
        return None
    rows = attributed_experiments(outcome.result)[:10]
    if not rows:
        return None
    return _b64(
        bar_chart(
            [f"{r.experiment} ({r.share:.0%} of change)" for r in rows],
            [-math.log10(max(r.evidence, 1e-300)) for r in rows],
            "Attribution by experiment",
            "−log10 adjusted p of its arm-vs-control shift",
        )
    )


def followup_lines(followups: Sequence[FollowUp]) -> list[str]:
    """The "Follow-ups" history: one line per run (the running one is this report)."""
    out = []
    for f in followups:
        what = "first investigation" if f.n == 0 else f"follow-up {f.n}"
        due = f" (due {f.due_at:%H:%M})" if f.due_at is not None and f.n else ""
        found = f"{f.status}: {f.summary}" if f.status is not None else "this report"
        out.append(f"{what} on data up to {f.ran_at:%Y-%m-%d %H:%M} UTC{due} — {found}")
    return out


def joined_lines(alerts: Sequence[Alert]) -> list[str]:
    """The alerts that joined the investigation, one line each (their text is untrusted)."""
    out = []
    for a in alerts:
        scope = f"experiment {a.experiment}" if a.experiment else "all traffic"
        name = f" `{a.name}`" if a.name else ""
        out.append(f"{a.metric} on {scope}{name} from {a.source}, fired {a.fired_at:%H:%M} UTC")
    return out


def _history_markdown(followups: list[str], joined: list[str]) -> list[str]:
    out: list[str] = []
    if joined:
        out += ["**Alerts that joined this investigation:**", ""]
        out += [f"- {line}" for line in joined] + [""]
    if followups:
        out += ["**Follow-ups:**", ""] + [f"- {line}" for line in followups] + [""]
    return out


def render_html(
    model: ReportModel, followups: Sequence[str] = (), joined: Sequence[str] = ()
) -> str:
    """The report as one self-contained HTML page (no external resources)."""
    return _env.get_template("report.html.j2").render(
        report=model, followups=list(followups), joined=list(joined)
    )


def write_report(
    folder: Path,
    investigation_id: str,
    model: ReportModel,
    history: InvestigationView | None = None,
) -> tuple[str, str, Path]:
    """Render and write ``<id>.md`` and ``<id>.html`` under ``folder``.

    Args:
        folder: The reports folder.
        investigation_id: Names the files.
        model: The report.
        history: The investigation as stored: its follow-ups and joined alerts are listed.

    Returns:
        The Markdown, the HTML and the HTML file's path.
    """
    followups = followup_lines(history.followups) if history is not None else []
    joined = joined_lines(history.joined_alerts) if history is not None else []
    markdown = render_markdown(model)
    extra = _history_markdown(followups, joined)
    if extra:
        footer = f"_{model.footer}_"
        head, sep, tail = markdown.rpartition(footer)
        markdown = head + "\n".join(extra) + sep + tail if sep else markdown + "\n".join(extra)
    html = render_html(model, followups, joined)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{investigation_id}.md").write_text(markdown, encoding="utf-8")
    path = folder / f"{investigation_id}.html"
    path.write_text(html, encoding="utf-8")
    return markdown, html, path
