"""The settings the experiment core reads, on top of ``tools``' (``VIGIL_*`` or ``.env``).

The state store, targeting, the monitors and the rollout controller, configuration distribution,
and the preflight with its risk model. The whole app's settings are composed at the root,
``agent.settings.Settings``; code in ``lifecycle`` takes a :class:`LifecycleSettings` (the root's
settings are one) and never reads the agent's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from tools.settings import HOME, ToolSettings, home_defaults

__all__ = ["LifecycleSettings"]


class LifecycleSettings(ToolSettings):
    """The experiment core's settings; each field reads ``VIGIL_<NAME>``."""

    # --- State store -------------------------------------------------------------------------
    state_url: str = Field(
        default=f"sqlite:///{HOME / 'state.db'}",
        description="SQLAlchemy URL of the experiment state, audit log and investigations.",
    )

    @model_validator(mode="before")
    @classmethod
    def _state_under_home(cls, data: Any) -> Any:
        return home_defaults(data, {"state_url": "sqlite:///{home}/state.db"})

    # --- Monitors and the rollout controller -------------------------------------------------
    monitor_interval_s: float = Field(
        default=60.0,
        description="Seconds between two evaluations of the monitors by `vigil serve`.",
    )
    rollout_interval_s: float = Field(
        default=60.0,
        description="Seconds between two ticks of the rollout controller in `vigil serve` "
        "(0 turns it off).",
    )
    monitor_lookback_minutes: int = Field(
        default=24 * 60, ge=1, description="Longest window a monitor evaluates."
    )

    # --- Targeting ---------------------------------------------------------------------------
    targeting_vocabulary: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Request property -> allowed targeting values ([] = any), laid over the "
        "defaults (country, platform, ad_type, device_type).",
    )

    # --- Configuration distribution (issue 17): the signed snapshot stream of `vigil serve` --
    snapshot_key: str | None = Field(
        default=None,
        description="Shared HMAC-SHA256 key signing the snapshots `vigil serve` publishes "
        "(unset: no snapshot endpoints); subscribers verify with the same key.",
    )
    snapshot_poll_s: float = Field(
        default=0.02,
        gt=0,
        description="How often `vigil serve` looks for a new state version to publish.",
    )
    snapshot_heartbeat_s: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive comments on the stream."
    )

    # --- Change safety before start (issue 18): preflight replay, resources, risk score ------
    inference_url: str | None = Field(
        default=None,
        description="Root of an Open Inference Protocol (V2) server (KServe, MLServer, Triton) "
        "that serves candidate and production models for the preflight replay; unset: the "
        "replay step is skipped (inconclusive).",
    )
    inference_features: list[str] = Field(
        default_factory=list,
        description="Logged request columns sent as the model input tensor, in order.",
    )
    inference_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds per call to the inference server."
    )
    inference_batch_size: int = Field(default=1024, ge=1, description="Requests per V2 infer call.")
    preflight_window_minutes: int = Field(
        default=60, ge=1, description="The window of production requests the preflight replays."
    )
    preflight_sample: int = Field(
        default=20_000, ge=100, description="Most production requests the preflight replays."
    )
    serving_peak_rps: float = Field(
        default=20_000.0,
        gt=0,
        description="Requests per second of the serving tier at peak (the whole layer).",
    )
    serving_cores: float = Field(
        default=64.0, gt=0, description="Cores the serving tier can give a candidate model."
    )
    serving_memory_gb: float = Field(
        default=256.0, gt=0, description="Memory (GB) the serving tier can give a candidate."
    )
    serving_utilisation: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Largest share of the tier's capacity a candidate may plan to use at peak.",
    )
    model_costs: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Fallback declared serving cost per model id: {ms_per_request, memory_gb}, "
        "for model versions whose registry entry declares none (register ms_per_request and "
        "memory_gb with the model version instead); the preflight's resource estimate uses the "
        "registry's declaration, then this, then the replay's measured cost.",
    )
    risk_model_path: Path | None = Field(
        default=None,
        description="A risk model trained with `vigil risk train` "
        "(unset: <home>/risk_model.joblib).",
    )
    risk_red_share: float = Field(
        default=0.05, gt=0, lt=1, description="Riskiest share of past launches that is red."
    )
    risk_yellow_share: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Riskiest share of past launches that is red or yellow (needs approval).",
    )
