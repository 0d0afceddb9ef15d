"""Changes a contact makes on their page (P4, R5, SECURITY.md 9), at the domain level.

Withdrawals apply at once with one undo record and one notice; grants, stop processing and
erasure wait as one pending change for the confirmation from the mailbox; confirming and undoing
work once; a stale form is refused. Other tests may have committed rows to the shared PostgreSQL
database (lists, consents, ledger events), so every assertion looks at this test's own rows.
"""

import secrets
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from pg_locks import waiting_for_a_lock

from portal import changes
from portal import consent
from portal import contacts
from portal import ledger
from portal import lists
from portal import settings
from portal.changes import PendingChange
from portal.changes import Undo
from portal.choices import CONSENT
from portal.choices import ERASURE
from portal.choices import LIST
from portal.choices import MARKETING
from portal.choices import RESTRICTION
from portal.choices import page_for
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.ledger import Evidence
from portal.ledger import LedgerEvent
from portal.ledger import LedgerEvidence
from portal.outbox import OutboxMessage

EVIDENCE = Evidence(ip_address="203.0.113.7", user_agent="Mozilla/5.0 (test)")
EU = {"field": "region", "op": "equals", "value": "EU"}
READY = {"field": "sales_stage", "op": "equals", "value": "ready to buy"}


def configure(**values) -> settings.SettingsVersion:
    """Save the page settings on top of whatever version is in force."""
    latest = settings.current()
    return settings.save(values, based_on=latest.version if latest else 0, author="test")


def add_contact(email: str, **fields) -> Contact:
    fields.setdefault("region", "EU")
    return contacts.add_contact(email, method="test", actor="test", **fields)


@pytest.fixture
def world(app) -> SimpleNamespace:
    """A page open to the EU, three lists (one staff-only), three consents, one contact."""
    configure(audience_rule=EU, policy_html="<p>We use your data as you allow.</p>")
    stage = contacts.define_field("sales_stage", "Sales stage")
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    news = lists.create_list("news", "Newsletter")
    offers = lists.create_list("offers", "Offers")
    vip = lists.create_list("vip", "Key accounts", public=False)
    tracking = consent.define("tracking", "tracking", "Engagement tracking",
                              "We may record when you open our emails.")
    partners = consent.define("partners", "custom", "Share with partners",
                              "We may share your details with our partners.",
                              default_selected=True)
    card_consent = consent.define("card", "storage", "Keep my card number",
                                  "We may store your card number.", field=card,
                                  display_condition=READY)
    ada = add_contact("ada@example.com", first_name="Ada", language="en")
    lists.set_subscription(ada, news, True, method="test", actor="test")
    consent.decide(ada, tracking.current_version, True, method="test", actor="test")
    db.session.commit()
    return SimpleNamespace(ada=ada, news=news, offers=offers, vip=vip, tracking=tracking,
                           partners=partners, card=card_consent, stage=stage)


def submit(contact: Contact, wanted: dict, *, stamp: str | None = None,
           language: str = "en") -> changes.Outcome:
    """Submit the contact's page as it stands, with the `wanted` choices changed."""
    page = page_for(contact)
    submitted = {**page.current(), **wanted}
    versions = {choice.definition.slug: choice.version.number for choice in page.consents}
    return changes.submit(contact, submitted, versions=versions,
                          stamp=page.stamp() if stamp is None else stamp,
                          language=language, evidence=EVIDENCE)


def state(contact: Contact) -> dict:
    """Return everything a change can touch, read from the database."""
    db.session.expire_all()
    contact = db.session.get(Contact, contact.id)
    return {
        "lists": {s.mailing_list.slug: s.status for s in lists.subscriptions_of(contact)},
        "consents": {s.consent.slug: (s.state, s.version.number)
                     for s in consent.states_of(contact)},
        "opt_in": contact.opt_in_status,
        "processing_stopped": contact.processing_stopped_at is not None,
        "erasure_requested": contact.erasure_requested_at is not None,
    }


