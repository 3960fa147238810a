"""Golden vectors: the hash, the bucket ranges and the assignments must never move."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifecycle.allocation import (
    ConfigSnapshot,
    arm_draw,
    assign,
    assign_many,
    build_snapshot,
    layer_bucket,
    mix64,
    salt64,
    unit_key,
)
from lifecycle.allocator import Allocator
from lifecycle.config import ExperimentFile

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).with_name("data") / "hash_vectors.json").read_text(encoding="utf-8")
)


@pytest.fixture(scope="module")
def snapshot() -> ConfigSnapshot:
    file = ExperimentFile.model_validate(VECTORS["config"])
    return build_snapshot(file.layers, file.experiments, coverage_pct=VECTORS["coverage_pct"])


def test_splitmix64_matches_the_reference_generator() -> None:
    # SplitMix64 (Vigna, splitmix64.c) seeded with 0 outputs these first three values; mix64(x)
    # is the finaliser applied to x + golden gamma, i.e. the generator's output for state x.
    golden = 0x9E3779B97F4A7C15
    assert mix64(0) == 0xE220A8397B1DCDAF
    assert mix64(golden) == 0x6E789E6AA1B965F4
    assert mix64(2 * golden % 2**64) == 0x06C45D188009454F
    for v in VECTORS["mix64"]:
        assert mix64(v["x"]) == v["out"]


def test_salts_keys_buckets_and_draws() -> None:
    for salt, value in VECTORS["salts"].items():
        assert salt64(salt) == value
    for h in VECTORS["hashes"]:
        key = unit_key(h["unit_id"])
        assert key == h["key"], h["unit_id"]
        for salt, bucket in h["buckets"].items():
            assert layer_bucket(key, salt64(salt)) == bucket
        for salt, draw in h["draws"].items():
            assert arm_draw(key, salt64(salt)) == draw


def test_bucket_ranges(snapshot: ConfigSnapshot) -> None:
    for exp_id, r in VECTORS["ranges"].items():
        exp = snapshot.get(exp_id)
        assert (exp.lo, exp.hi, exp.enrolled_hi) == (r["lo"], r["hi"], r["enrolled_hi"])
        assert list(exp.thresholds) == r["thresholds"]
        assert list(exp.arms) == r["arms"]
    # Experiments of one layer own disjoint, contiguous ranges in file order.
    e1, e2 = VECTORS["ranges"]["e1"], VECTORS["ranges"]["e2"]
    assert e1["lo"] == 0 and e1["hi"] == e2["lo"]


def test_assign_and_allocator_reproduce_the_vectors(snapshot: ConfigSnapshot) -> None:
    allocator = Allocator(snapshot)
    for row in VECTORS["assignments"]:
        request = {"unit_id": row["unit_id"], "country": row["country"]}
        for exp_id, arm in row["arms"].items():
            assert assign(snapshot, request, exp_id) == arm, (row["unit_id"], exp_id)
            assert allocator.assign(request, exp_id) == arm
            control = snapshot.get(exp_id).arms[snapshot.get(exp_id).control]
            assert allocator.is_enabled(request, exp_id) == (arm is not None and arm != control)
        assert allocator.assignments(request) == {e: a for e, a in row["arms"].items() if a}


@pytest.mark.parametrize("kind", ["int", "str"])
def test_assign_many_reproduces_the_vectors(snapshot: ConfigSnapshot, kind: str) -> None:
    rows = [r for r in VECTORS["assignments"] if isinstance(r["unit_id"], int) == (kind == "int")]
    ids = [r["unit_id"] for r in rows]
    unit_ids = np.array(ids, dtype=np.int64) if kind == "int" else np.array(ids, dtype=object)
    countries = np.array([r["country"] for r in rows])
    for exp_id in VECTORS["ranges"]:
        arms = snapshot.get(exp_id).arms
        got = assign_many(snapshot, unit_ids, exp_id, {"country": countries})
        want = [-1 if r["arms"][exp_id] is None else arms.index(r["arms"][exp_id]) for r in rows]
        assert got.tolist() == want, exp_id


def test_shadow_mode_serves_nobody_and_scores_the_golden_arm() -> None:
    """In shadow nobody is in the experiment; the arm scored is the golden one."""
    from lifecycle.shadow import shadow_arm, shadow_many

    file = ExperimentFile.model_validate(VECTORS["config"])
    shadow = build_snapshot(
        file.layers,
        file.experiments,
        coverage_pct=VECTORS["coverage_pct"],
        status={e.id: "shadow" for e in file.experiments},
    )
    allocator = Allocator(shadow)
    for row in VECTORS["assignments"]:
        request = {"unit_id": row["unit_id"], "country": row["country"]}
        for exp_id, arm in row["arms"].items():
            exp = shadow.get(exp_id)
            control = exp.arms[exp.control]
            assert assign(shadow, request, exp_id) is None
            assert allocator.assign(request, exp_id) is None
            assert not allocator.is_enabled(request, exp_id)
            scored = shadow_arm(exp, False, request)
            assert (exp.arms[scored] if scored >= 0 else None) == (arm if arm != control else None)
        assert allocator.assignments(request) == {}
    ints = [r for r in VECTORS["assignments"] if isinstance(r["unit_id"], int)]
    ids = np.array([r["unit_id"] for r in ints], dtype=np.int64)
    countries = np.array([r["country"] for r in ints])
    for exp_id in VECTORS["ranges"]:
        exp = shadow.get(exp_id)
        got = shadow_many(shadow, ids, exp_id, {"country": countries})
        want = [
            -1
            if r["arms"][exp_id] in (None, exp.arms[exp.control])
            else exp.arms.index(r["arms"][exp_id])
            for r in ints
        ]
        assert got.tolist() == want, exp_id
