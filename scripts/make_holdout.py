"""Derive a held-out scenario set from the public suite: new seeds, shifted minutes, new ids.

The held-out worlds are different random draws with the fault at a different minute and the
experiments under different ids, so figures on them show whether the agent generalises beyond the
scenarios its thresholds were developed on. Usage: python scripts/make_holdout.py OUT_DIR [SEED]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import yaml

_SUITE = Path(__file__).resolve().parents[1] / "evals" / "scenarios"


def _minutes(doc: dict[str, Any]) -> list[int]:
    keys = ("start_minute", "end_minute")
    found = [f[k] for f in doc.get("faults", []) for k in keys if k in f]
    found += [e[k] for e in doc["world"]["experiments"] for k in keys if k in e]
    found.append(doc["alert"]["minute"])
    if "onset_minute" in doc["expect"]:
        found.append(doc["expect"]["onset_minute"])
    return found


def _shift(doc: dict[str, Any], delta: int) -> None:
    for f in doc.get("faults", []):
        for k in ("start_minute", "end_minute"):
            if k in f:
                f[k] += delta
    for e in doc["world"]["experiments"]:
        for k in ("start_minute", "end_minute"):
            if k in e:
                e[k] += delta
    doc["alert"]["minute"] += delta
    if "onset_minute" in doc["expect"]:
        doc["expect"]["onset_minute"] += delta


def _stale_onset(doc: dict[str, Any]) -> None:
    """A stale fault first shows at the first publication it suppresses, not at its start minute.

    A model that stops refreshing at minute 126 with a 60-minute cadence keeps serving the version
    published at 120, exactly as a healthy model would until 180: nothing in the telemetry can
    place the onset before the first missed publication, so that is the held-out label.
    """
    cadences = {m["refresh_minutes"] for m in doc["world"]["models"] if m.get("refresh_minutes")}
    stale = [f for f in doc.get("faults", []) if f["kind"] == "stale_model"]
    if len(cadences) != 1 or not stale or "onset_minute" not in doc["expect"]:
        return
    (cadence,) = cadences
    start = min(f["start_minute"] for f in stale)
    if doc["expect"]["onset_minute"] == start:
        doc["expect"]["onset_minute"] = -(-start // cadence) * cadence


def _rename(doc: dict[str, Any], rng: random.Random) -> None:
    ids = {e["id"]: str(rng.randint(1000, 9999)) for e in doc["world"]["experiments"]}
    for e in doc["world"]["experiments"]:
        e["id"] = ids[e["id"]]
    for f in doc.get("faults", []):
        if "experiment" in f:
            f["experiment"] = ids[f["experiment"]]
    for part in (doc["alert"], doc["expect"], doc["expect"].get("rollout") or {}):
        if "experiment" in part:
            part["experiment"] = ids[part["experiment"]]


def main(out: Path, seed: int) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(_SUITE.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        doc["name"] = f"holdout-{doc['name']}"
        doc["seed"] = rng.randint(10_000, 99_999)
        minutes, total = _minutes(doc), doc["world"]["minutes"]
        lo, hi = max(-20, 90 - min(minutes)), min(20, total - 1 - max(minutes))
        if lo <= hi:
            _shift(doc, rng.randint(lo, hi))
        _stale_onset(doc)
        _rename(doc, rng)
        (out / f"holdout-{path.name}").write_text(yaml.safe_dump(doc, sort_keys=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2026)
