"""The check registry: every diagnostic check declared once, and everything else derived from it.

:class:`Checks` is the typed interface the agent, the LLM and the fakes hold. Each of its check
methods is registered with :func:`check`, which records the subjects a plan may run it on; from
that one declaration come:

- the check names (:data:`CheckName`, :data:`CHECKS`) and the playbooks' vocabulary (a playbook's
  check must be registered and may only run on the scopes registered for it);
- the LLM's tool schemas (``agent.llm_tools``: each method's typed signature and docstring);
- the dispatch of a planned check (:func:`run_check`) and the timing of every check;
- :class:`RoutedChecks`, an implementation whose every check forwards to one method (fakes,
  recorders), so a fake never copies the signatures.

Adding a check: write its function (``tools/checks/<name>.py``), add its name to
:data:`CheckName` and its registered method here, and implement it on ``tools.toolbox.Toolbox``
(mypy checks the implementation against this declaration; the import fails if a name and a method
disagree).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeVar, get_args

import pandas as pd

from tools.errors import ConfigError
from tools.result import CheckResult
from tools.vocabulary import MetricName

__all__ = [
    "CHECKS",
    "CheckEntry",
    "CheckName",
    "Checks",
    "RoutedChecks",
    "Scope",
    "check",
    "check_entry",
    "registry",
    "run_check",
]

CheckName = Literal[
    "prediction",
    "calibration",
    "ne",
    "staleness",
    "fallback",
    "srm",
    "attribution",
    "change_point",
    "infra",
]
CHECKS: tuple[CheckName, ...] = get_args(CheckName)
Scope = Literal["experiment", "model", "global"]
"""A subject a check runs on: one experiment (arms vs control), one model, or all traffic."""

_SUBJECT_ARGUMENT: Mapping[Scope, str | None] = MappingProxyType(
    {"experiment": "experiment_id", "model": "model_id", "global": None}
)
_F = TypeVar("_F", bound=Callable[..., CheckResult])


@dataclass(frozen=True)
class CheckEntry:
    """One registered check.

    Attributes:
        name: The check's name (its method's name, the LLM's tool name).
        function: The declaration (a method of :class:`Checks`): signature and docstring.
        scopes: The subjects a playbook may plan it on; empty for checks that need more than a
            subject (a metric), which localization calls itself.
    """

    name: CheckName
    function: Callable[..., CheckResult]
    scopes: tuple[Scope, ...]

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


_REGISTRY: dict[str, CheckEntry] = {}


def check(*scopes: Scope) -> Callable[[_F], _F]:
    """Register a method of :class:`Checks` as a check, runnable on ``scopes``.

    Each scope but ``global`` needs the method's parameter that names it (``experiment_id``,
    ``model_id``); a check registered twice, or under a name missing from :data:`CheckName`, is
    refused when this module loads.
    """

    def register(function: _F) -> _F:
        name = function.__name__
        if name not in CHECKS or name in _REGISTRY:
            raise ConfigError("check", name, "not in CheckName, or registered twice")
        params = inspect.signature(function).parameters
        for scope in scopes:
            argument = _SUBJECT_ARGUMENT[scope]
            if argument is not None and argument not in params:
                raise ConfigError(f"{name}.scopes", scope, f"the check takes no {argument}")
        _REGISTRY[name] = CheckEntry(name, function, tuple(scopes))
        return function

    return register


class Checks(Protocol):
    """The diagnostic checks over one telemetry store (``tools.toolbox.Toolbox``, or a fake).

    Every check returns a :class:`~tools.result.CheckResult`; times are UTC (naive datetimes are
    UTC, aware ones are converted). The docstrings below are what the LLM reads.
    """

    @check("experiment", "model", "global")
    def prediction(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Check predictions: invalid values (NaN, outside [0, 1]), collapse, distribution shift.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: Compare each arm of this experiment with its control.
            model_id: Without an experiment: compare this model with its own baseline.

        Returns:
            The check's result; ``fail`` names the arm, onset and dimension values.
        """
        ...

    @check("experiment", "model", "global")
    def calibration(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Check calibration (sum of predictions / sum of clicks) per arm and by prediction bucket.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: Compare each arm of this experiment with its control.
            model_id: Without an experiment: compare this model with its own baseline.

        Returns:
            The check's result. A shift in every arm at once (params ``scope == "all_arms"``)
            points at lost click logs rather than one model.
        """
        ...

    @check("experiment", "model", "global")
    def ne(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Check normalized entropy (mean log loss / entropy of the CTR) vs control and training.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: Compare each arm of this experiment with its control.
            model_id: Without an experiment: compare this model with its own baseline.

        Returns:
            The check's result.
        """
        ...

    @check("experiment", "model", "global")
    def staleness(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Check the age of the served model snapshot against its refresh cadence and control.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: Check every arm of this experiment.
            model_id: Without an experiment: check this model.

        Returns:
            The check's result; ``onset`` is the first refresh that did not happen.
        """
        ...

    @check("experiment", "model", "global")
    def fallback(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """Check the share of requests served by the fallback model, per arm vs control.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: Compare each arm of this experiment with its control.
            model_id: Without an experiment: compare this model with its own baseline.

        Returns:
            The check's result; ``fail`` names the arm, onset and dimension values.
        """
        ...

    @check("experiment")
    def srm(self, start: datetime, end: datetime, experiment_id: str) -> CheckResult:
        """Check sample ratio mismatch: units per arm against the configured weights (chi-square).

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: The experiment.

        Returns:
            The check's result; ``fail`` at p < 0.001 names the arm short of units.
        """
        ...

    @check()
    def attribution(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        baseline_start: datetime | None = None,
        baseline_end: datetime | None = None,
    ) -> CheckResult:
        """Rank the experiments and dimension values that explain a change of a global metric.

        Args:
            metric: ``revenue``, ``ctr``, ``error_rate`` or ``fallback_rate``.
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            baseline_start: Baseline start; default ``baseline_minutes`` before ``start``.
            baseline_end: Baseline end; default ``start``.

        Returns:
            The check's result with every candidate's share of the change in its evidence.
        """
        ...

    @check()
    def change_point(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
    ) -> CheckResult:
        """Find the onset minute of a regression of a metric (arm vs control, or vs baseline).

        Args:
            metric: ``revenue``, ``ctr``, ``ne``, ``calibration``, ``fallback_rate``,
                ``error_rate``, ``invalid_rate``, ``latency_p99`` or ``latency_mean``.
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: Read each arm of this experiment against its control; None reads all
                traffic against its seasonal or pre-window level.

        Returns:
            The check's result with the onset.
        """
        ...

    @check("global")
    def infra(self, start: datetime, end: datetime) -> CheckResult:
        """Check error rate and latency p99 of all traffic against its baseline, by dimension.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).

        Returns:
            The check's result; ``experiment``/``arm`` are set only when one arm owns the errors.
        """
        ...

    def metric_series(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
    ) -> pd.DataFrame:
        """Per-minute values of a metric per arm (all traffic: arm ``all``), for plots.

        Args:
            metric: A metric name (``revenue``, ``ctr``, ``ne``, ``calibration``, ...).
            start: Window start (UTC).
            end: Window end (UTC, exclusive).
            experiment_id: Per arm of this experiment; None for all traffic.

        Returns:
            Columns ``minute`` (UTC datetime), ``arm``, ``value``.
        """
        ...


if set(_REGISTRY) != set(CHECKS):  # pragma: no cover - a declaration error, caught on import
    raise ConfigError("CheckName", sorted(set(CHECKS) ^ set(_REGISTRY)), "declared but not both")


def registry() -> Mapping[CheckName, CheckEntry]:
    """Every registered check by name, in :data:`CHECKS` order."""
    return MappingProxyType({name: _REGISTRY[name] for name in CHECKS})


def check_entry(name: str) -> CheckEntry:
    """The registered check called ``name``.

    Raises:
        ConfigError: No check has that name (the valid names are listed).
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError("check", name, f"unknown check; choose from {list(CHECKS)}")
    return entry


def run_check(
    checks: Checks,
    name: str,
    start: datetime,
    end: datetime,
    scope: Scope,
    subject_id: str | None = None,
) -> CheckResult:
    """Run the check ``name`` of ``checks`` on one subject over ``[start, end)``.

    Args:
        checks: The checks to run (the instance's own method is called, timing wrappers
            included).
        name: A registered check.
        start: Window start (UTC).
        end: Window end (UTC, exclusive).
        scope: The kind of subject.
        subject_id: The experiment or model id (None for all traffic).

    Raises:
        ConfigError: Unknown check, or one that does not run on ``scope``.
    """
    entry = check_entry(name)
    method: Callable[..., CheckResult] = getattr(checks, entry.name)
    return method(start=start, end=end, **entry.subject_arguments(scope, subject_id))


def _forward(entry: CheckEntry) -> Callable[..., CheckResult]:
    signature = inspect.signature(entry.function)

    @functools.wraps(entry.function)
    def forward(self: RoutedChecks, *args: Any, **kwargs: Any) -> CheckResult:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        return self.route(entry.name, arguments)

    return forward


class RoutedChecks(Checks):
    """Checks whose every check forwards to :meth:`route` with its arguments by name.

    For fakes and recorders: subclass it and implement :meth:`route` (and
    :meth:`metric_series`); the check methods, with the declared signatures, come from the
    registry.
    """

    def route(self, name: CheckName, arguments: Mapping[str, Any]) -> CheckResult:
        """Answer the check ``name`` called with ``arguments`` (every parameter, defaults too)."""
        raise NotImplementedError

    def metric_series(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
    ) -> pd.DataFrame:
        """Per-minute values of a metric; a router without series has none."""
        raise NotImplementedError


for _entry in _REGISTRY.values():
    setattr(RoutedChecks, _entry.name, _forward(_entry))
