"""Bad input on the contact's links and the staff forms that read numbers: a clear answer, never
a 500, and refused links logged by a digest of their token only (issue 4, "Bad input").

A number a request spells is read in ASCII digits and within the database's integer:
``str.isdigit()`` also accepts "²", which ``int()`` refuses, and a longer number fails on insert.
"""

import hashlib
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token
from test_backoffice_settings import settings_data
from test_changes import add_contact
from test_changes import configure
from test_preferences import deliver
from test_preferences import footprint
from test_preferences import link_in
from test_preferences import manage_path
from test_preferences import press
from test_preferences import read_form
from test_preferences import state
from test_preferences import the_mail

from portal import consent
from portal import doi
from portal import lists
from portal import outbox
from portal import settings
from portal.changes import PendingChange
from portal.changes import Undo
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import db
from portal.links import make_token

BAD_LINK = "This link is not valid"
EXPIRED_LINK = "This link has expired"
REVIEW = "Please review and resubmit"
CONFIRM_SUBJECT = "Please confirm your choices"
NOTICE_SUBJECT = "Your choices were saved"
#: Form tokens that are no numbers int() reads, or numbers far too long for a timestamp.
BAD_FORM_TOKENS = ["².x", "١٢٣.x", "9" * 5000 + ".x", "9" * 30 + ".x", "12.é", "1.²"]
#: Version numbers a form may carry that are no version: not ASCII digits, or past the
#: database's integer (2**31 - 1).
BAD_NUMBERS = ["²", "١٢", "-1", "1.0", "2147483648", "9" * 30, "9" * 5000]


@pytest.fixture
def client(app):
    """A browser on HTTPS: Flask-WTF checks the Referer there (SECURITY.md 8)."""
    browser = app.test_client()
    browser.environ_base["HTTP_REFERER"] = "https://localhost/"
    return browser


@pytest.fixture
def world(app) -> SimpleNamespace:
    """A page open to everyone: two lists, a consent not yet given, one contact on one list."""
    rules = configure(policy_html="<p>We use your data only as you allow.</p>")
    news = lists.create_list("news", "Newsletter")
    lists.create_list("offers", "Offers")
    partners = consent.define("partners", "custom", "Share with partners",
                              "We may share your details with our partners.")
    ada = add_contact("ada@example.com", first_name="Ada", language="en",
                      opt_in=OptIn.SINGLE_USER)
    lists.set_subscription(ada, news, True, method="test", actor="test")
    db.session.commit()
    return SimpleNamespace(ada=ada, news=news, partners=partners, rule_version=rules.version)


def links_of(client, smtp, contact) -> dict[str, str]:
    """Leave the newsletter, ask to join Offers and for double opt-in; return a path of each
    kind of link that posts a form: the page, leaving a list, confirm, undo, double opt-in."""
    page = manage_path(contact)
    _action, form = read_form(client.get(page).text)
    form.pop("list:news")
    form["list:offers"] = "on"
    assert client.post(page, data=form).status_code == 303
    request_ = doi.send_request(contact, source="staff", actor="test").request
    db.session.commit()
    deliver()
    return {
        "page": page,
        "leave": f"{page}/leave/offers",
        "confirm": link_in(the_mail(smtp, contact, CONFIRM_SUBJECT), "c"),
        "undo": link_in(the_mail(smtp, contact, NOTICE_SUBJECT), "u"),
        "double opt-in": f"/d/{make_token('doi', contact, d=request_.public_id)}",
    }


def everything_of(contact) -> dict:
    return {**footprint(contact), "doi": sorted(
        r.status for r in db.session.scalars(
            sa.select(doi.DoiRequest).where(doi.DoiRequest.contact_id == contact.id)))}


# --- Form tokens on link pages -----------------------------------------------------------------


def test_an_unreadable_form_token_asks_to_review_on_every_link_form(client, smtp, world):
    ada = world.ada
    paths = links_of(client, smtp, ada)
    forms = {kind: read_form(client.get(path if kind != "leave" else paths["page"]).text)[1]
             for kind, path in paths.items()}
    before = everything_of(ada)

    for kind, path in paths.items():
        for token in BAD_FORM_TOKENS:
            response = client.post(path, data={**forms[kind], "csrf_token": token})
            if kind == "page":
                # The page itself comes back with the contact's choices still set.
                assert response.status_code == 200, (kind, token[:8])
            else:
                assert response.status_code == 400, (kind, token[:8])
            assert REVIEW in response.text
    assert everything_of(ada) == before

    # The same forms, sent properly, still work.
    assert "Your changes are confirmed" in press(client, paths["confirm"]).text
    assert state(ada)["lists"]["offers"] == "subscribed"


