"""Labelled change histories for the risk model: a simulated launch history and ApacheJIT.

**The simulated launch history** (:func:`simulate_launches`) is a documented generative process,
so that what the risk model can learn is known:

1. *Teams.* ``owners`` owners, each with a latent skill ``s ~ N(0, 1)``; ``layers`` layers, each
   with a latent fragility ``f ~ N(0, 0.8)``.
2. *Launches.* ``n`` launches at uniform times over ``days`` days; each picks an owner and a layer
   uniformly. Launch hours follow working hours (80 % between 08:00 and 18:00 UTC, the rest
   uniform), so night (20:00-06:00) and weekend launches are rarer.
3. *The change.* ``model_change ~ Bernoulli(0.4)`` (else a parameter change); the target traffic
   share ``~ Beta(1.5, 6)``; a latent badness ``b ~ N(0, 1)`` (+0.5 for a model change).
4. *What the gates see.* The replay's failures ``offline_fail ~ Bernoulli(σ(−3 + 1.6 b))`` (it
   catches some bad changes), warnings ``~ Poisson(0.3 + 0.3 max(b, 0))``; a shadow run happens
   for 30 % of model changes, with failures ``~ Bernoulli(σ(−3.2 + 2 b))`` and warnings
   ``~ Poisson(0.2 + 0.4 max(b, 0))``.
5. *The incident.* ``logit P(incident) = −4.6 + 1.1 b + 0.6 model_change + 2.0 traffic_share
   + 1.2 model_change × traffic_share + 1.0 f − 0.8 s + 0.5 night + 0.3 weekend
   + 0.25 concurrent_launches + 0.8 offline_fail``, and ``incident ~ Bernoulli``.
6. *Observable history.* ``owner_incidents`` / ``layer_incidents``: incidents of the owner's / the
   layer's launches in the 180 days before this one (``HISTORY_DAYS``, as the preflight
   counts); ``concurrent_launches``: other launches of the layer within three days either side.
   These carry the latent skill and fragility.

The model never sees ``b``, ``s`` or ``f``.

**ApacheJIT** (:func:`load_apachejit`): real commits of 14 Apache projects labelled bug-inducing,
read in place from ``../shared/data/apachejit`` (its README: train on 2017-2018, test on 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from lifecycle.preflight import HISTORY_DAYS
from lifecycle.risk import (
    LAUNCH_FEATURES,
    LOG_FEATURES,
    Gating,
    ModelKind,
    RiskModel,
    gating_curve,
    select_kind,
)
from tools.errors import ConfigError

__all__ = [
    "APACHEJIT_METRICS",
    "CHANGE_FEATURES",
    "HistoryResult",
    "apachejit_features",
    "evaluate_apachejit",
    "evaluate_history",
    "load_apachejit",
    "simulate_launches",
]

APACHEJIT_METRICS = (
    "la",
    "ld",
    "nf",
    "nd",
    "ns",
    "ent",
    "ndev",
    "age",
    "nuc",
    "aexp",
    "arexp",
    "asexp",
)
DEFAULT_APACHEJIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "apachejit"
_START = datetime(2025, 1, 6, tzinfo=UTC)
CHANGE_FEATURES = (
    "traffic_share",
    "model_change",
    "offline_fail",
    "offline_warn",
    "shadow_fail",
    "shadow_warn",
)
"""The change's own metrics (the plain baseline's features); the rest is context: the owner's and
the layer's incident history, launch time, concurrent launches."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x)))


