"""``vigil doctor``: are the settings sound, can every store be reached, does the telemetry fit?

Each check prints one line: ``ok``, ``warn`` (works, but look) or ``FAIL`` (Vigil cannot work so).
The exit code is 1 when any check failed. Nothing is created or written: a store that does not
exist yet is reported, not made.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import typer

from agent.cli._console import out as _out
from agent.settings import Settings, get_settings, unknown_env_settings
from tools.vocabulary import utc_now

__all__ = ["doctor", "driver_hint"]

Level = Literal["ok", "warn", "FAIL"]
_COLOUR = {"ok": "green", "warn": "yellow", "FAIL": "red"}

# SQLAlchemy dialect -> what to install for it: Vigil's extras first (pyproject.toml).
_DRIVERS = {
    "postgresql": "the postgres extra: pip install -e '.[postgres]' (postgresql+psycopg://)",
    "postgres": "the postgres extra: pip install -e '.[postgres]' (postgresql+psycopg://)",
    "chdb": "the clickhouse extra: pip install -e '.[clickhouse]'",
    "clickhouse": "pip install clickhouse-sqlalchemy",
    "trino": "pip install trino",
    "bigquery": "pip install sqlalchemy-bigquery",
    "snowflake": "pip install snowflake-sqlalchemy",
    "mysql": "pip install pymysql (mysql+pymysql://)",
    "duckdb": "pip install duckdb-engine",
}
RECENT = timedelta(hours=24)


def driver_hint(url: str) -> str:
    """The package to install for ``url``'s dialect, in words."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    return _DRIVERS.get(scheme, f"install the SQLAlchemy dialect for {scheme!r}")


class _Report:
    def __init__(self) -> None:
        self.failed = 0

    def line(self, level: Level, what: str, detail: str) -> None:
        self.failed += level == "FAIL"
        colour = _COLOUR[level]
        _out().print(f"[{colour}]{level:>4}[/{colour}]  {what}: {detail}", highlight=False)


def _engine(report: _Report, what: str, url: str) -> Any:
    """An engine for ``url``, or None (reported) when its dialect or driver is missing."""
    import sqlalchemy as sa

    try:
        return sa.create_engine(url)
    except sa.exc.NoSuchModuleError:
        report.line("FAIL", what, f"{_safe(url)}: no SQLAlchemy dialect; {driver_hint(url)}")
    except ModuleNotFoundError as exc:
        report.line("FAIL", what, f"{_safe(url)}: driver {exc.name!r} missing; {driver_hint(url)}")
    except sa.exc.ArgumentError as exc:
        report.line("FAIL", what, f"{_safe(url)}: not a SQLAlchemy URL ({exc})")
    return None


def _safe(url: str) -> str:
    from agent.cli.ops import hide_password

    return hide_password(url)


def _missing_file(url: str) -> Path | None:
    """The database file of an embedded URL when it does not exist (connecting would create it)."""
    for prefix in ("sqlite:///", "duckdb:///"):
        if url.startswith(prefix):
            path = Path(url[len(prefix) :].split("?", 1)[0])
            if str(path) not in ("", ":memory:") and not path.exists():
                return path
    return None


def _check_state(report: _Report, settings: Settings) -> None:
    import sqlalchemy as sa

    url = settings.state_url
    missing = _missing_file(url)
    if missing is not None:
        report.line("warn", "state store", f"{missing} does not exist yet (made on first use)")
        return
    engine = _engine(report, "state store", url)
    if engine is None:
        return
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        known = "experiments" in tables or any(t.startswith("lc_") for t in tables)
        state = f"{len(tables)} tables" if known or tables else "empty (migrated on first use)"
        report.line("ok", "state store", f"{_safe(url)}: connected, {state}")
    except sa.exc.SQLAlchemyError as exc:
        report.line(
            "FAIL", "state store", f"{_safe(url)}: cannot connect ({exc.__class__.__name__}: {exc})"
        )
    finally:
        engine.dispose()


def _check_checkpoints(report: _Report, settings: Settings) -> None:
    url = settings.checkpoint_url
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        try:
            import langgraph.checkpoint.postgres  # noqa: F401
        except ModuleNotFoundError:
            report.line("FAIL", "checkpoints", f"{_safe(url)}: needs {_DRIVERS['postgres']}")
            return
        report.line("ok", "checkpoints", f"{_safe(url)} (PostgreSQL saver installed)")
        return
    path = Path(url.removeprefix("sqlite:///"))
    if str(path) == ":memory:":
        report.line("warn", "checkpoints", "in memory: paused investigations do not survive")
        return
    made = "exists" if path.exists() else "made on first use"
    report.line("ok", "checkpoints", f"SQLite file {path} ({made})")


def _newest(conn: Any, table: Any) -> tuple[int, datetime | None]:
    import sqlalchemy as sa

    ts = table.c("ts")
    row = conn.execute(sa.select(sa.func.count(), sa.func.max(ts)).select_from(table.clause)).one()
    newest = row[1]
    if isinstance(newest, str):
        newest = datetime.fromisoformat(newest)
    if isinstance(newest, datetime) and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)  # naive telemetry times are UTC (docs/telemetry.md)
    return int(row[0]), newest


