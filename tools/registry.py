"""The check registry: every diagnostic check declared once, and everything else derived from it.

:class:`Checks` is the typed interface the agent, the LLM and the fakes hold. Each check is one
member, annotated with its shape (a callable protocol below: the signature and the ``Args:`` the
LLM reads, shared by checks that take the same arguments) and assigned its declaration
(:func:`~tools._checkspec.declare`: the scopes a plan may run it on, its summary, and its
implementation, a few lines that read through the :class:`CheckContext` and call the check's pure
function in ``tools/checks/``). From that one declaration come:

- the check names (:data:`CheckName`, :data:`CHECKS`) and the playbooks' vocabulary (a playbook's
  check must be registered and may only run on the scopes registered for it);
- the LLM's tool schemas (``agent.llm_tools``: each declaration's signature and docstring);
- the methods of every implementation: each call, its arguments bound by name, goes to the
  instance's ``route`` — :class:`RoutedChecks`; ``tools.toolbox.Toolbox`` routes it to the
  declared implementation, the test fakes to their script — so nothing copies a signature;
- the dispatch of a planned check (:func:`run_check`) and the timing of every check.

Adding a check: write its function (``tools/checks/<name>.py``), and here add its name to
:data:`CheckName` and its member to :class:`Checks` with its implementation. The import fails if
a name and a member disagree; mypy checks every caller against the shape and the implementation
against :data:`~tools._checkspec.CheckRun`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, Protocol, get_args

import pandas as pd

from tools._checkspec import (
    CheckCall,
    CheckContext,
    CheckEntry,
    CheckRun,
    Scope,
    Scored,
    bind,
    declare,
)
from tools.errors import ConfigError
from tools.result import CheckResult
from tools.vocabulary import MetricName

__all__ = [
    "CHECKS",
    "AttributionCheck",
    "CheckCall",
    "CheckContext",
    "CheckEntry",
    "CheckName",
    "CheckRun",
    "Checks",
    "ExperimentCheck",
    "MetricCheck",
    "RoutedChecks",
    "Scope",
    "Scored",
    "SubjectCheck",
    "WindowCheck",
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


# --- shapes: the signatures checks share ------------------------------------------------------


class SubjectCheck(Protocol):
    """A check on one subject: an experiment's arms vs control, one model, or all traffic."""

    def __call__(
        self,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
        model_id: str | None = None,
    ) -> CheckResult:
        """The arguments besides the window (``WINDOW_ARGS``).

        Args:
            experiment_id: Compare each arm of this experiment with its control.
            model_id: Without an experiment: compare this model with its own baseline.
        """
        ...


class ExperimentCheck(Protocol):
    """A check of one experiment's assignment."""

    def __call__(self, start: datetime, end: datetime, experiment_id: str) -> CheckResult:
        """The arguments besides the window (``WINDOW_ARGS``).

        Args:
            experiment_id: The experiment.
        """
        ...


class AttributionCheck(Protocol):
    """A check that explains a change of a global metric against a baseline."""

    def __call__(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        baseline_start: datetime | None = None,
        baseline_end: datetime | None = None,
    ) -> CheckResult:
        """The arguments besides the window (``WINDOW_ARGS``).

        Args:
            metric: ``revenue``, ``ctr``, ``error_rate``, ``fallback_rate``, ``invalid_rate``,
                ``calibration``, ``ne``; or ``srm``: every experiment's split against its
                configured weights (Holm over the experiments; no baseline).
            baseline_start: Baseline start; default ``baseline_minutes`` before ``start``.
            baseline_end: Baseline end; default ``start``.
        """
        ...


class MetricCheck(Protocol):
    """A check of one metric's series, per arm of an experiment or for all traffic."""

    def __call__(
        self,
        metric: MetricName,
        start: datetime,
        end: datetime,
        experiment_id: str | None = None,
    ) -> CheckResult:
        """The arguments besides the window (``WINDOW_ARGS``).

        Args:
            metric: ``revenue``, ``ctr``, ``ne``, ``calibration``, ``fallback_rate``,
                ``error_rate``, ``invalid_rate``, ``latency_p99`` or ``latency_mean``.
            experiment_id: Read each arm of this experiment against its control; None reads all
                traffic against its seasonal or pre-window level.
        """
        ...


class WindowCheck(Protocol):
    """A check of all traffic over a window."""

    def __call__(self, start: datetime, end: datetime) -> CheckResult:
        """The window only (its words: ``WINDOW_ARGS``)."""
        ...


