"""Back-office pages as a browser lays them out and updates them (Playwright driving Debian's
Chromium, under the portal's real Content-Security-Policy): a settings checkbox sits beside its
label at its natural size, and a campaign's status and banner follow its sending without a
reload."""

import re

import pytest
import sqlalchemy as sa
from chromium import skip_module_without_chromium
from conftest import demo_app
from playwright.sync_api import expect
from test_browser import server_url  # noqa: F401 (the live server, for this module's app)

from portal import campaigns
from portal import jobs
from portal import outbox
from portal.db import db

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
    expect(banner).to_have_text("The campaign is being sent. This page shows its progress.")

    with live_app.app_context():
        jobs.work(once=True)
        outbox.work(once=True)
    # The polling (every 2 s) brings the counts, and with them the status and the banner.
    expect(page.locator("#campaign-counts")).to_contain_text(re.compile(r"Sent: [1-9]"))
    expect(status).to_have_text("sent")
    expect(banner).to_have_text("The campaign is sent.")
    expect(page.locator("#campaign-counts")).not_to_have_attribute("hx-trigger", re.compile("."))
    assert page.locator("#campaign-status").count() == 1  # swapped, not added
    assert page.locator("#campaign-state").count() == 1
    page.reload()
    expect(status).to_have_text("sent")
    expect(banner).to_have_text("The campaign is sent.")
