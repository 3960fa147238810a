"""Partial faults: a constant in part of the predictions, faults confined to one slice, a
miscalibrated arm behind a global alert; and the healthy side of each scan."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from tests.tools.synth import Fault, World, at, build, duckdb_toolboxes, toolbox, write
from tests.tools.test_known_answers import M0, _arm, cube, frame_of
from tools.checks._engine import Comparand, Finding, SubjectFrame
from tools.checks._movement import movement
from tools.checks._stuck import stuck_scan, stuck_slices
from tools.checks.calibration import CalibrationParams, calibration_check, calibration_test
from tools.checks.fallback import fallback_check
from tools.checks.prediction import prediction_check
from tools.stats import Comparison
from tools.telemetry import TelemetryReader, to_minute
from tools.toolbox import Toolbox

WORLDS = {
    "healthy": World(seed=31, rpm=1200),
    # 6 % of the test arm's predictions stuck at one value for the last 12 minutes.
    "stuck": World(seed=32, rpm=1200, faults=[Fault("constant", 108, 0.06)]),
    # A fifth of web's predictions of the production model stuck at one value from minute 80:
    # 2 % of the model's, under the 3 % a stuck constant must fill to fail over the model.
    "stuck_web": World(
        seed=41, rpm=1200, faults=[Fault("constant", 80, 0.2, arm=None, where={"platform": "web"})]
    ),
    # Fallbacks on web only (10 % of traffic), all traffic: +0.3 pp over the whole model, under
    # its materiality floor (a doubling of 0.5 %), 3 pp inside the slice.
    "fallback_web": World(
        seed=33, rpm=1200, faults=[Fault("fallback", 80, 0.03, arm=None, where={"platform": "web"})]
    ),
    # 40 % of web's clicks lost: 4 % of all clicks, under the 5 % calibration warning band.
    "clicks_web": World(
        seed=34,
        rpm=1200,
        faults=[Fault("click_loss", 80, 0.4, arm=None, where={"platform": "web"})],
    ),
    # 70 % of web's clicks lost in the window's last 12 minutes: the model's best segment shows
    # no trace (p 0.8 over the whole model), web's own last quarter does.
    "clicks_web_late": World(
        seed=45,
        rpm=3000,
        faults=[Fault("click_loss", 108, 0.7, arm=None, where={"platform": "web"})],
    ),
    # From minute 80 the test arm of an experiment on 30 % of units over-predicts twofold.
    "miscal": World(
        seed=35, rpm=1200, exp_share=0.3, faults=[Fault("miscalibration", 80, 2.0, arm="test")]
    ),
    # All of m_prod's predictions × 1.5 from minute 95, or a third of every click lost from 95.
    "model_rescaled": World(seed=36, rpm=1200, faults=[Fault("miscalibration", 95, 1.5, arm=None)]),
    "clicks_lost": World(seed=37, rpm=1200, faults=[Fault("click_loss", 95, 0.33, arm=None)]),
    # The test arm over-predicts twofold from minute 100, a third of the way into the window's
    # last hour; or it turns noisier (logit noise, sd 1.2) from minute 80.
    "late_rescale": World(
        seed=39, rpm=1200, faults=[Fault("miscalibration", 100, 2.0, arm="test")]
    ),
    "noisier": World(seed=40, rpm=1200, faults=[Fault("noise", 80, 1.2, arm="test")]),
    # The test arm over-predicts threefold on DE only, or turns noisier (sd 1.5) on DE only.
    "rescaled_de": World(
        seed=42,
        rpm=3000,
        faults=[Fault("miscalibration", 80, 3.0, arm="test", where={"country": "DE"})],
    ),
    "noisier_de": World(
        seed=43, rpm=3000, faults=[Fault("noise", 80, 1.5, arm="test", where={"country": "DE"})]
    ),
    # Predictions divided by five from minute 112 on a quieter world: too few clicks after the
    # onset to fit a slope there, but every request shows the step of the mean prediction.
    "late_rescale_sparse": World(
        seed=50, rpm=500, faults=[Fault("miscalibration", 112, 0.2, arm="test")]
    ),
    # The test arm fell back for 30 % of its requests from minute 75 to minute 100, then healed.
    "fallback_ended": World(
        seed=51, rpm=1200, faults=[Fault("fallback", 75, 0.3, arm="test", end=100)]
    ),
}


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Toolbox]:
    return duckdb_toolboxes(WORLDS, tmp_path_factory.mktemp("partial"))


def _near(onset: datetime | None, minute: int, tolerance: int = 5) -> bool:
    return onset is not None and abs(to_minute(onset) - to_minute(at(minute))) <= tolerance


def test_partial_constant_fails_prediction_with_onset(boxes: dict[str, Toolbox]) -> None:
    result = boxes["stuck"].prediction(at(60), at(120), experiment_id="e1")
    assert result.verdict == "fail" and result.arm == "test"
    assert "stuck at a constant" in result.summary and "0.0137" in result.summary
    assert _near(result.onset, 108)


def test_a_constant_in_one_slice_is_found_there(boxes: dict[str, Toolbox]) -> None:
    result = boxes["stuck_web"].prediction(at(60), at(120), model_id="m_prod")
    assert result.verdict == "fail" and result.where == {"platform": "web"}, result.summary
    assert "0.0137" in result.summary and "Confined to platform=web" in result.summary
    assert result.effect is not None and result.effect.estimate > 15  # pp of web's predictions
    assert 0.08 < result.params["where_share"] < 0.12
    # A constant on every slice of the test arm is the arm's, not one slice's.
    spread = boxes["stuck"].prediction(at(60), at(120), experiment_id="e1")
    assert spread.verdict == "fail" and spread.where == {}
    assert "where_share" not in spread.params


def test_healthy_predictions_state_the_stuck_share_they_could_see(
    boxes: dict[str, Toolbox],
) -> None:
    for kwargs in ({"experiment_id": "e1"}, {"model_id": "m_prod"}):
        result = boxes["healthy"].prediction(at(60), at(120), **kwargs)
        assert result.verdict == "ok", result.summary
        mde = result.params["stuck_share_mde"]
        assert 0.03 <= mde < 0.2 and "A constant in" in result.summary


def test_fallback_in_one_slice_is_found_and_told_from_infra(boxes: dict[str, Toolbox]) -> None:
    box = boxes["fallback_web"]
    result = box.fallback(at(60), at(120), model_id="m_prod")
    assert result.verdict == "fail" and result.where == {"platform": "web"}
    assert "diluted" in result.summary and result.params["errors_held"] is True
    # What a cause confined there can move: web's share of the model's requests (10 % drawn).
    assert 0.08 < result.params["where_share"] < 0.12
    assert box.infra(at(60), at(120)).verdict not in ("fail", "warn")


def test_lost_clicks_in_one_slice_fail_calibration_as_clicks(boxes: dict[str, Toolbox]) -> None:
    result = boxes["clicks_web"].calibration(at(60), at(120), model_id="m_prod")
    assert result.verdict in ("fail", "warn") and result.where == {"platform": "web"}
    assert result.params["moved"] == "clicks"


def test_a_late_loss_in_one_slice_is_screened_for_in_the_slice(boxes: dict[str, Toolbox]) -> None:
    result = boxes["clicks_web_late"].calibration(at(60), at(120), model_id="m_prod")
    assert result.verdict in ("fail", "warn") and result.where == {"platform": "web"}
    assert result.params["moved"] == "clicks" and _near(result.onset, 108)


def test_clicks_a_fault_lost_still_count_towards_the_minimum_sample() -> None:
    # A slice whose predictions expected 55 clicks logged 23 (lost click logs): under the
    # 30-click minimum as logged, over it as expected. The loss itself is the finding.
    test = calibration_test(CalibrationParams())
    window = {"n": 3400.0, "sum_label_v": 23.0, "sum_pred": 54.6}
    baseline = {"n": 16500.0, "sum_label_v": 271.0, "sum_pred": 272.1}
    c = test.compare(window, baseline, "both")
    assert c.valid and c.estimate == pytest.approx(54.6 / 23 / (272.1 / 271), rel=1e-6)
    assert c.p_value < 1e-4
    # Every click lost: still a comparison, and a decisive one.
    gone = test.compare({**window, "sum_label_v": 0.0}, baseline, "both")
    assert gone.valid and gone.estimate > 20 and gone.p_value < 1e-10
    # Predictions cut to a fifth (expected at the pooled rate: under 30), clicks logged as
    # before (35): the logged clicks carry the comparison, and it is decisive.
    shrunk = test.compare({"n": 3400.0, "sum_label_v": 35.0, "sum_pred": 7.0}, baseline, "both")
    assert shrunk.valid and shrunk.estimate == pytest.approx(7.0 / 35 / (272.1 / 271), rel=1e-6)
    assert shrunk.p_value < 1e-6
    # Too little traffic to have expected 30 clicks either way: no verdict.
    thin = {"n": 900.0, "sum_label_v": 6.0, "sum_pred": 14.0}
    assert not test.compare(thin, baseline, "both").valid


def test_healthy_world_has_no_slice_or_stuck_findings(boxes: dict[str, Toolbox]) -> None:
    box = boxes["healthy"]
    for name in ("fallback", "calibration", "prediction"):
        for kwargs in ({"experiment_id": "e1"}, {"model_id": "m_prod"}):
            result = getattr(box, name)(at(60), at(120), **kwargs)
            assert result.verdict not in ("fail", "warn"), result.summary


def test_attribution_scans_calibration_per_arm(boxes: dict[str, Toolbox]) -> None:
    found = boxes["miscal"].attribution("calibration", at(80), at(120))
    assert (found.experiment, found.arm) == ("e1", "test")
    table = found.evidence[0]
    assert table.rows[0][1] == "e1/test" and float(str(table.rows[0][-1])) < 1e-3
    quiet = boxes["healthy"].attribution("calibration", at(80), at(120))
    assert quiet.experiment is None and quiet.verdict == "ok"
    # The all-clear states what it could have seen.
    assert 0 < quiet.params["arm_mde_best"] <= quiet.params["arm_mde_worst"]
    assert "would have shown" in quiet.summary


def _hist(
    rng: np.random.Generator, shares: np.ndarray, blocks: int, per_block: int
) -> pd.DataFrame:
    """Both arms' histograms: every block a multinomial draw of ``per_block`` from ``shares``."""
    counts = rng.multinomial(per_block, shares, size=(2, blocks)).astype(float)
    arm, block, k = np.nonzero(counts)
    n = counts[arm, block, k]
    return pd.DataFrame(
        {
            "arm": np.asarray(["control", "test"])[arm],
            "block": block,
            "bin": k,
            "n": n,
            "sum_pred": n * (k + 0.5) / 200,
        }
    )


