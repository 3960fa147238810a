"""``vigil bench --only power``: detection rate against fault severity, per check.

For every fault kind, one small world (3,000 requests a minute, one experiment on 20 % of
traffic) is simulated with the fault at a grid of severities and a few fixed seeds, up to its
alert 30 minutes after the onset; the kind's matching check then reads the hour before the alert
(with the hour before that as baseline), as an investigation would at alert time. A detection is
a ``fail`` that names the right arm (experiment faults); severity 0 (no fault) gives each check's
false-alarm rate. Figures go into the JSON and, as a plot, into ``docs/power.png``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.bench import BenchOptions
from evals.sim import (
    Scenario,
    minute_to_ts,
    parse_scenario,
    scenario_toolbox,
    simulate,
    ts_to_minute,
)
from tools.result import CheckResult
from tools.toolbox import Toolbox

__all__ = ["CURVES", "Curve", "run"]

ONSET, ALERT = 90, 120


@dataclass(frozen=True)
class Curve:
    """One fault kind: its matching check, scope and severity grid."""

    kind: str
    check: str
    scope: str  # "experiment", "model" or "global"
    severities: tuple[float, ...]
    extra: tuple[tuple[str, Any], ...] = ()


CURVES = (
    Curve(
        "prediction_collapse",
        "prediction",
        "experiment",
        (0.002, 0.005, 0.01, 0.02, 0.05),
        (("mode", "nan"),),
    ),
    Curve("miscalibration", "calibration", "experiment", (1.05, 1.1, 1.2, 1.35, 1.6)),
    Curve("ne_regression", "ne", "experiment", (0.2, 0.4, 0.6, 0.9, 1.2)),
    Curve("stale_model", "staleness", "experiment", (0.1, 0.3, 1.0)),
    Curve("model_fallback", "fallback", "experiment", (0.002, 0.005, 0.01, 0.02, 0.05)),
    Curve("infra_outage", "infra", "global", (0.0005, 0.001, 0.002, 0.005, 0.01)),
    Curve("allocation_bug", "srm", "experiment", (0.01, 0.02, 0.04, 0.08, 0.15)),
    Curve("logging_loss", "calibration", "model", (0.02, 0.05, 0.1, 0.2, 0.3)),
)

_WORLD: dict[str, Any] = {
    "name": "power",
    "seed": 0,
    "world": {
        "start": "2026-11-20T06:00:00Z",
        "minutes": ALERT,
        "requests_per_minute": 3000,
        "models": [
            {"id": "ctr_v41", "quality": 0.75, "refresh_minutes": 60},
            {"id": "ctr_v42", "quality": 0.77, "refresh_minutes": 60},
        ],
        "production_model": "ctr_v41",
        "experiments": [
            {
                "id": "879",
                "name": "Ranker",
                "layer": "ranking",
                "traffic_pct": 20,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
            }
        ],
    },
    "alert": {"metric": "revenue", "minute": ALERT, "experiment": "879"},
    "expect": {"root_cause": "none"},
}


def _scenario(curve: Curve, severity: float, seed: int) -> Scenario:
    data = copy.deepcopy(_WORLD)
    data["name"] = f"power-{curve.kind.replace('_', '-')}"
    data["seed"] = seed
    if severity > 0:
        fault: dict[str, Any] = {"kind": curve.kind, "severity": severity}
        fault["start_minute"] = 60 if curve.kind == "stale_model" else ONSET
        if curve.scope == "experiment":
            fault["experiment"] = "879"
        elif curve.scope == "model":
            fault["model"] = "ctr_v41"
        fault.update(dict(curve.extra))
        data["faults"] = [fault]
    return parse_scenario(data)


def _check(curve: Curve, box: Toolbox, scenario: Scenario) -> CheckResult:
    start, end = minute_to_ts(scenario, ALERT - 60), minute_to_ts(scenario, ALERT)
    if curve.check == "infra":
        return box.infra(start, end)
    if curve.check == "srm":
        return box.srm(start, end, "879")
    method = getattr(box, curve.check)
    result: CheckResult
    if curve.scope == "model":
        result = method(start, end, model_id="ctr_v41")
    else:
        result = method(start, end, experiment_id="879")
    return result


def _detected(curve: Curve, result: CheckResult) -> bool:
    if result.verdict != "fail":
        return False
    return curve.scope != "experiment" or result.arm == "test"


def _plot(curves: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, 4, figsize=(14, 6.5), sharey=True)
    for ax, (kind, data) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(data["severity"], data["detection"], marker="o")
        ax.axhline(data["false_alarm"], color="grey", linestyle=":", label="no fault")
        ax.set_title(f"{kind}\n({data['check']} check)", fontsize=9)
        ax.set_xscale("log" if kind != "miscalibration" else "linear")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(data["severity"], [f"{s:g}" for s in data["severity"]])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("severity", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", rotation=30)
    axes[0, 0].set_ylabel("detection rate")
    axes[1, 0].set_ylabel("detection rate")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "Vigil checks: detection rate vs fault severity at alert time "
        "(30 min of fault in a 60-min window, 300 req/min per arm)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(opts: BenchOptions) -> dict[str, Any]:
    """Detection rate per severity for every check; writes ``docs/power.png``."""
    seeds = (1, 2) if opts.quick else (1, 2, 3, 4)
    workdir = Path(opts.workdir) / "power"
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    curves: dict[str, dict[str, Any]] = {}
    for curve in CURVES:
        grid = curve.severities[1::2] if opts.quick else curve.severities
        rates, onsets = [], []
        false_alarms = 0
        for severity in (0.0, *grid):
            hits = 0
            for seed in seeds:
                scenario = _scenario(curve, severity, seed)
                url = f"duckdb:///{workdir / f'{scenario.name}-{seed}.duckdb'}"
                simulate(scenario, url, replace=True)
                result = _check(curve, scenario_toolbox(scenario, url), scenario)
                hit = _detected(curve, result)
                if severity == 0.0:
                    false_alarms += result.verdict == "fail"
                    continue
                hits += hit
                if hit and result.onset is not None:
                    want = 60 if curve.kind == "stale_model" else ONSET
                    onsets.append(abs(ts_to_minute(scenario, result.onset) - want))
            if severity > 0:
                rates.append(hits / len(seeds))
        curves[curve.kind] = {
            "check": curve.check,
            "severity": list(grid),
            "detection": rates,
            "false_alarm": false_alarms / len(seeds),
            "median_onset_error_min": sorted(onsets)[len(onsets) // 2] if onsets else None,
        }
    plot = Path("docs/power.png")
    _plot(curves, plot)
    return {
        "seeds_per_severity": len(seeds),
        "seconds": round(time.perf_counter() - began, 1),
        "plot": str(plot),
        "curves": curves,
    }