def _check_telemetry(report: _Report, settings: Settings, now: datetime) -> None:
    import sqlalchemy as sa

    from tools.errors import ConfigError
    from tools.schema import CONTRACT_COLUMNS

    url = settings.telemetry_url
    try:
        schema = settings.telemetry_schema()
    except ConfigError as exc:
        report.line("FAIL", "telemetry mapping", str(exc))
        return
    missing = _missing_file(url)
    if missing is not None:
        report.line(
            "FAIL",
            "telemetry",
            f"{missing} does not exist (simulate one: vigil sim FILE --db {url})",
        )
        return
    engine = _engine(report, "telemetry", url)
    if engine is None:
        return
    try:
        with engine.connect() as conn:
            report.line("ok", "telemetry", f"{_safe(url)}: connected")
            inspector = sa.inspect(conn)
            for contract in CONTRACT_COLUMNS:
                mapped = schema.table(contract)
                name = settings.telemetry_tables.get(contract, contract)
                where, _, bare = name.rpartition(".")
                if not inspector.has_table(bare, schema=where or None):
                    level: Level = "warn" if contract == "model_snapshots" else "FAIL"
                    report.line(level, f"table {contract}", f"{name} not found")
                    continue
                have = _columns(conn, bare, where or None)
                lacking = [
                    f"{col} (as {mapped.names[col]})" if mapped.names[col] != col else col
                    for col in CONTRACT_COLUMNS[contract]
                    if mapped.names[col] not in have
                ]
                if lacking:
                    report.line("FAIL", f"table {contract}", f"{name} lacks {', '.join(lacking)}")
                    continue
                if contract == "model_snapshots":
                    report.line("ok", f"table {contract}", f"{name}: every column")
                    continue
                rows, newest = _newest(conn, mapped)
                if rows == 0 or newest is None:
                    report.line("warn", f"table {contract}", f"{name}: every column, but no rows")
                    continue
                age = now - newest
                level = "ok" if age <= RECENT else "warn"
                report.line(
                    level,
                    f"table {contract}",
                    f"{name}: {rows:,} rows, newest {newest:%Y-%m-%d %H:%M} UTC "
                    f"({_age(age)} ago{'' if level == 'ok' else '; not recent'})",
                )
    except sa.exc.SQLAlchemyError as exc:
        report.line("FAIL", "telemetry", f"{_safe(url)}: {exc.__class__.__name__}: {exc}")
    finally:
        engine.dispose()


def _columns(conn: Any, table: str, schema: str | None) -> set[str]:
    """The table's column names, from an empty ``SELECT *`` (some dialects lack reflection)."""
    import sqlalchemy as sa

    query = sa.select(sa.text("*")).select_from(sa.table(table, schema=schema)).where(sa.false())
    return {str(name) for name in conn.execute(query).keys()}  # noqa: SIM118 (a Result)


def _age(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} days"


def _check_settings(report: _Report) -> Settings | None:
    from pydantic import ValidationError

    from lifecycle.validation import config_errors

    for name, nearest in unknown_env_settings():
        hint = f"; did you mean {nearest}?" if nearest else ""
        report.line("warn", "settings", f"{name} names no setting and is ignored{hint}")
    try:
        settings = get_settings()
    except ValidationError as exc:
        for problem in config_errors(exc, prefix="settings"):
            report.line("FAIL", "settings", str(problem))
        return None
    report.line("ok", "settings", "read (vigil config show prints them)")
    if bool(settings.llm_base_url) != bool(settings.llm_model):
        report.line("FAIL", "LLM", "set both VIGIL_LLM_BASE_URL and VIGIL_LLM_MODEL, or neither")
    elif settings.llm_base_url:
        where = _safe(settings.llm_base_url)
        report.line("ok", "LLM", f"{settings.llm_model} at {where} (not contacted)")
    else:
        report.line("ok", "LLM", "none: the deterministic reasoner")
    if settings.slack_bot_token and not settings.slack_signing_secret:
        report.line("warn", "Slack", "a bot token without VIGIL_SLACK_SIGNING_SECRET: posts only")
    return settings


def doctor(
    telemetry: str | None = typer.Option(None, "--telemetry", help="Telemetry URL to check."),
    state: str | None = typer.Option(None, "--state", help="State store URL to check."),
) -> None:
    """Check the settings, connect to each store, and check the telemetry tables as mapped."""
    report = _Report()
    settings = _check_settings(report)
    if settings is not None:
        updates = {"telemetry_url": telemetry, "state_url": state}
        settings = settings.model_copy(update={k: v for k, v in updates.items() if v})
        checks: list[Callable[[], None]] = [
            lambda: _check_state(report, settings),
            lambda: _check_checkpoints(report, settings),
            lambda: _check_telemetry(report, settings, utc_now()),
        ]
        for check in checks:
            check()
    if report.failed:
        _out().print(f"{report.failed} check(s) failed", highlight=False)
        raise typer.Exit(1)
