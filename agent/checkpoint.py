"""Graph checkpointers: SQLite by default, PostgreSQL when given a ``postgresql://`` URL.

The serialiser revives only an explicit allow-list of Vigil's own state classes (plus LangGraph's
safe types), not arbitrary pickled objects. ``langgraph-checkpoint-postgres`` is optional: asking
for Postgres without it is a configuration error naming the setting.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel

from agent.models import Alert, InvestigationView, MitigationView, RootCause
from agent.state import CHECKPOINT_TYPES
from tools.errors import ConfigError
from tools.result import CheckResult, Effect, Evidence

__all__ = ["Checkpoints", "open_checkpointer", "serializer"]

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
            ``postgresql://`` URL (needs ``langgraph-checkpoint-postgres``).

    Returns:
        The open checkpointer; call :meth:`Checkpoints.close` when done.

    Raises:
        ConfigError: Postgres asked for but not installed.
    """
    stack = ExitStack()
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError as exc:
            raise ConfigError(
                "checkpoint_url",
                url,
                "a Postgres checkpointer needs `pip install langgraph-checkpoint-postgres`",
            ) from exc
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        cm: AbstractContextManager[Any] = PostgresSaver.from_conn_string(plain)
        saver = stack.enter_context(cm)
        saver.serde = serializer()
        saver.setup()
        return Checkpoints(saver, stack)
    path = url.removeprefix("sqlite:///")
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # The saver serialises access with its own lock, so one connection may serve all threads.
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    stack.callback(conn.close)
    sqlite_saver = SqliteSaver(conn, serde=serializer())
    sqlite_saver.setup()
    return Checkpoints(sqlite_saver, stack)
