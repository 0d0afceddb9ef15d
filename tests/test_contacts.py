"""Contacts: addresses, uniqueness, opt-in status, fields, and optimistic locking."""

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from portal import contacts
from portal import ledger
from portal import optin
from portal.contacts import Contact
from portal.contacts import ContactError
from portal.contacts import InvalidEmail
from portal.contacts import OptIn
from portal.db import db


def _add(address: str = "ada@example.com", **options) -> Contact:
    return contacts.add_contact(address, method="test", actor="test", **options)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada@example.com\n", "ada@example.com"),
        ("ADA.LOVELACE+news@EXAMPLE.co.uk", "ada.lovelace+news@example.co.uk"),
    ],
)
def test_addresses_are_normalised(given, stored):
    assert contacts.normalise_email(given) == stored


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada@@example.com",
        "ada lovelace@example.com",
        "ada@exam ple.com",
        "ada..lovelace@example.com",
        "ada@example..com",
        "ada\r\nBcc: eve@example.com",
        "ada\x00@example.com",
        "a" * 65 + "@example.com",
        "ada@" + "x" * 250 + ".com",
        # Addresses SMTP as the portal speaks it (no SMTPUTF8) cannot carry: refused where they
        # are typed, not on file where their first mail would fail.
        "jörg@example.de",
        "ユーザー@example.jp",
        "ada@exa\udcffmple.com",
    ],
)
def test_malformed_addresses_are_refused(address):
    with pytest.raises(InvalidEmail):
        contacts.normalise_email(address)


def test_an_international_domain_is_an_address_the_portal_can_mail():
    assert contacts.normalise_email("Ada@Müller.de") == "ada@müller.de"
    assert contacts.mailable("ada@müller.de") and not contacts.mailable("jörg@example.de")


def test_a_contact_is_found_by_any_spelling_of_its_address(app):
    contact = _add(" Ada@Example.com ")
    assert contact.email == "ada@example.com"
    assert contacts.find_by_email("ADA@EXAMPLE.COM").id == contact.id
    assert contacts.find_by_email("grace@example.com") is None


def test_an_address_belongs_to_one_contact(app):
    _add("ada@example.com")
    with pytest.raises(ContactError, match="already exists"):
        _add("ADA@example.com")


def test_the_database_refuses_a_duplicate_address(app):
    _add("ada@example.com")
    with pytest.raises(sa.exc.IntegrityError):
        with db.session.begin_nested():
            db.session.add(Contact(email="ada@example.com"))


def test_a_contact_gets_an_opaque_public_id(app):
    first, second = _add("ada@example.com"), _add("grace@example.com")
    assert first.public_id != second.public_id
    assert len(first.public_id) >= 20
    assert str(first.id) != first.public_id


def test_adding_a_contact_records_its_creation_and_opt_in(app):
    contact = _add(opt_in=OptIn.SINGLE_USER, reason="asked at the fair")
    events = ledger.history(contact.public_id)
    assert [(e.subject_type, e.action, e.value_to) for e in events] == [
        ("contact", "created", None),
        ("opt_in", "set", "single_user"),
    ]
    # The reason is staff's free text: kept beside the event, which names it (SECURITY 10).
    assert "asked at the fair" not in events[1].evidence_ref
    assert [note.text for note in optin.notes_of(contact, optin.REASON)] == ["asked at the fair"]
    assert "ada@example.com" not in events[0].hashed_content().decode()


@pytest.mark.parametrize(
    "status", [OptIn.DOUBLE, OptIn.SINGLE_WEBFORM, OptIn.OPTOUT_USER, OptIn.OPTOUT_CONTACT]
)
def test_a_new_contact_starts_at_none_or_single_user(app, status):
    with pytest.raises(ContactError):
        _add(opt_in=status)
    assert contacts.find_by_email("ada@example.com") is None


def test_an_unknown_kind_is_refused(app):
    with pytest.raises(ContactError, match="kind"):
        _add(kind="customer")


def test_the_database_refuses_an_unknown_opt_in_status(app):
    contact = _add()
    with pytest.raises(sa.exc.IntegrityError):
        with db.session.begin_nested():
            contact.opt_in_status = "maybe"
            db.session.flush()


