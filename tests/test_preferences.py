"""The contact's preference page through its views, reading the real mail it sends (P1-P10, R1,
R2, R5, SECURITY.md 1, 3, 8, 9).

A test drives the page as a browser would: it reads the form off the page, changes some
choices, posts it, then delivers the outbox to the test SMTP server and follows the links in the
mail received. Other tests may have committed rows to the shared PostgreSQL database, so every
assertion looks only at this test's own contacts, mail and events.
"""

import hashlib
import re
import secrets
import threading
import time
from datetime import timedelta
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from test_changes import add_contact
from test_changes import configure
from test_changes import state

from portal import consent
from portal import contacts
from portal import ledger
from portal import lists
from portal import outbox
from portal.changes import PendingChange
from portal.changes import Undo
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.ledger import LedgerEvidence
from portal.links import make_token
from portal.outbox import OutboxMessage

BASE_URL = "https://prefs.example.test"
EU = {"field": "region", "op": "equals", "value": "EU"}
READY = {"field": "sales_stage", "op": "equals", "value": "ready to buy"}
POLICY = "We use your data only as you allow."
BAD_LINK = "This link is not valid"
EXPIRED_LINK = "This link has expired"
CONFIRM_SUBJECT = "Please confirm your choices"
NOTICE_SUBJECT = "Your choices were saved"
RECEIPT_SUBJECT = "Your changes are confirmed"
CHECK_INBOX = "Check your inbox: we sent you a link to confirm your changes."


# --- Reading pages and mail --------------------------------------------------------------------


class FormReader(HTMLParser):
    """Collect what a browser would submit from a page's POST form, left as it is shown."""

    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form" and attributes.get("method") == "post" and self.action is None:
            self.action, self._inside = attributes.get("action"), True
        elif tag == "input" and self._inside and attributes.get("name"):
            kind = attributes.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in attributes:
                    self.fields[attributes["name"]] = attributes.get("value") or "on"
            else:
                self.fields[attributes["name"]] = attributes.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._inside = False


def read_form(html: str) -> tuple[str, dict[str, str]]:
    reader = FormReader()
    reader.feed(html)
    assert reader.action, "the page has a POST form"
    return reader.action, reader.fields


class DocumentReader(HTMLParser):
    """Read how an HTML mail part starts: its doctype, the elements up to <body> in order, the
    <html lang> and the <title> within <head>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.doctype: str | None = None
        self.opened: list[str] = []
        self.lang: str | None = None
        self.title: str | None = None
        self._in: list[str] = []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        if "body" in self.opened:
            return
        self.opened.append(tag)
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        if tag == "title" and self._in == ["html", "head"]:
            self.title = ""
        if tag not in ("meta", "base", "link"):
            self._in.append(tag)

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag and "body" not in self._in:
            self._in.pop()

    def handle_data(self, data):
        if self._in == ["html", "head", "title"]:
            self.title += data


def read_document(html: str) -> DocumentReader:
    """Return how an HTML part reads as a document; fail unless it is a whole one: a doctype,
    then <html>, whose <head> has a charset and a title, then <body>."""
    reader = DocumentReader()
    reader.feed(html)
    assert (reader.doctype or "").lower() == "doctype html", html[:200]
    assert reader.opened[:2] == ["html", "head"], html[:200]
    assert "meta" in reader.opened and reader.opened[-1] == "body", html[:200]
    assert reader.title is not None, html[:200]
    return reader


def manage_path(contact: Contact) -> str:
    return f"/p/{make_token('manage', contact)}"


def post_page(client, path: str, *, choose: dict | None = None, clear: tuple = (),
              form: dict | None = None, extra: dict | None = None):
    """Post the preference form as shown (or as read earlier), with some choices changed."""
    if form is None:
        page = client.get(path)
        assert page.status_code == 200, page.text
        _action, form = read_form(page.text)
    data = {name: value for name, value in form.items() if name not in clear}
    data.update(choose or {})
    data.update(extra or {})
    return client.post(path, data=data)


def press(client, path: str, *, form: dict | None = None):
    """Open a confirm or undo page and press its one button (or post a form read earlier)."""
    if form is None:
        page = client.get(path)
        assert page.status_code == 200, page.text
        action, form = read_form(page.text)
        assert action == path
    return client.post(path, data=form)


def deliver() -> None:
    """Hand everything queued to the test SMTP server."""
    outbox.work(once=True)


def mail(smtp, contact: Contact, subject: str) -> list:
    return [m.message for m in smtp.to(contact.email) if m.message["Subject"] == subject]


def the_mail(smtp, contact: Contact, subject: str):
    (message,) = mail(smtp, contact, subject)
    return message


def text_of(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_of(message) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def link_in(message, kind: str) -> str:
    """Return the path of the /c/ or /u/ link in a mail's text, built from the base URL."""
    (url,) = re.findall(rf"{re.escape(BASE_URL)}/{kind}/\S+", text_of(message))
    return url.removeprefix(BASE_URL)


def flashes(response) -> str:
    """Return the flashed messages a page shows."""
    found = re.search(r'<div class="flashes"[^>]*>(.*?)</div>', response.text, re.S)
    return found.group(1) if found else ""


# --- The world the tests run in ----------------------------------------------------------------


@pytest.fixture
def client(app):
    """A browser on HTTPS: Flask-WTF checks the Referer there (SECURITY.md 8)."""
    browser = app.test_client()
    browser.environ_base["HTTP_REFERER"] = "https://localhost/"
    browser.environ_base["REMOTE_ADDR"] = "198.51.100.4"
    browser.environ_base["HTTP_USER_AGENT"] = "Mozilla/5.0 (Ada's browser)"
    return browser


