"""Which dimension values explain a change of a KPI: root-cause localisation in a cube of leaves.

Input is a frame of *leaves* (one row per combination of dimension values) with the real and the
forecast KPI: an additive KPI (``real``, ``forecast``), or a ratio KPI given by its numerator and
denominator (``real``/``forecast`` for the numerator, ``real_den``/``forecast_den`` for the
denominator; the KPI of any slice is ``sum(numerator) / sum(denominator)``).

Two methods, both returning ranked :class:`RootCause` items:

* :func:`localize` — a *ripple-consistent scan*. Each candidate (a combination of 1 to
  ``max_order`` dimension values) is scored by the log-likelihood ratio of "this slice's rate
  moved" against "every leaf kept its forecast rate" (binomial for proportions, quasi-Poisson
  otherwise), divided by an over-dispersion factor estimated robustly from all leaves. Leaf
  forecast rates are shrunk toward the overall rate by an empirical-Bayes prior, so a leaf with a
  few forecast events does not look anomalous by chance. The best slice is then generalised to a
  parent (one dimension fewer) while the extra leaves the parent brings are anomalous too, in the
  same direction (the ripple effect of a real root cause), and the parent keeps ``generality`` of
  the evidence (a succinctness prior). Its leaves are removed and the search repeats, while a
  slice is significant and explains at least ``min_share`` of the change.
* :func:`adtributor` — Adtributor (Bhagwan et al., NSDI 2014): per dimension, the elements with the
  most surprise (Jensen-Shannon) whose explanatory power passes ``teep``, until they explain
  ``tep``; dimensions ranked by surprise.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from tools._adtributor import adtributor
from tools._leaves import Cube, FloatArray, IntArray, RootCause, prepare
from tools.errors import ConfigError

__all__ = ["Direction", "RootCause", "adtributor", "localize"]

Direction = Literal["auto", "increase", "decrease"]

_CHI2_1_MEDIAN = 0.454936423119572  # median of a chi-square with 1 degree of freedom


# --- the statistical model of the ripple-consistent scan -------------------------------------


def _prior_weight(num: FloatArray, den: FloatArray, binomial: bool) -> float:
    """Empirical-Bayes prior weight (in denominator units) for the leaves' forecast rates.

    Method of moments: the spread of leaf rates beyond their sampling noise is the spread of the
    true rates; the prior is worth ``rate * (1 - rate) / spread`` (binomial) or ``rate / spread``.
    """
    ok = den > 0
    if int(ok.sum()) < 3:
        return 0.0
    rates, w = num[ok] / den[ok], den[ok]
    mean = float(np.sum(w * rates) / np.sum(w))
    var_obs = float(np.sum(w * (rates - mean) ** 2) / np.sum(w))
    unit = mean * (1.0 - mean) if binomial else mean
    spread = var_obs - unit * ok.sum() / float(np.sum(w))
    if spread <= 1e-12 * max(unit, 1e-12):
        return 1e4
    return float(min(max(unit / spread - (1.0 if binomial else 0.0), 0.0), 1e4))


class _Model:
    """Observed and expected counts per leaf, and the evidence of any group of leaves.

    ``binomial``: y successes of n trials with expected successes e (a proportion KPI);
    otherwise quasi-Poisson: y observed with expectation e (a count, or a ratio's numerator with
    the denominator as exposure).
    """

    def __init__(self, cube: Cube) -> None:
        self.binomial = False
        if cube.real_den is not None and cube.forecast_den is not None:
            num_f, den_f = cube.forecast, cube.forecast_den
            self.binomial = bool(
                np.all(cube.real <= cube.real_den + 1e-9) and np.all(num_f <= den_f + 1e-9)
            )
            overall = float(num_f.sum() / den_f.sum()) if den_f.sum() > 0 else 0.0
            prior = _prior_weight(num_f, den_f, self.binomial)
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = (num_f + prior * overall) / (den_f + prior)
            rate = np.where(np.isfinite(rate), rate, overall)
            self.n = cube.real_den
            self.y = cube.real
            self.e = cube.real_den * rate
            var = self.e * (1.0 - rate) if self.binomial else self.e
        else:
            self.n = np.ones_like(cube.real)
            self.y, self.e = cube.real, cube.forecast
            var = self.e
        informative = var >= 1.0
        if int(informative.sum()) >= 3:
            r2 = (self.y[informative] - self.e[informative]) ** 2 / var[informative]
            self.dispersion = max(float(np.median(r2)) / _CHI2_1_MEDIAN, 1.0)
        else:
            self.dispersion = 1.0

    def evidence(self, y: FloatArray, n: FloatArray, e: FloatArray) -> FloatArray:
        """Log-likelihood ratio of a moved rate for groups with sums (y, n, e), over dispersion."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.binomial:
                p0 = np.clip(e / np.where(n > 0, n, 1.0), 1e-12, 1 - 1e-12)
                ph = np.clip(y / np.where(n > 0, n, 1.0), 0.0, 1.0)
                a = np.where(ph > 0, ph * np.log(ph / p0), 0.0)
                b = np.where(ph < 1, (1 - ph) * np.log((1 - ph) / (1 - p0)), 0.0)
                llr = n * (a + b)
            else:
                ee = np.maximum(e, 1e-12)
                llr = np.where(y > 0, y * np.log(y / ee), 0.0) - (y - ee)
        out: FloatArray = np.where(n > 0, np.nan_to_num(llr), 0.0) / self.dispersion
        return out


