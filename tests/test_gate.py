"""The send gate (M6, R4): one function says whether a message may go, for every category.

The expected decisions are written out here from PRODUCT.md M6, not derived from the code.
"""

import pytest
import sqlalchemy as sa

from portal import consent
from portal import contacts
from portal import gate
from portal import lists
from portal import outbox
from portal import settings
from portal import suppression
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.outbox import OutboxMessage

STATUSES = ("none", "single_user", "single_webform", "double", "optout_user", "optout_contact")
POLICIES = ("double", "double_single_user", "double_single_user_single_webform")
EVERY_STATUS = "none single_user single_webform double optout_user optout_contact"
NOT_OPTED_OUT = "none single_user single_webform double"

PARTNER = "partner@acme.example"
STAFF = "staff@business.example"

#: PRODUCT.md M6, for a contact subscribed to the campaign's list, who granted the partner
#: consent, and whose message the reply answers: (category, campaign policy, statuses allowed).
M6_TABLE = [
    # Mail the contact's own action caused passes every status.
    ("own_action", "double", EVERY_STATUS),
    ("own_action", "double_single_user", EVERY_STATUS),
    ("own_action", "double_single_user_single_webform", EVERY_STATUS),
    # A reply to a message received from the contact passes every status.
    ("reply", "double", EVERY_STATUS),
    ("reply", "double_single_user", EVERY_STATUS),
    ("reply", "double_single_user_single_webform", EVERY_STATUS),
    # Campaigns: a status the policy (M4) admits.
    ("campaign", "double", "double"),
    ("campaign", "double_single_user", "single_user double"),
    ("campaign", "double_single_user_single_webform", "single_user single_webform double"),
    # Notices, workflow, auto-reply and ad-hoc mail: any status but an opt-out.
    ("notice", "double", NOT_OPTED_OUT),
    ("notice", "double_single_user", NOT_OPTED_OUT),
    ("notice", "double_single_user_single_webform", NOT_OPTED_OUT),
    ("workflow", "double", NOT_OPTED_OUT),
    ("workflow", "double_single_user", NOT_OPTED_OUT),
    ("workflow", "double_single_user_single_webform", NOT_OPTED_OUT),
    ("auto_reply", "double", NOT_OPTED_OUT),
    ("auto_reply", "double_single_user", NOT_OPTED_OUT),
    ("auto_reply", "double_single_user_single_webform", NOT_OPTED_OUT),
    ("ad_hoc", "double", NOT_OPTED_OUT),
    ("ad_hoc", "double_single_user", NOT_OPTED_OUT),
    ("ad_hoc", "double_single_user_single_webform", NOT_OPTED_OUT),
    # Partner mail goes to the partner while the named consent is granted; the opt-in status
    # is about email to the contact.
    ("partner", "double", EVERY_STATUS),
    ("partner", "double_single_user", EVERY_STATUS),
    ("partner", "double_single_user_single_webform", EVERY_STATUS),
    # The erasure receipt (of a contact not yet erased) is a receipt of their own action.
    ("erasure_receipt", "double", EVERY_STATUS),
    ("erasure_receipt", "double_single_user", EVERY_STATUS),
    ("erasure_receipt", "double_single_user_single_webform", EVERY_STATUS),
    # Mail to staff about the portal itself does not go to the contact.
    ("internal", "double", EVERY_STATUS),
    ("internal", "double_single_user", EVERY_STATUS),
    ("internal", "double_single_user_single_webform", EVERY_STATUS),
]


def test_the_table_covers_every_category_status_and_policy():
    assert {c for c, _, _ in M6_TABLE} == {c.value for c in gate.Category}
    assert set(STATUSES) == {s.value for s in OptIn}
    assert set(POLICIES) == set(settings.CAMPAIGN_POLICIES)
    pairs = [(c, p) for c, p, _ in M6_TABLE]
    assert len(pairs) == len(set(pairs)) == len(gate.Category) * len(POLICIES)


