"""The contacts pages (S4, P9): filtered list, saved filters, the record, edits and reveals."""

import re
from html import unescape

import pytest
import sqlalchemy as sa
from conftest import make_config
from conftest import staff_browser
from test_backoffice_auth import csrf_token
from test_backoffice_auth import sign_in

from portal import consent
from portal import contacts
from portal import create_app
from portal import ledger
from portal import lists
from portal import outbox
from portal import staff
from portal import suppression
from portal.contact_filters import SavedFilter
from portal.contacts import OptIn
from portal.db import db


def _add(email, **options):
    return contacts.add_contact(email, method="test", actor="test", **options)


@pytest.fixture
def people(app):
    """A small population: statuses, consents, lists, a locked record and an erasure request."""
    card = contacts.define_field("card_number", "Card number", sensitive=True, visible_suffix=4)
    contacts.define_field("sales_stage", "Sales stage")
    contacts.define_field("employees", "Employees", value_type="number")
    store_card = consent.define("store-card", "storage", "Store my card", "We keep it.", field=card)
    tracking = consent.define("tracking", "tracking", "Tracking", "We count opens.")
    news = lists.create_list("newsletter", "Newsletter")
    ada = _add("ada@example.com", first_name="Ada", last_name="Lovelace", region="EU")
    bob = _add("bob@example.com", first_name="Bob", last_name="Marley", region="UK")
    cy = _add("cy@example.com", first_name="Cyrus", last_name="Smith", region="EU")
    dee = _add("dee@example.com", first_name="Dee", last_name="Stopped", region="EU")
    eve = _add("eve@example.com", first_name="Eve", last_name="Gone", region="US")
    contacts.record_opt_in(ada, OptIn.DOUBLE, method="email_confirmation", actor="contact")
    contacts.record_opt_in(bob, OptIn.DOUBLE, method="email_confirmation", actor="contact")
    consent.decide(ada, store_card.current_version, True, method="page", actor="contact")
    contacts.set_field_value(ada, card, "4111 1111 1111 1234")
    consent.decide(ada, tracking.current_version, True, method="page", actor="contact")
    consent.decide(bob, tracking.current_version, True, method="page", actor="contact")
    consent.decide(bob, tracking.current_version, False, method="page", actor="contact")
    lists.set_subscription(ada, news, True, method="test", actor="test")
    lists.set_subscription(cy, news, True, method="test", actor="test")
    contacts.stop_processing(dee, method="page", actor="contact")
    contacts.request_erasure(eve, method="page", actor="contact")
    db.session.commit()
    return {
        "ada": ada,
        "bob": bob,
        "cy": cy,
        "dee": dee,
        "eve": eve,
        "card": card,
        "tracking": tracking,
        "store_card": store_card,
    }


def _names(html: str) -> set[str]:
    """Return the names listed in the results table."""
    table = html.split('id="contact-results"', 1)[1]
    return set(re.findall(r'href="/staff/contacts/[^"/]+">([^<]+)</a>', table))


def _list(client, query=""):
    response = client.get("/staff/contacts" + (f"?{query}" if query else ""), follow_redirects=True)
    assert response.status_code == 200
    return response


# The list and its filters


def test_the_list_shows_every_contact_without_filters(admin_client, people):
    response = _list(admin_client)
    assert _names(response.text) == {
        "Ada Lovelace",
        "Bob Marley",
        "Cyrus Smith",
        "Dee Stopped",
        "Eve Gone",
    }
    assert "5 contacts" in response.text
    assert "processing stopped" in response.text and "erasure requested" in response.text


def test_filters_combine(admin_client, people):
    assert _names(_list(admin_client, "opt_in=double").text) == {"Ada Lovelace", "Bob Marley"}
    assert _names(_list(admin_client, "opt_in=double&region=eu").text) == {"Ada Lovelace"}
    assert _names(_list(admin_client, "opt_in=double&opt_in=optout_contact").text) == {
        "Ada Lovelace",
        "Bob Marley",
        "Dee Stopped",
    }


def test_each_consent_filters_granted_revoked_and_never_asked(admin_client, people):
    assert _names(_list(admin_client, "consent.tracking=granted").text) == {"Ada Lovelace"}
    assert _names(_list(admin_client, "consent.tracking=revoked").text) == {"Bob Marley"}
    assert _names(_list(admin_client, "consent.tracking=never").text) == {
        "Cyrus Smith",
        "Dee Stopped",
        "Eve Gone",
    }
    assert _names(_list(admin_client, "consent.tracking=never&consent.store-card=never").text) == {
        "Cyrus Smith",
        "Dee Stopped",
        "Eve Gone",
    }


