"""Prometheus metrics of one server, in its own :class:`CollectorRegistry`.

Each app gets its own registry (no process-global state), so two apps in one process — tests,
or a server beside a CLI run — never share or collide on metrics.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.models import InvestigationStatus, InvestigationView
from tools.errors import VigilError

__all__ = ["ServerMetrics"]

_log = logging.getLogger(__name__)

_STATUSES: tuple[str, ...] = get_args(InvestigationStatus)
# Investigations counted per scrape; older ones no longer change status.
_SCRAPE_LIMIT = 1000


class _InvestigationsByStatus(Collector):
    def __init__(self) -> None:
        self.source: Callable[[int], list[InvestigationView]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.source is None:
            return
        family = GaugeMetricFamily(
            "vigil_investigations",
            f"Investigations by status (the most recent {_SCRAPE_LIMIT}).",
            labels=["status"],
        )
        try:
            tally: Tally[str] = Tally(str(v.status) for v in self.source(_SCRAPE_LIMIT))
        except VigilError:
            _log.exception("could not list investigations for /metrics")
            return
        for status in _STATUSES:
            family.add_metric([status], float(tally.get(status, 0)))
        yield family


class ServerMetrics:
    """The server's metrics.

    Created before the parts it reads (so that the agent can be handed its
    :meth:`observe_check` / :meth:`observe_llm_call` hooks), then :meth:`bind`-ed to them.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._by_status = _InvestigationsByStatus()
        r.register(self._by_status)
        self.queue_depth = Gauge(
            "vigil_queue_depth", "Investigations waiting for a worker.", registry=r
        )
        self.workers_busy = Gauge(
            "vigil_workers_busy", "Investigations a worker is running now.", registry=r
        )
        self.alerts = Counter(
            "vigil_alerts",
            "Alerts received, by source and outcome (started, duplicate, resolved, refused).",
            ["source", "outcome"],
            registry=r,
        )
        self.investigation_seconds = Histogram(
            "vigil_investigation_duration_seconds",
            "Wall time of a background investigation run, by final status.",
            ["status"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.check_seconds = Histogram(
            "vigil_check_duration_seconds",
            "Wall time of one diagnostic check, by check.",
            ["check"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.llm_calls = Counter(
            "vigil_llm_calls", "Calls to the LLM endpoint.", ["model"], registry=r
        )
        self.llm_failures = Counter(
            "vigil_llm_failures",
            "LLM calls that failed (after retries) or whose answer was rejected.",
            ["model", "reason"],
            registry=r,
        )
        self.decisions = Counter(
            "vigil_mitigation_decisions",
            "Mitigation approvals and rejections, by channel and outcome.",
            ["channel", "decision"],
            registry=r,
        )

    def bind(
        self,
        list_investigations: Callable[[int], list[InvestigationView]],
        queue_depth: Callable[[], int],
        running: Callable[[], int],
    ) -> None:
        """Read the gauges from the app's parts.

        Args:
            list_investigations: ``Investigator.list`` (called with a limit on every scrape).
            queue_depth: Investigations waiting for a worker.
            running: Investigations a worker is running now.
        """
        self._by_status.source = list_investigations
        self.queue_depth.set_function(lambda: float(queue_depth()))
        self.workers_busy.set_function(lambda: float(running()))

    def observe_check(self, check: str, seconds: float) -> None:
        """Record how long one check took."""
        self.check_seconds.labels(check=check).observe(seconds)

    def observe_llm_call(self, model: str, *, failed: bool = False, reason: str = "") -> None:
        """Record one LLM call and whether it failed."""
        self.llm_calls.labels(model=model).inc()
        if failed:
            self.llm_failures.labels(model=model, reason=reason or "error").inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