def events_of(contact: Contact) -> list[LedgerEvent]:
    return ledger.history(contact.public_id)


def mails_to(contact: Contact) -> list[OutboxMessage]:
    return list(db.session.scalars(
        sa.select(OutboxMessage).where(OutboxMessage.contact_id == contact.id)
        .order_by(OutboxMessage.id)
    ))


def pending_of(contact: Contact) -> list[PendingChange]:
    return list(db.session.scalars(
        sa.select(PendingChange).where(PendingChange.contact_id == contact.id)
        .order_by(PendingChange.id)
    ))


# --- Withdrawals ------------------------------------------------------------------------------


def test_withdrawals_apply_at_once_with_one_undo_record_and_one_notice(world):
    ada = world.ada
    outcome = submit(ada, {(LIST, "news"): False, (CONSENT, "tracking"): False,
                           (MARKETING, ""): False})
    db.session.commit()

    assert outcome.pending is None
    assert {(item.kind, item.ref) for item in outcome.withdrawn} == {
        (LIST, "news"), (CONSENT, "tracking"), (MARKETING, "")}
    assert state(ada) == {
        "lists": {"news": "unsubscribed"},
        "consents": {"tracking": ("revoked", 1)},
        "opt_in": OptIn.OPTOUT_CONTACT,
        "processing_stopped": False,
        "erasure_requested": False,
    }
    (undo,) = db.session.scalars(sa.select(Undo).where(Undo.contact_id == ada.id))
    assert undo.status == "open"
    (notice,) = mails_to(ada)
    assert notice.recipient == "ada@example.com"
    assert notice.subject == "Your choices were saved"
    assert "/u/" in notice.text_body
    # Each withdrawal is one ledger event, made from the page and pointing at its undo record.
    withdrawals = [e for e in events_of(ada) if e.evidence_ref == f"undo:{undo.public_id}"]
    assert sorted((e.subject_type, e.value_to) for e in withdrawals) == [
        ("consent", "revoked"), ("opt_in", "optout_contact"), ("subscription", "unsubscribed")]
    assert {e.method for e in withdrawals} == {"page"}


def test_a_no_to_a_consent_never_asked_is_recorded_at_once_with_nothing_to_undo(world):
    ada = world.ada
    outcome = submit(ada, {(CONSENT, "partners"): False})
    db.session.commit()

    assert outcome.undo is None and outcome.pending is None
    assert state(ada)["consents"]["partners"] == ("revoked", 1)
    (notice,) = mails_to(ada)
    assert "/u/" not in notice.text_body


def test_the_undo_restores_exactly_what_was_withdrawn(world):
    ada = world.ada
    ada.opt_in_status = OptIn.SINGLE_USER
    lists.set_subscription(ada, world.vip, True, method="staff", actor="agent")
    # The wording changed after Ada agreed: the undo gives back the version she agreed to.
    consent.add_version(world.tracking, "Engagement tracking", "New wording.", material=True)
    db.session.commit()
    before = state(ada)

    outcome = submit(ada, {(LIST, "news"): False, (LIST, "vip"): False,
                           (CONSENT, "tracking"): False, (MARKETING, ""): False})
    db.session.commit()
    assert state(ada) != before

    status, _record = changes.undo(ada, outcome.undo.public_id, evidence=EVIDENCE)
    db.session.commit()
    assert status == "applied"
    assert state(ada) == before
    restored = [e for e in events_of(ada) if e.evidence_ref == f"undo:{outcome.undo.public_id}"
                and e.method == "undo+email"]
    assert sorted(e.subject_type for e in restored) == [
        "consent", "opt_in", "subscription", "subscription"]


