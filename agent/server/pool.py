"""A bounded pool of worker threads that runs investigations in the background.

Front doors (the Alertmanager webhook, the monitor loop, Slack) create an investigation with
``Investigator.start`` and hand its id to the pool; ``workers`` threads run them with
``Investigator.run``. At most ``workers + queue_size`` investigations are outstanding (running or
waiting); past that :meth:`InvestigationPool.submit` raises :class:`PoolFull` *before* anything is
created, so a refused alert leaves no trace and its sender can retry (HTTP 429).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from agent.models import Alert, InvestigationView
from tools.errors import ConfigError, RetryableError, VigilError

__all__ = ["InvestigationPool", "PoolFull", "Runner"]

_log = logging.getLogger(__name__)

_STOP = object()


class Runner(Protocol):
    """The part of the agent's ``Investigator`` the pool drives."""

    def start(self, alert: Alert) -> str:
        """Create an investigation for ``alert`` and return its id (does not run it)."""
        ...

    def run(self, investigation_id: str) -> InvestigationView:
        """Run a started investigation to its approval interrupt or its end."""
        ...


class PoolFull(RetryableError):
    """Every worker is busy and the queue is full: try again later."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        super().__init__(f"investigation queue full ({capacity} outstanding); retry later")


class InvestigationPool:
    """Runs investigations on ``workers`` threads with at most ``queue_size`` waiting.

    Args:
        runner: The investigator (``start`` and ``run``).
        workers: Worker threads (at least 1).
        queue_size: Investigations that may wait for a worker (at least 0).
        on_done: Called on the worker thread with each finished view (metrics, logging).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        workers: int,
        queue_size: int,
        on_done: Callable[[InvestigationView], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError("workers", workers, "must be at least 1")
        if queue_size < 0:
            raise ConfigError("queue_size", queue_size, "must be at least 0")
        self._runner = runner
        self._workers = workers
        self._queue_size = queue_size
        self._on_done = on_done
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0
        self._running = 0
        self._threads: list[threading.Thread] = []

    @property
    def capacity(self) -> int:
        """How many investigations may be outstanding (running plus waiting)."""
        return self._workers + self._queue_size

    @property
    def depth(self) -> int:
        """Investigations waiting for a worker."""
        with self._lock:
            return self._outstanding - self._running

    @property
    def running(self) -> int:
        """Investigations a worker is running now."""
        with self._lock:
            return self._running

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        with self._lock:
            if self._threads:
                return
            for i in range(self._workers):
                t = threading.Thread(target=self._work, name=f"vigil-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def submit(
        self,
        alert: Alert,
        on_created: Callable[[str], None] | None = None,
        *,
        force: bool = False,
    ) -> str:
        """Create an investigation for ``alert`` and queue it.

        Args:
            alert: What fired.
            on_created: Called with the new id before the investigation is queued (so that, e.g.,
                Slack knows where to answer before a worker can finish it).
            force: Queue it even past capacity (an alert accepted before a crash, recovered at
                start-up: it was answered 202 and must not be refused now).

        Returns:
            The new investigation's id.

        Raises:
            PoolFull: ``workers + queue_size`` investigations are already outstanding; nothing
                was created.
        """
        with self._lock:
            if self._outstanding >= self.capacity and not force:
                raise PoolFull(self.capacity)
            # Reserve the slot before creating, so concurrent submitters cannot overshoot.
            self._outstanding += 1
        try:
            investigation_id = self._runner.start(alert)
            if on_created is not None:
                on_created(investigation_id)
        except BaseException:
            self._release()
            raise
        self._queue.put(investigation_id)
        return investigation_id

    def resume(self, investigation_id: str) -> None:
        """Queue an investigation that already exists (left ``running`` by a crash).

        Never refused: the work was accepted before the crash. ``Investigator.run`` continues it
        from its last checkpoint, or from the start when it has none.
        """
        with self._lock:
            self._outstanding += 1
        self._queue.put(investigation_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is outstanding; True unless ``timeout`` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers after the work already queued; waits up to ``timeout`` per thread."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)
        for t in threads:
            t.join(timeout)

    def _release(self) -> None:
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            investigation_id = str(item)
            with self._lock:
                self._running += 1
            try:
                view = self._runner.run(investigation_id)
            except VigilError:
                # The investigator records the failure on the investigation itself.
                _log.exception("investigation %s failed", investigation_id)
            except Exception:
                _log.exception("investigation %s crashed", investigation_id)
            else:
                if self._on_done is not None:
                    try:
                        self._on_done(view)
                    except Exception:
                        _log.exception("on_done hook failed for %s", investigation_id)
            finally:
                with self._lock:
                    self._running -= 1
                self._release()
