"""Adtributor (Bhagwan et al., NSDI 2014): explanatory power and surprise per dimension.

Import it from :mod:`tools.localize`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tools._leaves import FloatArray, RootCause, prepare
from tools.errors import ConfigError

__all__ = ["adtributor"]


def _surprise(p: FloatArray, q: FloatArray) -> FloatArray:
    """Adtributor's surprise: the Jensen-Shannon terms of forecast shares p and real shares q."""
    with np.errstate(divide="ignore", invalid="ignore"):
        pt = np.nan_to_num(p * np.log(2 * p / (p + q)))
        qt = np.nan_to_num(q * np.log(2 * q / (p + q)))
    out: FloatArray = 0.5 * (pt + qt)
    return out


def adtributor(
    leaves: pd.DataFrame,
    dimensions: Sequence[str] | None = None,
    *,
    real: str = "real",
    forecast: str = "forecast",
    real_den: str | None = None,
    forecast_den: str | None = None,
    teep: float = 0.1,
    tep: float = 0.67,
    k: int = 3,
) -> list[RootCause]:
    """Adtributor: per dimension, the surprising elements that explain the change, ranked.

    For each element (one dimension value) the explanatory power EP is the share of the total KPI
    change it would cause alone (for a ratio KPI, the change of the ratio if only this element's
    numerator and denominator moved), and the surprise is the Jensen-Shannon divergence of its
    share of the forecast and of the real totals (summed over numerator and denominator). Per
    dimension, elements by decreasing surprise with EP > ``teep`` are taken until their EP sums to
    more than ``tep``; the ``k`` dimensions with the most surprise win.

    Args:
        leaves: Leaves with dimension and value columns (see :func:`localize`).
        dimensions: Dimension columns; default: every non-value column.
        real: Real value (numerator) column.
        forecast: Forecast value (numerator) column.
        real_den: Real denominator column, for a ratio KPI.
        forecast_den: Forecast denominator column, for a ratio KPI.
        teep: Least explanatory power of one element.
        tep: Explanatory power a dimension's set must exceed.
        k: Number of dimensions (sets) returned.

    Returns:
        The elements of the ``k`` best sets, set by set (most surprising first); ``share`` is the
        element's EP and ``score`` its surprise.

    Raises:
        ConfigError: On missing or non-numeric columns, negative values or bad settings.
    """
    if k < 1:
        raise ConfigError("k", k, "must be >= 1")
    cube = prepare(leaves, dimensions, real, forecast, real_den, forecast_den)
    if cube.real.size == 0:
        return []
    a_tot, f_tot = float(cube.real.sum()), float(cube.forecast.sum())
    if cube.real_den is not None and cube.forecast_den is not None:
        ad_tot, fd_tot = float(cube.real_den.sum()), float(cube.forecast_den.sum())
        if ad_tot <= 0 or fd_tot <= 0:
            return []
        change = a_tot / ad_tot - f_tot / fd_tot
    else:
        change = a_tot - f_tot
    if change == 0:
        return []
    sets: list[tuple[float, list[RootCause]]] = []
    for dim in cube.dims:
        codes, uniques = pd.factorize(cube.labels[dim])
        size = len(uniques)

        def total(a: FloatArray, codes: Any = codes, size: int = size) -> FloatArray:
            out: FloatArray = np.bincount(codes, a, size).astype(np.float64)
            return out

        a, f = total(cube.real), total(cube.forecast)
        if cube.real_den is not None and cube.forecast_den is not None:
            ad, fd = total(cube.real_den), total(cube.forecast_den)
            # Zero totals (an empty numerator or denominator) give NaN terms, counted as 0.
            with np.errstate(divide="ignore", invalid="ignore"):
                alone = ((a - f) * fd_tot - (ad - fd) * f_tot) / (fd_tot * (fd_tot + ad - fd))
                surprise = _surprise(f / f_tot, a / a_tot) + _surprise(fd / fd_tot, ad / ad_tot)
            ep = np.nan_to_num(alone) / change
        else:
            ep = (a - f) / change
            surprise = _surprise(f / f_tot if f_tot else f, a / a_tot if a_tot else a)
        chosen: list[RootCause] = []
        cumulative = 0.0
        for j in np.argsort(-surprise, kind="stable"):
            if ep[j] <= teep:
                continue
            rd = float(ad[j]) if cube.real_den is not None else 1.0
            fdj = float(fd[j]) if cube.real_den is not None else 1.0
            chosen.append(
                RootCause(
                    elements={dim: str(uniques[j])},
                    share=float(ep[j]),
                    score=float(surprise[j]),
                    real=float(a[j]) / rd if rd > 0 else math.nan,
                    forecast=float(f[j]) / fdj if fdj > 0 else math.nan,
                    leaves=int(np.sum(codes == j)),
                )
            )
            cumulative += float(ep[j])
            if cumulative > tep:
                sets.append((sum(c.score for c in chosen), chosen))
                break
    sets.sort(key=lambda s: -s[0])
    return [cause for _, chosen in sets[:k] for cause in chosen]
