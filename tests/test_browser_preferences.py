"""A contact on their preference page, in a real browser, with JavaScript on and off.

Playwright drives Debian's Chromium against a live server of the demo (its own SQLite file),
whose mail goes to the test SMTP server; the tests drain the outbox by calling its worker. Each
walk-through uses a contact of its own, made for it, so the tests do not depend on each other.
"""

import re
import threading
from dataclasses import dataclass
from dataclasses import field
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from chromium import skip_module_without_chromium
from conftest import demo_app
from playwright.sync_api import Page
from playwright.sync_api import expect
from smtp_sink import free_port
from werkzeug.serving import make_server

from portal import changes
from portal import contacts
from portal import lists
from portal import outbox
from portal import unsubscribe
from portal.choices import LIST
from portal.choices import page_for
from portal.contacts import OptIn
from portal.db import db
from portal.links import make_token

# A German demo contact (see portal.demo.sample_links).
GERMAN_CONTACT = "contact06@demo.example"
PHONE = {"width": 375, "height": 740}
DEAD_LINK = "/p/k1.not-a-valid-token"

pytestmark = pytest.mark.browser

skip_module_without_chromium()


@pytest.fixture(scope="module")
def live_app(tmp_path_factory, smtp_server):
    """The demo application on its own SQLite file, mailing the test SMTP server."""
    # The server's address must be known before the app, so that emailed links point at it.
    base_url = f"http://127.0.0.1:{free_port()}"
    application = demo_app(
        tmp_path_factory.mktemp("browser-preferences"),
        PORTAL_BASE_URL=base_url,
        MAIL_SERVER="127.0.0.1",
        MAIL_PORT=smtp_server.port,
        # The demo sets MAIL_PORT to its mailbox's port, whatever MAIL_PORT says: so the test
        # server stands in for the demo mailbox.
        PORTAL_DEMO_SMTP_PORT=smtp_server.port,
    )
    with application.app_context():
        # The demo queues a few notices of its own: send them now, before any test listens.
        outbox.work(once=True)
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def server_url(live_app):
    """The address of a real HTTP server running the demo in a background thread."""
    base_url = live_app.config["PORTAL_BASE_URL"]
    server = make_server("127.0.0.1", urlsplit(base_url).port, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base_url
    server.shutdown()
    thread.join()
    server.server_close()


@dataclass
class Visitor:
    """One browser context and its page, with every request and console error it made."""

    page: Page
    server_url: str
    requests: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (where, what)

    def on_console(self, message) -> None:
        # The browser probes /favicon.ico on its own; the portal has none and never links one.
        if message.type == "error" and urlsplit(message.location["url"]).path != "/favicon.ico":
            self.errors.append((urlsplit(message.location["url"]).path, message.text))

    def open(self, url_or_path: str):
        """Go to a full URL (one read in a mail) or a path on the portal."""
        url = url_or_path if "://" in url_or_path else self.server_url + url_or_path
        return self.page.goto(url)

    def elsewhere(self) -> list[str]:
        """Return the requests that went anywhere but the portal."""
        home = urlsplit(self.server_url).netloc
        return [url for url in self.requests if urlsplit(url).netloc != home]


@pytest.fixture
def visit(browser, server_url):
    """Open browser contexts (JavaScript on or off, CSP bypassed for axe) for one test."""
    opened = []

    def open_context(**options) -> Visitor:
        context = browser.new_context(**options)
        opened.append(context)
        visitor = Visitor(context.new_page(), server_url)
        context.on("request", lambda request: visitor.requests.append(request.url))
        visitor.page.on("pageerror", lambda error: visitor.errors.append(("script", str(error))))
        visitor.page.on("console", visitor.on_console)
        return visitor

    yield open_context
    for context in opened:
        context.close()


class Mailbox:
    """The test SMTP server as one contact sees it; reading it first delivers the outbox."""

    def __init__(self, live_app, smtp, address: str):
        self.live_app = live_app
        self.smtp = smtp
        self.address = address

    def messages(self) -> list[EmailMessage]:
        with self.live_app.app_context():
            outbox.work(once=True)
        return [received.message for received in self.smtp.to(self.address)]

    def subjects(self) -> list[str]:
        return [message["Subject"] for message in self.messages()]

    def latest(self, subject: str) -> EmailMessage:
        return [message for message in self.messages() if message["Subject"] == subject][-1]


@pytest.fixture
def mail(live_app, smtp):
    """Open a contact's mailbox; mail queued by earlier tests is delivered and dropped first."""
    with live_app.app_context():
        outbox.work(once=True)
    smtp.reset()
    return lambda address: Mailbox(live_app, smtp, address)


def text_of(message: EmailMessage) -> str:
    """Return a mail's plain-text part."""
    return message.get_body(preferencelist=("plain",)).get_content()


def link_in(message: EmailMessage, server_url: str) -> str:
    """Return the one portal link in a mail's text."""
    (url,) = re.findall(re.escape(server_url) + r"/\S+", text_of(message))
    return url


def bullet_lines(message: EmailMessage) -> list[str]:
    """Return the changes a mail lists, one "- " line each."""
    return [line[2:] for line in text_of(message).splitlines() if line.startswith("- ")]


def new_contact(live_app, email: str) -> str:
    """Create an English contact in the EU on the newsletter, never asked for a consent;
    return the path of its preference page."""
    with live_app.app_context():
        contact = contacts.add_contact(
            email, first_name="Alex", region="EU", language="en",
            opt_in=OptIn.SINGLE_USER, method="test", actor="test",
        )
        newsletter = db.session.scalar(
            sa.select(lists.MailingList).where(lists.MailingList.slug == "newsletter")
        )
        lists.set_subscription(contact, newsletter, True, method="test", actor="test")
        db.session.commit()
        return f"/p/{make_token('manage', contact)}"


def preference_path(live_app, email: str) -> str:
    """Return the path of a contact's preference page."""
    with live_app.app_context():
        return f"/p/{make_token('manage', contacts.find_by_email(email))}"


def pending_confirm_path(live_app, email: str) -> str:
    """Make a contact ask to join a list; return the path of its confirmation link."""
    with live_app.app_context():
        contact = contacts.find_by_email(email)
        page = page_for(contact)
        outcome = changes.submit(contact, {(LIST, "events"): True}, versions={},
                                 stamp=page.stamp(), language="en")
        db.session.commit()
        return f"/c/{make_token('confirm', contact, p=outcome.pending.public_id)}"


def undo_path(live_app, email: str) -> str:
    """Make a contact leave the newsletter; return the path of its undo link."""
    with live_app.app_context():
        contact = contacts.find_by_email(email)
        record = changes.leave_list(contact, "newsletter", language="en")
        db.session.commit()
        return f"/u/{make_token('undo', contact, u=record.public_id)}"


def one_click_path(live_app, email: str) -> str:
    """Return the path of the List-Unsubscribe link of a contact's newsletter mail: it lands on
    the page with one button that leaves that list (M7), never on the preference page."""
    with live_app.app_context():
        newsletter = db.session.scalar(
            sa.select(lists.MailingList).where(lists.MailingList.slug == "newsletter")
        )
        url = unsubscribe.one_click_url(contacts.find_by_email(email), newsletter)
        return urlsplit(url).path


def on_newsletter(live_app, email: str) -> bool:
    with live_app.app_context():
        contact = contacts.find_by_email(email)
        newsletter = db.session.scalar(
            sa.select(lists.MailingList).where(lists.MailingList.slug == "newsletter")
        )
        subscription = db.session.get(lists.Subscription, (contact.id, newsletter.id))
        return subscription is not None and subscription.status == "subscribed"


# --- The walk-through -------------------------------------------------------------------------

LIST_NAMES = ("Events and webinars", "Monthly newsletter", "Product updates")


def checked_lists(page: Page) -> dict[str, bool]:
    """Return whether each mailing list's box is ticked."""
    lists_box = page.get_by_role("group", name="Mailing lists")
    return {name: lists_box.get_by_role("checkbox", name=name).is_checked() for name in LIST_NAMES}


def consent_answer(page: Page, title: str) -> dict[str, bool]:
    """Return which of a consent's two answers is selected."""
    group = page.get_by_role("group", name=title)
    return {
        "yes": group.get_by_role("radio", name="Yes, I agree").is_checked(),
        "no": group.get_by_role("radio", name="No").is_checked(),
    }


def status_messages(page: Page) -> list[str]:
    """Return the messages the page announces after a save."""
    return [text.strip() for text in page.get_by_role("status").locator("p").all_inner_texts()]


WITHDRAWN = "Your changes are saved. We sent you an email with a link to undo them."
CHECK_INBOX = ("Check your inbox: we sent you a link to confirm your changes. "
               "Nothing changes until you use it.")


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
def test_contact_withdraws_grants_confirms_and_undoes(visit, live_app, server_url, mail,
                                                      javascript):
    email = f"walker-{'js' if javascript else 'nojs'}@example.test"
    path = new_contact(live_app, email)
    mailbox = mail(email)
    visitor = visit(java_script_enabled=javascript)
    page = visitor.page

    # The link opens the page as it stands.
    response = visitor.open(path)
    assert response.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("Your privacy preferences")
    assert checked_lists(page) == {"Events and webinars": False, "Monthly newsletter": True,
                                   "Product updates": False}
    assert consent_answer(page, "Engagement tracking") == {"yes": False, "no": False}
    if javascript:
        page.evaluate("() => { window.sameDocument = true; }")

    # Leaving a list applies at once.
    newsletter = page.get_by_role("checkbox", name="Monthly newsletter")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        newsletter.uncheck()
        if not javascript:
            page.get_by_role("button", name="Save my choices").click()
    if javascript:
        assert posted.value.status == 200
        assert posted.value.request.headers.get("hx-request") == "true"
    else:
        assert posted.value.status == 303
    expect(page.get_by_role("status")).to_contain_text(WITHDRAWN)
    assert status_messages(page) == [WITHDRAWN]
    if javascript:
        # Swapped in place, and a keyboard user's focus is still on the box they unticked.
        assert page.evaluate("() => window.sameDocument") is True
        assert page.evaluate("() => document.activeElement.id") == "list-newsletter"
    assert checked_lists(page)["Monthly newsletter"] is False
    assert mailbox.subjects() == ["Your choices were saved"]
    notice = mailbox.latest("Your choices were saved")
    assert bullet_lines(notice) == ["Unsubscribe from Monthly newsletter"]

    # Joining a list and giving a consent wait for the owner of the mailbox.
    page.get_by_role("checkbox", name="Events and webinars").check()
    page.get_by_role("group", name="Engagement tracking").get_by_role(
        "radio", name="Yes, I agree").check()
    # With JavaScript these changes do not save on their own: the button sends them all at once.
    save = page.get_by_role("button", name="Save my choices")
    save.focus()
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.keyboard.press("Enter")
    if javascript:
        assert posted.value.status == 200
        assert posted.value.request.headers.get("hx-request") == "true"
    else:
        assert posted.value.status == 303
    expect(page.get_by_role("status")).to_contain_text("Check your inbox")
    assert status_messages(page) == [CHECK_INBOX]
    if javascript:
        assert page.evaluate("() => window.sameDocument") is True
        assert page.evaluate("() => document.activeElement.id") == "save-choices"
    # Nothing is granted yet.
    assert checked_lists(page) == {"Events and webinars": False, "Monthly newsletter": False,
                                   "Product updates": False}
    assert consent_answer(page, "Engagement tracking") == {"yes": False, "no": False}
    # One confirmation, listing both, whatever the page sent on the way.
    assert mailbox.subjects() == ["Your choices were saved", "Please confirm your choices"]
    confirmation = mailbox.latest("Please confirm your choices")
    assert confirmation["To"] == email
    assert bullet_lines(confirmation) == ["Subscribe to Events and webinars",
                                          "Give consent: Engagement tracking"]

    # The link in the mail opens a page listing exactly what will change, with one button.
    visitor.open(link_in(confirmation, server_url))
    expect(page).to_have_title("Confirm your changes")
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your changes")
    assert page.locator("ul.changes li").all_inner_texts() == [
        "Subscribe to Events and webinars", "Give consent: Engagement tracking"]
    assert page.get_by_role("button").count() == 1
    page.get_by_role("button", name="Confirm these changes").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your changes are confirmed")
    expect(page).to_have_title("Your changes are confirmed")
    receipt = mailbox.latest("Your changes are confirmed")
    assert bullet_lines(receipt) == ["Subscribe to Events and webinars",
                                     "Give consent: Engagement tracking"]
    assert mailbox.subjects() == ["Your choices were saved", "Please confirm your choices",
                                  "Your changes are confirmed"]

    page.get_by_role("link", name="See your preferences").click()
    assert checked_lists(page) == {"Events and webinars": True, "Monthly newsletter": False,
                                   "Product updates": False}
    assert consent_answer(page, "Engagement tracking") == {"yes": True, "no": False}
    expect(page.get_by_role("group", name="Engagement tracking")).to_contain_text("Given on")

    # The undo link in the withdrawal notice restores the list.
    visitor.open(link_in(notice, server_url))
    expect(page).to_have_title("Undo your changes")
    expect(page.get_by_role("heading", level=1)).to_have_text("Undo your changes")
    assert page.locator("ul.changes li").all_inner_texts() == ["Subscribe to Monthly newsletter"]
    assert page.get_by_role("button").count() == 1
    page.get_by_role("button", name="Undo these changes").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your changes are undone")
    expect(page).to_have_title("Your changes are undone")
    *_earlier, undo_receipt = mailbox.messages()
    assert mailbox.subjects() == ["Your choices were saved", "Please confirm your choices",
                                  "Your changes are confirmed", "Your changes are undone"]
    assert bullet_lines(undo_receipt) == ["Subscribe to Monthly newsletter"]
    page.get_by_role("link", name="See your preferences").click()
    assert checked_lists(page) == {"Events and webinars": True, "Monthly newsletter": True,
                                   "Product updates": False}

    assert visitor.errors == []
    assert visitor.elsewhere() == []


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
def test_a_stale_form_saves_nothing_and_says_so(visit, live_app, javascript):
    path = new_contact(live_app, f"stale-{'js' if javascript else 'nojs'}@example.test")
    visitor = visit(java_script_enabled=javascript)
    page = visitor.page
    visitor.open(path)
    # Another tab changes the choices after this one was loaded.
    other = page.context.new_page()
    other.goto(visitor.server_url + path)
    with other.expect_response(lambda r: r.request.method == "POST"):
        other.get_by_role("checkbox", name="Monthly newsletter").uncheck()
        if not javascript:
            other.get_by_role("button", name="Save my choices").click()
    expect(other.get_by_role("status")).to_contain_text(WITHDRAWN)
    other.close()

    page.get_by_role("checkbox", name="Events and webinars").check()
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Save my choices").click()

    # A friendly answer comes with 200, or htmx would not show it.
    assert posted.value.status == 200
    if javascript:
        expect(page.get_by_role("heading", level=1)).to_have_text("Your privacy preferences")
    else:
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "Your preferences changed meanwhile")
    alert = page.get_by_role("alert")
    expect(alert.get_by_role("heading", level=2)).to_have_text("Nothing was saved")
    assert "Subscribe to Events and webinars" in alert.get_by_role("listitem").all_inner_texts()
    # The form is gone: nothing on this answer could be sent again by mistake.
    assert page.get_by_role("checkbox").count() == 0
    page.get_by_role("link", name="See your current choices and try again").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your privacy preferences")
    assert checked_lists(page) == {"Events and webinars": False, "Monthly newsletter": False,
                                   "Product updates": False}
    assert visitor.errors == []
    assert visitor.elsewhere() == []


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
def test_a_link_that_dies_while_its_page_is_open_says_so(visit, live_app, javascript):
    email = f"revoked-{'js' if javascript else 'nojs'}@example.test"
    path = new_contact(live_app, email)
    visitor = visit(java_script_enabled=javascript)
    page = visitor.page
    visitor.open(path)
    with live_app.app_context():
        contacts.find_by_email(email).link_version += 1  # every link issued so far dies
        db.session.commit()

    box = page.get_by_role("checkbox", name="Monthly newsletter")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        if javascript:
            # A click, not uncheck(): htmx posts on the change and may replace the page before
            # Playwright would look at the box again to see it unticked.
            box.click()
        else:
            box.uncheck()
            page.get_by_role("button", name="Save my choices").click()

    assert posted.value.status == 404
    # htmx swaps no 404 by default: the page would stay as it was, the box unticked, unsaved.
    expect(page.get_by_role("heading", level=1)).to_have_text("This link is not valid")
    expect(page).to_have_title("This link cannot be used")
    assert page.get_by_role("main").count() == 1
    assert page.get_by_role("checkbox").count() == 0
    expect(page.get_by_role("button", name="Email me a fresh link")).to_be_visible()
    assert visitor.elsewhere() == []


