"""The demo mailbox in a real browser (Playwright driving Debian's Chromium): a link in a mail's
HTML, shown in its sandboxed frame, opens the page in a new tab, as the mailbox promises."""

import re
from urllib.parse import urlsplit

import pytest
from chromium import skip_module_without_chromium
from conftest import demo_app
from playwright.sync_api import expect
from smtp_sink import free_port
from test_browser import server_url  # noqa: F401 (the live server, for this module's app)

from portal import contacts
from portal import demo
from portal import mailbox
from portal import outbox
from portal.db import db

pytestmark = pytest.mark.browser

skip_module_without_chromium()

ADMIN = "mailbox.reader@example.com"
PASSWORD = "a long enough browser password"
SUBJECT = "Ihre Datenschutzeinstellungen"


@pytest.fixture(scope="module")
def live_app(tmp_path_factory):
    """The demo application with its capturing SMTP server, and an admin for the test."""
    application = demo_app(tmp_path_factory.mktemp("browser-mailbox"), admin=(ADMIN, PASSWORD),
                           PORTAL_DEMO_SMTP_PORT=free_port())
    server = mailbox.start_server(application)
    yield application
    server.stop()
    with application.app_context():
        db.engine.dispose()


def _mail_with_a_link(live_app, server_url: str) -> tuple[int, str]:  # noqa: F811
    """Send a German contact a mail whose HTML links to their preference page, through the
    outbox and SMTP into the mailbox; return its mailbox id and the link."""
    with live_app.app_context():
        contact = contacts.find_by_email("contact06@demo.example")
        link = server_url + urlsplit(demo.manage_url(contact)).path
        outbox.enqueue(category="own_action", contact=contact, recipient=contact.email,
                       subject=SUBJECT, text_body=f"Öffnen Sie {link}",
                       html_body=f'<p>Hallo – <a href="{link}">Open my privacy preferences</a></p>')
        db.session.commit()
        outbox.work(once=True)
        return next(m.id for m in mailbox.messages() if m.subject == SUBJECT), link


def test_a_link_in_the_mails_html_opens_in_a_new_tab(browser, server_url, live_app):  # noqa: F811
    mail_id, link = _mail_with_a_link(live_app, server_url)
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto(f"{server_url}/staff/sign-in")
        page.get_by_label("Email").fill(ADMIN)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()

        mail_url = f"{server_url}/staff/mailbox/{mail_id}"
        page.goto(mail_url)
        expect(page.locator("pre.mail-text")).to_contain_text("Öffnen Sie")
        in_frame = page.frame_locator("iframe.mail-html").get_by_role(
            "link", name="Open my privacy preferences"
        )
        with context.expect_page() as opened:
            in_frame.click()
        tab = opened.value
        tab.wait_for_load_state()

        # The contact's page, in a tab of its own that cannot reach back to the mailbox.
        assert tab.url == link
        expect(tab.get_by_role("heading", level=1)).to_have_text(
            re.compile("Datenschutzeinstellungen")
        )
        assert tab.evaluate("() => window.opener") is None
        # The mailbox stays where it was, its frame still showing the mail.
        assert page.url == mail_url
        expect(in_frame).to_be_visible()
    finally:
        context.close()
