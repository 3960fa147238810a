"""Start-up and periodic recovery: nothing accepted before a crash is lost after it.

At start-up, before the app serves a request, :meth:`Recovery.startup` queues every
investigation a crash left ``running`` (``Investigator.run`` continues it from its checkpoint)
and re-submits every alert claimed in the ledger but never attached to an investigation. Then,
at start-up and every ``Settings.recovery_interval_s``, a thread calls the agent's
``Investigator.recover()`` (it resumes stranded ``approved``/``executing`` mitigations and
investigations whose action ran); an agent without it is simply not swept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.ports import Investigations
from agent.server.intake import AlertIntake
from agent.server.pool import InvestigationPool
from tools.errors import VigilError

__all__ = ["Recovery", "StartupReport", "running_investigations"]

_log = logging.getLogger(__name__)
# Without a status query, look this far back for investigations left running.
_SCAN_LIMIT = 10_000


@dataclass
class StartupReport:
    """What start-up recovery queued.

    Attributes:
        resumed: Investigations left ``running`` by a crash, queued again.
        recovered_alerts: Investigations started for alerts claimed but never attached.
    """

    resumed: list[str] = field(default_factory=list)
    recovered_alerts: list[str] = field(default_factory=list)


def running_investigations(investigator: Investigations) -> list[str]:
    """Ids of every investigation in status ``running``, oldest first.

    Uses the agent store's status query (``investigator.store.investigations_in``) when there is
    one, else scans the most recent investigations.
    """
    query: Callable[[Sequence[str]], Sequence[Any]] | None = getattr(
        getattr(investigator, "store", None), "investigations_in", None
    ) or getattr(investigator, "investigations_in", None)
    if query is not None:
        return [v.id for v in query(["running"])]
    views = investigator.list(limit=_SCAN_LIMIT)
    return [v.id for v in reversed(views) if v.status == "running"]


class Recovery:
    """Start-up requeueing and the periodic sweep of the agent's stranded work.

    Args:
        investigator: The agent.
        pool: Where investigations run.
        intake: Alert intake (re-submits unattached claims).
        interval_s: Seconds between sweeps (``Settings.recovery_interval_s``).
    """

    def __init__(
        self,
        investigator: Investigations,
        pool: InvestigationPool,
        intake: AlertIntake,
        *,
        interval_s: float,
    ) -> None:
        self._investigator = investigator
        self._pool = pool
        self._intake = intake
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self.sweeps = 0

    def startup(self) -> StartupReport:
        """Queue investigations left running, then re-submit unattached alerts (blocking).

        Runs before the pool's workers start, so that nothing it queues is also running. When
        the store cannot answer (busy, down), the app starts anyway and the sweeping thread
        tries again.
        """
        try:
            report = self._startup()
        except VigilError:
            _log.exception("start-up recovery failed; the recovery sweep will retry it")
            return StartupReport()
        self._started = True
        return report

    def _startup(self) -> StartupReport:
        report = StartupReport()
        for investigation_id in running_investigations(self._investigator):
            self._pool.resume(investigation_id)
            report.resumed.append(investigation_id)
        report.recovered_alerts = self._intake.recover()
        if report.resumed or report.recovered_alerts:
            _log.warning(
                "start-up recovery: resumed %d investigations, recovered %d alerts",
                len(report.resumed),
                len(report.recovered_alerts),
            )
        return report

    def sweep(self) -> list[str]:
        """Call the agent's ``recover()`` once (if it has one); what it resumed."""
        recover: Callable[[], list[str]] | None = getattr(self._investigator, "recover", None)
        self.sweeps += 1
        if recover is None:
            return []
        try:
            resumed = list(recover())
        except VigilError:  # busy store, telemetry down: the next sweep tries again
            _log.exception("recovery sweep failed; retrying in %.0f s", self._interval_s)
            return []
        if resumed:
            _log.warning("recovery sweep resumed %s", ", ".join(resumed))
        return resumed

    def start(self) -> None:
        """Sweep now and then every ``interval_s`` on a daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vigil-recovery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sweeping thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._started:
                    self.startup()
                self.sweep()
            except Exception:  # a bug in one sweep must not end the sweeping
                _log.exception("recovery sweep crashed")
            self._stop.wait(self._interval_s)
