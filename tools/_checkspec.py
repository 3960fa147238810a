"""How a check is declared and bound: the machinery under :mod:`tools.registry`.

A check is one typed member of the ``Checks`` protocol, assigned :func:`declare`::

    prediction: SubjectCheck = declare("experiment", "model", "global", run=_prediction, ...)

Its annotation (a callable protocol, the *shape*: the signature and the ``Args:`` the LLM reads)
types every caller; :func:`declare` holds the rest — the scopes a plan may run it on, the summary,
and the implementation (``run``: a function of a :class:`CheckContext` and the call's
:class:`CheckCall`). :func:`bind` turns the declarations of a protocol class into
:class:`CheckEntry` records and into methods that hand each call, its arguments bound by name, to
the instance's ``route`` — so an implementation never repeats a signature or a preamble.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

import pandas as pd

from tools.errors import ConfigError
from tools.result import CheckResult
from tools.vocabulary import MetricName

if TYPE_CHECKING:
    from tools.aggregates import HistogramSpec, Subject
    from tools.catalog import CheckSettings, ExperimentInfo, ModelInfo
    from tools.checks import SubjectFrame
    from tools.telemetry import TelemetryReader

__all__ = [
    "WINDOW_ARGS",
    "CheckCall",
    "CheckContext",
    "CheckEntry",
    "CheckRun",
    "HistogramArgs",
    "Scope",
    "Scored",
    "bind",
    "declare",
]

Scope = Literal["experiment", "model", "global"]
"""A subject a check runs on: one experiment (arms vs control), one model, or all traffic."""

_SUBJECT_ARGUMENT: Mapping[Scope, str | None] = MappingProxyType(
    {"experiment": "experiment_id", "model": "model_id", "global": None}
)


@dataclass(frozen=True)
class CheckCall:
    """The arguments of one check call, by name (those a check does not take are None).

    A check whose shape has a parameter no check had before adds it here.
    """

    start: datetime
    end: datetime
    experiment_id: str | None = None
    model_id: str | None = None
    metric: MetricName | None = None
    baseline_start: datetime | None = None
    baseline_end: datetime | None = None

    def need_metric(self) -> MetricName:
        """The metric, which this check cannot run without.

        Raises:
            ConfigError: No metric was given.
        """
        if self.metric is None:
            raise ConfigError("metric", None, "this check needs a metric")
        return self.metric

    def need_experiment(self) -> str:
        """The experiment, which this check cannot run without.

        Raises:
            ConfigError: No experiment was given.
        """
        if self.experiment_id is None:
            raise ConfigError("experiment_id", None, "this check needs an experiment")
        return self.experiment_id


class HistogramArgs(TypedDict):
    """The prediction histogram a check over scored predictions reads, as keyword arguments."""

    hist: pd.DataFrame
    histogram: HistogramSpec
    block_minutes: int


@dataclass(frozen=True)
class Scored:
    """The preamble of a check over scored predictions: the subject's frame and histogram."""

    frame: SubjectFrame
    histogram: HistogramArgs


class CheckContext(Protocol):
    """What a check's implementation may read (``tools.toolbox.Toolbox`` provides it).

    Every frame is fetched once per (subject, window) and shared by the checks that read it.
    """

    @property
    def reader(self) -> TelemetryReader:
        """The telemetry reader."""
        ...

    @property
    def models(self) -> Mapping[str, ModelInfo]:
        """Model id -> its refresh cadence."""
        ...

    @property
    def settings(self) -> CheckSettings:
        """Every check's parameters and the windows read."""
        ...

    def experiment(self, experiment_id: str) -> ExperimentInfo:
        """The experiment (NotFoundError if it is unknown)."""
        ...

    def subject(self, experiment_id: str | None, model_id: str | None) -> Subject:
        """The subject named (an experiment is looked up first)."""
        ...

    def frame(
        self, subject: Subject, start: datetime, end: datetime, *, lean: bool = False
    ) -> SubjectFrame:
        """The subject's aggregate over the window and its baseline (``lean``: all traffic's)."""
        ...

    def subject_frame(self, call: CheckCall) -> SubjectFrame:
        """The preamble of a check on one subject: validate it, read its frame."""
        ...

    def scored(self, call: CheckCall) -> Scored:
        """The preamble of a check over scored predictions: the frame and the histogram."""
        ...

    def controls(self) -> dict[str, str]:
        """Experiment id -> its control arm."""
        ...

    def attribution_inputs(self, call: CheckCall) -> tuple[SubjectFrame, pd.DataFrame]:
        """All traffic's frame over the window and baseline, and the experiments' rows."""
        ...


CheckRun = Callable[[CheckContext, CheckCall], CheckResult]
"""A check's implementation: read through the context, call the check's pure function."""


