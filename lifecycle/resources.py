"""The preflight's resource step: a candidate's cost per request at peak against its tier.

The cost per request is, in this order: the one declared in the model registry for the serving
version (``ms_per_request``, ``memory_gb``: :class:`~lifecycle.config.ModelEntry`), the one
declared in the ``model_costs`` setting (a fallback for versions registered without a cost), the
replay's measured p50. Each estimate says which it used and carries the measured cost beside a
declared one, so a declaration far below the measurement shows in the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lifecycle.config import ModelEntry
from lifecycle.preflight_models import DeclaredBy, PreflightStep, ResourceEstimate
from lifecycle.views import ExperimentView, ModelView
from tools.result import CheckResult

__all__ = ["Capacity", "ModelCost", "estimate_resources"]


@dataclass(frozen=True)
class Capacity:
    """The serving tier: its peak traffic and what it can give a candidate."""

    peak_rps: float = 20_000.0
    cores: float = 64.0
    memory_gb: float = 256.0
    utilisation: float = 0.7


@dataclass(frozen=True)
class ModelCost:
    """A model's declared serving cost outside the registry (the ``model_costs`` setting)."""

    ms_per_request: float | None = None
    memory_gb: float | None = None


def estimate_resources(
    exp: ExperimentView,
    candidates: Mapping[str, str],
    registry: Sequence[ModelView],
    replayed: Mapping[str, Sequence[CheckResult]],
    capacity: Capacity,
    fallback: Mapping[str, ModelCost],
    out: list[ResourceEstimate],
) -> PreflightStep:
    """The preflight's resource step: what each candidate needs at peak against the tier.

    Args:
        exp: The experiment (its traffic and arm weights give each candidate's share of peak).
        candidates: Arm -> candidate model.
        registry: The model registry (the serving version's declared cost comes first).
        replayed: Arm -> the replay's checks (their latency check gives the measured cost).
        capacity: The serving tier.
        fallback: Declared costs by model id for versions the registry declares none for.
        out: Receives one estimate per candidate with a cost.
    """
    if not candidates:
        return PreflightStep(name="resources", verdict="ok", summary="No new model to serve.")
    cap = capacity
    weights = {arm: a.weight for arm, a in exp.arms.items()}
    total = sum(weights.values())
    serving = {m.id: m.entry for m in registry if m.serving}
    for arm, model in candidates.items():
        declared, declared_by = _declared_cost(model, serving, fallback)
        measured = _measured_ms(replayed.get(arm, []))
        if declared.ms_per_request is not None:
            cost, source = declared.ms_per_request, "declared"
        elif measured is not None:
            cost, source = measured, "measured"
        else:
            continue
        share = exp.traffic_pct / 100 * weights[arm] / total
        peak = cap.peak_rps * share
        cores = cost / 1000 * peak
        memory = declared.memory_gb
        fits = cores <= cap.cores * cap.utilisation and (
            memory is None or memory <= cap.memory_gb * cap.utilisation
        )
        out.append(
            ResourceEstimate(
                model=model,
                cost_ms_per_request=cost,
                cost_source=source,
                declared_by=declared_by if source == "declared" else None,
                measured_ms_per_request=measured,
                peak_rps=peak,
                cores_needed=cores,
                cores_available=cap.cores * cap.utilisation,
                memory_gb_needed=memory,
                memory_gb_available=cap.memory_gb * cap.utilisation,
                fits=fits,
            )
        )
    if not out:
        return PreflightStep(
            name="resources",
            verdict="inconclusive",
            summary="No measured or declared cost per request to estimate from.",
        )
    words = [
        f"{e.model} needs {e.cores_needed:.1f} of {e.cores_available:.1f} cores at "
        f"{e.peak_rps:,.0f} requests/s ({_cost_words(e)})"
        + (
            f" and {e.memory_gb_needed:g} of {e.memory_gb_available:g} GB"
            if e.memory_gb_needed is not None
            else ""
        )
        for e in out
    ]
    fits = all(e.fits for e in out)
    lead = "Fits the serving tier: " if fits else "Does not fit the serving tier: "
    return PreflightStep(
        name="resources",
        verdict="ok" if fits else "fail",
        summary=lead + "; ".join(words) + ".",
    )


def _declared_cost(
    model: str, serving: Mapping[str, ModelEntry], fallback_costs: Mapping[str, ModelCost]
) -> tuple[ModelCost, DeclaredBy | None]:
    """The serving version's declared cost from the registry, each field falling back to
    the ``model_costs`` setting; and where the per-request cost came from."""
    entry = serving.get(model)
    fallback = fallback_costs.get(model, ModelCost())
    ms = entry.ms_per_request if entry is not None else None
    memory = entry.memory_gb if entry is not None else None
    by: DeclaredBy | None = "registry" if ms is not None else None
    if ms is None and fallback.ms_per_request is not None:
        ms, by = fallback.ms_per_request, "settings"
    return ModelCost(ms, memory if memory is not None else fallback.memory_gb), by


def _cost_words(e: ResourceEstimate) -> str:
    """``0.500 ms per request, declared in the registry; the replay measured 0.210``."""
    if e.cost_source == "measured":
        return f"{e.cost_ms_per_request:.3f} ms per request, measured by the replay"
    where = "the registry" if e.declared_by == "registry" else "the model_costs setting"
    words = f"{e.cost_ms_per_request:.3f} ms per request, declared in {where}"
    if e.measured_ms_per_request is not None:
        words += f"; the replay measured {e.measured_ms_per_request:.3f}"
    return words


def _measured_ms(checks: Sequence[CheckResult]) -> float | None:
    for c in checks:
        if c.check == "latency" and c.evidence:
            rows = c.evidence[0].rows
            cols = c.evidence[0].columns
            p50 = rows[0][cols.index("p50")] if "p50" in cols else None
            if isinstance(p50, int | float) and np.isfinite(p50):
                return float(p50)
    return None
