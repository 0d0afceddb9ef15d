"""The demo in a real browser: Playwright drives Debian's Chromium against a live server.

One server and one browser serve the whole module. The server runs in a thread on its own
SQLite file (an in-memory database would be invisible to that thread), loaded with the demo.
"""

import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from chromium import skip_module_without_chromium
from conftest import demo_app
from werkzeug.serving import make_server

from portal import contacts
from portal.db import db
from portal.links import make_token

STATIC = Path(__file__).resolve().parent.parent / "static"
# A German and an English demo contact (see portal.demo.sample_links).
GERMAN_CONTACT = "contact06@demo.example"
ENGLISH_CONTACT = "contact02@demo.example"

pytestmark = pytest.mark.browser

skip_module_without_chromium()


@pytest.fixture(scope="module")
def live_app(tmp_path_factory):
    """The demo application on its own SQLite file and instance folder."""
    application = demo_app(tmp_path_factory.mktemp("browser"))
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def server_url(live_app):
    """The address of a real HTTP server running the demo in a background thread."""
    server = make_server("127.0.0.1", 0, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def page(browser):
    """A fresh page in its own context, under the portal's real Content-Security-Policy."""
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def axe_page(browser):
    """A fresh page whose context lets axe-core's injected script past the CSP."""
    context = browser.new_context(bypass_csp=True)
    yield context.new_page()
    context.close()


def preference_path(live_app, email: str) -> str:
    """Return the path of a demo contact's preference page."""
    with live_app.app_context():
        return f"/p/{make_token('manage', contacts.find_by_email(email))}"


def htmx_version() -> str:
    """Return the version of the vendored htmx, as its file name states it."""
    (script,) = (STATIC / "vendor").glob("htmx-*.min.js")
    return script.name.removeprefix("htmx-").removesuffix(".min.js")


def collect_errors(page) -> list[str]:
    """Record the page's script errors and console errors (a resource blocked or missing)."""
    errors = []

    def on_console(message):
        # The browser probes /favicon.ico on its own; the portal has none and never links one.
        if message.type == "error" and urlsplit(message.location["url"]).path != "/favicon.ico":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def record_requests(page) -> list[str]:
    """Record the URL of every request the page's browser context makes."""
    requests = []
    page.context.on("request", lambda request: requests.append(request.url))
    return requests


def elsewhere(requests: list[str], server_url: str) -> list[str]:
    """Return the requests that went anywhere but the test server."""
    return [url for url in requests if urlsplit(url).netloc != urlsplit(server_url).netloc]


def test_front_page_renders_with_its_own_assets_only(page, server_url):
    requests = record_requests(page)
    errors = collect_errors(page)

    response = page.goto(server_url + "/")

    assert response.status == 200
    assert page.get_by_role("heading", level=1).is_visible()
    # The stylesheet is applied: the skip link waits off-screen until the keyboard reaches it.
    skip_link = page.get_by_role("link", name="Skip to content")
    assert skip_link.evaluate("link => getComputedStyle(link).left") == "-999px"
    page.keyboard.press("Tab")
    assert skip_link.evaluate("link => link === document.activeElement")
    assert skip_link.bounding_box()["x"] >= 0
    assert page.evaluate("() => window.htmx && window.htmx.version") == htmx_version()
    assert errors == []
    # No request leaves the portal: a link page must not leak its visitor to anyone.
    assert server_url + "/static/portal.css" in requests
    assert elsewhere(requests, server_url) == []


def test_preference_page_shows_its_sections(page, server_url, live_app):
    requests = record_requests(page)

    response = page.goto(server_url + preference_path(live_app, ENGLISH_CONTACT))

    assert response.status == 200
    assert elsewhere(requests, server_url) == []
    assert page.get_by_role("heading", level=1).inner_text() == "Your privacy preferences"
    assert page.get_by_role("region").count() == 4
    for name in ("Email", "How we use your data", "Your consents", "Your rights"):
        assert page.get_by_role("region", name=name).is_visible()


@pytest.mark.parametrize("where", ["front page", "preference page", "invalid link page"])
def test_page_has_no_accessibility_violations(axe_page, server_url, live_app, where):
    path = {
        "front page": "/",
        "preference page": preference_path(live_app, GERMAN_CONTACT),
        "invalid link page": "/p/k1.not-a-valid-token",
    }[where]
    axe_page.goto(server_url + path)

    results = Axe().run(axe_page)

    assert results.violations_count == 0, results.generate_report()
