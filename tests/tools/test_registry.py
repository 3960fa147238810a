"""The check registry: one declaration from which names, dispatch, schemas and fakes derive."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from tools.errors import ConfigError
from tools.registry import (
    CHECKS,
    CheckName,
    Checks,
    RoutedChecks,
    check_entry,
    registry,
    run_check,
)
from tools.result import CheckResult
from tools.toolbox import Toolbox

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)


class Recorder(RoutedChecks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def route(self, name: CheckName, arguments: Mapping[str, Any]) -> CheckResult:
        self.calls.append((name, dict(arguments)))
        return CheckResult(check=name, verdict="ok", summary="fine")


def test_every_name_is_registered_once_in_declaration_order():
    assert tuple(registry()) == CHECKS == get_args(CheckName)
    assert all(entry.name == name for name, entry in registry().items())


def test_the_toolbox_implements_every_registered_check_with_its_declared_signature():
    for name, entry in registry().items():
        declared = inspect.signature(entry.function)
        implemented = inspect.signature(getattr(Toolbox, name))
        assert list(implemented.parameters) == list(declared.parameters), name
        assert [p.default for p in implemented.parameters.values()] == [
            p.default for p in declared.parameters.values()
        ], name


def test_a_routed_check_sees_every_argument_with_its_defaults():
    box = Recorder()
    box.prediction(T0, T1, model_id="ctr_v41")
    box.srm(T0, end=T1, experiment_id="879")
    assert box.calls == [
        ("prediction", {"start": T0, "end": T1, "experiment_id": None, "model_id": "ctr_v41"}),
        ("srm", {"start": T0, "end": T1, "experiment_id": "879"}),
    ]
    with pytest.raises(TypeError):
        box.srm(T0, T1)  # the declared signature is enforced: srm needs its experiment


def test_dispatch_names_the_subject_by_scope():
    box = Recorder()
    run_check(box, "fallback", T0, T1, "model", "ctr_v41")
    run_check(box, "fallback", T0, T1, "experiment", "879")
    run_check(box, "infra", T0, T1, "global")
    assert [args.get("model_id") for _, args in box.calls[:2]] == ["ctr_v41", None]
    assert box.calls[1][1]["experiment_id"] == "879"
    assert box.calls[2] == ("infra", {"start": T0, "end": T1})


def test_dispatch_refuses_a_scope_the_check_does_not_run_on():
    box = Recorder()
    with pytest.raises(ConfigError, match="srm check runs on \\['experiment'\\]"):
        run_check(box, "srm", T0, T1, "model", "ctr_v41")
    with pytest.raises(ConfigError, match="unknown check"):
        run_check(box, "vibes", T0, T1, "global")
    assert box.calls == []


def test_localization_checks_are_not_plannable():
    assert check_entry("attribution").scopes == ()
    assert check_entry("change_point").scopes == ()
    assert check_entry("infra").scopes == ("global",)


def test_a_protocol_holder_type_checks_against_the_toolbox():
    def holder(checks: Checks) -> str:
        return checks.infra(T0, T1).check

    assert holder(Recorder()) == "infra"
