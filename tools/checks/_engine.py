"""The machinery every rate-like check shares: scan, locate the onset, judge the scope, drill down.

A check compares a *test* group with a *reference*: an arm with its control over the same minutes
(``concurrent``), or a group's window with its own pre-window baseline. It

1. scans a grid of time segments of the window and keeps the most significant one, Bonferroni-
   corrected by the number of segments (a short fault is not diluted by a long window);
2. locates the onset with an epidemic change-point model on the test group's own rate;
3. judges the scope across arms (one arm, the control, every arm at once) with Holm over the family;
4. drills into dimensions to say *where* the fault lives (:mod:`tools.checks._localize`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tools.checks._frame import Comparand, SubjectFrame, Sums, SumsLike, Window
from tools.stats import Comparison, Direction, epidemic_segment, holm, segment_grid

__all__ = [
    "Comparand",
    "Finding",
    "Judgement",
    "RateTest",
    "SubjectFrame",
    "Sums",
    "SumsLike",
    "Window",
    "assess",
    "is_bad",
    "judge",
]


Compare = Callable[[SumsLike, SumsLike, Direction], Comparison]


@dataclass(frozen=True)
class RateTest:
    """One statistic a check tests, with its thresholds.

    Attributes:
        name: What is measured, for summaries (``"fallback rate"``).
        compare: ``(test sums, reference sums, direction) -> Comparison``.
        direction: The bad direction of the estimate against a baseline (arm-control gaps are
            tested two-sided; ``badness`` then says which side is worse).
        null: The estimate when nothing changed (0 for differences, 1 for ratios).
        badness: How bad one group's sums look on their own (higher is worse).
        events: Column of the test group's rate numerator (onset location).
        exposure: Column of its denominator.
        rate_direction: The bad direction of ``events / exposure``.
        magnitude: Practical size of an estimate (``abs(x)``, ``abs(log(x))``).
        fail_effect: Smallest magnitude that may fail.
        warn_effect: Smallest magnitude that may warn.
        unit: Unit of the estimate.
        min_n: Fewest requests (test and reference each) for a verdict.
        expected_sums: Sums of a virtual, noiseless reference at a known value (for comparands
            with ``expected``); None when the statistic has no absolute reference.
        rate_sign: +1 when a higher estimate means a higher ``events / exposure`` rate, -1 when
            it means a lower one (calibration = exposure / events).
        reads: Every column ``compare`` and ``badness`` read, when declared: a scan of many
            slices then carries those (and ``n``) alone. None: any column.
    """

    name: str
    compare: Compare
    direction: Direction
    null: float
    badness: Callable[[SumsLike], float]
    events: str
    exposure: str
    rate_direction: Direction
    magnitude: Callable[[float], float]
    fail_effect: float
    warn_effect: float
    unit: str = ""
    min_n: float = 200.0
    expected_sums: Callable[[float], SumsLike] | None = None
    rate_sign: int = 1
    reads: tuple[str, ...] | None = None

    def lean(self, frame: SubjectFrame) -> SubjectFrame:
        """``frame`` with only the columns this test reads (and ``n``), when it declares them."""
        if self.reads is None:
            return frame
        return frame.select(list(dict.fromkeys(["n", self.events, self.exposure, *self.reads])))


Located = tuple[Comparison, tuple[int, int], int | None, tuple[int, int]]
"""What a finding reports: its comparison, focus, onset and reference span."""


class _Later:
    """A finding's :data:`Located`, worked out once, on first use (copies share it)."""

    __slots__ = ("_value", "_work")

    def __init__(self, work: Callable[[], Located]) -> None:
        self._work = work
        self._value: Located | None = None

    def get(self) -> Located:
        if self._value is None:
            self._value = self._work()
        return self._value


