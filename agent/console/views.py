"""What each console page shows, gathered from the agent, the experiment core and the telemetry.

:class:`Console` holds the parts (composed once per app by :func:`agent.console.install_console`)
and answers one method per page with plain data for the templates. It decides nothing itself:
who may approve is :class:`agent.mitigation.ApprovalPolicy` built from the same settings as the
agent's (so a button is shown exactly when the API would accept the click), an experiment's gate
history is its audit log, and its health is read from the gate's last audited decision, the
alert ledger's open alerts, its kill switches and its investigations.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agent.console.cache import DECISION_ACTIONS, StateCache
from agent.console.charts import ChartCache
from agent.console.telemetry import ConsoleTelemetry
from agent.mitigation import ApprovalPolicy
from agent.models import InvestigationView, MitigationView
from agent.ports import Investigations
from agent.settings import Settings
from lifecycle.alerts import AlertLedger, AlertRecord
from lifecycle.config import ExperimentFile, Layer
from lifecycle.views import AuditEntry, ExperimentView, KillSwitchView, ModelView
from tools.errors import ApprovalError, ConfigError, NotFoundError
from tools.vocabulary import utc_now

__all__ = [
    "Console",
    "ConsoleExperiments",
    "Health",
    "LayerShare",
    "Row",
]

Health = Literal["killed", "harm", "alerting", "healthy", "idle"]
_LIVE = ("ramping", "running")
_WAIT_FOR_STATE_S = 0.03  # a page waits this long for the first read before saying "reading"


@runtime_checkable
class ConsoleExperiments(Protocol):
    """Lifecycle's ``ExperimentService`` as the console uses it (reads, create, start)."""

    def get(self, experiment_id: str) -> ExperimentView:
        """One experiment (NotFoundError)."""
        ...

    def list(self) -> Sequence[ExperimentView]:
        """Every experiment."""
        ...

    def version(self) -> int:
        """Version of the stored state (the latest audit entry's id)."""
        ...

    def kill_switches(self, active_only: bool = True) -> Sequence[KillSwitchView]:
        """Kill switches, newest first."""
        ...

    def audit(
        self, experiment_id: str | None = None, limit: int | None = None
    ) -> builtins.list[AuditEntry]:
        """The audit log, oldest first."""
        ...

    def models(self) -> builtins.list[ModelView]:
        """Every registered model version."""
        ...

    def layers(self) -> builtins.list[Layer]:
        """Every layer."""
        ...

    def check(self, file: ExperimentFile) -> builtins.list[ConfigError]:
        """Every whole-world problem of a file."""
        ...

    def create(
        self, file: ExperimentFile, actor: str, *, start: bool = False, reason: str = ""
    ) -> builtins.list[str]:
        """Store a file's experiments as drafts."""
        ...

    def start(self, experiment_id: str, actor: str, reason: str = "") -> ExperimentView:
        """Start a draft at its first stage."""
        ...


@dataclass(frozen=True)
class LayerShare:
    """A layer and the share of it no live or draft experiment holds (None: not read yet)."""

    id: str
    free_pct: float | None


@dataclass
class Row:
    """One experiment in a list: the view and what the console says of its health."""

    view: ExperimentView
    health: Health
    gate: str = ""
    alerts: builtins.list[AlertRecord] = field(default_factory=builtins.list)
    investigation: InvestigationView | None = None