# --- The way back in --------------------------------------------------------------------------

def ask_for_fresh_link(page: Page, address: str) -> None:
    page.get_by_role("textbox", name="Your email address").fill(address)
    with page.expect_navigation():
        page.get_by_role("button", name="Email me a fresh link").click()


def test_a_dead_link_offers_a_fresh_one_by_email(visit, live_app, server_url, mail):
    email = "fresh@example.test"
    new_contact(live_app, email)
    mailbox = mail(email)
    visitor = visit()
    page = visitor.page

    response = visitor.open(DEAD_LINK)
    assert response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("This link is not valid")
    ask_for_fresh_link(page, "  Fresh@Example.test ")

    assert urlsplit(page.url).path == "/link/sent"
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    (message,) = mailbox.messages()
    assert message["Subject"] == "Your link to your privacy preferences"
    assert message["To"] == email
    visitor.open(link_in(message, server_url))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your privacy preferences")
    expect(page.get_by_text("Hello Alex.")).to_be_visible()

    # An address nobody holds gets the same answer, and no mail goes anywhere.
    visitor.open(DEAD_LINK)
    ask_for_fresh_link(page, "nobody@example.test")
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    assert mail("nobody@example.test").messages() == []
    assert len(mailbox.messages()) == 1

    # The only error is the dead link's own status (404), which the browser logs.
    assert {where for where, _text in visitor.errors} == {DEAD_LINK}
    assert visitor.elsewhere() == []


