"""Tools for the LLM, declared once: JSON schemas generated from the check registry.

A tool is a check registered in :mod:`tools.registry`; its parameters (names, types, defaults)
come from the declaration's ``inspect.signature`` and its descriptions from the Google docstring,
through a pydantic model built with ``create_model`` (``extra="forbid"``), whose JSON schema is the
tool's ``parameters``. The same model validates the LLM's arguments before the toolbox's own
method runs. Nothing here is a hand-written parameter dict.

Also here: what crosses the boundary to the endpoint — redaction of configured fields (``unit_id``,
``user_id``...), the quoting of untrusted text as data, check results compacted for a prompt — and
what comes back: tool calls a model wrote as text (:func:`parse_text_calls`).
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from tools.registry import Checks, registry
from tools.result import CheckResult, Evidence

__all__ = [
    "DATA_CLOSE",
    "DATA_OPEN",
    "TextCall",
    "ToolSpec",
    "check_tools",
    "compact_result",
    "docstring_args",
    "minute_text",
    "parse_text_calls",
    "quote_data",
    "redact",
    "redact_text",
]

REDACTED = "[redacted]"
DATA_OPEN = "<<<DATA {label}>>>"
DATA_CLOSE = "<<<END DATA {label}>>>"
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]+:\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?:\s*(.*)$")


@dataclass(frozen=True)
class ToolSpec:
    """One check as a tool.

    Attributes:
        name: The method's name (the tool name the LLM calls).
        description: The docstring's summary.
        args_model: Validates the LLM's arguments (``extra="forbid"``).
        method: The bound method to call.
    """

    name: str
    description: str
    args_model: type[BaseModel]
    method: Callable[..., CheckResult]

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry (type ``function``)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.args_model.model_json_schema(),
            },
        }

    def call(self, arguments: str | Mapping[str, Any]) -> CheckResult:
        """Validate the LLM's arguments and run the check (pydantic ValidationError if bad)."""
        if isinstance(arguments, str):
            args = self.args_model.model_validate_json(arguments or "{}")
        else:
            args = self.args_model.model_validate(dict(arguments))
        return self.method(**args.model_dump())


