"""The launch risk score: P(incident | change), explained per feature, in green / yellow / red.

After Meta's diff risk score (Abreu et al., arXiv 2410.06351): a classifier trained on past
changes and their incidents ranks a new change; the zones are set by *gating shares* — red is the
riskiest ``red_share`` of past launches (5 %), yellow the next ones up to ``yellow_share`` (25 %),
and it is scored the paper's way, by the share of incidents caught when gating the riskiest 5 %,
10 % and 50 % of changes (:func:`gating_curve`).

The model is scikit-learn: a logistic regression on log-scaled counts (``logistic``), the same with
pairwise interactions (``logistic_interactions``) or gradient-boosted trees (``boosting``); which
one is chosen by cross-validation on the training data only (:func:`select_kind`). Each score is
explained per feature by occlusion: how much the probability drops when that feature alone is set
to its training median.

The features of an experiment launch are :data:`LAUNCH_FEATURES`; the owner's and the layer's
incident history come from Vigil's own investigations through the :class:`IncidentHistory` port,
so that lifecycle never imports the agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol, assert_never

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from tools.errors import ConfigError

__all__ = [
    "GATES",
    "LAUNCH_FEATURES",
    "LOG_FEATURES",
    "Contribution",
    "Gating",
    "IncidentHistory",
    "LaunchFeatures",
    "ModelKind",
    "RiskAssessment",
    "RiskModel",
    "Zone",
    "gating_curve",
    "select_kind",
]

Zone = Literal["green", "yellow", "red"]
ModelKind = Literal["logistic", "logistic_interactions", "boosting"]
GATES: tuple[float, ...] = (0.05, 0.10, 0.50)
"""The paper's gating shares: the riskiest 5 %, 10 % and 50 % of changes."""

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LaunchFeatures:
    """What the risk model knows about an experiment launch.

    Attributes:
        traffic_share: Share of the layer's units the experiment will reach at full rollout (0..1).
        model_change: 1 when an arm serves a model other than control's (else a parameter change).
        offline_fail: Replay checks that failed.
        offline_warn: Replay checks that warned.
        shadow_fail: Shadow-run checks that failed (0 without a shadow run).
        shadow_warn: Shadow-run checks that warned.
        owner_incidents: Incidents of the owner's experiments in the last 180 days.
        layer_incidents: Incidents in the layer in the last 180 days.
        night_launch: 1 when launched between 20:00 and 06:00 UTC.
        weekend_launch: 1 when launched on a Saturday or Sunday (UTC).
        concurrent_launches: Other experiments of the layer started within three days.
    """

    traffic_share: float
    model_change: float
    offline_fail: float
    offline_warn: float
    shadow_fail: float
    shadow_warn: float
    owner_incidents: float
    layer_incidents: float
    night_launch: float
    weekend_launch: float
    concurrent_launches: float

    def as_row(self) -> dict[str, float]:
        """The features as one row of a frame."""
        return asdict(self)


LAUNCH_FEATURES: tuple[str, ...] = tuple(LaunchFeatures.__dataclass_fields__)
LOG_FEATURES: tuple[str, ...] = ("owner_incidents", "layer_incidents", "concurrent_launches")
"""Counts, log-scaled (``log1p``) before the model sees them."""


class IncidentHistory(Protocol):
    """Vigil's own investigations, counted (the agent implements it; lifecycle only reads)."""

    def incidents(
        self, *, since: datetime, owner: str | None = None, layer: str | None = None
    ) -> int:
        """Investigations since ``since`` that found a cause (not ``none``) in an experiment of
        ``owner`` / of ``layer``."""
        ...


@dataclass(frozen=True)
class Gating:
    """How a risk ranking does on labelled changes.

    Attributes:
        shares: The gating shares (riskiest share of changes gated).
        caught: Share of incidents among the gated changes, one per share.
        auc: Area under the ROC curve.
        changes: Changes scored.
        incidents: Incidents among them.
    """

    shares: tuple[float, ...]
    caught: tuple[float, ...]
    auc: float
    changes: int
    incidents: int