def test_an_undo_works_once(world):
    outcome = submit(world.ada, {(LIST, "news"): False})
    db.session.commit()
    assert changes.undo(world.ada, outcome.undo.public_id)[0] == "applied"
    db.session.commit()
    submit(world.ada, {(LIST, "news"): False})
    db.session.commit()
    events = len(events_of(world.ada))

    assert changes.undo(world.ada, outcome.undo.public_id)[0] == "used"
    db.session.commit()
    assert state(world.ada)["lists"]["news"] == "unsubscribed"
    assert len(events_of(world.ada)) == events


# --- Grants wait for the mailbox ---------------------------------------------------------------


def test_grants_stop_processing_and_erasure_wait_as_one_pending_change(world):
    ada = world.ada
    before = state(ada)
    events = len(events_of(ada))

    outcome = submit(ada, {(LIST, "offers"): True, (CONSENT, "partners"): True,
                           (RESTRICTION, ""): True, (ERASURE, ""): True})
    db.session.commit()

    assert outcome.withdrawn == [] and outcome.undo is None
    assert state(ada) == before
    assert len(events_of(ada)) == events
    (pending,) = pending_of(ada)
    assert pending.status == "pending"
    assert {(item.kind, item.ref, item.value) for item in pending.changes()} == {
        (LIST, "offers", True), (CONSENT, "partners", True), (RESTRICTION, "", True),
        (ERASURE, "", True)}
    (mail,) = mails_to(ada)
    assert mail.recipient == "ada@example.com"
    assert mail.subject == "Please confirm your choices"
    for line in ("Subscribe to Offers", "Give consent: Share with partners",
                 "Stop all processing of my data", "Erase my personal data"):
        assert line in mail.text_body


def test_confirming_applies_the_change_once(world):
    ada = world.ada
    outcome = submit(ada, {(LIST, "offers"): True, (CONSENT, "partners"): True})
    db.session.commit()

    status, change = changes.confirm(ada, outcome.pending.public_id, evidence=EVIDENCE)
    db.session.commit()
    assert status == "applied" and change.status == "applied"
    after = state(ada)
    assert after["lists"]["offers"] == "subscribed"
    assert after["consents"]["partners"] == ("granted", 1)
    events = len(events_of(ada))
    receipts = [m for m in mails_to(ada) if m.subject == "Your changes are confirmed"]
    assert len(receipts) == 1

    # The second confirmation changes nothing, and says the change was applied before.
    status, change = changes.confirm(ada, outcome.pending.public_id, evidence=EVIDENCE)
    db.session.commit()
    assert status == "already_applied" and change.status == "applied"
    assert state(ada) == after
    assert len(events_of(ada)) == events
    assert len([m for m in mails_to(ada) if m.subject == "Your changes are confirmed"]) == 1


def test_stop_processing_and_erasure_apply_when_confirmed(world):
    ada = world.ada
    outcome = submit(ada, {(RESTRICTION, ""): True, (ERASURE, ""): True})
    db.session.commit()
    changes.confirm(ada, outcome.pending.public_id, evidence=EVIDENCE)
    db.session.commit()

    after = state(ada)
    assert after["processing_stopped"] and after["erasure_requested"]
    assert after["opt_in"] == OptIn.OPTOUT_CONTACT
    kinds = {(e.subject_type, e.action) for e in events_of(ada) if e.method == "page+email"}
    assert {("restriction", "stopped"), ("erasure", "requested")} <= kinds
    # The record is locked: every write path refuses it (P7).
    with pytest.raises(contacts.ContactError, match="locked"):
        contacts.set_field_value(ada, world.stage, "qualified")


def test_a_newer_confirmed_change_supersedes_older_pending_ones(world):
    ada = world.ada
    older = submit(ada, {(LIST, "offers"): True}).pending
    db.session.commit()
    newer = submit(ada, {(CONSENT, "partners"): True}).pending
    db.session.commit()

    assert changes.confirm(ada, newer.public_id)[0] == "applied"
    db.session.commit()
    status, change = changes.confirm(ada, older.public_id)
    db.session.commit()

    assert status == "superseded" and change.status == "superseded"
    after = state(ada)
    assert after["consents"]["partners"] == ("granted", 1)
    assert "offers" not in after["lists"]