# --- Helpers ----------------------------------------------------------------------------------


def set_policy(policy: str) -> None:
    latest = settings.current()
    settings.save({"campaign_policy": policy}, based_on=latest.version if latest else 0,
                  author="t")


def add(address: str, status: str = "none") -> contacts.Contact:
    contact = contacts.add_contact(address, method="staff", actor="t")
    if status != "none":
        contacts.record_opt_in(contact, OptIn(status), method="staff", actor="t")
    return contact


def define_partner_consent(slug: str = "share-with-acme") -> consent.ConsentDefinition:
    return consent.define(slug, "custom", "Share with Acme", "Acme may contact you.")


def grant(contact, definition, granted: bool = True) -> None:
    consent.decide(contact, definition.current_version, granted, method="staff", actor="t")


class World:
    """A list, a partner consent, and contacts who joined, granted and wrote to the business."""

    def __init__(self):
        self.news = lists.create_list("news", "News")
        self.acme = define_partner_consent()

    def contact(self, address: str, status: str = "none") -> contacts.Contact:
        contact = add(address)
        lists.set_subscription(contact, self.news, True, method="staff", actor="t")
        grant(contact, self.acme)
        gate.record_inbound(address, self.inbound_id(contact))
        if status != "none":
            contacts.record_opt_in(contact, OptIn(status), method="staff", actor="t")
        return contact

    @staticmethod
    def inbound_id(contact) -> str:
        return f"<question-{contact.public_id}@client.example>"

    def decide(self, category: str, contact, **overrides) -> gate.Decision:
        recipient = {"partner": PARTNER, "internal": STAFF}.get(category, contact.email)
        arguments = {
            "recipient": recipient,
            "contact": contact,
            "list_id": self.news.id if category == "campaign" else None,
            "consent_slug": self.acme.slug if category == "partner" else None,
            "in_reply_to": self.inbound_id(contact) if category == "reply" else None,
            "queued_at": utcnow(),
        }
        arguments.update(overrides)
        return gate.decide(category, **arguments)


@pytest.fixture
def world(app) -> World:
    return World()


def queue(recipient: str, **fields) -> OutboxMessage:
    values = {"category": "notice", "subject": "A message", "text_body": "Hello"}
    values.update(fields)
    return outbox.enqueue(recipient=recipient, **values)


def fresh(row_id: int) -> OutboxMessage:
    db.session.expire_all()
    return db.session.get(OutboxMessage, row_id)


# --- The table --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_every_category_under_every_status_follows_m6(world, policy):
    set_policy(policy)
    people = {status: world.contact(f"{status}@example.test", status) for status in STATUSES}
    expected = {category: set(allowed.split()) for category, p, allowed in M6_TABLE if p == policy}

    decisions = {
        category: {status: world.decide(category, people[status]) for status in STATUSES}
        for category in expected
    }

    allowed = {
        category: {status for status, decision in by_status.items() if decision.allowed}
        for category, by_status in decisions.items()
    }
    assert allowed == expected
    for by_status in decisions.values():
        for decision in by_status.values():
            assert decision.allowed or decision.explanation  # a refusal always says why


def test_refusals_say_why(world):
    set_policy("double")
    opted_out = world.contact("out@example.test", "optout_user")
    single = world.contact("single@example.test", "single_user")

    assert world.decide("notice", opted_out).explanation == "the contact opted out of email"
    assert world.decide("campaign", single).explanation == (
        "the campaign policy does not admit the contact's opt-in status"
    )
    assert gate.decide("notice", recipient="a@example.test", contact=None).allowed is False


def test_a_campaign_needs_membership_of_its_list(world):
    set_policy("double")
    contact = world.contact("member@example.test", "double")
    other = lists.create_list("offers", "Offers")

    assert world.decide("campaign", contact).allowed
    assert world.decide("campaign", contact, list_id=other.id).reason == "not_subscribed"
    assert world.decide("campaign", contact, list_id=None).reason == "not_subscribed"
    lists.set_subscription(contact, world.news, False, method="one_click", actor="contact")
    assert world.decide("campaign", contact).reason == "not_subscribed"


