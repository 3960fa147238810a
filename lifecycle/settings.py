"""Settings from environment variables (``VIGIL_*``) or a ``.env`` file, with embedded defaults.

Every URL defaults to an embedded store under ``./.vigil/`` so that Vigil runs with no set-up.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field
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
    llm_timeout_s: float = 30.0
    llm_max_retries: int = 3
    llm_max_steps: int = 8
    llm_max_tokens: int = 20_000
    redact_fields: list[str] = Field(default_factory=lambda: ["unit_id", "user_id", "request_id"])
    llm_backoff_s: float = Field(
        default=1.0, ge=0, description="First retry wait of the LLM client (doubles each try)."
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