def test_stuck_scan_holds_its_alpha_on_healthy_histograms() -> None:
    """No stuck value: across many draws, the scan's warning level fires at most its alpha."""
    frame = frame_of(cube({"control": {"n": 100.0}, "test": {"n": 100.0}}))
    rng = np.random.default_rng(7)
    shares = rng.dirichlet(np.full(40, 2.0))
    alpha, draws, hits = 0.05, 60, 0
    for _ in range(draws):
        hist = _hist(rng, shares, blocks=120, per_block=100)
        found = stuck_scan(frame, hist, 40, 1, mass=0.015, ratio=2.0)
        hits += any(s.adjusted_p < alpha for s in found)
    assert hits / draws <= alpha
    # The same scan sees 9 % of the test arm stuck in one bin for ten minutes.
    k = int(shares.argmin())
    extra = pd.DataFrame(
        {"arm": "test", "block": range(110, 120), "bin": k, "n": 10.0, "sum_pred": 10 * k / 200}
    )
    hist = pd.concat([_hist(rng, shares, blocks=120, per_block=100), extra], ignore_index=True)
    found = stuck_scan(frame, hist, 40, 1, mass=0.03, ratio=2.0)
    assert any(s.adjusted_p < 1e-3 and s.bin == k for s in found)


def test_a_rescaled_model_is_not_a_stuck_one(boxes: dict[str, Toolbox]) -> None:
    """Every prediction of the test arm doubled: the distribution moved as a whole, sparse bins
    of it now far above their reference share, yet no bin towers over its neighbours."""
    result = boxes["miscal"].prediction(at(60), at(120), experiment_id="e1")
    assert "stuck" not in result.summary and result.verdict != "fail"


