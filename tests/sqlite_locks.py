"""Open a new SQLite file while another connection holds its lock, then let go."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def open_while_locked(path: Path, opener: Callable[[], T], hold_s: float = 0.3) -> T:
    """Run ``opener`` while a write transaction on ``path`` is open; commit after ``hold_s``.

    SQLite refuses the switch to WAL at once ("database is locked"), ignoring its busy timeout,
    while another connection holds a lock: as when two processes open a new file together. The
    opener must still be waiting when the lock goes, and must then succeed; the file ends in WAL.
    """
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")
    opened: list[T] = []
    thread = threading.Thread(target=lambda: opened.append(opener()))
    thread.start()
    time.sleep(hold_s)
    assert thread.is_alive()  # waiting for the lock, not failed
    holder.execute("COMMIT")
    holder.close()
    thread.join(timeout=30)
    assert len(opened) == 1
    fresh = sqlite3.connect(path)  # WAL is the file's: a new connection finds it
    try:
        assert fresh.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        fresh.close()
    return opened[0]
