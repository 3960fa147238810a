"""The investigation graph (LangGraph ``StateGraph`` over :class:`InvestigationState`).

::

    intake → localize → plan ─┬→ run_check ┐ (one per task, in parallel)
                              └────────────┴→ diagnose → report → propose ─┐
        ┌──────────────────────────────────────────────────────────────────┘
        ├→ approval ⟲ (until decided) ─┬→ execute → verify → finish
        │                               └→ finish (rejected)
        └→ finish (nothing proposed)

The graph is compiled with a checkpointer (:mod:`agent.checkpoint`); the thread id is the
investigation id, so an investigation paused at ``approval`` resumes in any process with
``Command(resume=Decision(...).model_dump())``.
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agent.deps import Deps
from agent.nodes import Nodes
from agent.state import CheckTask, InvestigationState

__all__ = ["NODE_NAMES", "build_graph"]

NODE_NAMES = (
    "intake",
    "localize",
    "plan",
    "run_check",
    "diagnose",
    "report",
    "propose",
    "approval",
    "execute",
    "verify",
    "finish",
)


def build_graph(deps: Deps, checkpointer: BaseCheckpointSaver[Any]) -> CompiledStateGraph[Any]:
    """Compile the investigation graph.

    Args:
        deps: What the nodes use.
        checkpointer: Where state is saved after every step (SQLite or Postgres).

    Returns:
        The compiled graph; invoke it with ``{"configurable": {"thread_id": investigation_id}}``.
    """
    nodes = Nodes(deps)
    g: StateGraph[Any] = StateGraph(InvestigationState)
    g.add_node("intake", nodes.intake)
    g.add_node("localize", nodes.localize)
    g.add_node("plan", nodes.plan)
    g.add_node("run_check", nodes.run_check, input_schema=CheckTask)
    g.add_node("diagnose", nodes.diagnose)
    g.add_node("report", nodes.report)
    g.add_node("propose", nodes.propose)
    g.add_node("approval", nodes.approval)
    g.add_node("execute", nodes.execute)
    g.add_node("verify", nodes.verify)
    g.add_node("finish", nodes.finish)

    g.add_edge(START, "intake")
    g.add_edge("intake", "localize")
    g.add_edge("localize", "plan")
    g.add_conditional_edges("plan", nodes.fan_out, ["run_check", "diagnose"])
    g.add_edge("run_check", "diagnose")
    g.add_edge("diagnose", "report")
    g.add_edge("report", "propose")
    g.add_conditional_edges("propose", nodes.after_propose, ["approval", "finish"])
    g.add_conditional_edges("approval", nodes.after_approval, ["approval", "execute", "finish"])
    g.add_edge("execute", "verify")
    g.add_edge("verify", "finish")
    g.add_edge("finish", END)
    return g.compile(checkpointer=checkpointer, name="vigil-investigation")
