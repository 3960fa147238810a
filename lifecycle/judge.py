"""The health gate's guardrail judgement, vectorised over many experiments at once.

:func:`lifecycle.gate.check_guardrail` judges one test arm of one experiment; the monitors and
the rollout controller look at every live experiment every minute, so this module judges them all
in one numpy pass over the rows of :meth:`tools.unit_stats.UnitStatsReader.arm_unit_sums` (one
grouped query for every experiment). The arithmetic is the gate's own — the delta method over
units (:func:`~lifecycle.gate.unit_ratio_moments`), the relative lift and its standard error
(:func:`~lifecycle.sequential.lift_interval`), the always-valid normal-mixture confidence sequence
(:func:`~lifecycle.gate.confidence_sequence`) and the same verdict rules; a test holds this
module to :func:`~lifecycle.gate.check_guardrail` on random inputs.

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lifecycle.gate import (
    METRIC_DIRECTION,
    ArmSummary,
    GateConfig,
    confidence_sequence,
    lift_interval,
    unit_ratio_moments,
)
from tools.aggregates import LATENCY_LADDER_MS
from tools.errors import ConfigError

__all__ = [
    "COMPARISON_COLUMNS",
    "UNIT_COLUMN",
    "arm_ratios",
    "arm_statistics",
    "guardrail_summary",
    "judge_comparisons",
    "judge_unit_guardrails",
    "metric_sign",
    "unit_statistics",
]

UNIT_COLUMN: Mapping[str, str] = {
    "revenue_per_request": "revenue",
    "ctr": "label",
    "fallback_rate": "fallback",
    "error_rate": "error",
}
"""Per-request guardrail -> its per-unit sum in :func:`tools.unit_stats.unit_sum_columns`."""

COMPARISON_COLUMNS: tuple[str, ...] = (
    "experiment_id",
    "metric",
    "arm",
    "control",
    "max_regression",
)
"""Columns of the ``comparisons`` frame :func:`judge_unit_guardrails` reads: one row per
guardrail and test arm of an experiment."""

_VERDICTS = np.array(["no_data", "harm", "safe", "inconclusive"], dtype=object)


_TAIL = 0.01  # latency_p99 is watched as the share of requests slower than control's p99


def _bernoulli(n: float, events: float) -> ArmSummary:
    return ArmSummary.from_sums(int(n), float(events), float(events))


def _revenue(per_minute: pd.DataFrame) -> ArmSummary:
    """Revenue per request with its variance from batch means over minutes.

    The reader sums revenue but not its square; the spread of per-minute means, weighted by
    requests, estimates the per-request variance (``sum n_i (m_i - m)^2 / (k - 1)``), and is
    conservative when the level drifts within the window.
    """
    rows = per_minute[per_minute["n"] > 0]
    n_total = float(rows["n"].sum())
    if n_total <= 0 or len(rows) < 2:
        return ArmSummary(n=int(n_total), mean=0.0, var=0.0)
    if "sum_revenue2" in rows.columns:
        return ArmSummary.from_sums(
            int(n_total), float(rows["sum_revenue"].sum()), float(rows["sum_revenue2"].sum())
        )
    mean = float(rows["sum_revenue"].sum()) / n_total
    minute_means = rows["sum_revenue"] / rows["n"]
    var = float((rows["n"] * (minute_means - mean) ** 2).sum()) / (len(rows) - 1)
    return ArmSummary(n=int(n_total), mean=mean, var=max(var, 0.0))


def _ne(s: pd.Series) -> ArmSummary:
    n = float(s["n_ll"])
    if n < 2 or float(s["n_pred"]) <= 0:
        return ArmSummary(n=int(n), mean=0.0, var=0.0)
    ll = ArmSummary.from_sums(int(n), float(s["sum_ll"]), float(s["sum_ll2"]))
    ctr = min(max(float(s["sum_label_v"]) / float(s["n_pred"]), 1e-12), 1 - 1e-12)
    entropy = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    return ArmSummary(n=ll.n, mean=ll.mean / entropy, var=ll.var / entropy**2)


def _calibration(s: pd.Series) -> ArmSummary:
    """Sum of predictions over clicks, with a delta-method variance that ignores cov(p, y).

    Predictions and clicks correlate positively for any useful model, so leaving the covariance
    out overstates the variance: the monitor errs towards not alarming.
    """
    n, clicks = float(s["n_pred"]), float(s["sum_label_v"])
    if n < 2 or clicks <= 0:
        return ArmSummary(n=int(n), mean=0.0, var=0.0)
    pred = ArmSummary.from_sums(int(n), float(s["sum_pred"]), float(s["sum_pred2"]))
    ybar = clicks / n
    ratio = pred.mean / ybar
    var = (pred.var + ratio * ratio * ybar * (1 - ybar)) / (ybar * ybar)
    return ArmSummary(n=int(n), mean=ratio, var=var)


def _tail_threshold(control: pd.Series) -> str | None:
    """The ladder column just above control's p99 (share of slower requests at most 1 %)."""
    n = float(control.get("n_latency", 0.0))
    if n <= 0:
        return None
    for k in range(len(LATENCY_LADDER_MS)):
        if float(control[f"lat_gt_{k}"]) / n <= _TAIL:
            return f"lat_gt_{k}"
    return None


