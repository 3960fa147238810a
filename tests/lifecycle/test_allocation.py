"""Allocation statistics and invariants: uniform buckets and arms, independent layers, ramp-up
only adds units, experiments of one layer never share a unit, the Allocator equals the pure core."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lifecycle.allocation import (
    BUCKETS,
    KillScope,
    Status,
    assign,
    assign_many,
    build_snapshot,
    is_enabled,
)
from lifecycle.allocator import Allocator
from lifecycle.config import Arm, Experiment, Layer
from tools.errors import ConfigError, NotFoundError

N = 100_000
UNITS = np.random.default_rng(20261125).integers(-(2**63), 2**63 - 1, size=N, dtype=np.int64)
LAYERS = [Layer(id="ranking"), Layer(id="ad_load")]


def _exp(exp_id: str, layer: str = "ranking", pct: float = 100, **arms: float) -> Experiment:
    weights = arms or {"control": 1.0, "test": 1.0}
    return Experiment(
        id=exp_id,
        name=exp_id,
        owner="o",
        layer=layer,
        traffic_pct=pct,
        arms={name: Arm(weight=w) for name, w in weights.items()},
    )


def test_layer_buckets_are_uniform() -> None:
    snap = build_snapshot(LAYERS, [_exp("all", pct=100)])
    exp = snap.get("all")
    from lifecycle.allocation import _mix64_np  # the vectorised hash under test

    keys = UNITS.view(np.uint64)
    buckets = _mix64_np(keys ^ np.uint64(exp.layer_salt)) >> np.uint64(32)
    counts = np.bincount(
        (buckets * np.uint64(100) // np.uint64(BUCKETS)).astype(np.int64), minlength=100
    )
    _, p = stats.chisquare(counts)
    assert p > 0.001, counts
    assert counts.sum() == N


def test_arms_follow_their_weights() -> None:
    snap = build_snapshot(LAYERS, [_exp("w", control=2, a=1, b=1)])
    arms = assign_many(snap, UNITS, "w")
    counts = np.bincount(arms, minlength=3)
    _, p = stats.chisquare(counts, f_exp=[N / 2, N / 4, N / 4])
    assert p > 0.001, counts
    # PlanOut-style bound: each share within 4 standard errors of its weight.
    for share, observed in zip([0.5, 0.25, 0.25], counts, strict=True):
        assert abs(observed - N * share) < 4 * np.sqrt(N * share * (1 - share))


def test_traffic_share_is_respected() -> None:
    snap = build_snapshot(LAYERS, [_exp("a", pct=10), _exp("b", pct=35)])
    for exp_id, pct in (("a", 0.10), ("b", 0.35)):
        inside = (assign_many(snap, UNITS, exp_id) >= 0).mean()
        assert abs(inside - pct) < 4 * np.sqrt(pct * (1 - pct) / N)


def test_assignments_are_independent_across_layers() -> None:
    snap = build_snapshot(
        LAYERS, [_exp("r", "ranking", 100, control=1, t=1, u=1), _exp("l", "ad_load", 100)]
    )
    r, l_ = assign_many(snap, UNITS, "r"), assign_many(snap, UNITS, "l")
    table = np.zeros((3, 2))
    np.add.at(table, (r, l_), 1)
    _, p, _, _ = stats.chi2_contingency(table)
    assert p > 0.001, table


def test_arm_draw_is_independent_of_the_bucket() -> None:
    # Within one experiment the arm must not depend on where the unit sits in the range.
    snap = build_snapshot(LAYERS, [_exp("x", pct=100)])
    exp = snap.get("x")
    from lifecycle.allocation import _mix64_np

    buckets = _mix64_np(UNITS.view(np.uint64) ^ np.uint64(exp.layer_salt)) >> np.uint64(32)
    decile = (buckets * np.uint64(10) // np.uint64(BUCKETS)).astype(np.int64)
    table = np.zeros((10, 2))
    np.add.at(table, (decile, assign_many(snap, UNITS, "x")), 1)
    _, p, _, _ = stats.chi2_contingency(table)
    assert p > 0.001


unit_ids = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=12))


@settings(max_examples=60, deadline=None)
@given(
    units=st.lists(unit_ids, min_size=1, max_size=40),
    coverages=st.lists(st.floats(0.0, 100.0), min_size=2, max_size=5),
    pct=st.floats(1.0, 100.0),
)
def test_ramping_up_never_moves_a_unit_out_or_across_arms(
    units: list[int | str], coverages: list[float], pct: float
) -> None:
    exp = _exp("ramp", pct=pct)
    previous: dict[int | str, str] = {}
    for cover in sorted(coverages):
        snap = build_snapshot(LAYERS, [exp], coverage_pct={"ramp": cover})
        current = {u: a for u in units if (a := assign(snap, {"unit_id": u}, "ramp"))}
        for unit, arm in previous.items():
            assert current.get(unit) == arm, (unit, cover)
        previous = current


@settings(max_examples=60, deadline=None)
@given(
    traffic=st.lists(st.floats(0.5, 60.0), min_size=2, max_size=5),
    units=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=200),
)
def test_experiments_of_a_layer_never_share_a_unit(traffic: list[float], units: list[int]) -> None:
    scale = min(1.0, 99.99 / sum(traffic))  # a layer holds at most 100 %
    exps = [_exp(f"e{i}", pct=pct * scale) for i, pct in enumerate(traffic)]
    snap = build_snapshot(LAYERS, exps)
    ids = np.array(units, dtype=np.int64)
    inside = np.stack([assign_many(snap, ids, e.id) >= 0 for e in exps])
    assert (inside.sum(axis=0) <= 1).all()
    allocator = Allocator(snap)
    for u in units[:20]:
        assert len(allocator.assignments({"unit_id": u})) <= 1


def test_allocator_equals_the_pure_functions() -> None:
    exps = [
        _exp("plain", pct=40),
        Experiment(
            id="full",
            name="full",
            owner="o",
            layer="ranking",
            traffic_pct=30,
            arms={"a": Arm(weight=1), "control": Arm(weight=2), "b": Arm(weight=1)},
            targeting={"country": ["US", "BR"], "platform": ["ios"]},
            forced={"5": "b", "user-9": "control"},
        ),
        _exp("paused", "ad_load", 50),
        _exp("killed", "ad_load", 50),
    ]
    snap = build_snapshot(
        LAYERS,
        exps,
        status={"paused": "paused"},
        coverage_pct={"plain": 60},
        kill_switches=[("experiment", "killed")],
    )
    allocator = Allocator(snap)
    rng = np.random.default_rng(3)
    for i in range(3000):
        unit: int | str = int(rng.integers(-(2**40), 2**40)) if i % 3 else f"user-{i % 50}"
        request = {
            "unit_id": unit,
            "country": ["US", "BR", "DE", None][i % 4],
            "platform": ["ios", "android"][i % 2],
        }
        for e in exps:
            assert allocator.assign(request, e.id) == assign(snap, request, e.id)
            assert allocator.is_enabled(request, e.id) == is_enabled(snap, request, e.id)
    assert allocator.assign({"unit_id": 5}, "full") == "b"  # forced beats targeting


def test_bad_requests_and_ids_are_refused() -> None:
    allocator = Allocator(build_snapshot(LAYERS, [_exp("x")]))
    with pytest.raises(ConfigError) as err:
        allocator.is_enabled({"country": "US"}, "x")
    assert err.value.field == "request.unit_id"
    with pytest.raises(ConfigError):
        allocator.assign({"unit_id": True}, "x")
    with pytest.raises(NotFoundError):
        allocator.is_enabled({"unit_id": 1}, "nope")


def test_kill_switch_takes_effect_on_the_very_next_call() -> None:
    exp = _exp("879", pct=100, control=1, test=1)
    allocator = Allocator(build_snapshot(LAYERS, [exp], version=1))
    request = next(
        {"unit_id": u} for u in range(10_000) if allocator.is_enabled({"unit_id": u}, "879")
    )
    scopes: list[tuple[KillScope, str]] = [
        ("experiment", "879"),
        ("layer", "ranking"),
        ("global", "*"),
    ]
    for i, (scope, target) in enumerate(scopes):
        assert allocator.swap(build_snapshot(LAYERS, [exp], version=2 * i + 1))
        assert allocator.is_enabled(request, "879")
        killed = build_snapshot(LAYERS, [exp], kill_switches=[(scope, target)], version=2 * i + 2)
        assert allocator.swap(killed)
        assert not allocator.is_enabled(request, "879")
        assert allocator.assign(request, "879") is None
        assert (assign_many(allocator.snapshot, np.arange(1000), "879") == -1).all()
    # An older snapshot never replaces a newer one.
    assert not allocator.swap(build_snapshot(LAYERS, [exp], version=1))
    assert allocator.version == 6


def test_model_kill_switch_blocks_experiments_serving_the_model() -> None:
    served = Experiment(
        id="m",
        name="m",
        owner="o",
        layer="ranking",
        traffic_pct=50,
        arms={"control": Arm(model="ctr_v41"), "test": Arm(model="ctr_v42")},
    )
    other = _exp("o", "ad_load", 100)
    snap = build_snapshot(LAYERS, [served, other], kill_switches=[("model", "ctr_v42")])
    assert snap.blocked == frozenset({"m"})


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    control=st.integers(0, 3),
    pct=st.floats(1, 100),
    coverage=st.floats(0, 100),
    targeted=st.booleans(),
    units=st.lists(
        st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8)), min_size=1, max_size=40
    ),
    countries=st.lists(st.sampled_from(["US", "BR", "DE"]), min_size=40, max_size=40),
)
def test_the_fast_paths_agree_with_the_reference_decision(
    weights: list[int],
    control: int,
    pct: float,
    coverage: float,
    targeted: bool,
    units: list[int | str],
    countries: list[str],
) -> None:
    """Allocator (compiled is_enabled, bound assign) and assign_many give decide's answers."""
    from lifecycle.allocation import decide

    arms = {f"arm{i}": Arm(weight=w) for i, w in enumerate(weights)}
    names = list(arms)
    exp = Experiment(
        id="e",
        name="e",
        owner="o",
        layer="ranking",
        traffic_pct=pct,
        arms=arms,
        control=names[control % len(names)],
        targeting={"country": ["US", "BR"]} if targeted else {},
    )
    snap = build_snapshot(LAYERS, [exp], coverage_pct={"e": coverage})
    compiled = snap.get("e")
    allocator = Allocator(snap)
    requests = [{"unit_id": u, "country": c} for u, c in zip(units, countries, strict=False)]
    expected = [decide(compiled, False, r) for r in requests]
    for request, arm in zip(requests, expected, strict=True):
        assert allocator.assign(request, "e") == (names[arm] if arm >= 0 else None)
        assert allocator.is_enabled(request, "e") == (arm >= 0 and arm != compiled.control)
    if all(isinstance(u, int) and -(2**63) <= u < 2**63 for u in units):
        many = assign_many(
            snap,
            np.asarray(units, dtype=np.int64),
            "e",
            {"country": np.asarray(countries[: len(units)])},
        )
        assert many.tolist() == expected


