"""The check registry: one declaration from which names, dispatch, schemas and fakes derive."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, cast, get_args

import pytest

from tools._checkspec import bind, declare
from tools.errors import ConfigError
from tools.registry import (
    CHECKS,
    CheckCall,
    CheckContext,
    CheckName,
    Checks,
    RoutedChecks,
    WindowCheck,
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


def test_the_toolbox_repeats_no_check_it_routes_each_to_its_declaration():
    assert not set(CHECKS) & set(vars(Toolbox))  # no per-check method, signature or preamble
    assert all(getattr(Toolbox, name) is entry.function for name, entry in registry().items())


def test_each_declaration_composes_the_docstring_the_llm_reads():
    lines = (check_entry("staleness").function.__doc__ or "").splitlines()
    assert lines[0].startswith("Check the age of the served model snapshot")
    assert "    experiment_id: Check every arm of this experiment." in lines  # its own words
    assert "    start: Window start (UTC)." in lines  # the shape's
    shared = (check_entry("fallback").function.__doc__ or "").splitlines()
    assert any(line.startswith("    model_id: Without an experiment: compare") for line in shared)
    assert lines[-2:] == [
        "Returns:",
        "    The check's result; ``onset`` is the first refresh that did not happen.",
    ]


def test_a_shape_without_the_argument_of_a_scope_is_refused():
    class Bad(Protocol):
        infra: WindowCheck = declare("model", run=_never, summary="Needs a model_id.")

    with pytest.raises(ConfigError, match="takes no model_id"):
        bind(Bad)


def test_an_implementation_refuses_a_call_missing_what_it_needs():
    with pytest.raises(ConfigError, match="experiment_id"):
        check_entry("srm").run(cast(CheckContext, object()), CheckCall(T0, T1))
    with pytest.raises(ConfigError, match="metric"):
        check_entry("attribution").run(cast(CheckContext, object()), CheckCall(T0, T1))


def _never(ctx: CheckContext, call: CheckCall) -> CheckResult:
    raise AssertionError("not run")