@dataclass(frozen=True)
class _Cuboid:
    dims: tuple[str, ...]
    codes: IntArray  # leaf -> group
    values: list[tuple[str, ...]]  # group -> dimension values


def _cuboids(cube: Cube, max_order: int) -> list[_Cuboid]:
    """Every combination of 1..max_order dimensions, with each leaf's group in it."""
    single: dict[str, tuple[IntArray, list[str]]] = {}
    for d in cube.dims:
        codes, uniques = pd.factorize(cube.labels[d])
        single[d] = (codes.astype(np.int64), [str(u) for u in uniques])
    out: list[_Cuboid] = []
    for k in range(1, min(max_order, len(cube.dims)) + 1):
        for dims in itertools.combinations(cube.dims, k):
            combined = np.zeros(len(cube.labels), dtype=np.int64)
            for d in dims:
                combined = combined * len(single[d][1]) + single[d][0]
            _, first_idx, codes = np.unique(combined, return_index=True, return_inverse=True)
            values = [tuple(single[d][1][single[d][0][i]] for d in dims) for i in first_idx]
            out.append(_Cuboid(dims, codes.astype(np.int64), values))
    return out


# --- the ripple-consistent scan -------------------------------------------------------------


class _Scan:
    """Greedy search for the slices that explain the change in one direction (``sign``)."""

    def __init__(self, cube: Cube, model: _Model, cuboids: list[_Cuboid], sign: float) -> None:
        self.cube, self.model, self.cuboids, self.sign = cube, model, cuboids, sign
        self.index = {c.dims: i for i, c in enumerate(cuboids)}
        self.excess = sign * (model.y - model.e)
        net = float(self.excess.sum())
        self.total = net if net > 0 else float(np.clip(self.excess, 0.0, None).sum())

    def group_evidence(self, members: IntArray) -> tuple[float, float]:
        """(evidence, excess in the scan direction) of one group of leaves."""
        m = self.model
        ys, ns, es = (np.array([float(a[members].sum())]) for a in (m.y, m.n, m.e))
        excess = float(self.excess[members].sum())
        return (float(m.evidence(ys, ns, es)[0]) if excess > 0 else 0.0), excess

    def best(self, free: npt.NDArray[np.bool_]) -> tuple[float, int, int]:
        """Highest-evidence (evidence, cuboid, group) among the free leaves."""
        m, w = self.model, free.astype(np.float64)
        top = (0.0, -1, -1)
        for ci, cub in enumerate(self.cuboids):
            size = len(cub.values)
            ys, ns, es = (
                np.bincount(cub.codes, a * w, size).astype(np.float64) for a in (m.y, m.n, m.e)
            )
            ev = m.evidence(ys, ns, es)
            ev[self.sign * (ys - es) <= 0] = 0.0
            g = int(np.argmax(ev))
            if ev[g] > top[0]:
                top = (float(ev[g]), ci, g)
        return top

    def generalise(
        self,
        score: float,
        ci: int,
        g: int,
        members: IntArray,
        free: npt.NDArray[np.bool_],
        sibling_evidence: float,
        generality: float,
    ) -> tuple[float, int, int, IntArray]:
        """Climb to a parent while the extra leaves it brings moved too (the ripple effect)."""
        while len(self.cuboids[ci].dims) > 1:
            options: list[tuple[float, int, int, IntArray]] = []
            for dropped in self.cuboids[ci].dims:
                pdims = tuple(d for d in self.cuboids[ci].dims if d != dropped)
                pi = self.index[pdims]
                pg = int(self.cuboids[pi].codes[members[0]])
                full = np.flatnonzero((self.cuboids[pi].codes == pg) & free)
                ev_full, ex_full = self.group_evidence(full)
                siblings = np.setdiff1d(full, members, assume_unique=True)
                ev_sib, ex_sib = self.group_evidence(siblings) if siblings.size else (0.0, 0.0)
                # the parent must keep most of the evidence, and its extra leaves must have moved
                keeps = ex_full > 0 and ev_full >= generality * score
                if keeps and ex_sib > 0 and ev_sib >= sibling_evidence:
                    options.append((ev_full, pi, pg, full))
            if not options:
                break
            score, ci, g, members = max(options, key=lambda o: o[0])
        return score, ci, g, members

    def run(
        self,
        max_causes: int,
        min_evidence: float,
        min_share: float,
        sibling_evidence: float,
        generality: float,
    ) -> tuple[list[RootCause], float]:
        """The causes found, and the evidence of the very best slice (to pick a direction)."""
        free = np.ones(len(self.cube.real), dtype=bool)
        causes: list[RootCause] = []
        first = 0.0
        if self.total <= 0:
            return causes, first
        for _ in range(max_causes):
            score, ci, g = self.best(free)
            if ci < 0:
                break
            first = first or score
            members = np.flatnonzero((self.cuboids[ci].codes == g) & free)
            if score < min_evidence or self.excess[members].sum() / self.total < min_share:
                break
            score, ci, g, members = self.generalise(
                score, ci, g, members, free, sibling_evidence, generality
            )
            cub = self.cuboids[ci]
            real, forecast = self.cube.kpi(members)
            causes.append(
                RootCause(
                    elements=dict(zip(cub.dims, cub.values[g], strict=True)),
                    share=float(self.excess[members].sum() / self.total),
                    score=score,
                    real=real,
                    forecast=forecast,
                    leaves=int(members.size),
                )
            )
            free[members] = False
        return causes, first