@dataclass(frozen=True)
class Finding:
    """The outcome of one comparand under one test.

    ``culprit`` is the worse side: for an arm-control gap the arm or the control (by ``badness``),
    for a baseline comparison the group itself when it moved in the bad direction, else None.

    What it reports (:attr:`comparison` over :attr:`focus` since :attr:`onset`, against
    :attr:`ref_span`) is given, or worked out on first read by :func:`assess` (the onset search
    is most of a scan's cost, and only the findings a result reports are read).
    """

    comparand: Comparand
    test: RateTest
    _comparison: Comparison | None
    p_value: float
    _focus: tuple[int, int] | None
    _onset: int | None
    _ref_span: tuple[int, int] | None
    culprit: str | None
    adjusted_p: float = 1.0
    segments: int = 1
    scan: Comparison | None = None
    _later: _Later | None = field(default=None, repr=False, compare=False)

    def _located(self) -> Located:
        if self._later is not None:
            return self._later.get()
        if self._comparison is None or self._focus is None or self._ref_span is None:
            raise ValueError("a finding needs its comparison, focus and reference span")
        return self._comparison, self._focus, self._onset, self._ref_span

    @property
    def comparison(self) -> Comparison:
        """The reported comparison: the test group over :attr:`focus` against its reference."""
        return self._located()[0]

    @property
    def focus(self) -> tuple[int, int]:
        """Epoch minutes ``[a, b)`` the comparison covers."""
        return self._located()[1]

    @property
    def onset(self) -> int | None:
        """The epoch minute the departure began."""
        return self._located()[2]

    @property
    def ref_span(self) -> tuple[int, int]:
        """Epoch minutes of the reference (the focus for a concurrent arm, else a baseline)."""
        return self._located()[3]

    @property
    def decisive(self) -> Comparison:
        """The comparison the verdict rests on: the scanned segment's (else the reported one)."""
        return self.scan if self.scan is not None else self.comparison

    def significant(self, alpha: float, effect: float) -> bool:
        """Significant after correction, large enough, and pointing at a culprit."""
        size = self.test.magnitude(self.decisive.estimate)
        return self.culprit is not None and self.adjusted_p < alpha and size >= effect


@dataclass(frozen=True)
class Judgement:
    """A verdict on a family of findings and the scope it points to.

    ``scope``: ``arm`` (one arm, maybe the control), ``all_arms`` (every arm moved together
    against its baseline: a shared cause), ``subject`` (a model or all traffic), ``none``.
    """

    verdict: str
    finding: Finding | None
    arm: str | None
    scope: str
    findings: list[Finding] = field(default_factory=list)
    control_moved: bool = False
    """``arm`` is the control, and it alone left its own baseline: its own fault, where a gap
    with the control as its worse side is otherwise a better test arm."""


def is_bad(estimate: float, null: float, direction: Direction) -> bool:
    """The estimate moved away from ``null`` in the bad ``direction``."""
    if direction == "up":
        return estimate > null
    if direction == "down":
        return estimate < null
    return estimate != null


def assess(frame: SubjectFrame, comparand: Comparand, test: RateTest) -> Finding | None:
    """Scan the window for the segment where ``comparand.test`` departs most from its reference.

    Returns:
        The finding (its p-value Bonferroni-corrected over the segments), or None when either side
        has fewer than ``test.min_n`` requests.
    """
    w = frame.window
    direction: Direction = "both" if comparand.concurrent else test.direction
    i0, i1 = w.start - w.fetch_start, w.end - w.fetch_start
    tw = frame.minute_matrix(comparand.test)[i0:i1]
    ref_span = (w.start, w.end) if comparand.concurrent else (w.fetch_start, w.start)
    virtual = comparand.expected is not None and test.expected_sums is not None
    if comparand.expected is not None and test.expected_sums is not None:
        fixed: SumsLike | None = test.expected_sums(comparand.expected)
    else:
        fixed = None
    ref_total = fixed if fixed is not None else frame.span(comparand.ref, *ref_span)
    cols, at = frame.sum_cols, frame.column_at
    n_at = at["n"]
    t_cum = np.vstack([np.zeros(len(cols)), np.cumsum(tw, axis=0)])
    if t_cum[-1, n_at] < test.min_n or ref_total["n"] < test.min_n:
        return None
    r_cum = None
    if comparand.concurrent:
        rw = frame.minute_matrix(comparand.ref)[i0:i1]
        r_cum = np.vstack([np.zeros(len(cols)), np.cumsum(rw, axis=0)])
    grid = segment_grid(w.length)
    floor_n = min(test.min_n, 30.0)
    best: tuple[Comparison, tuple[int, int]] | None = None
    for a, b in grid:
        if t_cum[b, n_at] - t_cum[a, n_at] < floor_n:
            continue
        rs = Sums(at, r_cum[b] - r_cum[a]) if r_cum is not None else ref_total
        if rs["n"] < floor_n:
            continue
        c = test.compare(Sums(at, t_cum[b] - t_cum[a]), rs, direction)
        if c.valid and (best is None or c.p_value < best[0].p_value):
            best = (c, (w.start + a, w.start + b))
    if best is None:
        return None
    p_scan = min(1.0, best[0].p_value * len(grid))
    scan, scan_span = best

    def ref_sums(span: tuple[int, int]) -> SumsLike:
        return fixed if fixed is not None else frame.span(comparand.ref, *span)

    def locate() -> Located:
        focus, onset, span = scan_span, scan_span[0], ref_span
        # Orient the onset search by the scan's finding: a two-sided search cannot tell a
        # departure from the stretch before it.
        up = (scan.estimate > test.null) == (test.rate_sign > 0)
        seg = _onset_segment(frame, comparand, test, "up" if up else "down")
        if seg is not None and seg[1] > w.start:
            # Report "since the onset" only when the onset segment tells the scan's story: it
            # overlaps the scan's segment and its effect points the same way.
            cand = (max(seg[0], w.start), seg[1])
            c_span = ref_span if virtual else _ref_span(comparand, w, cand, seg[0])
            c = test.compare(frame.span(comparand.test, *cand), ref_sums(c_span), direction)
            overlap = min(cand[1], scan_span[1]) - max(cand[0], scan_span[0])
            same_way = (c.estimate > test.null) == (scan.estimate > test.null)
            if c.valid and overlap > 0 and same_way:
                focus, onset, span = cand, seg[0], c_span
        comparison = test.compare(frame.span(comparand.test, *focus), ref_sums(span), direction)
        if not comparison.valid:
            comparison, focus, onset = scan, scan_span, scan_span[0]
        # Nothing departs before the group has traffic (an experiment launched in the window).
        served = _first_served(frame, comparand.test, test.exposure)
        if served is not None and onset < served < focus[1]:
            onset, focus = served, (max(focus[0], served), focus[1])
        return comparison, focus, onset, span

    if comparand.concurrent:
        worse_test = test.badness(frame.span(comparand.test, *scan_span)) >= test.badness(
            frame.span(comparand.ref, *scan_span)
        )
        culprit: str | None = comparand.test if worse_test else comparand.ref
    else:
        bad = is_bad(scan.estimate, test.null, test.direction)
        culprit = comparand.test if bad else None
    return Finding(
        comparand,
        test,
        None,
        p_scan,
        None,
        None,
        None,
        culprit,
        1.0,
        len(grid),
        scan,
        _Later(locate),
    )