def test_calibration_says_which_side_moved(boxes: dict[str, Toolbox]) -> None:
    """Both faults raise Σ prediction ÷ Σ clicks by about 1.5; only one moves the predictions."""
    rescaled = boxes["model_rescaled"].calibration(at(60), at(120), model_id="m_prod")
    lost = boxes["clicks_lost"].calibration(at(60), at(120), model_id="m_prod")
    assert rescaled.verdict == "fail" and lost.verdict == "fail"
    assert rescaled.params["moved"] == "predictions"
    assert rescaled.params["prediction_step"] == pytest.approx(0.5, abs=0.1)
    assert lost.params["moved"] == "clicks"
    assert abs(lost.params["prediction_step"] or 0.0) < 0.1


@pytest.mark.parametrize("confined", [True, False])
def test_invalid_predictions_in_one_slice_are_found_there(confined: bool) -> None:
    # One invalid prediction a minute from minute 80: confined to web (a tenth of the traffic,
    # 0.05 % of its predictions) it is 0.005 % of the model's, under the materiality floor over
    # the whole model (0.01 pp to warn) and far above it inside web. Spread over every platform
    # the same count stays immaterial everywhere: no slice is blamed.
    n = {"ios": 18_000.0, "web": 2_000.0}
    parts = []
    for platform, size in n.items():
        part = cube({"m": _arm(size, size * 0.03, 0.03)})
        part["platform"] = platform
        late = part["minute"] >= M0 + 80
        if confined and platform == "web":
            part.loc[late, "n_invalid"] = 1.0
        elif not confined:
            part.loc[late, "n_invalid"] = size / sum(n.values())
        parts.append(part)
    result = prediction_check(frame_of(pd.concat(parts, ignore_index=True), control=None))
    if confined:
        assert result.verdict == "fail" and result.where == {"platform": "web"}, result.summary
        assert "Confined to platform=web" in result.summary
        assert _near(result.onset, 80, tolerance=2)
    else:
        assert result.verdict not in ("fail", "warn") and not result.where, result.summary


