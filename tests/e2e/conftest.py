"""Browser tests drive Debian's chromium through Playwright (no browser download)."""

import os
import shutil

import pytest

# Playwright's sync API keeps an event loop in the test thread; Django refuses ORM calls from a
# thread with a running loop unless told it is intended (these tests read the database).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("LOUPE_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("LOUPE_REQUIRE_BROWSER"):
            pytest.fail(
                "LOUPE_REQUIRE_BROWSER is set but no chromium was found (apt-get install chromium)"
            )
        pytest.skip(
            "no chromium found: apt-get install chromium (or set LOUPE_CHROMIUM) to run browser tests"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=live_server.url)
    p = context.new_page()
    p.set_default_timeout(30_000)
    # the browser's console and page errors appear in the test's captured output on failure
    blocked: list[str] = []

    def console(m) -> None:
        print(f"[console.{m.type}] {m.text}")
        if "Content Security Policy" in m.text:
            blocked.append(m.text)

    p.on("console", console)
    p.on("pageerror", lambda e: print(f"[pageerror] {e}"))
    p.on(
        "response",
        lambda r: (
            "/api/" in r.url
            and "/dzi/" not in r.url
            and print(f"[http] {r.request.method} {r.url} {r.status}")
        ),
    )
    yield p
    context.close()
    # every page works under Loupe's Content-Security-Policy: nothing it loads or runs is refused
    assert not blocked, blocked
