"""A fault in an experiment's control arm: named there only when the control itself left its
baseline (or its expected value), alone; a standing gap whose worse side is the control (a
sharper test arm) is not the control's fault."""

from __future__ import annotations

import pytest

from tests.tools.synth import Fault, World, at, duckdb_toolboxes
from tools.toolbox import Toolbox

WORLDS = {
    # From minute 80 the control arm over-predicts twofold, falls back for 30 % of its requests,
    # or turns noisier (logit noise, sd 1.5); the test arm is untouched.
    "miscalibrated": World(
        seed=81, rpm=1200, exp_share=0.4, faults=[Fault("miscalibration", 80, 2.0, arm="control")]
    ),
    "fallback": World(
        seed=85, rpm=1200, exp_share=0.4, faults=[Fault("fallback", 80, 0.3, arm="control")]
    ),
    "noisier": World(
        seed=83, rpm=1200, exp_share=0.4, faults=[Fault("noise", 80, 1.5, arm="control")]
    ),
    # The control has been noisier than the test arm all along: the test arm is sharper.
    "noisier_throughout": World(
        seed=84, rpm=1200, exp_share=0.4, faults=[Fault("noise", 0, 1.5, arm="control")]
    ),
    # The usual case: the test arm over-predicts from minute 80.
    "test_arm": World(
        seed=86, rpm=1200, exp_share=0.4, faults=[Fault("miscalibration", 80, 2.0, arm="test")]
    ),
}


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Toolbox]:
    return duckdb_toolboxes(WORLDS, tmp_path_factory.mktemp("control"))


@pytest.mark.parametrize(
    ("world", "check"),
    [("miscalibrated", "calibration"), ("fallback", "fallback"), ("noisier", "ne")],
)
def test_a_fault_of_the_control_arm_alone_is_named_there(
    boxes: dict[str, Toolbox], world: str, check: str
) -> None:
    result = getattr(boxes[world], check)(at(60), at(120), experiment_id="e1")
    assert result.verdict == "fail" and result.arm == "control", result.summary
    assert result.params["control_moved"] is True


def test_a_sharper_test_arm_is_no_fault_of_the_control(boxes: dict[str, Toolbox]) -> None:
    # The slope gap is there (the control's is far lower), but the control's slope held its
    # baseline: nothing moved, the test arm is simply sharper.
    result = boxes["noisier_throughout"].ne(at(60), at(120), experiment_id="e1")
    assert result.verdict == "fail" and result.arm == "control", result.summary
    assert "control_moved" not in result.params


def test_a_fault_of_the_test_arm_is_not_the_control_s(boxes: dict[str, Toolbox]) -> None:
    result = boxes["test_arm"].calibration(at(60), at(120), experiment_id="e1")
    assert result.verdict == "fail" and result.arm == "test"
    assert "control_moved" not in result.params
