"""One-click unsubscribe (M7, N5, SECURITY.md 2): the token, the headers, the POST and the GET."""

import base64
import re
import time
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from conftest import make_config
from flask import request_finished

from portal import ConfigError
from portal import contacts
from portal import create_app
from portal import keys
from portal import ledger
from portal import lists
from portal import outbox
from portal import unsubscribe
from portal.db import db
from portal.links import make_token as make_link_token

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def reader(app):
    """A subscribed contact on two lists, committed."""
    contact = contacts.add_contact("reader@example.com", method="cli", actor="t")
    news = lists.create_list("news", "News")
    offers = lists.create_list("offers", "Offers")
    for mailing_list in (news, offers):
        lists.set_subscription(contact, mailing_list, True, method="cli", actor="t")
    db.session.commit()
    return contact, news, offers


@pytest.fixture
def mail_client(app):
    """A mail client's one-click POST: no cookie jar, no Referer, no CSRF token."""
    return app.test_client(use_cookies=False)


def status(contact, mailing_list) -> str:
    subscription = db.session.get(lists.Subscription, (contact.id, mailing_list.id))
    db.session.refresh(subscription)
    return subscription.status


def one_click_events(contact) -> list:
    return [event for event in ledger.history(contact.public_id) if event.method == "one_click"]


def path_of(url: str) -> str:
    return urlsplit(url).path


@pytest.mark.parametrize("as_multipart", [False, True], ids=["urlencoded", "multipart"])
def test_the_one_click_post_leaves_that_list_only_and_answers_200_without_a_cookie(
    app, reader, mail_client, as_multipart
):
    contact, news, offers = reader
    url = unsubscribe.one_click_url(contact, news)
    form = dict(ONE_CLICK)
    if as_multipart:
        response = mail_client.post(path_of(url), data=form, content_type="multipart/form-data")
    else:
        response = mail_client.post(path_of(url), data=form)
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert response.headers.getlist("Set-Cookie") == []
    assert "You are unsubscribed" in response.text
    assert status(contact, news) == "unsubscribed"
    assert status(contact, offers) == "subscribed"
    [event] = one_click_events(contact)
    assert (event.subject_ref, event.value_to, event.actor) == ("news", "unsubscribed", "contact")


def test_repeating_the_post_is_harmless(app, reader, mail_client):
    contact, news, _offers = reader
    path = path_of(unsubscribe.one_click_url(contact, news))
    answers = [mail_client.post(path, data=ONE_CLICK) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert len(one_click_events(contact)) == 1
    assert status(contact, news) == "unsubscribed"


def test_the_post_has_committed_before_the_answer_is_sent(app, reader, mail_client):
    contact, news, _offers = reader
    seen = []

    def on_commit(session):
        seen.append("commit")

    def on_answer(sender, response, **extra):
        # Nothing may be left to write when the answer goes out.
        pending = bool(db.session.new or db.session.dirty or db.session.deleted)
        seen.append(f"answer (pending writes: {pending})")

    sa.event.listen(sa.orm.Session, "after_commit", on_commit)
    request_finished.connect(on_answer, app)
    try:
        mail_client.post(path_of(unsubscribe.one_click_url(contact, news)), data=ONE_CLICK)
    finally:
        request_finished.disconnect(on_answer, app)
        sa.event.remove(sa.orm.Session, "after_commit", on_commit)
    assert seen == ["commit", "answer (pending writes: False)"]


def test_get_and_head_change_nothing_and_land_on_the_page_with_the_list_highlighted(
    app, reader, client
):
    contact, news, _offers = reader
    path = path_of(unsubscribe.visible_url(contact, news))
    before = len(ledger.history(contact.public_id))
    head = client.head(path)
    opened = client.get(path)
    assert head.status_code == opened.status_code == 303
    assert status(contact, news) == "subscribed"
    assert len(ledger.history(contact.public_id)) == before
    landing = opened.headers["Location"]
    assert re.fullmatch(r"/p/[^?]+\?list=news", landing)
    page = client.get(landing)
    assert page.status_code == 200
    assert "Unsubscribe from News?" in page.text
    assert 'class="choice highlighted"' in page.text
    assert status(contact, news) == "subscribed"  # still: only the page's button acts


def test_the_landing_page_button_leaves_the_list(app, reader):
    contact, news, offers = reader
    browser = app.test_client()
    browser.environ_base["HTTP_REFERER"] = "https://localhost/"
    page = browser.get(path_of(unsubscribe.visible_url(contact, news)), follow_redirects=True)
    action = re.search(r'action="(/p/[^"]+/leave/news)"', page.text).group(1)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert browser.post(action, data={"csrf_token": token}).status_code == 303
    assert status(contact, news) == "unsubscribed"
    assert status(contact, offers) == "subscribed"


def _leave_page_checks(page, list_name: str) -> str:
    """Check a leave page shows one button for that list and nothing else; return its action."""
    assert page.status_code == 200
    assert f"Unsubscribe from {list_name}?" in page.text
    assert "/p/" not in page.text  # no way into the whole page
    assert "reader@example.com" not in page.text
    [action] = re.findall(r'<form method="post" action="(/o/[^"]+)"', page.text)
    return action


def test_the_headers_link_opened_in_a_browser_only_offers_to_leave_that_list(
    app, reader, client
):
    contact, news, offers = reader
    path = path_of(unsubscribe.one_click_url(contact, news))
    before = len(ledger.history(contact.public_id))
    assert client.head(path).status_code == 200
    page = client.get(path)
    action = _leave_page_checks(page, "News")
    assert page.headers["Cache-Control"] == "no-store"
    assert status(contact, news) == "subscribed"
    assert len(ledger.history(contact.public_id)) == before
    left = client.post(action, data=ONE_CLICK)
    assert left.status_code == 200
    assert "You are unsubscribed" in left.text
    assert status(contact, news) == "unsubscribed"
    assert status(contact, offers) == "subscribed"
    again = client.get(path)
    assert "You are not on News" in again.text
    assert "<form" not in again.text


def test_a_body_link_whose_links_were_revoked_no_longer_opens_the_page(app, reader, client):
    """R2: a link-version bump kills every page link, the body's unsubscribe link included."""
    contact, news, _offers = reader
    path = path_of(unsubscribe.visible_url(contact, news))
    assert client.get(path).status_code == 303
    contact.link_version += 1
    db.session.commit()
    action = _leave_page_checks(client.get(path), "News")
    # Leaving still works: unsubscribing must keep working for years (M7).
    assert client.post(action, data=ONE_CLICK).status_code == 200
    assert status(contact, news) == "unsubscribed"


def test_a_body_link_older_than_a_page_link_only_offers_to_leave(
    app, reader, client, monkeypatch
):
    contact, news, _offers = reader
    path = path_of(unsubscribe.visible_url(contact, news))
    max_age = app.config["PORTAL_LINK_MAX_AGE"]["manage"]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + max_age - 60)
    assert client.get(path).status_code == 303
    monkeypatch.setattr(time, "time", lambda: real_time() + max_age + 60)
    _leave_page_checks(client.get(path), "News")
    assert status(contact, news) == "subscribed"


