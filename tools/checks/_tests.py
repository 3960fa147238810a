"""A default :class:`RateTest` per metric, for checks that speak of any metric (change point)."""

from __future__ import annotations

from tools.checks._engine import RateTest, SumsLike
from tools.checks.calibration import CalibrationParams, calibration_test
from tools.checks.fallback import proportion_test
from tools.checks.ne import NEParams, ne_test
from tools.errors import ConfigError
from tools.metrics import metric_spec
from tools.stats import Comparison, Direction, compare_means

__all__ = ["metric_test"]


def _mean_test(name: str, total: str, squares: str, direction: Direction, rel: float) -> RateTest:
    """Relative change of a per-request mean (``total / n``) with a Welch test."""

    def compare(t: SumsLike, r: SumsLike, d: Direction) -> Comparison:
        c = compare_means(t[total], t[squares], t["n"], r[total], r[squares], r["n"], d)
        base = float(r[total] / r["n"]) if r["n"] > 0 else 0.0
        if not c.valid or base <= 0:
            return c
        return Comparison(c.estimate / base, c.ci_low / base, c.ci_high / base, c.z, c.p_value)

    def badness(s: SumsLike) -> float:
        mean = float(s[total] / s["n"]) if s["n"] > 0 else 0.0
        return -mean if direction == "down" else mean

    return RateTest(
        name=name,
        compare=compare,
        direction=direction,
        null=0.0,
        badness=badness,
        events=total,
        exposure="n",
        rate_direction=direction,
        magnitude=abs,
        fail_effect=rel,
        warn_effect=rel / 2,
        unit="%",
        reads=(total, squares),
    )


def metric_test(metric: str) -> RateTest:
    """The test a metric's change is judged by (default thresholds).

    Raises:
        ConfigError: For a metric without a per-request test (``requests``, ``latency_p99`` ...).
    """
    spec = metric_spec(metric)
    if metric in ("revenue", "revenue_per_request"):
        return _mean_test("revenue per request", "sum_revenue", "sum_revenue2", "down", 0.03)
    if metric == "ctr":
        return proportion_test(
            "CTR", "sum_label", fail=0.001, warn=0.0005, min_n=200, direction="down"
        )
    if metric in ("fallback_rate", "error_rate", "invalid_rate"):
        return proportion_test(
            metric.replace("_", " "),
            spec.events,
            exposure=spec.exposure,
            fail=0.005,
            warn=0.002,
            min_n=200,
        )
    if metric == "calibration":
        return calibration_test(CalibrationParams())
    if metric == "ne":
        return ne_test(NEParams())
    raise ConfigError("metric", metric, "has no per-request test; use a rate or mean metric")