@pytest.fixture
def world(app) -> SimpleNamespace:
    """A page open to the EU, three lists (one staff-only), three consents, one contact."""
    rules = configure(audience_rule=EU, policy_html=f"<p>{POLICY}</p>")
    stage = contacts.define_field("sales_stage", "Sales stage")
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    news = lists.create_list("news", "Newsletter")
    lists.create_list("offers", "Offers")
    vip = lists.create_list("vip", "Key accounts", public=False)
    tracking = consent.define("tracking", "tracking", "Engagement tracking",
                              "We may record when you open our emails.")
    partners = consent.define("partners", "custom", "Share with partners",
                              "We may share your details with our partners.")
    consent.define("card", "storage", "Keep my card number", "We may store your card number.",
                   field=card, display_condition=READY)
    ada = add_contact("ada@example.com", first_name="Ada", language="en",
                      opt_in=OptIn.SINGLE_USER)
    lists.set_subscription(ada, news, True, method="test", actor="test")
    consent.decide(ada, tracking.current_version, True, method="test", actor="test")
    db.session.commit()
    return SimpleNamespace(ada=ada, news=news, vip=vip, tracking=tracking, partners=partners,
                           stage=stage, rule_version=rules.version)


def footprint(contact: Contact) -> dict:
    """Return the state with everything a request could have written or used up."""
    statuses = {
        "pending": [p.status for p in db.session.scalars(
            sa.select(PendingChange).where(PendingChange.contact_id == contact.id)
            .order_by(PendingChange.id))],
        "undos": [u.status for u in db.session.scalars(
            sa.select(Undo).where(Undo.contact_id == contact.id).order_by(Undo.id))],
        "mail": db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)
                                  .where(OutboxMessage.contact_id == contact.id)),
    }
    return {**state(contact), **statuses, "events": len(ledger.history(contact.public_id))}


def withdraw_and_ask(client, smtp, contact: Contact) -> tuple[str, str]:
    """Leave the newsletter and ask to join Offers; return the undo and confirm link paths."""
    response = post_page(client, manage_path(contact), clear=("list:news",),
                         choose={"list:offers": "on"})
    assert response.status_code == 303
    deliver()
    undo = link_in(the_mail(smtp, contact, NOTICE_SUBJECT), "u")
    confirm = link_in(the_mail(smtp, contact, CONFIRM_SUBJECT), "c")
    return undo, confirm


# --- R1: a GET changes nothing -----------------------------------------------------------------


def test_a_scanners_get_and_head_on_every_emailed_link_change_nothing_and_burn_no_token(
    client, smtp, world
):
    ada = world.ada
    undo, confirm = withdraw_and_ask(client, smtp, ada)
    before = footprint(ada)
    scanner = client.application.test_client()  # no cookie, no Referer: a mail scanner

    for path in (confirm, undo, manage_path(ada)) * 2:
        for method in ("GET", "HEAD"):
            response = scanner.open(path, method=method)
            assert response.status_code == 200, (method, path)
    assert footprint(ada) == before

    # The links still work for the human who clicks after the scanner.
    confirmed = press(client, confirm)
    assert "Your changes are confirmed" in confirmed.text
    undone = press(client, undo)
    assert "Your changes are undone" in undone.text
    after = state(ada)
    assert after["lists"] == {"news": "subscribed", "offers": "subscribed"}


# --- P4: a forwarded link can withdraw but not grant -------------------------------------------


def test_a_forwarded_link_can_withdraw_but_cannot_grant_stop_processing_or_erase(
    client, smtp, world
):
    ada = world.ada
    before = state(ada)

    # Whoever holds the forwarded page link asks for everything the page can give.
    response = post_page(client, manage_path(ada),
                         choose={"list:offers": "on", "consent:partners": "yes",
                                 "stop_processing": "on", "erasure": "on"})
    assert response.status_code == 303
    page = client.get(response.headers["Location"])
    assert CHECK_INBOX in flashes(page)
    assert state(ada) == before
    # A withdrawal through the same link applies at once.
    post_page(client, manage_path(ada), clear=("list:news",))
    assert state(ada)["lists"]["news"] == "unsubscribed"

    # Only the owner's mailbox holds the link that applies the rest.
    deliver()
    confirm = link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c")
    assert state(ada) == {**before, "lists": {"news": "unsubscribed"}}
    assert "Your changes are confirmed" in press(client, confirm).text
    after = state(ada)
    assert after["lists"]["offers"] == "subscribed"
    assert after["consents"]["partners"] == ("granted", 1)
    assert after["processing_stopped"] and after["erasure_requested"]
    assert after["opt_in"] == OptIn.OPTOUT_CONTACT


# --- Undo, cancellation, single use ------------------------------------------------------------


def test_the_undo_link_restores_the_withdrawn_state(client, smtp, world):
    ada = world.ada
    lists.set_subscription(ada, world.vip, True, method="staff", actor="agent")
    # The wording changed after Ada agreed: the undo gives back the version she agreed to.
    consent.add_version(world.tracking, "Engagement tracking", "New wording.", material=True)
    db.session.commit()
    before = state(ada)

    post_page(client, manage_path(ada), clear=("list:news", "list:vip"),
              choose={"consent:tracking": "no", "stop_marketing": "on"})
    withdrawn = state(ada)
    assert withdrawn["lists"] == {"news": "unsubscribed", "vip": "unsubscribed"}
    assert withdrawn["consents"]["tracking"] == ("revoked", 2)
    assert withdrawn["opt_in"] == OptIn.OPTOUT_CONTACT
    deliver()
    notice = the_mail(smtp, ada, NOTICE_SUBJECT)
    for line in ("Unsubscribe from Newsletter", "Unsubscribe from Key accounts",
                 "Withdraw consent: Engagement tracking", "Stop all marketing email"):
        assert line in text_of(notice)
    undo = link_in(notice, "u")

    page = client.get(undo)
    assert "Pressing the button restores:" in page.text
    _action, second_tab = read_form(page.text)
    assert "Your changes are undone" in press(client, undo).text
    assert state(ada) == before
    deliver()
    receipt = text_of(the_mail(smtp, ada, "Your changes are undone"))
    assert "Subscribe to Newsletter" in receipt
    assert "Give consent: Engagement tracking" in receipt

    # Once used, the link says so and restores nothing more.
    post_page(client, manage_path(ada), clear=("list:news",))
    assert "already undone" in client.get(undo).text
    again = press(client, undo, form=second_tab)
    assert "Already undone" in again.text
    assert state(ada)["lists"]["news"] == "unsubscribed"


