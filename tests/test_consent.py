"""Consents: numbered immutable versions, and decisions recorded with their ledger event."""

import pytest
import sqlalchemy as sa

from portal import consent
from portal import contacts
from portal import ledger
from portal.consent import ConsentError
from portal.crypto import sha256_hex
from portal.db import db
from portal.db import utcnow
from portal.ledger import LedgerEvent

TEXT = "We may record when you open our emails and click their links."


@pytest.fixture
def contact(app):
    return contacts.add_contact("ada@example.com", method="test", actor="test")


@pytest.fixture
def tracking(app):
    return consent.define("tracking", "tracking", "Engagement tracking", TEXT)


def _event_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(LedgerEvent))


def test_a_consent_starts_with_version_one(tracking):
    (version,) = tracking.versions
    assert version.number == 1
    assert version.text_sha256 == sha256_hex(TEXT)
    assert not version.material
    assert tracking.current_version is version


def test_new_wordings_are_numbered_and_leave_the_old_ones_alone(tracking):
    second = consent.add_version(tracking, "Tracking", "New wording.", material=True)
    third = consent.add_version(tracking, "Tracking", "Third wording.")
    db.session.commit()
    db.session.expire_all()
    assert [(v.number, v.text) for v in tracking.versions] == [
        (1, TEXT),
        (2, "New wording."),
        (3, "Third wording."),
    ]
    assert second.material and not third.material
    assert tracking.current_version.number == 3


def test_a_version_cannot_be_edited(tracking):
    version = tracking.current_version
    db.session.commit()
    version.text = "Quietly changed after people agreed to it."
    with pytest.raises(ConsentError, match="new version"):
        db.session.flush()
    db.session.rollback()
    assert tracking.current_version.text == TEXT


def test_version_numbers_are_unique_per_consent(app, tracking):
    db.session.commit()
    with pytest.raises(sa.exc.IntegrityError):
        with db.session.begin_nested():
            db.session.add(
                consent.ConsentVersion(
                    consent_id=tracking.id,
                    number=1,
                    title="Duplicate",
                    text="Duplicate",
                    text_sha256=sha256_hex("Duplicate"),
                )
            )


@pytest.mark.parametrize(("title", "text"), [("", TEXT), ("Title", "  "), (" ", "")])
def test_a_version_needs_a_title_and_a_text(tracking, title, text):
    with pytest.raises(ConsentError):
        consent.add_version(tracking, title, text)


def test_a_consent_slug_is_unique(tracking):
    with pytest.raises(ConsentError, match="already exists"):
        consent.define("tracking", "custom", "Again", "Again.")


def test_an_unknown_kind_is_refused(app):
    with pytest.raises(ConsentError, match="kind"):
        consent.define("x", "marketing", "X", "X.")


def test_a_storage_consent_names_a_sensitive_field(app):
    plain = contacts.define_field("sales_stage", "Sales stage")
    with pytest.raises(ConsentError, match="sensitive"):
        consent.define("store-stage", "storage", "Store", "Store it.", field=plain)
    with pytest.raises(ConsentError, match="sensitive"):
        consent.define("store-nothing", "storage", "Store", "Store it.")
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    stored = consent.define("store-card", "storage", "Store", "Store it.", field=card)
    assert stored.field is card


def test_a_contact_starts_not_asked(contact, tracking):
    assert consent.state_of(contact, tracking) is None
    assert consent.states_of(contact) == []


def test_a_decision_writes_the_state_and_one_event(contact, tracking):
    before = _event_count()
    state = consent.decide(
        contact,
        tracking.current_version,
        True,
        method="page",
        actor="contact",
        language="de",
        jurisdiction="EU",
        evidence=ledger.Evidence(ip_address="192.0.2.4", user_agent="test"),
    )
    assert _event_count() == before + 1
    event = db.session.get(LedgerEvent, state.event_id)
    assert state.state == "granted"
    assert state.version.number == 1
    assert (event.subject_type, event.subject_ref) == ("consent", "tracking")
    assert (event.action, event.value_from, event.value_to) == ("granted", None, "granted")
    assert (event.text_version, event.text_sha256) == (1, sha256_hex(TEXT))
    assert (event.language, event.jurisdiction, event.legal_basis) == ("de", "EU", "consent")
    assert state.changed_at == event.occurred_at


def test_a_revocation_records_what_it_replaced(contact, tracking):
    consent.decide(contact, tracking.current_version, True, method="page", actor="contact")
    state = consent.decide(
        contact, tracking.current_version, False, method="page", actor="contact"
    )
    event = db.session.get(LedgerEvent, state.event_id)
    assert state.state == "revoked"
    assert (event.value_from, event.value_to) == ("granted", "revoked")
    assert [s.state for s in consent.states_of(contact)] == ["revoked"]


def test_the_state_and_its_event_are_one_transaction(contact, tracking):
    db.session.commit()
    head_before = ledger.verify().last_event_id
    with pytest.raises(RuntimeError):
        with db.session.begin_nested():
            consent.decide(
                contact, tracking.current_version, True, method="page", actor="contact"
            )
            raise RuntimeError("the request failed after deciding")
    assert consent.state_of(contact, tracking) is None
    report = ledger.verify()
    assert report.ok, report.problem
    assert report.last_event_id == head_before


def test_a_decision_names_the_version_seen(contact, tracking):
    first = tracking.current_version
    consent.add_version(tracking, "Tracking", "A newer wording.", material=True)
    state = consent.decide(contact, first, True, method="page", actor="contact")
    assert state.version.number == 1
    assert db.session.get(LedgerEvent, state.event_id).text_version == 1


def test_a_retired_consent_cannot_be_granted_but_can_be_revoked(contact, tracking):
    consent.decide(contact, tracking.current_version, True, method="page", actor="contact")
    tracking.retired_at = utcnow()
    before = _event_count()
    with pytest.raises(ConsentError, match="retired"):
        consent.decide(contact, tracking.current_version, True, method="page", actor="contact")
    assert _event_count() == before
    state = consent.decide(
        contact, tracking.current_version, False, method="page", actor="contact"
    )
    assert state.state == "revoked"


def test_a_display_condition_with_a_wrong_value_type_is_refused(app):
    from portal.rules import RuleError

    with pytest.raises(RuleError, match="region"):
        consent.define("partners", "custom", "Partners", "Share with partners",
                       display_condition={"field": "region", "op": "in", "value": "EU"})
