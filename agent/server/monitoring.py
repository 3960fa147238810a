"""The bridge from Vigil's monitors (``lifecycle.monitors``) to investigations.

``lifecycle`` must not import the agent, so a monitor returns plain :class:`AlertSpec` data,
already claimed in the alert ledger; here it becomes an :class:`Alert` and an investigation.
:class:`MonitorLoop` runs rounds in a background thread of the server; ``vigil monitor --once``
runs one round through :func:`fire_round`. The rollout controller runs in the same kind of loop
(:func:`rollout_round`): each round is one tick on the telemetry clock, and the alerts its
``pause_and_alert`` plans open become investigations the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import cast

from agent.models import Alert, AlertMetric
from agent.server.intake import AlertIntake
from lifecycle.controller import RolloutController
from lifecycle.monitors import AlertSpec
from tools.errors import VigilError

__all__ = ["MonitorLoop", "MonitorRound", "fire_round", "rollout_round", "to_alert"]

_log = logging.getLogger(__name__)

MonitorRound = Callable[[], list[AlertSpec]]
"""One evaluation of every monitor: the alerts newly opened in the ledger."""


def rollout_round(
    controller: RolloutController, clock: Callable[[], datetime] | None = None
) -> MonitorRound:
    """One tick of the rollout controller as a round: the alerts it opened.

    Args:
        controller: The controller.
        clock: "Now" of a served world; by default the telemetry clock (its newest request).
    """

    def round_() -> list[AlertSpec]:
        return controller.alerts(controller.tick(clock() if clock is not None else None))

    return round_


def to_alert(spec: AlertSpec) -> Alert:
    """The agent's :class:`Alert` for a monitor's alert."""
    return Alert(
        metric=cast(AlertMetric, spec.metric),
        fired_at=spec.fired_at,
        experiment=spec.experiment_id,
        since=spec.since,
        source="monitor",
        name=f"vigil-monitor:{spec.guardrail}",
        summary=spec.summary,
        labels=dict(spec.labels),
        fingerprint=spec.key,
    )


def fire_round(specs: list[AlertSpec], intake: AlertIntake) -> list[str]:
    """Start an investigation for each monitor alert; returns the ids started.

    An alert refused because the queue is full is withdrawn from the ledger and fires again on
    the next round.
    """
    started = []
    for spec in specs:
        investigation_id = intake.submit_claimed(to_alert(spec), spec.ledger_id, source="monitor")
        if investigation_id:
            started.append(investigation_id)
    return started


class MonitorLoop:
    """Runs a monitor round every ``interval_s`` seconds on a daemon thread.

    Args:
        round_fn: One evaluation of every monitor.
        intake: Where the alerts go.
        interval_s: Seconds between the starts of two rounds (a non-positive value disables the
            loop).
        name: The thread's name (``vigil-rollout`` for the rollout controller's loop).
    """

    def __init__(
        self,
        round_fn: MonitorRound,
        intake: AlertIntake,
        *,
        interval_s: float,
        name: str = "vigil-monitor",
    ) -> None:
        self._name = name
        self._round = round_fn
        self._intake = intake
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self) -> None:
        """Start the loop (no-op when disabled or already running)."""
        if self._interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current round."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> list[str]:
        """Evaluate every monitor once and start investigations for the alerts."""
        ids = fire_round(self._round(), self._intake)
        self.rounds += 1
        return ids

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except VigilError:
                _log.exception("monitor round failed; trying again next round")
            except Exception:
                # A bad round must not kill the loop that watches every experiment.
                _log.exception("monitor round crashed; trying again next round")
            self._stop.wait(self._interval)