WAITING = "Waiting for your confirmation: we emailed you a link on"


def _hint_of(html: str, control_id: str) -> str:
    """Return the text that describes a control: the paragraphs its aria-describedby names."""
    described = re.search(rf'id="{control_id}"[^>]*aria-describedby="([^"]+)"', html)
    if described is None:
        return ""
    return " ".join(
        re.search(rf'<p[^>]* id="{ref}">(.*?)</p>', html, re.S).group(1)
        for ref in described.group(1).split()
    )


def test_the_page_says_which_requests_wait_for_confirmation_until_they_are_confirmed(
    client, smtp, world
):
    ada = world.ada
    post_page(client, manage_path(ada), choose={"list:offers": "on", "erasure": "on"})
    page = client.get(manage_path(ada)).text
    # Nothing changed yet, and the page says so next to each control the contact asked for.
    assert 'name="list:offers" checked' not in page
    assert WAITING in _hint_of(page, "list-offers")
    assert WAITING in _hint_of(page, "erasure")
    assert WAITING not in _hint_of(page, "list-news")
    assert WAITING not in _hint_of(page, "stop-processing")

    deliver()
    confirm = link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c")
    press(client, confirm)
    page = client.get(manage_path(ada)).text
    assert WAITING not in page


def test_a_request_whose_confirmation_link_expired_no_longer_shows_as_waiting(
    app, client, world
):
    post_page(client, manage_path(world.ada), choose={"list:offers": "on"})
    assert WAITING in client.get(manage_path(world.ada)).text
    confirm_hours = app.config["PORTAL_LINK_MAX_AGE"]["confirm"] / 3600
    db.session.execute(
        sa.update(PendingChange)
        .where(PendingChange.contact_id == world.ada.id)
        .values(created_at=utcnow() - timedelta(hours=confirm_hours + 1))
    )
    db.session.commit()
    assert WAITING not in client.get(manage_path(world.ada)).text


def test_a_request_is_sent_once_while_its_link_lives_and_anew_once_it_expired(
    app, client, smtp, world
):
    ada = world.ada
    path = manage_path(ada)
    post_page(client, path, choose={"list:offers": "on"})
    # Saving again with the same box ticked asks for nothing new.
    post_page(client, path, choose={"list:offers": "on"})
    deliver()
    assert len(mail(smtp, ada, CONFIRM_SUBJECT)) == 1

    confirm_hours = app.config["PORTAL_LINK_MAX_AGE"]["confirm"] / 3600
    db.session.execute(
        sa.update(PendingChange)
        .where(PendingChange.contact_id == ada.id)
        .values(created_at=utcnow() - timedelta(hours=confirm_hours + 1))
    )
    db.session.commit()
    # Its link is dead now: the same request gets a new confirmation, with a live link.
    post_page(client, path, choose={"list:offers": "on"})
    deliver()
    confirmations = mail(smtp, ada, CONFIRM_SUBJECT)
    assert len(confirmations) == 2
    assert "Your changes are confirmed" in press(client, link_in(confirmations[1], "c")).text
    assert state(ada)["lists"]["offers"] == "subscribed"


def test_a_withdrawal_cancels_a_pending_grant_of_the_same_item(client, smtp, world):
    ada = world.ada
    post_page(client, manage_path(ada), choose={"list:offers": "on", "consent:partners": "yes"})
    deliver()
    confirm = link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c")

    # A later "no" to partners, on the page: the old link cannot turn it into a yes.
    post_page(client, manage_path(ada), choose={"consent:partners": "no"})
    assert state(ada)["consents"]["partners"] == ("revoked", 1)
    page = client.get(confirm)
    assert "Subscribe to Offers" in page.text
    assert "Share with partners" not in page.text

    assert "Your changes are confirmed" in press(client, confirm).text
    after = state(ada)
    assert after["consents"]["partners"] == ("revoked", 1)
    assert after["lists"]["offers"] == "subscribed"


def test_a_pending_change_wholly_withdrawn_applies_nothing(client, smtp, world):
    ada = world.ada
    post_page(client, manage_path(ada), choose={"consent:partners": "yes"})
    deliver()
    confirm = link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c")
    _action, form = read_form(client.get(confirm).text)
    post_page(client, manage_path(ada), choose={"consent:partners": "no"})

    assert "no longer apply" in client.get(confirm).text
    response = press(client, confirm, form=form)
    assert "These changes no longer apply" in response.text
    assert state(ada)["consents"]["partners"] == ("revoked", 1)


@pytest.mark.parametrize("link", ["confirm", "undo"])
def test_pressing_a_links_button_reads_nothing_after_its_commit(
    client, smtp, world, statements, link
):
    """The answer and its link to the page are made from what the change read: no second
    transaction after the commit (on SQLite it would take the write lock again)."""
    undo, confirm = withdraw_and_ask(client, smtp, world.ada)
    path = confirm if link == "confirm" else undo
    _action, form = read_form(client.get(path).text)
    statements.clear()
    answer = client.post(path, data=form)
    assert answer.status_code == 200
    # The commit is the request's last statement (under the `app` fixture, a savepoint's end).
    assert statements[-1].startswith("RELEASE SAVEPOINT")
    again = re.search(r'href="(/p/[^"]+)"', answer.text).group(1)
    assert client.get(again).status_code == 200


