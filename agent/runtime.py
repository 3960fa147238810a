"""Composition of the agent's real parts from settings: experiment core, catalog, checks.

The :class:`~agent.service.Investigator` builds these when it is not handed fakes: lifecycle's
``ExperimentService`` (the only door to state changes) behind the :class:`Actions` the executor
calls; a :class:`Catalog` of the stored experiments; and a factory of ``tools.toolbox.Toolbox``
instances reading ``settings.telemetry_url``. Also :func:`reasoner_from_settings`: the LLM reasoner
when an endpoint is configured, else the deterministic one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.deps import Observer, ToolboxFactory
from agent.models import Alert
from agent.reasoning import ExperimentMeta, Reasoner
from lifecycle.settings import Settings

__all__ = [
    "LifecycleParts",
    "ServiceActions",
    "ServiceCatalog",
    "lifecycle_parts",
    "reasoner_from_settings",
    "toolbox_factory",
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

    def experiments(self) -> dict[str, ExperimentMeta]:
        """Every stored experiment, with its current share of traffic."""
        out: dict[str, ExperimentMeta] = {}
        for view in self._service.list():
            out[view.id] = ExperimentMeta(
                id=view.id,
                name=view.name,
                owner=view.owner,
                # A layer hashes every unit, so a share of the layer is a share of all traffic.
                traffic_share=min(1.0, max(0.0, float(view.exposure_pct) / 100.0)),
                models={arm: spec.model for arm, spec in view.arms.items()},
                control=view.control,
            )
        return out

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


@dataclass
class LifecycleParts:
    """What :func:`lifecycle_parts` builds."""

    service: Any
    catalog: ServiceCatalog
    actions: ServiceActions
    toolbox_factory: ToolboxFactory


def toolbox_factory(settings: Settings, service: Any, catalog: ServiceCatalog) -> ToolboxFactory:
    """A factory of ``tools.toolbox.Toolbox`` over ``settings.telemetry_url``.

    The experiments and models are read from lifecycle each time a toolbox is built (one per
    investigation), so a newly created experiment is known to the next investigation.
    """
    from tools.schema import TelemetrySchema
    from tools.telemetry import TelemetryReader
    from tools.toolbox import ExperimentInfo, ModelInfo, Toolbox

    schema = TelemetrySchema.from_mappings(settings.telemetry_tables, settings.telemetry_columns)

    def build(alert: Alert) -> Any:
        del alert  # one toolbox serves any alert; the checks take their subject as arguments
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
            for v in service.list()
        }
        models: dict[str, Any] = {}
        for m in service.models():
            if m.serving or m.id not in models:
                models[m.id] = ModelInfo(id=m.id, refresh_minutes=m.entry.refresh_minutes)
        reader = TelemetryReader(settings.telemetry_url, schema)
        return Toolbox(reader, experiments, models, catalog.production_model())

    return build


def lifecycle_parts(settings: Settings) -> LifecycleParts:
    """Open lifecycle's ``ExperimentService`` on ``settings.state_url`` and wrap it."""
    from lifecycle.service import ExperimentService

    service = ExperimentService.from_settings(settings)
    catalog = ServiceCatalog(service, settings.production_model)
    return LifecycleParts(
        service=service,
        catalog=catalog,
        actions=ServiceActions(service),
        toolbox_factory=toolbox_factory(settings, service, catalog),
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