def _healthy_model(
    rng: np.random.Generator,
    sizes: dict[str, float],
    noisy: Callable[[float, int], dict[str, np.ndarray]],
) -> SubjectFrame:
    """A model's frame per minute and platform (``sizes``: requests a minute), CTR and
    predictions at 3 %, the columns ``noisy(size, minutes)`` returns drawn per minute."""
    parts = []
    for platform, size in sizes.items():
        part = cube({"m": _arm(size, size * 0.03, 0.03)})
        part["platform"] = platform
        for column, values in noisy(size, len(part)).items():
            part[column] = values
        parts.append(part)
    return frame_of(pd.concat(parts, ignore_index=True), control=None)


def test_invalid_slice_scan_holds_its_alpha_on_healthy_models() -> None:
    """A model with a steady background of invalid predictions (2 in 10,000, Poisson per minute
    and platform): the check with its slice scan warns or fails at most about its warning α."""
    rng = np.random.default_rng(11)
    sizes = {"ios": 9_000.0, "android": 8_000.0, "web": 3_000.0}
    draws, hits = 150, 0
    for _ in range(draws):
        frame = _healthy_model(
            rng, sizes, lambda size, k: {"n_invalid": rng.poisson(size * 2e-4, k).astype(float)}
        )
        hits += prediction_check(frame).verdict in ("fail", "warn")
    assert hits / draws <= 0.02, hits