# --- Stopped processing, erasure, suppression -------------------------------------------------

#: M6: stopped processing blocks all but own-action mail and replies.
AFTER_STOP_PROCESSING = {
    "own_action": True,
    "reply": True,
    "campaign": False,
    "notice": False,
    "workflow": False,
    "auto_reply": False,
    "ad_hoc": False,
    "partner": False,
    # A receipt of the contact's own erasure request, and mail to staff, are not blocked.
    "erasure_receipt": True,
    "internal": True,
}


def test_stopped_processing_allows_only_own_action_mail_and_replies(world):
    set_policy("double_single_user_single_webform")
    contact = world.contact("stopped@example.test", "double")
    contacts.stop_processing(contact, method="page", actor="contact")

    decisions = {c.value: world.decide(c.value, contact) for c in gate.Category}

    assert {c: d.allowed for c, d in decisions.items()} == AFTER_STOP_PROCESSING
    assert decisions["notice"].explanation == "the contact stopped the processing of their data"


def erase(contact) -> None:
    """What erasure leaves: no address, a time of erasure, and the address suppressed."""
    address = contact.email
    contact.erased_at = utcnow()
    contact.email = None
    suppression.suppress(address, "erased")


def test_an_erased_contact_gets_only_the_erasure_receipt_queued_before_erasure(app, world, smtp):
    contact = world.contact("gone@example.test", "double")
    before = {
        category: queue("gone@example.test", category=category, contact=contact,
                        in_reply_to=World.inbound_id(contact) if category == "reply" else None)
        for category in ("erasure_receipt", "own_action", "reply", "notice")
    }
    assert {row.status for row in before.values()} == {"queued"}
    db.session.commit()

    erase(contact)
    db.session.commit()
    late_receipt = queue("gone@example.test", category="erasure_receipt", contact=contact)
    db.session.commit()
    outbox.work(once=True)

    assert len(smtp.to("gone@example.test")) == 1
    receipt = smtp.to("gone@example.test")[0].message
    assert receipt["Message-ID"] == before["erasure_receipt"].message_id
    assert fresh(before["erasure_receipt"].id).status == "sent"
    for category in ("own_action", "reply", "notice"):
        row = fresh(before[category].id)
        assert (row.status, row.reason) == (
            "refused", "refused at hand-off: the contact's personal data was erased"
        )
    late = fresh(late_receipt.id)
    assert (late.status, late.reason) == (
        "refused", "refused when queued: the contact's personal data was erased"
    )


def test_an_erased_contact_is_refused_every_kind_of_mail(world):
    contact = world.contact("erased@example.test", "double")
    queued_before = utcnow()
    erase(contact)

    for category in gate.Category:
        if category in (gate.Category.ERASURE_RECEIPT, gate.Category.INTERNAL):
            continue
        decision = world.decide(category.value, contact, recipient="erased@example.test")
        assert decision.reason == "erased", category
    receipt = world.decide("erasure_receipt", contact, recipient="erased@example.test",
                           queued_at=queued_before)
    assert receipt.allowed
    later = world.decide("erasure_receipt", contact, recipient="erased@example.test")
    assert later.reason == "erased"
    assert world.decide("erasure_receipt", contact, recipient="erased@example.test",
                        queued_at=None).reason == "erased"


def test_a_suppressed_address_is_refused(world):
    contact = world.contact("bounced@example.test", "double")
    suppression.suppress("Bounced@Example.TEST", "hard bounce")

    for category in ("own_action", "reply", "campaign", "notice", "workflow", "auto_reply",
                     "ad_hoc"):
        assert world.decide(category, contact).reason == "suppressed", category
    # M6: the suppression list blocks everything except the erasure receipt.
    assert world.decide("erasure_receipt", contact).allowed
    # An address that is no contact's is refused too.
    suppression.suppress("someone@example.test", "complaint")
    assert gate.decide("ad_hoc", recipient="someone@example.test", contact=None).reason == (
        "suppressed"
    )


