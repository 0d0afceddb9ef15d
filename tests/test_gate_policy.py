"""The gate's email rules (M4, M6) under each campaign policy: every category, for a contact at
every status in every state that matters (plain, processing stopped, erasure requested, address
suppressed, erased), and the policy as the setting staff save, read again at hand-off."""

import pytest
import sqlalchemy as sa
from test_gate import PARTNER
from test_gate import STAFF
from test_gate import World
from test_gate import erase
from test_gate import set_policy

from portal import doi
from portal import gate
from portal import outbox
from portal import settings
from portal import suppression
from portal.contacts import OPT_OUTS
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.settings import SettingsVersion

CONDITIONS = ("plain", "processing_stopped", "erasure_requested", "suppressed", "erased")
#: M4: which statuses each policy lets campaigns go to.
ADMITTED = {
    "double": {OptIn.DOUBLE},
    "double_single_user": {OptIn.DOUBLE, OptIn.SINGLE_USER},
    "double_single_user_single_webform": {OptIn.DOUBLE, OptIn.SINGLE_USER, OptIn.SINGLE_WEBFORM},
}


def expected(category: str, status: OptIn, policy: str, condition: str) -> bool:
    """M6, read from PRODUCT.md, for a contact subscribed to the campaign's list, who granted
    the partner consent and whose message the reply answers."""
    if category == "internal":
        return True  # mail to staff, about no contact
    if condition == "erased":
        return False  # the receipt queued before the erasure is tested in test_gate
    if category == "erasure_receipt":
        return True
    if condition == "suppressed":
        return False
    if category in ("own_action", "reply"):
        return True
    if condition in ("processing_stopped", "erasure_requested"):
        return False
    if category == "campaign":
        return status in ADMITTED[policy]
    if category == "partner":
        return True  # the consent is granted; the opt-in status is about mail to the contact
    return status not in OPT_OUTS  # notice, workflow, auto-reply, ad hoc


def put_in(contact, condition: str) -> str:
    """Bring a contact into a condition; return the address mail to it goes to."""
    address = contact.email
    if condition == "processing_stopped":
        # Set directly: stopping from the page also opts out, and this test wants every status.
        contact.processing_stopped_at = utcnow()
    elif condition == "erasure_requested":
        contact.erasure_requested_at = utcnow()
    elif condition == "suppressed":
        suppression.suppress(address, "hard bounce")
    elif condition == "erased":
        erase(contact)
    return address


def test_the_expectations_cover_every_category_policy_and_status():
    assert set(ADMITTED) == set(settings.CAMPAIGN_POLICIES)
    assert {c.value for c in gate.Category} == {
        "own_action",
        "reply",
        "campaign",
        "notice",
        "workflow",
        "auto_reply",
        "ad_hoc",
        "partner",
        "erasure_receipt",
        "internal",
    }


@pytest.mark.parametrize("policy", sorted(ADMITTED))
def test_every_category_for_every_status_and_condition(app, policy):
    world = World()
    set_policy(policy)
    people = {}
    for condition in CONDITIONS:
        for status in OptIn:
            contact = world.contact(f"{condition}-{status}@example.test", status.value)
            people[condition, status] = (contact, put_in(contact, condition))
    db.session.flush()

    mismatches = []
    for (condition, status), (contact, address) in people.items():
        for category in gate.Category:
            recipient = {"partner": PARTNER, "internal": STAFF}.get(category.value, address)
            decision = world.decide(category.value, contact, recipient=recipient)
            if decision.allowed != expected(category.value, status, policy, condition):
                mismatches.append((category.value, status.value, condition, decision.reason))
            assert decision.allowed or decision.explanation
    assert mismatches == []


def test_the_policy_staff_save_decides_at_hand_off(app, smtp):
    world = World()
    set_policy("double_single_user")
    single = world.contact("single@example.test", "single_user")
    row = outbox.enqueue(
        category="campaign",
        contact=single,
        recipient=single.email,
        list_id=world.news.id,
        subject="News",
        text_body="Hello",
    )
    assert row.status == "queued"
    db.session.commit()

    set_policy("double")  # staff narrow the policy before the worker gets to the message
    db.session.commit()
    outbox.work(once=True)

    assert smtp.to("single@example.test") == []
    db.session.refresh(row)
    assert (row.status, row.reason) == (
        "refused",
        "refused at hand-off: the campaign policy does not admit the contact's opt-in status",
    )


def test_the_default_policy_is_double_opt_in_only(app):
    world = World()
    assert settings.values()["campaign_policy"] == "double"
    assert world.decide("campaign", world.contact("d@example.test", "double")).allowed
    for status in ("single_user", "single_webform"):
        decision = world.decide("campaign", world.contact(f"{status}@example.test", status))
        assert decision.reason == "policy"


def test_an_unknown_policy_in_the_settings_admits_double_only(app):
    world = World()
    with pytest.raises(ValueError, match="campaign_policy"):
        settings.save({"campaign_policy": "everyone"}, based_on=0, author="t")
    # A row written some other way (by hand, by an older version) fails closed.
    db.session.add(
        SettingsVersion(version=1, data={"campaign_policy": "everyone"}, created_by="sql")
    )
    db.session.flush()
    assert world.decide("campaign", world.contact("d@example.test", "double")).allowed
    assert world.decide("campaign", world.contact("s@example.test", "single_user")).reason == (
        "policy"
    )


def test_partner_mail_stops_when_the_contacts_address_is_suppressed(app):
    world = World()
    contact = world.contact("shared@example.test", "double")
    assert world.decide("partner", contact).allowed
    suppression.suppress("shared@example.test", "complaint")
    assert world.decide("partner", contact).reason == "suppressed"


@pytest.mark.parametrize("status", list(OptIn))
def test_the_double_opt_in_request_obeys_the_gate_by_who_asked(app, smtp, status):
    world = World()
    contact = world.contact(f"doi-{status}@example.test", status.value)
    by_staff = doi.send_request(contact, source="staff", actor="staff:1")
    if status in OPT_OUTS:
        assert by_staff.reason == "opted_out"
        own = doi.send_request(contact, source="webform", actor="contact")
        assert own.sent  # the contact's own sign-up is mailed whatever the status (M5)
    elif status is OptIn.DOUBLE:
        assert by_staff.reason == "already_double"
    else:
        assert by_staff.sent
    rows = db.session.scalars(
        sa.select(outbox.OutboxMessage).where(outbox.OutboxMessage.contact_id == contact.id)
    ).all()
    assert all(row.status == "queued" for row in rows)
    assert {row.category for row in rows} <= {"own_action", "notice"}