def test_calibration_with_its_slice_screen_holds_its_alpha_on_healthy_models() -> None:
    """Poisson clicks per minute and platform at the predicted rate: the calibration check, its
    slice screen and scan included, warns or fails at about its warning α (measured: 1.2 % over
    1,500 draws, the same with and without the screen)."""
    rng = np.random.default_rng(5)
    sizes = {"ios": 450.0, "android": 400.0, "web": 150.0}
    draws, hits = 300, 0
    for _ in range(draws):

        def clicks(size: float, k: int) -> dict[str, np.ndarray]:
            drawn = rng.poisson(size * 0.03, k).astype(float)
            return {"sum_label_v": drawn, "sum_label": drawn}

        hits += calibration_check(_healthy_model(rng, sizes, clicks)).verdict in ("fail", "warn")
    assert hits / draws <= 0.03, hits


def test_a_rescaling_late_in_the_slope_span_is_not_a_noisier_model(
    boxes: dict[str, Toolbox],
) -> None:
    # Over the whole hour the pooled slope of scaled and unscaled minutes falls about as much
    # as the pooled calibration moves; after the onset the calibration moved twofold and the
    # slope barely: a rescaling. A noisier model flattens the slope on every stretch.
    for name in ("late_rescale", "late_rescale_sparse"):
        late = boxes[name].ne(at(60), at(120), experiment_id="e1")
        assert late.verdict in ("fail", "warn") and late.params["beyond_rescaling"] is False
    noisier = boxes["noisier"].ne(at(60), at(120), experiment_id="e1")
    assert noisier.verdict == "fail" and noisier.params["beyond_rescaling"] is True


def test_a_rescaling_of_one_slice_is_not_a_noisier_model(boxes: dict[str, Toolbox]) -> None:
    # DE's predictions ×3 mix scaled and unscaled predictions in every bin of the arm: its
    # slope halves, as a noisier model's would, further than the arm's calibration moved. What
    # a rescaling of DE by DE's own factor does to the slope accounts for it; a model noisier
    # on DE flattens the slope beyond that.
    rescaled = boxes["rescaled_de"].ne(at(60), at(120), experiment_id="e1")
    assert rescaled.verdict == "fail", rescaled.summary
    assert rescaled.params["beyond_rescaling"] is False
    noisier = boxes["noisier_de"].ne(at(60), at(120), experiment_id="e1")
    assert noisier.verdict == "fail" and noisier.params["beyond_rescaling"] is True


def test_lost_clicks_are_weighed_against_the_change_they_made_not_a_diluted_scan() -> None:
    # The model's mean prediction rose 10 % at minute 20 (long before the window) and 70 % of
    # its clicks are lost from minute 105. The finding's scan spread the change over a longer
    # segment (calibration 1.17); over its focus the calibration tripled. The old prediction
    # step is small beside the change to explain: the clicks moved.
    data = cube({"m": _arm(2000, 40, 0.02)})
    data.loc[data["minute"] >= M0 + 20, ["sum_pred", "sum_pred2"]] *= [1.1, 1.1**2]
    late = data["minute"] >= M0 + 105
    data.loc[late, ["sum_label", "sum_label_v"]] *= 0.3
    frame = frame_of(data, control=None)
    test = calibration_test(CalibrationParams())
    focus = (M0 + 105, M0 + 120)
    finding = Finding(
        Comparand("m", "m", False, expected=1.0),
        test,
        Comparison(3.7, 3.2, 4.2, 9.0, 1e-12),
        1e-12,
        focus,
        M0 + 105,
        (M0, M0 + 60),
        "m",
        scan=Comparison(1.17, 1.1, 1.25, 5.0, 1e-7),
    )
    found = movement(frame, finding)
    assert found is not None and found.step is not None and found.step > 0.05
    assert found.moved == "clicks", found