def test_erasure_stopped_and_list_filters(admin_client, people):
    assert _names(_list(admin_client, "erasure=yes").text) == {"Eve Gone"}
    assert _names(_list(admin_client, "stopped=yes").text) == {"Dee Stopped"}
    assert "Dee Stopped" not in _names(_list(admin_client, "stopped=no").text)
    assert _names(_list(admin_client, "list=newsletter").text) == {"Ada Lovelace", "Cyrus Smith"}


def test_search_matches_names_addresses_and_only_the_visible_part_of_sensitive_values(
    admin_client, people
):
    assert _names(_list(admin_client, "q=lovelace").text) == {"Ada Lovelace"}
    assert _names(_list(admin_client, "q=BOB%40example").text) == {"Bob Marley"}
    assert _names(_list(admin_client, "q=1234").text) == {"Ada Lovelace"}
    # The hidden digits of the card are never searchable (E4).
    assert _names(_list(admin_client, "q=4111").text) == set()
    # % and _ are plain characters, not wildcards.
    assert _names(_list(admin_client, "q=%25").text) == set()
    assert "No contact matches these filters." in _list(admin_client, "q=%25").text


def test_invalid_filter_values_get_a_message_never_an_error(admin_client, people):
    response = _list(
        admin_client,
        "opt_in=maybe&consent.nope=granted&consent.tracking=perhaps&erasure=sometimes"
        "&list=nope&page=%C2%B2&q=" + "a" * 101,
    )
    text = unescape(response.text)
    assert "“maybe” is not an opt-in status" in text
    assert "There is no consent named “nope”" in text
    assert "Choose granted, revoked or never asked" in text
    assert "Choose yes or no" in text
    assert "There is no mailing list named “nope”" in text
    assert "is not a page number" in text
    assert "Search for at most 100 characters" in text
    assert "5 contacts" in text  # the values that make no sense are left out


def test_control_characters_in_a_filter_get_a_message(admin_client, people):
    response = _list(admin_client, "q=ada%00&region=E%00U")
    text = unescape(response.text)
    assert "The search holds control characters; it is not applied." in text
    assert "The region holds control characters" in text
    assert "5 contacts" in text


def test_the_filters_stay_in_the_form_and_in_the_links(admin_client, people):
    response = _list(admin_client, "opt_in=double&consent.tracking=granted&q=ada")
    assert 'value="double" checked' in response.text
    assert '<option value="granted" selected>' in response.text
    assert 'name="q" value="ada"' in response.text
    assert 'name="query" value="opt_in=double&amp;consent.tracking=granted&amp;q=ada"' in (
        response.text
    )