def _first_served(frame: SubjectFrame, arm: str, exposure: str) -> int | None:
    """The epoch minute of ``arm``'s first traffic in the frame (None: it has none)."""
    served = np.flatnonzero(frame.minute_column(arm, exposure) > 0)
    return frame.window.fetch_start + int(served[0]) if len(served) else None


def ended(frame: SubjectFrame, f: Finding, least_minutes: int) -> bool:
    """Whether ``f``'s departure was over before the window's end: its focus stops at least
    ``least_minutes`` early, and those last minutes hold traffic that is back near the reference
    (not departing at p < 0.05 the same way, and at most half as far from no change)."""
    w = frame.window
    tail = (f.focus[1], w.end)
    if tail[1] - tail[0] < least_minutes:
        return False
    c = f.comparand
    now = frame.span(c.test, *tail)
    if c.concurrent:
        ref: SumsLike = frame.span(c.ref, *tail)
    elif c.expected is not None and f.test.expected_sums is not None:
        ref = f.test.expected_sums(c.expected)
    else:
        ref = frame.span(c.ref, *f.ref_span)
    if now["n"] < f.test.min_n or ref["n"] < f.test.min_n:
        return False
    direction: Direction = "both" if c.concurrent else f.test.direction
    late = f.test.compare(now, ref, direction)
    if not late.valid:
        return False
    same_way = (late.estimate > f.test.null) == (f.comparison.estimate > f.test.null)
    if same_way and late.p_value < 0.05:
        return False
    return abs(late.estimate - f.test.null) <= 0.5 * abs(f.comparison.estimate - f.test.null)


def _ref_span(
    comparand: Comparand, w: Window, focus: tuple[int, int], onset: int
) -> tuple[int, int]:
    if comparand.concurrent:
        return focus
    # A baseline the fault already reached is no baseline: stop it at the onset when possible.
    stop = min(onset, w.start)
    return (w.fetch_start, stop) if stop - w.fetch_start >= 5 else (w.fetch_start, w.start)