def test_opting_out_remembers_the_status_before(app):
    contact = _add(opt_in=OptIn.SINGLE_USER, reason="fair")
    contacts.record_opt_in(contact, OptIn.OPTOUT_USER, method="staff", actor="agent")
    contacts.record_opt_in(contact, OptIn.OPTOUT_CONTACT, method="page", actor="contact")
    assert contact.opt_in_status == "optout_contact"
    assert contact.opt_in_before_opt_out == "single_user"
    last = ledger.history(contact.public_id)[-1]
    assert (last.value_from, last.value_to) == ("optout_user", "optout_contact")


def test_stopping_processing_locks_the_record_and_opts_out(app):
    contact = _add(opt_in=OptIn.SINGLE_USER, reason="fair")
    field = contacts.define_field("sales_stage", "Sales stage")
    contacts.stop_processing(contact, method="page", actor="contact")
    contacts.stop_processing(contact, method="page", actor="contact")
    assert contact.processing_stopped_at is not None
    assert contact.opt_in_status == "optout_contact"
    kinds = [(e.subject_type, e.action) for e in ledger.history(contact.public_id)][2:]
    assert kinds == [("restriction", "stopped"), ("opt_in", "set")]
    with pytest.raises(ContactError, match="stopped"):
        contacts.set_field_value(contact, field, "qualified")


def test_requesting_erasure_is_recorded_once(app):
    contact = _add()
    contacts.request_erasure(contact, method="page", actor="contact")
    contacts.request_erasure(contact, method="page", actor="contact")
    erasure = [e for e in ledger.history(contact.public_id) if e.subject_type == "erasure"]
    assert len(erasure) == 1
    assert contact.erasure_requested_at is not None


def test_a_plain_field_is_stored_as_written(app):
    contact = _add()
    stage = contacts.define_field("sales_stage", "Sales stage")
    contacts.set_field_value(contact, stage, "qualified")
    contacts.set_field_value(contact, stage, "ready to buy")
    db.session.commit()
    assert contacts.field_value(contact, "sales_stage") == "ready to buy"
    assert len(contact.values) == 1


def test_a_sensitive_field_is_encrypted_and_masked(app):
    contact = _add()
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    contacts.set_field_value(contact, card, "4111 1111 1111 1234")
    db.session.commit()
    stored = contact.values[0]
    assert stored.value is None
    assert b"4111" not in stored.ciphertext
    assert card.personal
    assert contacts.field_value(contact, "card_number") == "•" * 12 + "1234"
    assert contacts.field_value(contact, "card_number", reveal=True) == "4111 1111 1111 1234"


def test_clearing_a_field_removes_its_value(app):
    contact = _add()
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    contacts.set_field_value(contact, card, "4111 1111 1111 1234")
    contacts.set_field_value(contact, card, "")
    assert contacts.field_value(contact, "card_number", reveal=True) is None
    assert contacts.field_value(contact, "card_number") is None


def test_built_in_fields_are_not_custom_values(app):
    contact = _add()
    with pytest.raises(ContactError, match="built-in"):
        contacts.set_field_value(contact, contacts.field_definition("email"), "x@example.com")


@pytest.mark.parametrize("name", ["Sales", "1st", "sales-stage", "", "x" * 41])
def test_a_custom_field_needs_a_simple_name(app, name):
    with pytest.raises(ContactError):
        contacts.define_field(name, "Label")


def test_a_custom_field_name_is_unique(app):
    contacts.define_field("sales_stage", "Sales stage")
    with pytest.raises(ContactError, match="already exists"):
        contacts.define_field("sales_stage", "Again")
    with pytest.raises(ContactError, match="already exists"):
        contacts.define_field("email", "Clashes with a built-in field")


def test_a_stale_save_of_a_contact_is_refused(app):
    contact = _add()
    db.session.commit()
    mine = db.session.get(Contact, contact.id)
    assert mine.version == 1
    # Meanwhile another session (another request, another worker) saves the same contact.
    with Session(bind=db.session.connection(), join_transaction_mode="create_savepoint") as other:
        theirs = other.get(Contact, contact.id)
        theirs.first_name = "Augusta"
        other.commit()

    mine.first_name = "Ada"
    with pytest.raises(StaleDataError):
        db.session.flush()
    db.session.rollback()


def test_every_save_moves_the_version_on(app):
    contact = _add()
    db.session.commit()
    version = contact.version
    contact.region = "EU"
    db.session.commit()
    assert contact.version == version + 1