def test_a_filtered_list_has_one_address_to_bookmark(admin_client, people):
    # What a plain form sends: every field, most of them empty, in the form's order.
    sent = admin_client.get("/staff/contacts?q=&consent.tracking=granted&erasure=&region=EU&list=")
    assert sent.status_code == 302
    assert sent.headers["Location"] == "/staff/contacts?consent.tracking=granted&region=EU"
    assert admin_client.get(sent.headers["Location"]).status_code == 200
    fragment = admin_client.get("/staff/contacts?q=&region=EU", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.headers["HX-Push-Url"] == "/staff/contacts?region=EU"


def test_the_list_is_paged_with_and_without_htmx(admin_client, app):
    for number in range(30):
        _add(f"person{number:02d}@example.com", first_name="Person", last_name=f"{number:02d}")
    db.session.commit()
    first = _list(admin_client, "q=person")
    assert "30 contacts" in first.text
    assert "Page 1 of 2" in first.text
    assert len(_names(first.text)) == 25
    assert "Person 29" in _names(first.text)  # newest first
    assert 'href="/staff/contacts?q=person&amp;page=2"' in first.text
    second = admin_client.get("/staff/contacts?q=person&page=2", headers={"HX-Request": "true"})
    assert second.status_code == 200
    assert "HX-Request" in second.headers["Vary"]
    assert second.text.lstrip().startswith('<section id="contact-results"')
    assert "<html" not in second.text
    assert _names(second.text) == {f"Person {n:02d}" for n in range(5)}
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
    # A page past the end shows the last page rather than nothing.
    assert "Page 2 of 2" in _list(admin_client, "q=person&page=99").text


def test_the_filter_form_works_without_javascript_and_enhances_with_htmx(admin_client, people):
    page = _list(admin_client).text
    form = re.search(r'<form class="contact-filters"[^>]*>', page, re.S).group(0)
    assert 'method="get" action="/staff/contacts"' in form
    assert 'hx-get="/staff/contacts"' in form and 'hx-push-url="true"' in form


# Saved filters


def test_a_filter_is_saved_by_name_and_reopened_from_the_list(admin_client, people):
    page = _list(admin_client, "opt_in=double&region=EU").text
    saved = admin_client.post(
        "/staff/contacts/filters",
        data={
            "csrf_token": csrf_token(page),
            "name": "  EU  double ",
            "query": "opt_in=double&region=EU",
        },
    )
    assert saved.status_code == 303
    assert saved.headers["Location"].endswith("/staff/contacts?opt_in=double&region=EU")
    listing = admin_client.get(saved.headers["Location"])
    assert "The filter “EU double” is saved." in unescape(listing.text)
    link = re.search(r'<a href="([^"]+)">EU double</a>', listing.text).group(1)
    assert _names(admin_client.get(unescape(link)).text) == {"Ada Lovelace"}


def test_saving_a_filter_needs_a_free_name_and_a_filter(admin_client, people):
    page = _list(admin_client).text
    token = csrf_token(page)
    for name, query, message in (
        ("", "region=EU", "Give the filter a name."),
        ("Everyone", "", "Choose at least one filter before saving."),
        ("Bad", "opt_in=nope", "Correct the filters marked below before saving them."),
    ):
        response = admin_client.post(
            "/staff/contacts/filters", data={"csrf_token": token, "name": name, "query": query}
        )
        assert response.status_code == 200
        assert message in unescape(response.text)
    admin_client.post(
        "/staff/contacts/filters", data={"csrf_token": token, "name": "EU", "query": "region=EU"}
    )
    again = admin_client.post(
        "/staff/contacts/filters", data={"csrf_token": token, "name": "EU", "query": "region=UK"}
    )
    assert "A saved filter is already named “EU”" in unescape(again.text)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(SavedFilter)) == 1


def test_a_saved_filter_is_deleted_by_its_author_not_by_another_agent(app, admin_client, people):
    page = _list(admin_client).text
    admin_client.post(
        "/staff/contacts/filters",
        data={"csrf_token": csrf_token(page), "name": "UK", "query": "region=UK"},
    )
    saved = db.session.scalar(sa.select(SavedFilter))
    url = f"/staff/contacts/filters/{saved.id}/delete"
    agent = staff_browser(app, "agent@example.com", "agent")
    assert agent.get(url).status_code == 403
    token = csrf_token(_list(agent).text)
    assert agent.post(url, data={"csrf_token": token}).status_code == 403
    # The list links to a page that asks; only its POST deletes.
    listing = _list(admin_client).text
    assert f'href="{url}"' in listing
    confirm = admin_client.get(url)
    assert "Delete the saved filter “UK”?" in unescape(confirm.text)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(SavedFilter)) == 1
    deleted = admin_client.post(url, data={"csrf_token": csrf_token(confirm.text)})
    assert deleted.status_code == 303
    assert "The saved filter “UK” is deleted." in unescape(
        admin_client.get(deleted.headers["Location"]).text
    )
    assert db.session.scalar(sa.select(sa.func.count()).select_from(SavedFilter)) == 0


# The record


def _record(client, contact):
    response = client.get(f"/staff/contacts/{contact.public_id}")
    assert response.status_code == 200
    return response


def test_an_unknown_contact_is_a_404_page(agent_client, people):
    response = agent_client.get("/staff/contacts/no-such-contact")
    assert response.status_code == 404
    assert "<html" in response.text


def test_an_id_with_a_nul_byte_is_unknown_too(agent_client, people):
    ada = people["ada"]
    assert agent_client.get("/staff/contacts/a%00b").status_code == 404
    token = csrf_token(_record(agent_client, ada).text)
    response = agent_client.post(
        f"/staff/contacts/{ada.public_id}/reveal/card%00", data={"csrf_token": token}
    )
    assert response.status_code == 404
    # Every page about one contact, not only the record.
    for path in ("/staff/contacts/a%00b/stop-processing", "/staff/contacts/a%00b/erase",
                 "/staff/erasure/a%00b/extend"):
        assert agent_client.get(path).status_code in (403, 404), path
    for path in ("/staff/contacts/a%00b/double-opt-in", "/staff/contacts/a%00b/out-of-band"):
        assert agent_client.post(path, data={"csrf_token": token}).status_code == 404, path


