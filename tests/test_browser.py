"""A real browser against a real `datasette serve`: what a person sees, offline.

Debian's chromium, driven by Playwright (never `playwright install`: it downloads a browser).
.ci/run installs chromium when /usr/bin/chromium is missing; without it these tests fail, on
purpose, rather than skip. Screenshots go to a temporary directory (or $PDSYNC_SCREENSHOTS).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlite_utils
import yaml
from helpers import FAST_CLIENT, PLUGINS_DIR, free_port, wait_for_server

import pdsync
from pdsync.fake import FakePipedrive, FakeServer
from pdsync.serve import metadata_path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
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
OPEN_DEALS = (
    "from deal_details where status = 'open' and coalesce(is_archived, 0) = 0"
    " and coalesce(is_deleted, 0) = 0"
)


@pytest.fixture(scope="module")
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), "
            "as .ci/run and the README's test command do. Never `playwright install`."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    path = Path(os.environ.get("PDSYNC_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A synced pipedrive.db served by `datasette serve --root` with pdsync's metadata,
    dashboards and plugins; Sync now reaches the fake Pipedrive."""
    work = tmp_path_factory.mktemp("browser")
    fake = FakePipedrive(deals=300, seed=1)
    with FakeServer(fake) as server:
        db_path = work / "pipedrive.db"
        assert pdsync.sync(
            str(db_path),
            token=fake.token,
            base_url=server.url,
            auth_path=None,
            client_options=FAST_CLIENT,
        ).ok
        metadata = yaml.safe_load(metadata_path().read_text()) or {}
        metadata["plugins"]["pdsync"] = {"base_url": server.url, "auth_file": ""}
        (work / "metadata.yml").write_text(yaml.safe_dump(metadata, sort_keys=False))
        port = free_port()
        env = {**os.environ, "PIPEDRIVE_API_TOKEN": fake.token}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "datasette",
                "serve",
                str(db_path),
                "--metadata",
                str(work / "metadata.yml"),
                "--plugins-dir",
                str(PLUGINS_DIR),  # plain `datasette --plugins-dir datasette_plugins`
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--root",
            ],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            login = None
            deadline = time.monotonic() + 30
            while login is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    raise AssertionError(f"datasette exited with {proc.returncode}")
                match = re.search(r"(http://127\.0\.0\.1:\d+/-/auth-token\?token=\w+)", line)
                if match:
                    login = match.group(1)
            assert login, "datasette --root prints a login URL"
            base = f"http://127.0.0.1:{port}"
            wait_for_server(base)
            yield {"base": base, "login": login, "db": db_path, "fake": fake, "token": fake.token}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.stdout.close()
    fake.close()