# --- Version numbers on the page's form --------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_an_unreadable_version_on_the_page_is_taken_as_the_current_one(client, smtp, world, bad):
    ada = world.ada
    page = manage_path(ada)
    _action, form = read_form(client.get(page).text)
    assert form["rule_version"] == str(world.rule_version)

    form.update({"consent:partners": "yes", "version:partners": bad, "rule_version": bad})
    response = client.post(page, data=form)
    assert response.status_code == 303
    assert "Check your inbox" in client.get(response.headers["Location"]).text
    pending = db.session.scalar(sa.select(PendingChange)
                                .where(PendingChange.contact_id == ada.id))
    # Unknown is read as missing: the versions this page shows now.
    assert pending.rule_version == world.rule_version
    assert [item["version"] for item in pending.items] == [world.partners.current_version.number]

    deliver()
    press(client, link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c"))
    assert state(ada)["consents"]["partners"] == ("granted", world.partners.current_version.number)


# --- Refused links are logged by a digest --------------------------------------------------------


def bobs_id(model, contact) -> str:
    return db.session.scalar(sa.select(model.public_id).where(model.contact_id == contact.id))


def _digest(path: str) -> str:
    return hashlib.sha256(path.split("/", 2)[2].encode()).hexdigest()[:16]


def test_a_signed_link_naming_nothing_of_its_contact_is_logged_by_a_digest(
    client, smtp, world, caplog
):
    caplog.set_level("INFO", logger="portal.preferences")
    bob = add_contact("bob@example.com", language="en", opt_in=OptIn.SINGLE_USER)
    lists.set_subscription(bob, world.news, True, method="test", actor="test")
    db.session.commit()
    links_of(client, smtp, bob)
    _action, form = read_form(client.get(manage_path(world.ada)).text)
    ids = {
        # The link's path segment: its purpose, the payload key and Bob's record of that kind.
        "c": ("confirm", "p", bobs_id(PendingChange, bob)),
        "u": ("undo", "u", bobs_id(Undo, bob)),
        "d": ("doi", "d", bobs_id(doi.DoiRequest, bob)),
    }
    before = everything_of(bob)

    for kind, (purpose, key, theirs) in ids.items():
        # Signed for Ada, naming Bob's record, or a record that does not exist.
        for named in (theirs, "nothing"):
            path = f"/{kind}/{make_token(purpose, world.ada, **{key: named})}"
            caplog.clear()
            for method in ("GET", "POST"):
                response = client.open(path, method=method, data=form)
                assert response.status_code == 404, (path, method)
                assert BAD_LINK in response.text
                assert "bob@example.com" not in response.text
            assert caplog.text.count(_digest(path)) == 2, (kind, named)
            assert path.split("/", 2)[2] not in caplog.text
    assert everything_of(bob) == before


def test_an_expired_double_opt_in_request_is_logged_by_a_digest(client, world, caplog):
    caplog.set_level("INFO", logger="portal.preferences")
    request_ = doi.send_request(world.ada, source="staff", actor="test").request
    request_.status = "expired"
    db.session.commit()
    path = f"/d/{make_token('doi', world.ada, d=request_.public_id)}"
    _action, form = read_form(client.get(manage_path(world.ada)).text)

    for method in ("GET", "POST"):
        response = client.open(path, method=method, data=form)
        assert response.status_code == 410
        assert EXPIRED_LINK in response.text
    assert caplog.text.count(_digest(path)) == 2
    assert path.split("/", 2)[2] not in caplog.text
    assert world.ada.opt_in_status == OptIn.SINGLE_USER


# --- Staff forms that name a row by number -----------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_double_opt_in_to_a_list_that_is_no_number_asks_to_choose_one(agent_client, app, bad):
    lists.create_list("news", "News")
    db.session.commit()
    page = agent_client.get("/staff/double-opt-in")
    response = agent_client.post(
        "/staff/double-opt-in", data={"csrf_token": csrf_token(page.text), "list_id": bad}
    )
    assert response.status_code == 200
    assert "Choose one of the lists." in response.text


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_a_record_edit_whose_version_is_no_number_is_shown_as_changed_meanwhile(
    agent_client, app, bad
):
    cy = add_contact("cy@example.com", first_name="Cyrus")
    db.session.commit()
    page = agent_client.get(f"/staff/contacts/{cy.public_id}/edit")
    data = {"csrf_token": csrf_token(page.text), "version": bad, "first_name": "Cy"}
    response = agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=data)
    assert response.status_code == 200
    assert "Someone changed this record after you opened the form." in response.text
    db.session.expire_all()
    assert cy.first_name == "Cyrus"


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "9" * 400])
@pytest.mark.parametrize("form", ["settings", "consent", "list"])
def test_a_settings_form_whose_edit_number_is_no_number_is_stale_and_saves_nothing(
    admin_client, app, form, bad
):
    # A number past a float's range used to overflow in WTForms' NumberRange: a 500 (found
    # by tests/test_fuzz_staff_forms.py).
    news = lists.create_list("news", "News")
    partners = consent.define("partners", "custom", "Share with partners", "We share.")
    db.session.commit()
    path, data = {
        "settings": ("/staff/settings", settings_data(None, policy_html="<p>New</p>")),
        "consent": (f"/staff/settings/consents/{partners.id}",
                    {"title": "New title", "text": "We share.", "condition-combine": "all"}),
        "list": (f"/staff/settings/lists/{news.id}", {"name": "New name"}),
    }[form]
    page = admin_client.get(path)
    response = admin_client.post(path, data={**data, "csrf_token": csrf_token(page.text),
                                             "based_on": bad})
    assert response.status_code == 200
    assert "This form is incomplete. Reload the page and make your changes again." in (
        response.text)
    db.session.expire_all()
    assert settings.values()["policy_html"] != "<p>New</p>"
    assert partners.current_version.title == "Share with partners"
    assert news.name == "News"


