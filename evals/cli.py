"""Commands of ``evals``: ``vigil sim``, ``eval``, ``bench`` and ``demo``, and scenario worlds.

The product's CLI never imports this module: it is found through the ``vigil.commands`` entry point
group (``pyproject.toml``), whose :func:`register` adds the commands and offers the CLI the
scenario worlds behind ``vigil investigate --scenario`` and ``--world NAME``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

from agent.cli.worlds import provide
from agent.models import InvestigationView
from agent.settings import Settings, get_settings
from lifecycle.store import redact_url
from tools.errors import ConfigError

__all__ = ["ScenarioWorlds", "register", "world_home", "world_settings"]

_console = Console()


def _read_figures(path: Path) -> None:
    """Refuse a ``--json`` file that exists but does not hold the JSON object bench merges into."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    problem = None
    if not text.strip():
        problem = "the file is empty; delete it or name another file"
    else:
        try:
            if not isinstance(json.loads(text), dict):
                problem = "the file holds JSON but not an object of figures"
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc}); delete it or name another file"
    if problem is not None:
        raise typer.BadParameter(f"{path}: {problem}", param_hint="--json")


def bench(
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here (merged)."),
    only: list[str] | None = typer.Option(None, "--only", help="Run only these sections."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes, for a smoke run."),
    shared_data: Path = typer.Option(Path("../shared/data"), help="External benchmark data."),
) -> None:
    """Run the benchmarks and write their figures to JSON."""
    from evals.bench import SECTIONS, BenchOptions, run_bench

    if json_path is not None:
        _read_figures(json_path)
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise typer.BadParameter(
            f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}", param_hint="--only"
        )
    workdir = Path(get_settings().home) / "bench"  # VIGIL_HOME moves it too
    opts = BenchOptions(workdir=workdir, quick=quick, shared_data=shared_data)
    figures = run_bench(only, opts, json_path)
    _console.print_json(json.dumps(figures, default=str))


def _stored_requests(url: str) -> int:
    """How many rows the telemetry's ``requests`` table holds (0 when none).

    Only DuckDB's rows are counted; on another database 1 stands for "some", as counting a
    warehouse's table could take long.
    """
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigError("--db", url, f"not a usable SQLAlchemy URL: {exc}") from None
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("requests"):
                return 0
            if conn.execute(sa.text("SELECT 1 FROM requests LIMIT 1")).first() is None:
                return 0
            if engine.dialect.name != "duckdb":  # a warehouse: counting could take long
                return 1
            return int(conn.execute(sa.text("SELECT count(*) FROM requests")).scalar_one())
    except sa.exc.OperationalError:
        return 0  # a store that does not exist yet holds nothing
    finally:
        engine.dispose()


