"""A first day in the back office, in a real browser (Playwright driving Debian's Chromium).

An admin signs in, adds a consent with a display condition, previews the page as two contacts
(one is asked the consent, the other is not), filters the contacts, stops processing for one
and sees the lock, and erases another. One live server runs the demo data on its own SQLite
file; every step goes through the pages as a person would, with JavaScript (htmx) on, under
the portal's real Content-Security-Policy.
"""

import re

import pytest
import sqlalchemy as sa
from chromium import skip_module_without_chromium
from conftest import demo_app
from playwright.sync_api import expect
from test_browser import server_url  # noqa: F401 (the live server, for this module's app)

from portal import contacts
from portal import ledger
from portal.db import db

pytestmark = pytest.mark.browser

skip_module_without_chromium()

ADMIN = "first.day@example.com"
PASSWORD = "a long enough browser password"
CONSENT_TITLE = "Invitations to our Paris events"
# Demo contacts by region and language (see portal.demo.REGIONS): 01 is EU/fr, 02 is EU/en,
# 03 is in the UK.
FRENCH = "contact01@demo.example"
ENGLISH = "contact02@demo.example"
IN_THE_UK = "contact03@demo.example"
TO_ERASE = "contact08@demo.example"


@pytest.fixture(scope="module")
def live_app(tmp_path_factory):
    """The demo application on its own SQLite file, with an admin for the test."""
    application = demo_app(tmp_path_factory.mktemp("browser-backoffice"), admin=(ADMIN, PASSWORD))
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def page(browser):
    """A fresh page that records every Content-Security-Policy violation it meets."""
    context = browser.new_context()
    new_page = context.new_page()
    new_page.set_default_timeout(10_000)
    new_page.csp_violations = []
    new_page.on(
        "console",
        lambda message: (
            new_page.csp_violations.append(message.text)
            if "Content Security Policy" in message.text
            else None
        ),
    )
    yield new_page
    context.close()


def _public_id(live_app, email: str) -> str:
    with live_app.app_context():
        return contacts.find_by_email(email).public_id


def test_a_first_day_in_the_back_office(page, server_url, live_app):  # noqa: F811
    # Sign in.
    page.goto(f"{server_url}/staff/sign-in")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    # Add a consent asked only of French-speaking contacts.
    page.goto(f"{server_url}/staff/settings/consents/new")
    page.get_by_label("Title", exact=True).fill(CONSENT_TITLE)
    page.get_by_label("Text the contact reads", exact=True).fill(
        "May we invite you to our events in Paris?"
    )
    page.get_by_label("Condition 1: field").select_option("language")
    page.get_by_label("Condition 1: operator").select_option("equals")
    page.get_by_label("Condition 1: value").fill("fr")
    page.get_by_role("button", name="Save the consent").click()
    expect(page.locator(".flashes")).to_be_visible()

    # Preview the page as a French and as an English contact: only the first is asked.
    page.goto(f"{server_url}/staff/settings/preview")
    page.get_by_label("Contact (email address or public id)").fill(FRENCH)
    page.get_by_role("button", name="Show the page").click()
    summary = page.locator(".preview-summary")
    expect(summary).to_contain_text(CONSENT_TITLE)
    page.get_by_label("Contact (email address or public id)").fill(ENGLISH)
    page.get_by_role("button", name="Show the page").click()
    expect(summary).to_be_visible()
    expect(summary).not_to_contain_text(CONSENT_TITLE)

    # Filter the contacts: those in the UK.
    page.goto(f"{server_url}/staff/contacts")
    page.locator("#filter-region").select_option("UK")
    page.get_by_role("button", name="Show contacts").click()
    results = page.locator("#contact-results")
    expect(results).to_contain_text(IN_THE_UK)
    expect(results).not_to_contain_text(FRENCH)
    expect(page).to_have_url(re.compile(r"region=UK"))  # a bookmarkable list

    # Stop processing for one of them, and see the lock.
    results.get_by_role("row").filter(has_text=IN_THE_UK).get_by_role("link").click()
    page.get_by_text("Stop processing…").click()
    page.get_by_label("Reason (for example: the contact asked by phone)").fill(
        "The contact asked by phone on their first call"
    )
    page.get_by_role("button", name="Stop processing").click()
    banner = page.locator(".lock-banner")
    expect(banner).to_contain_text("Processing stopped: this record is locked")
    expect(banner).to_contain_text("The contact asked by phone on their first call")

    # Erase another: the record, the confirm page, the erased record.
    page.goto(f"{server_url}/staff/contacts/{_public_id(live_app, TO_ERASE)}")
    page.get_by_role("link", name="Erase personal data").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(TO_ERASE)
    page.get_by_role("button", name="Erase personal data").click()
    expect(page.locator(".erased-banner")).to_contain_text("Personal data erased")
    expect(page.locator(".flashes")).to_contain_text("c***@d***.example is erased")
    expect(page.locator("main")).not_to_contain_text(TO_ERASE)

    # The erasure log names the person only by the masked address.
    page.get_by_role("link", name="Erasure requests").click()
    expect(page.locator(".erasure-log")).to_contain_text("c***@d***.example")

    assert page.csp_violations == []
    with live_app.app_context():
        assert ledger.verify().ok
        erased = db.session.scalar(
            sa.select(contacts.Contact).where(contacts.Contact.erased_at.is_not(None))
        )
        assert erased.email is None