def test_a_body_link_of_an_erased_contact_is_a_bad_link(app, reader, client):
    contact, news, _offers = reader
    path = path_of(unsubscribe.visible_url(contact, news))
    contact.erased_at = contact.created_at
    db.session.commit()
    answer = client.get(path)
    assert answer.status_code == 404
    assert "This link is not valid" in answer.text


def test_a_body_link_does_not_unsubscribe_by_post_and_a_tampered_one_is_refused(
    app, reader, mail_client
):
    """Only the header's token answers the one-click POST; a body token is for opening."""
    contact, news, _offers = reader
    token = path_of(unsubscribe.visible_url(contact, news)).removeprefix("/o/")
    assert mail_client.post(f"/o/{token}", data=ONE_CLICK).status_code == 404
    for bad in (token[:-3] + "abc", token.replace(".", ".x", 1)):
        assert mail_client.get(f"/o/{bad}").status_code == 404
    assert status(contact, news) == "subscribed"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda token: token[:-3] + "abc",  # a bad signature
        lambda token: "k1.e30.bad",  # a payload that does not decode
        lambda token: "nokey." + token.partition(".")[2],  # a key id that is not configured
        lambda token: "k1.",
    ],
    ids=["signature", "payload", "key-id", "no-signature"],
)
def test_a_tampered_token_gets_the_bad_link_page_and_changes_nothing(
    app, reader, mail_client, mangle
):
    contact, news, _offers = reader
    token = mangle(unsubscribe.make_token(contact, news))
    for answer in (mail_client.post(f"/o/{token}", data=ONE_CLICK), mail_client.get(f"/o/{token}")):
        assert answer.status_code == 404
        assert "This link is not valid" in answer.text
    assert status(contact, news) == "subscribed"


def test_other_purposes_tokens_do_not_unsubscribe(app, reader, mail_client):
    contact, news, _offers = reader
    manage = make_link_token("manage", contact)
    assert mail_client.post(f"/o/{manage}", data=ONE_CLICK).status_code == 404
    assert status(contact, news) == "subscribed"


def test_the_link_of_an_erased_contact_is_a_bad_link(app, reader, mail_client):
    contact, news, offers = reader
    path = path_of(unsubscribe.one_click_url(contact, news))
    contact.erased_at = contact.created_at
    db.session.commit()
    assert mail_client.post(path, data=ONE_CLICK).status_code == 404