def simulate_launches(
    n: int = 3000, *, owners: int = 60, layers: int = 8, days: int = 730, seed: int = 0
) -> pd.DataFrame:
    """A launch history drawn by the process of the module docstring.

    Returns:
        One row per launch, in time order: ``launched_at``, ``owner``, ``layer``, the columns of
        :data:`lifecycle.risk.LAUNCH_FEATURES` and ``incident`` (0/1).
    """
    if n < 10:
        raise ConfigError("n", n, "a launch history needs at least 10 launches")
    rng = np.random.default_rng(seed)
    skill = rng.normal(0, 1, owners)
    fragility = rng.normal(0, 0.8, layers)
    work = rng.random(n) < 0.8
    hour_drawn = np.where(work, rng.uniform(8, 18, n), rng.uniform(0, 24, n))
    moment = np.floor(rng.uniform(0, days, n)) + hour_drawn / 24
    order = np.argsort(moment, kind="stable")
    abs_day = moment[order]
    hour = hour_drawn[order]
    at = [_START + timedelta(days=float(d)) for d in abs_day]
    weekday = np.array([t.weekday() for t in at])
    night = ((hour >= 20) | (hour < 6)).astype(float)
    weekend = (weekday >= 5).astype(float)
    owner = rng.integers(0, owners, n)
    layer = rng.integers(0, layers, n)
    model_change = (rng.random(n) < 0.4).astype(float)
    share = rng.beta(1.5, 6, n)
    bad = rng.normal(0, 1, n) + 0.5 * model_change
    offline_fail = (rng.random(n) < _sigmoid(-3 + 1.6 * bad)).astype(float)
    offline_warn = rng.poisson(0.3 + 0.3 * np.maximum(bad, 0)).astype(float)
    shadow = (model_change > 0) & (rng.random(n) < 0.3)
    shadow_fail = np.where(shadow, rng.random(n) < _sigmoid(-3.2 + 2 * bad), 0).astype(float)
    shadow_warn = np.where(shadow, rng.poisson(0.2 + 0.4 * np.maximum(bad, 0)), 0).astype(float)
    concurrent = np.zeros(n)
    for i in range(n):
        same = layer == layer[i]
        concurrent[i] = float(np.sum(same & (np.abs(abs_day - abs_day[i]) <= 3))) - 1
    logit = (
        -4.6
        + 1.1 * bad
        + 0.6 * model_change
        + 2.0 * share
        + 1.2 * model_change * share
        + 1.0 * fragility[layer]
        - 0.8 * skill[owner]
        + 0.5 * night
        + 0.3 * weekend
        + 0.25 * concurrent
        + 0.8 * offline_fail
    )
    incident = (rng.random(n) < _sigmoid(logit)).astype(int)
    owner_hist = np.zeros(n)
    layer_hist = np.zeros(n)
    for i in range(n):
        past = (abs_day < abs_day[i]) & (abs_day >= abs_day[i] - HISTORY_DAYS)
        owner_hist[i] = float(incident[past & (owner == owner[i])].sum())
        layer_hist[i] = float(incident[past & (layer == layer[i])].sum())
    frame = pd.DataFrame(
        {
            "launched_at": at,
            "owner": [f"owner{o}" for o in owner],
            "layer": [f"layer{v}" for v in layer],
            "traffic_share": share,
            "model_change": model_change,
            "offline_fail": offline_fail,
            "offline_warn": offline_warn,
            "shadow_fail": shadow_fail,
            "shadow_warn": shadow_warn,
            "owner_incidents": owner_hist,
            "layer_incidents": layer_hist,
            "night_launch": night,
            "weekend_launch": weekend,
            "concurrent_launches": concurrent,
            "incident": incident,
        }
    )
    assert tuple(c for c in frame.columns if c in LAUNCH_FEATURES) == LAUNCH_FEATURES
    return frame


@dataclass(frozen=True)
class HistoryResult:
    """A risk model's evaluation on one data set, beside the plain logistic regression.

    Attributes:
        name: The data set.
        chosen: The kind cross-validation chose on the training part.
        cv: Each candidate kind's cross-validated score (mean caught at the gates).
        model: The chosen model's gating curve on the test part.
        plain: The plain logistic regression's (on the change's own metrics), same split.
        train: Changes in the training part.
    """

    name: str
    chosen: ModelKind
    cv: dict[str, float]
    model: Gating
    plain: Gating
    train: int