class Console:
    """The console's parts and one read per page.

    Args:
        settings: Vigil's settings (the approval policy's on-call and second approver).
        investigator: The agent.
        experiments: The experiment core.
        ledger: Open alerts (the monitors firing).
        telemetry: The warehouse reads.
        mitigations: Every mitigation, manual proposals included (newest first).
        propose_notice: Told of a proposal filed from the console (Slack), or None.
    """

    def __init__(
        self,
        settings: Settings,
        investigator: Investigations,
        experiments: ConsoleExperiments,
        ledger: AlertLedger,
        telemetry: ConsoleTelemetry,
        mitigations: Callable[[], builtins.list[MitigationView]],
        propose_notice: Callable[[MitigationView], None] | None = None,
    ) -> None:
        self.settings = settings
        self.inv = investigator
        self.experiments = experiments
        self.ledger = ledger
        self.telemetry = telemetry
        self.mitigations = mitigations
        self.propose_notice = propose_notice
        self.state = StateCache(experiments)
        self.charts = ChartCache(telemetry)
        self.policy = ApprovalPolicy(
            oncall=tuple(settings.oncall),
            require_second_approver=settings.require_second_approver,
            owner_of=self._owner_of,
        )

    def _owner_of(self, experiment_id: str) -> str | None:
        try:
            return self.experiments.get(experiment_id).owner
        except NotFoundError:
            return None

    # -- who may decide -----------------------------------------------------------------------

    def may_approve(self, mitigation: MitigationView, user: str) -> bool:
        """True when the API would let ``user`` approve ``mitigation`` now."""
        if mitigation.status != "proposed":
            return False
        try:
            self.policy.check_approver(mitigation, user)
        except ApprovalError:
            return False
        return True

    def may_reject(self, mitigation: MitigationView, user: str) -> bool:
        """True when the API would let ``user`` reject ``mitigation`` now."""
        if mitigation.status != "proposed":
            return False
        try:
            self.policy.check_rejecter(mitigation, user)
        except ApprovalError:
            return False
        return True

    # -- reads shared by pages ----------------------------------------------------------------

    def recent_investigations(self, limit: int = 200) -> builtins.list[InvestigationView]:
        """The newest investigations, newest first."""
        return self.inv.list(limit=min(limit, self.settings.max_page_size))

    def layer_shares(self, views: Sequence[ExperimentView] | None = None) -> list[LayerShare]:
        """Every layer with its free share (as lifecycle plans ranges: completed ones free).

        Without ``views``, the console's copy; while its first read still runs the shares are
        None (the builder says so; lifecycle checks the share when the form is saved anyway).
        """
        if views is None:
            state = self.state.ready(wait_s=_WAIT_FOR_STATE_S)
            if state is None:
                return [LayerShare(layer.id, None) for layer in self.experiments.layers()]
            views = state.views
        used: dict[str, float] = {}
        for v in views:
            if v.status != "completed":
                used[v.layer] = used.get(v.layer, 0.0) + (v.range_end - v.range_start)
        return [
            LayerShare(layer.id, max(0.0, 100.0 - used.get(layer.id, 0.0)))
            for layer in self.experiments.layers()
        ]

    def rows(
        self,
        views: Sequence[ExperimentView],
        investigations: Sequence[InvestigationView],
        decisions: Mapping[str, str] | None = None,
    ) -> list[Row]:
        """Each experiment with its health, last gate decision, open alerts, last investigation.

        Args:
            views: The experiments.
            investigations: Recent investigations, newest first.
            decisions: Experiment -> its last rollout decision; the state copy's by default.
        """
        if decisions is None:
            decisions = self.state.current().decisions
        alerts: dict[str, list[AlertRecord]] = {}
        for record in self.ledger.open_alerts():
            if record.experiment_id:
                alerts.setdefault(record.experiment_id, []).append(record)
        latest: dict[str, InvestigationView] = {}
        for found in investigations:  # newest first: first wins
            exp = found.alert.experiment
            if exp and exp not in latest:
                latest[exp] = found
        out = []
        for v in views:
            gate = decisions.get(v.id, "")
            inv = latest.get(v.id)
            health: Health
            if v.killed:
                health = "killed"
            elif gate.startswith(("rollback", "ramp_down")) or (
                inv is not None and inv.status == "awaiting_approval"
            ):
                health = "harm"
            elif alerts.get(v.id) or (inv is not None and inv.status in ("running", "watching")):
                health = "alerting"
            elif v.status in _LIVE:
                health = "healthy"
            else:
                health = "idle"
            out.append(Row(v, health, gate, alerts.get(v.id, []), inv))
        return out

    # -- pages --------------------------------------------------------------------------------

    def dashboard(self) -> dict[str, Any]:
        """Live experiments, decisions waiting, kill switches and the latest audit entries.

        The experiments' health needs every experiment's state: while the console's first read
        of it still runs (:meth:`StateCache.ready`), ``reading`` says since when and ``rows`` and
        ``counts`` are None, and the rest (read directly, a few small queries) is shown. Health
        is computed here, on each page, from the state as of ``as_of`` (and ``version``).
        """
        state = self.state.ready(wait_s=_WAIT_FOR_STATE_S)
        as_of = utc_now()
        investigations = self.recent_investigations()
        waiting = [i for i in investigations if i.status in ("awaiting_approval", "watching")]
        pending = [m for m in self.mitigations() if m.status == "proposed"]
        common: dict[str, Any] = {
            "waiting": waiting,
            "pending": pending,
            "switches": self.experiments.kill_switches(active_only=True),
            "as_of": as_of,
        }
        if state is None:
            return {
                **common,
                "rows": None,
                "counts": None,
                "version": None,
                "reading": self.state.reading_since,
                "read_error": self.state.read_error,
                "audit": builtins.list(reversed(self.experiments.audit(limit=12))),
            }
        views = state.views
        live = [v for v in views if v.status in _LIVE or v.killed]
        rows = self.rows(live, investigations, state.decisions)
        rows.sort(key=lambda r: (_HEALTH_ORDER[r.health], r.view.id))
        return {
            **common,
            "rows": rows,
            "version": state.version,
            "reading": None,
            "read_error": "",
            "audit": builtins.list(reversed(state.entries[-12:])),
            "counts": {
                "experiments": len(views),
                "live": sum(1 for v in views if v.status in _LIVE),
                "drafts": sum(1 for v in views if v.status == "draft"),
            },
        }

    def experiment_list(
        self, layer: str = "", status: str = "", owner: str = "", health: str = ""
    ) -> dict[str, Any]:
        """Experiments filtered by layer, status, owner and health.

        While the console's first read of every experiment still runs, ``rows`` is None and
        ``reading`` says since when (the page reloads itself).
        """
        state = self.state.ready(wait_s=_WAIT_FOR_STATE_S)
        if state is None:
            return {
                "rows": None,
                "reading": self.state.reading_since,
                "read_error": self.state.read_error,
                "layers": [],
                "owners": [],
                "statuses": [],
                "healths": builtins.list(_HEALTH_ORDER),
                "total": None,
            }
        views = state.views
        chosen = [
            v
            for v in views
            if (not layer or v.layer == layer)
            and (not status or v.status == status)
            and (not owner or v.owner == owner)
        ]
        rows = self.rows(chosen, self.recent_investigations(), state.decisions)
        if health:
            rows = [r for r in rows if r.health == health]
        return {
            "rows": rows,
            "layers": sorted({v.layer for v in views}),
            "owners": sorted({v.owner for v in views}),
            "statuses": sorted({v.status for v in views}),
            "healths": builtins.list(_HEALTH_ORDER),
            "total": len(views),
        }

    def about(self, experiment_id: str) -> dict[str, Any]:
        """One experiment: its view, gate history, investigations, proposals and audit trail.

        Raises:
            NotFoundError: Unknown experiment.
        """
        view = self.experiments.get(experiment_id)
        trail = self.experiments.audit(experiment_id)
        gate = [e for e in trail if e.action in DECISION_ACTIONS or e.action == "start"]
        investigations = [
            i
            for i in self.recent_investigations()
            if i.alert.experiment == experiment_id
            or any(c.experiment == experiment_id for c in i.root_causes)
        ]
        proposals = [
            m
            for m in self.mitigations()
            if m.target == experiment_id and m.status in ("proposed", "approved", "executing")
        ]
        # Its last decision from its own trail: this page never waits for the whole state.
        decided = [e for e in gate if e.action in DECISION_ACTIONS]
        last = {view.id: f"{decided[-1].action} by {decided[-1].actor}"} if decided else {}
        (row,) = self.rows([view], investigations, last)
        return {
            "view": view,
            "row": row,
            "gate": builtins.list(reversed(gate)),
            "audit": builtins.list(reversed(trail)),
            "investigations": investigations,
            "proposals": proposals,
        }

    def audit_log(
        self, experiment: str = "", actor: str = "", action: str = "", limit: int = 300
    ) -> dict[str, Any]:
        """Audit entries, newest first, filtered by experiment, actor and action.

        An experiment's whole trail is read from the store; otherwise the newest entries the
        console keeps (:mod:`agent.console.cache`) are searched, or, while its first read still
        runs, the newest ``limit`` read from the store.
        """
        if experiment:
            entries = self.experiments.audit(experiment, limit=5000)
        else:
            state = self.state.ready(wait_s=_WAIT_FOR_STATE_S)
            kept = state.entries if state is not None else self.experiments.audit(limit=limit)
            entries = builtins.list(kept)
        chosen = [
            e
            for e in reversed(entries)
            if (not actor or e.actor == actor) and (not action or e.action == action)
        ]
        return {
            "entries": chosen[:limit],
            "matched": len(chosen),
            "searched": len(entries),
            "whole": bool(experiment),
            "actors": sorted({e.actor for e in entries}),
            "actions": sorted({e.action for e in entries}),
        }


_HEALTH_ORDER: dict[Health, int] = {
    "harm": 0,
    "alerting": 1,
    "killed": 2,
    "healthy": 3,
    "idle": 4,
}
