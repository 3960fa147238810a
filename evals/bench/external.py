"""``vigil bench --only external``: Vigil's change points on TCPD and root causes on RiskLoc's RS.

Both data sets are read in place from ``opts.shared_data`` (never copied into the repository) and
scored exactly as their benchmarks do (see ``_tcpd`` and ``_riskloc``). One default setting of
each algorithm serves every series and every case. Peers computed in the same run: the
zero-change-point baseline and binary segmentation (ruptures, L2 cost, penalty ``3 log n``, at
most 5 change points, like TCPDBench's default ``binseg``) on TCPD; Adtributor on RS, with
RiskLoc's settings (``teep = tep = 0.1``, ``k = 3``) and with the paper's (``tep = 0.67``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import ruptures

from evals.bench import BenchOptions
from evals.bench._riskloc import RsCase, load_rs, micro_f1, score_root_causes
from evals.bench._tcpd import TcpdSeries, clean_cps, covering, f_measure, load_tcpd
from tools.changepoint import detect_change_points
from tools.localize import RootCause, adtributor, localize

__all__ = ["PEERS_REPORTED", "resolve_shared_data", "run"]

# Published figures, for the README's comparison (not computed here).
PEERS_REPORTED = {
    "tcpd_binseg_default": {"f1": 0.744, "cover": 0.706, "source": "TCPDBench, all series"},
    "tcpd_zero": {"f1": 0.669, "source": "TCPDBench, all series"},
    "rs": {
        "robustspot": 0.40,
        "adtributor": 0.27,
        "autoroot": 0.26,
        "r_adtributor": 0.10,
        "squeeze": 0.04,
        "hotspot": 0.04,
        "riskloc": 0.03,
        "source": "authors' code (shaido987/riskloc), default parameters, 135 cases",
    },
}


def resolve_shared_data(path: Path) -> Path | None:
    """``path`` if it exists, else the same relative path from the repository root, else None."""
    if path.exists():
        return path
    if not path.is_absolute():
        from_repo = Path(__file__).resolve().parents[2] / path
        if from_repo.exists():
            return from_repo
    return None


def _binseg(x: np.ndarray) -> list[int]:
    y = np.asarray(x, dtype=np.float64)
    y = np.where(np.isnan(y), np.nanmean(y, axis=0), y)
    sd = y.std(axis=0)
    y = (y - y.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    algo = ruptures.Binseg(model="l2", min_size=2, jump=1).fit(y)
    bkps = algo.predict(pen=3 * math.log(len(y)))[:-1]
    if len(bkps) > 5:
        bkps = algo.predict(n_bkps=5)[:-1]
    return [int(b) for b in bkps]


def _score_tcpd(series: list[TcpdSeries], detect: Any) -> dict[str, Any]:
    f1s, covers, per = [], [], {}
    for s in series:
        cps = clean_cps(detect(s.values), s.n_obs)
        f1 = f_measure(s.annotations, cps)[0]
        cover = covering(s.annotations, cps, s.n_obs)
        f1s.append(f1)
        covers.append(cover)
        per[s.name] = round(f1, 3)
    return {"f1": float(np.mean(f1s)), "cover": float(np.mean(covers)), "per_series": per}


def _tcpd(root: Path) -> dict[str, Any]:
    start = time.perf_counter()
    series = load_tcpd(root)
    ours = _score_tcpd(series, detect_change_points)
    seconds = time.perf_counter() - start
    zero = _score_tcpd(series, lambda _x: [])
    univariate = [s for s in series if s.values.shape[1] == 1]
    binseg = _score_tcpd(univariate, _binseg)
    ours_uni = _score_tcpd(univariate, detect_change_points)
    return {
        "tcpd_f1": round(ours["f1"], 4),
        "tcpd_cover": round(ours["cover"], 4),
        "tcpd_series": len(series),
        "tcpd_seconds": round(seconds, 2),
        "tcpd_zero_f1": round(zero["f1"], 4),
        "tcpd_zero_cover": round(zero["cover"], 4),
        "tcpd_univariate_series": len(univariate),
        "tcpd_univariate_f1": round(ours_uni["f1"], 4),
        "tcpd_univariate_cover": round(ours_uni["cover"], 4),
        "tcpd_binseg_univariate_f1": round(binseg["f1"], 4),
        "tcpd_binseg_univariate_cover": round(binseg["cover"], 4),
        "tcpd_per_series_f1": ours["per_series"],
    }


_RS_COLUMNS = {
    "real": "real_a",
    "forecast": "predict_a",
    "real_den": "real_b",
    "forecast_den": "predict_b",
}


def _score_rs(cases: list[RsCase], method: Any) -> tuple[float, list[int], float]:
    counts = []
    start = time.perf_counter()
    for case in cases:
        causes: list[RootCause] = method(case.leaves, case.dimensions, **_RS_COLUMNS)
        counts.append(score_root_causes([c.key() for c in causes], case.label))
    seconds = time.perf_counter() - start
    return micro_f1(counts), [int(v) for v in np.sum(counts, axis=0)], seconds


def _rs(root: Path) -> dict[str, Any]:
    start = time.perf_counter()
    cases = load_rs(root)
    load_seconds = time.perf_counter() - start
    f1, (tp, fp, fn), seconds = _score_rs(cases, localize)
    adt_rl, counts_rl, _ = _score_rs(
        cases, lambda *a, **k: adtributor(*a, teep=0.1, tep=0.1, k=3, **k)
    )
    adt_paper, _, _ = _score_rs(cases, adtributor)
    return {
        "rs_f1": round(f1, 4),
        "rs_cases": len(cases),
        "rs_tp_fp_fn": [tp, fp, fn],
        "rs_seconds": round(seconds, 2),
        "rs_seconds_per_case": round(seconds / max(len(cases), 1), 4),
        "rs_load_seconds": round(load_seconds, 2),
        "rs_adtributor_riskloc_settings_f1": round(adt_rl, 4),
        "rs_adtributor_riskloc_settings_tp_fp_fn": counts_rl,
        "rs_adtributor_paper_settings_f1": round(adt_paper, 4),
    }


def run(opts: BenchOptions) -> dict[str, Any]:
    """Score the change-point detector on TCPD and the localiser on RS; skip without the data."""
    start = time.perf_counter()
    root = resolve_shared_data(opts.shared_data)
    tcpd = root / "tcpd" if root else None
    rs = root / "riskloc-rs" if root else None
    have_tcpd = tcpd is not None and (tcpd / "annotations.json").exists()
    have_rs = rs is not None and (rs / "anomaly.yaml").exists()
    if not (have_tcpd or have_rs):
        msg = (
            f"external benchmark data not found at {opts.shared_data} (nor relative to the "
            "repository root): expected tcpd/annotations.json and riskloc-rs/anomaly.yaml; "
            "pass --shared-data PATH"
        )
        print(msg)
        return {"skipped": msg}
    out: dict[str, Any] = {"shared_data": str(root)}
    if have_tcpd and tcpd is not None:
        out.update(_tcpd(tcpd))
    else:
        out["tcpd_skipped"] = f"no TCPD data under {root}"
    if have_rs and rs is not None:
        out.update(_rs(rs))
    else:
        out["rs_skipped"] = f"no RS data under {root}"
    out["peers_reported"] = PEERS_REPORTED
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out