def test_a_withdrawal_cancels_the_pending_grant_of_the_same_item(world):
    ada = world.ada
    mixed = submit(ada, {(LIST, "offers"): True, (CONSENT, "partners"): True}).pending
    db.session.commit()

    # A later "no" to partners: the old confirmation link cannot turn it into a yes.
    submit(ada, {(CONSENT, "partners"): False})
    db.session.commit()
    db.session.expire_all()
    assert [(i.kind, i.ref) for i in mixed.changes()] == [(LIST, "offers")]

    assert changes.confirm(ada, mixed.public_id)[0] == "applied"
    db.session.commit()
    after = state(ada)
    assert after["consents"]["partners"] == ("revoked", 1)
    assert after["lists"]["offers"] == "subscribed"


def test_a_grant_already_waiting_is_not_asked_for_twice_and_a_no_cancels_it(world):
    ada = world.ada
    alone = submit(ada, {(CONSENT, "partners"): True}).pending
    db.session.commit()
    again = submit(ada, {(LIST, "offers"): True, (CONSENT, "partners"): True}).pending
    db.session.commit()
    assert [(i.kind, i.ref) for i in again.changes()] == [(LIST, "offers")]

    submit(ada, {(CONSENT, "partners"): False})
    db.session.commit()
    db.session.expire_all()
    assert alone.status == "cancelled"
    assert changes.confirm(ada, alone.public_id)[0] == "cancelled"
    assert state(ada)["consents"]["partners"] == ("revoked", 1)


def test_changes_of_one_contact_cannot_be_used_by_another(world):
    bob = add_contact("bob@example.com")
    outcome = submit(world.ada, {(LIST, "news"): False, (LIST, "offers"): True})
    db.session.commit()

    assert changes.confirm(bob, outcome.pending.public_id) == ("unknown", None)
    assert changes.undo(bob, outcome.undo.public_id) == ("unknown", None)
    assert changes.pending_of(bob, outcome.pending.public_id) is None
    assert changes.undo_of(bob, outcome.undo.public_id) is None
    db.session.expire_all()
    assert outcome.pending.status == "pending" and outcome.undo.status == "open"
    assert state(bob)["lists"] == {}


# --- Stale forms and what may change ---------------------------------------------------------


def test_a_stale_form_is_refused_and_applies_nothing(world):
    ada = world.ada
    first_tab = page_for(ada).stamp()
    # Another tab unsubscribes from the newsletter meanwhile.
    submit(ada, {(LIST, "news"): False})
    db.session.commit()
    before = state(ada)
    events = len(events_of(ada))

    with pytest.raises(changes.StaleForm) as raised:
        submit(ada, {(LIST, "news"): True, (CONSENT, "tracking"): False}, stamp=first_tab)
    db.session.rollback()

    assert raised.value.page.stamp() != first_tab
    assert state(ada) == before
    assert len(events_of(ada)) == events
    assert pending_of(ada) == []


def test_only_what_the_page_offers_can_change(world):
    ada = world.ada
    bob = add_contact("bob@example.com")
    db.session.commit()
    before, bob_before = state(ada), state(bob)

    # A staff-only list Ada is not on, an unknown consent, a consent whose condition she does
    # not meet: none of them is offered, so none of them changes.
    outcome = submit(ada, {(LIST, "vip"): True, (CONSENT, "no-such-consent"): True,
                           (CONSENT, "card"): True, (LIST, "no-such-list"): True})
    db.session.commit()

    assert outcome.withdrawn == [] and outcome.pending is None
    assert state(ada) == before and state(bob) == bob_before
    assert mails_to(ada) == []


