"""Root-cause localisation on cubes with a known answer; RiskLoc's loader semantics and scorer."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from evals.bench._riskloc import _transform, cause_string, micro_f1, score_root_causes
from tools.errors import ConfigError
from tools.localize import RootCause, adtributor, localize

RATIO = {"real": "clicks", "forecast": "clicks_f", "real_den": "imps", "forecast_den": "imps_f"}
DIMS = ["country", "device", "os"]


def _cube(seed: int, causes: list[tuple[dict[str, str], float]]) -> pd.DataFrame:
    """A CTR cube: 6 countries x 3 devices x 4 os; each cause multiplies its slice's CTR."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, d, o in itertools.product(
        ["US", "FR", "DE", "JP", "BR", "IN"],
        ["mobile", "desktop", "tablet"],
        ["ios", "android", "win", "mac"],
    ):
        imps_f = float(rng.integers(2_000, 20_000))
        ctr = float(rng.uniform(0.01, 0.05))
        imps = float(rng.poisson(imps_f))
        factor = 1.0
        for cause, f in causes:
            if all({"country": c, "device": d, "os": o}[k] == v for k, v in cause.items()):
                factor = f
        clicks = float(rng.binomial(int(imps), ctr * factor))
        rows.append([c, d, o, clicks, imps_f * ctr, imps, imps_f])
    return pd.DataFrame(rows, columns=[*DIMS, "clicks", "clicks_f", "imps", "imps_f"])


def _keys(causes: list[RootCause]) -> list[str]:
    return [c.key() for c in causes]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_dimensional_cause_is_localised(seed: int) -> None:
    df = _cube(seed, [({"country": "FR", "device": "mobile"}, 0.5)])
    causes = localize(df, DIMS, **RATIO)
    assert _keys(causes) == ["country=FR&device=mobile"]
    assert 0.6 < causes[0].share < 1.6  # of the net change, which noise elsewhere moves too
    assert causes[0].real < causes[0].forecast
    assert causes[0].leaves == 4


@pytest.mark.parametrize("seed", [3, 4])
def test_one_dimensional_cause_is_generalised(seed: int) -> None:
    df = _cube(seed, [({"os": "android"}, 0.6)])
    assert _keys(localize(df, DIMS, direction="decrease", **RATIO)) == ["os=android"]


def test_two_causes_and_direction() -> None:
    df = _cube(5, [({"country": "DE"}, 0.4), ({"device": "tablet", "os": "win"}, 0.3)])
    keys = _keys(localize(df, DIMS, **RATIO))
    assert sorted(keys) == ["country=DE", "device=tablet&os=win"]
    assert localize(df, DIMS, direction="increase", **RATIO) == []


@pytest.mark.parametrize("seed", range(6, 11))
def test_healthy_cube_has_no_cause(seed: int) -> None:
    assert localize(_cube(seed, []), DIMS, **RATIO) == []


def test_additive_kpi() -> None:
    df = _cube(11, [])
    df["revenue_f"] = df["clicks_f"] * 0.5
    df["revenue"] = np.random.default_rng(11).poisson(df["revenue_f"]).astype(float)
    df.loc[df["country"] == "JP", "revenue"] *= 1.8
    causes = localize(df, DIMS, real="revenue", forecast="revenue_f")
    assert _keys(causes) == ["country=JP"]
    top = adtributor(df, DIMS, real="revenue", forecast="revenue_f")
    assert top[0].elements == {"country": "JP"}
    assert top[0].share > 0.67


def test_adtributor_ratio_kpi() -> None:
    df = _cube(12, [({"country": "BR"}, 0.3)])
    top = adtributor(df, DIMS, **RATIO)
    assert top[0].elements == {"country": "BR"}
    assert top[0].share > 0.5 and top[0].score > 0
    assert adtributor(df, DIMS, k=1, **RATIO)[0].key() == "country=BR"


def test_default_dimensions_and_as_dict() -> None:
    df = _cube(13, [({"country": "US", "os": "ios"}, 0.5)])
    causes = localize(df, **RATIO)
    assert _keys(causes) == ["country=US&os=ios"]
    d = causes[0].as_dict()
    assert d["elements"] == {"country": "US", "os": "ios"} and d["leaves"] == 3


def test_empty_nan_and_bad_inputs() -> None:
    empty = _cube(14, []).iloc[:0]
    assert localize(empty, DIMS, **RATIO) == []
    assert adtributor(empty, DIMS, **RATIO) == []
    nan = _cube(14, [])
    nan[["clicks", "imps"]] = np.nan
    assert localize(nan, DIMS, **RATIO) == []
    assert adtributor(nan, DIMS, **RATIO) == []
    df = _cube(14, [])
    with pytest.raises(ConfigError, match="real"):
        localize(df, DIMS, real="nope", forecast="clicks_f")
    with pytest.raises(ConfigError, match="dimensions"):
        localize(df, ["planet"], **RATIO)
    with pytest.raises(ConfigError, match="real_den"):
        localize(df, DIMS, real="clicks", forecast="clicks_f", real_den="imps")
    neg = df.assign(clicks=-df["clicks"])
    with pytest.raises(ConfigError, match="must not be negative"):
        localize(neg, DIMS, **RATIO)
    with pytest.raises(ConfigError, match="numeric"):
        localize(df.assign(clicks="x"), DIMS, **RATIO)
    with pytest.raises(ConfigError, match="direction"):
        localize(df, DIMS, direction="sideways", **RATIO)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="leaves"):
        localize([1, 2, 3], DIMS)  # type: ignore[arg-type]


# --- RiskLoc's RS loader semantics and exact-set scorer --------------------------------------


def test_rs_transform_matches_riskloc() -> None:
    raw = pd.DataFrame(
        {
            "min": [0, 60, 120, 180, 240, 240, 240, 120],
            "cdn": [1, 1, 1, 1, 1, 2, 3, 3],
            "value": [1, 2, 3, 4, 9, 0, 1, 2],
            "cnt": [10, 10, 10, 10, 10, 5, 4, 8],
        }
    )
    leaves, dims = _transform(raw, 240)
    assert dims == ["cdn"]
    one = leaves.set_index("cdn").loc["1"]
    # value := cnt - value; forecast = mean over the 4 previous minutes
    assert one["real_a"] == 1 and one["real_b"] == 10 and one["real"] == pytest.approx(0.1)
    assert one["predict_a"] == pytest.approx((9 + 8 + 7 + 6) / 4)
    assert one["predict_b"] == 10 and one["predict"] == pytest.approx(0.75)
    assert leaves.set_index("cdn").loc["2", "predict_b"] == 0  # no history -> 0
    three = leaves.set_index("cdn").loc["3"]
    assert three["predict_a"] == 6 and three["predict_b"] == 8  # only the rows that exist


def test_rs_scorer_hand_computed() -> None:
    label = ";".join([cause_string({"bitrate": 500}), cause_string({"p2p": 1, "cdn": 5})])
    assert label == "bitrate=500;cdn=5&p2p=1"
    assert score_root_causes(["p2p=1&cdn=5", "isp=x"], label) == (1, 1, 1)
    assert score_root_causes([], label) == (0, 0, 2)
    assert score_root_causes(["bitrate=500", "bitrate=500"], "bitrate=500") == (1, 0, 0)
    assert micro_f1([(1, 1, 1), (0, 0, 2), (1, 0, 0)]) == pytest.approx(4 / (4 + 1 + 3))
