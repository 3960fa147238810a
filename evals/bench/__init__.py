"""``vigil bench``: each section measures two things in one run and reports their ratio.

A section is a module ``evals.bench.<name>`` with ``run(opts: BenchOptions) -> dict``; its dict is
written under the section's key of the JSON file.
"""

from __future__ import annotations

import importlib
import json
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SECTIONS", "BenchOptions", "peak_rss_mb", "run_bench"]

SECTIONS = (
    "allocation",
    "simulation",
    "checks",
    "external",
    "power",
    "chaos",
    "console",
    "stores",
    "rollout",
    "preflight",
    "fleet",
)


@dataclass(frozen=True)
class BenchOptions:
    """Options shared by every section."""

    workdir: Path = Path(".vigil/bench")
    shared_data: Path = Path("../shared/data")
    quick: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def run_bench(only: list[str] | None, opts: BenchOptions, json_path: Path | None) -> dict[str, Any]:
    """Run the named sections (all by default), merge into ``json_path`` and return the figures."""
    names = only or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {list(SECTIONS)}")
    figures: dict[str, Any] = {}
    if json_path is not None and json_path.exists():
        figures = json.loads(json_path.read_text())
    opts.workdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        module = importlib.import_module(f"evals.bench.{name}")
        figures[name] = module.run(opts)
        if json_path is not None:
            json_path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


def peak_rss_mb() -> float:
    """This process's own peak resident memory, in MB.

    Linux keeps ``ru_maxrss`` across ``fork`` and ``exec``: a section's spawned child would
    report the bench runner's peak (2.6 GB after the earlier sections) instead of its own. The
    high-water mark of the process's current memory map (``VmHWM``) starts afresh at ``exec``;
    ``ru_maxrss`` is the fallback where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
