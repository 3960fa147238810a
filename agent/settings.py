"""The whole app's settings, composed at the root: ``tools``' and ``lifecycle``'s plus the agent's.

``Settings`` is what the CLI, the HTTP server, Slack and the console are built from; it is a
:class:`~lifecycle.settings.LifecycleSettings` (itself a :class:`~tools.settings.ToolSettings`),
so it is handed as is to the code below, which reads only its own package's fields. Each field
reads the environment variable ``VIGIL_<NAME>`` or a line of ``.env``; every URL defaults to an
embedded store under ``home``.
"""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lifecycle.settings import LifecycleSettings
from tools.settings import HOME, home_defaults

__all__ = ["Settings", "get_settings", "unknown_env_settings"]


class Settings(LifecycleSettings):
    """All of Vigil's settings; each field reads the environment variable ``VIGIL_<NAME>``."""

    # --- Agent stores ------------------------------------------------------------------------
    checkpoint_url: str = Field(
        default=str(HOME / "checkpoints.db"),
        description="Agent checkpoints: a SQLite file path, or a postgresql:// URL.",
    )
    reports_dir: Path = Field(default=HOME / "reports", description="Folder of the HTML reports.")

    @model_validator(mode="before")
    @classmethod
    def _agent_under_home(cls, data: Any) -> Any:
        return home_defaults(
            data, {"checkpoint_url": "{home}/checkpoints.db", "reports_dir": Path("reports")}
        )

    # --- Reasoning: an OpenAI-compatible endpoint; unset means the deterministic reasoner ----
    llm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama, llama.cpp); unset: "
        "the deterministic reasoner, no network.",
    )
    llm_model: str | None = Field(default=None, description="Model name at that endpoint.")
    llm_api_key: str | None = Field(default=None, description="API key of the endpoint (secret).")
    llm_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Timeout of one LLM call, seconds; unset: llm_local_timeout_s or "
        "llm_remote_timeout_s by the endpoint's host.",
    )
    llm_max_retries: int = Field(
        default=3,
        description="Retries of a failed LLM call before falling back to the deterministic "
        "reasoner.",
    )
    llm_max_steps: int = Field(
        default=8, description="Tool-call rounds the LLM may take in one investigation."
    )
    llm_max_tokens: int = Field(
        default=20_000,
        description="Token budget of one investigation: new tokens per step from the server's "
        "usage (prompt tokens the server had cached are not counted again).",
    )
    redact_fields: list[str] = Field(
        default_factory=lambda: ["unit_id", "user_id", "request_id"],
        description="Fields removed from anything sent to the LLM.",
    )
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
    # --- LLM answers (issue 20): how the answer is constrained, whether tools are offered ---
    llm_answer_format: Literal["auto", "tool", "json_object", "json_schema"] = Field(
        default="auto",
        description="How the answer is asked for: tool (a forced submit_diagnosis call), "
        "json_object (response_format with a schema: llama.cpp, llama-cpp-python), json_schema "
        "(OpenAI, vLLM, Ollama, llama.cpp); auto: json_object for a local endpoint, else tool.",
    )
    llm_tools: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Offer the check tools before the answer (on) or ask for the answer at "
        "once (off); auto: off for a local endpoint, on for a remote one.",
    )
    playbooks_dir: Path | None = Field(
        default=None, description="A folder of playbooks replacing the shipped ones."
    )

    # --- Approval policy ---------------------------------------------------------------------
    api_tokens: dict[str, str] = Field(default_factory=dict, description="token -> user")
    oncall: list[str] = Field(default_factory=list, description="users who may approve anything")
    require_second_approver: bool = Field(
        default=False, description="The proposer of a mitigation cannot approve it alone."
    )

    # --- Slack -------------------------------------------------------------------------------
    slack_bot_token: str | None = Field(
        default=None, description="Slack bot token (xoxb-…, secret); unset: Slack off."
    )
    slack_signing_secret: str | None = Field(
        default=None, description="Slack signing secret (secret): requests are verified with it."
    )
    slack_channel: str | None = Field(
        default=None, description="Channel where investigations started by alerts are posted."
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/", description="Slack Web API base URL."
    )
    public_url: str = Field(
        default="http://localhost:8080",
        description="URL of this server as Slack users reach it (links in messages).",
    )
    slack_users: dict[str, str] = Field(
        default_factory=dict, description='Slack user id -> Vigil user, e.g. {"U123": "alice"}.'
    )

    # --- HTTP server -------------------------------------------------------------------------
    workers: int = Field(default=2, description="Investigations run at once by `vigil serve`.")
    queue_size: int = Field(
        default=32, description="Alerts waiting for a worker before the server answers 503."
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
    alert_labels: dict[str, str] = Field(
        default_factory=lambda: {
            "name": "alertname",
            "metric": "metric",
            "experiment": "experiment_id",
        },
        description="Alert field (name, metric, experiment) -> Alertmanager label holding it.",
    )

    # --- Web console (agent/console): sessions, refresh, power analysis ----------------------
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

    # --- Follow-ups of inconclusive investigations, incident grouping (issues 13 and 16) -----
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
