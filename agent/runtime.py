"""Composition of the agent's real parts from settings: experiment core, catalog, checks.

The :class:`~agent.service.Investigator` builds these when it is not handed fakes: lifecycle's
``ExperimentService`` (the only door to state changes) behind the :class:`Actions` the executor
calls; a :class:`Catalog` of the stored experiments; and a factory of ``tools.toolbox.Toolbox``
instances reading ``settings.telemetry_url``. Also :func:`reasoner_from_settings`: the LLM reasoner
when an endpoint is configured, else the deterministic one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.deps import Observer
from agent.models import Alert
from agent.reasoning import ExperimentMeta, Reasoner
from agent.settings import Settings
from tools.errors import ConfigError
from tools.vocabulary import as_utc, utc_now

if TYPE_CHECKING:
    from lifecycle.preflight import ModelCost, Preflight

__all__ = [
    "LifecycleParts",
    "ServiceActions",
    "ServiceCatalog",
    "TelemetryToolboxes",
    "lifecycle_parts",
    "preflight_for",
    "reasoner_from_settings",
    "risk_model_path",
]


class ServiceCatalog:
    """The experiments stored in lifecycle, as the agent needs them.

    Args:
        service: Lifecycle's ``ExperimentService``.
        production_model: The model serving traffic outside experiments (settings).
    """

    def __init__(self, service: Any, production_model: str | None) -> None:
        self._service = service
        self._production = production_model
        self._lock = threading.Lock()
        self._listed: tuple[int, list[Any]] | None = None
        self._metas: tuple[int, dict[str, ExperimentMeta]] | None = None

    def views(self) -> list[Any]:
        """``service.list()``, read again only when the state version moved.

        An investigation asks for the experiments several times (intake, localize, the
        toolbox, the reasoner); at a thousand experiments each full read costs a tenth of a
        second, and every state change moves the version (it is the newest audit entry).
        """
        version = int(self._service.version())
        with self._lock:
            if self._listed is not None and self._listed[0] == version:
                return list(self._listed[1])
        views = list(self._service.list())
        with self._lock:
            self._listed = (version, views)
        return list(views)

    def experiments(self) -> dict[str, ExperimentMeta]:
        """Every stored experiment, with its current share of traffic."""
        version = int(self._service.version())
        with self._lock:
            if self._metas is not None and self._metas[0] == version:
                return dict(self._metas[1])
        out: dict[str, ExperimentMeta] = {}
        for view in self.views():
            out[view.id] = ExperimentMeta(
                id=view.id,
                name=view.name,
                owner=view.owner,
                # A layer hashes every unit, so a share of the layer is a share of all traffic.
                traffic_share=min(1.0, max(0.0, float(view.exposure_pct) / 100.0)),
                models={arm: spec.model for arm, spec in view.arms.items()},
                control=view.control,
            )
        with self._lock:
            self._metas = (version, out)
        return dict(out)

    def production_model(self) -> str | None:
        """The production model (``settings.production_model``)."""
        return self._production


class ServiceActions:
    """The executor's :class:`~agent.actions.Actions` over lifecycle's ``ExperimentService``.

    Each call passes the mitigation id as the idempotency key, so the experiment core itself
    refuses to repeat an action even if the agent's own guard were bypassed.
    """

    def __init__(self, service: Any) -> None:
        self._service = service

    def kill(self, experiment_id: str, actor: str, reason: str, key: str) -> Any:
        """Activate the experiment's kill switch."""
        return self._service.kill(experiment_id, actor, reason, scope="experiment", key=key)

    def ramp_down(self, experiment_id: str, actor: str, reason: str, key: str) -> Any:
        """Back one rollout stage."""
        return self._service.ramp_down(experiment_id, actor, reason, key=key)

    def rollback_model(self, model_id: str, actor: str, reason: str, key: str) -> Any:
        """Revert the model's serving version."""
        return self._service.rollback_model(model_id, actor, reason, key=key)

    def record(self, action: str, target: str | None, actor: str, reason: str, key: str) -> Any:
        """Record an escalation (no state change) in lifecycle's audit log."""
        return self._service.record(action, target, actor, reason, key=key)

    def start(self, experiment_id: str, actor: str, reason: str, key: str) -> Any:
        """Start a draft whose preflight needed on-call's approval."""
        return self._service.start(experiment_id, actor, reason, key=key)


@dataclass
class LifecycleParts:
    """What :func:`lifecycle_parts` builds."""

    service: Any
    catalog: ServiceCatalog
    actions: ServiceActions
    toolbox_factory: TelemetryToolboxes

    def close(self) -> None:
        """Close the experiment service and dispose of the telemetry engine."""
        self.toolbox_factory.close()
        self.service.close()


