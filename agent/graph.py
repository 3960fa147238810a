"""The investigation graph (LangGraph ``StateGraph`` over :class:`InvestigationState`).

::

    intake → localize → plan ─┬→ run_check ┐ (one per task, in parallel)
                              └────────────┴→ diagnose → report → propose ─┐
        ┌──────────────────────────────────────────────────────────────────┘
        ├→ approval ⟲ (until decided) ─┬→ execute → verify → finish
        │                               └→ finish (rejected)
        └→ finish (nothing proposed)

The graph is compiled with a checkpointer (:func:`open_checkpointer`: SQLite by default,
PostgreSQL when given a ``postgresql://`` URL and ``langgraph-checkpoint-postgres`` is installed);
the thread id is the investigation id, so an investigation paused at ``approval`` resumes in any
process with ``Command(resume=RESUME)`` (a wake-up only: the approval node reads the decisions from
the state database). The checkpoint serialiser revives
only an explicit allow-list of Vigil's own state classes, not arbitrary pickled objects.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from agent.deps import Deps
from agent.models import Alert, InvestigationView, MitigationView, RootCause
from agent.nodes import Nodes
from agent.state import CHECKPOINT_TYPES, CheckTask, InvestigationState
from lifecycle.store import enable_wal, redact_url
from tools.errors import ConfigError, RetryableError
from tools.result import CheckResult, Effect, Evidence

__all__ = ["NODE_NAMES", "RESUME", "Checkpoints", "build_graph", "open_checkpointer", "serializer"]

# What wakes a graph paused at its approval interrupt; the decisions themselves are in the store.
RESUME = {"wake": "decisions stored"}

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


# -- checkpointers ------------------------------------------------------------------------------

_ALLOWED: tuple[type[BaseModel], ...] = (
    *CHECKPOINT_TYPES,
    Alert,
    RootCause,
    MitigationView,
    InvestigationView,
    CheckResult,
    Effect,
    Evidence,
)


def serializer() -> JsonPlusSerializer:
    """A serialiser that revives exactly Vigil's state classes."""
    return JsonPlusSerializer(
        allowed_msgpack_modules=[(cls.__module__, cls.__name__) for cls in _ALLOWED]
    )


class Checkpoints:
    """An open checkpointer and what must be closed with it.

    Attributes:
        saver: The LangGraph checkpointer.
    """

    def __init__(self, saver: BaseCheckpointSaver[Any], stack: ExitStack) -> None:
        self.saver = saver
        self._stack = stack

    def close(self) -> None:
        """Close the connection(s)."""
        self._stack.close()


def open_checkpointer(url: str) -> Checkpoints:
    """Open the checkpointer ``url`` names.

    Args:
        url: A SQLite file path (or ``sqlite:///path``, or ``:memory:``), or a
            ``postgresql://`` URL (needs the ``postgres`` extra).

    Returns:
        The open checkpointer; call :meth:`Checkpoints.close` when done.

    Raises:
        ConfigError: Postgres asked for but its package not installed.
        RetryableError: The Postgres database cannot be reached (one line, password hidden).
    """
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return _open_postgres(url)
    stack = ExitStack()
    path = url.removeprefix("sqlite:///")
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # The saver serialises access with its own lock, so one connection may serve all threads.
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    stack.callback(conn.close)
    if path != ":memory:":
        enable_wal(conn.cursor())  # the saver's own switch fails at once if another holds a lock
    sqlite_saver = SqliteSaver(conn, serde=serializer())
    sqlite_saver.setup()
    return Checkpoints(sqlite_saver, stack)


def _open_postgres(url: str) -> Checkpoints:
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError as exc:
        raise ConfigError(
            "checkpoint_url",
            redact_url(url),
            "a Postgres checkpointer needs `pip install 'vigil[postgres]'`"
            " (psycopg and langgraph-checkpoint-postgres)",
        ) from exc
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    stack = ExitStack()
    try:
        cm: AbstractContextManager[Any] = PostgresSaver.from_conn_string(plain)
        saver = stack.enter_context(cm)
        saver.serde = serializer()
        saver.setup()
    except psycopg.OperationalError as exc:
        stack.close()
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        password = make_url(plain).password
        if password:
            why = why.replace(str(password), "***")
        raise RetryableError(
            f"checkpoint database {redact_url(url)} is unreachable: {why}"
        ) from exc
    return Checkpoints(saver, stack)