def test_a_second_post_of_a_confirmation_says_already_confirmed_and_changes_nothing(
    client, smtp, world
):
    ada = world.ada
    post_page(client, manage_path(ada), choose={"list:offers": "on"})
    deliver()
    confirm = link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c")
    _action, form = read_form(client.get(confirm).text)  # a second tab, opened before
    assert "Your changes are confirmed" in press(client, confirm).text
    deliver()
    after = footprint(ada)

    second = press(client, confirm, form=form)
    assert second.status_code == 200
    assert "Already confirmed" in second.text
    assert "Your changes are confirmed" not in second.text
    assert "already confirmed" in client.get(confirm).text
    deliver()
    assert footprint(ada) == after
    assert len(mail(smtp, ada, RECEIPT_SUBJECT)) == 1


def test_a_newer_confirmed_change_supersedes_older_pending_ones(client, smtp, world):
    ada = world.ada
    post_page(client, manage_path(ada), choose={"list:offers": "on"})
    post_page(client, manage_path(ada), choose={"consent:partners": "yes"})
    deliver()
    older, newer = (link_in(m, "c") for m in mail(smtp, ada, CONFIRM_SUBJECT))
    _action, form = read_form(client.get(older).text)

    assert "Your changes are confirmed" in press(client, newer).text
    assert "no longer apply" in client.get(older).text
    assert "These changes no longer apply" in press(client, older, form=form).text
    after = state(ada)
    assert after["consents"]["partners"] == ("granted", 1)
    assert "offers" not in after["lists"]


# --- The unsubscribe landing (N5) -------------------------------------------------------------


def test_the_unsubscribe_landing_asks_first_and_leaves_one_list_with_one_button(
    client, smtp, world
):
    ada = world.ada
    path = f"{manage_path(ada)}?list=news"
    before = footprint(ada)
    for method in ("GET", "HEAD"):
        assert client.open(path, method=method).status_code == 200
    assert footprint(ada) == before  # a scanner following the campaign's link changes nothing

    action, form = read_form(client.get(path).text)
    assert action.endswith("/leave/news")
    response = client.post(action, data=form)
    assert response.status_code == 303
    after = state(ada)
    assert after["lists"] == {"news": "unsubscribed"}
    assert after["opt_in"] == before["opt_in"]  # only that list
    deliver()
    undo = link_in(the_mail(smtp, ada, NOTICE_SUBJECT), "u")
    press(client, undo)
    assert state(ada)["lists"] == {"news": "subscribed"}


# --- htmx: a toggle saves the form (STYLE.md habit 8) ------------------------------------------

HTMX = {"HX-Request": "true"}


def test_an_htmx_save_answers_with_the_updated_form(client, world):
    ada = world.ada
    path = manage_path(ada)
    _action, form = read_form(client.get(path).text)
    form.pop("list:news")

    response = client.post(path, data=form, headers=HTMX)
    assert response.status_code == 200
    assert "HX-Request" in response.headers["Vary"]
    assert "<html" not in response.text and 'id="preferences"' in response.text
    assert "Your changes are saved." in flashes(response)
    assert state(ada)["lists"]["news"] == "unsubscribed"
    # The fragment carries the new stamp: the next toggle is not taken for a stale form.
    _action, again = read_form(response.text)
    assert "list:news" not in again
    again["consent:tracking"] = "no"
    response = client.post(path, data=again, headers=HTMX)
    assert "Nothing was saved" not in response.text
    assert state(ada)["consents"]["tracking"] == ("revoked", 1)


def test_an_htmx_save_of_a_stale_form_answers_with_the_stale_fragment(client, world):
    path = manage_path(world.ada)
    _action, first_tab = read_form(client.get(path).text)
    post_page(client, path, clear=("list:news",))
    before = footprint(world.ada)

    response = client.post(path, data={**first_tab, "consent:tracking": "no"}, headers=HTMX)
    # htmx 2 swaps no 4xx answer: the stale answer comes with 200.
    assert response.status_code == 200
    assert "<html" not in response.text
    assert "Nothing was saved" in response.text
    assert "Withdraw consent: Engagement tracking" in response.text
    assert footprint(world.ada) == before


def test_an_htmx_save_without_a_csrf_token_answers_with_the_form_to_review(client, world):
    path = manage_path(world.ada)
    _action, form = read_form(client.get(path).text)
    before = footprint(world.ada)
    form.pop("csrf_token")
    form.pop("list:news")

    response = client.post(path, data=form, headers=HTMX)
    assert response.status_code == 200
    assert "<html" not in response.text
    assert "Please review and resubmit" in response.text
    assert "list:news" not in read_form(response.text)[1]
    assert footprint(world.ada) == before


# --- Stale forms -------------------------------------------------------------------------------


def test_a_stale_form_gets_the_stale_page_and_nothing_is_applied(client, world):
    ada = world.ada
    path = manage_path(ada)
    _action, first_tab = read_form(client.get(path).text)
    # Another tab unsubscribes from the newsletter.
    post_page(client, path, clear=("list:news",))
    before = footprint(ada)

    response = post_page(client, path, form=first_tab, choose={"consent:partners": "yes",
                                                               "consent:tracking": "no"})
    assert response.status_code == 200
    assert "Your preferences changed meanwhile" in response.text
    assert "Nothing was saved" in response.text
    for line in ("Subscribe to Newsletter", "Give consent: Share with partners",
                 "Withdraw consent: Engagement tracking"):
        assert line in response.text
    assert footprint(ada) == before


# --- Links that no longer work -----------------------------------------------------------------


def _assert_dead(client, path: str, form: dict | None) -> None:
    for method in ("GET", "HEAD"):
        response = client.open(path, method=method)
        assert response.status_code == 404, (method, path)
    assert BAD_LINK in client.get(path).text
    if form is not None:
        response = client.post(path, data=form)
        assert response.status_code == 404
        assert BAD_LINK in response.text