class TelemetryToolboxes:
    """Builds a ``tools.toolbox.Toolbox`` per investigation over one telemetry engine.

    The experiments and models are read from lifecycle each time a toolbox is built (one per
    investigation), so a newly created experiment is known to the next investigation. Every
    toolbox shares one engine (its connection pool) for ``settings.telemetry_url``, opened on
    first use and disposed by :meth:`close`.
    """

    def __init__(self, settings: Settings, service: Any, catalog: ServiceCatalog) -> None:
        self._settings = settings
        self._service = service
        self._catalog = catalog
        self._schema = settings.telemetry_schema()
        self._engine: Any = None
        self._lock = threading.Lock()

    def __call__(self, alert: Alert) -> Any:
        """A toolbox with empty caches (one toolbox serves any alert of the investigation)."""
        from tools.telemetry import TelemetryReader
        from tools.toolbox import ExperimentInfo, ModelInfo, Toolbox

        del alert  # the checks take their subject as arguments
        experiments = {
            v.id: ExperimentInfo(
                id=v.id,
                name=v.name,
                layer=v.layer,
                arms={arm: spec.weight for arm, spec in v.arms.items()},
                control=v.control,
                arm_models={arm: spec.model for arm, spec in v.arms.items()},
                owner=v.owner,
                launched_at=v.created_at,
            )
            for v in self._catalog.views()
        }
        models: dict[str, Any] = {}
        for m in self._service.models():
            if m.serving or m.id not in models:
                models[m.id] = ModelInfo(id=m.id, refresh_minutes=m.entry.refresh_minutes)
        with self._lock:
            reader = TelemetryReader(self._engine or self._settings.telemetry_url, self._schema)
            self._engine = reader.engine
        return Toolbox(reader, experiments, models, self._catalog.production_model())

    def close(self) -> None:
        """Dispose of the telemetry engine (a later toolbox opens a new one)."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()


def lifecycle_parts(settings: Settings) -> LifecycleParts:
    """Open lifecycle's ``ExperimentService`` on ``settings.state_url`` and wrap it."""
    from lifecycle.service import ExperimentService

    service = ExperimentService.from_settings(settings)
    catalog = ServiceCatalog(service, settings.production_model)
    return LifecycleParts(
        service=service,
        catalog=catalog,
        actions=ServiceActions(service),
        toolbox_factory=TelemetryToolboxes(settings, service, catalog),
    )


def reasoner_from_settings(settings: Settings, observer: Observer | None = None) -> Reasoner:
    """The LLM reasoner when ``llm_base_url`` and ``llm_model`` are set, else deterministic.

    Args:
        settings: The LLM endpoint, model and budget.
        observer: Told of each LLM call (the server's metrics); None for nobody.
    """
    if settings.llm_base_url and settings.llm_model:
        from agent.llm import LLMReasoner

        return LLMReasoner(settings, observer=observer)
    from agent.deterministic import DeterministicReasoner

    return DeterministicReasoner()


def risk_model_path(settings: Settings) -> Path:
    """Where the risk model is read from and trained into."""
    return settings.risk_model_path or settings.home / "risk_model.joblib"


def preflight_for(settings: Settings, svc: Any, at: datetime | None = None) -> Preflight:
    """The preflight ("Start experiment?") over the configured stores, V2 server and risk model.

    Args:
        settings: Stores, the V2 inference endpoint, serving capacity, the risk model's path.
        svc: lifecycle's ``ExperimentService``.
        at: The end of the replayed window (None: now).
    """
    from agent.preflight_report import InvestigationIncidents
    from agent.store import AgentStore
    from lifecycle.inference import OpenInferenceRunner, ShadowLog, numeric_encoder
    from lifecycle.preflight import Capacity, Preflight
    from lifecycle.risk import RiskModel
    from tools.telemetry import TelemetryReader

    runner = None
    if settings.inference_url:
        if not settings.inference_features:
            raise ConfigError(
                "inference_features", [], "name the logged columns the models take as input"
            )
        runner = OpenInferenceRunner(
            settings.inference_url,
            numeric_encoder(settings.inference_features),
            batch_size=settings.inference_batch_size,
            timeout=settings.inference_timeout_s,
        )
    schema = settings.telemetry_schema()
    path = risk_model_path(settings)
    risk = RiskModel.load(path) if path.exists() else None
    owners = {v.id: (v.owner, v.layer) for v in svc.list()}
    incidents = InvestigationIncidents(AgentStore(settings.state_url), owners)
    now = as_utc(at) if at is not None else None
    return Preflight(
        svc,
        runner=runner,
        requests=TelemetryReader(settings.telemetry_url, schema),
        production_model=settings.production_model,
        capacity=Capacity(
            peak_rps=settings.serving_peak_rps,
            cores=settings.serving_cores,
            memory_gb=settings.serving_memory_gb,
            utilisation=settings.serving_utilisation,
        ),
        declared=_declared(settings),
        risk=risk,
        incidents=incidents,
        shadow=ShadowLog(
            settings.telemetry_url, requests=settings.telemetry_tables.get("requests", "requests")
        ),
        window_minutes=settings.preflight_window_minutes,
        sample=settings.preflight_sample,
        clock=(lambda: now) if now is not None else utc_now,
    )


def _declared(settings: Settings) -> dict[str, ModelCost]:
    """``model_costs`` as declared costs, each key named when it is not one we know."""
    from lifecycle.preflight import ModelCost

    out = {}
    for model, cost in settings.model_costs.items():
        unknown = set(cost) - {"ms_per_request", "memory_gb"}
        if unknown:
            raise ConfigError(
                f"model_costs.{model}", sorted(unknown), "use ms_per_request and memory_gb"
            )
        out[model] = ModelCost(cost.get("ms_per_request"), cost.get("memory_gb"))
    return out