def test_the_record_shows_fields_masked_and_the_consents_block(agent_client, people):
    ada = people["ada"]
    text = unescape(_record(agent_client, ada).text)
    assert "ada@example.com" in text and "Double opt-in" in text
    assert "•" * 12 + "1234" in text
    assert "4111 1111 1111 1234" not in text
    consents = text.split('id="consents-heading"', 1)[1].split("</section>", 1)[0]
    assert "Tracking" in consents and "granted" in consents and "version 1" in consents
    assert "page" in consents  # how it was given
    assert "History: 1 event" in consents
    bob = unescape(_record(agent_client, people["bob"]).text)
    bob_consents = bob.split('id="consents-heading"', 1)[1].split("</section>", 1)[0]
    assert "revoked" in bob_consents and "History: 2 events" in bob_consents
    assert "never asked" in bob_consents  # the card consent


def test_the_record_shows_subscriptions_and_the_gates_decisions(agent_client, people):
    ada, dee = people["ada"], people["dee"]
    outbox.enqueue(
        category="notice", contact=dee, recipient=dee.email, subject="Hello Dee", text_body="Hi"
    )
    outbox.enqueue(
        category="notice", contact=ada, recipient=ada.email, subject="Hello Ada", text_body="Hi"
    )
    db.session.commit()
    ada_page = unescape(_record(agent_client, ada).text)
    assert "Newsletter: subscribed" in ada_page
    assert "Hello Ada" in ada_page and "allowed" in ada_page
    dee_page = unescape(_record(agent_client, dee).text)
    assert "Hello Dee" in dee_page
    assert "refused when queued: the contact stopped the processing of their data" in dee_page
    # A queued message the gate would now refuse says so before the worker gets to it.
    contacts.record_opt_in(ada, OptIn.OPTOUT_USER, method="staff", actor="test")
    db.session.commit()
    assert "will be refused at hand-off: the contact opted out of email" in unescape(
        _record(agent_client, ada).text
    )


def test_the_record_includes_the_opt_in_lock_and_erasure_parts(agent_client, people):
    # The parts others fill in are included with the contact (their markers show up).
    response = _record(agent_client, people["dee"])
    assert response.text.index('id="details-heading"') < response.text.index(
        'id="consents-heading"'
    )


def _grant_reveal(email, field):
    user = db.session.scalar(sa.select(staff.StaffUser).where(staff.StaffUser.email == email))
    db.session.add(staff.RevealPermission(staff_id=user.id, field_id=field.id))
    db.session.commit()
    return user


def test_reveal_needs_the_fields_permission(agent_client, people):
    ada = people["ada"]
    page = _record(agent_client, ada).text
    assert ">Reveal<" not in page
    refused = agent_client.post(
        f"/staff/contacts/{ada.public_id}/reveal/card_number", data={"csrf_token": csrf_token(page)}
    )
    assert refused.status_code == 403
    assert "4111" not in refused.text


def test_a_reveal_shows_the_value_once_and_is_logged_without_it(agent_client, people):
    ada = people["ada"]
    user = _grant_reveal("agent@example.com", people["card"])
    page = _record(agent_client, ada).text
    assert ">Reveal<" in page
    revealed = agent_client.post(
        f"/staff/contacts/{ada.public_id}/reveal/card_number", data={"csrf_token": csrf_token(page)}
    )
    assert revealed.status_code == 200
    assert "4111 1111 1111 1234" in revealed.text
    assert revealed.headers["Cache-Control"] == "no-store"
    event = ledger.history(ada.public_id)[-1]
    assert (event.action, event.subject_ref, event.actor) == (
        "field_revealed",
        "card_number",
        f"staff:{user.id}",
    )
    # No digit group of the value in any of the event's words (its hashes, its time and the
    # ORM's state left out: a hex digest, a microsecond count or a memory address holds "1234"
    # now and then, by chance).
    chance = {"hash", "prev_hash", "evidence_digest", "text_sha256", "occurred_at"}
    words = " ".join(str(value) for name, value in vars(event).items()
                     if name not in chance and not name.startswith("_"))
    assert not any(group in words for group in ("4111", "1111", "1234"))
    evidence = db.session.get(ledger.LedgerEvidence, event.id)
    assert evidence.ip_address is not None
    # The next visit shows the mask again.
    assert "4111 1111 1111 1234" not in _record(agent_client, ada).text
    assert ledger.verify().ok


