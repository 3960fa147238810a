"""``Start experiment?``: the preflight that runs before an experiment reaches any user.

Steps, in order (each one a :class:`PreflightStep` of the :class:`PreflightReport`):

1. **validation** — the experiment is a draft and every model its arms serve is registered (the
   checks ``start`` itself makes, run early so the report names them).
2. **replay** — a sample of the last window's production requests is scored by each candidate
   model and by the reference (control's model) through a :class:`~lifecycle.inference.
   ModelRunner`, and judged by :func:`tools.checks.replay.replay_checks`: calibration against the
   logged labels, NE, invalid predictions, distribution shift, latency.
3. **resources** — the candidate's cost per request × the experiment's share of the tier's peak
   traffic, against the tier's capacity. The cost is the one declared in the model registry (the
   serving version's ``ms_per_request``, ``memory_gb``), else the one declared in the
   ``model_costs`` setting (a fallback for versions registered without a cost), else the replay's
   measured p50; the estimate carries the measured cost beside the declared one and says which
   it used.
4. **shadow** — when a shadow run was logged (the optional ``shadow_predictions`` table), the
   candidate's live predictions are judged against the served ones with the same checks.
5. **risk** — the :class:`~lifecycle.risk.RiskModel` scores the launch and places it in a zone.

The decision: any failed step refuses the start (``red``); otherwise the risk zone decides —
green starts, yellow needs on-call's approval, red is refused unless on-call overrides it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import pandas as pd

from lifecycle.inference import InferenceError, InferenceUnavailable, ModelRunner
from lifecycle.preflight_models import (
    CONCURRENT_DAYS,
    HISTORY_DAYS,
    Decision,
    PreflightReport,
    PreflightStep,
    ResourceEstimate,
    RiskSummary,
    StepName,
    decide,
    worst,
)
from lifecycle.resources import Capacity, ModelCost, estimate_resources
from lifecycle.risk import IncidentHistory, LaunchFeatures, RiskModel
from lifecycle.views import ExperimentView, ModelView
from tools.checks.replay import ReplayParams, ReplaySample, replay_checks
from tools.errors import ConfigError, TelemetryError
from tools.result import CheckResult, Verdict
from tools.vocabulary import utc_now

__all__ = [
    "CONCURRENT_DAYS",
    "HISTORY_DAYS",
    "Capacity",
    "Decision",
    "Experiments",
    "ModelCost",
    "Preflight",
    "PreflightReport",
    "PreflightStep",
    "RequestSource",
    "ResourceEstimate",
    "RiskSummary",
    "ShadowSource",
    "StepName",
    "decide",
    "judge_shadow",
]


class Experiments(Protocol):
    """What the preflight reads of the experiment core (``ExperimentService`` has it)."""

    def get(self, experiment_id: str) -> ExperimentView:
        """One experiment."""
        ...

    def list(self) -> list[ExperimentView]:
        """Every experiment."""
        ...

    def models(self) -> builtins.list[ModelView]:
        """Every registered model version."""
        ...


class RequestSource(Protocol):
    """Logged production requests (``tools.telemetry.TelemetryReader`` has it)."""

    def sample_requests(
        self, start: datetime, end: datetime, *, model_id: str | None = None, limit: int = 20_000
    ) -> pd.DataFrame:
        """The latest ``limit`` requests of the window served by ``model_id``."""
        ...


class ShadowSource(Protocol):
    """Shadow predictions of an experiment paired with the served ones, one sample per arm
    (``lifecycle.inference.ShadowLog`` has it)."""

    def shadow_samples(
        self, experiment_id: str, start: datetime, end: datetime
    ) -> list[ReplaySample]:
        """Each candidate arm's logged shadow predictions beside the served predictions and
        labels (``ReplaySample.arm`` names the arm); empty when there was no shadow run."""
        ...


class Preflight:
    """Runs the preflight of one experiment over the given ports.

    Args:
        experiments: The experiment core (reads only).
        runner: Scores logged requests with a model (None: the replay is inconclusive).
        requests: Logged production requests (None: the replay is inconclusive).
        production_model: The reference when control serves no model of its own.
        capacity: The serving tier.
        declared: Declared costs per model id, for versions whose registry entry declares none
            (the ``model_costs`` setting); the registry's declaration comes first.
        risk: The trained risk model (None: the risk step is inconclusive, zone yellow).
        incidents: Vigil's own investigations, counted per owner and layer.
        shadow: Shadow predictions, when the experiment ran in shadow mode.
        params: Thresholds of the replay checks.
        window_minutes: The window of requests replayed (ending now).
        sample: Most requests replayed.
        clock: The current time (UTC).
    """

    def __init__(
        self,
        experiments: Experiments,
        *,
        runner: ModelRunner | None = None,
        requests: RequestSource | None = None,
        production_model: str | None = None,
        capacity: Capacity | None = None,
        declared: Mapping[str, ModelCost] | None = None,
        risk: RiskModel | None = None,
        incidents: IncidentHistory | None = None,
        shadow: ShadowSource | None = None,
        params: ReplayParams | None = None,
        window_minutes: int = 60,
        sample: int = 20_000,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._experiments = experiments
        self._runner = runner
        self._requests = requests
        self._production = production_model
        self._capacity = capacity or Capacity()
        self._declared = dict(declared or {})
        self._risk = risk
        self._incidents = incidents
        self._shadow = shadow
        self._params = params or ReplayParams()
        self._window = timedelta(minutes=window_minutes)
        self._sample = sample
        self._clock = clock

    def run(self, experiment_id: str) -> PreflightReport:
        """Run every step for ``experiment_id`` (nothing changes; :meth:`ExperimentService.start`
        is the caller's, after the decision)."""
        began = time.perf_counter()
        now = self._clock()
        exp = self._experiments.get(experiment_id)
        registry = self._experiments.models()
        reference = exp.arms[exp.control].model or self._production
        candidates = {
            arm: a.model
            for arm, a in exp.arms.items()
            if arm != exp.control and a.model is not None and a.model != reference
        }
        steps = [_timed(lambda: self._validation(exp, registry))]
        replayed: dict[str, list[CheckResult]] = {}
        steps.append(
            _timed(lambda: self._replay(exp, candidates, reference, registry, now, replayed))
        )
        estimates: list[ResourceEstimate] = []
        steps.append(
            _timed(
                lambda: estimate_resources(
                    exp, candidates, registry, replayed, self._capacity, self._declared, estimates
                )
            )
        )
        try:
            shadow = (
                self._shadow.shadow_samples(exp.id, now - self._window, now) if self._shadow else []
            )
        except TelemetryError as exc:
            steps.append(
                PreflightStep(
                    name="shadow", verdict="inconclusive", summary=f"Shadow run not read: {exc}"
                )
            )
            shadow = []
        if shadow:
            steps.append(_timed(lambda: judge_shadow(shadow, self._params)))
        risk = self._score(exp, candidates, steps, now)
        steps.append(_risk_step(risk, self._risk is not None))
        zone, decision = decide(steps, risk.zone if risk else None)
        return PreflightReport(
            experiment_id=exp.id,
            name=exp.name,
            owner=exp.owner,
            layer=exp.layer,
            candidates=candidates,
            reference=reference,
            checked_at=now,
            steps=steps,
            resources=estimates,
            risk=risk,
            zone=zone,
            decision=decision,
            seconds=time.perf_counter() - began,
        )

    # -- steps --------------------------------------------------------------------------------

    def _validation(self, exp: ExperimentView, registry: list[ModelView]) -> PreflightStep:
        known = {m.id for m in registry if m.status == "active"}
        problems = []
        if exp.status != "draft":
            problems.append(f"it is {exp.status}, not a draft")
        for arm, a in exp.arms.items():
            if a.model is not None and a.model not in known:
                problems.append(f"arm {arm} serves {a.model}, which is not registered")
        if problems:
            return PreflightStep(
                name="validation", verdict="fail", summary="; ".join(problems) + "."
            )
        summary = f"Configuration is valid: {len(exp.arms)} arms, models registered."
        if exp.rollout.shadow:
            summary += (
                f" It starts in shadow mode: its candidates score live requests for at least "
                f"{exp.rollout.shadow_minutes} minutes, control served, before its first stage."
            )
        return PreflightStep(name="validation", verdict="ok", summary=summary)

    def _replay(
        self,
        exp: ExperimentView,
        candidates: Mapping[str, str],
        reference: str | None,
        registry: list[ModelView],
        now: datetime,
        out: dict[str, list[CheckResult]],
    ) -> PreflightStep:
        if not candidates:
            return PreflightStep(
                name="replay", verdict="ok", summary="No arm serves a new model: nothing to replay."
            )
        if self._runner is None or self._requests is None or reference is None:
            missing = "an inference server" if self._runner is None else "logged requests"
            if reference is None:
                missing = "a production model to compare with"
            return PreflightStep(
                name="replay", verdict="inconclusive", summary=f"Not replayed: no {missing}."
            )
        try:
            frame = self._requests.sample_requests(
                now - self._window, now, model_id=reference, limit=self._sample
            )
        except TelemetryError as exc:
            return PreflightStep(
                name="replay", verdict="inconclusive", summary=f"Not replayed: {exc}"
            )
        if frame.empty:
            return PreflightStep(
                name="replay",
                verdict="no_data",
                summary=f"No requests of {reference} in the last {_minutes(self._window)} minutes.",
            )
        serving = {m.id: m.version for m in registry if m.serving}
        try:
            ref = self._runner.score(reference, serving.get(reference), frame)
            checks: list[CheckResult] = []
            for arm, model in candidates.items():
                cand = self._runner.score(model, serving.get(model), frame)
                sample = ReplaySample(
                    cand.predictions,
                    ref.predictions,
                    frame["label"].to_numpy(dtype=float),
                    cand.latency_ms,
                    ref.latency_ms,
                    source="replay",
                    experiment=exp.id,
                    arm=arm,
                )
                out[arm] = replay_checks(sample, self._params)
                checks.extend(out[arm])
        except (InferenceError, InferenceUnavailable) as exc:
            return PreflightStep(
                name="replay", verdict="inconclusive", summary=f"Not replayed: {exc}"
            )
        verdict = worst(checks)
        bad = [c.summary for c in checks if c.verdict != "ok"]
        names = ", ".join(candidates.values())
        summary = f"Replayed {len(frame):,} requests of {reference} through {names}"
        summary += (
            ": " + " ".join(bad) if bad else ": calibration, NE, predictions and latency hold."
        )
        return PreflightStep(name="replay", verdict=verdict, summary=summary, checks=checks)

    def _score(
        self,
        exp: ExperimentView,
        candidates: Mapping[str, str],
        steps: Sequence[PreflightStep],
        now: datetime,
    ) -> RiskSummary | None:
        if self._risk is None:
            return None
        features = self.features(exp, bool(candidates), steps, now)
        a = self._risk.assess(features)
        return RiskSummary(
            probability=a.probability,
            percentile=a.percentile,
            zone=a.zone,
            kind=a.kind,
            top=[(c.feature, c.value, c.delta) for c in a.top(3)],
        )

    def features(
        self, exp: ExperimentView, model_change: bool, steps: Sequence[PreflightStep], now: datetime
    ) -> LaunchFeatures:
        """The launch's risk features from the experiment, the steps so far and the history."""

        def count(name: StepName, verdict: Verdict) -> float:
            return float(
                sum(c.verdict == verdict for s in steps if s.name == name for c in s.checks)
            )

        since = now - timedelta(days=HISTORY_DAYS)
        owner = self._incidents.incidents(since=since, owner=exp.owner) if self._incidents else 0
        layer = self._incidents.incidents(since=since, layer=exp.layer) if self._incidents else 0
        near = timedelta(days=CONCURRENT_DAYS)
        concurrent = sum(
            1
            for other in self._experiments.list()
            if other.id != exp.id
            and other.layer == exp.layer
            and other.launched_at is not None
            and abs(other.launched_at - now) <= near
        )
        return LaunchFeatures(
            traffic_share=exp.traffic_pct / 100,
            model_change=float(model_change),
            offline_fail=count("replay", "fail"),
            offline_warn=count("replay", "warn"),
            shadow_fail=count("shadow", "fail"),
            shadow_warn=count("shadow", "warn"),
            owner_incidents=float(owner),
            layer_incidents=float(layer),
            night_launch=float(now.hour >= 20 or now.hour < 6),
            weekend_launch=float(now.weekday() >= 5),
            concurrent_launches=float(concurrent),
        )


def _timed(step: Callable[[], PreflightStep]) -> PreflightStep:
    began = time.perf_counter()
    out = step()
    return out.model_copy(update={"seconds": time.perf_counter() - began})


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def judge_shadow(
    samples: Sequence[ReplaySample], params: ReplayParams | None = None
) -> PreflightStep:
    """The shadow step: a shadow run's predictions judged against the served ones, each candidate
    arm on its own (the replay's checks, ``source: shadow``). The preflight and the rollout
    controller, which ends a shadow run on it, both call this.

    The step's verdict is the worst of every arm's checks, so one failing arm fails the shadow
    run; its summary names each arm that did not hold, and every check carries its arm.

    Args:
        samples: One per candidate arm: its shadow predictions beside the served ones and the
            clicks (``ReplaySample.arm`` names the arm).
        params: Thresholds of the replay checks.

    Raises:
        ConfigError: When ``samples`` is empty or names an arm twice.
    """
    arms = [s.arm or "?" for s in samples]
    if not samples:
        raise ConfigError("samples", [], "a shadow run is judged on at least one arm's sample")
    if len(set(arms)) != len(arms):
        raise ConfigError("samples", arms, "one sample per arm")
    params = params or ReplayParams()
    checks: list[CheckResult] = []
    parts: list[str] = []
    failed: list[str] = []
    for arm, sample in zip(arms, samples, strict=True):
        own = replay_checks(sample, params)
        checks.extend(own)
        if worst(own) == "fail":
            failed.append(arm)
        bad = [c.summary for c in own if c.verdict != "ok"]
        n = sample.labels.shape[0]
        head = f"arm {arm}, {n:,} live requests scored beside the served model"
        parts.append(
            f"{head} ({worst(own)}): " + " ".join(bad)
            if bad
            else f"{head}: calibration, NE, predictions and latency hold."
        )
    verdict = worst(checks)
    lead = f"Shadow run failed in arm {', '.join(failed)}" if failed else "Shadow run"
    summary = f"{lead}: " + " ".join(parts)
    return PreflightStep(name="shadow", verdict=verdict, summary=summary, checks=checks)


def _risk_step(risk: RiskSummary | None, trained: bool) -> PreflightStep:
    if risk is None:
        why = "no risk model is trained" if not trained else "the launch could not be scored"
        return PreflightStep(
            name="risk", verdict="inconclusive", summary=f"No risk score: {why} (zone yellow)."
        )
    top = ", ".join(f"{f} = {v:g} (+{d:.1%})" for f, v, d in risk.top) or "none stands out"
    verdict: Verdict = "ok" if risk.zone == "green" else "warn"
    return PreflightStep(
        name="risk",
        verdict=verdict,
        summary=(
            f"Risk {risk.probability:.1%} (riskier than {risk.percentile:.0%} of past launches): "
            f"{risk.zone}; top features: {top}."
        ),
    )