def test_an_address_suppressed_after_queuing_is_refused_at_hand_off(app, world, smtp):
    contact = world.contact("later@example.test", "double")
    row = queue("later@example.test", contact=contact)
    db.session.commit()

    suppression.suppress("later@example.test", "hard bounce")
    db.session.commit()
    outbox.work(once=True)

    assert smtp.to("later@example.test") == []
    row = fresh(row.id)
    assert (row.status, row.reason) == (
        "refused", "refused at hand-off: the address is on the suppression list"
    )


def test_mail_without_a_contact_to_an_opted_out_contacts_address_is_refused(world):
    world.contact("quiet@example.test", "optout_contact")

    for category in ("ad_hoc", "workflow", "notice"):
        decision = gate.decide(category, recipient="Quiet@Example.test", contact=None)
        assert not decision.allowed, category
    # An address that belongs to no contact has no status to obey.
    assert gate.decide("ad_hoc", recipient="stranger@example.test", contact=None).allowed


# --- Replies ----------------------------------------------------------------------------------


def test_a_reply_to_a_recorded_message_reaches_an_opted_out_contact(app, smtp):
    contact = add("asker@example.test", "optout_contact")
    gate.record_inbound("Asker@Example.test", "<q1@client.example>")
    row = queue("asker@example.test", category="reply", contact=contact,
                in_reply_to="<q1@client.example>", subject="Re: your question")
    assert row.status == "queued"
    db.session.commit()

    outbox.work(once=True)

    [copy] = smtp.to("asker@example.test")
    assert copy.message["Message-ID"] == row.message_id
    assert copy.message["In-Reply-To"] == "<q1@client.example>"
    assert copy.message["References"] == "<q1@client.example>"


def test_a_forged_in_reply_to_is_not_a_reply(app, smtp):
    contact = add("target@example.test", "optout_user")
    other = add("other@example.test")
    gate.record_inbound("other@example.test", "<from-other@client.example>")
    forged = {
        "unknown id": "<made-up@client.example>",
        "another contact's message": "<from-other@client.example>",
        "no id at all": None,
    }
    rows = {
        name: queue("target@example.test", category="reply", contact=contact, in_reply_to=value)
        for name, value in forged.items()
    }
    db.session.commit()

    outbox.work(once=True)

    assert smtp.to("target@example.test") == []
    for name, row in rows.items():
        row = fresh(row.id)
        assert row.status == "refused", name
        assert row.reason == (
            "refused when queued: it does not answer a message received from this contact"
        )
    assert gate.decide("reply", recipient="other@example.test", contact=other,
                       in_reply_to="<from-other@client.example>").allowed


def test_a_reply_is_recognised_only_once_the_inbound_message_is_recorded(app):
    contact = add("early@example.test", "optout_user")
    arguments = dict(recipient="early@example.test", contact=contact,
                     in_reply_to="<q2@client.example>")

    assert gate.decide("reply", **arguments).reason == "not_a_reply"
    gate.record_inbound("early@example.test", "<q2@client.example>")
    assert gate.decide("reply", **arguments).allowed


def test_recording_the_same_inbound_message_twice_keeps_one_row(app):
    add("twice@example.test")
    first = gate.record_inbound("twice@example.test", "<same@client.example>")
    second = gate.record_inbound("twice@example.test", " <same@client.example> ")

    assert first.id == second.id
    assert gate.record_inbound("nobody@example.test", "<x@client.example>") is None


# --- Partner mail -----------------------------------------------------------------------------


