"""The shared vocabulary: one time helper, metric aliases onto real metrics, a mark per verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import get_args

from tools.metrics import metric_spec
from tools.result import Verdict
from tools.vocabulary import METRIC_ALIASES, VERDICT_MARKS, as_utc, naive_utc, utc_now

PARIS = timezone(timedelta(hours=1))


def test_naive_times_are_utc_and_aware_ones_are_converted():
    naive = datetime(2026, 11, 20, 8, 32)
    paris = datetime(2026, 11, 20, 9, 32, tzinfo=PARIS)
    assert as_utc(naive) == datetime(2026, 11, 20, 8, 32, tzinfo=UTC)
    assert as_utc(paris).tzinfo is UTC and as_utc(paris) == paris
    assert naive_utc(paris) == naive and naive_utc(naive) is naive
    assert as_utc(None) is None and naive_utc(None) is None
    assert utc_now().tzinfo is UTC


def test_every_alias_names_a_real_metric():
    for alias, metric in METRIC_ALIASES.items():
        assert metric_spec(metric).name == metric, alias


def test_every_verdict_has_one_distinct_mark():
    assert set(VERDICT_MARKS) == set(get_args(Verdict))
    assert len(set(VERDICT_MARKS.values())) == len(VERDICT_MARKS)