@pytest.mark.parametrize("how", ["erasure request", "link version bump", "erased"])
def test_erasure_or_a_link_version_bump_kills_every_old_link(client, smtp, world, how):
    ada = world.ada
    manage = manage_path(ada)
    undo, confirm = withdraw_and_ask(client, smtp, ada)
    # Tabs opened before: their forms are posted after the links died.
    _action, undo_form = read_form(client.get(undo).text)
    _action, confirm_form = read_form(client.get(confirm).text)
    _action, manage_form = read_form(client.get(manage).text)
    if how == "erasure request":
        post_page(client, manage, choose={"erasure": "on"})
        deliver()
        erasure = [m for m in mail(smtp, ada, CONFIRM_SUBJECT)
                   if "Erase my personal data" in text_of(m)]
        confirmed = press(client, link_in(erasure[0], "c")).text
        assert "Your changes are confirmed" in confirmed
        # The page and the receipt say that erasure is to come, and that old links are dead.
        assert "erase your personal data within one month" in confirmed
        assert "links to your preferences in our earlier emails no longer work" in confirmed
        deliver()
        [receipt] = mail(smtp, ada, "Your changes are confirmed")
        assert "links to your preferences in our earlier emails no longer work" in text_of(
            receipt
        )
        assert state(ada)["erasure_requested"]
    elif how == "link version bump":
        ada.link_version += 1
        db.session.commit()
    else:
        ada.erased_at = utcnow()
        db.session.commit()
    before = footprint(ada)

    _assert_dead(client, manage, {**manage_form, "list:news": "on"})
    _assert_dead(client, undo, undo_form)
    _assert_dead(client, confirm, confirm_form)
    assert footprint(ada) == before
    assert "offers" not in before["lists"]


def _flip(token: str) -> str:
    """Return the token with one character of its signature changed (not the last one, whose
    low bits are base64 padding that a decoder may ignore)."""
    changed = "Q" if token[-10] != "Q" else "A"
    return token[:-10] + changed + token[-9:]


@pytest.fixture
def links(client, smtp, world) -> dict:
    """A good manage, confirm and undo link of Ada's, and the CSRF token of her session."""
    undo, confirm = withdraw_and_ask(client, smtp, world.ada)
    _action, form = read_form(client.get(manage_path(world.ada)).text)
    return {"p": manage_path(world.ada), "c": confirm, "u": undo,
            "csrf_token": form["csrf_token"]}


def _bad(kind: str, fault: str, links: dict, ada: Contact) -> str:
    good = links[kind].split("/", 2)[2]
    if fault == "tampered":
        return f"/{kind}/{_flip(good)}"
    if fault == "wrong purpose":
        other = {"p": "c", "c": "u", "u": "p"}[kind]
        return f"/{kind}/{links[other].split('/', 2)[2]}"
    if fault == "unknown key":
        return f"/{kind}/k9.{good.split('.', 1)[1]}"
    if fault == "garbage":
        return f"/{kind}/k1.%00%ff<script>"
    # Signed properly, naming something that is not this contact's.
    purpose = {"p": "manage", "c": "confirm", "u": "undo"}[kind]
    return f"/{kind}/{make_token(purpose, ada, p='nothing', u='nothing')}"


@pytest.mark.parametrize("fault", ["tampered", "wrong purpose", "unknown key", "garbage",
                                   "names nothing"])
def test_bad_links_get_the_friendly_page_never_an_error(client, world, links, fault, caplog):
    before = footprint(world.ada)
    caplog.set_level("INFO", logger="portal.preferences")

    for kind in ("p", "c", "u"):
        if fault == "names nothing" and kind == "p":
            continue  # a manage link names only its contact
        path = _bad(kind, fault, links, world.ada)
        for method in ("GET", "HEAD", "POST"):
            data = {"csrf_token": links["csrf_token"]} if method == "POST" else None
            response = client.open(path, method=method, data=data)
            assert response.status_code == 404, (kind, method, response.text)
            if method != "HEAD":
                assert BAD_LINK in response.text
                assert "Email me a fresh link" in response.text
                assert "ada@example.com" not in response.text
        # The refusal is logged with a digest of the token, never the token itself.
        token = path.split("/", 2)[2]
        # (A garbage path is percent-decoded before it is hashed, so its digest differs here.)
        if fault != "garbage":
            assert hashlib.sha256(token.encode()).hexdigest()[:16] in caplog.text
        assert token not in caplog.text
    assert footprint(world.ada) == before


def test_an_expired_link_gets_the_friendly_page_with_410(client, world, links, monkeypatch):
    before = footprint(world.ada)
    later = time.time() + 31 * 24 * 3600
    # Only the links module's clock moves on: the CSRF token of the form stays fresh.
    monkeypatch.setattr("portal.links.time", SimpleNamespace(time=lambda: later))

    for kind in ("p", "c", "u"):
        for method in ("GET", "HEAD", "POST"):
            data = {"csrf_token": links["csrf_token"]} if method == "POST" else None
            response = client.open(links[kind], method=method, data=data)
            assert response.status_code == 410, (kind, method)
            if method != "HEAD":
                assert EXPIRED_LINK in response.text
    assert footprint(world.ada) == before


def test_a_confirm_or_undo_link_naming_another_contacts_change_is_refused(client, smtp, world):
    bob = add_contact("bob@example.com")
    lists.set_subscription(bob, world.news, True, method="test", actor="test")
    db.session.commit()
    _undo, _confirm = withdraw_and_ask(client, smtp, bob)
    bobs = footprint(bob)
    pending = db.session.scalar(sa.select(PendingChange).where(PendingChange.contact_id == bob.id))
    undo = db.session.scalar(sa.select(Undo).where(Undo.contact_id == bob.id))
    _action, form = read_form(client.get(manage_path(world.ada)).text)

    for path in (f"/c/{make_token('confirm', world.ada, p=pending.public_id)}",
                 f"/u/{make_token('undo', world.ada, u=undo.public_id)}"):
        assert client.get(path).status_code == 404
        assert client.post(path, data={"csrf_token": form["csrf_token"]}).status_code == 404
    assert footprint(bob) == bobs


