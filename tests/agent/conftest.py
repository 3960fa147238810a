"""Fixtures of the agent's tests: settings on a temporary folder, an investigator on fakes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.models import Alert
from agent.service import Investigator
from agent.settings import Settings
from tests.agent.fake_llm import ScriptedLLM
from tests.agent.fakes import FakeActions, FakeCatalog, FakeToolbox, RecordingNotifier, at


def make_settings(folder: Path, **overrides: Any) -> Settings:
    """Settings with every store under ``folder``."""
    values: dict[str, Any] = {
        "home": folder,
        "state_url": f"sqlite:///{folder / 'state.db'}",
        "telemetry_url": f"duckdb:///{folder / 'telemetry.duckdb'}",
        "checkpoint_url": str(folder / "checkpoints.db"),
        "reports_dir": folder / "reports",
        "oncall": ["carol"],
        "llm_base_url": None,
        "llm_model": None,
        "llm_backoff_s": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


class Harness:
    """An investigator on fakes, and the fakes to inspect."""

    def __init__(self, folder: Path, toolbox: FakeToolbox, **settings: Any) -> None:
        self.folder = folder
        self.toolbox = toolbox
        self.actions = FakeActions()
        self.catalog = FakeCatalog()
        self.notifier = RecordingNotifier()
        self.settings = make_settings(folder, **settings)
        self.investigators: list[Investigator] = []

    def investigator(self, **kwargs: Any) -> Investigator:
        inv = Investigator(
            self.settings,
            toolbox_factory=lambda _alert: self.toolbox,
            catalog=self.catalog,
            actions=self.actions,
            notifier=self.notifier,
            clock=lambda: at(159),
            **kwargs,
        )
        self.investigators.append(inv)
        return inv

    def close(self) -> None:
        for inv in self.investigators:
            inv.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def build(toolbox: FakeToolbox, **settings: Any) -> Harness:
        h = Harness(tmp_path / f"h{len(made)}", toolbox, **settings)
        made.append(h)
        return h

    yield build
    for h in made:
        h.close()


def alert(experiment: str | None = "879", metric: str = "revenue", **kw: Any) -> Alert:
    """The alert of the fake world (fires at minute 158)."""
    return Alert(metric=metric, fired_at=at(158), experiment=experiment, **kw)  # type: ignore[arg-type]


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    """A scripted OpenAI-compatible server on loopback (the real ``openai`` client talks to it)."""
    server = ScriptedLLM().start()
    yield server
    server.stop()