# --- Accessibility, phones, and no request elsewhere ------------------------------------------

def _preference_page(visitor, live_app):
    visitor.open(new_contact(live_app, "axe-page@example.test"))


def _german_preference_page(visitor, live_app):
    visitor.open(preference_path(live_app, GERMAN_CONTACT))
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text(
        "Ihre Datenschutzeinstellungen")


def _saved_preference_page(visitor, live_app):
    visitor.open(new_contact(live_app, "axe-saved@example.test"))
    visitor.page.get_by_role("checkbox", name="Monthly newsletter").uncheck()
    expect(visitor.page.get_by_role("status")).to_contain_text(WITHDRAWN)


def _unsubscribe_landing(visitor, live_app):
    visitor.open(new_contact(live_app, "axe-landing@example.test") + "?list=newsletter")
    expect(visitor.page.get_by_role("button", name="Leave Monthly newsletter")).to_be_visible()


def _one_click_landing(visitor, live_app):
    new_contact(live_app, "axe-leave@example.test")
    visitor.open(one_click_path(live_app, "axe-leave@example.test"))
    expect(visitor.page.get_by_role("button", name="Unsubscribe")).to_be_visible()


def _one_click_landing_when_not_on_the_list(visitor, live_app):
    new_contact(live_app, "axe-left@example.test")
    path = one_click_path(live_app, "axe-left@example.test")
    undo_path(live_app, "axe-left@example.test")  # left the newsletter already
    visitor.open(path)
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text(
        "You are not on Monthly newsletter")


