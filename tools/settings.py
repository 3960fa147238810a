"""The settings ``tools`` reads: where the telemetry is and how it maps onto the contract.

Every package declares its own settings and builds on the one below it: ``tools.settings``
(this module) ← ``lifecycle.settings`` ← ``agent.settings``, where the composition root's
``Settings`` holds them all. Each field reads the environment variable ``VIGIL_<NAME>`` (or a line
of ``.env``); the class here also fixes that convention and ``home``, the folder every embedded
default lives under, for the packages above.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from tools.schema import TelemetrySchema

__all__ = ["HOME", "ToolSettings", "home_defaults"]

HOME = Path(".vigil")
"""The default ``home``: embedded stores and reports under ``./.vigil/``."""


def home_defaults(data: Any, defaults: dict[str, Any]) -> Any:
    """Fill the unset fields of ``defaults`` under ``data["home"]`` when ``home`` is set.

    Each package's settings call this from a ``mode="before"`` validator for its own paths, so
    ``VIGIL_HOME`` moves every default path while a URL set explicitly stays where it is.

    Args:
        data: The raw settings input (environment, ``.env`` and keyword arguments).
        defaults: Field name -> its default under ``home``, as ``str.format`` templates with
            ``{home}`` (e.g. ``"sqlite:///{home}/state.db"``) or :class:`~pathlib.Path`
            relative to home.

    Returns:
        ``data`` with the unset fields of ``defaults`` filled in (unchanged without ``home``).
    """
    if not isinstance(data, dict) or data.get("home") in (None, ""):
        return data
    home = Path(str(data["home"]))
    filled = {
        name: home / value if isinstance(value, Path) else value.format(home=home)
        for name, value in defaults.items()
        if data.get(name) in (None, "")
    }
    return {**filled, **data}


class ToolSettings(BaseSettings):
    """The telemetry warehouse and its mapping; each field reads ``VIGIL_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True
    )

    home: Path = Field(default=HOME, description="Folder for embedded stores and reports.")
    telemetry_url: str = Field(
        default=f"duckdb:///{HOME / 'telemetry.duckdb'}",
        description="SQLAlchemy URL of the telemetry warehouse (requests, exposures, snapshots).",
    )
    telemetry_tables: dict[str, str] = Field(
        default_factory=dict,
        description='Contract table -> warehouse table, e.g. {"requests": "ads.req_log"}.',
    )
    telemetry_columns: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Per table, contract column -> warehouse column: {"requests": {"ts": "t"}}.',
    )
    production_model: str | None = Field(
        default=None, description="Model serving traffic outside ranking experiments."
    )

    # VIGIL_HOME (issue 16): every default path lives under `home`, wherever that is.
    @model_validator(mode="before")
    @classmethod
    def _telemetry_under_home(cls, data: Any) -> Any:
        return home_defaults(data, {"telemetry_url": "duckdb:///{home}/telemetry.duckdb"})

    def telemetry_schema(self) -> TelemetrySchema:
        """The warehouse mapping of ``telemetry_tables`` / ``telemetry_columns``, validated.

        Raises:
            ConfigError: A table or column the contract does not know, or an empty name.
        """
        from tools.schema import TelemetrySchema

        return TelemetrySchema.from_mappings(self.telemetry_tables, self.telemetry_columns)