@pytest.mark.parametrize("path", [
    "/staff/jobs/{}", "/staff/mailbox/{}", "/staff/mailbox/{}/html", "/staff/campaigns/{}",
    "/staff/campaigns/{}/edit", "/staff/campaigns/{}/preview", "/staff/campaigns/{}/preview/html",
    "/staff/campaigns/{}/send",
])
def test_a_row_id_past_the_database_integer_is_not_found(admin_client, path):
    for number in ("2147483648", "9" * 30):
        response = admin_client.get(path.format(number))
        assert response.status_code == 404, path
        assert "Page not found" in response.text


# --- A JSON body where a form is read ------------------------------------------------------------

#: JSON that WTForms cannot take as form fields: a number, a list, a bare string, an object.
JSON_BODIES = ['{"email": 5}', "[1, 2]", '"text"', '{"email": {"a": 1}}', '{"email": null}']


@pytest.mark.parametrize("body", JSON_BODIES)
def test_a_json_body_on_a_public_form_gets_the_page_that_says_how_to_send_it(
    client, world, body
):
    # The sign-up and the fresh-link form take no cookie and no session token: anyone can post.
    world.news.public = True
    db.session.commit()
    contacts_before = everything_of(world.ada)
    for path in ("/f/news", "/link", f"{manage_path(world.ada)}"):
        response = client.post(path, data=body, content_type="application/json")
        assert response.status_code == 415, path
        assert "This page takes a form" in response.text
        assert "Send it from the page's own form" in response.text
    assert everything_of(world.ada) == contacts_before


def test_a_json_body_on_a_staff_form_with_its_token_gets_the_same_page(admin_client):
    token = csrf_token(admin_client.get("/staff/settings").text)
    for body in JSON_BODIES:
        response = admin_client.post("/staff/settings", data=body,
                                     content_type="application/json",
                                     headers={"X-CSRFToken": token})
        assert response.status_code == 415
        assert "This page takes a form" in response.text


# --- An address on file that cannot be mailed ---------------------------------------------------


def unmailable(contact):
    """Give a contact an address SMTP cannot carry, as one typed before such were refused."""
    db.session.execute(sa.update(Contact).where(Contact.id == contact.id)
                       .values(email="jörg@example.de"))
    db.session.commit()
    db.session.expire_all()


def test_a_withdrawal_stands_when_its_notice_cannot_be_mailed(client, smtp, world):
    page = manage_path(world.ada)
    _action, form = read_form(client.get(page).text)
    unmailable(world.ada)
    form.pop("list:news")
    response = client.post(page, data=form)
    assert response.status_code == 303
    assert "Your changes are saved" in client.get(page).text
    assert state(world.ada)["lists"]["news"] == "unsubscribed"
    [kept] = db.session.scalars(sa.select(outbox.OutboxMessage)
                                .where(outbox.OutboxMessage.contact_id == world.ada.id)).all()
    assert (kept.status, kept.reason) == ("failed", "the address on file cannot receive our email")


def test_a_double_opt_in_to_an_address_that_cannot_be_mailed_is_skipped_with_a_reason(
    app, world
):
    unmailable(world.ada)
    result = doi.send_request(db.session.get(Contact, world.ada.id), source="staff", actor="t")
    assert not result.sent
    assert result.message == ("No double opt-in email was sent: the address on file cannot "
                              "receive our email.")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(doi.DoiRequest)) == 0
