"""The console in a real browser: Debian's Chromium driven by Playwright (the system browser,
never a downloaded one) against a `probewatch serve` started here on 127.0.0.1, fed the demo
scenario (two extracting accounts among ordinary users) and a small campaign.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from probewatch.cli.demo import demo_traffic
from probewatch.detect.features import FEATURE_NAMES
from probewatch.serve.journal import Journal
from tests.serve.test_server_campaigns import COT, SETTINGS, campaign_rounds, feed
from tests.support import TOKEN, SidecarProcess, free_port, httpx

pytestmark = pytest.mark.timeout(600)

CHROMIUM = Path("/usr/bin/chromium")
# No first-run work, no background or component traffic: the page's own requests are all there is.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXTRACTOR = "perturb-bot"  # the demo's perturbation-chain account: flagged within ~20 queries
FORGOTTEN = "boundary-prober"  # the demo's other extractor, forgotten through the console
MARKED = "home-cook"  # an ordinary demo user, marked known-benign through the console


def _browser_or_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    reason = _browser_or_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI must run the console in a real browser
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("console")
    server = SidecarProcess(root / "data", root / "server.log", **SETTINGS)
    try:
        server.wait_ready()
        with server.client() as http:
            start = time.time() - 3600.0
            events = demo_traffic()
            for i in range(0, len(events), 32):
                items = [{"account": a, "prompt": p, "ts": start + t} for a, p, t in events[i : i + 32]]
                assert http.post("/v1/observe", json={"items": items}).status_code == 200
            feed(http, campaign_rounds("cot", COT, "pm_console"))
            assert EXTRACTOR in http.get("/v1/accounts", params={"level": "flag"}).json()["accounts"]
            assert http.get("/v1/campaigns").json()["campaigns"], "the scenario should make a campaign"
        server.data_dir = root / "data"
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def requests_seen():
    return []


@pytest.fixture(scope="module")
def page(sidecar, requests_seen):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        context.on("request", lambda request: requests_seen.append(request.url))
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        context.close()
        browser.close()


def test_login_sets_an_httponly_strict_session_cookie_without_the_token(sidecar, page):
    page.goto(sidecar.url + "/ui/accounts")
    assert urlsplit(page.url).path == "/ui/login"  # not signed in yet
    page.fill("#token", "wrong-token-0123456789")
    page.click("button[type=submit]")
    assert "not the sidecar's API token" in page.text_content("p.error")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    assert urlsplit(page.url).path == "/ui/accounts"
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert TOKEN not in cookie["value"]


def test_accounts_list_shows_flagged_accounts_first_with_rarity_not_probability(sidecar, page):
    page.goto(sidecar.url + "/ui/accounts")
    rows = page.locator("table.accounts tbody tr")
    levels = [rows.nth(i).locator(".badge").text_content() for i in range(rows.count())]
    order = {"flag": 0, "watch": 1, "ok": 2}
    assert levels[0] == "flag" and levels == sorted(levels, key=order.get)
    flagged = [rows.nth(i).locator("a.account-link").text_content() for i, lvl in enumerate(levels) if lvl == "flag"]
    assert EXTRACTOR in flagged
    first = rows.nth(0).text_content()
    assert "1 in " in first and "benign accounts" in first and "%" not in first
    # filter by level, search by id
    page.select_option("#level", "ok")
    page.click("form.filters button")
    oks = page.locator("table.accounts tbody tr .badge").all_text_contents()
    assert oks and set(oks) == {"ok"}
    page.goto(sidecar.url + "/ui/accounts?q=BOT")  # case-insensitive substring
    assert page.locator("a.account-link").all_text_contents() == [EXTRACTOR]
    page.goto(sidecar.url + "/ui/accounts?q=no-such-account")
    assert "No account" in page.text_content("p.empty")


def test_the_account_page_renders_its_charts(sidecar, page, tmp_path):
    page.goto(f"{sidecar.url}/ui/accounts/{quote(EXTRACTOR, safe='')}")
    assert page.locator("h1 .badge").text_content() == "flag"
    risk = page.locator("svg.risk-chart")
    assert risk.count() == 1
    assert risk.locator("polyline.risk-line").count() == 1
    assert risk.locator("line.threshold-flag").count() == 1 and risk.locator("line.threshold-watch").count() == 1
    charts = page.locator("svg.feature-chart")
    assert charts.count() == len(FEATURE_NAMES)
    assert page.locator("svg.feature-chart rect.benign-band").count() == len(FEATURE_NAMES)
    assert page.locator("svg.feature-chart circle.account-value").count() >= len(FEATURE_NAMES) - 2
    assert page.locator("svg.feature-chart path.lookalike").count() >= 1
    box = risk.bounding_box()
    assert box["width"] > 300 and box["height"] > 100  # drawn, not collapsed
    reasons = page.locator("ul.reasons li").all_text_contents()
    assert reasons and all(r.endswith(".") and "than" in r and "benign account" in r for r in reasons)
    assert "1 in " in page.locator(".summary").text_content()
    assert "Prompt retention is off" in page.text_content("p.retention")
    shot = tmp_path / "account.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_campaigns_list_and_campaign_page(sidecar, page, tmp_path):
    page.goto(sidecar.url + "/ui/campaigns")
    links = page.locator("table.campaigns tbody tr a")
    assert links.count() >= 1, page.content()[-3000:]
    links.first.click()
    assert urlsplit(page.url).path.startswith("/ui/campaigns/cmp-")
    members = page.locator("ul.members li").all_text_contents()
    assert len(members) >= 2 and all(m.startswith("cot-") for m in members)
    assert page.locator("svg.timeline").count() == 1
    assert "a shared prompt template" in page.locator(".summary").text_content()
    assert page.locator("p.template-sample code").count() >= 1
    assert page.locator("table.indicators tbody tr").count() >= 1
    page.screenshot(path=str(tmp_path / "campaign.png"), full_page=True)


def test_a_form_from_another_origin_is_refused(sidecar, page):
    """A page on another port of this machine (same site, so the SameSite cookie goes along)
    posts a forget: without the form's CSRF token, and from another origin, nothing happens."""
    attacker = f"""<form method="post" action="{sidecar.url}/ui/actions/forget">
      <input type="hidden" name="account" value="{EXTRACTOR}"><input type="hidden" name="confirm" value="yes">
      <button type="submit" id="go">win a prize</button></form>""".encode()

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(attacker)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.click("#go")
        assert page.locator("h1").text_content() == "Refused"
    finally:
        server.shutdown()
    with sidecar.client() as http_client:
        assert http_client.get(f"/v1/accounts/{EXTRACTOR}").status_code == 200


