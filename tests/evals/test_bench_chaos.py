"""The chaos bench on a real ``vigil serve``: SIGKILL at seeded moments, invariants after restart.

The full run (50 trials) is ``vigil bench --only chaos``; here a few trials keep ``make test``
short while still killing the real server under a live stream of alerts and decisions.
"""

from __future__ import annotations

from pathlib import Path

from evals.bench.chaos import run_chaos


def test_killing_the_server_loses_no_alert_and_strands_no_approval(tmp_path: Path) -> None:
    figures = run_chaos(
        tmp_path / "chaos", trials=3, seed=11, kill_window_s=(0.5, 1.5), queue_size=2
    )
    report = figures.as_dict()
    assert report["trials"] == 3
    assert report["alerts_accepted"] > 0  # the invariants were checked on real work
    assert report["invariant_violations"] == 0, report["violation_examples"]
    assert report["http_5xx"] == 0