def test_partner_mail_needs_the_named_consent_and_stops_after_revocation(app, smtp):
    contact = add("shared@example.test", "double")
    acme = define_partner_consent()
    other = consent.define("share-with-bolt", "custom", "Share with Bolt", "Bolt may call.")
    arguments = dict(recipient=PARTNER, contact=contact, consent_slug=acme.slug)

    assert gate.decide("partner", **arguments).reason == "no_consent"  # never asked
    grant(contact, other)
    assert gate.decide("partner", **arguments).reason == "no_consent"  # another consent
    grant(contact, acme)
    assert gate.decide("partner", **arguments).allowed
    assert gate.decide("partner", **{**arguments, "consent_slug": None}).reason == "no_consent"
    assert gate.decide("partner", **{**arguments, "contact": None}).allowed is False

    row = queue(PARTNER, category="partner", contact=contact, consent_slug=acme.slug,
                subject="A new lead for Acme")
    assert row.status == "queued"
    db.session.commit()
    grant(contact, acme, granted=False)  # the contact revokes before the worker runs
    db.session.commit()
    outbox.work(once=True)

    assert smtp.to(PARTNER) == []
    row = fresh(row.id)
    assert (row.status, row.reason) == (
        "refused",
        "refused at hand-off: the contact has not granted the consent this message relies on",
    )
    assert gate.decide("partner", **arguments).reason == "no_consent"


def test_partner_mail_goes_while_the_consent_is_granted(app, smtp):
    contact = add("lead@example.test")
    acme = define_partner_consent()
    grant(contact, acme)
    row = queue(PARTNER, category="partner", contact=contact, consent_slug=acme.slug)
    db.session.commit()

    outbox.work(once=True)

    [copy] = smtp.to(PARTNER)
    assert copy.message["Message-ID"] == row.message_id


# --- Recording inbound mail from the command line ---------------------------------------------


def inbound_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(gate.InboundMessage))


def test_flask_mail_inbound_records_a_message(app, runner):
    contact = add("writer@example.test", "optout_user")

    result = runner.invoke(args=["mail", "inbound", "Writer@Example.test", "<w1@client.example>"])

    assert result.exit_code == 0, result.output
    assert result.output == "recorded inbound message <w1@client.example>\n"
    assert gate.decide("reply", recipient="writer@example.test", contact=contact,
                       in_reply_to="<w1@client.example>").allowed


@pytest.mark.parametrize(("sender", "message_id", "says"), [
    ("writer@example.test", "w1@client.example", "Message-ID"),
    ("writer@example.test", "<no-domain>", "Message-ID"),
    ("writer@example.test", "<w 1@client.example>", "Message-ID"),
    ("writer@example.test", "<w1@client.example>\r\nX: y", "Message-ID"),
    ("writer@example.test", "<" + "a" * 250 + "@client.example>", "Message-ID"),
    ("stranger@example.test", "<w1@client.example>", "no contact"),
    ("not an address", "<w1@client.example>", "not a valid email address"),
], ids=["no brackets", "no domain", "space", "line break", "too long", "unknown sender",
        "malformed sender"])
def test_flask_mail_inbound_refuses_bad_input_with_one_clear_line(
    app, runner, sender, message_id, says
):
    add("writer@example.test")
    before = inbound_count()

    result = runner.invoke(args=["mail", "inbound", sender, message_id])

    assert result.exit_code != 0
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and says in lines[0]
    assert "Traceback" not in result.output
    assert inbound_count() == before


def test_a_message_id_recorded_from_one_contact_cannot_be_claimed_by_another(app):
    from portal import contacts as contacts_module

    first = contacts_module.add_contact("first@example.com", method="cli", actor="t")
    contacts_module.add_contact("second@example.com", method="cli", actor="t")
    gate.record_inbound(first.email, "<thread-1@crm.example>")
    with pytest.raises(ValueError, match="another sender"):
        gate.record_inbound("second@example.com", "<thread-1@crm.example>")