def test_mark_known_benign_asks_for_confirmation_and_is_journaled(sidecar, page):
    page.goto(f"{sidecar.url}/ui/accounts/{quote(MARKED, safe='')}")
    page.click("#mark-benign")
    assert "Mark this account known-benign?" in page.text_content("h1")
    page.click("#confirm")
    assert page.locator("h1").text_content() == "Done"
    page.goto(f"{sidecar.url}/ui/accounts/{quote(MARKED, safe='')}")
    assert page.locator("h1 .badge.benign").text_content() == "known benign"
    assert page.locator("#mark-benign").count() == 0
    records = list(Journal(sidecar.data_dir / "journal").replay(0))
    assert {"op": "benign", "account": MARKED} in [{k: r[k] for k in ("op", "account") if k in r} for r in records]


def test_forget_asks_for_confirmation_then_forgets(sidecar, page):
    account_url = f"{sidecar.url}/ui/accounts/{quote(FORGOTTEN, safe='')}"
    page.goto(account_url)
    page.click("#forget")
    assert "Forget this account?" in page.text_content("h1")
    assert FORGOTTEN in page.text_content(".account-id")
    page.click("a.cancel")  # changing one's mind changes nothing
    assert page.url == account_url
    with sidecar.client() as http_client:
        assert http_client.get(f"/v1/accounts/{FORGOTTEN}").status_code == 200
    page.click("#forget")
    page.click("#confirm")
    assert page.locator("h1").text_content() == "Done" and "was forgotten" in page.text_content("p.message")
    with sidecar.client() as http_client:
        assert http_client.get(f"/v1/accounts/{FORGOTTEN}").status_code == 404
    page.goto(sidecar.url + "/ui/accounts")
    assert FORGOTTEN not in page.locator("a.account-link").all_text_contents()
    page.goto(account_url)
    assert page.locator("h1").text_content() == "No such account"


def test_no_request_left_127_0_0_1(sidecar, requests_seen):
    """Every request the browser made, pages, stylesheet and forms, went to this machine's loopback."""
    assert len(requests_seen) >= 20
    hosts = {urlsplit(url).hostname for url in requests_seen}
    assert hosts == {"127.0.0.1"}, sorted(url for url in requests_seen if urlsplit(url).hostname != "127.0.0.1")
    assert any(url.endswith("/ui/static/console.css") for url in requests_seen)


def test_signing_out_ends_the_session(sidecar, page):
    page.goto(sidecar.url + "/ui/accounts")
    page.click("form.logout button")
    assert urlsplit(page.url).path == "/ui/login"
    page.goto(sidecar.url + "/ui/accounts")
    assert urlsplit(page.url).path == "/ui/login"
    assert httpx.get(sidecar.url + "/ui/accounts", follow_redirects=False).status_code == 303
