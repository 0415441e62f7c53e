"""The dashboard at /ui in a real browser: Debian's Chromium driven by Playwright, against the
real service (Docker, PostgreSQL, S3) with API keys on.

Every wait is a Playwright expectation with a deadline (it polls the page), never a sleep.
Screenshots of the run page and the schedules page are saved under .test-artifacts/ (or
$TASKDEPLOY_TEST_ARTIFACTS) and checked for non-empty rendering.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.e2e.harness import (
    BUSYBOX,
    REPO,
    TERMINAL,
    Service,
    create_database,
    make_run,
    new_key,
    pg_s3_env,
    wait_for_state,
)

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("TASKDEPLOY_TEST_ARTIFACTS", REPO / ".test-artifacts"))
# Without these two, Chromium calls its vendor's update and account services even headless.
CHROMIUM_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--component-updater=url-source=http://127.0.0.1:9/",
]
BURNER = (
    "end=$(( $(cut -d. -f1 /proc/uptime) + 3 )); "
    "while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do :; done"
)
UI_WAIT_MS = 90_000


@pytest.fixture(scope="module")
async def dash(module_services: Any, postgres_url: str, s3_endpoint: str) -> Service:
    database = await create_database(postgres_url)
    env = pg_s3_env(database, s3_endpoint)
    env["TASKDEPLOY_METRICS_INTERVAL_SECONDS"] = "0.5"
    env["TASKDEPLOY_ALLOWED_BUCKETS"] = "*"  # keys exist; each test uses a fresh bucket
    return module_services(env)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def keys(dash: Service) -> dict[str, str]:
    return {owner: new_key(dash, owner) for owner in ("alice", "bob")}


def api(service: Service, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture(scope="module")
async def browser(
    chromium_path: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Browser]:
    home = tmp_path_factory.mktemp("chromium")  # Chromium writes here even with a temp profile
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "XDG_CACHE_HOME": str(home)}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, env=env
        )
        yield browser
        await browser.close()


class Pages:
    """Opens pages in fresh browser contexts and fails the test on any script error or CSP
    violation they report."""

    def __init__(self, browser: Browser, service: Service) -> None:
        self.browser = browser
        self.service = service
        self.contexts: list[BrowserContext] = []
        self.problems: list[str] = []

    async def open(
        self, path: str, key: str | None = None, viewport: tuple[int, int] = (1280, 900)
    ) -> Page:
        context = await self.browser.new_context(
            base_url=self.service.base_url,
            viewport={"width": viewport[0], "height": viewport[1]},
            accept_downloads=True,
        )
        self.contexts.append(context)
        if key is not None:  # as if the key had been entered once in this browser
            await context.add_init_script(
                f"localStorage.setItem('taskdeploy.apiKey', {json.dumps(key)})"
            )
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)
        await page.goto(path)
        return page

    def _console(self, message: Any) -> None:
        # A failed fetch (the 401 that makes the page ask for a key) is logged as an error by
        # Chromium itself; anything else at error level is the page's own fault.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def pages(browser: Browser, dash: Service) -> AsyncIterator[Pages]:
    opened = Pages(browser, dash)
    yield opened
    await opened.close()
    assert not opened.problems, opened.problems


def check_screenshot(path: Path, min_colours: int = 12) -> None:
    """A real rendering: the saved PNG has the page's size and is not one flat colour."""
    with Image.open(path) as image:
        width, height = image.size
        assert width >= 300 and height >= 300, image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None
    most = max(count for count, _ in colours)
    assert len(colours) >= min_colours, f"{path.name}: only {len(colours)} colours"
    assert most / (width * height) < 0.97, f"{path.name} is almost one colour"


