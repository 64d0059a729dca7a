"""The operator console in a real headless Chromium against a running `truckllm serve`:
it loads with no console error and no request leaving the origin, signs in, shows
providers, keys, charts and the request log, creates a key (shown once) and revokes it,
rejects an invalid config edit at its line, and never puts a secret in the page, its
storage or any response it received. Screenshots go to the test's temp dir."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Response, async_playwright

from tests.browser import CHROMIUM_ARGS, ensure_chromium
from tests.harness import (
    LITERAL_SECRET,
    SECRETS,
    SERVE_ENV,
    ServeProcess,
    free_port,
    run_serve_process,
)

# Set TRUCKLLM_CONSOLE_SCREENSHOT=docs/images/console.png to refresh the docs' picture.
DOCS_SCREENSHOT = os.environ.get("TRUCKLLM_CONSOLE_SCREENSHOT")
TIMEOUT_MS = 15_000


def console_config(port: int, admin_port: int | None = None) -> str:
    listen = f"\n  admin_listen: '127.0.0.1:{admin_port}'" if admin_port else ""
    return f"""version: 1
server:
  port: {port}
  watch: false
  admin_api_key: ${{ADMIN_KEY}}{listen}
providers:
  - id: demo
    type: mock
    keys: [{{id: k1, value: "${{MOCK_KEY}}"}}]
  - id: spare            # a literal secret written into the file
    type: mock
    keys: [{{id: literal, value: {LITERAL_SECRET}}}]
models:
  - alias: demo
    targets: [{{provider: demo, model: echo}}]
    pricing: {{input_per_mtok: 3, output_per_mtok: 15}}
  - alias: spare
    targets: [{{provider: spare, model: echo}}]
keys:
  - {{id: team-a, key: "${{TEAM_KEY}}", rpm: 600, budget_usd: 10, budget_period: monthly}}
"""


# The tests share one Chromium (each in its own browser context), so they share the event
# loop it was started on.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = ensure_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium),
                                                    args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Watch:
    """Everything the page did: console errors, requests, response bodies."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.responses: list[Response] = []
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("response", lambda response: self.responses.append(response))

    async def bodies(self) -> list[bytes]:
        found = []
        for response in self.responses:
            try:
                found.append(await response.body())
            except Exception:           # a redirect or a body no longer kept: nothing to read
                continue
        return found


async def traffic(gateway: ServeProcess) -> None:
    client = gateway.openai_client(SERVE_ENV["TEAM_KEY"])
    for n in range(5):
        await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": f"hello {n}"}])
    await client.chat.completions.create(
        model="spare", messages=[{"role": "user", "content": "hi"}])


async def everything_on_the_page(page: Page) -> str:
    """The DOM with the current values of every field (which the HTML does not show)."""
    result: str = await page.evaluate("""() => document.documentElement.outerHTML + "\\n" +
        [...document.querySelectorAll("input, textarea, select")].map((e) => e.value).join("\\n")""")
    return result