def test_the_token_names_only_opaque_ids_and_never_expires(app, reader, mail_client, monkeypatch):
    contact, news, _offers = reader
    token = unsubscribe.make_token(contact, news)
    assert "reader" not in token
    # Years later, after every page link was revoked and the link keys rotated.
    contact.link_version += 1
    db.session.commit()
    monkeypatch.setitem(
        app.extensions["portal_keys"], "link", keys.parse_keyset("link", keys.new_keyset("k9"))
    )
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 5 * 365 * 86400)
    assert mail_client.post(f"/o/{token}", data=ONE_CLICK).status_code == 200
    assert status(contact, news) == "unsubscribed"


def test_rotating_the_unsubscribe_key_keeps_old_links_working_both_ways(
    app, reader, mail_client, monkeypatch
):
    contact, news, offers = reader
    old = app.extensions["portal_keys"]["unsubscribe"]
    old_token = unsubscribe.make_token(contact, news)
    old_key = base64.urlsafe_b64encode(old.active_key).decode()
    both = {"active": "k2", "keys": {"k2": keys.new_key(), old.active_id: old_key}}
    monkeypatch.setitem(
        app.extensions["portal_keys"], "unsubscribe", keys.parse_keyset("unsubscribe", both)
    )
    new_token = unsubscribe.make_token(contact, offers)
    assert new_token.startswith("k2.")
    assert mail_client.post(f"/o/{old_token}", data=ONE_CLICK).status_code == 200
    # And back: k1 active again, k2 still known.
    monkeypatch.setitem(
        app.extensions["portal_keys"],
        "unsubscribe",
        keys.parse_keyset("unsubscribe", {**both, "active": old.active_id}),
    )
    assert mail_client.post(f"/o/{new_token}", data=ONE_CLICK).status_code == 200
    assert status(contact, news) == status(contact, offers) == "unsubscribed"


def test_the_headers_parse_and_use_the_base_url_even_under_a_forged_host(
    app, reader, smtp, mail_client
):
    contact, news, _offers = reader
    contacts.record_opt_in(contact, contacts.OptIn.DOUBLE, method="cli", actor="t")
    with app.test_request_context("/", base_url="https://attacker.example"):
        headers = unsubscribe.headers(contact, news)
        outbox.enqueue(
            category="campaign",
            contact=contact,
            recipient=contact.email,
            list_id=news.id,
            subject="News of the month",
            text_body="Hello.",
            headers=headers,
        )
    db.session.commit()
    outbox.work(once=True)
    [received] = smtp.to("reader@example.com")
    message = received.message
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    targets = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert len(targets) == 1  # no inbound address is configured: no mailto
    parts = urlsplit(targets[0])
    assert (parts.scheme, parts.netloc) == ("https", "prefs.example.test")
    assert "attacker" not in str(message)
    answer = mail_client.post(parts.path, data=ONE_CLICK, content_type="multipart/form-data")
    assert answer.status_code == 200
    assert status(contact, news) == "unsubscribed"


def test_a_mailto_is_offered_only_where_an_inbound_address_is_configured(app, reader, monkeypatch):
    contact, news, _offers = reader
    assert "mailto:" not in unsubscribe.headers(contact, news)["List-Unsubscribe"]
    monkeypatch.setitem(app.config, "PORTAL_UNSUBSCRIBE_MAILTO", "leave@example.com")
    value = unsubscribe.headers(contact, news)["List-Unsubscribe"]
    https, mailto = re.findall(r"<([^>]+)>", value)
    assert https.startswith("https://prefs.example.test/o/")
    assert mailto.startswith("mailto:leave@example.com?subject=unsubscribe%20")


def test_a_repeated_post_does_not_cancel_a_newer_ask_to_join_again(app, reader, mail_client):
    from portal import changes
    from portal.choices import page_for

    contact, news, _offers = reader
    path = path_of(unsubscribe.one_click_url(contact, news))
    assert mail_client.post(path, data=ONE_CLICK).status_code == 200
    page = page_for(contact)
    wanted = {**page.current(), ("list", "news"): True}  # the contact asks to join again
    changes.submit(contact, wanted, versions={}, stamp=page.stamp(), language="en")
    db.session.commit()
    [pending] = db.session.scalars(
        sa.select(changes.PendingChange).where(changes.PendingChange.contact_id == contact.id)
    )
    assert mail_client.post(path, data=ONE_CLICK).status_code == 200  # the mail client retries
    db.session.refresh(pending)
    assert pending.status == "pending"


@pytest.mark.parametrize(
    "address", ["not an address", "a@b.c?subject=x", "x@example.com\r\nBcc: y"]
)
def test_a_malformed_inbound_address_stops_the_start_with_a_clear_message(tmp_path, address):
    config = make_config(f"sqlite:///{tmp_path}/x.sqlite3", PORTAL_UNSUBSCRIBE_MAILTO=address)
    with pytest.raises(ConfigError, match="FLASK_PORTAL_UNSUBSCRIBE_MAILTO"):
        create_app(config, instance_path=str(tmp_path))
