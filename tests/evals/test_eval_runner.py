"""The runner end to end: tiny scenarios through the real agent, crashes as failed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from evals import harness
from evals.runner import EvalOptions, discover, run_scenario_file, run_suite
from evals.scoring import FIGURE_KEYS
from tools.errors import ConfigError

FALLBACK = """
name: tiny-fallback
description: A third of the test arm's requests fall back to the weak model.
seed: 5
world:
  start: "2026-11-20T06:00:00Z"
  minutes: 120
  requests_per_minute: 1500
  models:
    - {id: m_old, quality: 0.75}
    - {id: m_new, quality: 0.76}
  production_model: m_old
  experiments:
    - id: "42"
      name: New ranking model
      layer: ranking
      traffic_pct: 50
      arms:
        control: {model: m_old}
        test: {model: m_new}
faults:
  - {kind: model_fallback, experiment: "42", start_minute: 70, severity: 0.4}
alert: {metric: revenue, minute: 90, experiment: "42"}
expect:
  root_cause: model_fallback
  experiment: "42"
  onset_minute: 70
  mitigation: kill_experiment
"""

HEALTHY = """
name: tiny-healthy
description: Nothing is wrong; the alert fired on noise.
seed: 6
world:
  start: "2026-11-20T06:00:00Z"
  minutes: 120
  requests_per_minute: 1500
  models:
    - {id: m_old, quality: 0.75}
    - {id: m_new, quality: 0.76}
  production_model: m_old
  experiments:
    - id: "43"
      name: Another ranking model
      layer: ranking
      traffic_pct: 50
      arms:
        control: {model: m_old}
        test: {model: m_new}
alert: {metric: revenue, minute: 90, experiment: "43"}
expect:
  root_cause: none
  mitigation: none
"""

BROKEN = """
name: broken
world: {start: "2026-11-20T06:00:00Z", minutes: 10, requests_per_minute: 10, models: []}
alert: {metric: revenue, minute: 5}
expect: {root_cause: model_fallback, surprise: 1}
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("suite")
    (folder / "a-fallback.yaml").write_text(FALLBACK)
    (folder / "b-healthy.yaml").write_text(HEALTHY)
    (folder / "c-broken.yaml").write_text(BROKEN)
    (folder / "notes.txt").write_text("not a scenario")
    return folder


@pytest.fixture(scope="module")
def figures(suite: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(
        _app(),
        [
            "eval",
            str(suite),
            "--json",
            str(out / "eval.json"),
            "--markdown",
            str(out / "evals.md"),
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    markdown = (out / "evals.md").read_text()
    assert "### Reasoner `deterministic`" in markdown and "`tiny-fallback`" in markdown
    return json.loads((out / "eval.json").read_text())


def _app() -> typer.Typer:
    """The root app with every command registered."""
    from agent.cli import _register_all, app

    _register_all()
    return app


def test_the_suite_runs_end_to_end_through_the_agent(figures: dict) -> None:
    assert set(figures) == {*FIGURE_KEYS, "results", "by_kind", "by_strength"}
    for key in ("inconclusive_rate", "wrong_cause_rate", "ac1_after_followup"):
        assert 0.0 <= figures[key] <= 1.0
    assert figures["scenarios"] == 3
    rows = {r["name"]: r for r in figures["results"]}
    fallback, healthy = rows["tiny-fallback"], rows["tiny-healthy"]
    assert fallback["passed"], fallback["why"]
    assert fallback["ranks"][0] == "model_fallback@42"
    assert abs(fallback["onset_error"]) <= 5
    assert fallback["got"]["mitigation"] == "kill_experiment"
    assert fallback["got"]["reasoner"] == "deterministic"
    assert healthy["passed"], healthy["why"]
    assert figures["false_positive_rate"] == 0.0
    assert figures["unsafe_actions"] == 0
    assert figures["median_seconds"] > 0


def test_rows_carry_strength_follow_ups_and_time_to_diagnosis(figures: dict) -> None:
    rows = {r["name"]: r for r in figures["results"]}
    fallback, healthy = rows["tiny-fallback"], rows["tiny-healthy"]
    # A 40 % fallback on 750 requests a minute for 21 minutes is far above the floor.
    assert fallback["strength"] > 4 and fallback["strength_bucket"] == ">=4"
    assert fallback["got"]["minute"] == 91  # the first run's "now": the alert's minute + 1
    assert fallback["got"]["runs"][0] == {"minute": 91.0, "cause": "model_fallback"}
    assert fallback["minutes_to_diagnosis"] == 91 - 70
    assert fallback["hit1_final"] and not fallback["wrong_cause"]
    assert healthy["strength"] is None and healthy["strength_bucket"] == "healthy"
    assert figures["median_minutes_to_diagnosis"] == 21.0
    assert figures["by_strength"][">=4"]["scenarios"] == 1


def test_an_invalid_scenario_is_a_failed_row_not_a_crashed_run(figures: dict) -> None:
    row = {r["name"]: r for r in figures["results"]}["broken"]
    assert not row["passed"] and row["kind"] == "invalid"
    assert "surprise" in row["error"] or "models" in row["error"]
    assert figures["ac1"] == pytest.approx(2 / 3)
    assert figures["by_kind"]["invalid"]["failed"] == ["broken"]


def test_a_crash_while_investigating_is_a_failed_row(
    suite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: object) -> None:
        raise RuntimeError("the agent fell over")

    monkeypatch.setattr(harness, "investigate", boom)
    figures = run_suite([suite / "b-healthy.yaml"], EvalOptions(workers=1))
    (row,) = figures["results"]
    assert not row["passed"]
    assert row["error"].startswith("RuntimeError: the agent fell over")
    assert figures["false_positive_rate"] == 0.0 and figures["ac1"] == 0.0


def test_random_baseline_is_reproducible_with_a_seed(suite: Path) -> None:
    path = suite / "a-fallback.yaml"
    runs = [run_scenario_file(path, EvalOptions(reasoner="random", seed=s)) for s in (3, 3)]
    assert runs[0].ranks == runs[1].ranks
    assert runs[0].got.reasoner == "random"  # its own answer, not the deterministic fallback


def test_discover_lists_only_yaml(suite: Path) -> None:
    assert [p.name for p in discover(suite)] == [
        "a-fallback.yaml",
        "b-healthy.yaml",
        "c-broken.yaml",
    ]
    with pytest.raises(FileNotFoundError):
        discover(suite / "missing")


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="reasoner"):
        EvalOptions(reasoner="oracle")
    with pytest.raises(ConfigError, match="repeat"):
        EvalOptions(repeat=0)
