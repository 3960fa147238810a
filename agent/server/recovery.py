"""Start-up and periodic recovery: nothing accepted before a crash is lost after it.

At start-up, before the app serves a request, :meth:`Recovery.startup` queues every
investigation a crash left ``running`` (``Investigator.run`` continues it from its checkpoint)
and re-submits every alert claimed in the ledger but never attached to an investigation. Then,
at start-up and every ``Settings.recovery_interval_s``, a thread calls the agent's
``Investigator.recover()`` (it resumes stranded ``approved``/``executing`` mitigations and
investigations whose action ran).

A second thread, on the same interval, runs the follow-ups that are due
(``Investigator.follow_up()``: watching investigations re-run on fresh data, each claimed in the
state store so that two servers never run the same follow-up, and a claim whose process died is
resumed by another).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from agent.ports import Investigations
from agent.server.intake import AlertIntake
from agent.server.pool import InvestigationPool
from tools.errors import VigilError

__all__ = ["Recovery", "StartupReport"]

_log = logging.getLogger(__name__)


@dataclass
class StartupReport:
    """What start-up recovery queued.

    Attributes:
        resumed: Investigations left ``running`` by a crash, queued again.
        recovered_alerts: Investigations started for alerts claimed but never attached.
    """

    resumed: list[str] = field(default_factory=list)
    recovered_alerts: list[str] = field(default_factory=list)


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
        self._followup_thread: threading.Thread | None = None
        self._started = False
        self.sweeps = 0
        self.followup_rounds = 0

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
        for investigation_id in self._investigator.running():
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
        """Call the agent's ``recover()`` once; what it resumed."""
        self.sweeps += 1
        try:
            resumed = list(self._investigator.recover())
        except VigilError:  # busy store, telemetry down: the next sweep tries again
            _log.exception("recovery sweep failed; retrying in %.0f s", self._interval_s)
            return []
        if resumed:
            _log.warning("recovery sweep resumed %s", ", ".join(resumed))
        return resumed

    def follow_ups(self) -> int:
        """Run the follow-ups that are due, once; how many ran."""
        self.followup_rounds += 1
        try:
            done = len(self._investigator.follow_up())
        except VigilError:  # busy store, telemetry down: the next round tries again
            _log.exception("follow-ups failed; retrying in %.0f s", self._interval_s)
            return 0
        if done:
            _log.info("ran %d follow-ups", done)
        return done

    def start(self) -> None:
        """Sweep (and run due follow-ups) now and every ``interval_s``, on daemon threads."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vigil-recovery", daemon=True)
        self._thread.start()
        self._followup_thread = threading.Thread(
            target=self._followup_loop, name="vigil-followups", daemon=True
        )
        self._followup_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sweeping threads."""
        self._stop.set()
        for thread in (self._thread, self._followup_thread):
            if thread is not None:
                thread.join(timeout)
        self._thread = None
        self._followup_thread = None

    def _followup_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.follow_ups()
            except Exception:  # a bug in one round must not end the follow-ups
                _log.exception("follow-up round crashed")
            self._stop.wait(self._interval_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._started:
                    self.startup()
                self.sweep()
            except Exception:  # a bug in one sweep must not end the sweeping
                _log.exception("recovery sweep crashed")
            self._stop.wait(self._interval_s)