def test_a_staff_only_list_the_contact_is_on_can_be_left(world):
    ada = world.ada
    lists.set_subscription(ada, world.vip, True, method="staff", actor="agent")
    db.session.commit()
    assert page_for(ada).mailing_list("vip") is not None

    submit(ada, {(LIST, "vip"): False})
    db.session.commit()
    assert state(ada)["lists"]["vip"] == "unsubscribed"
    assert page_for(ada).mailing_list("vip") is None


@pytest.mark.parametrize("how", ["outside the audience", "page disabled"])
def test_without_the_full_page_only_the_email_options_are_offered(world, how):
    ada = world.ada
    if how == "outside the audience":
        ada.region = "US"
    else:
        configure(page_enabled=False)
    db.session.commit()

    page = page_for(ada)
    assert not page.full and page.consents == [] and page.policy_html == ""
    assert {kind for kind, _ref in page.current()} == {LIST, MARKETING}
    before = state(ada)
    outcome = submit(ada, {(CONSENT, "partners"): True, (CONSENT, "tracking"): False,
                           (RESTRICTION, ""): True, (ERASURE, ""): True})
    db.session.commit()
    assert outcome.withdrawn == [] and outcome.pending is None
    assert state(ada) == before
    # The email options still work.
    submit(ada, {(LIST, "news"): False})
    db.session.commit()
    assert state(ada)["lists"]["news"] == "unsubscribed"


def test_a_consent_is_offered_only_where_its_display_condition_holds(world):
    ada = world.ada
    assert page_for(ada).consent("card") is None
    contacts.set_field_value(ada, world.stage, "Ready to buy")
    db.session.commit()
    assert page_for(ada).consent("card") is not None


def test_a_default_selected_consent_stays_not_asked_until_confirmed(world):
    ada = world.ada
    choice = page_for(ada).consent("partners")
    assert choice.preselected is True and choice.state is None
    assert (CONSENT, "partners") not in page_for(ada).current()

    # Submitting the page as shown is a grant, so it waits for the mailbox like any other.
    outcome = submit(ada, {(CONSENT, "partners"): True})
    db.session.commit()
    assert "partners" not in state(ada)["consents"]
    assert [(i.kind, i.ref, i.value) for i in outcome.pending.changes()] == [
        (CONSENT, "partners", True)]
    changes.confirm(ada, outcome.pending.public_id)
    db.session.commit()
    assert state(ada)["consents"]["partners"] == ("granted", 1)


# --- Storage consents (P5) ------------------------------------------------------------------


@pytest.fixture
def card_on_file(world):
    """Ada may be asked about her card, agreed to its storage, and staff stored it."""
    ada = world.ada
    contacts.set_field_value(ada, world.stage, "ready to buy")
    contacts.set_field_value(ada, world.card.field, "4111111111111111")
    consent.decide(ada, world.card.current_version, True, method="test", actor="test")
    db.session.commit()
    return ada


def _raw_card(contact: Contact) -> list:
    return db.session.execute(
        sa.select(contacts.FieldValue.ciphertext, contacts.FieldValue.masked)
        .where(contacts.FieldValue.contact_id == contact.id)
        .where(contacts.FieldValue.field_id == sa.select(contacts.FieldDefinition.id)
               .where(contacts.FieldDefinition.name == "card_number").scalar_subquery())
    ).all()


def test_a_storage_revoke_locks_the_field_at_once_and_its_value_dies_with_the_window(
    world, card_on_file
):
    ada = card_on_file
    assert contacts.field_value(ada, "card_number") == "••••••••••••1111"
    submit(ada, {(CONSENT, "card"): False})
    db.session.commit()

    # Locked at once: nobody sees it, and staff cannot store a new value.
    assert contacts.field_value(ada, "card_number", reveal=True) is None
    with pytest.raises(contacts.ContactError, match="withdrew consent"):
        contacts.set_field_value(ada, world.card.field, "5500000000000004")
    db.session.rollback()
    # Within the undo window the value is kept (the undo could still restore access).
    window = timedelta(hours=48)
    assert consent.purge_withdrawn_values(window) == 0
    assert len(_raw_card(ada)) == 1
    # Once the window has closed, the raw database value is gone.
    assert consent.purge_withdrawn_values(window, now=utcnow() + window
                                          + timedelta(seconds=1)) == 1
    db.session.commit()
    assert _raw_card(ada) == []
    assert [e.action for e in events_of(ada)][-1] == "value_destroyed"