async def submit_api(service: Service, key: str, body: dict[str, Any]) -> str:
    async with api(service, key) as client:
        response = await client.post("/v1/runs", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


# ------------------------------------------------------------------------------------ tests
async def test_asks_for_a_key_once_and_shows_only_the_owners_runs(
    pages: Pages, dash: Service, keys: dict[str, str], bucket: str
) -> None:
    bobs_run = await submit_api(dash, keys["bob"], make_run(f"s3://{bucket}/bob"))
    alices_run = await submit_api(dash, keys["alice"], make_run(f"s3://{bucket}/alice"))

    page = await pages.open("/ui/runs")
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible()  # the fragment answered 401: the page asks
    await expect(page.locator("#key-reason")).to_contain_text("API key is required")
    # Dismissed, it stays closed while the table keeps polling (and getting 401s) ...
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    async with page.expect_response(lambda r: "/ui/parts/runs" in r.url and r.status == 401):
        pass
    await expect(dialog).to_be_hidden()
    # ... until the header's button asks for it.
    await page.get_by_role("button", name="API key").click()
    await expect(dialog).to_be_visible()
    await page.get_by_role("textbox", name="API key").fill(keys["alice"])
    await page.get_by_role("button", name="Use this key").click()

    await expect(page.locator(f"#run-{alices_run}")).to_be_visible(timeout=UI_WAIT_MS)
    assert await page.locator(f"#run-{bobs_run}").count() == 0
    assert bobs_run[:8] not in await page.content()
    # Asked once: the key is kept, the next page does not ask again.
    await page.get_by_role("link", name="Schedules").click()
    await expect(page.locator("#schedules table, #schedules .empty")).to_be_visible()
    await expect(dialog).to_be_hidden()

    # Another owner's run page shows nothing but "not found".
    await page.goto(f"/ui/runs/{bobs_run}")
    await expect(page.locator("#flash")).to_contain_text(f"run {bobs_run} not found")
    await expect(page.locator("#run-state")).to_have_count(0)
    async with api(dash, keys["alice"]) as alice:
        await wait_for_state(alice, alices_run, TERMINAL)
    async with api(dash, keys["bob"]) as bob:
        await wait_for_state(bob, bobs_run, TERMINAL)


async def test_submit_form_shows_the_apis_messages_then_follows_the_run_live(
    pages: Pages, dash: Service, keys: dict[str, str], bucket: str
) -> None:
    page = await pages.open("/ui/submit", key=keys["alice"])
    await page.get_by_label("Command").fill("echo hi")
    await page.get_by_label("Packages").fill("jq Bad_Pkg")
    await page.get_by_label("Output (S3 prefix)").fill("not-a-uri")
    await page.get_by_label("CPUs").fill("lots")
    await page.get_by_role("button", name="Start run").click()

    errors = page.locator("#form-errors")
    await expect(errors).to_be_visible()
    async with api(dash, keys["alice"]) as alice:
        refused = await alice.post(
            "/v1/runs",
            json={
                "command": "echo hi",
                "packages": ["jq", "Bad_Pkg"],
                "output": "not-a-uri",
                "resources": {"cpus": "lots"},
            },
        )
    assert refused.status_code == 422
    expected = [f"{d['field']}: {d['message']}" for d in refused.json()["error"]["details"]]
    assert len(expected) == 3
    assert await errors.locator("li").all_inner_texts() == expected
    await expect(page.get_by_label("Output (S3 prefix)")).to_have_attribute("aria-invalid", "true")
    by_field = {d["field"]: d["message"] for d in refused.json()["error"]["details"]}
    await expect(page.locator("#error-output")).to_have_text(by_field["output"])

    # Fixed: the run is created and the page follows it.
    await page.get_by_label("Command").fill(
        'echo dashboard-line-1; echo to-stderr >&2; echo result > "$OUTPUT_DIR/result.txt"; '
        "sleep 4; echo dashboard-line-2"
    )
    await page.get_by_label("Base image").fill(BUSYBOX)
    await page.get_by_label("Packages").fill("")
    await page.get_by_label("Output (S3 prefix)").fill(f"s3://{bucket}/ui")
    await page.get_by_label("CPUs").fill("1")
    await page.get_by_label("Memory (MiB)").fill("128")
    await page.get_by_role("button", name="Start run").click()
    await page.wait_for_url(re.compile(r"/ui/runs/[0-9a-f-]{36}$"))
    run_id = page.url.rsplit("/", 1)[1]

    stdout, state = page.locator("#stdout"), page.locator("#run-state")
    await expect(stdout).to_contain_text("dashboard-line-1", timeout=UI_WAIT_MS)
    # Live: the first line is on screen while the command still sleeps.
    await expect(state).to_have_text("running")
    assert "dashboard-line-2" not in await stdout.inner_text()
    boxes = [await page.locator(s).bounding_box() for s in ("#stdout", "#stderr", "#chart")]
    await expect(page.locator("#stderr")).to_contain_text("to-stderr")

    await expect(state).to_have_text("succeeded", timeout=UI_WAIT_MS)
    await expect(stdout).to_contain_text("dashboard-line-2")
    # No layout jumps: the panes did not move or grow while output streamed in.
    assert boxes == [await page.locator(s).bounding_box() for s in ("#stdout", "#stderr", "#chart")]
    timeline = page.locator(".timeline li")
    await expect(timeline).to_have_count(5)  # queued, preparing, running, finishing, succeeded
    await expect(timeline.nth(2)).to_contain_text(re.compile(r"running\s+\d+(\.\d)? s"))

    # The artifact downloads through the service, with the key, as its owner.
    link = page.get_by_role("link", name="output/result.txt")
    async with page.expect_download() as download_info:
        await link.click()
    download = await download_info.value
    assert download.suggested_filename == "result.txt"
    assert Path(await download.path()).read_bytes() == b"result\n"
    async with api(dash, keys["bob"]) as bob:
        href = await link.get_attribute("href")
        assert href == f"/v1/runs/{run_id}/artifacts/ui/{run_id}/output/result.txt"
        assert (await bob.get(href)).status_code == 404  # not bob's run


async def test_cpu_chart_and_screenshot_of_the_run_page(
    pages: Pages, dash: Service, keys: dict[str, str], bucket: str
) -> None:
    run_id = await submit_api(
        dash,
        keys["alice"],
        make_run(
            f"s3://{bucket}/burn",
            command=f"echo burning one CPU for 3 s; {BURNER}; echo burnt; echo 'a note on stderr' >&2",
        ),
    )
    page = await pages.open(f"/ui/runs/{run_id}", key=keys["alice"])
    await expect(page.locator("#run-state")).to_have_text("succeeded", timeout=UI_WAIT_MS)
    chart = page.locator("#chart")
    await expect(chart).to_have_attribute("data-points", re.compile(r"^([2-9]|\d{2,})$"))
    await expect(chart.locator("canvas")).to_have_count(1)
    note = page.locator("#chart-note")
    await expect(note).to_contain_text("peak memory")
    await expect(page.locator("#cpu-seconds")).to_have_text(re.compile(r"^[1-9]\d*\.\d\d s$"))
    await expect(page.locator("#stdout")).to_contain_text("burnt")
    # The chart drew lines: its canvas is not blank.
    drawn = await chart.locator("canvas").evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
    )
    assert drawn > 500
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "run-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    check_screenshot(shot)

    # A phone: nothing wider than the screen, the panes stack.
    phone = await pages.open(f"/ui/runs/{run_id}", key=keys["alice"], viewport=(390, 844))
    await expect(phone.locator("#run-state")).to_have_text("succeeded")
    widths = await phone.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths
    out, err = [await phone.locator(s).bounding_box() for s in ("#stdout", "#stderr")]
    assert out is not None and err is not None and err["y"] > out["y"]