def _one_click_unsubscribed(visitor, live_app):
    new_contact(live_app, "axe-unsubscribed@example.test")
    visitor.open(one_click_path(live_app, "axe-unsubscribed@example.test"))
    visitor.page.get_by_role("button", name="Unsubscribe").click()
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")


def _confirm_page(visitor, live_app):
    new_contact(live_app, "axe-confirm@example.test")
    visitor.open(pending_confirm_path(live_app, "axe-confirm@example.test"))
    expect(visitor.page.get_by_role("button", name="Confirm these changes")).to_be_visible()


def _confirmed_page(visitor, live_app):
    new_contact(live_app, "axe-confirmed@example.test")
    visitor.open(pending_confirm_path(live_app, "axe-confirmed@example.test"))
    visitor.page.get_by_role("button", name="Confirm these changes").click()
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Your changes are confirmed")


def _undo_page(visitor, live_app):
    new_contact(live_app, "axe-undo@example.test")
    visitor.open(undo_path(live_app, "axe-undo@example.test"))
    expect(visitor.page.get_by_role("button", name="Undo these changes")).to_be_visible()


def _undone_page(visitor, live_app):
    new_contact(live_app, "axe-undone@example.test")
    visitor.open(undo_path(live_app, "axe-undone@example.test"))
    visitor.page.get_by_role("button", name="Undo these changes").click()
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Your changes are undone")


