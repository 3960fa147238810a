"""Scenarios written by hand, independently of the generator (``evals/handwritten/``).

Two batches of 24 worlds, each written by someone who read only the public format and the
simulator's documentation: arm names such as ``baseline``, ``treatment_a`` or a quoted ``"on"``,
three arms, unequal weights, launches inside the window, night starts, 1,500-8,000 requests a
minute, 8-25 experiments in 3-6 layers, global alerts on every ranking metric, faults confined to
one slice of an arm, two faults at once, healthy busy worlds with misleading alerts. Their misses
became development data (docs/generated.md, seventh wave); this keeps what they taught.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.evals.test_eval_runner import _app

FOLDER = Path(__file__).resolve().parents[2] / "evals" / "handwritten"


def test_the_agent_holds_on_worlds_written_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", str(FOLDER), "--json", str(out), "--workers", "2"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["scenarios"] == 48
    missed = [r["name"] for r in figures["results"] if not r["hit1"]]
    assert figures["ac1"] >= 0.97, missed  # at most one miss (two before the seventh wave)
    assert figures["experiment_acc"] >= 0.95
    assert figures["false_positive_rate"] == 0.0
    assert figures["wrong_cause_rate"] <= 0.02
    assert figures["unsafe_actions"] == 0