def docstring_args(doc: str | None) -> tuple[str, dict[str, str]]:
    """The summary and the ``Args:`` descriptions of a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip():
            break
        summary_lines.append(line.strip())
    args: dict[str, str] = {}
    current: str | None = None
    in_args = False
    indent = 0
    args_indent = 0
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            indent = len(line) - len(line.lstrip())
            continue
        if not in_args:
            continue
        if not line.strip():
            continue
        this_indent = len(line) - len(line.lstrip())
        if this_indent <= indent and _SECTION.match(line):
            break
        match = _ARG_LINE.match(line)
        if match and (current is None or this_indent <= args_indent):
            current = match.group(1).lstrip("*")
            args_indent = this_indent
            args[current] = match.group(3).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return " ".join(summary_lines), args


def _model_for(name: str, method: Callable[..., Any]) -> type[BaseModel]:
    hints = get_type_hints(method)
    _, described = docstring_args(method.__doc__)
    fields: dict[str, Any] = {}
    for pname, param in inspect.signature(method).parameters.items():
        if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(pname, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, Field(default, description=described.get(pname, "")))
    model_name = "".join(part.capitalize() for part in name.split("_")) + "Args"
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)


def check_tools(toolbox: Checks, only: Iterable[str] | None = None) -> dict[str, ToolSpec]:
    """Every registered check of ``toolbox`` as a tool, by name.

    Args:
        toolbox: The checks to call (a ``Toolbox`` or any :class:`~tools.registry.Checks`).
        only: Restrict to these names (e.g. the playbook's checks plus localization's).

    Returns:
        Tool specs in name order; schemas and descriptions come from the registry's declaration.
    """
    wanted = set(only) if only is not None else None
    specs: dict[str, ToolSpec] = {}
    for name, entry in sorted(registry().items()):
        if wanted is not None and name not in wanted:
            continue
        summary, _ = docstring_args(entry.function.__doc__)
        method: Callable[..., CheckResult] = getattr(toolbox, name)
        specs[name] = ToolSpec(name, summary or name, _model_for(name, entry.function), method)
    return specs


def redact_text(text: str, fields: Iterable[str]) -> str:
    """Mask ``field=value`` / ``field: value`` / ``"field": value`` spans of configured fields."""
    for field in fields:
        pattern = re.compile(
            rf"(\"?\b{re.escape(field)}\b\"?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;}}\]\)]+)",
            re.IGNORECASE,
        )
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def redact(value: Any, fields: Iterable[str]) -> Any:
    """A copy of a JSON-ready value with configured fields masked.

    Mapping keys named like a field have their values masked; a table (``columns`` + ``rows``)
    has the columns named like a field masked; strings have ``field=value`` spans masked.
    """
    names = {f.lower() for f in fields}
    if not names:
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        columns = value.get("columns")
        masked_cols = (
            {i for i, c in enumerate(columns) if str(c).lower() in names}
            if isinstance(columns, list)
            else set()
        )
        for key, item in value.items():
            if str(key).lower() in names:
                out[key] = REDACTED
            elif key == "rows" and masked_cols and isinstance(item, list):
                out[key] = [
                    [REDACTED if i in masked_cols else redact(c, names) for i, c in enumerate(row)]
                    if isinstance(row, list)
                    else redact(row, names)
                    for row in item
                ]
            else:
                out[key] = redact(item, names)
        return out
    if isinstance(value, list | tuple):
        return [redact(v, names) for v in value]
    if isinstance(value, str):
        return redact_text(value, names)
    return value


# Characters a model could read as the brackets of a data marker: escaped inside data.
_BRACKETS = str.maketrans(
    {c: f"\\u{ord(c):04x}" for c in "<>\uff1c\uff1e\ufe64\ufe65\u2039\u203a\u3008\u3009"}
)


def quote_data(label: str, value: Any) -> str:
    """Untrusted content as a delimited, JSON-encoded data block (never as instructions).

    The JSON is compact (no indentation, other scripts as they are: a prompt pays for every
    escape). Angle brackets inside the data, and the characters that look like them (fullwidth,
    small, single guillemets, CJK), are JSON-escaped (``\\u003c``), so the data cannot spell a
    closing marker and step outside its block.
    """
    body = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    body = body.translate(_BRACKETS)
    return f"{DATA_OPEN.format(label=label)}\n{body}\n{DATA_CLOSE.format(label=label)}"


def minute_text(ts: datetime) -> str:
    """A UTC minute as a prompt writes it: ``2026-11-20T08:32Z`` (naive times are UTC)."""
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return f"{aware:%Y-%m-%dT%H:%M}Z"


def _round(value: Any, digits: int = 4) -> Any:
    """Floats to ``digits`` significant digits, recursively (a prompt needs no 17-digit noise)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _focused(rows: list[Any], focus: tuple[datetime, datetime] | None, max_rows: int) -> list[Any]:
    """The rows of a series inside ``focus`` (its x is an ISO time), thinned to ``max_rows``.

    Without a focus, or when no row falls in it, the last ``max_rows`` rows (nearest the alert).
    Thinning keeps the first and last row of the focus and spreads the rest evenly.
    """
    picked = rows
    if focus is not None:
        start, end = focus
        inside = []
        for row in rows:
            try:
                ts = datetime.fromisoformat(str(row[0]))
            except (ValueError, IndexError, TypeError):
                continue
            ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
            if start <= ts <= end:
                inside.append(row)
        picked = inside or rows[-max_rows:]
    if len(picked) <= max_rows:
        return list(picked)
    step = (len(picked) - 1) / (max_rows - 1)
    return [picked[round(i * step)] for i in range(max_rows)]


def _clock_times(rows: list[Any]) -> tuple[list[Any], str]:
    """Series rows with their ISO minute as ``HH:MM`` when all fall on one day (and that day).

    A timestamp costs about 17 tokens, its clock time 4; rows left as they are when they span
    days or do not start with a time.
    """
    stamps = []
    for row in rows:
        try:
            stamps.append(datetime.fromisoformat(str(row[0])))
        except (ValueError, IndexError, TypeError):
            return rows, ""
    days = {ts.date() for ts in stamps}
    if len(days) != 1:
        return rows, ""
    short = [[f"{ts:%H:%M}", *row[1:]] for ts, row in zip(stamps, rows, strict=True)]
    return short, days.pop().isoformat()


def _headline_evidence(evidence: list[Evidence]) -> list[Evidence]:
    """The first table and the first series of a result (the report's headline evidence)."""
    first_table = next((e for e in evidence if e.kind == "table"), None)
    first_series = next((e for e in evidence if e.kind == "series"), None)
    return [e for e in evidence if e is first_table or e is first_series]


