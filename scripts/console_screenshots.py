"""Screenshots of every console page into docs/screenshots/ (1280 px wide, and one at 390 px).

Builds the browser tests' world (a simulated fallback fault in experiment 879, the real agent
and experiment core behind a real uvicorn server), adds a second ramping experiment and an A/A
draft, fires the alert and waits for the investigation's kill proposal, then drives Debian's
Chromium with Playwright through each page::

    .venv/bin/python scripts/console_screenshots.py            # writes docs/screenshots/*.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lifecycle.config import Arm, Experiment, ExperimentFile
from tests.agent.console.test_browser import ARGS, CHROMIUM
from tests.agent.console.world import Stack, build_world


def _shoot(page: Page, base: str, path: str, out: Path, *, full: bool = True) -> None:
    page.goto(f"{base}{path}")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out), full_page=full)
    print(f"{out}")


def main() -> None:
    """Write the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="vigil-console-"))
    scenario, url = build_world(folder)
    with Stack(folder, scenario, url) as stack:
        two = {"control": Arm(model="ctr_v41"), "test": Arm(model="ctr_v42")}
        stack.experiments.create(
            ExperimentFile(
                experiments=[
                    Experiment(
                        id="880",
                        name="Calibration-aware ranking",
                        description="ctr_v42 with recalibration on 15 % of the layer.",
                        owner="dave",
                        layer="ranking",
                        traffic_pct=15,
                        arms=two,
                    ),
                    Experiment(
                        id="aa-1",
                        name="A/A check",
                        owner="bob",
                        layer="ranking",
                        traffic_pct=5,
                        arms={"control": Arm(model="ctr_v41"), "treatment": Arm(model="ctr_v41")},
                    ),
                ]
            ),
            "alice",
        )
        stack.experiments.start("880", "dave", reason="first stage")
        investigation = stack.fire_alert()
        stack.wait_for(investigation, "awaiting_approval")
        base = stack.server.url
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for width, suffix in ((1280, ""), (390, "-390")):
                context = browser.new_context(
                    viewport={"width": width, "height": 860}, device_scale_factor=1
                )
                page = context.new_page()
                page.goto(f"{base}/console/login")
                if not suffix:
                    page.screenshot(path=str(args.out / "login.png"))
                page.fill("#token", "tok-carol")
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/console/")
                if suffix:
                    _shoot(page, base, "/console/", args.out / f"dashboard{suffix}.png")
                    _shoot(
                        page, base, "/console/experiments/879", args.out / f"experiment{suffix}.png"
                    )
                    _shoot(
                        page,
                        base,
                        f"/console/investigations/{investigation}",
                        args.out / f"investigation{suffix}.png",
                        full=False,
                    )
                    context.close()
                    continue
                pages = {
                    "dashboard": "/console/",
                    "experiments": "/console/experiments",
                    "experiment": "/console/experiments/879",
                    "templates": "/console/templates",
                    "data": "/console/data",
                    "investigations": "/console/investigations",
                    "investigation": f"/console/investigations/{investigation}",
                    "audit": "/console/audit",
                    "start": "/console/experiments/aa-1/start",
                }
                for name, path in pages.items():
                    _shoot(page, base, path, args.out / f"{name}.png")
                page.goto(f"{base}/console/builder?template=ranking")
                page.fill("#f-id", "901")
                page.fill("#f-traffic_pct", "95")
                page.click("#check")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(args.out / "builder.png"), full_page=True)
                print(args.out / "builder.png")
                context.close()
            browser.close()


if __name__ == "__main__":
    main()