def test_a_reveal_is_refused_for_a_stopped_record(agent_client, people):
    ada = people["ada"]
    _grant_reveal("agent@example.com", people["card"])
    page = _record(agent_client, ada).text
    contacts.stop_processing(ada, method="page", actor="contact")
    db.session.commit()
    events = len(ledger.history(ada.public_id))
    response = agent_client.post(
        f"/staff/contacts/{ada.public_id}/reveal/card_number", data={"csrf_token": csrf_token(page)}
    )
    assert response.status_code == 200
    assert "cannot be revealed" in response.text
    assert "4111 1111 1111 1234" not in response.text
    assert len(ledger.history(ada.public_id)) == events
    assert ">Reveal<" not in _record(agent_client, ada).text


def edit_form(client, contact, **changes):
    page = client.get(f"/staff/contacts/{contact.public_id}/edit")
    assert page.status_code == 200
    version = re.search(r'name="version" value="(\d+)"', page.text).group(1)
    data = {
        "csrf_token": csrf_token(page.text),
        "version": version,
        "first_name": contact.first_name or "",
        "last_name": contact.last_name or "",
        "phone": contact.phone or "",
        "region": contact.region or "",
        "language": contact.language or "",
        "kind": contact.kind,
        "sales_stage": "",
        "employees": "",
        "card_number": "",
    }
    data.update(changes)
    return data


def test_staff_edit_the_fields_of_a_record(agent_client, people):
    cy = people["cy"]
    data = edit_form(agent_client, cy, first_name="Cy", sales_stage="qualified", employees="12")
    saved = agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=data)
    assert saved.status_code == 303
    page = unescape(agent_client.get(saved.headers["Location"]).text)
    assert "The record is saved." in page
    assert "Cy Smith" in page and "qualified" in page
    changed = [e.subject_ref for e in ledger.history(cy.public_id) if e.action == "field_changed"]
    assert sorted(changed) == ["employees", "first_name", "sales_stage"]


def test_a_bad_value_is_refused_next_to_its_field_and_nothing_is_saved(agent_client, people):
    cy = people["cy"]
    data = edit_form(agent_client, cy, first_name="Cy", employees="many", language="xx")
    response = agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=data)
    assert response.status_code == 200
    assert "Enter a number, such as 42 or 3.5." in response.text
    assert "Choose one of the offered values." in response.text
    assert 'value="Cy"' in response.text  # what was typed stays in the form
    db.session.expire_all()
    assert cy.first_name == "Cyrus"


def test_control_characters_and_odd_numbers_are_refused_next_to_their_fields(agent_client, people):
    cy = people["cy"]
    data = edit_form(
        agent_client, cy, first_name="Cy\x00rus", employees="nan", sales_stage="a\x00b"
    )
    response = agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=data)
    assert response.status_code == 200
    assert response.text.count("Remove the invisible control characters") == 2
    assert "Enter a number, such as 42 or 3.5." in response.text
    # A pasted tab or line break in a name is only white space.
    data = edit_form(agent_client, cy, first_name="Cy\t", last_name="Smith\r\n")
    assert agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=data).status_code == 303
    db.session.expire_all()
    assert (cy.first_name, cy.last_name) == ("Cy", "Smith")


def test_a_field_whose_storage_consent_was_revoked_cannot_be_filled(agent_client, people):
    ada = people["ada"]
    consent.decide(ada, people["store_card"].current_version, False, method="page", actor="contact")
    db.session.commit()
    data = edit_form(agent_client, ada, card_number="5555 4444 3333 2222")
    response = agent_client.post(f"/staff/contacts/{ada.public_id}/edit", data=data)
    assert response.status_code == 200
    assert "Card number: the contact withdrew consent to store it" in unescape(response.text)
    assert contacts.field_value(ada, "card_number", reveal=True) is None


def test_a_sensitive_value_is_replaced_encrypted_and_an_empty_box_keeps_it(agent_client, people):
    cy = people["cy"]
    data = edit_form(agent_client, cy, card_number="4000 0000 0000 9876")
    assert agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=data).status_code == 303
    data = edit_form(agent_client, cy, first_name="Cy")
    assert agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=data).status_code == 303
    db.session.expire_all()
    assert contacts.field_value(cy, "card_number", reveal=True) == "4000 0000 0000 9876"
    assert contacts.field_value(cy, "card_number") == "•" * 12 + "9876"