# --- implementations: read through the context, call the pure function -----------------------
# (each imports its check on first use, so that importing the registry stays cheap)


def _prediction(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.checks import prediction_check
    from tools.telemetry import to_datetime

    s = ctx.scored(call)
    w, subject = s.frame.window, s.frame.subject

    def slices(bins: tuple[int, int]) -> pd.DataFrame:
        return ctx.reader.slice_histogram(
            subject,
            to_datetime(w.fetch_start),
            to_datetime(w.end),
            block_minutes=s.histogram["block_minutes"],
            bins=bins,
        )

    return prediction_check(s.frame, **s.histogram, slices=slices, params=ctx.settings.prediction)


def _calibration(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.aggregates import Subject
    from tools.catalog import training_values
    from tools.checks import calibration_check

    s = ctx.scored(call)
    training = training_values(ctx.reader, s.frame, "training_calibration")
    # A model's seasonal reference is the rest of the traffic (the lean cube infra reads too).
    traffic = (
        ctx.frame(Subject(), call.start, call.end, lean=True)
        if s.frame.subject.kind == "model"
        else None
    )
    return calibration_check(
        s.frame,
        **s.histogram,
        training=training,
        traffic=traffic,
        params=ctx.settings.calibration,
    )


def _ne(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.catalog import training_values
    from tools.checks import ne_check

    s = ctx.scored(call)
    training = training_values(ctx.reader, s.frame, "training_ne")
    return ne_check(s.frame, **s.histogram, training=training, params=ctx.settings.ne)


def _staleness(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.catalog import cadence
    from tools.checks import staleness_check

    s = ctx.scored(call)  # the frame and the histogram NE reads (one statement, cached)
    # Every model the subject served, each on its own cadence: an arm also serves the models
    # other layers' experiments put on part of its requests.
    models = s.frame.served_models()
    snapshots = ctx.reader.snapshots(models)
    refresh = {model: cadence(ctx.models, model, snapshots) for model in models}
    return staleness_check(
        s.frame, snapshots, refresh=refresh, **s.histogram, params=ctx.settings.staleness
    )


def _fallback(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.checks import fallback_check

    return fallback_check(ctx.subject_frame(call), params=ctx.settings.fallback)


def _srm(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.aggregates import Subject
    from tools.checks import srm_check

    experiment_id = call.need_experiment()
    info = ctx.experiment(experiment_id)
    frame = ctx.frame(Subject(experiment_id=experiment_id), call.start, call.end)
    units = ctx.reader.units(experiment_id, call.start, call.end)
    return srm_check(
        units, info.arms, experiment_id=experiment_id, frame=frame, params=ctx.settings.srm
    )


def _attribution(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.checks import attribution_check

    metric = call.need_metric()
    if metric == "srm":
        return _srm_scan(ctx, call)
    frame, experiments = ctx.attribution_inputs(call)
    return attribution_check(
        metric,
        frame,
        experiments=experiments,
        controls=ctx.controls(),
        params=ctx.settings.attribution,
    )


def _srm_scan(ctx: CheckContext, call: CheckCall) -> CheckResult:
    """Attribution of a sample ratio mismatch: every experiment's split, one statement."""
    from tools.checks.srm import srm_scan
    from tools.errors import NotFoundError

    units = ctx.reader.units(None, call.start, call.end)
    weights: dict[str, dict[str, float]] = {}
    for exp in units["experiment_id"].unique() if len(units) else []:
        try:
            weights[str(exp)] = dict(ctx.experiment(str(exp)).arms)
        except NotFoundError:
            continue  # exposures of an experiment the catalog does not know
    return srm_scan(units, weights, params=ctx.settings.srm)


def _change_point(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.checks import SubjectFrame, change_point_check
    from tools.metrics import metric_spec
    from tools.telemetry import to_datetime

    metric = call.need_metric()
    metric_spec(metric)
    subject = ctx.subject(call.experiment_id, None)
    lean = subject.kind == "all" and metric not in ("ne",)
    frame = ctx.frame(subject, call.start, call.end, lean=lean)
    seasonal = None
    if subject.kind != "experiment":
        shift = ctx.settings.season_minutes
        season = timedelta(minutes=shift)
        cube = ctx.reader.cube(
            subject,
            to_datetime(frame.window.fetch_start) - season,
            to_datetime(frame.window.end) - season,
            latency=subject.kind == "all",
            lean=lean,
        )
        if len(cube):
            seasonal = SubjectFrame(
                cube.assign(minute=cube["minute"] + shift),
                frame.window,
                subject,
                ctx.reader.schema.dimensions,
            )
    return change_point_check(metric, frame, seasonal=seasonal, params=ctx.settings.change_point)


def _infra(ctx: CheckContext, call: CheckCall) -> CheckResult:
    from tools.aggregates import Subject
    from tools.checks import infra_check
    from tools.telemetry import to_datetime

    frame = ctx.frame(Subject(), call.start, call.end, lean=True)
    result = infra_check(frame, params=ctx.settings.infra)
    if result.verdict not in ("fail", "warn"):
        return result
    # Only a finding needs the per-experiment split that says whether an arm owns it.
    experiments = ctx.reader.experiments(
        to_datetime(frame.window.fetch_start), call.end, sums=("n", "n_error")
    )
    return infra_check(
        frame, experiments=experiments, controls=ctx.controls(), params=ctx.settings.infra
    )


# --- the declaration ----------------------------------------------------------------------------

_ALL: tuple[Scope, ...] = ("experiment", "model", "global")


class Checks(Protocol):
    """The diagnostic checks over one telemetry store (``tools.toolbox.Toolbox``, or a fake).

    Every check returns a :class:`~tools.result.CheckResult`; times are UTC (naive datetimes are
    UTC, aware ones are converted). The summaries below are what the LLM reads.
    """

    prediction: SubjectCheck = declare(
        *_ALL,
        run=_prediction,
        summary="Check predictions: invalid values (NaN, outside [0, 1]), collapse, distribution "
        "shift.",
        returns="The check's result; ``fail`` names the arm, onset and dimension values.",
    )
    calibration: SubjectCheck = declare(
        *_ALL,
        run=_calibration,
        summary="Check calibration (sum of predictions / sum of clicks) per arm and by "
        "prediction bucket.",
        returns="The check's result. A shift in every arm at once (params ``scope == "
        '"all_arms"``) points at lost click logs rather than one model.',
    )
    ne: SubjectCheck = declare(
        *_ALL,
        run=_ne,
        summary="Check normalized entropy (mean log loss / entropy of the CTR) vs control and "
        "training.",
    )
    staleness: SubjectCheck = declare(
        *_ALL,
        run=_staleness,
        summary="Check the age of the served model snapshots (also one pinned in a slice) "
        "against their refresh cadence and control, and whether NE degraded as a ramp (a "
        "stale model: params shape 'ramp') or a step (a worse model: 'step').",
        returns="The check's result; ``onset`` is the first refresh that did not happen.",
        args={
            "experiment_id": "Check every arm of this experiment.",
            "model_id": "Without an experiment: check this model.",
        },
    )
    fallback: SubjectCheck = declare(
        *_ALL,
        run=_fallback,
        summary="Check the share of requests served by the fallback model, per arm vs control.",
        returns="The check's result; ``fail`` names the arm, onset and dimension values.",
    )
    srm: ExperimentCheck = declare(
        "experiment",
        run=_srm,
        summary="Check sample ratio mismatch: units per arm against the configured weights "
        "(chi-square).",
        returns="The check's result; ``fail`` at p < 0.001 names the arm short of units.",
    )
    attribution: AttributionCheck = declare(
        run=_attribution,
        summary="Rank the experiments and dimension values that explain a change of a global "
        "metric.",
        returns="The check's result with every candidate's share of the change in its evidence.",
    )
    change_point: MetricCheck = declare(
        run=_change_point,
        summary="Find the onset minute of a regression of a metric (arm vs control, or vs "
        "baseline).",
        returns="The check's result with the onset.",
    )
    infra: WindowCheck = declare(
        "global",
        run=_infra,
        summary="Check error rate and latency p99 of all traffic against its baseline, by "
        "dimension.",
        returns="The check's result; ``experiment``/``arm`` are set only when one arm owns the "
        "errors.",
    )

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
            experiment_id: Per arm of this experiment; None for all traffic.

        Returns:
            Columns ``minute`` (UTC datetime), ``arm``, ``value``.
        """
        ...


_REGISTRY = bind(Checks)
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


class RoutedChecks(Checks):
    """Checks whose every check goes to :meth:`route` with its arguments by name.

    Subclass it and implement :meth:`route` (and :meth:`metric_series`): the check methods, with
    the declared signatures, come from the registry. ``tools.toolbox.Toolbox`` routes to each
    check's declared implementation; fakes and recorders answer from a script.
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