def evaluate_history(
    history: pd.DataFrame,
    *,
    test_share: float = 1 / 3,
    kinds: tuple[ModelKind, ...] = ("logistic", "logistic_interactions"),
) -> tuple[HistoryResult, RiskModel]:
    """Train on the earliest launches, test on the last ``test_share`` (by time).

    Returns:
        The evaluation and the chosen model fitted on the training part.
    """
    cut = int(len(history) * (1 - test_share))
    train, test = history.iloc[:cut], history.iloc[cut:]
    x_tr, x_te = train[list(LAUNCH_FEATURES)], test[list(LAUNCH_FEATURES)]
    chosen, cv = select_kind(x_tr, train["incident"], kinds, log_columns=LOG_FEATURES)
    model = RiskModel.fit(x_tr, train["incident"], kind=chosen, log_columns=LOG_FEATURES)
    # The plain baseline, as on ApacheJIT: a logistic regression on the change's own metrics.
    change = list(CHANGE_FEATURES)
    plain = RiskModel.fit(train[change], train["incident"], kind="logistic")
    y = test["incident"].to_numpy()
    result = HistoryResult(
        "simulated launches",
        chosen,
        cv,
        gating_curve(model.predict(x_te), y),
        gating_curve(plain.predict(test[change]), y),
        len(train),
    )
    return result, model


def load_apachejit(directory: str | Path | None = None) -> pd.DataFrame:
    """The ApacheJIT small split, read in place.

    Raises:
        ConfigError: The file is not there.
    """
    path = Path(directory or DEFAULT_APACHEJIT) / "apachejit_test_small.csv"
    if not path.exists():
        raise ConfigError("apachejit", str(path), "ApacheJIT's CSV is not there")
    return pd.read_csv(path)


def apachejit_features(commits: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """Change metrics plus context: a bug fix or not, the project's incident history (its share of
    bug-inducing commits in ``train``, smoothed), and launch time (night, weekend, UTC)."""
    out = commits[list(APACHEJIT_METRICS)].clip(lower=0).astype(float).copy()
    out["fix"] = commits["fix"].astype(float)
    prior = float(train["buggy"].mean())
    rate = train.groupby("project")["buggy"].agg(["sum", "count"])
    smoothed = (rate["sum"] + 20 * prior) / (rate["count"] + 20)
    out["project_history"] = commits["project"].map(smoothed).fillna(prior).astype(float)
    ts = pd.to_datetime(commits["author_date"], unit="s", utc=True)
    hour = ts.dt.hour
    out["night"] = ((hour >= 20) | (hour < 6)).astype(float)
    out["weekend"] = (ts.dt.day_of_week >= 5).astype(float)
    return out


def evaluate_apachejit(
    directory: str | Path | None = None,
    *,
    kinds: tuple[ModelKind, ...] = ("logistic", "logistic_interactions"),
) -> HistoryResult:
    """Train on 2017-2018, test on 2019; the kind is chosen by cross-validation on 2017-2018."""
    commits = load_apachejit(directory)
    train = commits[commits["year"] < 2019]
    test = commits[commits["year"] == 2019]
    metrics = list(APACHEJIT_METRICS)
    x_tr, x_te = apachejit_features(train, train), apachejit_features(test, train)
    y_tr, y_te = train["buggy"].astype(int), test["buggy"].astype(int).to_numpy()
    chosen, cv = select_kind(x_tr, y_tr, kinds, log_columns=metrics)
    model = RiskModel.fit(x_tr, y_tr, kind=chosen, log_columns=metrics)
    plain = RiskModel.fit(train[metrics], y_tr, kind="logistic", log_columns=metrics)
    return HistoryResult(
        "ApacheJIT 2019",
        chosen,
        cv,
        gating_curve(model.predict(x_te), y_te),
        gating_curve(plain.predict(test[metrics]), y_te),
        len(train),
    )
