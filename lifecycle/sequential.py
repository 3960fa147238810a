"""Always-valid statistics the health gate shares: confidence sequences and the ratio metrics.

The asymptotic normal-mixture confidence sequence of Waudby-Smith et al. ("Time-uniform central
limit theory and asymptotic confidence sequences", 2021), built on Robbins' normal mixture as in
Howard et al. (2021); the delta method over units for per-request ratio metrics (Deng et al. 2018);
the relative lift of test on control with its interval on the log scale. Vectorised numpy, no I/O:
:mod:`lifecycle.gate` judges one experiment with them, :mod:`lifecycle.judge` thousands at once.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "SRM_CONCENTRATIONS",
    "confidence_sequence",
    "lift_and_se",
    "lift_interval",
    "mixture_margin",
    "srm_always_valid_p",
    "tuning_rho2",
    "unit_ratio_moments",
]


def unit_ratio_moments(
    units: npt.ArrayLike,
    sum_n: npt.ArrayLike,
    sum_n2: npt.ArrayLike,
    sum_y: npt.ArrayLike,
    sum_y2: npt.ArrayLike,
    sum_yn: npt.ArrayLike,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Ratio ``sum y / sum n`` and its per-unit variance (delta method), vectorised.

    See :meth:`lifecycle.gate.ArmSummary.from_unit_sums`; the variance divided by ``units`` is
    the ratio's variance. Where there are no requests the ratio is 0; with fewer than two units the
    variance is 0.
    """
    k = np.asarray(units, dtype=float)
    n, n2 = np.asarray(sum_n, dtype=float), np.asarray(sum_n2, dtype=float)
    y, y2, yn = (np.asarray(v, dtype=float) for v in (sum_y, sum_y2, sum_yn))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n > 0, y / n, 0.0)
        # sum_i (y_i - R n_i)^2; the linearised values sum to 0 by construction of R.
        ss = y2 - 2.0 * ratio * yn + ratio * ratio * n2
        n_bar = n / k
        var = np.where((k > 1) & (n > 0), np.maximum(ss, 0.0) / (k - 1) / (n_bar * n_bar), 0.0)
    return ratio, var


def lift_and_se(
    mean_c: npt.ArrayLike,
    var_c: npt.ArrayLike,
    n_c: npt.ArrayLike,
    mean_t: npt.ArrayLike,
    var_t: npt.ArrayLike,
    n_t: npt.ArrayLike,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Relative lift of test on control and its standard error (delta method), vectorised.

    The core of :func:`lifecycle.gate.relative_lift` for a non-zero control mean.
    """
    m_c, m_t = np.asarray(mean_c, dtype=float), np.asarray(mean_t, dtype=float)
    v_c = np.asarray(var_c, dtype=float) / np.asarray(n_c, dtype=float)
    v_t = np.asarray(var_t, dtype=float) / np.asarray(n_t, dtype=float)
    lift = m_t / m_c - 1.0
    var = v_t / (m_c * m_c) + (m_t * m_t) * v_c / (m_c**4)
    return lift, np.sqrt(var)


def tuning_rho2(tuning_n: float, alpha: float) -> float:
    """The mixture parameter rho^2 that makes the sequence tightest at ``tuning_n`` samples."""
    log_term = -2.0 * math.log(alpha)
    return (log_term + math.log(log_term + 1.0)) / tuning_n


def mixture_margin(n: npt.ArrayLike, alpha: float, rho2: float) -> npt.NDArray[np.float64]:
    """Two-sided normal-mixture margin for a mean of ``n`` unit-variance observations.

    ``sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * log(sqrt(n rho^2 + 1) / alpha))``; multiply by the
    standard deviation of one observation to get the half-width at ``n``.
    """
    t = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.sqrt(
            2.0 * (t * rho2 + 1.0) / (t * t * rho2) * np.log(np.sqrt(t * rho2 + 1.0) / alpha)
        )
    return np.where(t > 0, margin, np.inf)


def confidence_sequence(
    estimate: npt.ArrayLike,
    se: npt.ArrayLike,
    n: npt.ArrayLike,
    alpha: float = 0.05,
    tuning_n: float = 10_000,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Always-valid interval around ``estimate`` (vectorised).

    Args:
        estimate: The running estimate (a mean, or a difference/lift of two means).
        se: Its standard error at ``n``; ``se * sqrt(n)`` plays the per-observation deviation.
        n: Observations behind the estimate (both arms together for a two-arm comparison).
        alpha: Probability that the sequence ever misses the true value.
        tuning_n: Sample size at which it is tightest.

    Returns:
        Lower and upper bounds.
    """
    est = np.asarray(estimate, dtype=float)
    t = np.asarray(n, dtype=float)
    half = (
        np.asarray(se, dtype=float)
        * np.sqrt(t)
        * mixture_margin(t, alpha, tuning_rho2(tuning_n, alpha))
    )
    return est - half, est + half