def test_blocking_switches_are_one_rule_for_allocation_and_views() -> None:
    from lifecycle.allocation import blocking_switches

    switches: list[tuple[KillScope, str]] = [
        ("global", "*"),
        ("model", "ctr_v42"),
        ("layer", "ad_load"),
        ("experiment", "879"),
    ]
    assert blocking_switches("879", "ranking", {"ctr_v42", "ctr_v41"}, switches) == [
        ("experiment", "879"),
        ("model", "ctr_v42"),
        ("global", "*"),
    ]
    assert blocking_switches("880", "ranking", {"ctr_v41"}, switches[1:]) == []


# --- allocation by layers (issue 17) ---------------------------------------------------------

_STATUSES: list[Status] = ["running", "ramping", "shadow", "paused", "draft", "killed", "completed"]


@settings(max_examples=40, deadline=None)
@given(
    layout=st.lists(
        st.tuples(
            st.integers(0, 2),  # layer
            st.floats(0.5, 40.0),  # traffic
            st.floats(0.0, 100.0),  # coverage
            st.sampled_from(_STATUSES),
            st.integers(0, 3),  # 0: no targeting, 1: targeted, 2: forced arms, 3: 3 arms
        ),
        min_size=1,
        max_size=12,
    ),
    kills=st.lists(st.integers(0, 11), max_size=3),
    kill_layer=st.booleans(),
    units=st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=6)), max_size=30),
)
def test_assignments_by_layer_equal_the_reference_on_random_snapshots(
    layout: list[tuple[int, float, float, Status, int]],
    kills: list[int],
    kill_layer: bool,
    units: list[int | str],
) -> None:
    """One hash per layer and a bisection give the reference's answer for every experiment."""
    from lifecycle.allocation import assignments

    layers = [Layer(id=f"l{i}") for i in range(3)]
    used = [0.0, 0.0, 0.0]
    exps: list[Experiment] = []
    for i, (layer, pct, _, _, kind) in enumerate(layout):
        pct = min(pct, 100.0 - used[layer])
        if pct <= 0:
            continue
        used[layer] += pct
        arms = {"control": 2.0, "a": 1.0, "b": 1.0} if kind == 3 else {"control": 1.0, "t": 1.0}
        exps.append(
            Experiment(
                id=f"e{i}",
                name=f"e{i}",
                owner="o",
                layer=f"l{layer}",
                traffic_pct=pct,
                arms={name: Arm(weight=w) for name, w in arms.items()},
                targeting={"country": ["US", "BR"]} if kind == 1 else {},
                forced={"u1": "control", "7": next(iter(arms))} if kind == 2 else {},
            )
        )
    ids = [e.id for e in exps]
    status: dict[str, Status] = {f"e{i}": s for i, (_, _, _, s, _) in enumerate(layout)}
    switches: list[tuple[KillScope, str]] = [("experiment", f"e{k}") for k in kills]
    if kill_layer:
        switches.append(("layer", "l1"))
    snap = build_snapshot(
        layers,
        exps,
        status={i: status[i] for i in ids},
        coverage_pct={f"e{i}": c for i, (_, _, c, _, _) in enumerate(layout) if f"e{i}" in ids},
        kill_switches=switches,
    )
    allocator = Allocator(snap)
    for j, unit in enumerate([*units, "u1", 7]):
        request = {"unit_id": unit, "country": ["US", "DE", None][j % 3]}
        assert allocator.assignments(request) == assignments(snap, request)


