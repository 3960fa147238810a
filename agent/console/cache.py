"""The console's copy of the experiment state, kept current by the audit log's version.

Reading 1,000 experiments through ``ExperimentService.list`` and the audit log's rollout
decisions costs about a second on a small machine, far over a page's budget; the state changes
far less often than pages load. Every state change appends an audit entry and the largest entry
id is the state's version (``ExperimentService.version``, one indexed query), so the console
keeps the views and the last decision per experiment and, when the version moved, reads only the
entries since: the experiments they name are read again one by one (``get``), and an entry that
names none (a layer, model or global kill switch, a new layer or model) reloads everything. The
copy is never older than the version read at the start of the page.

The first read of everything (about a second at 1,000 experiments) runs in the background
(:meth:`StateCache.read_in_background`, started with the server): until it is done,
:meth:`StateCache.ready` answers None at once, and the dashboard says it is still reading
instead of waiting for it or showing a health it has not computed.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from lifecycle.views import AuditEntry, ExperimentView
from tools.errors import NotFoundError
from tools.vocabulary import utc_now

__all__ = ["DECISION_ACTIONS", "StateCache", "StateCopy"]

DECISION_ACTIONS = frozenset(
    {"advance", "rollback", "advance_forced", "ramp_down", "pause", "resume", "kill", "release"}
)
"""Audit actions that record a rollout decision (the gate's or a human's)."""
_FULL_READ = 2000  # newest audit entries kept: decisions older than these are not shown
_INCREMENTAL = 200  # past this many new entries, read everything again
_NO_VIEW_CHANGE = frozenset(
    {"create_layer", "register_model", "rollback_model", "note", "escalate_infra", "escalate_data"}
)
"""Entries naming no experiment that change no experiment's view (the rest reload all)."""


class _Source(Protocol):
    def version(self) -> int: ...

    def list(self) -> Sequence[ExperimentView]: ...

    def get(self, experiment_id: str) -> ExperimentView: ...

    def audit(
        self, experiment_id: str | None = None, limit: int | None = None
    ) -> builtins.list[AuditEntry]: ...


@dataclass(frozen=True)
class StateCopy:
    """The experiments as of ``version``, in creation order, each one's last decision, and the
    newest audit entries (oldest first)."""

    version: int
    views: tuple[ExperimentView, ...]
    decisions: dict[str, str] = field(default_factory=dict)
    entries: tuple[AuditEntry, ...] = ()

    def view(self, experiment_id: str) -> ExperimentView | None:
        """One experiment of the copy, None when unknown."""
        return next((v for v in self.views if v.id == experiment_id), None)


def _decisions(entries: Sequence[AuditEntry], into: dict[str, str]) -> dict[str, str]:
    for entry in entries:  # oldest first: the last one wins
        if entry.experiment_id and entry.action in DECISION_ACTIONS:
            into[entry.experiment_id] = f"{entry.action} by {entry.actor}"
    return into


class StateCache:
    """Keeps a :class:`StateCopy` current (thread-safe; pages share one).

    Args:
        source: The experiment core (``ExperimentService``).
    """

    def __init__(self, source: _Source) -> None:
        self._source = source
        self._copy: StateCopy | None = None
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._reader: threading.Thread | None = None
        self.full_reads = 0
        """How many times everything was read (tests and the benchmark look)."""
        self.reading_since: datetime | None = None
        """When the last background read began (None: never started)."""
        self.read_error = ""
        """Why the last background read failed ("" when it did not)."""

    def ready(self, wait_s: float = 0.0) -> StateCopy | None:
        """The state as of now, or None while the first read of everything is still running.

        Once a copy is held this is :meth:`current` (an incremental update costs a few
        milliseconds). Before, it starts the background read if none runs, waits for it at most
        ``wait_s`` seconds, and answers None rather than block a page for the whole read.
        """
        if self._copy is None:
            reader = self.read_in_background()
            if wait_s > 0:
                reader.join(wait_s)
            if self._copy is None:
                return None
        return self.current()

    def read_in_background(self) -> threading.Thread:
        """Start reading everything in a thread, unless a read already runs; returns it."""
        with self._starting:
            if self._reader is not None and self._reader.is_alive():
                return self._reader
            self.reading_since = utc_now()
            self._reader = threading.Thread(
                target=self._read, name="vigil-console-state", daemon=True
            )
            self._reader.start()
            return self._reader

    def _read(self) -> None:
        try:
            self.current()
            self.read_error = ""
        except Exception as exc:  # shown where the health would be; the next page tries again
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            self.read_error = f"{type(exc).__name__}: {first}"

    def current(self) -> StateCopy:
        """The state as of now (read again where the audit log says it changed)."""
        version = self._source.version()
        with self._lock:
            held = self._copy
            if held is not None and held.version == version:
                return held
            fresh = self._update(held, version)
            self._copy = fresh
            return fresh

    def _update(self, held: StateCopy | None, version: int) -> StateCopy:
        if held is None or version < held.version or version - held.version > _INCREMENTAL:
            return self._full(version)
        new = [e for e in self._source.audit(limit=version - held.version) if e.id > held.version]
        touched = {e.experiment_id for e in new}
        if None in touched and any(e.action not in _NO_VIEW_CHANGE for e in new):
            return self._full(version)
        touched.discard(None)
        fresh: dict[str, ExperimentView | None] = {}
        for experiment_id in touched:
            assert experiment_id is not None
            try:
                fresh[experiment_id] = self._source.get(experiment_id)
            except NotFoundError:
                fresh[experiment_id] = None
        known = {v.id for v in held.views}
        views = [fresh.get(v.id, v) if v.id in fresh else v for v in held.views]
        created: list[ExperimentView] = [
            v for k, v in fresh.items() if k not in known and v is not None
        ]
        created.sort(key=lambda v: (v.created_at, v.id))  # created since: at the end
        kept = tuple(v for v in [*views, *created] if v is not None)
        entries = (held.entries + tuple(new))[-_FULL_READ:]
        return StateCopy(version, kept, _decisions(new, dict(held.decisions)), entries)

    def _full(self, version: int) -> StateCopy:
        self.full_reads += 1
        views = tuple(self._source.list())
        entries = tuple(self._source.audit(limit=_FULL_READ))
        return StateCopy(version, views, _decisions(entries, {}), entries)