@pytest.mark.parametrize(("kept", "p_at_most"), [(3.0, 1e-4), (0.0, 0.01)])
def test_an_arm_that_lost_its_clicks_is_named_by_calibration_attribution(
    kept: float, p_at_most: float
) -> None:
    from tools.checks._attribution_ratio import ratio_arms

    # Window minutes 60-120, baseline 0-60. Arm "b" of e1 logged 3 (or 0) of the ~40 clicks its
    # predictions expected in the window: under 5 clicks as logged, well over as expected.
    rows = pd.DataFrame(
        [
            ("e1", "a", 0, 400.0, 400.0),
            ("e1", "b", 0, 40.0, 40.0),
            ("e1", "a", 60, 400.0, 402.0),
            ("e1", "b", 60, 40.0, kept),
            ("e2", "a", 0, 300.0, 300.0),
            ("e2", "b", 0, 300.0, 297.0),
            ("e2", "a", 60, 300.0, 304.0),
            ("e2", "b", 60, 300.0, 299.0),
        ],
        columns=["experiment_id", "arm", "minute", "sum_pred", "sum_label"],
    )
    arms = ratio_arms(rows, {"e1": "a", "e2": "a"}, (60, 120), (0, 60))
    assert [(a.experiment, a.arm) for a in arms] == [("e1", "b"), ("e2", "b")]
    # No click at all counts as half a click (Haldane): a wide interval, still named first.
    assert arms[0].change > np.log(5) and arms[0].p_adjusted < p_at_most
    assert arms[1].p_adjusted > 0.5


