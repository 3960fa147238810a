"""Change-point check: the onset minute of a regression in a per-minute metric series.

Robust to the daily curve by construction: an experiment arm is read against its control minute
by minute, and all traffic (or a model) against a seasonal baseline (the same minutes one period
earlier) when the telemetry holds one, otherwise against its own pre-window level on a
per-request metric (revenue is taken per request, so traffic volume is not a regression).
Segmentation: :func:`tools.changepoint.regression_onset` (PELT, autocorrelation-aware noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.changepoint import Direction as ShiftDirection
from tools.changepoint import detect_change_points, regression_onset
from tools.checks._common import (
    as_verdict,
    fmt_p,
    fmt_time,
    no_data,
    params_of,
    series_evidence,
    subject_name,
)
from tools.checks._engine import Comparand, Finding, SubjectFrame, SumsLike
from tools.checks._localize import localize
from tools.checks._tests import metric_test
from tools.errors import ConfigError
from tools.metrics import metric_array, metric_spec
from tools.result import CheckResult, Effect
from tools.stats import binary_entropy, p_from_z
from tools.telemetry import to_datetime

__all__ = ["ChangePointParams", "change_point_check"]


@dataclass(frozen=True)
class ChangePointParams:
    """Thresholds of the change-point check.

    Attributes:
        alpha_fail: Bonferroni-corrected (over candidate onsets and arms) p-value of the
            before/after difference-in-differences that fails.
        alpha_warn: The same, to warn.
        min_rel_shift: Smallest relative change of the metric (0.03 = 3 %) that counts.
        min_duration: Shortest regression, in minutes.
        min_reference: Fewest minutes before a proposed onset (a short reference is noise).
        z_locate: z threshold handed to the segmentation that proposes onsets (low on purpose:
            every proposal is then tested on counts).
        min_requests: Fewest requests per minute on average for a verdict.
    """

    alpha_fail: float = 1e-3
    alpha_warn: float = 1e-2
    min_rel_shift: float = 0.03
    min_duration: int = 5
    min_reference: int = 15
    z_locate: float = 3.0
    min_requests: float = 20.0


_DIRECTIONS: dict[str, ShiftDirection] = {"up": "increase", "down": "decrease", "both": "either"}


_PAIRS = {
    "ctr": ("sum_label", "sum_label", "n"),
    "revenue_per_request": ("sum_revenue", "sum_revenue2", "n"),
    "fallback_rate": ("n_fallback", "n_fallback", "n"),
    "error_rate": ("n_error", "n_error", "n"),
    "invalid_rate": ("n_invalid", "n_invalid", "n_served"),
}
"""Metrics read as a mean of per-request values: (total, sum of squares, count) columns."""


def _columns(frame: SubjectFrame, arm: str) -> dict[str, np.ndarray]:
    sums = frame.minute_matrix(arm)
    return {col: sums[:, j] for j, col in enumerate(frame.sum_cols)}


def _series(frame: SubjectFrame, arm: str, metric: str) -> np.ndarray:
    return metric_array(_columns(frame, arm), metric)


def _log_mean(s: SumsLike, metric: str) -> tuple[float, float]:
    """``log`` of the metric over summed columns and the variance of that log (delta method)."""
    nan = (float("nan"), float("nan"))
    if metric == "calibration":
        clicks, pred = float(s["sum_label_v"]), float(s["sum_pred"])
        return (float(np.log(pred / clicks)), 1.0 / clicks) if clicks > 0 and pred > 0 else nan
    if metric == "ne":
        n, total, squares = float(s["n_ll"]), float(s["sum_ll"]), float(s["sum_ll2"])
        clicks = float(s["sum_label_v"])
        if n < 2 or total <= 0 or not 0 < clicks < n:
            return nan
        mean = total / n
        var = max(squares / n - mean * mean, 0.0) / n
        return float(np.log(mean / binary_entropy(clicks / n))), var / (mean * mean)
    if metric not in _PAIRS:
        return nan
    e_col, q_col, n_col = _PAIRS[metric]
    n, total, squares = float(s[n_col]), float(s[e_col]), float(s[q_col])
    if n <= 0 or total <= 0:
        return nan
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) / n
    return float(np.log(mean)), var / (mean * mean)


def _log_means(s: dict[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_log_mean` of every row at once (the same arithmetic, elementwise)."""
    size = len(s["n"])
    value, var = np.full(size, np.nan), np.full(size, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "calibration":
            clicks, pred = s["sum_label_v"], s["sum_pred"]
            ok = (clicks > 0) & (pred > 0)
            value[ok] = np.log(pred[ok] / clicks[ok])
            var[ok] = 1.0 / clicks[ok]
            return value, var
        if metric == "ne":
            n, total, squares = s["n_ll"], s["sum_ll"], s["sum_ll2"]
            clicks = s["sum_label_v"]
            ok = (n >= 2) & (total > 0) & (clicks > 0) & (clicks < n)
            n, total, squares, clicks = n[ok], total[ok], squares[ok], clicks[ok]
            mean = total / n
            v = np.maximum(squares / n - mean * mean, 0.0) / n
            p = clicks / n
            entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
            value[ok] = np.log(mean / entropy)
            var[ok] = v / (mean * mean)
            return value, var
        if metric not in _PAIRS:
            return value, var
        e_col, q_col, n_col = _PAIRS[metric]
        n, total, squares = s[n_col], s[e_col], s[q_col]
        ok = (n > 0) & (total > 0)
        n, total, squares = n[ok], total[ok], squares[ok]
        mean = total / n
        v = np.maximum(squares / n - mean * mean, 0.0) / n
        value[ok] = np.log(mean)
        var[ok] = v / (mean * mean)
    return value, var


def _did(
    frame: SubjectFrame,
    arm: str,
    ref: SubjectFrame | None,
    ref_arm: str | None,
    onset: int,
    metric: str,
) -> tuple[float, float]:
    """Log change of the metric after ``onset`` (vs before), net of the reference's change."""
    w = frame.window
    post, var_post = _log_mean(frame.span(arm, onset, w.end), metric)
    pre, var_pre = _log_mean(frame.span(arm, w.fetch_start, onset), metric)
    d, var = post - pre, var_post + var_pre
    if ref is not None and ref_arm is not None:
        r_post, v1 = _log_mean(ref.span(ref_arm, onset, w.end), metric)
        r_pre, v2 = _log_mean(ref.span(ref_arm, w.fetch_start, onset), metric)
        d, var = d - (r_post - r_pre), var + v1 + v2
    return d, var


def _dispersion(
    frame: SubjectFrame, arm: str, ref: SubjectFrame | None, ref_arm: str | None, metric: str
) -> float:
    """Over-dispersion of the per-minute residual against its count-based variance (>= 1).

    Robust: the MAD of standardised first differences, so a level shift barely moves it.
    """
    value, var = _log_means(_columns(frame, arm), metric)
    if ref and ref_arm:
        r_value, r_var = _log_means(_columns(ref, ref_arm), metric)
        value, var = value - r_value, var + r_var
    values = np.column_stack([value, var])
    ok = np.isfinite(values).all(axis=1) & (values[:, 1] > 0)
    v = values[ok]
    if len(v) < 10:
        return 1.0
    z = np.diff(v[:, 0]) / np.sqrt(v[1:, 1] + v[:-1, 1])
    mad = float(np.median(np.abs(z - np.median(z)))) * 1.482602218505602
    return max(1.0, mad * mad)


def _candidates(residual: np.ndarray, p: ChangePointParams, direction: ShiftDirection) -> list[int]:
    """Onset proposals (positions): every change point of the segmentations of the residual."""
    finite = np.isfinite(residual)
    if finite.sum() < 4 * p.min_duration:
        return []
    found: set[int] = set(detect_change_points(residual, min_size=p.min_duration))
    onset, stats = regression_onset(
        residual, direction=direction, z_threshold=p.z_locate, min_duration=p.min_duration
    )
    found.update(stats.change_points)
    if onset is not None:
        found.add(onset)
    n = residual.size
    return sorted(c for c in found if p.min_reference <= c <= n - p.min_duration)


def change_point_check(
    metric: str,
    frame: SubjectFrame,
    *,
    seasonal: SubjectFrame | None = None,
    params: ChangePointParams | None = None,
) -> CheckResult:
    """Locate the onset of a regression of ``metric`` in the window (and baseline) minutes.

    Onsets are proposed by segmenting the per-minute residual (arm minus control, or the metric
    minus its seasonal baseline) with :mod:`tools.changepoint`; each proposal is tested on counts,
    after vs before, net of the reference (difference in differences), Bonferroni-corrected over
    proposals and arms.

    Args:
        metric: A metric of :data:`tools.metrics.METRICS` (``revenue`` is read per request).
        frame: The subject's wide aggregate over baseline + window.
        seasonal: The subject one season earlier, aligned minute by minute.
        params: Thresholds.

    Returns:
        ``fail`` with the onset (and, for an experiment, the arm that moved) when a proposal's
        change is significant, in the bad direction and at least ``min_rel_shift``.
    """
    p = params or ChangePointParams()
    if metric in ("requests", "srm"):
        raise ConfigError("metric", metric, "change_point reads per-request metrics")
    series_metric = "revenue_per_request" if metric == "revenue" else metric
    spec = metric_spec(series_metric)
    settings = params_of(p, metric=series_metric)
    w = frame.window
    n_minutes = w.end - w.fetch_start
    traffic = sum(float(frame.minute_column(a, "n").sum()) for a in frame.arms) / max(n_minutes, 1)
    if not frame.arms or traffic < p.min_requests:
        return no_data(
            "change_point", frame, f"Too little traffic for {subject_name(frame)}.", settings
        )
    # (arm, its reference frame and arm): control for experiments, the season or nothing else.
    pairs: list[tuple[str, SubjectFrame | None, str | None]] = []
    if frame.control is not None and frame.control in frame.arms:
        pairs = [(a, frame, frame.control) for a in frame.arms if a != frame.control]
    else:
        for arm in frame.arms:
            season_ok = seasonal is not None and arm in seasonal.arms
            pairs.append((arm, seasonal if season_ok else None, arm if season_ok else None))
    tested: list[tuple[float, float, str, int, str | None]] = []
    n_tests = 0
    for arm, ref, ref_arm in pairs:
        series = _series(frame, arm, series_metric)
        if ref is not None and ref_arm is not None:
            series = series - _series(ref, ref_arm, series_metric)
        phi = _dispersion(frame, arm, ref, ref_arm, series_metric)
        for c in _candidates(series, p, _DIRECTIONS[spec.direction]):
            onset = w.fetch_start + c
            d, var = _did(frame, arm, ref, ref_arm, onset, series_metric)
            if not (np.isfinite(d) and var > 0):
                continue
            n_tests += 1
            z = d / float(np.sqrt(var * phi))
            tested.append((z, d, arm, onset, ref_arm if ref is frame else None))
    evidence = [series_evidence(frame, series_metric)]
    bad = [t for t in tested if _bad_way(t[0], spec.direction)]
    if not bad:
        return CheckResult(
            check="change_point",
            verdict="ok",
            summary=f"No sustained regression of {series_metric} for {subject_name(frame)}.",
            experiment=frame.subject.experiment_id,
            evidence=evidence,
            params={**settings, "onsets_tested": n_tests},
        )
    z, d, arm, onset, ref_arm = max(bad, key=lambda t: abs(t[0]))
    p_value = min(1.0, p_from_z(abs(z), "up") * n_tests)
    rel = float(np.expm1(d))
    level = (
        "fail"
        if p_value < p.alpha_fail and abs(rel) >= p.min_rel_shift
        else "warn"
        if p_value < p.alpha_warn and abs(rel) >= p.min_rel_shift
        else "ok"
    )
    settings = {**settings, "onsets_tested": n_tests}
    if level == "ok":
        return CheckResult(
            check="change_point",
            verdict="ok",
            summary=f"No sustained regression of {series_metric} for {subject_name(frame)}.",
            p_value=p_value,
            experiment=frame.subject.experiment_id,
            evidence=evidence,
            params=settings,
        )
    name = series_metric.replace("_", " ").capitalize()
    if ref_arm is not None:
        # The arm-control gap moved; the arm that moved against its own earlier level owns it.
        gap_arm = arm
        arm, own = _moved_arm(frame, (arm, ref_arm), series_metric, onset)
        text = (
            f"{name} of arm {arm} of {subject_name(frame)} changed {own:+.1%} from "
            f"{fmt_time(onset)} UTC; the gap of arm {gap_arm} to {ref_arm} moved {rel:+.1%} "
            f"({fmt_p(p_value)})"
        )
    else:
        against = " net of its seasonal baseline" if seasonal is not None else ""
        text = (
            f"{name} of {subject_name(frame)} changed {rel:+.1%}{against} from "
            f"{fmt_time(onset)} UTC ({fmt_p(p_value)})"
        )
    where = _where(frame, arm, ref_arm, onset, series_metric, p)
    if where:
        text += ", on " + ", ".join(f"{k}={v}" for k, v in where.items())
    return CheckResult(
        check="change_point",
        verdict=as_verdict(level),
        summary=text + ".",
        effect=Effect(
            name=f"relative change of {series_metric} at the onset", estimate=100 * rel, unit="%"
        ),
        p_value=p_value,
        onset=to_datetime(onset),
        experiment=frame.subject.experiment_id,
        arm=arm if ref_arm is not None else None,
        where=where,
        evidence=evidence,
        params=settings,
    )


def _bad_way(z: float, direction: str) -> bool:
    return z > 0 if direction == "up" else z < 0 if direction == "down" else True


def _where(
    frame: SubjectFrame,
    arm: str,
    ref_arm: str | None,
    onset: int,
    metric: str,
    p: ChangePointParams,
) -> dict[str, str]:
    try:
        test = metric_test(metric)
    except ConfigError:
        return {}
    w = frame.window
    if onset - w.fetch_start < p.min_duration:
        return {}
    if ref_arm is not None:
        other = ref_arm if arm != ref_arm else next(a for a in frame.arms if a != arm)
        comparand = Comparand(arm, other, concurrent=True)
        ref_span = (onset, w.end)
    else:
        comparand = Comparand(arm, arm, concurrent=False)
        ref_span = (w.fetch_start, onset)
    c = test.compare(frame.span(arm, onset, w.end), frame.span(comparand.ref, *ref_span), "both")
    if not c.valid:
        return {}
    finding = Finding(comparand, test, c, c.p_value, (onset, w.end), onset, ref_span, arm)
    return localize(frame, finding)


def _moved_arm(
    frame: SubjectFrame, arms: tuple[str, str], metric: str, onset: int
) -> tuple[str, float]:
    """Of the two arms, the one whose metric changed more at ``onset``, and its relative change."""
    w = frame.window
    moves = []
    for arm in arms:
        before, _ = _log_mean(frame.span(arm, w.fetch_start, onset), metric)
        after, _ = _log_mean(frame.span(arm, onset, w.end), metric)
        moves.append(after - before if np.isfinite(after - before) else 0.0)
    i = int(np.argmax(np.abs(moves)))
    return arms[i], float(np.expm1(moves[i]))