def _onset_segment(
    frame: SubjectFrame, comparand: Comparand, test: RateTest, direction: Direction
) -> tuple[int, int] | None:
    # The test group's own rate: adjusting by the reference's per-minute rate would add the
    # reference's noise (clicks are sparse), and rates do not follow the traffic's daily curve.
    into_window = frame.window.start - frame.window.fetch_start
    # Against a baseline, the departure must begin inside the window (the baseline is the
    # reference); against control or a known value, it may have begun earlier.
    first = 0 if comparand.concurrent or comparand.expected is not None else into_window
    arm, events, exposure = comparand.test, test.events, test.exposure
    # Nor before the group's first traffic (an experiment launched inside the window): minutes
    # without requests cost a segment nothing, so it would start anywhere in them.
    served = _first_served(frame, arm, exposure)
    if served is not None:
        first = max(first, served - frame.window.fetch_start)
    seg: tuple[int, int] | None = frame.derived(
        f"onset:{arm}:{events}:{exposure}:{direction}:{first}",
        lambda: epidemic_segment(
            frame.minute_column(arm, events),
            frame.minute_column(arm, exposure),
            direction,
            min_end=into_window + 2,
            min_start=first,
        ),
    )
    if seg is None:
        return None
    fs = frame.window.fetch_start
    return fs + seg[0], fs + seg[1]


def judge(
    findings: Sequence[Finding | None],
    *,
    control: str | None,
    alpha_fail: float,
    alpha_warn: float,
) -> Judgement:
    """Holm over the family, then decide the verdict and which arm (or every arm) is at fault.

    Experiment families hold ``arm vs control`` findings and ``arm vs its baseline`` findings for
    every arm. The culprit is the worse side of a significant arm-control gap; when no arm differs
    from control but every arm moved against its own baseline, the cause is shared by all arms.
    """
    found = [f for f in findings if f is not None]
    if not found:
        return Judgement("no_data", None, None, "none", [])
    adj = holm([f.p_value for f in found])
    found = [replace(f, adjusted_p=float(p)) for f, p in zip(found, adj, strict=True)]
    levels = (("fail", alpha_fail, "fail_effect"), ("warn", alpha_warn, "warn_effect"))
    for level, alpha, attr in levels:
        sig = [f for f in found if f.significant(alpha, getattr(f.test, attr))]
        rel = [f for f in sig if f.comparand.concurrent]
        if rel:
            top = min(rel, key=lambda f: f.adjusted_p)
            alone = top.culprit == control and _left_alone(control, sig)
            return Judgement(level, top, top.culprit, "arm", found, control_moved=alone)
        own = [f for f in sig if not f.comparand.concurrent]
        if not own:
            continue
        top = min(own, key=lambda f: f.adjusted_p)
        if control is None:
            return Judgement(level, top, None, "subject", found)
        arms = {f.comparand.test for f in found if not f.comparand.concurrent}
        moved = _moved_together(found, top)
        if len(arms) > 1 and moved == arms and not _apart(found, top):
            # Every arm moved together: real, but not this experiment's doing (lost logs, a
            # production-model fault, a fault in another layer's experiment). Never a fail here.
            return Judgement("warn", top, None, "all_arms", found)
        if moved == arms or moved == {top.comparand.test}:
            # One arm left its expected value or baseline while the others stayed put, or moved
            # with them but stands apart from control too: its own fault.
            alone = top.comparand.test == control and moved == {control}
            return Judgement(level, top, top.comparand.test, "arm", found, control_moved=alone)
        return Judgement("warn", top, top.comparand.test, "arm", found)
    return Judgement("ok", min(found, key=lambda f: f.adjusted_p), None, "none", found)


def _left_alone(control: str | None, sig: Sequence[Finding]) -> bool:
    """Whether the control arm, and no other, left its own baseline significantly in the bad
    direction (``sig``: the family's significant findings at the level judged).

    A gap whose worse side is the control is most often a better test arm; only when the
    control itself moved, alone, is the gap its fault (its own configuration, or what it alone
    serves)."""
    own = {f.comparand.test for f in sig if not f.comparand.concurrent}
    return control is not None and own == {control}


def _apart(found: Sequence[Finding], top: Finding) -> bool:
    """Whether ``top``'s arm also stands apart from control: a material gap the same way, at the
    leniency with which :func:`_moved_together` counts an arm as moved (0.05), but after the
    family's correction. Then its move is not what every arm shares.
    """
    way = top.decisive.estimate > top.test.null
    return any(
        f.comparand.concurrent
        and f.culprit == top.comparand.test
        and (f.decisive.estimate > f.test.null) == way
        and f.significant(0.05, f.test.warn_effect)
        for f in found
    )


def _moved_together(found: Sequence[Finding], top: Finding) -> set[str]:
    """Arms whose own-baseline change matches ``top``'s: same way, at least half as large."""
    size = top.test.magnitude(top.decisive.estimate)
    way = top.decisive.estimate > top.test.null
    return {
        f.comparand.test
        for f in found
        if not f.comparand.concurrent
        and f.culprit is not None
        and (f.decisive.estimate > f.test.null) == way
        and f.test.magnitude(f.decisive.estimate) >= 0.5 * size
        and f.decisive.p_value < 0.05
    }