def _stale_page(visitor, live_app):
    email = "axe-stale@example.test"
    visitor.open(new_contact(live_app, email))
    undo_path(live_app, email)  # the contact leaves a list elsewhere meanwhile
    visitor.page.get_by_role("checkbox", name="Events and webinars").check()
    # Sent as a plain form (no htmx), to get the whole page rather than the fragment.
    with visitor.page.expect_navigation():
        visitor.page.locator("#preferences").evaluate("form => form.submit()")
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text(
        "Your preferences changed meanwhile")


def _fresh_link_form(visitor, live_app):
    visitor.open("/link")
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Email me a fresh link")


def _fresh_link_form_with_error(visitor, live_app):
    visitor.open("/link")
    ask_for_fresh_link(visitor.page, "not an address")
    expect(visitor.page.get_by_role("textbox", name="Your email address")).to_have_attribute(
        "aria-invalid", "true")


def _fresh_link_sent(visitor, live_app):
    visitor.open("/link")
    ask_for_fresh_link(visitor.page, "someone@example.test")
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Check your inbox")


def _invalid_link_page(visitor, live_app):
    assert visitor.open(DEAD_LINK).status == 404


PAGES = {
    "preference page": _preference_page,
    "German preference page": _german_preference_page,
    "preference page after a save": _saved_preference_page,
    "unsubscribe landing": _unsubscribe_landing,
    "one-click unsubscribe landing": _one_click_landing,
    "one-click landing, not on the list": _one_click_landing_when_not_on_the_list,
    "one-click unsubscribe answer": _one_click_unsubscribed,
    "confirm page": _confirm_page,
    "confirmed page": _confirmed_page,
    "undo page": _undo_page,
    "undone page": _undone_page,
    "stale page": _stale_page,
    "fresh-link form": _fresh_link_form,
    "fresh-link form with an error": _fresh_link_form_with_error,
    "fresh-link answer": _fresh_link_sent,
    "invalid-link page": _invalid_link_page,
}


