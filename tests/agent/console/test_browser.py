"""The console end to end in a real browser: Debian's Chromium driven by Playwright.

A real uvicorn server on loopback serves the real agent and experiment core over a simulated
world (:mod:`tests.agent.console.world`). Flows: sign in; build an experiment with a deliberate
error (shown beside its field), fix it, save it, start it and watch the dashboard (refreshing by
itself) show it ramping; an alert's investigation whose kill proposal bob may not approve (no
button; a forged POST with his valid session and CSRF token is refused 403) and carol, on call,
approves (the experiment shows killed, the audit page the entry).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.agent.console.world import Stack, build_world

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    raise RuntimeError("Chromium is missing: run `sh scripts/ensure_chromium.sh` (as root)")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    return build_world(tmp_path_factory.mktemp("console-world"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def stack(tmp_path: Path, world: tuple[Any, str]) -> Iterator[Stack]:
    scenario, url = world
    with Stack(tmp_path, scenario, url) as running:
        yield running


def _page(browser: Browser, width: int = 1280) -> Page:
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before a decision
    return page


def _sign_in(page: Page, base: str, token: str, then: str = "/console/") -> None:
    page.goto(f"{base}{then}")
    expect(page).to_have_url(re.compile(r"/console/login"))
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base}{then}")


def test_sign_in_refuses_a_wrong_token_and_sets_an_http_only_cookie(
    browser: Browser, stack: Stack
) -> None:
    page = _page(browser)
    base = stack.server.url
    page.goto(f"{base}/console/")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("not one of VIGIL_API_TOKENS")
    page.fill("#token", "tok-alice")
    page.click("button[type=submit]")
    expect(page.locator("header .who")).to_contain_text("alice")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "vigil_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""  # script cannot read the session
    page.context.close()


def test_build_with_an_error_fix_save_start_and_watch_it_ramp(
    browser: Browser, stack: Stack
) -> None:
    base = stack.server.url
    dashboard = _page(browser)
    _sign_in(dashboard, base, "tok-alice")
    expect(dashboard.locator("#live")).not_to_contain_text("901")

    page = _page(browser)
    _sign_in(page, base, "tok-alice", "/console/templates")
    page.click("#template-ranking")
    expect(page.locator("#f-layer")).to_contain_text("90.0 % free")  # 879 holds 10 %
    expect(page.locator("#estimate")).to_contain_text("to detect a 2.0% change")
    page.fill("#f-id", "901")
    page.fill("#f-name", "Ranking candidate v42")
    page.fill("#f-traffic_pct", "95")  # deliberate: more than the layer has free
    page.click("#save")
    error = page.locator("[data-error-for=traffic_pct]")
    expect(error).to_contain_text("over-allocated")
    expect(page.locator("[data-error-for]")).to_have_count(1)  # beside that field only
    assert page.locator("#f-name").input_value() == "Ranking candidate v42"  # the form is kept

    page.fill("#f-traffic_pct", "20")
    page.click("#save")
    expect(page).to_have_url(f"{base}/console/experiments/901/start?notice=Draft+901+saved.")
    # The preflight runs: no inference server and no risk model here, so it is yellow and the
    # start needs on-call's approval, through the same machinery as a kill.
    expect(page.locator("#preflight-report")).to_contain_text("Before starting experiment 901")
    expect(page.locator("#decision")).to_contain_text("needs approval")
    page.click("#start")
    expect(page.locator("[role=status]")).to_contain_text("on-call approves it")
    assert stack.experiments.get("901").status == "draft"
    expect(page.locator("button.approve")).to_have_count(0)  # alice owns it but is not on call
    page.context.close()

    carol = _page(browser)
    _sign_in(carol, base, "tok-carol", "/console/experiments/901")
    carol.click("button.approve")
    expect(carol.locator("[role=status]")).to_contain_text("start_experiment of 901: executed")
    expect(carol.locator("h1")).to_contain_text("ramping")
    assert stack.experiments.get("901").status == "ramping"
    carol.context.close()

    # The dashboard opened before the start shows it without a reload.
    row = dashboard.locator("#live tr[data-experiment='901']")
    expect(row).to_contain_text("ramping", timeout=20_000)
    expect(row).to_contain_text("stage 1/4")
    dashboard.context.close()


def test_only_an_authorised_user_approves_the_alerts_kill(browser: Browser, stack: Stack) -> None:
    base = stack.server.url
    investigation = stack.fire_alert()
    stack.wait_for(investigation, "awaiting_approval")
    (mitigation,) = stack.investigator.get(investigation).mitigations
    assert mitigation.action == "kill_experiment" and mitigation.target == "879"
    path = f"/console/investigations/{investigation}"

    # Bob may read, sees no button, and a forged POST with his own valid CSRF token is refused.
    bob = _page(browser)
    _sign_in(bob, base, "tok-bob", path)
    expect(bob.locator("#mitigations")).to_contain_text("kill experiment")
    expect(bob.locator("#mitigations")).to_contain_text("awaiting carol, alice")
    expect(bob.locator("button.approve")).to_have_count(0)
    token = bob.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    forged = bob.request.post(
        f"{base}/console/mitigations/{mitigation.id}/approve",
        form={"csrf": token, "back": path},
        max_redirects=0,
    )
    assert forged.status == 403
    assert "may not approve" in forged.text()
    no_csrf = bob.request.post(
        f"{base}/console/mitigations/{mitigation.id}/approve", form={}, max_redirects=0
    )
    assert no_csrf.status == 403
    assert stack.investigator.get(investigation).mitigations[0].status == "proposed"
    assert not stack.experiments.get("879").killed
    bob.context.close()

    # Carol, on call, approves: the kill executes, the experiment shows killed, audit has it.
    carol = _page(browser)
    _sign_in(carol, base, "tok-carol", path)
    carol.click(f"button.approve[data-mitigation='{mitigation.id}']")
    expect(carol.locator("[role=status]")).to_contain_text("kill_experiment of 879: executed")
    expect(carol.locator("#mitigations")).to_contain_text("approved by carol")
    carol.goto(f"{base}/console/experiments/879")
    expect(carol.locator("#killed")).to_be_visible()
    expect(carol.locator("#kill")).to_have_count(0)  # nothing left to propose
    carol.goto(f"{base}/console/audit?experiment=879&actor=carol")
    expect(carol.locator("#audit")).to_contain_text("kill")
    expect(carol.locator("#audit")).to_contain_text(mitigation.id)
    assert stack.experiments.get("879").killed
    carol.context.close()


def test_kill_button_files_a_proposal_and_pages_fit_a_phone(browser: Browser, stack: Stack) -> None:
    base = stack.server.url
    page = _page(browser, width=390)
    _sign_in(page, base, "tok-alice", "/console/experiments/879")
    page.fill("input[name=reason]", "suspicious revenue")
    page.click("#kill")
    expect(page.locator("[role=status]")).to_contain_text("needs an approval")
    assert not stack.experiments.get("879").killed  # a proposal, never a kill
    # alice owns 879, so the policy lets her approve her own kill proposal.
    expect(page.locator("button.approve")).to_have_count(1)
    for where in ("/console/", "/console/experiments/879", "/console/builder", "/console/audit"):
        page.goto(f"{base}{where}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{where} is {overflow}px wider than a 390px screen"
    page.context.close()


def test_the_experiment_page_charts_each_guardrail_and_the_models_health_at_both_widths(
    browser: Browser, stack: Stack
) -> None:
    base = stack.server.url
    for width in (1280, 390):
        page = _page(browser, width=width)
        _sign_in(page, base, "tok-bob", "/console/experiments/879")
        # The page comes first; its charts arrive as a fragment, replacing the placeholder.
        charts = page.locator("#guardrails figure.chart")
        expect(charts).to_have_count(4, timeout=30_000)
        expect(page.locator("#charts-pending")).to_have_count(0)
        # As of the telemetry's last complete minute: the world's newest request is in 08:49.
        as_of = page.locator("#charts-as-of")
        expect(as_of).to_contain_text("Charts as of 2026-11-20 08:49 UTC")
        # 879 declares revenue per request (and SRM); NE, calibration and latency are watched.
        metrics = [charts.nth(k).get_attribute("data-metric") for k in range(charts.count())]
        assert metrics == ["revenue_per_request", "ne", "calibration", "latency_p99"]
        for k in range(charts.count()):
            svg = charts.nth(k).locator("svg")
            expect(svg).to_be_visible()
            expect(svg).to_contain_text("confidence sequence (low)")
            box = svg.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
        revenue = page.locator("#guardrails figure[data-metric=revenue_per_request]")
        expect(revenue).to_contain_text("tolerance -2.0%")
        expect(revenue.locator("figcaption")).to_contain_text("guardrail: at most 2.0 % worse")
        ne = page.locator("#guardrails figure[data-metric=ne] figcaption")
        expect(ne).to_contain_text("watched, not a guardrail")
        levels = page.locator("#levels")
        expect(levels.locator("tr[data-arm=control]")).to_contain_text("(control)")
        expect(levels.locator("tr[data-arm=test]")).to_contain_text(re.compile(r"\d ms · \d+ ms"))
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the experiment page is {overflow}px wider than {width}px"
        page.context.close()