def test_a_stopped_record_refuses_edits(agent_client, people):
    ada = people["ada"]
    data = edit_form(agent_client, ada, first_name="Changed")
    contacts.stop_processing(ada, method="page", actor="contact")
    db.session.commit()
    response = agent_client.post(f"/staff/contacts/{ada.public_id}/edit", data=data)
    assert response.status_code == 200
    assert "the record is locked" in response.text
    assert "Save the fields" not in response.text
    db.session.expire_all()
    assert ada.first_name == "Ada"
    email = agent_client.post(
        f"/staff/contacts/{ada.public_id}/email",
        data={"csrf_token": data["csrf_token"], "email": "new@example.com"},
    )
    assert "the record is locked" in email.text
    assert "Edit the fields" not in _record(agent_client, ada).text


def test_a_stale_form_keeps_what_was_typed_shows_what_was_saved_and_saves_again(
    agent_client, people
):
    cy = people["cy"]
    stale = edit_form(
        agent_client,
        cy,
        first_name="Mine",
        phone="555 0100",
        sales_stage="won",
        card_number="4000 0000 0000 9876",
    )
    fresh = edit_form(agent_client, cy, first_name="Theirs", region="UK")
    assert agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=fresh).status_code == 303
    response = agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=stale)
    assert response.status_code == 200
    page = unescape(response.text)
    assert "Someone changed this record after you opened the form" in page
    # What was typed is still in the form; beside a field, what was saved meanwhile.
    assert 'value="Mine"' in page and 'value="555 0100"' in page and 'value="won"' in page
    assert 'value="EU"' in page  # the region as the form had it: theirs is shown beside it
    assert re.search(r'aria-describedby="now-first_name"', page)
    assert re.search(r'id="now-first_name">Saved meanwhile: “Theirs”\.<', page)
    assert re.search(r'id="now-region">Saved meanwhile: “UK”\.<', page)
    # A sensitive value is never written back into the page: the form says to type it again.
    assert "9876" not in page and "type it again to save it" in page
    db.session.expire_all()
    assert (cy.first_name, cy.region) == ("Theirs", "UK")
    # The form carries the record's new version: saving it as it stands now works.
    again = dict(stale, version=re.search(r'name="version" value="(\d+)"', page).group(1))
    again["region"] = "UK"
    saved = agent_client.post(f"/staff/contacts/{cy.public_id}/edit", data=again)
    assert saved.status_code == 303
    db.session.expire_all()
    assert (cy.first_name, cy.region, cy.phone) == ("Mine", "UK", "555 0100")
    assert contacts.field_value(cy, "sales_stage") == "won"
    assert contacts.field_value(cy, "card_number", reveal=True) == "4000 0000 0000 9876"


def test_changing_the_address_resets_a_double_opt_in_and_old_links(agent_client, people):
    ada = people["ada"]
    link_version = ada.link_version
    data = edit_form(agent_client, ada)
    changed = agent_client.post(
        f"/staff/contacts/{ada.public_id}/email",
        data={"csrf_token": data["csrf_token"], "email": " Ada.New@Example.com "},
    )
    assert changed.status_code == 303
    db.session.expire_all()
    assert ada.email == "ada.new@example.com"
    assert ada.opt_in_status == OptIn.NONE
    assert ada.link_version == link_version + 1
    actions = [(e.subject_type, e.action) for e in ledger.history(ada.public_id)]
    assert ("contact", "email_changed") in actions and actions[-1] == ("opt_in", "set")


def test_changing_the_address_keeps_an_opt_out(agent_client, people):
    bob = people["bob"]
    contacts.record_opt_in(bob, OptIn.OPTOUT_USER, method="staff", actor="test")
    db.session.commit()
    data = edit_form(agent_client, bob)
    agent_client.post(
        f"/staff/contacts/{bob.public_id}/email",
        data={"csrf_token": data["csrf_token"], "email": "bob2@example.com"},
    )
    db.session.expire_all()
    assert (bob.email, bob.opt_in_status) == ("bob2@example.com", OptIn.OPTOUT_USER)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("not an address", "Enter a valid email address"),
        ("BOB@example.com", "Another contact has this address."),
        ("ada@example.com", "This is already the contact's address."),
        ("erased@example.com", "is on the suppression list"),
    ],
)
def test_a_bad_new_address_is_refused_next_to_the_field(agent_client, people, address, message):
    suppression.suppress("erased@example.com", "erased")
    db.session.commit()
    ada = people["ada"]
    data = edit_form(agent_client, ada)
    response = agent_client.post(
        f"/staff/contacts/{ada.public_id}/email",
        data={"csrf_token": data["csrf_token"], "email": address},
    )
    assert response.status_code == 200
    assert message in unescape(response.text)
    db.session.expire_all()
    assert ada.email == "ada@example.com" and ada.opt_in_status == OptIn.DOUBLE