# --- P3: only what the settings and rules allow ------------------------------------------------


def test_the_page_shows_the_contact_everything_the_settings_allow(client, world):
    page = client.get(manage_path(world.ada))
    assert page.status_code == 200
    for text in ("Newsletter", "Offers", "Stop all marketing email", POLICY, "Your consents",
                 "Engagement tracking", "Share with partners", "Your rights",
                 "Stop processing my data", "Erase my data",
                 "You agreed to marketing email when you spoke to us."):
        assert text in page.text
    # A staff-only list Ada is not on, and a consent whose condition she does not meet.
    assert "Key accounts" not in page.text
    assert "Keep my card number" not in page.text


@pytest.mark.parametrize("how", ["outside the audience", "page disabled"])
def test_without_the_full_page_the_contact_sees_the_email_options_only(client, smtp, world, how):
    ada = world.ada
    if how == "outside the audience":
        ada.region = "US"
    else:
        configure(page_enabled=False)
    db.session.commit()

    page = client.get(manage_path(ada))
    assert page.status_code == 200
    for text in ("Newsletter", "Offers", "Stop all marketing email"):
        assert text in page.text
    for text in (POLICY, "Your consents", "Engagement tracking", "Share with partners",
                 "Your rights", "Stop processing my data", "Erase my data"):
        assert text not in page.text

    before = footprint(ada)
    response = post_page(client, manage_path(ada),
                         extra={"consent:partners": "yes", "consent:tracking": "no",
                                "stop_processing": "on", "erasure": "on"})
    assert "Nothing changed." in flashes(client.get(response.headers["Location"]))
    assert footprint(ada) == before
    post_page(client, manage_path(ada), clear=("list:news",))
    assert state(ada)["lists"]["news"] == "unsubscribed"


def test_a_consent_is_shown_only_where_its_display_condition_holds(client, world):
    contacts.set_field_value(world.ada, world.stage, "ready to buy")
    db.session.commit()
    assert "Keep my card number" in client.get(manage_path(world.ada)).text


def test_a_default_selected_consent_is_preselected_but_not_asked_until_confirmed(
    client, smtp, world
):
    ada = world.ada
    consent.define("research", "custom", "Take part in research",
                   "We may invite you to surveys.", default_selected=True)
    db.session.commit()
    page = client.get(manage_path(ada))
    _action, form = read_form(page.text)
    assert form["consent:research"] == "yes"
    assert "consent:partners" not in form  # not asked, no default: no answer at all
    research = page.text.split("Take part in research</legend>")[1].split("</fieldset>")[0]
    assert "Not asked yet." in research

    # Saving the page as shown: the preselected answer is a grant like any other.
    post_page(client, manage_path(ada), form=form)
    assert "research" not in state(ada)["consents"]
    assert "Not asked yet." in client.get(manage_path(ada)).text.split(
        "Take part in research</legend>")[1].split("</fieldset>")[0]
    deliver()
    confirm_mail = the_mail(smtp, ada, CONFIRM_SUBJECT)
    assert "Give consent: Take part in research" in text_of(confirm_mail)
    confirm = link_in(confirm_mail, "c")
    assert "<li>Give consent: Take part in research</li>" in client.get(confirm).text
    press(client, confirm)
    assert state(ada)["consents"]["research"] == ("granted", 1)


def test_fields_the_contact_may_not_change_are_ignored_and_never_touch_another_contact(
    client, smtp, world
):
    ada = world.ada
    bob = add_contact("bob@example.com")
    lists.set_subscription(bob, world.news, True, method="test", actor="test")
    db.session.commit()
    adas, bobs = footprint(ada), footprint(bob)

    response = post_page(client, manage_path(ada), extra={
        "list:vip": "on",  # staff-only, and Ada is not on it
        "consent:no-such-consent": "yes",
        "consent:card": "yes",  # its condition does not hold for Ada
        "contact_id": str(bob.id), "contact": bob.public_id, "email": "bob@example.com",
        "opt_in_status": "double", "status": "single_user",
    })
    assert "Nothing changed." in flashes(client.get(response.headers["Location"]))
    assert footprint(ada) == adas
    assert footprint(bob) == bobs
    deliver()
    assert smtp.to("bob@example.com") == []


# --- Mail --------------------------------------------------------------------------------------


def test_mail_goes_to_the_address_on_file_never_one_typed_in_the_request(client, smtp, world):
    withdraw_and_ask_extra = {"email": "mallory@example.net", "recipient": "mallory@example.net",
                              "to": "mallory@example.net"}
    post_page(client, manage_path(world.ada), clear=("list:news",),
              choose={"list:offers": "on"}, extra=withdraw_and_ask_extra)
    deliver()
    mine = smtp.to("ada@example.com")
    assert {m.message["Subject"] for m in mine} == {NOTICE_SUBJECT, CONFIRM_SUBJECT}
    for received in mine:
        assert received.rcpt_tos == ["ada@example.com"]
        assert received.message["To"] == "ada@example.com"
    assert smtp.to("mallory@example.net") == []


