"""TCPD loader and the TCPDBench scorers (F1 with a margin, segmentation cover), reproduced exactly.

The scorers port ``analysis/scripts/metrics.py`` of alan-turing-institute/TCPDBench line for line
(their doctests are in ``tests/tools/test_changepoint.py``); ``clean_cps`` is the clean-up of
``summarize.py``: deduplicate and keep ``1 <= x < n_obs - 1``. The benchmark's default table leaves
out the five ``quality_control_*`` series (simulated demo data), and so do we.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "TcpdSeries",
    "clean_cps",
    "cover_single",
    "covering",
    "f_measure",
    "load_tcpd",
    "partition_from_cps",
    "true_positives",
]

QC_PREFIX = "quality_control_"


@dataclass(frozen=True)
class TcpdSeries:
    """One TCPD series: values (n, d) with NaN for missing, and the annotators' change points."""

    name: str
    values: npt.NDArray[np.float64]
    annotations: dict[str, list[int]]

    @property
    def n_obs(self) -> int:
        """Number of observations."""
        return int(self.values.shape[0])


def load_tcpd(root: Path, *, include_qc: bool = False) -> list[TcpdSeries]:
    """Read every series present under ``root/datasets/<name>/<name>.json`` with its annotations.

    Series whose data file is absent (not redistributable) are skipped; so are the quality-control
    series unless ``include_qc``.
    """
    annotations = json.loads((root / "annotations.json").read_text())
    out: list[TcpdSeries] = []
    for name in sorted(annotations):
        path = root / "datasets" / name / f"{name}.json"
        if not path.exists() or (name.startswith(QC_PREFIX) and not include_qc):
            continue
        data = json.loads(path.read_text())
        cols = [
            [np.nan if v is None else float(v) for v in series["raw"]] for series in data["series"]
        ]
        values = np.asarray(cols, dtype=np.float64).T
        out.append(TcpdSeries(name, values, {k: list(v) for k, v in annotations[name].items()}))
    return out


def clean_cps(locations: Iterable[int], n_obs: int) -> list[int]:
    """TCPDBench's clean-up: deduplicate, keep ``1 <= x < n_obs - 1``, sort."""
    return sorted({int(x) for x in locations if 1 <= x < n_obs - 1})


def true_positives(T: set[int], X: set[int], margin: int = 5) -> set[int]:
    """True positives of ``X`` against ``T`` within ``margin``, without double counting."""
    X = set(X)
    TP: set[int] = set()
    for tau in T:
        close = sorted((abs(tau - x), x) for x in X if abs(tau - x) <= margin)
        if not close:
            continue
        _, xstar = close[0]
        TP.add(tau)
        X.remove(xstar)
    return TP


def f_measure(
    annotations: Mapping[str, Sequence[int]],
    predictions: Iterable[int],
    margin: int = 5,
    alpha: float = 0.5,
) -> tuple[float, float, float]:
    """TCPDBench's F-measure: returns (F, precision, recall); 0 is added to every set."""
    Tks = {k + 1: set(annotations[uid]) for k, uid in enumerate(annotations)}
    for Tk in Tks.values():
        Tk.add(0)
    X = set(predictions)
    X.add(0)
    Tstar: set[int] = set()
    for Tk in Tks.values():
        Tstar |= Tk
    K = len(Tks)
    P = len(true_positives(Tstar, X, margin=margin)) / len(X)
    TPk = {k: true_positives(Tks[k], X, margin=margin) for k in Tks}
    R = 1 / K * sum(len(TPk[k]) / len(Tks[k]) for k in Tks)
    F = P * R / (alpha * R + (1 - alpha) * P)
    return F, P, R


def partition_from_cps(locations: Iterable[int], n_obs: int) -> list[set[int]]:
    """Partition of ``range(n_obs)`` into segments that start at the change points."""
    partition: list[set[int]] = []
    current: set[int] = set()
    all_cps = iter(sorted(set(locations)))
    cp = next(all_cps, None)
    for i in range(n_obs):
        if i == cp:
            if current:
                partition.append(current)
            current = set()
            cp = next(all_cps, None)
        current.add(i)
    partition.append(current)
    return partition


def _overlap(A: set[int], B: set[int]) -> float:
    return len(A & B) / len(A | B)


def cover_single(Sprime: list[set[int]], S: list[set[int]]) -> float:
    """Covering of segmentation ``S`` by ``Sprime`` (Arbelaez et al. 2010, eq. 8)."""
    T = sum(map(len, Sprime))
    if sum(map(len, S)) != T:
        raise ValueError("segmentations cover different numbers of points")
    C = 0.0
    for R in S:
        C += len(R) * max(_overlap(R, Rprime) for Rprime in Sprime)
    return C / T


def covering(
    annotations: Mapping[str, Sequence[int]], predictions: Iterable[int], n_obs: int
) -> float:
    """Average segmentation covering of each annotator's segmentation by the predictions."""
    Ak = {k + 1: partition_from_cps(annotations[uid], n_obs) for k, uid in enumerate(annotations)}
    pX = partition_from_cps(predictions, n_obs)
    Cs = [cover_single(pX, Ak[k]) for k in Ak]
    return sum(Cs) / len(Cs)