@pytest.mark.parametrize("where", PAGES)
def test_page_is_accessible_fits_a_phone_and_stays_home(visit, live_app, where):
    # axe-core's injected script needs the context to bypass the Content-Security-Policy.
    visitor = visit(bypass_csp=True)
    PAGES[where](visitor, live_app)

    results = Axe().run(visitor.page)

    assert results.violations_count == 0, results.generate_report()
    visitor.page.set_viewport_size(PHONE)
    assert visitor.page.evaluate(
        "() => document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth"
    ), f"the {where} scrolls sideways on a phone"
    assert visitor.elsewhere() == []


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_the_header_unsubscribe_link_leaves_the_list_with_its_one_button(
    visit, live_app, javascript
):
    email = f"leave-{'js' if javascript else 'nojs'}@example.test"
    new_contact(live_app, email)
    visitor = visit(java_script_enabled=javascript)
    page = visitor.page
    visitor.open(one_click_path(live_app, email))
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Unsubscribe from Monthly newsletter?")
    assert on_newsletter(live_app, email)  # opening the link changes nothing

    with page.expect_navigation():
        page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")
    expect(page.get_by_role("main")).to_contain_text(
        "You will receive no more mail from the list Monthly newsletter.")
    assert not on_newsletter(live_app, email)
    assert visitor.errors == []
    assert visitor.elsewhere() == []


