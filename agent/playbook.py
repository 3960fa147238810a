"""Playbooks: per alert kind, which checks run, which causes they support, what each cause calls
for, and what rules a cause out.

Playbooks are data (``playbooks/*.yaml``), validated when loaded: unknown keys, unknown checks,
causes or mitigations are errors naming the file and the field. The check vocabulary is the
check registry's (:mod:`tools.registry`): a check must be registered and may run only on the
scopes registered for it. Every alert metric must be
covered by exactly one playbook, so an alert can never arrive with no plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.models import AlertMetric, Cause, MitigationAction
from tools.errors import ConfigError
from tools.registry import CheckName, Scope, check_entry, registry
from tools.result import CheckResult
from tools.vocabulary import SeriesMetric

__all__ = [
    "CHECK_NAMES",
    "CauseRule",
    "CheckName",
    "CheckSpec",
    "Playbook",
    "PlaybookSet",
    "RuleOut",
    "Scope",
    "SeriesMetric",
    "Signal",
    "SuspectSpec",
    "WindowSpec",
    "load_playbooks",
    "states",
]

CHECK_NAMES: tuple[str, ...] = tuple(name for name, e in registry().items() if e.scopes)
"""The registered checks a playbook may plan (the others need a metric; localization runs them)."""
SignalVerdict = Literal["fail", "warn"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckSpec(_Strict):
    """A check the playbook runs, and how the report names it."""

    check: CheckName
    scopes: list[Scope] = Field(min_length=1, description="Which subjects it runs on.")
    label: str = Field(min_length=1, description='What was checked: "model fallback".')
    issue: str = Field(min_length=1, description='What a failure is: "increased model fallback".')

    @model_validator(mode="after")
    def _registered(self) -> CheckSpec:
        runs_on = check_entry(self.check).scopes
        wrong = [s for s in self.scopes if s not in runs_on]
        if wrong:
            where = f"only on {list(runs_on)}" if runs_on else "on no subject a playbook plans"
            raise ValueError(f"scopes: the {self.check} check runs {where}, not on {wrong}")
        return self


def states(result: CheckResult, params: Mapping[str, str]) -> bool:
    """Whether ``result``'s params have these values (compared as text, as playbooks write them)."""
    return all(str(result.params.get(k)) == v for k, v in params.items())


def _only_fail() -> list[SignalVerdict]:
    return ["fail"]


class _Finding(_Strict):
    check: CheckName
    verdicts: list[SignalVerdict] = Field(default_factory=_only_fail, min_length=1)
    finding: str | None = Field(
        default=None,
        description="Only when the result's effect name or summary mentions this (lower case).",
    )
    params: dict[str, str] = Field(
        default_factory=dict,
        description="Only when the result's params have these values, e.g. {scope: all_arms}.",
    )
    direction: Literal["up", "down"] | None = Field(
        default=None,
        description="Only when the effect moved this way (a ratio against 1, else against 0).",
    )

    def matches(self, result: CheckResult) -> bool:
        """Whether ``result`` is this finding."""
        if result.verdict not in self.verdicts:
            return False
        if not states(result, self.params):
            return False
        if self.direction is not None:
            effect = result.effect
            if effect is None:
                return False
            null = 1.0 if effect.unit == "ratio" else 0.0
            if (effect.estimate > null) != (self.direction == "up"):
                return False
        if self.finding is None:
            return True
        text = f"{result.effect.name if result.effect else ''} {result.summary}".lower()
        return self.finding.lower() in text


class Signal(_Finding):
    """A check verdict that supports a cause.

    On an experiment, a finding blames the experiment only when a controlled comparison locates
    it in one arm (``located: test_arm``): a shift of every arm at once is not the experiment's
    doing, nor a gap whose worse side is the control, unless the control alone left its own
    baseline (the result's ``control_moved``). ``located: anywhere`` counts any finding on the
    subject (the sample ratio is the experiment's own, whichever arm is short).
    """

    located: Literal["test_arm", "anywhere"] = "test_arm"
    same_slice: bool = Field(
        default=False,
        description=(
            "For a cause confined to one slice, count this finding only when it is located in "
            "that slice: a finding over the whole subject is another fault's, or this one's "
            "diluted beyond telling (clicks lost everywhere are no evidence of a model stale "
            "on web only). For a check that never locates (NE) it means: count it only for a "
            "cause over the whole subject."
        ),
    )
    weight: float = Field(default=1.0, gt=0, le=1)
    primary: bool = Field(
        default=False, description="A fail here is what makes the cause supported."
    )