def _sliced(rng: np.random.Generator, shares: dict[str, np.ndarray], blocks: int) -> pd.DataFrame:
    """Both arms' counts per block x platform x bin, each platform its own distribution."""
    parts = []
    for platform, share in shares.items():
        per_block = _PER_BLOCK[platform]
        counts = rng.multinomial(per_block, share, size=(2, blocks)).astype(float)
        arm, block, k = np.nonzero(counts)
        parts.append(
            pd.DataFrame(
                {
                    "arm": np.asarray(["control", "test"])[arm],
                    "block": block,
                    "country": "US",
                    "platform": platform,
                    "ad_type": "feed",
                    "bin": k,
                    "n": counts[arm, block, k],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


_PER_BLOCK = {"ios": 80, "android": 80, "web": 20}


def _slice_reader(table: pd.DataFrame) -> Callable[[tuple[int, int]], pd.DataFrame]:
    def counts(bins: tuple[int, int]) -> pd.DataFrame:
        near = table["bin"].between(*bins)
        return table.assign(bin=table["bin"].where(near, -1))

    return counts


def test_the_slice_scan_of_a_stuck_constant_holds_its_alpha() -> None:
    """Healthy slices, each with its own prediction distribution: the whole subject's most
    significant growth (material or not) sent to the slices is located there at most at the
    scan's alpha; a constant in a fifth of one slice's predictions, a few percent of the
    subject's, is located on every draw."""
    frame = frame_of(cube({"control": {"n": 100.0}, "test": {"n": 100.0}}))
    rng = np.random.default_rng(11)
    bins = 40
    shares = {p: rng.dirichlet(np.full(bins, 2.0)) for p in ("ios", "android", "web")}
    alpha, draws, hits = 0.05, 60, 0
    for _ in range(draws):
        table = _sliced(rng, shares, blocks=120)
        hist = table.groupby(["arm", "block", "bin"], as_index=False)["n"].sum()
        hist["sum_pred"] = hist["n"] * (hist["bin"] + 0.5) / 200
        found = [s for s in stuck_scan(frame, hist, bins, 1, mass=0.0, ratio=1.0)]
        seed = min(found, key=lambda s: s.adjusted_p, default=None)
        if seed is None or seed.adjusted_p >= alpha:
            continue
        located = stuck_slices(
            frame, seed, _slice_reader(table), bins, 1, mass=0.015, ratio=2.0, alpha=alpha
        )
        hits += located is not None
    assert hits / draws <= alpha
    # A fifth of web's test-arm predictions stuck in one bin for the last 30 minutes.
    k = int(shares["web"].argmin())
    table = _sliced(rng, shares, blocks=120)
    extra = pd.DataFrame(
        {
            "arm": "test",
            "block": range(90, 120),
            "country": "US",
            "platform": "web",
            "ad_type": "feed",
            "bin": k,
            "n": 5.0,
        }
    )
    table = pd.concat([table, extra], ignore_index=True)
    hist = table.groupby(["arm", "block", "bin"], as_index=False)["n"].sum()
    hist["sum_pred"] = hist["n"] * (hist["bin"] + 0.5) / 200
    whole = stuck_scan(frame, hist, bins, 1, mass=0.03, ratio=2.0)
    assert not any(s.adjusted_p < 1e-3 for s in whole)  # diluted: under the whole's materiality
    seed = min(stuck_scan(frame, hist, bins, 1, mass=0.0, ratio=1.0), key=lambda s: s.adjusted_p)
    located = stuck_slices(
        frame, seed, _slice_reader(table), bins, 1, mass=0.03, ratio=2.0, alpha=1e-3
    )
    assert located is not None and located.where == {"platform": "web"}
    assert located.stuck.bin == k and located.stuck.growth > 0.1


def test_a_shift_the_predictions_made_is_dated_by_their_step(tmp_path) -> None:
    # The production model's predictions fall to 0.6x at minute 95 in a quiet world (400
    # requests a minute, 1 % CTR: about four clicks a minute). The calibration ratio's change
    # point over so few clicks wanders by up to a quarter of an hour; the mean prediction's step
    # (every request) is where the shift began, and dates the finding.
    onsets = []
    for seed in range(60, 72):
        world = World(
            seed=seed, rpm=400, base_ctr=0.01, faults=[Fault("miscalibration", 95, 0.6, arm=None)]
        )
        box = toolbox(TelemetryReader(write(f"duckdb:///{tmp_path / str(seed)}", *build(world))))
        result = box.calibration(at(60), at(120), model_id="m_prod")
        if result.verdict == "fail":
            assert result.params["moved"] == "predictions"
            assert result.onset is not None and f"since {result.onset:%H:%M} UTC" in result.summary
            onsets.append(to_minute(result.onset) - to_minute(at(0)))
    assert len(onsets) >= 8 and all(abs(m - 95) <= 1 for m in onsets), onsets


def test_a_departure_that_ended_is_reported_over(boxes: dict[str, Toolbox]) -> None:
    ended = boxes["fallback_ended"].fallback(at(60), at(120), experiment_id="e1")
    assert ended.verdict == "fail" and ended.arm == "test", ended.summary
    assert "over for the last" in ended.summary and "since" not in ended.summary.split(".")[0]
    assert _near(datetime.fromisoformat(ended.params["ended"]), 100, tolerance=2)
    # A fault still on at the window's end is "since", with no end.
    live = boxes["stuck"].prediction(at(60), at(120), experiment_id="e1")
    assert "ended" not in live.params and "over for the last" not in live.summary


def test_an_experiment_launched_inside_the_window_has_no_onset_before_its_launch() -> None:
    # The experiment's arms have traffic from minute 105 only (launched inside the window), and
    # its test arm falls back for 30 % of requests from launch. Minutes without traffic cost an
    # onset nothing: the onset is the launch, not the window's start, and the fault is live.
    arms = {"control": _arm(400, 8, 0.02), "test": _arm(400, 8, 0.02, n_fallback=120)}
    data = cube(arms)
    result = fallback_check(frame_of(data[data["minute"] >= M0 + 105]))
    assert result.verdict == "fail" and result.arm == "test", result.summary
    assert result.onset is not None and to_minute(result.onset) == M0 + 105
    assert "since 07:45 UTC" in result.summary and "ended" not in result.params