def arm_statistics(cube: pd.DataFrame, metric: str, control: str) -> dict[str, ArmSummary]:
    """Per-arm sufficient statistics of a guardrail metric from the reader's cube.

    Args:
        cube: :meth:`TelemetryReader.cube` rows of one experiment (``latency=True`` for
            ``latency_p99``).
        metric: A guardrail metric other than ``srm``.
        control: The control arm (``latency_p99`` is judged above control's p99).

    Returns:
        Arm -> statistics; empty when the window holds no traffic.
    """
    if cube.empty:
        return {}
    if metric == "revenue_per_request":
        cols = ["n", "sum_revenue"] + (["sum_revenue2"] if "sum_revenue2" in cube else [])
        per_minute = cube.groupby(["arm", "minute"])[cols].sum().reset_index()
        return {str(a): _revenue(g) for a, g in per_minute.groupby("arm")}
    sums = cube.groupby("arm").sum(numeric_only=True)
    out: dict[str, ArmSummary] = {}
    if metric == "latency_p99":
        row = sums.loc[control] if control in sums.index else None
        column = _tail_threshold(row) if isinstance(row, pd.Series) else None
        if column is None:
            return {}
        return {str(a): _bernoulli(s["n_latency"], s[column]) for a, s in sums.iterrows()}
    for arm, s in sums.iterrows():
        match metric:
            case "ctr":
                out[str(arm)] = _bernoulli(s["n"], s["sum_label"])
            case "fallback_rate":
                out[str(arm)] = _bernoulli(s["n"], s["n_fallback"])
            case "error_rate":
                out[str(arm)] = _bernoulli(s["n"], s["n_error"])
            case "ne":
                out[str(arm)] = _ne(s)
            case "calibration":
                out[str(arm)] = _calibration(s)
            case _:
                raise ConfigError("guardrails.metric", metric, "no monitor for this metric")
    return out


def unit_statistics(
    sums: pd.DataFrame | Sequence[Mapping[str, Any]], metric: str
) -> dict[str, ArmSummary]:
    """Per-arm statistics of a per-request guardrail with unit-clustered variance.

    Args:
        sums: :meth:`tools.unit_stats.UnitStatsReader.arm_unit_sums` rows of one experiment
            (the frame, or its rows as records).
        metric: A guardrail metric of :data:`UNIT_COLUMN`.

    Returns:
        Arm -> statistics over units (delta method for the per-request ratio); empty when the
        window holds no traffic.
    """
    if metric not in UNIT_COLUMN:
        raise ConfigError(
            "guardrails.metric", metric, f"no per-unit sums; one of {list(UNIT_COLUMN)}"
        )
    m = UNIT_COLUMN[metric]
    out: dict[str, ArmSummary] = {}
    rows = sums.to_dict("records") if isinstance(sums, pd.DataFrame) else sums
    for r in rows:
        out[str(r["arm"])] = ArmSummary.from_unit_sums(
            int(r["units"]),
            float(r["sum_n"]),
            float(r["sum_n2"]),
            float(r[f"sum_{m}"]),
            float(r[f"sum_{m}2"]),
            float(r[f"sum_{m}_n"]),
        )
    return out