def sim(
    scenario: Path = typer.Argument(..., help="Scenario YAML (docs/scenarios.md).", dir_okay=False),
    db: str | None = typer.Option(
        None, "--db", help="Telemetry SQLAlchemy URL; default: the settings' telemetry_url."
    ),
    start_minute: int = typer.Option(0, "--start-minute", help="First minute to write."),
    end_minute: int | None = typer.Option(
        None, "--end-minute", help="Minute after the last one; default: the world's length."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Drop the telemetry tables first (start the store over)."
    ),
    append: bool = typer.Option(
        False, "--append", help="Add these minutes to a store that already holds telemetry."
    ),
) -> None:
    """Simulate a scenario's world and write its telemetry tables.

    A store that already holds requests is refused unless --replace (start over) or --append
    (add minutes, e.g. with --start-minute) says what to do: running twice would double them.
    """
    from agent.settings import get_settings
    from evals.sim import load_scenario, simulate
    from tools.errors import VigilError

    url = db or get_settings().telemetry_url
    try:
        if replace and append:
            raise ConfigError("--replace/--append", None, "give at most one of them")
        world = load_scenario(scenario)
        held = 0 if (replace or append) else _stored_requests(url)
        if held:
            Console(stderr=True).print(
                f"[red]refused:[/red] {redact_url(url)} already holds "
                f"{'' if held == 1 else f'{held:,} '}requests; simulating again would add as "
                "many again. Pass --replace to start the store over, or --append to add these "
                "minutes to it.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(code=1)
        summary = simulate(
            world,
            url,
            start_minute=start_minute,
            end_minute=end_minute,
            replace=replace,
            progress=True,
        )
    except VigilError as exc:
        from agent.cli._console import print_problems

        print_problems(exc)
        raise typer.Exit(code=2) from exc
    kinds = ", ".join(f.kind for f in world.faults) or "none"
    _console.print(
        f"[bold]{summary.scenario}[/bold]: minutes {summary.start_minute}-{summary.end_minute} "
        f"-> {redact_url(url)}\n"
        f"  requests {summary.requests:,}  exposures {summary.exposures:,}  "
        f"model snapshots {summary.snapshots:,}\n"
        f"  experiments {summary.experiments}  faults {summary.faults} ({kinds})\n"
        f"  {summary.seconds:.2f} s ({summary.requests_per_s:,.0f} requests/s)",
        highlight=False,
    )


scenarios_app = typer.Typer(help="Scenario files: draw generated worlds.", no_args_is_help=True)


@scenarios_app.command("generate")
def generate_scenarios(
    seed: int = typer.Option(..., "--seed", min=0, help="Seed of the first scenario."),
    count: int = typer.Option(..., "--count", min=1, help="Scenarios: seeds SEED .. SEED+COUNT-1."),
    out: Path = typer.Option(..., "--out", file_okay=False, help="Folder to write them into."),
) -> None:
    """Draw COUNT scenario worlds (docs/scenarios.md, "Generated scenarios") into OUT.

    Scenario k is drawn from seed SEED+k alone: the same seed always gives the same file. Each
    states its expected answer and its signal strength (fault size ÷ detectable effect).
    """
    from collections import Counter

    from evals.generate import write_scenarios
    from evals.sim import load_scenario

    paths = write_scenarios(seed, count, out)
    truths = Counter(load_scenario(p).expect.root_cause for p in paths)
    said = ", ".join(f"{k} {n}" for k, n in sorted(truths.items()))
    _console.print(
        f"wrote {len(paths)} scenarios (seeds {seed}-{seed + count - 1}) to {out}/: {said}",
        highlight=False,
    )


def world_home(base: Settings, name: str) -> Path:
    """Where scenario ``name``'s world keeps its stores: ``<home>/worlds/<name>/``."""
    return Path(base.home) / "worlds" / name


def world_settings(name: str, base: Settings, *, must_exist: bool = True) -> Settings:
    """The settings whose every store is world ``name``'s (LLM and policy kept from ``base``).

    Raises:
        ConfigError: ``must_exist`` and no world of that name was built (the known ones named).
    """
    from evals.harness import MARKER, eval_settings

    home = world_home(base, name)
    if must_exist and not (home / MARKER).exists():
        root = home.parent
        known = (
            sorted(p.name for p in root.iterdir() if (p / MARKER).exists()) if root.is_dir() else []
        )
        hint = f"known worlds: {', '.join(known)}" if known else "no world was built yet"
        raise ConfigError(
            "--world",
            name,
            f"no scenario world of that name under {root}/ ({hint}); "
            "build one with `vigil investigate --scenario FILE`",
        )
    return eval_settings(home, base)


class ScenarioWorlds:
    """Scenario worlds for the product's CLI (:class:`agent.cli.worlds.Worlds`).

    Each world keeps its own stores under ``<home>/worlds/<name>/``.
    """

    def investigate(
        self, scenario: Path, base: Settings, *, fresh: bool, say: Callable[[str], None]
    ) -> tuple[str, InvestigationView]:
        """Build the world (unless built) and investigate its alert up to the approval."""
        from evals.harness import investigate, prepare
        from evals.sim import load_scenario

        spec = load_scenario(scenario)
        if fresh:
            shutil.rmtree(world_home(base, spec.name), ignore_errors=True)
        settings = world_settings(spec.name, base, must_exist=False)

        def simulated(used: Settings) -> None:
            say(f"simulated {spec.name} into {redact_url(used.telemetry_url)}")

        return spec.name, investigate(spec, prepare(spec, settings, on_simulated=simulated))

    def settings(self, name: str, base: Settings) -> Settings:
        """The settings of world ``name``; raises ConfigError when it was never built."""
        from evals.harness import scenario_settings, scenario_world

        settings = world_settings(name, base)
        world = scenario_world(settings)
        return settings if world is None else scenario_settings(settings, world.scenario)

    def clock(self, settings: Settings) -> Callable[[], datetime]:
        """The world's "now" (the minute after the last one simulated)."""
        from evals.harness import scenario_world
        from tools.errors import StateError

        world = scenario_world(settings)
        if world is None:
            raise StateError(f"{settings.home} holds no scenario world")
        return world.clock

    def go_on(self, settings: Settings, minutes: int) -> str:
        """Simulate ``minutes`` more, with the kill switches and rollbacks the state holds."""
        from evals.harness import continue_world

        world = continue_world(settings, minutes)
        name = world.scenario.name if world is not None else str(settings.home)
        return f"simulated {minutes} minutes of {name} after the action"


def register(app: typer.Typer) -> None:
    """The ``vigil.commands`` entry point: add sim, eval, bench and demo; offer the worlds."""
    from evals.demo import demo
    from evals.runner import eval_command

    app.command("sim")(sim)
    app.command("eval")(eval_command)
    app.command("bench")(bench)
    app.command("demo")(demo)
    app.add_typer(scenarios_app, name="scenarios")
    provide(ScenarioWorlds())