class RuleOut(_Finding):
    """A finding that rules a cause out (e.g. an outage on all arms rules out an experiment)."""

    all_traffic: bool = Field(
        default=True, description="Only when the finding is not located in one arm."
    )
    spares_controlled: bool = Field(
        default=True,
        description=(
            "Not against an experiment cause whose primary finding is located in a non-control "
            "arm: what hits every arm alike (an outage) cannot explain a gap between the arms."
        ),
    )
    unless: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Not when the cause's own failing primary finding states these params: the direct "
            "evidence this finding stands in for (a prediction shift hints that the predictions "
            "moved; the calibration check's {moved: clicks} says they held)."
        ),
    )
    reason: str = Field(min_length=1)


class CauseRule(_Strict):
    """How the deterministic reasoner recognises one cause and what it proposes for it."""

    cause: Cause
    label: str = Field(min_length=1, description="The cause in words, for the report.")
    scopes: list[Scope] = Field(min_length=1)
    signals: list[Signal] = Field(min_length=1)
    explained_by: list[Cause] = Field(
        default_factory=list, description="More specific causes that explain the same symptom."
    )
    ruled_out_by: list[RuleOut] = Field(default_factory=list)
    moves: list[AlertMetric] | None = Field(
        default=None,
        description=(
            "The alerted metrics this cause can move (None: any). Behind an alert on another "
            "metric it still ranks, after every cause that can move it: an outage on one "
            "country serves no ad there but moves no model's NE."
        ),
    )
    mitigation: dict[Scope, MitigationAction]
    verify_metric: SeriesMetric | None = Field(
        default=None, description="Metric read per minute to verify recovery (None: not judged)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> CauseRule:
        if self.cause == "none":
            raise ValueError("cause: 'none' is the absence of a cause, not a rule")
        if not any(s.primary for s in self.signals):
            raise ValueError(f"signals: cause {self.cause!r} needs at least one primary signal")
        missing = [s for s in self.scopes if s not in self.mitigation]
        if missing:
            raise ValueError(f"mitigation: no action for scopes {missing}")
        if self.cause in self.explained_by:
            raise ValueError(f"explained_by: cause {self.cause!r} cannot explain itself")
        return self


class WindowSpec(_Strict):
    """Where to look, in minutes relative to the alert and its onset."""

    lookback_minutes: int = Field(default=120, gt=0, description="Before the alert, for onset.")
    min_minutes: int = Field(default=30, gt=0, description="Shortest window the checks run on.")
    baseline_minutes: int = Field(default=120, gt=0, description="Before the onset, as baseline.")
    verify_minutes: int = Field(default=30, gt=0, description="After an action, to verify it.")
    verify_min_points: int = Field(default=5, gt=0, description="Minutes needed to verify.")


def _business_metrics() -> list[AlertMetric]:
    return ["revenue", "ctr"]


class SuspectSpec(_Strict):
    """How a global alert picks the experiments and models to examine.

    The alert's metric is attributed to experiments, and so is each ``scan_metrics`` metric (a
    fallback or error spike in one experiment barely moves revenue, but owns the fallback rate's
    change). Experiments whose arm-vs-control shift is significant (Holm-adjusted over every arm,
    ``p <= alpha``) come first, most significant first; when the alert's metric itself moved
    significantly, its contributors of at least ``min_share`` fill the remaining places.
    An alert naming an experiment examines that experiment, and for a ``beyond_experiment`` metric
    the production model (when ``production_model``) and all traffic too.
    """

    max_experiments: int = Field(default=3, ge=0)
    min_share: float = Field(default=0.1, ge=0, le=1, description="Of the explained delta.")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Significance of a contribution.")
    scan_metrics: list[SeriesMetric] = Field(default_factory=list)
    production_model: bool = True
    beyond_experiment: list[AlertMetric] = Field(
        default_factory=_business_metrics,
        description=(
            "Alert metrics for which an alert naming an experiment also examines the production "
            "model and all traffic: every arm of the experiment shares them, so a cause outside "
            "the experiment moves its arms together. Default: the business metrics (revenue, "
            "CTR), which move with anything."
        ),
    )


class Playbook(_Strict):
    """One playbook: a family of alert kinds and how to investigate them."""

    name: str = Field(pattern=r"^[a-z0-9_\-]+$")
    description: str = ""
    alerts: list[AlertMetric] = Field(min_length=1)
    onset_metric: AlertMetric | None = Field(
        default=None, description="Metric whose change point is the onset; the alert's if None."
    )
    window: WindowSpec = Field(default_factory=WindowSpec)
    suspects: SuspectSpec = Field(default_factory=SuspectSpec)
    checks: list[CheckSpec] = Field(min_length=1)
    causes: list[CauseRule] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Playbook:
        checks = {c.check for c in self.checks}
        if len(checks) != len(self.checks):
            raise ValueError("checks: a check is listed twice")
        causes = [c.cause for c in self.causes]
        if len(set(causes)) != len(causes):
            raise ValueError("causes: a cause is listed twice")
        for i, rule in enumerate(self.causes):
            for j, sig in enumerate(rule.signals):
                if sig.check not in checks:
                    raise ValueError(
                        f"causes[{i}].signals[{j}].check: {sig.check!r} is not in checks"
                    )
            for j, out in enumerate(rule.ruled_out_by):
                if out.check not in checks:
                    raise ValueError(
                        f"causes[{i}].ruled_out_by[{j}].check: {out.check!r} is not in checks"
                    )
            for cause in rule.explained_by:
                if cause not in causes:
                    raise ValueError(f"causes[{i}].explained_by: {cause!r} is not a cause here")
        return self

    def spec(self, check: str) -> CheckSpec | None:
        """The spec of ``check`` in this playbook, if it runs."""
        return next((c for c in self.checks if c.check == check), None)

    def rule(self, cause: str) -> CauseRule | None:
        """The rule of ``cause`` in this playbook, if it has one."""
        return next((c for c in self.causes if c.cause == cause), None)


class PlaybookSet:
    """Every alert metric mapped onto exactly one playbook.

    Args:
        playbooks: The playbooks; together they must cover every alert metric exactly once.

    Raises:
        ConfigError: A metric is covered twice or not at all.
    """

    def __init__(self, playbooks: Iterable[Playbook]) -> None:
        self._by_name: dict[str, Playbook] = {}
        self._by_metric: dict[str, Playbook] = {}
        for book in playbooks:
            if book.name in self._by_name:
                raise ConfigError("name", book.name, "two playbooks have this name")
            self._by_name[book.name] = book
            for metric in book.alerts:
                other = self._by_metric.get(metric)
                if other is not None:
                    raise ConfigError(
                        f"{book.name}.alerts", metric, f"already covered by playbook {other.name!r}"
                    )
                self._by_metric[metric] = book
        missing = [m for m in get_args(AlertMetric) if m not in self._by_metric]
        if missing:
            raise ConfigError("alerts", missing, "no playbook covers these alert metrics")

    def for_metric(self, metric: str) -> Playbook:
        """The playbook of an alert metric."""
        book = self._by_metric.get(metric)
        if book is None:
            raise ConfigError("metric", metric, "no playbook covers this alert metric")
        return book

    def get(self, name: str) -> Playbook:
        """A playbook by name."""
        book = self._by_name.get(name)
        if book is None:
            raise ConfigError("playbook", name, f"unknown playbook; have {sorted(self._by_name)}")
        return book

    @property
    def playbooks(self) -> Mapping[str, Playbook]:
        """Playbooks by name."""
        return dict(self._by_name)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


def _parse(source: str, text: str) -> Playbook:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(source, type(data).__name__, "a playbook is a mapping")
    try:
        return Playbook.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}:{field}", err.get("input"), err["msg"]) from exc


def load_playbooks(folder: Path | None = None) -> PlaybookSet:
    """Load and validate playbooks.

    Args:
        folder: A folder of ``*.yaml`` playbooks; the shipped ones (package ``playbooks``) if
            None.

    Returns:
        The validated set, covering every alert metric.

    Raises:
        ConfigError: A file is not valid YAML, breaks the schema (the field is named, prefixed
            by the file name), or the set leaves a metric uncovered.
    """
    sources: Sequence[Traversable | Path]
    if folder is None:
        from playbooks import playbook_files

        sources = list(playbook_files())
    else:
        if not folder.is_dir():
            raise ConfigError("playbooks_dir", str(folder), "not a folder")
        sources = sorted(folder.glob("*.yaml"))
    if not sources:
        raise ConfigError("playbooks_dir", str(folder), "no *.yaml playbooks found")
    return PlaybookSet(_parse(src.name, src.read_text(encoding="utf-8")) for src in sources)