async def test_the_console_end_to_end(tmp_path: Path, browser: Browser) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(console_config(port))
    async with run_serve_process(path, port) as gateway:
        await traffic(gateway)
        context = await browser.new_context(viewport={"width": 1366, "height": 900})
        await context.grant_permissions(["clipboard-read", "clipboard-write"],
                                        origin=gateway.root)
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        watch = Watch(page)
        await page.goto(gateway.root + "/admin/")

        # Signing in, by keyboard: the key field has the focus.
        await page.wait_for_function(
            "() => document.activeElement && document.activeElement.id === 'admin-key'")
        await page.keyboard.type(SERVE_ENV["ADMIN_KEY"])
        await page.keyboard.press("Enter")
        await page.locator("#providers-table tbody tr.provider", has_text="demo").wait_for()
        assert await page.locator("#admin-key").input_value() == ""

        # Providers, keys, charts, request log.
        await page.locator("#keys-table tbody tr[data-key='team-a']").wait_for()
        assert "$10" in await page.locator("#keys-table tbody tr[data-key='team-a']").inner_text()
        await page.locator("#chart-requests svg polyline").first.wait_for()
        assert await page.locator(".charts svg").count() == 4
        await page.locator("#logs-table tbody tr", has_text="team-a").first.wait_for()
        await page.select_option("#log-filters [name=provider]", "spare")
        await page.wait_for_function(
            "() => document.querySelectorAll('#logs-table tbody tr').length === 1")
        await page.locator("#config-text").wait_for()
        await page.wait_for_function(
            "() => document.querySelector('#config-text').value.includes('providers')")

        # A key created: shown once, copied, gone from the page when closed; usable.
        await page.click("#new-key")
        await page.fill("#kf-id", "console-made")
        await page.fill("#kf-models", "demo")
        await page.fill("#kf-rpm", "30")
        await page.click("#key-save")
        await page.locator("#secret-dialog[open]").wait_for()
        plaintext = await page.locator("#secret-value").inner_text()
        assert plaintext.startswith("tk-")
        await page.click("#secret-copy")
        await page.locator("#secret-copied", has_text="Copied").wait_for()
        assert await page.evaluate("() => navigator.clipboard.readText()") == plaintext
        await page.screenshot(path=str(tmp_path / "console-key-created.png"))
        await page.click("#secret-done")
        assert await page.locator("#secret-value").inner_text() == ""
        assert plaintext not in await everything_on_the_page(page)
        written = path.read_text()
        assert f"sha256:{hashlib.sha256(plaintext.encode()).hexdigest()}" in written
        assert plaintext not in written
        row = page.locator("#keys-table tbody tr[data-key='console-made']")
        await row.wait_for()
        assert "rpm 0 / 30" in await row.inner_text()
        made = gateway.openai_client(plaintext)
        await made.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}])

        # Edited: its limit changed through the dialog.
        await row.get_by_role("button", name="Edit key console-made").click()
        assert await page.locator("#kf-rpm").input_value() == "30"
        await page.fill("#kf-rpm", "45")
        await page.click("#key-save")
        await page.wait_for_function(
            "() => (document.querySelector(\"#keys-table tr[data-key='console-made']\") || {})"
            ".textContent?.includes('/ 45')")
        assert "rpm: 45" in path.read_text()

        # Revoked: confirmed, gone from the table and the file.
        await row.get_by_role("button", name="Revoke key console-made").click()
        await page.click("#confirm-yes")
        await row.wait_for(state="detached")
        assert "console-made" not in path.read_text()

        # By keyboard alone: New key, type an id, Enter; Escape closes the key's dialog.
        await page.focus("#new-key")
        await page.keyboard.press("Enter")
        await page.wait_for_function("() => document.activeElement.id === 'kf-id'")
        await page.keyboard.type("by-keyboard")
        await page.keyboard.press("Enter")
        await page.locator("#secret-dialog[open]").wait_for()
        typed_key = await page.locator("#secret-value").inner_text()
        await page.keyboard.press("Escape")
        await page.locator("#secret-dialog[open]").wait_for(state="detached")
        await page.wait_for_function("() => document.querySelector('#secret-value').textContent === ''")
        await page.locator("#keys-table tbody tr[data-key='by-keyboard']").wait_for()

        # An invalid config edit: rejected, shown at its line, nothing written.
        before = path.read_text()
        text = await page.locator("#config-text").input_value()
        broken = text.replace("provider: spare", "provider: nowhere", 1)
        assert broken != text
        await page.fill("#config-text", broken)
        await page.click("#config-validate")
        problem = page.locator("#config-errors li", has_text="unknown provider")
        await problem.wait_for()
        line = broken.splitlines().index(
            next(x for x in broken.splitlines() if "provider: nowhere" in x)) + 1
        assert await problem.get_attribute("data-line") == str(line)
        assert await page.locator("#gutter .bad-line").inner_text() == str(line)
        await page.click("#config-apply")
        await page.locator("#config-errors").wait_for()
        assert path.read_text() == before
        await page.click("#config-diff")
        assert "provider: nowhere" in await page.locator("#config-diff-view").inner_text()
        await page.click("#config-revert")

        # Screenshots: laptop light, laptop dark, phone.
        await page.evaluate("() => window.scrollTo(0, 0)")
        await page.locator("#config-text").evaluate("(area) => { area.scrollTop = 0; }")
        await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
        if DOCS_SCREENSHOT:
            shutil.copy(tmp_path / "console.png", DOCS_SCREENSHOT)
        await page.emulate_media(color_scheme="dark")
        await page.screenshot(path=str(tmp_path / "console-dark.png"), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.emulate_media(color_scheme="light")
        await page.screenshot(path=str(tmp_path / "console-phone.png"), full_page=True)
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - window.innerWidth")
        wide = await page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter((e) => !e.closest('.scroll') && e.getBoundingClientRect().right > window.innerWidth + 1)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)""")
        assert overflow <= 1, f"the page is wider than a phone's screen: {wide}"

        # Nothing left the origin; no error; no secret anywhere but the session key.
        assert watch.urls and all(url.startswith(gateway.root + "/") for url in watch.urls), [
            url for url in watch.urls if not url.startswith(gateway.root + "/")]
        assert watch.errors == []
        storage: dict[str, Any] = await page.evaluate(
            "() => ({session: {...sessionStorage}, local: {...localStorage}, cookie: document.cookie})")
        assert storage == {"session": {"truckllm.admin": SERVE_ENV["ADMIN_KEY"]}, "local": {},
                           "cookie": ""}
        page_text = await everything_on_the_page(page)
        for secret in [*SECRETS, plaintext, typed_key]:
            assert secret not in page_text
        for body in await watch.bodies():
            for secret in SECRETS:
                assert secret.encode() not in body
        await context.close()


async def test_the_console_on_the_admin_listener_only(tmp_path: Path, browser: Browser) -> None:
    port, admin_port = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(console_config(port, admin_port))
    async with run_serve_process(path, port, admin_port=admin_port) as gateway:
        code, _ = await gateway.get("/admin/")
        assert code == 404
        code, html = await gateway.get("/admin/", base=gateway.admin_url)
        assert code == 200 and "<title>TruckLLM console</title>" in html
        code, body, _ = await gateway.admin("GET", "/admin/v1/history?since=soon")
        assert code == 400 and body["error"]["param"] == "since"
        code, body, _ = await gateway.admin("GET", "/admin/console/../config.yaml")
        assert code == 404
        page = await browser.new_page()
        watch = Watch(page)
        await page.goto(gateway.admin_url + "/admin/")
        await page.fill("#admin-key", "not-the-admin-key")
        await page.press("#admin-key", "Enter")
        await page.locator("#login-error", has_text="not accepted").wait_for()
        assert await page.evaluate("() => sessionStorage.length") == 0
        assert all(url.startswith(gateway.admin_url + "/") for url in watch.urls)
        await page.close()


async def test_no_console_without_an_admin_key(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(console_config(port).replace("  admin_api_key: ${ADMIN_KEY}\n", ""))
    async with run_serve_process(path, port) as gateway:
        for route in ("/admin/", "/admin/console/app.js", "/admin/v1/history"):
            code, _ = await gateway.get(route)
            assert code == 404, route