@dataclass(frozen=True)
class CheckEntry:
    """One registered check.

    Attributes:
        name: The check's name (its member's name, the LLM's tool name).
        function: The declaration: the signature (``self`` first) and the full docstring.
        scopes: The subjects a playbook may plan it on; empty for checks that need more than a
            subject (a metric), which localization calls itself.
        run: The implementation.
    """

    name: str
    function: Callable[..., CheckResult]
    scopes: tuple[Scope, ...]
    run: CheckRun

    def subject_arguments(self, scope: Scope, subject_id: str | None) -> dict[str, str | None]:
        """The keyword arguments that name a subject of ``scope`` to this check.

        Raises:
            ConfigError: The check does not run on ``scope``.
        """
        if scope not in self.scopes:
            raise ConfigError(
                "scope", scope, f"the {self.name} check runs on {list(self.scopes) or 'no scope'}"
            )
        argument = _SUBJECT_ARGUMENT[scope]
        return {} if argument is None else {argument: subject_id}


@dataclass(frozen=True)
class _Declared:
    scopes: tuple[Scope, ...]
    run: CheckRun
    summary: str
    returns: str
    args: Mapping[str, str] = field(default_factory=dict)


def declare(
    *scopes: Scope,
    run: CheckRun,
    summary: str,
    returns: str = "The check's result.",
    args: Mapping[str, str] | None = None,
) -> Any:
    """Declare a check: the value of a member of the checks protocol, typed by its annotation.

    Args:
        *scopes: The subjects a playbook may plan it on (each but ``global`` needs the shape's
            parameter naming it: ``experiment_id``, ``model_id``).
        run: The implementation.
        summary: The first line of its docstring (what the LLM reads of the tool).
        returns: Its ``Returns:`` text.
        args: Parameter -> description, where this check says it otherwise than its shape.

    Returns:
        A placeholder that :func:`bind` replaces with the check's method.
    """
    return _Declared(tuple(scopes), run, summary, returns, dict(args or {}))


WINDOW_ARGS: Mapping[str, str] = MappingProxyType(
    {"start": "Window start (UTC).", "end": "Window end (UTC, exclusive)."}
)
"""The words for the window every check reads; a shape's ``Args:`` need not repeat them."""


def _shape_args(shape: type) -> dict[str, str]:
    """The ``Args:`` of a shape's ``__call__`` docstring: parameter -> description."""
    args: dict[str, str] = {}
    current = None
    in_args = False
    for line in inspect.cleandoc(shape.__call__.__doc__ or "").splitlines():
        if line == "Args:":
            in_args = True
        elif in_args and line.startswith("        ") and current is not None:
            args[current] += " " + line.strip()
        elif in_args and line.startswith("    "):
            current, _, text = line.strip().partition(":")
            args[current] = text.strip()
        elif in_args and line.strip():
            break
    return args


def _docstring(shape: type, spec: _Declared) -> str:
    """The check's docstring: its summary, every parameter's words, what it returns."""
    words = {**WINDOW_ARGS, **_shape_args(shape), **spec.args}
    params = [p for p in inspect.signature(shape.__call__).parameters if p != "self"]
    missing = [p for p in params if p not in words]
    if missing:
        raise ConfigError(f"{shape.__name__}.Args", missing, "describe every parameter")
    lines = [spec.summary, "", "Args:"]
    lines += [f"    {p}: {words[p]}" for p in params]
    return "\n".join([*lines, "", "Returns:", f"    {spec.returns}"])


def _method(name: str, shape: type, spec: _Declared) -> Callable[..., CheckResult]:
    declared = shape.__call__
    signature = inspect.signature(declared)

    @functools.wraps(declared)
    def method(self: Any, *args: Any, **kwargs: Any) -> CheckResult:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        route: Callable[[str, Mapping[str, Any]], CheckResult] = self.route
        return route(name, arguments)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = _docstring(shape, spec)
    return method


def bind(protocol: type) -> dict[str, CheckEntry]:
    """Bind every :func:`declare` of ``protocol``: its entries, and its methods in their place.

    Raises:
        ConfigError: A declaration's shape is not a callable protocol, or lacks the parameter
            that names one of its scopes.
    """
    hints = typing.get_type_hints(protocol)
    entries: dict[str, CheckEntry] = {}
    for name, spec in list(vars(protocol).items()):
        if not isinstance(spec, _Declared):
            continue
        shape = hints.get(name)
        if not isinstance(shape, type) or "__call__" not in vars(shape):
            raise ConfigError(f"Checks.{name}", shape, "annotate it with a callable protocol")
        params = inspect.signature(shape.__call__).parameters
        for scope in spec.scopes:
            argument = _SUBJECT_ARGUMENT[scope]
            if argument is not None and argument not in params:
                raise ConfigError(f"{name}.scopes", scope, f"the check takes no {argument}")
        method = _method(name, shape, spec)
        setattr(protocol, name, method)
        entries[name] = CheckEntry(name, method, spec.scopes, spec.run)
    return entries
