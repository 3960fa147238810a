"""The refresh cadence the staleness check judges against: declared, else read from snapshots."""

from __future__ import annotations

import pandas as pd

from tools.catalog import ModelInfo, cadence


def _snapshots(model: str, minutes: list[int]) -> pd.DataFrame:
    t0 = pd.Timestamp("2026-11-20 00:00")
    return pd.DataFrame(
        {"model_id": model, "published_at": [t0 + pd.Timedelta(minutes=m) for m in minutes]}
    )


def test_a_declared_cadence_wins_over_the_snapshots() -> None:
    snaps = _snapshots("m", [0, 30, 60, 90])
    assert cadence({"m": ModelInfo("m", 60)}, "m", snaps) == 60


def test_a_model_registered_without_a_cadence_gets_its_snapshots_median_gap() -> None:
    # Registered (so the check knows the model) but with no refresh_minutes: the gaps decide,
    # not "no cadence" (which would make a stale model invisible to the staleness check).
    snaps = _snapshots("m", [0, 30, 61, 90, 120])
    assert cadence({"m": ModelInfo("m")}, "m", snaps) == 30
    assert cadence({}, "m", snaps) == 30


def test_too_few_snapshots_give_no_cadence() -> None:
    assert cadence({"m": ModelInfo("m")}, "m", _snapshots("m", [0, 30])) is None
    assert cadence({}, "other", _snapshots("m", [0, 30, 60])) is None