def test_mail_speaks_the_contacts_language_as_a_whole_document_titled_with_its_subject(
    client, smtp, world
):
    lena = add_contact("lena@example.com", language="de")
    lists.set_subscription(lena, world.news, True, method="test", actor="test")
    db.session.commit()

    # Her browser prefers English; her record says German.
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    post_page(client, manage_path(lena), clear=("list:news",), choose={"list:offers": "on"})
    deliver()
    (confirm,) = [m.message for m in smtp.to("lena@example.com") if "/c/" in text_of(m.message)]
    press(client, link_in(confirm, "c"))
    deliver()
    received = [m.message for m in smtp.to("lena@example.com")]
    assert len(received) == 3  # the notice, the confirmation and the receipt
    for message in received:
        assert text_of(message).startswith("Guten Tag,")
        subject = message["Subject"]
        assert subject not in (NOTICE_SUBJECT, CONFIRM_SUBJECT)  # in German, as the mail is
        document = read_document(html_of(message))
        # Mail clients and screen readers name the mail by its title, and read it in its
        # language (WCAG 2.4.2, 3.1.1); the text part's readers have its Content-Language.
        assert document.lang == "de"
        assert document.title == subject
        assert message["Content-Language"] == "de"


def test_the_confirmation_lists_every_grant_and_the_receipt_what_changed(client, smtp, world):
    ada = world.ada
    post_page(client, manage_path(ada), choose={"list:offers": "on", "consent:partners": "yes",
                                                 "stop_processing": "on", "erasure": "on"})
    deliver()
    grants = ["Subscribe to Offers", "Give consent: Share with partners",
              "Stop all processing of my data", "Erase my personal data"]
    confirm_mail = the_mail(smtp, ada, CONFIRM_SUBJECT)
    confirm = link_in(confirm_mail, "c")
    page = client.get(confirm)
    assert page.status_code == 200
    for line in grants:
        assert f"- {line}" in text_of(confirm_mail)
        assert f"<li>{line}</li>" in html_of(confirm_mail)
        assert f"<li>{line}</li>" in page.text
    assert page.text.count("<li>") == len(grants)

    press(client, confirm)
    deliver()
    receipt = the_mail(smtp, ada, RECEIPT_SUBJECT)
    for line in grants:
        assert f"- {line}" in text_of(receipt)


# --- Proof -------------------------------------------------------------------------------------