def gating_curve(
    scores: npt.ArrayLike, labels: npt.ArrayLike, shares: Sequence[float] = GATES
) -> Gating:
    """Share of incidents caught when gating the riskiest ``shares`` of changes (ties: stable).

    Raises:
        ConfigError: Scores and labels differ in length, or no change is an incident.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=float)
    if s.shape != y.shape:
        raise ConfigError("labels", y.shape, f"must match the scores' shape {s.shape}")
    total = float(y.sum())
    if total <= 0 or total >= y.size:
        raise ConfigError("labels", total, "need both incidents and clean changes")
    order = np.argsort(-s, kind="stable")
    caught = tuple(float(y[order[: round(y.size * g)]].sum() / total) for g in shares)
    return Gating(tuple(shares), caught, float(roc_auc_score(y, s)), int(y.size), int(total))


def _estimator(kind: ModelKind) -> Pipeline | ClassifierMixin:
    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if kind == "logistic_interactions":
        return make_pipeline(
            StandardScaler(),
            PolynomialFeatures(2, interaction_only=True, include_bias=False),
            StandardScaler(),
            LogisticRegression(max_iter=4000, C=0.05),
        )
    if kind == "boosting":
        return HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40, random_state=0
        )
    assert_never(kind)


def _prepare(x: pd.DataFrame, columns: Sequence[str], log_columns: Sequence[str]) -> F64:
    missing = [c for c in columns if c not in x.columns]
    if missing:
        raise ConfigError("features", missing, f"missing from the frame's {list(x.columns)}")
    out = x[list(columns)].astype(float).copy()
    for c in log_columns:
        out[c] = np.log1p(out[c].clip(lower=0))
    arr: F64 = out.to_numpy(dtype=float)
    return arr


def select_kind(
    x: pd.DataFrame,
    y: npt.ArrayLike,
    kinds: Sequence[ModelKind],
    *,
    log_columns: Sequence[str] = (),
    folds: int = 5,
    seed: int = 0,
) -> tuple[ModelKind, dict[str, float]]:
    """The kind with the best mean gating curve (mean caught at :data:`GATES`) in stratified
    cross-validation over ``x`` — which must be training data only.

    Returns:
        The chosen kind and each kind's cross-validated score.
    """
    if len(kinds) == 1:
        return kinds[0], {}
    target = np.asarray(y, dtype=int)
    data = _prepare(x, list(x.columns), log_columns)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(data, target))
    scores: dict[str, float] = {}
    for kind in kinds:
        got = []
        for train, test in splits:
            est = _estimator(kind).fit(data[train], target[train])
            prob = est.predict_proba(data[test])[:, 1]
            got.append(float(np.mean(gating_curve(prob, target[test]).caught)))
        scores[kind] = float(np.mean(got))
    best = max(kinds, key=lambda k: scores[k])
    return best, scores


@dataclass(frozen=True)
class Contribution:
    """How much one feature adds to a launch's risk (occlusion: vs its training median).

    Attributes:
        feature: The feature's name.
        value: Its value for this launch.
        baseline: Its training median.
        delta: Probability with the value minus probability with the median (positive: riskier).
    """

    feature: str
    value: float
    baseline: float
    delta: float


@dataclass(frozen=True)
class RiskAssessment:
    """The risk of one launch.

    Attributes:
        probability: P(incident | launch) from the model.
        percentile: Share of training launches scored below it (0..1).
        zone: ``red`` (riskiest ``red_share``), ``yellow`` (up to ``yellow_share``) or ``green``.
        contributions: Per feature, the riskiest first.
        kind: The model that scored it.
    """

    probability: float
    percentile: float
    zone: Zone
    contributions: tuple[Contribution, ...]
    kind: ModelKind

    def top(self, k: int = 3) -> tuple[Contribution, ...]:
        """The ``k`` features that add the most risk (those that add none are left out)."""
        return tuple(c for c in self.contributions[:k] if c.delta > 0)


class RiskModel:
    """A fitted risk model with its zone thresholds (build with :meth:`fit`)."""

    def __init__(
        self,
        estimator: Pipeline | ClassifierMixin,
        *,
        kind: ModelKind,
        columns: Sequence[str],
        log_columns: Sequence[str],
        medians: Mapping[str, float],
        training_scores: F64,
        red_share: float,
        yellow_share: float,
    ) -> None:
        self._estimator = estimator
        self.kind: ModelKind = kind
        self.columns = tuple(columns)
        self.log_columns = tuple(log_columns)
        self.medians = dict(medians)
        self._sorted = np.sort(training_scores)
        self.red_share = red_share
        self.yellow_share = yellow_share
        self.red_threshold = float(np.quantile(training_scores, 1 - red_share))
        self.yellow_threshold = float(np.quantile(training_scores, 1 - yellow_share))

    @classmethod
    def fit(
        cls,
        x: pd.DataFrame,
        y: npt.ArrayLike,
        *,
        kind: ModelKind,
        log_columns: Sequence[str] = (),
        red_share: float = 0.05,
        yellow_share: float = 0.25,
    ) -> RiskModel:
        """Fit ``kind`` on ``x`` (one column per feature) and incidents ``y``.

        Raises:
            ConfigError: Shares outside ``0 < red_share < yellow_share < 1``.
        """
        if not 0 < red_share < yellow_share < 1:
            raise ConfigError(
                "risk_red_share", (red_share, yellow_share), "need 0 < red < yellow share < 1"
            )
        columns = list(x.columns)
        data = _prepare(x, columns, log_columns)
        target = np.asarray(y, dtype=int)
        est = _estimator(kind).fit(data, target)
        scores = est.predict_proba(data)[:, 1]
        medians = {c: float(x[c].astype(float).median()) for c in columns}
        return cls(
            est,
            kind=kind,
            columns=columns,
            log_columns=log_columns,
            medians=medians,
            training_scores=scores,
            red_share=red_share,
            yellow_share=yellow_share,
        )

    def predict(self, x: pd.DataFrame) -> F64:
        """P(incident) for each row of ``x``."""
        out: F64 = self._estimator.predict_proba(_prepare(x, self.columns, self.log_columns))[:, 1]
        return out

    def zone(self, probability: float) -> Zone:
        """The zone of a probability under this model's thresholds."""
        if probability >= self.red_threshold:
            return "red"
        if probability >= self.yellow_threshold:
            return "yellow"
        return "green"

    def assess(self, features: LaunchFeatures | Mapping[str, float]) -> RiskAssessment:
        """Score one launch, place it in a zone and explain it per feature."""
        row = features.as_row() if isinstance(features, LaunchFeatures) else dict(features)
        base = pd.DataFrame([row])
        # Row 0 is the launch, row i + 1 the launch with feature i set to its training median.
        variants = pd.concat([base] * (len(self.columns) + 1), ignore_index=True)
        for i, c in enumerate(self.columns):
            variants.loc[i + 1, c] = self.medians[c]
        probs = self.predict(variants)
        p = float(probs[0])
        contributions = sorted(
            (
                Contribution(c, float(row[c]), self.medians[c], p - float(probs[i + 1]))
                for i, c in enumerate(self.columns)
            ),
            key=lambda c: -c.delta,
        )
        percentile = float(np.searchsorted(self._sorted, p, side="left") / self._sorted.size)
        return RiskAssessment(p, percentile, self.zone(p), tuple(contributions), self.kind)

    def save(self, path: str | Path) -> None:
        """Write the model to ``path`` (joblib; load only files you wrote)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path)

    @classmethod
    def load(cls, path: str | Path) -> RiskModel:
        """Read a model written by :meth:`save`.

        Raises:
            ConfigError: The file is missing or holds something else.
        """
        if not Path(path).exists():
            raise ConfigError("risk_model_path", str(path), "no risk model there; train one first")
        model = joblib.load(path)
        if not isinstance(model, RiskModel):
            raise ConfigError("risk_model_path", str(path), "not a Vigil risk model")
        return model