# --- With JavaScript, a toggle saves withdrawals only -----------------------------------------

HELD = ("Anything you give or ask for is not sent yet: press “Save my choices” and we will "
        "email you a link to confirm it.")


@pytest.mark.parametrize("send", ["click", "enter"], ids=["button", "enter-in-a-box"])
def test_a_toggle_withdraws_at_once_and_leaves_a_join_ticked_for_the_button(
    visit, live_app, server_url, mail, send
):
    email = f"toggle-{send}@example.test"
    mailbox = mail(email)
    visitor = visit()
    page = visitor.page
    visitor.open(new_contact(live_app, email))
    page.evaluate("() => { window.sameDocument = true; }")

    # The contact ticks a list to join, then unticks one they are on: only the leaving saves.
    page.get_by_role("checkbox", name="Events and webinars").check()
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("checkbox", name="Monthly newsletter").click()
    assert posted.value.status == 200
    assert posted.value.request.headers.get("hx-request") == "true"
    expect(page.get_by_role("status")).to_contain_text(WITHDRAWN)
    assert status_messages(page) == [WITHDRAWN, HELD]
    # The swapped form still has the join ticked.
    assert checked_lists(page) == {"Events and webinars": True, "Monthly newsletter": False,
                                   "Product updates": False}
    assert mailbox.subjects() == ["Your choices were saved"]
    assert bullet_lines(mailbox.latest("Your choices were saved")) == [
        "Unsubscribe from Monthly newsletter"]

    # The button (or Enter in a box, which presses it) sends the join.
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        if send == "click":
            page.get_by_role("button", name="Save my choices").click()
        else:
            page.get_by_role("checkbox", name="Events and webinars").press("Enter")
    assert posted.value.status == 200
    assert posted.value.request.headers.get("hx-request") == "true"
    expect(page.get_by_role("status")).to_contain_text("Check your inbox")
    assert status_messages(page) == [CHECK_INBOX]
    assert page.evaluate("() => window.sameDocument") is True
    assert mailbox.subjects() == ["Your choices were saved", "Please confirm your choices"]
    assert bullet_lines(mailbox.latest("Please confirm your choices")) == [
        "Subscribe to Events and webinars"]
    assert visitor.errors == []
    assert visitor.elsewhere() == []
