"""Mailing lists and subscriptions, each change recorded once in the ledger."""

import pytest
import sqlalchemy as sa

from portal import contacts
from portal import ledger
from portal import lists
from portal.db import db
from portal.ledger import LedgerEvent


@pytest.fixture
def contact(app):
    return contacts.add_contact("ada@example.com", method="test", actor="test")


@pytest.fixture
def newsletter(app):
    return lists.create_list("newsletter", "Monthly newsletter", "Once a month.")


def _subscribe(contact, mailing_list, subscribed=True, **options):
    options = {"method": "page", "actor": "contact", **options}
    return lists.set_subscription(contact, mailing_list, subscribed, **options)


def _subscription_events(contact) -> list[LedgerEvent]:
    return [e for e in ledger.history(contact.public_id) if e.subject_type == "subscription"]


def test_a_list_slug_is_unique(newsletter):
    with pytest.raises(lists.ListError, match="already exists"):
        lists.create_list("newsletter", "Another newsletter")


def test_subscribing_records_one_event(contact, newsletter):
    subscription = _subscribe(contact, newsletter)
    assert subscription.status == "subscribed"
    (event,) = _subscription_events(contact)
    assert (event.subject_ref, event.value_from, event.value_to) == (
        "newsletter",
        None,
        "subscribed",
    )
    assert subscription.event_id == event.id
    assert subscription.changed_at == event.occurred_at


def test_subscribing_twice_changes_nothing(contact, newsletter):
    first = _subscribe(contact, newsletter)
    again = _subscribe(contact, newsletter, method="staff", actor="agent")
    assert again is first
    assert len(_subscription_events(contact)) == 1


def test_unsubscribing_is_recorded_once(contact, newsletter):
    _subscribe(contact, newsletter)
    left = _subscribe(contact, newsletter, False)
    _subscribe(contact, newsletter, False)
    assert left.status == "unsubscribed"
    events = _subscription_events(contact)
    assert [(e.value_from, e.value_to) for e in events] == [
        (None, "subscribed"),
        ("subscribed", "unsubscribed"),
    ]


def test_leaving_a_list_never_joined_records_nothing(contact, newsletter):
    assert _subscribe(contact, newsletter, False) is None
    assert _subscription_events(contact) == []
    assert lists.subscriptions_of(contact) == []


def test_a_subscription_and_its_event_are_one_transaction(contact, newsletter):
    db.session.commit()
    with pytest.raises(RuntimeError):
        with db.session.begin_nested():
            _subscribe(contact, newsletter)
            raise RuntimeError("the request failed after subscribing")
    assert lists.subscriptions_of(contact) == []
    assert _subscription_events(contact) == []
    assert ledger.verify().ok


def test_subscriptions_are_listed_by_list_name(contact, newsletter):
    events = lists.create_list("events", "Events and webinars")
    updates = lists.create_list("updates", "Product updates", public=False)
    for mailing_list in (updates, newsletter, events):
        _subscribe(contact, mailing_list)
    _subscribe(contact, events, False)
    listed = [(s.mailing_list.name, s.status) for s in lists.subscriptions_of(contact)]
    assert listed == [
        ("Events and webinars", "unsubscribed"),
        ("Monthly newsletter", "subscribed"),
        ("Product updates", "subscribed"),
    ]


def test_the_database_refuses_an_unknown_subscription_status(contact, newsletter):
    subscription = _subscribe(contact, newsletter)
    with pytest.raises(sa.exc.IntegrityError):
        with db.session.begin_nested():
            subscription.status = "paused"
            db.session.flush()