def localize(
    leaves: pd.DataFrame,
    dimensions: Sequence[str] | None = None,
    *,
    real: str = "real",
    forecast: str = "forecast",
    real_den: str | None = None,
    forecast_den: str | None = None,
    direction: Direction = "auto",
    max_order: int = 3,
    max_causes: int = 3,
    min_evidence: float = 10.0,
    min_share: float = 0.2,
    sibling_evidence: float = 4.0,
    generality: float = 0.8,
) -> list[RootCause]:
    """Localise the dimension values that explain a KPI change (ripple-consistent scan).

    Args:
        leaves: One row per leaf: dimension columns plus the value columns.
        dimensions: Dimension columns; default: every column that is not a value column.
        real: Column of the real value (the numerator, for a ratio KPI).
        forecast: Column of the forecast value (numerator).
        real_den: For a ratio KPI, the real denominator column (e.g. impressions for CTR).
        forecast_den: For a ratio KPI, the forecast denominator column.
        direction: ``"increase"`` or ``"decrease"`` of the KPI (the rate, for a ratio); ``"auto"``
            takes the direction with the stronger evidence.
        max_order: Most dimensions combined in one candidate.
        max_causes: Most causes returned.
        min_evidence: Least evidence (log-likelihood ratio over dispersion) for a cause; 10 is
            about 4.5 standard errors, strict enough for the many candidates scanned.
        min_share: Least share of the total change a cause must explain.
        sibling_evidence: Least evidence that the leaves a parent adds moved too, to generalise.
        generality: A parent replaces its child if it keeps this share of the child's evidence.

    Returns:
        Causes ranked by discovery order (strongest first); empty if nothing stands out.

    Raises:
        ConfigError: On missing or non-numeric columns, negative values or bad settings.
    """
    if direction not in ("auto", "increase", "decrease"):
        raise ConfigError("direction", direction, "must be 'auto', 'increase' or 'decrease'")
    if max_order < 1 or max_causes < 1:
        raise ConfigError("max_order", (max_order, max_causes), "max_order/max_causes must be >= 1")
    if not 0 < generality <= 1:
        raise ConfigError("generality", generality, "must be in (0, 1]")
    cube = prepare(leaves, dimensions, real, forecast, real_den, forecast_den)
    if cube.real.size == 0:
        return []
    model = _Model(cube)
    cuboids = _cuboids(cube, max_order)
    signs = {"increase": [1.0], "decrease": [-1.0], "auto": [1.0, -1.0]}[direction]
    best: tuple[float, list[RootCause]] = (-1.0, [])
    for sign in signs:
        causes, top = _Scan(cube, model, cuboids, sign).run(
            max_causes, min_evidence, min_share, sibling_evidence, generality
        )
        if top > best[0]:
            best = (top, causes)
    return best[1]