def test_undoing_a_storage_revoke_in_time_keeps_the_value(world, card_on_file):
    ada = card_on_file
    outcome = submit(ada, {(CONSENT, "card"): False})
    db.session.commit()
    changes.undo(ada, outcome.undo.public_id)
    db.session.commit()

    window = timedelta(hours=48)
    assert consent.purge_withdrawn_values(window, now=utcnow() + 2 * window) == 0
    assert contacts.field_value(ada, "card_number", reveal=True) == "4111111111111111"


# --- Proof -----------------------------------------------------------------------------------


def test_ledger_events_record_method_text_version_digest_rule_version_and_evidence(world):
    ada = world.ada
    shown = configure(audience_rule=EU, policy_html="<p>Version shown.</p>").version
    outcome = submit(ada, {(CONSENT, "partners"): True, (CONSENT, "tracking"): False})
    db.session.commit()
    # The settings move on before Ada confirms: the event names the version she was shown.
    configure(policy_html="<p>Later.</p>")
    changes.confirm(ada, outcome.pending.public_id, evidence=EVIDENCE)
    db.session.commit()

    events = {e.subject_ref: e for e in events_of(ada) if e.subject_type == "consent"
              and e.method in ("page", "page+email")}
    granted, revoked = events["partners"], events["tracking"]
    assert (granted.action, granted.method, granted.actor) == ("granted", "page+email", "contact")
    assert granted.evidence_ref == f"pending:{outcome.pending.public_id}"
    assert (revoked.action, revoked.method) == ("revoked", "page")
    for event, definition in ((granted, world.partners), (revoked, world.tracking)):
        version = definition.current_version
        assert event.text_version == version.number
        assert event.text_sha256 == version.text_sha256
        assert event.rule_version == shown
        assert event.language == "en"
        assert event.evidence_digest
        evidence = db.session.get(LedgerEvidence, event.id)
        assert evidence.ip_address == "203.0.113.7"
        assert evidence.user_agent == "Mozilla/5.0 (test)"
    report = ledger.verify()
    assert report.ok, report.problem


# --- Two confirmations at once (PostgreSQL) ----------------------------------------------------


def _committed_contact(base_app) -> tuple[int, str, str]:
    """Commit a contact with a pending grant for real; return its id, slug and change id."""
    suffix = secrets.token_hex(4)
    with base_app.app_context():
        mailing_list = lists.create_list(f"race-{suffix}", f"Race {suffix}")
        contact = add_contact(f"race-{suffix}@example.com")
        db.session.commit()
        outcome = submit(contact, {(LIST, mailing_list.slug): True})
        db.session.commit()
        return contact.id, mailing_list.slug, outcome.pending.public_id


def _clean_up(base_app, contact_id: int, slug: str) -> None:
    """Delete what can be deleted; the ledger keeps its events (they name no one)."""
    with base_app.app_context():
        db.session.execute(sa.delete(OutboxMessage).where(OutboxMessage.contact_id == contact_id))
        db.session.execute(sa.delete(PendingChange).where(PendingChange.contact_id == contact_id))
        db.session.execute(sa.delete(Undo).where(Undo.contact_id == contact_id))
        db.session.execute(sa.delete(lists.Subscription)
                           .where(lists.Subscription.contact_id == contact_id))
        db.session.execute(sa.delete(Contact).where(Contact.id == contact_id))
        db.session.execute(sa.delete(lists.MailingList).where(lists.MailingList.slug == slug))
        db.session.commit()