def test_a_kill_recompiles_one_experiment_and_keeps_the_rest() -> None:
    layers = [Layer(id=f"l{i}") for i in range(4)]
    exps = [_exp(f"e{i}", f"l{i % 4}", 10) for i in range(40)]
    allocator = Allocator(build_snapshot(layers, exps, version=1))
    assert allocator.recompiled == 40
    before = {e.id: allocator.is_enabled({"unit_id": 3}, e.id) for e in exps}
    assert allocator.swap(
        build_snapshot(layers, exps, kill_switches=[("experiment", "e5")], version=2)
    )
    assert allocator.recompiled == 1
    assert allocator.assign({"unit_id": 3}, "e5") is None
    after = {e.id: allocator.is_enabled({"unit_id": 3}, e.id) for e in exps}
    assert {k for k in before if before[k] != after[k]} <= {"e5"}
    # A layer kill recompiles that layer's ten experiments; a ramp recompiles the ramped one.
    assert allocator.swap(build_snapshot(layers, exps, kill_switches=[("layer", "l2")], version=3))
    assert allocator.recompiled == 11  # l2's ten, and e5 released
    ramped = build_snapshot(
        layers, exps, kill_switches=[("layer", "l2")], coverage_pct={"e0": 50}, version=4
    )
    assert allocator.swap(ramped)
    assert allocator.recompiled == 1
    units = np.arange(20_000)
    for e in exps:
        assert (allocator.assign_many(units, e.id) >= 0).mean() == pytest.approx(
            (assign_many(ramped, units, e.id) >= 0).mean()
        )
        for u in range(0, 20_000, 997):
            assert allocator.assign({"unit_id": u}, e.id) == assign(ramped, {"unit_id": u}, e.id)