def test_a_full_flow_leaves_proof_that_verifies(client, smtp, world):
    ada = world.ada
    post_page(client, manage_path(ada), choose={"consent:partners": "yes",
                                                 "consent:tracking": "no"})
    deliver()
    # The settings move on before Ada confirms: the event names the version she was shown.
    configure(policy_html="<p>A newer statement.</p>")
    db.session.commit()
    press(client, link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c"))
    press(client, link_in(the_mail(smtp, ada, NOTICE_SUBJECT), "u"))

    events = [e for e in ledger.history(ada.public_id) if e.method != "test"]
    summary = [(e.subject_ref, e.action, e.method) for e in events]
    assert summary == [("tracking", "revoked", "page"), ("partners", "granted", "page+email"),
                       ("tracking", "granted", "undo+email")]
    for event in events:
        definition = world.tracking if event.subject_ref == "tracking" else world.partners
        assert event.actor == "contact"
        assert event.text_version == definition.current_version.number
        assert event.text_sha256 == definition.current_version.text_sha256
        assert event.language == "en"
        assert event.evidence_digest
        evidence = db.session.get(LedgerEvidence, event.id)
        assert (evidence.ip_address, evidence.user_agent) == (
            "198.51.100.4", "Mozilla/5.0 (Ada's browser)")
    assert events[0].rule_version == events[1].rule_version == world.rule_version
    assert events[1].evidence_ref.startswith("pending:")
    assert events[2].evidence_ref.startswith("undo:")
    report = ledger.verify()
    assert report.ok, report.problem


# --- Headers and CSRF --------------------------------------------------------------------------


def test_token_pages_send_no_store_noindex_and_same_origin(client, smtp, world):
    undo, confirm = withdraw_and_ask(client, smtp, world.ada)
    responses = [client.get(manage_path(world.ada)), client.get(confirm), client.get(undo),
                 post_page(client, manage_path(world.ada), clear=("list:offers",)),
                 press(client, confirm), press(client, undo), client.get("/p/k1.nonsense"),
                 client.post(manage_path(world.ada), data={})]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store", response.request.path
        assert response.headers["X-Robots-Tag"] == "noindex"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def _spoil(form: dict, csrf: str | None) -> dict:
    spoiled = {name: value for name, value in form.items() if name != "csrf_token"}
    if csrf is not None:
        spoiled["csrf_token"] = csrf
    return spoiled


@pytest.mark.parametrize("csrf", [None, "forged"])
def test_a_page_post_without_a_good_csrf_token_asks_to_review_and_keeps_the_choices(
    client, world, csrf
):
    ada = world.ada
    path = manage_path(ada)
    _action, form = read_form(client.get(path).text)
    before = footprint(ada)

    form["list:offers"] = "on"
    form.pop("list:news")
    response = client.post(path, data=_spoil(form, csrf))
    assert response.status_code in (200, 400)
    assert "Please review and resubmit" in response.text
    assert footprint(ada) == before
    # The page comes back with the contact's choices still set, ready to send again.
    _action, again = read_form(response.text)
    assert again.get("list:offers") == "on" and "list:news" not in again
    assert again["csrf_token"]
    assert client.post(path, data=again).status_code == 303
    assert state(ada)["lists"]["news"] == "unsubscribed"


@pytest.mark.parametrize("csrf", [None, "forged"])
def test_a_confirm_or_undo_post_without_a_good_csrf_token_asks_to_review(
    client, smtp, world, csrf
):
    undo, confirm = withdraw_and_ask(client, smtp, world.ada)
    before = footprint(world.ada)

    for path in (confirm, undo):
        _action, form = read_form(client.get(path).text)
        response = client.post(path, data=_spoil(form, csrf))
        assert response.status_code == 400, path
        assert "Please review and resubmit" in response.text
    assert footprint(world.ada) == before
    # The same pages still work once the form is sent properly.
    assert "Your changes are confirmed" in press(client, confirm).text


def test_a_first_visit_from_an_email_sets_no_cookie_and_its_form_still_saves(app, world):
    # A browser that keeps no cookie at all: the link is the only credential a page needs.
    browser = app.test_client(use_cookies=False)
    path = manage_path(world.ada)
    page = browser.get(path)
    assert page.status_code == 200
    assert "Set-Cookie" not in page.headers

    _action, form = read_form(page.text)
    form.pop("list:news")
    response = browser.post(path, data=form)
    assert response.status_code == 303
    assert state(world.ada)["lists"]["news"] == "unsubscribed"


def test_a_page_opens_no_session_unless_its_request_brings_one_with_a_message(client, world):
    path = manage_path(world.ada)
    page = client.get(path)
    # Nothing in the answer depends on a cookie, so it does not vary on one.
    assert "Cookie" not in page.headers.get("Vary", "")
    _action, form = read_form(page.text)
    form.pop("list:news")
    saved = client.post(path, data=form)
    assert saved.status_code == 303 and saved.headers.getlist("Set-Cookie")  # the message
    after = client.get(path)
    assert "Your changes are saved." in flashes(after)
    assert "Cookie" in after.headers["Vary"]
    assert "Your changes are saved." not in flashes(client.get(path))  # shown once


def test_a_form_token_from_another_contacts_page_asks_to_review(client, world):
    bob = add_contact("bob@example.com", first_name="Bob", language="en")
    db.session.commit()
    _action, bobs_form = read_form(client.get(manage_path(bob)).text)
    path = manage_path(world.ada)
    _action, form = read_form(client.get(path).text)
    before = footprint(world.ada)

    form.pop("list:news")
    response = client.post(path, data={**form, "csrf_token": bobs_form["csrf_token"]})
    assert "Please review and resubmit" in response.text
    assert footprint(world.ada) == before


def test_an_hour_old_form_asks_to_review_and_keeps_the_choices(client, world, monkeypatch):
    path = manage_path(world.ada)
    _action, form = read_form(client.get(path).text)
    before = footprint(world.ada)
    later = time.time() + 3601
    monkeypatch.setattr("portal.links.time", SimpleNamespace(time=lambda: later))

    form.pop("list:news")
    response = client.post(path, data=form)
    assert "Please review and resubmit" in response.text
    assert footprint(world.ada) == before
    _action, again = read_form(response.text)
    assert "list:news" not in again
    assert client.post(path, data=again).status_code == 303


@pytest.mark.parametrize("keep_old_key", [True, False])
def test_rotating_the_secret_key_keeps_open_forms_only_while_the_old_key_is_a_fallback(
    app, client, world, keep_old_key, monkeypatch
):
    path = manage_path(world.ada)
    _action, form = read_form(client.get(path).text)
    form.pop("list:news")
    old_key = app.config["SECRET_KEY"]
    monkeypatch.setitem(app.config, "SECRET_KEY", "a-new-secret-key-for-the-test")
    monkeypatch.setitem(app.config, "SECRET_KEY_FALLBACKS", [old_key] if keep_old_key else [])

    response = client.post(path, data=form)
    if keep_old_key:
        assert response.status_code == 303
        assert state(world.ada)["lists"]["news"] == "unsubscribed"
    else:
        assert "Please review and resubmit" in response.text
        assert state(world.ada)["lists"]["news"] == "subscribed"


def press_together(app, path: str, browsers, forms) -> list[str]:
    """Post each browser's form to path at the same moment, each browser in its own app
    context and session; return the pages, once every answer was a 200."""
    barrier = threading.Barrier(len(browsers))
    pages: list[str] = []
    errors: list[BaseException] = []

    def press(browser, form) -> None:
        try:
            with app.app_context():
                barrier.wait(timeout=10)
                response = browser.post(path, data=form)
            assert response.status_code == 200
            pages.append(response.text)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=press, args=pair)
               for pair in zip(browsers, forms, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return pages


# --- Two confirmations at once (PostgreSQL) ----------------------------------------------------


def test_two_simultaneous_confirmations_give_one_event_and_one_receipt(base_app, smtp):
    # Commits for real (no rollback fixture): two browsers press the button at the same moment.
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers; the race is PostgreSQL's")
        suffix = secrets.token_hex(4)
        slug = f"race-{suffix}"
        lists.create_list(slug, f"Race {suffix}")
        contact = add_contact(f"race-{suffix}@example.com")
        db.session.commit()
        contact_id, address, public_ref = contact.id, contact.email, contact.public_id
        path = manage_path(contact)

    browsers = []
    for _ in range(2):
        browser = base_app.test_client()
        browser.environ_base["HTTP_REFERER"] = "https://localhost/"
        browsers.append(browser)
    try:
        with base_app.app_context():
            response = post_page(browsers[0], path, choose={f"list:{slug}": "on"})
            assert response.status_code == 303
            deliver()
            (message,) = [m.message for m in smtp.to(address)]
            confirm = link_in(message, "c")
            forms = [read_form(browser.get(confirm).text)[1] for browser in browsers]
        pages = press_together(base_app, confirm, browsers, forms)
        assert sorted("Already confirmed" in page for page in pages) == [False, True]

        with base_app.app_context():
            joined = [e for e in ledger.history(public_ref) if e.subject_type == "subscription"]
            assert [(e.subject_ref, e.value_to) for e in joined] == [(slug, "subscribed")]
            deliver()
            receipts = [m for m in smtp.to(address) if m.message["Subject"] == RECEIPT_SUBJECT]
            assert len(receipts) == 1
            report = ledger.verify()
            assert report.ok, report.problem
    finally:
        with base_app.app_context():
            db.session.rollback()
            for model in (OutboxMessage, PendingChange, Undo, lists.Subscription):
                db.session.execute(sa.delete(model).where(model.contact_id == contact_id))
            db.session.execute(sa.delete(Contact).where(Contact.id == contact_id))
            db.session.execute(sa.delete(lists.MailingList).where(lists.MailingList.slug == slug))
            db.session.commit()