def compact_result(
    result: CheckResult,
    max_rows: int = 5,
    *,
    focus: tuple[datetime, datetime] | None = None,
    evidence: bool = True,
) -> dict[str, Any]:
    """A check result as a prompt states it: the report's facts, the evidence around the incident.

    Args:
        result: The check's result.
        max_rows: Rows kept per evidence table or series.
        focus: The minutes that matter (around the onset and the alert): series keep their rows
            in it (not the empty minutes before the window), thinned to ``max_rows``.
        evidence: False to leave the tables out (a passing check: its summary says it all).

    Returns:
        ``check``, ``verdict``, ``summary`` and, where set, ``effect`` (in words), ``p_value``,
        ``onset``, ``arm``, ``where`` and ``evidence``; parameters are left out; floats rounded.
    """
    out: dict[str, Any] = {
        "check": result.check,
        "verdict": result.verdict,
        "summary": result.summary,
    }
    if result.effect is not None:
        e = result.effect
        ci = (
            f" [{e.ci_low:.4g}, {e.ci_high:.4g}]"
            if e.ci_low is not None and e.ci_high is not None
            else ""
        )
        out["effect"] = f"{e.name} {e.estimate:.4g}{ci} {e.unit}".strip()
    if result.p_value is not None:
        out["p_value"] = float(f"{result.p_value:.3g}")
    if result.onset is not None:
        out["onset"] = minute_text(result.onset)
    if result.arm:
        out["arm"] = result.arm
    if result.where:
        out["where"] = dict(result.where)
    if evidence and result.evidence:
        tables = []
        for ev in _headline_evidence(result.evidence):
            rows = list(ev.rows)
            kept = _focused(rows, focus, max_rows) if ev.kind == "series" else rows[:max_rows]
            note = ev.note
            if len(kept) < len(rows):
                where = "around the incident" if ev.kind == "series" and focus else "first"
                note = f"{note} ({len(kept)} of {len(rows)} rows, {where})".strip()
            if ev.kind == "series":
                kept, day = _clock_times(kept)
                if day:
                    note = f"{note} (times: UTC on {day})".strip()
            table: dict[str, Any] = {"name": ev.name, "columns": ev.columns, "rows": kept}
            if note:
                table["note"] = note
            tables.append(table)
        out["evidence"] = _round(tables)
    return out


# -- tool calls written as text -------------------------------------------------------------------

_TAGGED = re.compile(r"<(tool_call|tools|function_call)>\s*(.*?)\s*(?:</\1>|$)", re.DOTALL)
_FENCED = re.compile(r"```[a-zA-Z_]*\s*(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class TextCall:
    """A tool call a model wrote in its reply text instead of structured ``tool_calls``.

    Attributes:
        name: The tool's name (``submit_diagnosis`` for a bare diagnosis object).
        arguments: Its arguments, as JSON text.
    """

    name: str
    arguments: str


def _json_values(text: str) -> list[Any]:
    """Every JSON object or array embedded in ``text``, left to right, outermost only."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                i += 1
                continue
            values.append(value)
            i = end
        else:
            i += 1
    return values


def _as_call(value: Any, submit: str) -> TextCall | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name")
    if isinstance(name, str) and name:
        args = value.get("arguments", value.get("parameters", {}))
        if isinstance(args, str):
            return TextCall(name, args or "{}")
        return TextCall(name, json.dumps(args if args is not None else {}))
    if "causes" in value:  # a diagnosis stated without its tool's name
        return TextCall(submit, json.dumps(value))
    return None


def parse_text_calls(content: str, submit: str = "submit_diagnosis") -> list[TextCall]:
    """The tool calls written in a reply's text, in order (empty when there are none).

    The documented forms (docs/llm.md), each alone or several in a row, or a JSON list of them:

    1. ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen, Hermes), also in
       ``<tools>`` or ``<function_call>`` tags; an unclosed last tag is read to the end;
    2. a fenced block: ```` ```json {"name": ..., "arguments": {...}} ``` ````;
    3. bare JSON in the text: ``{"name": ..., "arguments": {...}}``.

    ``arguments`` may be an object or a JSON string; ``parameters`` is read as ``arguments``, and
    ``{"type": "function", "function": {...}}`` as its inner object. An object with ``causes`` and
    no name is a diagnosis: a call of ``submit``.

    Args:
        content: The assistant message's text.
        submit: The name of the answering tool.
    """
    blocks = [m.group(2) for m in _TAGGED.finditer(content)]
    if not blocks:
        blocks = [m.group(1) for m in _FENCED.finditer(content)]
    if not blocks:
        blocks = [content]
    calls: list[TextCall] = []
    for block in blocks:
        for value in _json_values(block):
            items = value if isinstance(value, list) else [value]
            for item in items:
                call = _as_call(item, submit)
                if call is not None:
                    calls.append(call)
    return calls