async def test_cancel_a_running_run_from_its_page(
    pages: Pages, dash: Service, keys: dict[str, str], bucket: str
) -> None:
    run_id = await submit_api(
        dash, keys["alice"], make_run(f"s3://{bucket}/c", command="echo started; sleep 120")
    )
    page = await pages.open(f"/ui/runs/{run_id}", key=keys["alice"])
    await expect(page.locator("#stdout")).to_contain_text("started", timeout=UI_WAIT_MS)
    await expect(page.locator("#run-state")).to_have_text("running")
    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel this run?"
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator("#run-state")).to_have_text("cancelled", timeout=UI_WAIT_MS)
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    async with api(dash, keys["alice"]) as alice:
        run = (await alice.get(f"/v1/runs/{run_id}")).json()
    assert run["state"] == "cancelled"


async def test_runs_table_updates_live_and_filters(
    pages: Pages, dash: Service, keys: dict[str, str], bucket: str
) -> None:
    page = await pages.open("/ui/runs", key=keys["alice"])
    await expect(page.locator("#runs table, #runs .empty")).to_be_visible()
    run_id = await submit_api(dash, keys["alice"], make_run(f"s3://{bucket}/t"))
    row = page.locator(f"#run-{run_id}")
    await expect(row).to_be_visible(timeout=UI_WAIT_MS)  # no reload: the table polls
    await expect(row).to_have_attribute("data-state", "succeeded", timeout=UI_WAIT_MS)
    await expect(row.locator("td").last).to_have_text("0")

    await page.get_by_label("State").select_option("cancelled")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"state=cancelled"))
    await expect(page.locator("#runs table, #runs .empty")).to_be_visible()
    await expect(page.locator(f"#run-{run_id}")).to_have_count(0)
    await page.get_by_label("State").select_option("")  # any state
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator(f"#run-{run_id}")).to_be_visible()
    # Pages of two, newest first, with links both ways.
    more = [await submit_api(dash, keys["alice"], make_run(f"s3://{bucket}/t")) for _ in range(2)]
    await page.goto("/ui/runs?limit=2")
    rows = page.locator("#runs tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_have_id(f"run-{more[1]}")
    times = "ts => ts.map(t => t.dateTime)"
    first = await page.locator("#runs tbody time").evaluate_all(times)
    await page.get_by_role("link", name="Older →").click()
    await expect(page).to_have_url(re.compile(r"limit=2&cursor="))
    await expect(rows.first).not_to_have_id(f"run-{more[1]}")
    older = await page.locator("#runs tbody time").evaluate_all(times)
    assert older and first + older == sorted(first + older, reverse=True)
    await expect(page.get_by_role("link", name="← Newest")).to_have_attribute(
        "href", "/ui/runs?limit=2"
    )
    async with api(dash, keys["alice"]) as alice:
        for other in more:
            await wait_for_state(alice, other, TERMINAL)
    # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"


async def test_schedules_pause_resume_and_run_now(
    pages: Pages, dash: Service, keys: dict[str, str], bucket: str
) -> None:
    async with api(dash, keys["alice"]) as alice:
        created = await alice.post(
            "/v1/schedules",
            json={
                "name": "nightly-report",
                "cron": "30 2 * * *",
                "timezone": "Europe/Berlin",
                "run": make_run(f"s3://{bucket}/s", command="echo scheduled"),
            },
        )
        assert created.status_code == 201, created.text
        schedule_id = created.json()["id"]

        page = await pages.open("/ui/schedules", key=keys["alice"])
        row = page.locator(f"#schedule-{schedule_id}")
        await expect(row).to_contain_text("At 02:30 every day", timeout=UI_WAIT_MS)
        await expect(row).to_contain_text("Europe/Berlin")
        await expect(row.locator("time")).to_have_count(3)  # the next fire times
        await expect(row).to_contain_text("never ran")

        await row.get_by_role("button", name="Pause nightly-report").click()
        await expect(row).to_have_attribute("data-paused", "true")
        assert (await alice.get(f"/v1/schedules/{schedule_id}")).json()["paused"] is True
        resume = row.get_by_role("button", name="Resume nightly-report")
        await expect(resume).to_be_focused()  # the swap keeps keyboard focus in place
        await resume.click()
        await expect(row).to_have_attribute("data-paused", "false")
        assert (await alice.get(f"/v1/schedules/{schedule_id}")).json()["paused"] is False

        await row.get_by_role("button", name="Run nightly-report now").click()
        notice = page.locator(".notice a")
        await expect(notice).to_contain_text("queued for nightly-report")
        run_id = (await notice.get_attribute("href") or "").rsplit("/", 1)[1]
        run = await wait_for_state(alice, run_id, TERMINAL)
        assert run["schedule_id"] == schedule_id and run["state"] == "succeeded"
        await expect(row.locator(".badge.state-succeeded")).to_be_visible(timeout=UI_WAIT_MS)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "schedules-page.png"
        await page.screenshot(path=str(shot), full_page=True)
        check_screenshot(shot)

        # The schedule's runs, by its name in the runs table.
        await row.get_by_role("link", name="nightly-report").click()
        await expect(page).to_have_url(re.compile(f"schedule_id={schedule_id}"))
        await expect(page.locator(f"#run-{run_id}")).to_contain_text("nightly-report")


async def test_pages_and_their_assets_come_from_the_service_alone(dash: Service) -> None:
    async with httpx.AsyncClient(base_url=dash.base_url, timeout=30) as anonymous:
        assets: set[str] = set()
        for path in ("/ui/runs", "/ui/runs/some-id", "/ui/schedules", "/ui/submit"):
            page = await anonymous.get(path)  # a shell without data: no key needed
            assert page.status_code == 200, path
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert page.headers["x-content-type-options"] == "nosniff"
            assets |= set(re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text))
            assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text), path
        assert len(assets) == 6, assets
        for asset in assets:
            response = await anonymous.get(asset)
            assert response.status_code == 200, asset
            assert not re.search(rb"(?:src|href|url)\s*[=(]\s*[\"']?https?://", response.content)
        assert (await anonymous.get("/ui")).headers["location"] == "/ui/runs"
        assert (await anonymous.get("/ui/parts/runs")).status_code == 401  # data needs a key
        for licence in ("htmx.LICENSE", "idiomorph.LICENSE", "uPlot.LICENSE", "VENDORED.md"):
            assert (await anonymous.get(f"/ui/static/vendor/{licence}")).status_code == 200
