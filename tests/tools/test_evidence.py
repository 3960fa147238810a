"""Series evidence is built without per-cell validation; it must be what validation would give."""

from __future__ import annotations

import numpy as np

from tests.tools.test_known_answers import _arm, _stepped, frame_of
from tools.checks._common import series_evidence
from tools.result import Evidence


def test_series_evidence_is_valid_evidence_with_nulls_for_undefined_minutes() -> None:
    before = {"control": _arm(1000, 20, 0.02), "test": _arm(1000, 20, 0.02)}
    after = {"control": _arm(1000, 20, 0.02), "test": _arm(1000, 0, 0.02)}
    data = _stepped(before, after)
    data.loc[data["minute"] == data["minute"].max(), ["n", "sum_label"]] = 0.0  # an empty minute
    frame = frame_of(data)
    built = series_evidence(frame, "ctr")
    again = Evidence.model_validate(built.model_dump())
    assert again == built
    assert built.columns == ["minute", "control", "test"]
    assert len(built.rows) == frame.window.end - frame.window.fetch_start
    values = np.array([row[1:] for row in built.rows[:-1]], dtype=float)
    assert np.allclose(values[:60], 0.02) and np.allclose(values[60:, 0], 0.02)
    assert np.allclose(values[60:, 1], 0.0)
    last = built.rows[-1]
    assert isinstance(last[0], str) and last[1:] == [None, None]  # JSON has no NaN
