"""The experiment page's charts, computed once per experiment and complete minute of telemetry.

The page itself renders at once (configuration, arms, rollout, gate history, audit trail) with a
"charts loading" placeholder; the charts arrive as a fragment
(``/console/fragments/experiments/ID/charts``) that :class:`ChartCache` answers. A panel covers
the telemetry up to the end of its last complete minute (the newest request's minute may still be
written to), so it is kept per experiment, window (first exposure and last complete minute) and
the parts of the configuration the charts draw: a reload within the minute is answered from the
copy, the first load after a minute completes reads again, and the caption says which minute the
charts are as of. Two pages asking for the same panel at once wait for one read.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime

from agent.console.guardrails import GuardrailCharts, GuardrailSeries, chart
from agent.console.looks import LookWindow, look_window
from agent.console.telemetry import ConsoleTelemetry
from lifecycle.gate import GateConfig
from lifecycle.views import ExperimentView
from tools.vocabulary import utc_now

__all__ = ["CHART_REFRESH_S", "ChartCache", "ChartPanel"]

CHART_REFRESH_S = 60
"""How often an open experiment page asks for its charts again: they change once a minute."""


@dataclass(frozen=True)
class ChartPanel:
    """What the charts fragment shows.

    Attributes:
        charts: The series and each arm's levels.
        svgs: Each series' chart (None: no look has data), in the order of ``charts.series``.
        window: The looks' window (None: a draft, no telemetry or no complete minute yet).
        newest: The telemetry's newest request.
        computed_at: When the panel was computed (wall clock).
        compute_ms: What computing it cost (reads, judgement, drawing).
        cached: Whether this answer came from the copy.
    """

    charts: GuardrailCharts
    svgs: tuple[str | None, ...] = ()
    window: LookWindow | None = None
    newest: datetime | None = None
    computed_at: datetime = field(default_factory=utc_now)
    compute_ms: float = 0.0
    cached: bool = False

    @property
    def as_of(self) -> datetime | None:
        """The end of the last complete minute the charts cover."""
        return None if self.window is None else self.window.end

    @property
    def drawn(self) -> list[tuple[GuardrailSeries, str]]:
        """The series that have a chart, with it."""
        return [(s, svg) for s, svg in zip(self.charts.series, self.svgs, strict=True) if svg]


def _drawn_parts(view: ExperimentView) -> Hashable:
    """What of an experiment's configuration the charts depend on."""
    guardrails = tuple((g.metric, g.max_regression) for g in view.guardrails)
    return (view.control, tuple(view.arms), guardrails)


class ChartCache:
    """Panels per experiment and window, the newest ``capacity`` kept (thread-safe).

    Args:
        telemetry: The warehouse reads.
        capacity: Panels kept (least recently used dropped first).
        gate: The gate's level and tuning.
    """

    def __init__(
        self, telemetry: ConsoleTelemetry, capacity: int = 64, gate: GateConfig | None = None
    ) -> None:
        self._telemetry = telemetry
        self._capacity = capacity
        self._gate = gate
        self._held: OrderedDict[Hashable, ChartPanel] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[Hashable, threading.Lock] = {}
        self.computed = 0
        """Panels computed (tests and the benchmark look)."""

    def clear(self) -> None:
        """Forget every panel (the benchmark measures a computation)."""
        with self._lock:
            self._held.clear()

    def panel(self, view: ExperimentView) -> ChartPanel:
        """The experiment's charts as of the last complete minute of the telemetry.

        One small statement reads the clock (first exposure, newest request); the panel is
        computed when this experiment's window moved, and answered from the copy otherwise.
        """
        if view.status == "draft":
            return ChartPanel(GuardrailCharts([], []))
        first, newest = self._telemetry.chart_clock(view.id)
        if first is None or newest is None:
            return ChartPanel(GuardrailCharts([], []), newest=newest)
        window = look_window(view.id, first, newest)
        if window is None:
            return ChartPanel(GuardrailCharts([], []), newest=newest)
        key = (view.id, window, _drawn_parts(view))
        held = self._get(key, newest)
        if held is not None:
            return held
        with self._lock:
            flight = self._flights.setdefault(key, threading.Lock())
        with flight:  # a second page for the same panel waits for the first one's read
            held = self._get(key, newest)
            if held is not None:
                return held
            try:
                began = time.perf_counter()
                charts = self._telemetry.guardrail_charts(view, window, self._gate)
                svgs = tuple(chart(s) for s in charts.series)
                spent = (time.perf_counter() - began) * 1000.0
                panel = ChartPanel(charts, svgs, window, newest, compute_ms=spent)
                with self._lock:
                    self._held[key] = panel
                    while len(self._held) > self._capacity:
                        self._held.popitem(last=False)
                    self.computed += 1
            finally:
                with self._lock:
                    self._flights.pop(key, None)
            return panel

    def _get(self, key: Hashable, newest: datetime) -> ChartPanel | None:
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return None
            self._held.move_to_end(key)
        return ChartPanel(
            held.charts,
            held.svgs,
            held.window,
            newest,  # read now: it may have moved within the minute
            held.computed_at,
            held.compute_ms,
            cached=True,
        )