@pytest.fixture(scope="module")
def root_context(chromium, site):
    """A browser signed in as root through the one-time URL `datasette --root` prints."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(site["login"])  # sets the signed ds_actor cookie, then redirects home
    assert any(c["name"] == "ds_actor" for c in context.cookies())
    page.close()
    yield context
    context.close()


@pytest.fixture
def page(root_context, site):
    page = root_context.new_page()
    page.set_default_timeout(30_000)
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    yield page
    page.close()
    # Every script, stylesheet and data request came from the instance: it works offline.
    hosts = {urlsplit(url).netloc for url in requests if not url.startswith(("data:", "blob:"))}
    assert hosts <= {urlsplit(site["base"]).netloc}, hosts
    assert not any(site["token"] in url for url in requests)


def test_home_canned_query_and_status_page(page, site, shots):
    page.goto(site["base"] + "/")
    assert page.locator(".actor").inner_text().strip() == "root"
    assert page.locator("h2 a", has_text="pipedrive").count() == 1
    page.screenshot(path=shots / "home.png", full_page=True)

    page.goto(site["base"] + "/pipedrive/sync_status")
    table = page.locator("table.rows-and-columns")
    assert "deals" in table.inner_text() and "success" in table.inner_text()
    page.screenshot(path=shots / "sync_status_query.png", full_page=True)

    page.goto(site["base"] + "/")
    page.locator("details.nav-menu summary").click()
    page.get_by_role("link", name="Sync status").click()
    page.wait_for_url("**/-/pdsync")
    assert page.locator("h1").inner_text() == "Sync status"
    assert "Up to date" in page.locator(".pdsync-ok").inner_text()
    db = sqlite_utils.Database(site["db"])
    total = db["sync_metadata"].get("deals")["records_total"]
    deals_row = page.locator("table.pdsync-entities tr", has=page.locator("td", has_text="deals"))
    assert f"{total:,}" in deals_row.first.inner_text()
    assert page.locator("input[type=submit][value='Sync now']").is_enabled()
    page.screenshot(path=shots / "status.png", full_page=True)
    assert site["token"] not in page.content()


def test_sync_now_shows_progress_and_the_result(page, site, shots):
    fake = site["fake"]
    db = sqlite_utils.Database(site["db"])
    deal_id = db.execute("select max(id) from deals where status = 'open'").fetchone()[0]
    fake.update_deal(deal_id, title="Renamed for the browser test")
    runs_before = db["sync_runs"].count
    fake.latency = 1.5  # every request: slow enough to watch it run
    try:
        page.goto(site["base"] + "/-/pdsync")
        page.get_by_role("button", name="Sync now").click()
        page.wait_for_url("**/-/pdsync")
        assert "Sync of pipedrive started." in page.locator(".message-info").inner_text()
        running = page.locator(".pdsync-job p.pdsync-status-running")
        assert "Sync running" in running.inner_text()
        assert page.get_by_role("button", name="Sync now").is_disabled()
        # The page refreshes itself while the sync runs, and shows each entity's progress.
        page.wait_for_selector(".pdsync-job[data-status=running] table.pdsync-progress")
        progress = page.locator("table.pdsync-progress").inner_text()
        assert re.search(r"pipelines\s+8\s+1\s+\w+", progress), progress
        page.screenshot(path=shots / "sync_running.png", full_page=True)
        page.wait_for_selector("text=Last sync started here", timeout=60_000)
    finally:
        fake.latency = 0
    job = page.locator(".pdsync-job")
    text = job.inner_text()
    assert "success" in text and f"run #{runs_before + 1}" in text, text
    assert "Sync now by root" in text
    assert re.search(r"deals\s+[\d,]+\s+\d+\s+success", job.locator("table").inner_text())
    page.screenshot(path=shots / "sync_done.png", full_page=True)
    assert db["sync_runs"].count == runs_before + 1

    page.goto(f"{site['base']}/pipedrive/deals/{deal_id}")
    assert "Renamed for the browser test" in page.locator("table").first.inner_text()


def svg_texts(page, chart):
    """Every text a rendered chart shows (axis labels, headers, titles)."""
    return set(page.locator(f"#chart-{chart} svg.marks text").all_text_contents())


def test_dashboard_charts_render_offline(page, site, shots):
    db = sqlite_utils.Database(site["db"])
    commonest = db.execute(
        f"select currency {OPEN_DEALS} group by currency order by count(*) desc limit 1"
    ).fetchone()[0]
    stages = {r[0] for r in db.execute(f"select distinct stage {OPEN_DEALS}")}
    owners = {r[0] for r in db.execute(f"select distinct owner {OPEN_DEALS}")}

    page.goto(site["base"] + "/-/dashboards/deals")
    assert page.locator("h1").inner_text() == "Deals"
    charts = ["deals-per-stage", "value-per-stage", "value-per-owner", "deal-age"]
    for chart in charts:
        page.wait_for_selector(f"#chart-{chart} svg.marks", timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=shots / "dashboard.png", full_page=True)
    for chart in charts:
        box = page.locator(f"#chart-{chart} svg.marks").bounding_box()
        assert box["width"] > 200 and box["height"] > 150, (chart, box)
        bars = page.locator(f"#chart-{chart} svg.marks path[aria-roledescription='bar']")
        assert bars.count() > 0, chart
    funnel = svg_texts(page, "deals-per-stage")
    assert stages <= funnel, stages - funnel
    value = svg_texts(page, "value-per-stage")
    assert commonest in value  # the currency header: one currency per chart
    other = {r[0] for r in db.execute(f"select distinct currency {OPEN_DEALS}")} - {commonest}
    assert not other & value
    assert owners <= svg_texts(page, "value-per-owner")
    assert "Days since last update" in svg_texts(page, "deal-age")

    # Another currency through the filter: the value charts switch to it.
    usd = sorted(other)[0]
    page.locator("select#currency").select_option(usd)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(f"**currency={usd}**")
    page.wait_for_selector("#chart-value-per-owner svg.marks")
    page.wait_for_timeout(500)
    assert usd in svg_texts(page, "value-per-owner")
    assert commonest not in svg_texts(page, "value-per-stage")
    page.screenshot(path=shots / f"dashboard_{usd}.png", full_page=True)


def test_anonymous_visitors_see_status_but_cannot_sync(chromium, site, shots):
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(site["base"] + "/-/pdsync")
        assert page.locator("h1").inner_text() == "Sync status"
        assert page.locator("input[value='Sync now']").count() == 0
        assert "Sign in" in page.locator("section.pdsync-database").inner_text()
        page.screenshot(path=shots / "status_anonymous.png", full_page=True)
    finally:
        context.close()


def test_signing_in_through_the_real_form(chromium, site, tmp_path, shots):
    """`pdsync serve --private`: a browser is sent to the sign-in form, a wrong password is
    refused there, the right one lands on the instance signed in."""
    from click.testing import CliRunner

    from pdsync.cli import cli

    db = tmp_path / "pipedrive.db"
    db.write_bytes(site["db"].read_bytes())
    added = CliRunner().invoke(cli, ["user", "add", str(db), "ann"], input="s3cret pass\n")
    assert added.exit_code == 0, added.output
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdsync", "serve", str(db), "--port", str(port), "--private"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = chromium.new_context()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(base)
        page = context.new_page()
        page.goto(base + "/pipedrive/deals")
        assert urlsplit(page.url).path == "/-/login"
        page.fill("#id_username", "ann")
        page.fill("#id_password", "wrong")
        page.click("input[type=submit]")
        assert "Wrong user name or password" in page.content()
        page.fill("#id_username", "ann")
        page.fill("#id_password", "s3cret pass")
        page.click("input[type=submit]")
        page.goto(base + "/pipedrive/deals")
        assert urlsplit(page.url).path == "/pipedrive/deals"
        assert page.locator(".actor").inner_text().strip() == "ann"
        page.screenshot(path=str(shots / "signed-in.png"))
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=10)
