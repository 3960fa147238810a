"""Where a finding lives: the dimension values it is confined to, re-assessed undiluted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from tools.checks._engine import Finding, RateTest, SubjectFrame, assess, is_bad
from tools.checks._frame import Sums, SumsLike
from tools.stats import Comparison, Direction, holm

__all__ = ["localize", "refine"]


def localize(
    frame: SubjectFrame, finding: Finding, *, alpha: float = 0.01, quiet_share: float = 0.3
) -> dict[str, str]:
    """The dimension values a finding is confined to (``{"platform": "android"}``), if any.

    A value localises its dimension when its own effect is significant (Holm over every dimension
    value), points the same way as the finding, and the rest of the dimension is quiet: not
    significant, or under ``quiet_share`` of the value's effect. Several dimensions may localise
    at once (android in BR).
    """
    test, comp = finding.test, finding.comparand
    direction: Direction = "both" if comp.concurrent else test.direction
    way: Direction = "up" if finding.comparison.estimate > test.null else "down"
    results: list[tuple[str, str, Comparison, Comparison]] = []
    frame = test.lean(frame)  # each value's sums of what the test reads alone
    at = frame.column_at
    fixed = None
    if comp.expected is not None and test.expected_sums is not None:
        fixed = test.expected_sums(comp.expected)  # every value's reference, and the rest's
    for dim in frame.dims:
        t_values, t = frame.dim_arrays(comp.test, *finding.focus, dim)
        if fixed is None:
            r_values, r = frame.dim_arrays(comp.ref, *finding.ref_span, dim)
        else:
            r_values, r = t_values, t
        r_row = {str(v): i for i, v in enumerate(r_values)}
        values = [(i, str(v)) for i, v in enumerate(t_values) if str(v) in r_row]
        if len(values) < 2:
            continue
        # Column sums as a frame's .sum() adds them (each column's values contiguous).
        t_all = np.ascontiguousarray(t.T).sum(axis=1)
        r_all = np.ascontiguousarray(r.T).sum(axis=1)
        for i, v in values:
            ref: SumsLike
            rest: SumsLike
            if fixed is None:
                ref, rest = Sums(at, r[r_row[v]]), Sums(at, r_all - r[r_row[v]])
            else:
                ref = rest = fixed
            cv = test.compare(Sums(at, t[i]), ref, direction)
            cc = test.compare(Sums(at, t_all - t[i]), rest, direction)
            if cv.valid:
                results.append((dim, v, cv, cc))
    if not results:
        return {}
    adj = holm([cv.p_value for _, _, cv, _ in results])
    hits: dict[str, list[tuple[str, bool]]] = {}
    for (dim, value, cv, cc), p in zip(results, adj, strict=True):
        if p >= alpha or not is_bad(cv.estimate, test.null, way):
            continue
        hits.setdefault(dim, []).append((value, _stands_out(test, cv, cc, quiet_share)))
    return {dim: values[0][0] for dim, values in hits.items() if len(values) == 1 and values[0][1]}


def _scale(test: RateTest, x: float) -> float:
    """An estimate on the scale its interval is symmetric on (log for ratios)."""
    if test.null == 1.0:
        return float(np.log(x)) if x > 0 else float("-inf")
    return x


def _stands_out(test: RateTest, cv: Comparison, cc: Comparison, quiet_share: float) -> bool:
    """The value's effect is significantly larger than the rest's, which is small.

    "The rest is not significant" is not enough: the rest may just have less traffic. Nor is a
    rest too small to test (too few clicks for a calibration): nothing says it is quiet.
    """
    if not cc.valid:
        return False
    size_v = test.magnitude(cv.estimate)
    size_c = test.magnitude(cc.estimate) if _same_way(test, cv, cc) else 0.0
    if size_c >= quiet_share * size_v:
        return False
    se_v = (_scale(test, cv.ci_high) - _scale(test, cv.ci_low)) / (2 * 1.959964)
    se_c = (_scale(test, cc.ci_high) - _scale(test, cc.ci_low)) / (2 * 1.959964)
    diff = abs(_scale(test, cv.estimate) - _scale(test, cc.estimate))
    se = float(np.hypot(se_v, se_c))
    return bool(np.isfinite(se) and se > 0 and diff / se >= 3.0)


def _same_way(test: RateTest, a: Comparison, b: Comparison) -> bool:
    return (a.estimate > test.null) == (b.estimate > test.null)


def refine(
    frame: SubjectFrame, finding: Finding, where: Mapping[str, str], candidates: int
) -> Finding | None:
    """Re-assess a localised finding inside its slice: undiluted effect, sharper onset.

    The slice was chosen by looking at the data, so its p-value is Bonferroni-corrected by the
    number of dimension values that could have been chosen.
    """
    sliced = frame.slice(where)
    again = assess(sliced, finding.comparand, finding.test)
    if again is None:
        return None
    return replace(again, p_value=min(1.0, again.p_value * max(candidates, 1)))
