"""RiskLoc's RS data set: loader and exact-set F1, reproduced from shaido987/riskloc.

* Loading follows ``utils/robustspot_data_utils.py``: ``value := cnt - value`` (the KPI is the
  share ``value / cnt``), the leaves are the rows of the anomaly minute, and each leaf's forecast
  is the mean of its rows in the 4 previous minutes (``value``, ``cnt`` and the per-minute ratio
  separately); a leaf without history gets 0. Dimension values are compared as strings.
* Scoring follows ``utils/evaluation.py`` and ``run.py``: a root cause is the string
  ``dim=value&dim=value`` with its parts sorted; per case TP = true causes predicted exactly,
  FP = other predictions, FN = true causes missed; F1 = 2 TP / (2 TP + FP + FN) over the summed
  counts of all cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

__all__ = [
    "RsCase",
    "cause_string",
    "load_rs",
    "micro_f1",
    "score_root_causes",
]

PREDICT_PERIODS = 4


@dataclass(frozen=True)
class RsCase:
    """One RS incident: leaves with real/forecast numerator and denominator, and the truth.

    ``leaves`` has the dimension columns (strings) and ``real_a, predict_a`` (numerator),
    ``real_b, predict_b`` (denominator), ``real, predict`` (the ratio), as in RiskLoc.
    """

    name: str
    leaves: pd.DataFrame
    dimensions: list[str]
    label: str


def cause_string(cause: Mapping[str, Any]) -> str:
    """``{'b': 1, 'a': 2}`` -> ``'a=2&b=1'`` (RiskLoc's canonical form)."""
    return "&".join(sorted(f"{k}={v}" for k, v in cause.items()))


def _transform(raw: pd.DataFrame, timestamp: int) -> tuple[pd.DataFrame, list[str]]:
    dims = [c for c in raw.columns if c not in ("min", "value", "cnt")]
    raw = raw.copy()
    raw["value"] = raw["cnt"] - raw["value"]
    raw["k_real"] = raw["value"] / raw["cnt"]
    history = [timestamp - i * 60 for i in range(1, PREDICT_PERIODS + 1)]
    now = raw[raw["min"] == timestamp].drop(columns=["min"]).reset_index(drop=True)
    past = raw[raw["min"].isin(history)]
    hist = past.groupby(dims, sort=False)[["value", "cnt", "k_real"]].mean().reset_index()
    hist = hist.rename(
        columns={"value": "predict_a", "cnt": "predict_b", "k_real": "predict"},
    )
    leaves = now.rename(columns={"value": "real_a", "cnt": "real_b", "k_real": "real"})
    leaves = leaves.merge(hist, on=dims, how="left")
    num = ["real_a", "real_b", "real", "predict_a", "predict_b", "predict"]
    leaves[num] = leaves[num].fillna(0.0)  # RiskLoc fills every gap with 0
    leaves[dims] = leaves[dims].astype(str)
    cols = [*dims, "real_a", "predict_a", "real_b", "predict_b", "real", "predict"]
    return leaves[cols].astype({c: float for c in cols[len(dims) :]}), dims


def load_rs(root: Path) -> list[RsCase]:
    """Read every case listed in ``root/anomaly.yaml`` (135 for RS)."""
    info = yaml.safe_load((root / "anomaly.yaml").read_text(encoding="utf-8"))
    cases: list[RsCase] = []
    for item in info:
        raw = pd.read_csv(root / f"{item['data']}.csv")
        leaves, dims = _transform(raw, int(item["timestamp"]))
        causes = item["cause"] if isinstance(item["cause"], list) else [item["cause"]]
        label = ";".join(cause_string(c) for c in causes)
        cases.append(RsCase(str(item["data"]), leaves, dims, label))
    return cases


def score_root_causes(predictions: Iterable[str], label: str) -> tuple[int, int, int]:
    """RiskLoc's ``score_root_causes`` on canonical strings: returns (TP, FP, FN)."""
    preds = sorted({"&".join(sorted(p.split("&"))) for p in predictions})
    truth = sorted({"&".join(sorted(t.split("&"))) for t in label.split(";")})
    if not preds:
        return 0, 0, len(truth)
    tp = sum(1 for t in truth if t in preds)
    fn = len(truth) - tp
    return tp, max(len(preds) - tp, 0), fn


def micro_f1(counts: Sequence[tuple[int, int, int]]) -> float:
    """F1 over summed (TP, FP, FN), as RiskLoc's ``result_post_processing``."""
    tp = sum(c[0] for c in counts)
    fp = sum(c[1] for c in counts)
    fn = sum(c[2] for c in counts)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
