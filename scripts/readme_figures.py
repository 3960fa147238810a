"""Write the README's figures section from ``bench.json`` and the eval summary in docs/evals.md.

The README keeps one generated block between ``<!-- figures:begin -->`` and
``<!-- figures:end -->``: the benchmark figures of the last ``make bench`` (each against its goal,
with the command that measured it), the eval comparison table that ``vigil eval --markdown
docs/evals.md`` maintains, and the held-out figures when a held-out eval JSON is given. A section
missing from the inputs is left out rather than invented.

Usage: python scripts/readme_figures.py [--bench bench.json] [--evals docs/evals.md]
       [--holdout holdout.json] [README.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

_BLOCK = re.compile(r"<!-- figures:begin -->\n.*?<!-- figures:end -->", re.DOTALL)
_SUMMARY = re.compile(
    r"<!-- vigil-eval:begin summary -->\n(?P<body>.*?)<!-- vigil-eval:end summary -->", re.DOTALL
)
_FIGURES = ("ac1", "ac3", "experiment_acc", "onset_acc", "mitigation_acc")


def _lifecycle_rows(bench: dict[str, Any]) -> list[str]:
    """Rows of the fleet, stores, console and preflight sections, when measured."""
    rows: list[str] = []
    fleet = bench.get("fleet")
    if fleet:
        big = max(fleet["assignments"], key=lambda a: a["experiments"])
        rows.append(
            f"| `assignments(request)` at {big['experiments']:,} experiments in {big['layers']} "
            f"layers, Vigil vs GrowthBook | {big['assignments_us']} µs vs "
            f"{big['growthbook_us']:,.0f} µs: **{big['speedup_vs_growthbook']}×** | < 100 µs, "
            "≥ 15× | `vigil bench --only fleet` |"
        )
        dist = fleet["distribution"]
        rows.append(
            f"| kill → first `False` in {dist['subscribers']} subscriber processes over the "
            f"signed SSE stream ({dist['kills']} kills, {dist['experiments']:,} experiments) | "
            f"p50 {dist['kill_propagation_ms_p50']} ms, p99 **{dist['kill_propagation_ms_p99']} "
            "ms** | p99 < 100 ms on loopback | `vigil bench --only fleet` |"
        )
        inv = max(fleet["investigations"], key=lambda i: (i["experiments"], i["requests"]))
        rows.append(
            f"| investigation of a global alert at {inv['experiments']:,} experiments, "
            f"{inv['requests']:,} requests | **{inv['seconds']} s** (fault found: "
            f"{inv['found']}) | < 5 s | `vigil bench --only fleet` |"
        )
        if fleet.get("memory"):
            mem = max(fleet["memory"], key=lambda m: m["requests_millions"])
            rows.append(
                f"| peak RSS of an investigation at {mem['requests_millions']:.0f} M requests "
                f"| **{mem['peak_rss_mb']:,.0f} MB** | < 1 GB | `vigil bench --only fleet` |"
            )
    stores = bench.get("stores")
    if stores and "write_rates" in stores:
        w = stores["write_rates"]
        inv = stores["investigations"]
        rows.append(
            f"| simulation write rate per store (load average {w['load_average']}) | DuckDB "
            f"{w['duckdb']['k_requests_per_s']:,} k/s, PostgreSQL "
            f"**{w['postgresql']['k_requests_per_s']:,} k/s**, chDB "
            f"**{w['chdb']['k_requests_per_s']:,} k/s** | PostgreSQL ≥ 300 k, chDB ≥ 500 k "
            "| `vigil bench --only stores` |"
        )
        rows.append(
            f"| the same investigation on each store (same answer: {inv['same_answer']}) | "
            f"DuckDB {inv['duckdb']['best_s']} s, PostgreSQL {inv['postgresql']['best_s']} s, "
            f"chDB {inv['chdb']['best_s']} s | — | `vigil bench --only stores` |"
        )
    console = bench.get("console")
    if console:
        page = console["experiment_page"]
        cold = max(
            v["ms_1000"]
            for v in console["cold"].values()
            if isinstance(v, dict) and "under_limit" in v
        )
        rows.append(
            f"| console pages at 1,000 experiments, slowest warm / first load after a start "
            f"| {console['slowest_ms_1000']} ms / "
            f"{cold} ms "
            f"(experiment charts: {page['charts_fragment_ms']['computed']} ms computed, "
            f"{page['charts_fragment_ms']['kept']} ms kept) | < 300 ms "
            "| `vigil bench --only console` |"
        )
    pre = bench.get("preflight")
    if pre:
        jit = pre["risk_apachejit"]
        caught = " / ".join(f"{jit['caught'][g]:.1%}" for g in ("5%", "10%", "50%"))
        plain = " / ".join(f"{jit['plain_lr_caught'][g]:.1%}" for g in ("5%", "10%", "50%"))
        rows.append(
            f"| risk model on ApacheJIT 2019, incidents caught gating the riskiest 5 / 10 / 50 % "
            f"| **{caught}** (plain LR: {plain}) | above plain LR at every gate "
            "| `vigil bench --only preflight` |"
        )
        rows.append(
            f"| preflight of one experiment, V2 replay included | "
            f"**{pre['preflight']['v2_wall_seconds_one_experiment']:.2f} s** | < 10 s "
            "| `vigil bench --only preflight` |"
        )
    return rows


def _bench_rows(bench: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    alloc = bench.get("allocation")
    if alloc:
        rows.append(
            f"| `is_enabled` per call, Vigil vs GrowthBook SDK | {alloc['vigil_ns']:,.0f} ns vs "
            f"{alloc['growthbook_ns']:,.0f} ns: **{alloc['speedup']}×** faster | ≥ 10× "
            "| `vigil bench --only allocation` |"
        )
        rows.append(
            f"| bulk allocation (`assign_many`) | **{alloc['bulk_units_per_s'] / 1e6:.1f} M** "
            "units/s | ≥ 5 M | `vigil bench --only allocation` |"
        )
    sim = bench.get("simulation")
    if sim:
        rows.append(
            f"| simulation into DuckDB, end to end | **{sim['requests_per_s'] / 1e6:.2f} M** "
            f"requests/s ({sim['requests']:,} requests in {sim['seconds']} s) | ≥ 1 M "
            "| `vigil bench --only simulation` |"
        )
    checks = bench.get("checks")
    if checks:
        rows.append(
            f"| check battery vs one aggregate scan, {checks['rows'] / 1e6:.1f} M requests "
            f"| {checks['battery_s']} s vs {checks['scan_s']} s: ratio **{checks['ratio']}** "
            f"(investigation window: {checks['window_ratio']}; one experiment's exposure join "
            f"alone, as `count(*)`: {checks['join_ratio']}) | — "
            "| `vigil bench --only checks` |"
        )
        if "battery_over_floor" in checks:
            issue = ""
            if "issue_floor_s" in checks:
                issue = (
                    f"; against issue 17's wording of the floor (the experiment's join by minute "
                    f"× arm with every sum, plus the dimensions pass, no attribution join: "
                    f"{checks['issue_floor_s']} s) {checks['battery_over_issue_floor']}×"
                )
            if "battery_cold_over_floor" in checks:
                issue += (
                    f"; timed once from cold buffers as before this protocol: "
                    f"{checks['battery_cold_over_floor']}×"
                )
            rows.append(
                f"| check battery vs its floor (`count(*)` of the passes no battery avoids: the "
                f"experiment's exposure join, every experiment's exposure join, one GROUP BY "
                f"minute × dimensions), same run, both best of three in alternating rounds "
                f"| {checks['battery_s']} s "
                f"vs {checks['floor_s']} s: **{checks['battery_over_floor']}×**, Python "
                f"{checks['python_share']:.1%} of the battery{issue} | ≤ 1.5×, Python < 10 % "
                "| `vigil bench --only checks` |"
            )
        rows.append(
            f"| peak memory of the battery | **{checks['peak_rss_mb']:,.0f} MB** | < 1024 MB "
            "| `vigil bench --only checks` |"
        )
    rows.extend(_lifecycle_rows(bench))
    ext = bench.get("external")
    if ext and "tcpd_f1" in ext:
        rows.append(
            f"| change points on TCPD ({ext['tcpd_series']} series, margin 5) | F1 "
            f"**{ext['tcpd_f1']:.3f}**, cover {ext['tcpd_cover']:.3f} (no change point: F1 "
            f"{ext['tcpd_zero_f1']:.3f}) | F1 ≥ 0.80 | `vigil bench --only external` |"
        )
    if ext and "rs_f1" in ext:
        rows.append(
            f"| dimension attribution on RiskLoc RS ({ext['rs_cases']} cases) | exact-set F1 "
            f"**{ext['rs_f1']:.3f}** (Adtributor, same run: "
            f"{ext.get('rs_adtributor_riskloc_settings_f1', float('nan')):.3f}) | — "
            "| `vigil bench --only external` |"
        )
    chaos = bench.get("chaos")
    if chaos:
        rows.append(
            f"| `kill -9` of the real server at random moments ({chaos['trials']} trials: "
            f"{chaos['alerts_accepted']} alerts accepted, {chaos['approvals']} approvals and "
            f"{chaos['rejections']} rejections answered, {chaos['mitigations_executed']} "
            f"mitigations executed) | **{chaos['invariant_violations']}** invariant violations, "
            f"**{chaos['http_5xx']}** × 5xx (median {chaos['median_recovery_s']} s from restart "
            "to nothing half-done) | 0 and 0 | `vigil bench --only chaos` |"
        )
    return rows


def _holdout_line(path: Path) -> str:
    got = json.loads(path.read_text())
    figures = ", ".join(f"`{k}` {got[k]:.3f}" for k in _FIGURES)
    failed = [r for r in got["results"] if not r["passed"]]
    misses = "".join(f"\n- `{r['name']}`: {'; '.join(r['why'])}" for r in failed)
    return (
        f"**Held out.** On {got['scenarios']} scenarios the thresholds were never developed on "
        "(`make holdout`: `scripts/make_holdout.py` re-draws every scenario of the suite with a "
        "new seed, its fault minutes shifted by up to 20 minutes and its experiments renamed), "
        f"the deterministic reasoner scores {figures}, `false_positive_rate` "
        f"{got['false_positive_rate']:.3f}, `unsafe_actions` {got['unsafe_actions']}, median "
        f"{got['median_seconds']:.2f} s. What it missed:{misses or ' nothing.'}"
    )


def render(bench: dict[str, Any] | None, evals_md: str | None, holdout: Path | None) -> str:
    """The generated block, markers included."""
    parts = ["<!-- figures:begin -->", "## Figures", ""]
    if bench:
        parts += [
            "### Benchmarks (`make bench`, this 2-core machine; every ratio compares two things "
            "measured in one run)",
            "",
            "| what | measured | goal | command |",
            "|---|---|---|---|",
            *_bench_rows(bench),
            "",
        ]
        if bench.get("fleet"):
            parts += [
                "The fleet rows' sizes are options: `FLEET_INVESTIGATIONS=1000 FLEET_RPM=3100 "
                "FLEET_MEMORY_MILLIONS=10,30 FLEET_KILLS=10 vigil bench --only fleet` (defaults: "
                "1,000 requests a minute, 1 M for memory, 5 kills).",
                "",
            ]
        if bench.get("power"):
            parts += [
                "Detection rate against fault severity for each check (fixed seeds, "
                f"{bench['power']['seeds_per_severity']} worlds per severity; severity 0 is a "
                "healthy world, so its point is the false-alarm rate), made by "
                "`vigil bench --only power`:",
                "",
                "![power curves](docs/power.png)",
                "",
            ]
    if evals_md:
        found = _SUMMARY.search(evals_md)
        if found:
            body = found.group("body").replace("### Figures by reasoner\n", "").strip()
            parts += [
                "### The scenario suite (`vigil eval evals/scenarios --json eval.json "
                "--markdown docs/evals.md [--reasoner largest-change|random]`)",
                "",
                body,
                "",
            ]
    if holdout is not None and holdout.exists():
        parts += [_holdout_line(holdout), ""]
    parts += ["Per-scenario rows and per-fault-kind figures: `docs/evals.md`.", ""]
    parts.append("<!-- figures:end -->")
    return "\n".join(parts)


def main() -> None:
    """Rewrite the README's figures block in place."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("readme", nargs="?", default="README.md", type=Path)
    parser.add_argument("--bench", default="bench.json", type=Path)
    parser.add_argument("--evals", default="docs/evals.md", type=Path)
    parser.add_argument("--holdout", default=None, type=Path)
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text()) if args.bench.exists() else None
    evals_md = args.evals.read_text() if args.evals.exists() else None
    text = args.readme.read_text()
    if not _BLOCK.search(text):
        raise SystemExit(f"{args.readme}: no <!-- figures:begin --> ... <!-- figures:end --> block")
    block = render(bench, evals_md, args.holdout)
    args.readme.write_text(_BLOCK.sub(lambda _: block, text))
    print(f"{args.readme}: figures updated")


if __name__ == "__main__":
    main()
