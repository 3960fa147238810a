"""Scenarios written by hand, independently of the generator (``evals/handwritten/``).

Five batches of 24 worlds (and six variants of the third's and fourth's), each written by
someone who read only the public format and the simulator's documentation: arm names such as
``baseline``, ``treatment_a``, a quoted ``"on"`` or unicode, three to five arms, unequal
weights, launches and stops inside the window, night starts, 500-20,000 requests a minute, 8-40
experiments in 3-8 layers, global alerts on every metric, faults confined to one slice of an arm
or in a control arm, faults that ended before the alert, two faults at once, SRM, error and
latency alerts with and without an experiment named, a new model tested in several experiments
at once, faults in another layer's experiment behind an alert naming this one, healthy busy
worlds with misleading alerts. Their misses became development data (docs/generated.md, seventh
and eighth waves); this keeps what they taught.
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
    assert figures["scenarios"] == 126
    missed = [r["name"] for r in figures["results"] if not r["hit1"]]
    # Two of 48 missed before the seventh wave; two of 28, two of 26 and four of 24 before the
    # eighth (one of those 24 is still missed: a fault in another layer's arm reaching 15 % of
    # a pricing test's units behind a calibration alert on the pricing test).
    assert len(missed) <= 1, missed
    assert figures["experiment_acc"] >= 0.95
    assert figures["false_positive_rate"] == 0.0
    assert figures["wrong_cause_rate"] <= 0.02
    assert figures["unsafe_actions"] == 0
