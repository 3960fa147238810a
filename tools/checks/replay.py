"""Checks on replayed or shadow predictions: a candidate judged against the served model.

A preflight replays logged production requests through the candidate and the production model
(``source="replay"``); a shadow run logs the candidate's predictions beside the served ones
(``source="shadow"``). Both give, per request, the candidate's prediction, the reference's and the
logged label: a paired sample. The checks here judge it with the same thresholds
(:class:`~tools.checks.CalibrationParams`, :class:`~tools.checks.NEParams`,
:class:`~tools.checks.PredictionParams`) and the same math (``calibration_interval``,
``normalized_entropy``, the histogram shift and point-mass statistics, ``tools.stats``) as the
investigations' checks, and answer in the same :class:`~tools.result.CheckResult`.

Pairing makes the comparisons sharp: the candidate's calibration relative to the reference's is
Σ candidate ÷ Σ reference on the same requests (no click noise at all), and its NE change is the
mean of per-request log-loss differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from tools.aggregates import HistogramSpec
from tools.checks._common import table
from tools.checks.calibration import CalibrationParams, calibration_interval
from tools.checks.ne import NEParams, normalized_entropy
from tools.checks.prediction import PredictionParams
from tools.histograms import point_mass, shift
from tools.result import CheckResult, Effect, Evidence, Verdict
from tools.stats import compare_proportions, p_from_z

__all__ = ["ReplayParams", "ReplaySample", "Source", "replay_checks"]

F64 = npt.NDArray[np.float64]
Source = Literal["replay", "shadow"]
_Z_POWER = 1.96 + 0.84  # two-sided 5 % test with 80 % power
_EPS = 1e-12


@dataclass(frozen=True)
class ReplayParams:
    """Thresholds of the replay checks; the rate thresholds are the investigations' own.

    Attributes:
        calibration: The calibration check's thresholds (``ratio_fail``, ``question_ratio``...).
        ne: The NE check's thresholds (``rel_increase_fail``, ``question_increase``...).
        prediction: The prediction check's thresholds (invalid share, point mass, shift).
        collapse_ratio_fail: Candidate ÷ reference squared coefficient of variation at or below
            which the predictions count as collapsed; lower than the investigation's over-time
            ratio because two different models legitimately differ in spread.
        latency_ratio_warn: Candidate ÷ reference p99 latency per request that warns.
        latency_ratio_fail: The same, that fails.
        latency_budget_ms: Largest p99 latency per request the serving tier allows (None: none).
        latency_floor_ms: A p99 below this is never too slow, whatever the ratio (timer noise
            of in-process scoring).
    """

    calibration: CalibrationParams = field(default_factory=CalibrationParams)
    ne: NEParams = field(default_factory=NEParams)
    prediction: PredictionParams = field(default_factory=PredictionParams)
    collapse_ratio_fail: float = 0.25
    latency_ratio_warn: float = 1.5
    latency_ratio_fail: float = 3.0
    latency_budget_ms: float | None = None
    latency_floor_ms: float = 1.0


@dataclass(frozen=True)
class ReplaySample:
    """Per-request predictions of a candidate and a reference on the same logged requests.

    Attributes:
        candidate: The candidate's predictions (NaN or outside [0, 1] count as invalid).
        reference: The reference's (production's replayed, or the served one in shadow).
        labels: The logged clicks (0/1).
        candidate_ms: The candidate's latency per request (None: not measured).
        reference_ms: The reference's latency per request.
        source: ``replay`` (offline) or ``shadow`` (live requests, control served).
        experiment: The experiment the candidate belongs to.
        arm: The candidate's arm.
    """

    candidate: F64
    reference: F64
    labels: F64
    candidate_ms: F64 | None = None
    reference_ms: F64 | None = None
    source: Source = "replay"
    experiment: str | None = None
    arm: str | None = None

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        for name in ("candidate", "reference", "candidate_ms", "reference_ms"):
            arr = getattr(self, name)
            if arr is not None and arr.shape[0] != n:
                raise ValueError(f"{name} has {arr.shape[0]} rows for {n} labels")


def _valid(p: F64) -> npt.NDArray[np.bool_]:
    return np.isfinite(p) & (p >= 0) & (p <= 1)


def _result(
    s: ReplaySample,
    check: str,
    verdict: Verdict,
    summary: str,
    *,
    effect: Effect | None = None,
    p_value: float | None = None,
    mde: float | None = None,
    evidence: list[Evidence] | None = None,
    params: Mapping[str, object] | None = None,
) -> CheckResult:
    return CheckResult(
        check=check,
        verdict=verdict,
        summary=summary,
        effect=effect,
        p_value=p_value,
        mde=mde,
        experiment=s.experiment,
        arm=s.arm,
        evidence=evidence or [],
        params={"source": s.source, **(params or {})},
    )


def _who(s: ReplaySample) -> str:
    return "the candidate (replayed)" if s.source == "replay" else "the candidate (shadow)"


def calibration_replay(s: ReplaySample, p: CalibrationParams) -> CheckResult:
    """Σ prediction ÷ Σ label of the candidate, absolute and relative to the reference."""
    both = _valid(s.candidate) & _valid(s.reference) & np.isfinite(s.labels)
    clicks = float(s.labels[both].sum())
    sum_c, sum_r = float(s.candidate[both].sum()), float(s.reference[both].sum())
    params = {"ratio_fail": p.ratio_fail, "ratio_warn": p.ratio_warn, "min_clicks": p.min_clicks}
    if not both.any():
        return _result(s, "calibration", "no_data", "No request had valid predictions from both.")
    est, lo, hi = calibration_interval(sum_c, clicks)
    ref_cal = sum_r / clicks if clicks > 0 else float("nan")
    rel = sum_c / sum_r if sum_r > 0 else float("nan")
    evidence = [
        table(
            "calibration (Σ prediction ÷ Σ label)",
            pd.DataFrame(
                [
                    {"model": "candidate", "clicks": clicks, "calibration": est, "ci_low": lo},
                    {
                        "model": "reference",
                        "clicks": clicks,
                        "calibration": ref_cal,
                        "ci_low": None,
                    },
                ]
            ),
        )
    ]
    effect = Effect(
        name="calibration ratio (Σ prediction ÷ Σ label)",
        estimate=est,
        ci_low=lo,
        ci_high=hi,
        unit="ratio",
    )
    if clicks < p.min_clicks:
        return _result(
            s,
            "calibration",
            "inconclusive",
            f"Only {clicks:.0f} clicks in the sample; calibration needs {p.min_clicks}.",
            effect=effect,
            evidence=evidence,
            params=params,
        )
    mde = float(np.exp(_Z_POWER / np.sqrt(clicks)))
    text = (
        f"calibration of {_who(s)} is {est:.2f} (95 % CI {lo:.2f}-{hi:.2f}; reference "
        f"{ref_cal:.2f}, candidate ÷ reference {rel:.2f})"
    )

    def outside(band: float) -> bool:
        return lo > band or hi < 1 / band

    rel_off = not (1 / p.ratio_fail <= rel <= p.ratio_fail)
    if outside(p.ratio_fail) and rel_off:
        verdict: Verdict = "fail"
    elif outside(p.ratio_warn):
        verdict = "warn"
    elif lo >= 1 / p.question_ratio and hi <= p.question_ratio:
        verdict = "ok"
    else:
        verdict = "inconclusive"
    lead = {
        "fail": "Miscalibrated: ",
        "warn": "Slightly off: ",
        "ok": "Calibrated: ",
        "inconclusive": "Too few clicks to tell: ",
    }[verdict]
    return _result(
        s,
        "calibration",
        verdict,
        lead + text + ".",
        effect=effect,
        mde=mde,
        evidence=evidence,
        params=params,
    )


def _log_loss(p: F64, y: F64) -> F64:
    q = np.clip(p, _EPS, 1 - _EPS)
    out: F64 = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return out


def ne_replay(s: ReplaySample, p: NEParams) -> CheckResult:
    """NE of the candidate vs the reference on the same requests: a paired log-loss test."""
    both = _valid(s.candidate) & _valid(s.reference) & np.isfinite(s.labels)
    n = int(both.sum())
    params = {"rel_increase_fail": p.rel_increase_fail, "min_requests": p.min_requests}
    if n == 0:
        return _result(s, "ne", "no_data", "No request had valid predictions from both.")
    y = s.labels[both]
    ll_c, ll_r = _log_loss(s.candidate[both], y), _log_loss(s.reference[both], y)
    clicks = float(y.sum())
    ne_c = normalized_entropy(float(ll_c.sum()), n, clicks)
    ne_r = normalized_entropy(float(ll_r.sum()), n, clicks)
    evidence = [
        table(
            "NE on the same requests",
            pd.DataFrame(
                [
                    {"model": "candidate", "n": n, "ne": ne_c},
                    {"model": "reference", "n": n, "ne": ne_r},
                ]
            ),
        )
    ]
    if n < p.min_requests or clicks < p.min_clicks:
        return _result(
            s,
            "ne",
            "inconclusive",
            f"Only {n} requests and {clicks:.0f} clicks; NE needs {p.min_requests} and "
            f"{p.min_clicks}.",
            evidence=evidence,
            params=params,
        )
    d = ll_c - ll_r
    base = float(ll_r.mean())
    se = float(d.std(ddof=1) / np.sqrt(n)) / base if base > 0 else float("nan")
    rel = float(d.mean()) / base if base > 0 else float("nan")
    z = rel / se if se > 0 else float("nan")
    p_val = p_from_z(z, "up")
    lo, hi = rel - 1.96 * se, rel + 1.96 * se
    effect = Effect(
        name="relative NE change (candidate ÷ reference − 1)",
        estimate=100 * rel,
        ci_low=100 * lo,
        ci_high=100 * hi,
        unit="%",
    )
    text = (
        f"NE of {_who(s)} {ne_c:.3f} vs reference {ne_r:.3f} "
        f"({rel:+.1%}, 95 % CI {lo:+.1%} to {hi:+.1%})"
    )
    if rel >= p.rel_increase_fail and p_val < p.alpha_fail:
        verdict: Verdict = "fail"
    elif rel >= p.rel_increase_warn and p_val < p.alpha_warn:
        verdict = "warn"
    elif hi < p.question_increase:
        verdict = "ok"
    else:
        verdict = "inconclusive"
    return _result(
        s,
        "ne",
        verdict,
        text + ".",
        effect=effect,
        p_value=p_val,
        mde=100 * _Z_POWER * se,
        evidence=evidence,
        params=params,
    )


def _binned(x: F64, spec: HistogramSpec) -> pd.DataFrame:
    edges = spec.edges()
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, spec.n_bins - 1)
    n = np.bincount(idx, minlength=spec.n_bins).astype(float)
    sums = np.bincount(idx, weights=x, minlength=spec.n_bins)
    return pd.DataFrame({"n": n, "sum_pred": sums})


def _cv2(x: F64) -> float:
    m = float(x.mean()) if x.size else 0.0
    return float(x.var(ddof=1) / (m * m)) if x.size > 1 and m > 0 else float("nan")


def prediction_replay(
    s: ReplaySample, p: PredictionParams, collapse_ratio: float, spec: HistogramSpec
) -> CheckResult:
    """Invalid predictions, collapse (spread, a stuck constant) and shift vs the reference."""
    n = s.labels.shape[0]
    if n == 0:
        return _result(s, "prediction", "no_data", "No requests were replayed.")
    vc, vr = _valid(s.candidate), _valid(s.reference)
    inv_c, inv_r = float((~vc).sum()), float((~vr).sum())
    cmp = compare_proportions(inv_c, n, inv_r, n, "up")
    c, r = s.candidate[vc], s.reference[vr]
    hc, hr = _binned(c, spec), _binned(r, spec)
    moved = shift(hc, hr, spec.edges()) if c.size and r.size else None
    mass = point_mass(hc, hr) if c.size and r.size else None
    ratio = _cv2(c) / _cv2(r) if c.size > 1 and r.size > 1 else float("nan")
    params = {
        "invalid_fail": p.invalid_fail,
        "collapse_ratio_fail": collapse_ratio,
        "psi_warn": p.psi_warn,
    }
    rows = {
        "requests": n,
        "invalid_candidate": inv_c / n,
        "invalid_reference": inv_r / n,
        "spread_ratio": ratio,
    }
    if moved is not None:
        rows |= {"psi": moved.psi, "js": moved.js, "ks": moved.ks}
    evidence = [table("predictions vs reference", pd.DataFrame([rows]))]
    invalid_effect = Effect(
        name="invalid share difference",
        estimate=100 * cmp.estimate,
        ci_low=100 * cmp.ci_low,
        ci_high=100 * cmp.ci_high,
        unit="pp",
    )
    if cmp.estimate >= p.invalid_fail and cmp.p_value < p.alpha_fail:
        return _result(
            s,
            "prediction",
            "fail",
            f"{inv_c / n:.1%} of {_who(s)}'s predictions are invalid (NaN or outside "
            f"[0, 1]) vs {inv_r / n:.1%} of the reference's.",
            effect=invalid_effect,
            p_value=cmp.p_value,
            evidence=evidence,
            params=params,
        )
    stuck = (
        mass is not None
        and mass.share_test - mass.share_ref >= p.mass_fail
        and mass.share_test >= p.mass_ratio * mass.share_ref
        and float(sps.norm.sf(mass.z)) * spec.n_bins < p.alpha_fail
    )
    if stuck and mass is not None:
        return _result(
            s,
            "prediction",
            "fail",
            f"{_who(s).capitalize()} is stuck: {mass.share_test:.1%} of its predictions "
            f"fall around {mass.value:.4g} (vs {mass.share_ref:.1%} of the reference's).",
            evidence=evidence,
            params=params,
        )
    if np.isfinite(ratio) and ratio <= collapse_ratio:
        return _result(
            s,
            "prediction",
            "fail",
            f"Predictions of {_who(s)} collapsed: their spread is {ratio:.0%} of the reference's.",
            evidence=evidence,
            params=params,
        )
    if cmp.estimate >= p.invalid_warn and cmp.p_value < p.alpha_warn:
        return _result(
            s,
            "prediction",
            "warn",
            f"{inv_c / n:.2%} of {_who(s)}'s predictions are invalid.",
            effect=invalid_effect,
            p_value=cmp.p_value,
            evidence=evidence,
            params=params,
        )
    if moved is not None:
        small = min(c.size, r.size) < p.ks_max_n
        ks_p = float(sps.ks_2samp(c, r).pvalue) if small else moved.ks_p
        if (small and ks_p < p.alpha_warn) or (
            not small and (moved.psi >= p.psi_warn or moved.js >= p.js_warn)
        ):
            return _result(
                s,
                "prediction",
                "warn",
                f"Predictions of {_who(s)} are distributed differently from the "
                f"reference's (PSI {moved.psi:.2f}, KS {moved.ks:.3f}); they are valid "
                "and not collapsed.",
                effect=Effect(name="population stability index", estimate=moved.psi, unit="psi"),
                p_value=ks_p,
                evidence=evidence,
                params=params,
            )
    return _result(
        s,
        "prediction",
        "ok",
        f"Predictions of {_who(s)} are valid, varied and distributed like the reference's.",
        effect=invalid_effect,
        evidence=evidence,
        params=params,
    )


def latency_replay(s: ReplaySample, p: ReplayParams) -> CheckResult:
    """p50 / p99 latency per request of the candidate vs the reference (and the tier's budget)."""
    if s.candidate_ms is None or s.reference_ms is None or not s.candidate_ms.size:
        return _result(s, "latency", "no_data", "Latency was not measured.")
    c50, c99 = (float(v) for v in np.percentile(s.candidate_ms, [50, 99]))
    r50, r99 = (float(v) for v in np.percentile(s.reference_ms, [50, 99]))
    ratio = c99 / max(r99, p.latency_floor_ms)
    params = {"latency_ratio_fail": p.latency_ratio_fail, "latency_budget_ms": p.latency_budget_ms}
    evidence = [
        table(
            "latency per request (ms)",
            pd.DataFrame(
                [
                    {"model": "candidate", "p50": c50, "p99": c99},
                    {"model": "reference", "p50": r50, "p99": r99},
                ]
            ),
        )
    ]
    effect = Effect(name="p99 latency ratio (candidate ÷ reference)", estimate=ratio, unit="ratio")
    text = f"p99 latency per request of {_who(s)} is {c99:.2f} ms vs {r99:.2f} ms ({ratio:.2f}×)"
    over = p.latency_budget_ms is not None and c99 > p.latency_budget_ms
    if over or ratio >= p.latency_ratio_fail:
        budget = f"; the tier's budget is {p.latency_budget_ms:g} ms" if over else ""
        return _result(
            s,
            "latency",
            "fail",
            f"Too slow: {text}{budget}.",
            effect=effect,
            evidence=evidence,
            params=params,
        )
    verdict: Verdict = "warn" if ratio >= p.latency_ratio_warn else "ok"
    return _result(
        s, "latency", verdict, text + ".", effect=effect, evidence=evidence, params=params
    )


def replay_checks(
    sample: ReplaySample, params: ReplayParams | None = None, spec: HistogramSpec | None = None
) -> list[CheckResult]:
    """Calibration, NE, predictions and latency of a replayed or shadow candidate.

    Args:
        sample: Paired per-request predictions, labels and latencies.
        params: Thresholds (the investigations' by default).
        spec: Prediction bins for the shift and point-mass statistics.

    Returns:
        One :class:`CheckResult` per check, in the order above.
    """
    p = params or ReplayParams()
    bins = spec or HistogramSpec()
    return [
        calibration_replay(sample, p.calibration),
        ne_replay(sample, p.ne),
        prediction_replay(sample, p.prediction, p.collapse_ratio_fail, bins),
        latency_replay(sample, p),
    ]
