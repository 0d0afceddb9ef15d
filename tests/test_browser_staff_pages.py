"""Back-office pages as a browser lays them out and updates them (Playwright driving Debian's
Chromium, under the portal's real Content-Security-Policy): a settings checkbox sits beside its
label at its natural size, a campaign's status and banner follow its sending without a reload,
keyboard focus survives what htmx swaps, and the pages reflow at 320 CSS pixels."""

import re

import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from chromium import skip_module_without_chromium
from conftest import demo_app
from playwright.sync_api import expect
from test_browser import server_url  # noqa: F401 (the live server, for this module's app)

from portal import campaigns
from portal import jobs
from portal import outbox
from portal.db import db
from portal.lists import MailingList

pytestmark = pytest.mark.browser

skip_module_without_chromium()

ADMIN = "layout@example.com"
PASSWORD = "a long enough browser password"


@pytest.fixture(scope="module")
def live_app(tmp_path_factory, smtp_server):
    """The demo on its own SQLite file, mailing the test SMTP server (as its mailbox), with an
    admin."""
    application = demo_app(
        tmp_path_factory.mktemp("browser-staff-pages"), admin=(ADMIN, PASSWORD),
        PORTAL_DEMO_SMTP_PORT=smtp_server.port,
    )
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def page(browser, server_url):  # noqa: F811
    """A fresh page, signed in as the admin."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    new_page = context.new_page()
    new_page.set_default_timeout(10_000)
    new_page.goto(f"{server_url}/staff/sign-in")
    new_page.get_by_label("Email").fill(ADMIN)
    new_page.get_by_label("Password").fill(PASSWORD)
    new_page.get_by_role("button", name="Sign in").click()
    expect(new_page.get_by_role("button", name="Sign out")).to_be_visible()
    yield new_page
    context.close()


def test_a_settings_checkbox_sits_beside_its_label(page, server_url):  # noqa: F811
    page.goto(f"{server_url}/staff/settings")
    box = page.get_by_role("checkbox", name="Contacts can use the preference page")
    expect(box).to_be_visible()
    box_area = box.bounding_box()
    label_area = page.locator("label[for=page_enabled]").bounding_box()
    assert box_area["width"] < 40, box_area
    # Beside the label, on its line: the box left of the label, their middles level.
    assert box_area["x"] + box_area["width"] <= label_area["x"]
    box_middle = box_area["y"] + box_area["height"] / 2
    label_middle = label_area["y"] + label_area["height"] / 2
    assert abs(box_middle - label_middle) < 8, (box_area, label_area)
    # Clicking the label still ticks the box.
    checked = box.is_checked()
    page.locator("label[for=page_enabled]").click()
    assert box.is_checked() is not checked

    # The text fields keep their width.
    page.goto(f"{server_url}/staff/settings/consents/new")
    assert page.get_by_label("Title", exact=True).bounding_box()["width"] > 200
    assert page.get_by_role("checkbox").bounding_box()["width"] < 40


def test_a_campaigns_status_and_banner_follow_its_sending(page, server_url, live_app, smtp):  # noqa: F811
    with live_app.app_context():
        campaign_id = db.session.scalar(
            sa.select(campaigns.Campaign.id).where(campaigns.Campaign.status == "draft")
        )
    page.goto(f"{server_url}/staff/campaigns/{campaign_id}/send")
    page.get_by_role("button", name="Send the campaign").click()
    status = page.locator("#campaign-status")
    banner = page.locator("#campaign-state")
    expect(status).to_have_text("sending")
    expect(banner).to_contain_text("The campaign is being sent. This page shows its progress.")

    with live_app.app_context():
        jobs.work(once=True)
        outbox.work(once=True)
    # The polling (every 2 s) brings the counts, and with them the status and the banner.
    expect(page.locator("#campaign-counts")).to_contain_text(re.compile(r"Sent: [1-9]"))
    expect(status).to_have_text("sent")
    expect(banner).to_contain_text("The campaign is sent.")
    expect(page.locator("#campaign-counts")).not_to_have_attribute("hx-trigger", re.compile("."))
    assert page.locator("#campaign-status").count() == 1  # swapped, not added
    assert page.locator("#campaign-state").count() == 1
    page.reload()
    expect(status).to_have_text("sent")
    expect(banner).to_contain_text("The campaign is sent.")


# Keyboard focus and screen-reader announcements across htmx swaps (WCAG 2.4.3, 4.1.3).


def focused(page) -> str:
    """Return what has the keyboard focus: its id, else its text."""
    return page.evaluate("document.activeElement.id || document.activeElement.textContent")


def polled(page, path: str):
    """Wait for the next answer to htmx polling `path`."""
    return page.expect_response(
        lambda response: response.url.endswith(path)
        and response.request.headers.get("hx-request") == "true"
    )


def test_a_campaigns_counts_poll_without_taking_focus_and_say_how_many_are_sent(
    page, server_url, live_app, smtp  # noqa: F811
):
    with live_app.app_context():
        campaign = campaigns.create(
            subject="Focus", text_body="Hello", html_body="", author="test",
            list_id=db.session.scalar(sa.select(MailingList.id).order_by(MailingList.id)),
        )
        campaigns.send(campaign, author="test")
        db.session.commit()
        campaign_id = campaign.id
    path = f"/staff/campaigns/{campaign_id}"
    page.goto(server_url + path)
    page.get_by_role("link", name="Refresh to see the latest counts").focus()
    with polled(page, path):
        pass
    page.wait_for_timeout(300)  # htmx settles 20 ms after the swap
    assert focused(page) == "Refresh to see the latest counts"
    banner = page.locator("#campaign-state")
    expect(banner).to_contain_text(re.compile(r"Sent 0 of \d+\."))
    page.evaluate("window.bannerBefore = document.getElementById('campaign-state')")

    with live_app.app_context():
        jobs.work(once=True)
        outbox.work(once=True)
        total = db.session.get(campaigns.Campaign, campaign_id).audience_at_start["audience"]
    expect(banner).to_contain_text(f"Sent {total} of {total}.")
    expect(page.locator("#campaign-counts")).not_to_have_attribute("hx-trigger", re.compile("."))
    # The status the screen reader listens to is the one the page opened with, not a copy.
    assert page.evaluate("document.getElementById('campaign-state') === window.bannerBefore")
    assert focused(page) == "Refresh to see the latest counts"


def test_a_jobs_progress_polls_without_taking_focus_and_its_status_stays_in_place(
    page, server_url, live_app  # noqa: F811
):
    with live_app.app_context():
        job = jobs.start("reencrypt-fields", created_by="test")
        db.session.commit()
        path = f"/staff/jobs/{job.id}"
    page.goto(server_url + path)
    page.get_by_role("link", name="Refresh to see the latest progress").focus()
    with polled(page, path):
        pass
    page.wait_for_timeout(300)
    assert focused(page) == "Refresh to see the latest progress"
    state = page.locator("#job-state")
    expect(state).to_contain_text("Status: queued")
    page.evaluate("window.stateBefore = document.getElementById('job-state')")

    with live_app.app_context():
        jobs.work(once=True)
    expect(state).to_contain_text("Status: done")
    expect(page.locator("#job-progress")).not_to_have_attribute("hx-trigger", re.compile("."))
    assert page.evaluate("document.getElementById('job-state') === window.stateBefore")
    assert focused(page) == "Refresh to see the latest progress"


def test_another_page_of_contacts_takes_focus_to_the_results_heading(page, server_url):  # noqa: F811
    page.goto(f"{server_url}/staff/contacts")
    heading = page.locator("#results-heading")
    count = heading.inner_text()
    page.get_by_role("link", name="Next page").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"page=2"))
    expect(heading).to_be_focused()
    # The count is announced from the status beside the results, which stays in place.
    expect(page.locator("#results-status")).to_have_text(count)
    page.get_by_role("link", name="Previous page").focus()
    page.keyboard.press("Enter")
    expect(page).not_to_have_url(re.compile(r"page=2"))
    expect(heading).to_be_focused()

    # Typing in the search updates the list without moving focus out of the field.
    search = page.get_by_label("Search")
    search.focus()
    page.keyboard.type("contact0")
    expect(page.locator("#results-status")).not_to_have_text(count)
    expect(page.locator("#results-status")).to_have_text(heading.inner_text())
    expect(search).to_be_focused()


def test_count_is_read_from_an_output_that_stays_in_place(page, server_url):  # noqa: F811
    page.goto(f"{server_url}/staff/settings")
    output = page.locator("#count-audience")
    page.evaluate("window.outputBefore = document.getElementById('count-audience')")
    button = page.locator("#rule-audience").get_by_role("button", name="Count")
    button.focus()
    page.keyboard.press("Enter")
    expect(output).to_contain_text(re.compile(r"\d+ contacts? match"))
    assert page.evaluate("document.getElementById('count-audience') === window.outputBefore")
    assert page.locator("#count-audience").count() == 1
    expect(output).to_have_attribute("aria-live", "polite")
    expect(button).to_be_focused()


def test_the_staff_pages_reflow_at_320_pixels(page, server_url):  # noqa: F811
    # WCAG 1.4.10: at 320 CSS px (1280 px zoomed to 400 %) nothing scrolls sideways but the
    # wide tables, each in its own box.
    page.set_viewport_size({"width": 320, "height": 800})
    page.goto(f"{server_url}/staff/contacts")
    record = page.locator("#contact-results tbody a").first.get_attribute("href")
    for path in ("/staff/contacts", record, "/staff/settings"):
        page.goto(server_url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 320, (path, width)


def test_the_narrow_staff_pages_have_no_accessibility_violations(browser, server_url):  # noqa: F811
    # The wide tables scroll in their own box: one that may hold nothing focusable is itself in
    # the tab order, so that the keyboard can scroll it (axe's scrollable-region-focusable).
    context = browser.new_context(viewport={"width": 320, "height": 800}, bypass_csp=True)
    narrow = context.new_page()
    narrow.goto(f"{server_url}/staff/sign-in")
    narrow.get_by_label("Email").fill(ADMIN)
    narrow.get_by_label("Password").fill(PASSWORD)
    narrow.get_by_role("button", name="Sign in").click()
    expect(narrow.get_by_role("button", name="Sign out")).to_be_visible()
    narrow.goto(f"{server_url}/staff/contacts")
    record = narrow.locator("#contact-results tbody a").first.get_attribute("href")
    for path in ("/staff/contacts", record, "/staff/settings", "/staff/settings/history",
                 "/staff/outbox"):
        narrow.goto(server_url + path)
        results = Axe().run(narrow)
        assert results.violations_count == 0, (path, results.generate_report())
    context.close()
