"""Settings from environment variables (``VIGIL_*``) or a ``.env`` file, with embedded defaults.

Every URL defaults to an embedded store under ``./.vigil/`` so that Vigil runs with no set-up.
"""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings", "unknown_env_settings"]

_HOME = Path(".vigil")


class Settings(BaseSettings):
    """All of Vigil's settings; each field reads the environment variable ``VIGIL_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True
    )

    home: Path = Field(default=_HOME, description="Folder for embedded stores and reports.")
    state_url: str = Field(
        default=f"sqlite:///{_HOME / 'state.db'}",
        description="SQLAlchemy URL of the experiment state, audit log and investigations.",
    )
    telemetry_url: str = Field(
        default=f"duckdb:///{_HOME / 'telemetry.duckdb'}",
        description="SQLAlchemy URL of the telemetry warehouse (requests, exposures, snapshots).",
    )
    checkpoint_url: str = Field(
        default=str(_HOME / "checkpoints.db"),
        description="Agent checkpoints: a SQLite file path, or a postgresql:// URL.",
    )
    reports_dir: Path = Field(default=_HOME / "reports")

    # VIGIL_HOME (issue 16): every default path lives under `home`, wherever that is.
    @model_validator(mode="before")
    @classmethod
    def _under_home(cls, data: Any) -> Any:
        """Default stores under ``home`` when it is set and they are not (``VIGIL_HOME``)."""
        if not isinstance(data, dict) or data.get("home") in (None, ""):
            return data
        home = Path(str(data["home"]))
        defaults = {
            "state_url": f"sqlite:///{home / 'state.db'}",
            "telemetry_url": f"duckdb:///{home / 'telemetry.duckdb'}",
            "checkpoint_url": str(home / "checkpoints.db"),
            "reports_dir": home / "reports",
        }
        return {**{k: v for k, v in defaults.items() if data.get(k) in (None, "")}, **data}

    telemetry_tables: dict[str, str] = Field(
        default_factory=dict,
        description='Contract table -> warehouse table, e.g. {"requests": "ads.req_log"}.',
    )
    telemetry_columns: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Per table, contract column -> warehouse column: {"requests": {"ts": "t"}}.',
    )

    # Reasoning: an OpenAI-compatible endpoint; unset means the deterministic reasoner.
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float | None = Field(default=None, gt=0)
    llm_max_retries: int = 3
    llm_max_steps: int = 8
    llm_max_tokens: int = 20_000
    redact_fields: list[str] = Field(default_factory=lambda: ["unit_id", "user_id", "request_id"])
    llm_backoff_s: float = Field(
        default=1.0, ge=0, description="First retry wait of the LLM client (doubles each try)."
    )

    # LLM calls (issue 20): timeouts per endpoint kind, reply length, determinism.
    llm_local_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Timeout of one LLM call to a loopback or private-network endpoint (a model "
        "on CPU can take minutes), when llm_timeout_s is unset.",
    )
    llm_remote_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Timeout of one LLM call to any other endpoint, when llm_timeout_s is unset.",
    )
    llm_reply_tokens: int = Field(
        default=1024, gt=0, description="max_tokens of one LLM reply (caps a runaway answer)."
    )
    llm_temperature: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="Sampling temperature (0: the same prompt, one answer).",
    )
    llm_seed: int | None = Field(
        default=0, description="Seed sent to endpoints that honour one; unset: no seed sent."
    )
    playbooks_dir: Path | None = Field(
        default=None, description="A folder of playbooks replacing the shipped ones."
    )
    production_model: str | None = Field(
        default=None, description="Model serving traffic outside ranking experiments."
    )

    # Approval policy.
    api_tokens: dict[str, str] = Field(default_factory=dict, description="token -> user")
    oncall: list[str] = Field(default_factory=list, description="users who may approve anything")
    require_second_approver: bool = Field(
        default=False, description="The proposer of a mitigation cannot approve it alone."
    )

    # Slack.
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    public_url: str = "http://localhost:8080"
    slack_users: dict[str, str] = Field(
        default_factory=dict, description='Slack user id -> Vigil user, e.g. {"U123": "alice"}.'
    )

    # Server and monitors.
    workers: int = 2
    queue_size: int = 32
    monitor_interval_s: float = 60.0
    rollout_interval_s: float = Field(
        default=60.0,
        description="Seconds between two ticks of the rollout controller in `vigil serve` "
        "(0 turns it off).",
    )
    recovery_interval_s: float = Field(
        default=30.0, gt=0, description="How often the server resumes stranded mitigations."
    )
    max_request_bytes: int = Field(
        default=1_000_000, ge=1024, description="Largest request body the server reads (413)."
    )
    max_page_size: int = Field(default=200, ge=1, description="Largest GET /investigations limit.")
    auth_reads: bool = Field(
        default=False, description="Reads (investigations, reports, experiments) need a token."
    )
    alert_clock_skew_s: float = Field(
        default=300.0, ge=0, description="How far in the future an alert's startsAt may be."
    )
    user_investigations_per_window: int = Field(
        default=10, ge=1, description="Investigations one user may start per rate window."
    )
    user_rate_window_s: float = Field(default=60.0, gt=0, description="The rate window.")
    slack_unmapped_reads: bool = Field(
        default=True, description="Unmapped Slack users may use read-only commands (status...)."
    )
    monitor_lookback_minutes: int = Field(
        default=24 * 60, ge=1, description="Longest window a monitor evaluates."
    )
    alert_labels: dict[str, str] = Field(
        default_factory=lambda: {
            "name": "alertname",
            "metric": "metric",
            "experiment": "experiment_id",
        },
        description="Alert field (name, metric, experiment) -> Alertmanager label holding it.",
    )

    targeting_vocabulary: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Request property -> allowed targeting values ([] = any), laid over the "
        "defaults (country, platform, ad_type, device_type).",
    )

    # Web console (agent/console): sessions, refresh, power analysis.
    console_secret: str | None = Field(
        default=None,
        description="Key signing the console's session cookies (secret); unset: one is generated "
        "into <home>/console_secret on first use.",
    )
    console_session_s: int = Field(
        default=8 * 3600, ge=60, description="How long a console login lasts, seconds."
    )
    console_secure_cookie: bool = Field(
        default=False, description="Send the console's session cookie over HTTPS only."
    )
    console_refresh_s: float = Field(
        default=5.0, gt=0, description="Seconds between two refreshes of the console dashboard."
    )
    console_power_days: float = Field(
        default=7.0,
        gt=0,
        description="Days of telemetry the builder's power analysis reads the variance from.",
    )

    # Configuration distribution (issue 17): the signed snapshot stream of `vigil serve`.
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

    # Follow-ups of inconclusive investigations and incident grouping (issues 13 and 16).
    followup_minutes: list[int] = Field(
        default_factory=lambda: [10, 20, 40],
        description="When an inconclusive investigation (status watching) is re-run on fresh "
        "data: minutes after it became watching, on the telemetry clock, strictly increasing; "
        "after the last it gives up (inconclusive). [] turns follow-ups off.",
    )
    followup_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a follow-up claimed by one process is its own; a claim older than "
        "this (its process died) is resumed by another.",
    )
    incident_window_minutes: int = Field(
        default=120,
        ge=0,
        description="An alert for the scope (experiment, or all traffic) of an open "
        "investigation that fired within this many minutes of it (or while it is watching) joins "
        "it instead of starting another; 0: every alert starts its own.",
    )

    # Change safety before start (issue 18): preflight replay, resources, risk score.
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
        description="Declared serving cost per model id: {ms_per_request, memory_gb}; the "
        "preflight uses ms_per_request when the replay measured none, and checks memory_gb.",
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

    @field_validator("followup_minutes")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(m <= 0 for m in value) or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"followup_minutes {value}: positive and strictly increasing")
        return value


# ``VIGIL_*`` variables read outside the settings model (the CLI's default actor).
_OTHER_ENV = frozenset({"VIGIL_ACTOR"})


def unknown_env_settings(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``VIGIL_*`` environment variables that name no setting, with the nearest valid name.

    A misspelled setting (``VIGIL_TELEMTRY_URL``) would otherwise be ignored without a word.

    Args:
        environ: The environment to look at; ``os.environ`` if None.

    Returns:
        ``(variable, nearest valid variable or None)`` for each unknown one, sorted.
    """
    env = os.environ if environ is None else environ
    known = {f"VIGIL_{name.upper()}" for name in Settings.model_fields} | _OTHER_ENV
    out: list[tuple[str, str | None]] = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith("VIGIL_") or upper in known:
            continue
        nearest = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
        out.append((name, nearest[0] if nearest else None))
    return out


def get_settings() -> Settings:
    """Read the settings afresh from the environment (no cached singleton)."""
    return Settings()
