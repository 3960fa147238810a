"""The input of root-cause localisation: a validated cube of leaves, and the result type.

Shared by :mod:`tools.localize` and :mod:`tools._adtributor`; import the public names from
:mod:`tools.localize`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tools.errors import ConfigError

__all__ = ["Cube", "FloatArray", "IntArray", "RootCause", "prepare"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RootCause:
    """One localised cause.

    Attributes:
        elements: Dimension -> value (one or several dimensions), e.g. ``{"country": "FR"}``.
        share: Share of the total change this slice explains (for :func:`adtributor`, the
            explanatory power). Near 1 when the slice explains all of it.
        score: Strength of the evidence: for :func:`localize` the log-likelihood ratio divided by
            the over-dispersion; for :func:`adtributor` the surprise.
        real: The KPI of the slice now.
        forecast: The KPI of the slice as forecast.
        leaves: Number of leaves in the slice.
    """

    elements: dict[str, str]
    share: float
    score: float
    real: float
    forecast: float
    leaves: int = field(default=0)

    def key(self) -> str:
        """Canonical ``dim=value&dim=value`` string, parts sorted."""
        return "&".join(sorted(f"{k}={v}" for k, v in self.elements.items()))

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for evidence tables and JSON."""
        return {
            "elements": dict(self.elements),
            "share": self.share,
            "score": self.score,
            "real": self.real,
            "forecast": self.forecast,
            "leaves": self.leaves,
        }


# --- input ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cube:
    """Validated leaves: dimension labels (strings) and value arrays, rows with a gap dropped."""

    dims: list[str]
    labels: pd.DataFrame  # dimension values as strings
    real: FloatArray
    forecast: FloatArray
    real_den: FloatArray | None
    forecast_den: FloatArray | None

    def kpi(self, idx: IntArray | slice) -> tuple[float, float]:
        """(real, forecast) KPI of the leaves ``idx``."""
        r, f = float(self.real[idx].sum()), float(self.forecast[idx].sum())
        if self.real_den is None or self.forecast_den is None:
            return r, f
        rd, fd = float(self.real_den[idx].sum()), float(self.forecast_den[idx].sum())
        return (r / rd if rd > 0 else math.nan), (f / fd if fd > 0 else math.nan)


def _column(frame: pd.DataFrame, name: str, arg: str) -> FloatArray:
    if name not in frame.columns:
        raise ConfigError(arg, name, f"is not a column of the leaves (columns: {list(frame)})")
    try:
        values = pd.to_numeric(frame[name]).to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(arg, name, "must be a numeric column") from exc
    return values


def prepare(
    leaves: pd.DataFrame,
    dimensions: Sequence[str] | None,
    real: str,
    forecast: str,
    real_den: str | None,
    forecast_den: str | None,
) -> Cube:
    """Check the columns and build a :class:`Cube`; rows with a NaN value are left out.

    Raises:
        ConfigError: Naming the argument, on a missing, non-numeric or negative column, a lone
            denominator, or no dimension.
    """
    if not isinstance(leaves, pd.DataFrame):
        raise ConfigError("leaves", type(leaves).__name__, "must be a pandas DataFrame")
    if (real_den is None) != (forecast_den is None):
        raise ConfigError("real_den", (real_den, forecast_den), "give both denominators or none")
    value_cols = [c for c in (real, forecast, real_den, forecast_den) if c is not None]
    if dimensions is None:
        dims = [str(c) for c in leaves.columns if c not in value_cols]
    else:
        dims = list(dimensions)
    missing = [d for d in dims if d not in leaves.columns]
    if missing:
        raise ConfigError("dimensions", missing, "are not columns of the leaves")
    if not dims:
        raise ConfigError("dimensions", dims, "need at least one dimension column")
    cols = {
        a: _column(leaves, c, a)
        for a, c in zip(
            ("real", "forecast", "real_den", "forecast_den"),
            (real, forecast, real_den, forecast_den),
            strict=True,
        )
        if c is not None
    }
    finite = np.logical_and.reduce([np.isfinite(v) for v in cols.values()])
    for arg, values in cols.items():
        if np.any(values[finite] < 0):
            raise ConfigError(arg, float(values[finite].min()), "must not be negative")
    keep = np.flatnonzero(finite)
    labels = leaves[dims].iloc[keep].astype(str).reset_index(drop=True)
    return Cube(
        dims=dims,
        labels=labels,
        real=cols["real"][keep],
        forecast=cols["forecast"][keep],
        real_den=cols["real_den"][keep] if "real_den" in cols else None,
        forecast_den=cols["forecast_den"][keep] if "forecast_den" in cols else None,
    )
