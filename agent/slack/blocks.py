"""Block Kit messages: pure functions from the agent's views to Slack blocks.

Alert text and check summaries are data, not markup a sender controls: they are escaped
(``&``, ``<``, ``>``) before they go into ``mrkdwn`` so that an alert cannot ping a channel or
forge a link.
"""

from __future__ import annotations

from typing import Any

from agent.models import InvestigationView, MitigationView
from lifecycle.views import ExperimentView, KillSwitchView
from tools.vocabulary import VERDICT_MARKS

__all__ = [
    "APPROVE_ACTION",
    "REJECT_ACTION",
    "Message",
    "decision_blocks",
    "escape",
    "investigation_message",
    "mitigation_update",
    "proposal_message",
    "status_message",
]

APPROVE_ACTION = "vigil_approve"
REJECT_ACTION = "vigil_reject"

Block = dict[str, Any]
Message = tuple[str, list[Block]]
"""Fallback text (notifications, screen readers) and the blocks."""

_MARK = VERDICT_MARKS
_SECTION_LIMIT = 2900  # Slack caps a section's text at 3000 characters


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(text: str) -> Block:
    if len(text) > _SECTION_LIMIT:
        text = text[: _SECTION_LIMIT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _share(x: float) -> str:
    """A traffic share readable at any size: 10%, 0.5%, <0.1%."""
    if x == 0 or x >= 0.1:
        return f"{x:.0%}"
    return f"{x:.1%}" if x >= 0.001 else "<0.1%"


def _target(m: MitigationView) -> str:
    return f"{m.action} {m.target}" if m.target else m.action


def _buttons(m: MitigationView) -> Block:
    label = escape(_target(m))
    return {
        "type": "actions",
        "block_id": f"mitigation:{m.id}",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": m.id,
                "confirm": {
                    "title": {"type": "plain_text", "text": "Approve mitigation?"},
                    "text": {"type": "mrkdwn", "text": f"This executes `{label}` now."},
                    "confirm": {"type": "plain_text", "text": "Approve"},
                    "deny": {"type": "plain_text", "text": "Cancel"},
                },
            },
            {
                "type": "button",
                "action_id": REJECT_ACTION,
                "text": {"type": "plain_text", "text": "Reject"},
                "style": "danger",
                "value": m.id,
            },
        ],
    }


def _subject(view: InvestigationView) -> str:
    alert = view.alert
    where = f"experiment {alert.experiment}" if alert.experiment else "all traffic"
    return f"{alert.metric} alert on {where}"


def mitigation_update(m: MitigationView) -> str:
    """One line on where a mitigation stands, e.g. ``kill_experiment 879: executed (alice)``."""
    who = f" by {m.approved_by}" if m.approved_by else ""
    status = "already in effect" if m.effect == "already_in_effect" else m.status
    line = f"`{escape(_target(m))}`: *{status}*{who}"
    if m.recovered is not None:
        line += " — metric recovered" if m.recovered else " — metric has not recovered"
    return line


def investigation_message(view: InvestigationView, public_url: str) -> Message:
    """The channel post for an investigation: verdicts, cause, report link and buttons.

    Args:
        view: The investigation (finished or awaiting approval).
        public_url: Where the server is reachable, for the report link.

    Returns:
        Fallback text and blocks; proposed mitigations carry Approve / Reject buttons.
    """
    report = f"{public_url.rstrip('/')}/investigations/{view.id}/report"
    text = f"Vigil investigated the {_subject(view)} ({view.status})"
    blocks: list[Block] = [_section(f"*Investigation `{view.id}`* — {escape(_subject(view))}")]
    if view.alert.summary:
        blocks.append(_context(f"Alert: {escape(view.alert.summary)}"))
    if view.verdicts:
        lines = [
            f"{_MARK.get(verdict, '?')} *{escape(check)}* — {escape(summary)}"
            for check, verdict, summary in view.verdicts
        ]
        blocks.append(_section("\n".join(lines)))
    if view.error:
        blocks.append(_section(f":warning: The investigation failed: {escape(view.error)}"))
    top = view.root_causes[0] if view.root_causes else None
    if top is not None:
        where = ", ".join(
            x
            for x in (
                f"experiment {top.experiment}" if top.experiment else "",
                f"arm {top.arm}" if top.arm else "",
                f"model {top.model}" if top.model else "",
                ", ".join(f"{k}={v}" for k, v in top.where.items()),
            )
            if x
        )
        cause = f"*Cause:* `{top.cause}`" + (f" in {escape(where)}" if where else "")
        cause += f" (confidence {top.confidence:.0%})"
        if top.explanation:
            cause += f"\n{escape(top.explanation)}"
        blocks.append(_section(cause))
        text += f": {top.cause}"
    if view.onset is not None:
        blocks.append(_context(f"Onset: {view.onset:%Y-%m-%d %H:%M} UTC"))
    blocks.append(_section(f"<{report}|Full report>"))
    for m in view.mitigations:
        blocks.extend(proposal_blocks(m))
    return text, blocks


def proposal_blocks(m: MitigationView) -> list[Block]:
    """A mitigation as blocks: its description, then buttons while it awaits a decision."""
    line = (
        f"*Proposed mitigation:* `{escape(_target(m))}` "
        f"(blast radius {_share(m.blast_radius)} of traffic, proposed by {escape(m.proposed_by)})"
    )
    if m.expected_effect:
        line += f"\nExpected effect: {escape(m.expected_effect)}"
    if m.reason:
        line += f"\nReason: {escape(m.reason)}"
    blocks = [_section(line)]
    if m.status == "proposed" and m.action != "none":
        blocks.append(_buttons(m))
    else:
        blocks.append(_context(mitigation_update(m)))
    return blocks


def proposal_message(m: MitigationView) -> Message:
    """A manual proposal (``kill 879``) as its own message with buttons."""
    return f"Proposed: {_target(m)} (awaiting approval)", proposal_blocks(m)


def decision_blocks(blocks: list[Block], m: MitigationView) -> list[Block]:
    """The same message with the mitigation's buttons replaced by where it now stands."""
    out: list[Block] = []
    for block in blocks:
        if block.get("type") == "actions" and block.get("block_id") == f"mitigation:{m.id}":
            out.append(_context(mitigation_update(m)))
        else:
            out.append(block)
    return out


def status_message(
    view: ExperimentView, switches: list[KillSwitchView], investigations: list[InvestigationView]
) -> str:
    """An experiment's status for ``status 879``: state, rollout stage, kill switches, and its
    latest investigations."""
    stages = view.rollout.stages
    stage = stages[min(view.stage, len(stages) - 1)]
    lines = [
        f"*Experiment `{escape(view.id)}`* — {escape(view.name)} (owner {escape(view.owner)})",
        f"• status: *{view.status}*",
        f"• rollout: stage {view.stage + 1} of {len(stages)} ({stage.percent:g} % of its "
        f"{view.traffic_pct:g} % of layer {escape(view.layer)}); enrolled now "
        f"{view.stage_percent:g} %",
    ]
    if switches:
        for k in switches:
            lines.append(
                f"• kill switch: {k.scope} {escape(k.target)} by {escape(k.activated_by)} "
                f"at {k.activated_at:%Y-%m-%d %H:%M} UTC — {escape(k.reason)}"
            )
    else:
        lines.append("• kill switches: none active")
    for inv in investigations:
        cause = inv.root_causes[0].cause if inv.root_causes else "-"
        lines.append(f"• investigation `{inv.id}` ({inv.alert.metric}): {inv.status}, {cause}")
    return "\n".join(lines)