def lift_interval(
    mean_c: npt.ArrayLike,
    var_c: npt.ArrayLike,
    n_c: npt.ArrayLike,
    mean_t: npt.ArrayLike,
    var_t: npt.ArrayLike,
    n_t: npt.ArrayLike,
    alpha: float,
    tuning_n: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Relative lift ``mean_t / mean_c - 1`` and its always-valid interval, vectorised.

    The sequence is built for the log of the ratio (delta method: its variance is
    ``var_t / (n_t mean_t^2) + var_c / (n_c mean_c^2)``) and mapped back, so it never crosses
    -100 % and stays informative when the control's rate is small: a fallback rate going from
    0.1 % to 30 % is a confident increase even though the ratio itself is imprecise, where the
    symmetric delta-method interval of the ratio would span zero. Where a mean is not positive
    the symmetric interval of :func:`lift_and_se` is used.

    Args:
        mean_c: Control means (positive for a relative lift).
        var_c: Control per-observation variances.
        n_c: Control observations.
        mean_t: Test means.
        var_t: Test variances.
        n_t: Test observations.
        alpha: The sequence's level.
        tuning_n: Sample size (both arms) at which it is tightest.

    Returns:
        ``(lift, low, high)``.
    """
    m_c, m_t = np.asarray(mean_c, dtype=float), np.asarray(mean_t, dtype=float)
    v_c, v_t = np.asarray(var_c, dtype=float), np.asarray(var_t, dtype=float)
    k_c, k_t = np.asarray(n_c, dtype=float), np.asarray(n_t, dtype=float)
    n = k_c + k_t
    lift, se = lift_and_se(m_c, v_c, k_c, m_t, v_t, k_t)
    lo_lin, hi_lin = confidence_sequence(lift, se, n, alpha, tuning_n)
    positive = (m_c > 0) & (m_t > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.log(np.where(positive, m_t / m_c, 1.0))
        se_log = np.sqrt(v_t / (k_t * m_t * m_t) + v_c / (k_c * m_c * m_c))
    lo_log, hi_log = confidence_sequence(log_r, np.where(positive, se_log, 0.0), n, alpha, tuning_n)
    low = np.where(positive, np.expm1(lo_log), lo_lin)
    high = np.where(positive, np.expm1(hi_log), hi_lin)
    return lift, low, high


SRM_CONCENTRATIONS: tuple[float, ...] = (10.0, 100.0, 1_000.0, 10_000.0)
"""Prior concentrations of the sequential SRM test, mixed with equal weights. A Dirichlet prior
of concentration ``K`` lets the arm shares vary by about ``sqrt(w(1 − w)/K)``: 16 pp at ``K`` 10
(a gross loss of exposures, caught on a few hundred units) down to 0.5 pp at 10,000 (a subtle
skew, caught on many thousands). A mixture of martingales is a martingale, so the mixture keeps
the always-valid guarantee and pays only ``log 4`` for not knowing the size in advance."""


def _log_bayes_factor(x: npt.NDArray[np.float64], w: npt.NDArray[np.float64], k: float) -> float:
    a = k * w
    n = float(x.sum())
    return (
        math.lgamma(float(a.sum()))
        - math.lgamma(float(a.sum()) + n)
        + sum(math.lgamma(ai + xi) - math.lgamma(ai) for ai, xi in zip(a, x, strict=True))
        - float(np.sum(x * np.log(w)))
    )


def srm_always_valid_p(
    counts: npt.ArrayLike,
    weights: npt.ArrayLike,
    concentrations: tuple[float, ...] = SRM_CONCENTRATIONS,
) -> float:
    """Always-valid p-value of a sample ratio mismatch (Lindon & Malek 2022).

    The Bayes factor of a Dirichlet-multinomial alternative (prior mean at the configured
    weights; a mixture over :data:`SRM_CONCENTRATIONS`) against the multinomial at the weights is
    a nonnegative martingale under the null, so ``min(1, 1 / BF)`` may be read at every look
    without inflating the false-alarm rate (Ville's inequality): checking a healthy experiment
    every minute for hours fails it with probability at most alpha over the whole run, unlike a
    chi-square read at each look.

    Args:
        counts: Units per arm so far (cumulative).
        weights: The arms' configured weights (any positive scale).
        concentrations: The priors' concentrations, mixed with equal weights.

    Returns:
        The always-valid p-value (1.0 without units).
    """
    x = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    if float(x.sum()) <= 0:
        return 1.0
    logs = np.array([_log_bayes_factor(x, w, k) for k in concentrations])
    top = float(logs.max())
    log_bf = top + math.log(float(np.mean(np.exp(logs - top))))
    return 1.0 if log_bf <= 0 else math.exp(-log_bf)