@pytest.mark.parametrize("join", [True, False], ids=["join", "leave"])
def test_a_double_click_on_the_save_button_acts_once(base_app, join):
    # R5: the second press of a save reads the page the first had read, before the first
    # committed; it must see the first's result, not ask (or withdraw and mail) again.
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers; the race is PostgreSQL's")
        engine = db.engine
    suffix = secrets.token_hex(4)
    with base_app.app_context():
        mailing_list = lists.create_list(f"race-{suffix}", f"Race {suffix}")
        contact = add_contact(f"race-{suffix}@example.com")
        if not join:
            lists.set_subscription(contact, mailing_list, True, method="test", actor="test")
        contact_id, slug = contact.id, mailing_list.slug
        db.session.commit()
    errors = []

    def press(stamp: str, page=None) -> None:
        contact = db.session.get(Contact, contact_id)
        page = page or page_for(contact)  # read, as the save view reads it, before any lock
        changes.submit(contact, {(LIST, slug): join}, versions={}, stamp=stamp, language="en",
                       evidence=EVIDENCE, page=page)

    def second_press(stamp: str) -> None:
        try:
            with base_app.app_context():
                try:
                    press(stamp)
                    db.session.commit()
                except changes.StaleForm:
                    db.session.rollback()
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    try:
        with base_app.app_context():
            page = page_for(db.session.get(Contact, contact_id))
            press(page.stamp(), page)  # the first press, not committed yet
            thread = threading.Thread(target=second_press, args=(page.stamp(),))
            thread.start()
            with engine.connect() as probe:
                waiting_for_a_lock(probe, timeout=5)  # the second press waits for the first
            db.session.commit()
            thread.join(timeout=30)
        assert not errors, errors
        with base_app.app_context():
            mails = [m.subject for m in db.session.scalars(
                sa.select(OutboxMessage).where(OutboxMessage.contact_id == contact_id))]
            if join:
                assert mails == ["Please confirm your choices"]
                assert db.session.scalar(sa.select(sa.func.count()).select_from(PendingChange)
                                         .where(PendingChange.contact_id == contact_id)) == 1
            else:
                assert mails == ["Your choices were saved"]
                assert db.session.scalar(sa.select(sa.func.count()).select_from(Undo)
                                         .where(Undo.contact_id == contact_id)) == 1
                left = [e for e in ledger.history(
                    db.session.get(Contact, contact_id).public_id)
                    if e.subject_type == "subscription" and e.value_to == "unsubscribed"]
                assert len(left) == 1
    finally:
        _clean_up(base_app, contact_id, slug)


def test_two_simultaneous_confirmations_apply_once(base_app):
    # Commits for real (no rollback fixture), from two threads at the same moment.
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers; the race is PostgreSQL's")
    contact_id, slug, public_id = _committed_contact(base_app)
    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def confirm() -> None:
        try:
            with base_app.app_context():
                contact = db.session.get(Contact, contact_id)
                barrier.wait(timeout=10)
                status, _change = changes.confirm(contact, public_id, evidence=EVIDENCE)
                db.session.commit()
                results.append(status)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=confirm) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        assert sorted(results) == ["already_applied", "applied"]
        with base_app.app_context():
            contact = db.session.get(Contact, contact_id)
            joined = [e for e in ledger.history(contact.public_id)
                      if e.subject_type == "subscription"]
            assert [(e.subject_ref, e.value_to) for e in joined] == [(slug, "subscribed")]
            receipts = [m for m in db.session.scalars(
                sa.select(OutboxMessage).where(OutboxMessage.contact_id == contact_id)
            ) if m.subject == "Your changes are confirmed"]
            assert len(receipts) == 1
            report = ledger.verify()
            assert report.ok, report.problem
    finally:
        _clean_up(base_app, contact_id, slug)