def test_contacts_pages_need_sign_in(client, people):
    for url in ("/staff/contacts", f"/staff/contacts/{people['ada'].public_id}"):
        response = client.get(url, base_url="https://localhost")
        assert response.status_code == 302
        assert "/staff/sign-in" in response.headers["Location"]


def test_the_demo_back_office_is_usable_on_the_first_day(app, database_url, tmp_path):
    demo = create_app(make_config(database_url, PORTAL_DEMO=True), instance_path=str(tmp_path))
    with demo.app_context():
        result = demo.test_cli_runner().invoke(args=["demo"])
        assert result.exit_code == 0, result.output
        password = re.search(r"login: \S+ / (\S+)", result.output).group(1)
        browser = demo.test_client()
        browser.environ_base.update(
            {"wsgi.url_scheme": "https", "HTTP_REFERER": "https://localhost/staff/"}
        )
        sign_in(browser, "admin@demo.example", password)
        home = browser.get("/staff/")
        assert 'href="/staff/contacts"' in home.text  # the nav leads there
        listing = unescape(browser.get("/staff/contacts").text)
        assert re.search(r"(\d+) contacts", listing).group(1) == "36"
        for name in ("Erasure requested", "Processing stopped", "Tracking consent never asked"):
            assert f">{name}</a>" in listing
        erasure = re.search(r'<a href="([^"]+)">Erasure requested</a>', listing).group(1)
        assert "1 contact<" in browser.get(unescape(erasure)).text
        stopped = browser.get("/staff/contacts?stopped=yes").text
        assert "1 contact<" in stopped
        # A record with a stored sensitive value offers the reveal to the demo admin.
        with_card = browser.get("/staff/contacts?q=%E2%80%A2").text
        record = re.search(
            r'href="(/staff/contacts/[^"/]+)"', with_card.split('id="contact-results"')[1]
        ).group(1)
        assert ">Reveal<" in browser.get(record).text
        # A second run of the demo changes nothing.
        assert "no change" in demo.test_cli_runner().invoke(args=["demo"]).output


# What a keyboard or screen-reader user meets on the list.


def test_the_count_of_results_is_announced_from_a_status_that_stays_in_place(admin_client, people):
    # htmx replaces the results at each change of the filters: a live region inside them would
    # be replaced too (not announced reliably, or read whole). The status beside them stays,
    # and the fragment fills it out of band.
    page = _list(admin_client).text
    results = re.search(r'<section id="contact-results".*?</section>', page, re.S).group(0)
    assert "aria-live" not in results and "role=\"status\"" not in results
    assert '<p id="results-status" class="visually-hidden" role="status"></p>' in page
    fragment = admin_client.get("/staff/contacts?region=EU", headers={"HX-Request": "true"}).text
    assert "aria-live" not in fragment
    status = re.search(r'<p id="results-status"[^>]*>(.*?)</p>', fragment)
    assert 'role="status" hx-swap-oob="innerHTML"' in status.group(0)
    assert status.group(1) == "3 contacts"


def test_the_staff_navigation_says_which_section_is_open(admin_client, people):
    def current(html: str) -> list[tuple[str, str]]:
        nav = re.search(r'<nav aria-label="Back office">.*?</nav>', html, re.S).group(0)
        return re.findall(r'<a [^>]*aria-current="([^"]+)"[^>]*>([^<]+)</a>', nav)

    assert current(_list(admin_client).text) == [("page", "Contacts")]
    record = admin_client.get(f"/staff/contacts/{people['ada'].public_id}").text
    assert current(record) == [("true", "Contacts")]
    assert current(admin_client.get("/staff/").text) == [("page", "Overview")]
    assert current(admin_client.get("/staff/settings/history").text) == [("true", "Settings")]