def _ratios(
    sums: pd.DataFrame, metric: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Units, ratio and per-unit variance of every row of ``sums`` (0 where it has no data)."""
    if metric not in UNIT_COLUMN:
        known = list(UNIT_COLUMN)
        raise ConfigError("guardrails.metric", metric, f"no per-unit sums; one of {known}")
    m = UNIT_COLUMN[metric]
    units = sums["units"].to_numpy(dtype=float)
    sum_n = sums["sum_n"].to_numpy(dtype=float)
    ratio, var = unit_ratio_moments(
        units,
        sum_n,
        sums["sum_n2"].to_numpy(dtype=float),
        sums[f"sum_{m}"].to_numpy(dtype=float),
        sums[f"sum_{m}2"].to_numpy(dtype=float),
        sums[f"sum_{m}_n"].to_numpy(dtype=float),
    )
    empty = (units <= 0) | (sum_n <= 0)
    return np.where(empty, 0.0, units), np.where(empty, 0.0, ratio), np.where(empty, 0.0, var)


def arm_ratios(sums: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per experiment and arm: units, the ratio metric and its per-unit variance (delta method).

    Args:
        sums: :meth:`~tools.unit_stats.UnitStatsReader.arm_unit_sums` rows.
        metric: A guardrail of :data:`UNIT_COLUMN`.

    Returns:
        Columns ``experiment_id, arm, n, mean, var`` (``n`` = units), one row per input row.
    """
    n, mean, var = _ratios(sums, metric)
    return pd.DataFrame(
        {
            "experiment_id": sums["experiment_id"].astype(str).to_numpy(),
            "arm": sums["arm"].astype(str).to_numpy(),
            "n": n.astype(np.int64),
            "mean": mean,
            "var": var,
        }
    )


def judge_comparisons(
    n_c: npt.ArrayLike,
    mean_c: npt.ArrayLike,
    var_c: npt.ArrayLike,
    n_t: npt.ArrayLike,
    mean_t: npt.ArrayLike,
    var_t: npt.ArrayLike,
    max_regression: npt.ArrayLike,
    sign: npt.ArrayLike,
    config: GateConfig,
) -> dict[str, npt.NDArray[Any]]:
    """:func:`lifecycle.gate.check_guardrail`'s verdict for many comparisons at once.

    Args:
        n_c: Control observations (units) per comparison; likewise ``mean_c``, ``var_c``.
        mean_c: Control means.
        var_c: Control per-observation variances.
        n_t: Test observations.
        mean_t: Test means.
        var_t: Test variances.
        max_regression: Tolerated regression per comparison.
        sign: ``+1`` when an increase is good, ``-1`` when a decrease is, ``0`` for a two-sided
            metric (any departure beyond the tolerance is harm).
        config: The gate's level, tuning and minimum sample.

    Returns:
        Arrays ``estimate``, ``ci_low``, ``ci_high`` (NaN without data), ``relative`` (False when
        the control mean is 0: absolute difference) and ``verdict`` (``harm``, ``safe``,
        ``inconclusive``, ``no_data``).
    """
    nc, nt = np.asarray(n_c, dtype=float), np.asarray(n_t, dtype=float)
    mc, mt = np.asarray(mean_c, dtype=float), np.asarray(mean_t, dtype=float)
    vc, vt = np.asarray(var_c, dtype=float), np.asarray(var_t, dtype=float)
    tau = np.asarray(max_regression, dtype=float)
    sgn = np.asarray(sign, dtype=float)
    enough = (nc >= config.min_n) & (nt >= config.min_n)
    relative = np.abs(mc) >= 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_lift, rel_low, rel_high = lift_interval(
            mc, vc, nc, mt, vt, nt, config.alpha, config.tuning_n
        )
        abs_se = np.sqrt(vc / nc + vt / nt)
    abs_low, abs_high = confidence_sequence(mt - mc, abs_se, nc + nt, config.alpha, config.tuning_n)
    lift = np.where(relative, rel_lift, mt - mc)
    low = np.where(relative, rel_low, abs_low)
    high = np.where(relative, rel_high, abs_high)
    # One-sided metrics: g is the lift signed so that positive is good.
    s = np.where(sgn == 0, 1.0, sgn)
    g, g_a, g_b = s * lift, s * low, s * high
    g_low, g_high = np.minimum(g_a, g_b), np.maximum(g_a, g_b)
    one_harm = (g_high < 0) & ((g < -tau) | ~relative)  # vs a 0 control: unbounded lift
    one_safe = g_low > -tau
    two_harm = ((high < 0) | (low > 0)) & ((np.abs(lift) > tau) | ~relative)
    two_safe = (low > -tau) & (high < tau)
    harm = np.where(sgn == 0, two_harm, one_harm)
    safe = np.where(sgn == 0, two_safe, one_safe)
    code = np.where(~enough, 0, np.where(harm, 1, np.where(safe, 2, 3)))
    nan = np.full(lift.shape, np.nan)
    return {
        "estimate": np.where(enough, lift, nan),
        "ci_low": np.where(enough, low, nan),
        "ci_high": np.where(enough, high, nan),
        "relative": np.where(enough, relative, True),
        "verdict": _VERDICTS[code],
    }


def metric_sign(metric: str) -> float:
    """``+1`` / ``-1`` / ``0`` (two-sided) for a guardrail metric, as the gate reads it."""
    direction = METRIC_DIRECTION.get(metric, "two_sided")
    return 1.0 if direction == "increase" else -1.0 if direction == "decrease" else 0.0


def judge_unit_guardrails(
    sums: pd.DataFrame, comparisons: pd.DataFrame, config: GateConfig | None = None
) -> pd.DataFrame:
    """Every per-request guardrail of every experiment, judged in one vectorised pass.

    Args:
        sums: :meth:`~tools.unit_stats.UnitStatsReader.arm_unit_sums` rows of any number of
            experiments (an arm without a row has no data).
        comparisons: :data:`COMPARISON_COLUMNS`: one row per guardrail (of :data:`UNIT_COLUMN`)
            and test arm.
        config: The gate's thresholds.

    Returns:
        The comparisons with ``n_control``, ``n_test``, ``estimate``, ``ci_low``, ``ci_high``,
        ``relative`` and ``verdict`` (what :func:`~lifecycle.gate.check_guardrail` would say).
    """
    cfg = config or GateConfig()
    k = len(comparisons)
    # Row of (experiment, arm) in ``sums``; -1 for an arm without traffic. A dict, not a
    # MultiIndex: at thousands of rows pandas' index machinery costs more than the statistics.
    row = {
        (str(e), str(a)): i
        for i, (e, a) in enumerate(
            zip(sums["experiment_id"].tolist(), sums["arm"].tolist(), strict=True)
        )
    }
    exps = [str(e) for e in comparisons["experiment_id"].tolist()]
    metrics = [str(m) for m in comparisons["metric"].tolist()]
    idx_t = np.array(
        [row.get((e, str(a)), -1) for e, a in zip(exps, comparisons["arm"].tolist(), strict=True)],
        dtype=np.int64,
    )
    idx_c = np.array(
        [
            row.get((e, str(c)), -1)
            for e, c in zip(exps, comparisons["control"].tolist(), strict=True)
        ],
        dtype=np.int64,
    )
    cols: dict[str, npt.NDArray[Any]] = {
        "n_control": np.zeros(k, dtype=np.int64),
        "n_test": np.zeros(k, dtype=np.int64),
        "estimate": np.full(k, np.nan),
        "ci_low": np.full(k, np.nan),
        "ci_high": np.full(k, np.nan),
        "relative": np.ones(k, dtype=bool),
        "verdict": np.full(k, "no_data", dtype=object),
    }
    tau = comparisons["max_regression"].to_numpy(dtype=float)
    metric_arr = np.array(metrics, dtype=object)
    for metric in dict.fromkeys(metrics):
        mask = metric_arr == metric
        n, mean, var = (np.append(a, 0.0) for a in _ratios(sums, metric))  # [-1]: no data
        t, c = idx_t[mask], idx_c[mask]
        judged = judge_comparisons(
            n[c], mean[c], var[c], n[t], mean[t], var[t], tau[mask], metric_sign(metric), cfg
        )
        cols["n_control"][mask] = n[c]
        cols["n_test"][mask] = n[t]
        for key, values in judged.items():
            cols[key][mask] = values
    return comparisons.reset_index(drop=True).assign(**cols)


def guardrail_summary(row: Mapping[str, Any], config: GateConfig) -> str:
    """The sentence :func:`~lifecycle.gate.check_guardrail` writes, for a judged row."""
    metric, arm, verdict = row["metric"], row["arm"], row["verdict"]
    if verdict == "no_data":
        return (
            f"{metric}: too little data ({row['n_control']} control, {row['n_test']} {arm}; "
            f"need {config.min_n})"
        )
    relative = bool(row["relative"])
    unit, scale = ("%", 100.0) if relative else ("", 1.0)
    lift, low, high = row["estimate"] * scale, row["ci_low"] * scale, row["ci_high"] * scale
    tau = row["max_regression"] * scale
    return (
        f"{metric}: {arm} vs control {lift:+.3g}{unit} [{low:+.3g}{unit}, {high:+.3g}{unit}] "
        f"(always-valid {1 - config.alpha:.0%}, tolerance {tau:.3g}{unit}"
        f"{'' if relative else ', absolute: control mean is 0'}) -> {verdict}"
    )
