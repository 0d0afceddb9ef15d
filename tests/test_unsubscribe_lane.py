"""The one-click unsubscribe's lane (portal/unsubscribe_lane.py): the common case of a one-click
POST in a few statements, which must answer and record exactly as the full path does, and give
way to it whenever the case is not the common one.

These tests commit for real (the `app` fixture's rolled-back transaction would hold the
connection the lane waits for, so there the lane always gives way): each builds its own
contact and lists under fresh names on the session's database and deletes what it can
afterwards; the ledger keeps its events, which name no one.
"""

import secrets
import threading

import pytest
import sqlalchemy as sa
from flask import request_finished
from flask.testing import FlaskClient
from pg_locks import the_ledger_held

from portal import contacts
from portal import ledger
from portal import lists
from portal import unsubscribe
from portal import unsubscribe_lane
from portal.changes import PendingChange
from portal.contacts import Contact
from portal.db import db
from portal.ledger import Evidence
from portal.ledger import LedgerEvent
from portal.ledger import LedgerEvidence
from portal.webforms import SignupRequest

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
BROWSER = "Mozilla/5.0 (lane test)"
#: What a ledger event's row holds that differs from one event to the next by nature.
PER_EVENT = {"id", "occurred_at", "contact_ref", "hash", "prev_hash"}


@pytest.fixture
def world(base_app):
    """Make committed contacts, each on the lists news and offers (named afresh per test)."""
    made: dict[str, list] = {"contacts": [], "lists": []}
    suffix = secrets.token_hex(4)

    def make(count: int = 1, language: str | None = None):
        with base_app.app_context():
            if not made["lists"]:
                for slug in ("news", "offers"):
                    made["lists"].append(lists.create_list(f"{slug}-{suffix}", slug.title()))
                db.session.commit()
            mailing_lists = [db.session.merge(each) for each in made["lists"]]
            people = []
            for _ in range(count):
                contact = contacts.add_contact(
                    f"lane-{secrets.token_hex(6)}@example.com", method="cli", actor="t",
                    language=language,
                )
                for mailing_list in mailing_lists:
                    lists.set_subscription(contact, mailing_list, True, method="cli", actor="t")
                people.append(contact)
            db.session.commit()
            made["contacts"] += [person.id for person in people]
            return [(person.id, person.public_id) for person in people], [
                (each.id, each.slug) for each in mailing_lists
            ]

    yield make
    with base_app.app_context():
        ids = made["contacts"]
        for model in (SignupRequest, PendingChange, lists.Subscription):
            db.session.execute(sa.delete(model).where(model.contact_id.in_(ids)))
        db.session.execute(sa.delete(Contact).where(Contact.id.in_(ids)))
        db.session.execute(sa.delete(lists.MailingList).where(
            lists.MailingList.id.in_([each.id for each in made["lists"]])))
        db.session.commit()


@pytest.fixture
def full_path_runs(monkeypatch):
    """Count the calls of the full path (unsubscribe.unsubscribe), which still runs as is."""
    calls = []
    real = unsubscribe.unsubscribe

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(unsubscribe, "unsubscribe", counted)
    return calls


def _mail_client(app) -> FlaskClient:
    """A mail client's POST: no cookie, and no application context held open around it."""
    return FlaskClient(app, app.response_class, use_cookies=False)


def _post(app, contact_id: int, list_id: int, **headers):
    with app.app_context():
        contact = db.session.get(Contact, contact_id)
        path = f"/o/{unsubscribe.make_token(contact, db.session.get(lists.MailingList, list_id))}"
    client = _mail_client(app)
    return client.post(path, data=ONE_CLICK, headers={"User-Agent": BROWSER, **headers},
                       environ_base={"REMOTE_ADDR": "198.51.100.4"})


def _status(app, contact_id: int, list_id: int) -> str:
    with app.app_context():
        return db.session.get(lists.Subscription, (contact_id, list_id)).status


def _events(app, public_id: str) -> list[dict]:
    with app.app_context():
        events = db.session.scalars(sa.select(LedgerEvent).where(
            LedgerEvent.contact_ref == public_id, LedgerEvent.method == "one_click"))
        return [{column.key: getattr(event, column.key)
                 for column in LedgerEvent.__table__.columns} for event in events]


def test_the_lane_leaves_the_list_with_one_chained_event_and_its_evidence(
    base_app, world, full_path_runs
):
    [(contact_id, public_id)], [(news, slug), (offers, _)] = world()
    answer = _post(base_app, contact_id, news)
    assert answer.status_code == 200
    assert "You are unsubscribed" in answer.text and "News" in answer.text
    assert "Location" not in answer.headers and answer.headers.getlist("Set-Cookie") == []
    assert answer.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
    assert full_path_runs == []  # the lane did it
    assert _status(base_app, contact_id, news) == "unsubscribed"
    assert _status(base_app, contact_id, offers) == "subscribed"
    [event] = _events(base_app, public_id)
    assert (event["subject_type"], event["subject_ref"], event["action"]) == (
        "subscription", slug, "unsubscribed")
    assert (event["value_from"], event["value_to"], event["actor"], event["evidence_ref"]) == (
        "subscribed", "unsubscribed", "contact", f"list:{slug}")
    with base_app.app_context():
        subscription = db.session.get(lists.Subscription, (contact_id, news))
        assert subscription.event_id == event["id"]
        assert subscription.changed_at == event["occurred_at"]
        evidence = db.session.get(LedgerEvidence, event["id"])
        assert (evidence.ip_address, evidence.user_agent) == ("198.51.100.4", BROWSER)
        head = db.session.get(ledger.LedgerHead, 1)
        report = ledger.verify()
        assert report.ok, report.problem
        assert report.last_event_id == head.last_event_id


def test_a_post_with_no_address_or_browser_known_leaves_the_list_with_no_evidence_row(
    base_app, world
):
    """Nothing personal to keep: the event alone, chained as any (on PostgreSQL the writes
    without the evidence's part are a statement of their own)."""
    [(contact_id, public_id)], [(news, _), _offers] = world()
    with base_app.test_request_context("/o/x", method="POST"):
        assert unsubscribe_lane.leave(public_id, news, Evidence(None, None))
    assert _status(base_app, contact_id, news) == "unsubscribed"
    [event] = _events(base_app, public_id)
    with base_app.app_context():
        assert db.session.get(LedgerEvidence, event["id"]) is None
        assert db.session.get(lists.Subscription, (contact_id, news)).event_id == event["id"]
        assert db.session.get(ledger.LedgerHead, 1).last_event_id >= event["id"]
        assert ledger.verify().ok


def test_the_lane_answers_and_records_exactly_as_the_full_path(
    base_app, world, full_path_runs, monkeypatch
):
    [(first, first_ref), (second, second_ref)], [(news, _), _offers] = world(2)
    by_lane = _post(base_app, first, news)
    assert full_path_runs == []
    monkeypatch.setattr(unsubscribe_lane, "leave", lambda *args: None)
    by_full_path = _post(base_app, second, news)
    assert len(full_path_runs) == 1
    assert by_lane.status_code == by_full_path.status_code == 200
    assert by_lane.data == by_full_path.data
    assert sorted(by_lane.headers.items()) == sorted(by_full_path.headers.items())
    [lane_event], [full_event] = _events(base_app, first_ref), _events(base_app, second_ref)
    assert {k: v for k, v in lane_event.items() if k not in PER_EVENT} == {
        k: v for k, v in full_event.items() if k not in PER_EVENT}
    with base_app.app_context():
        assert ledger.verify().ok


def test_the_answer_is_in_the_contacts_language_with_the_lists_name_in_it(
    base_app, world, full_path_runs
):
    [(contact_id, _)], [(news, _), _offers] = world(language="de")
    with base_app.app_context():
        db.session.get(lists.MailingList, news).translations = {
            "de": {"name": "Neuigkeiten", "description": ""}}
        db.session.commit()
    answer = _post(base_app, contact_id, news)
    assert full_path_runs == []
    assert '<html lang="de">' in answer.text
    assert "Neuigkeiten" in answer.text and "News" not in answer.text


def test_a_renamed_list_is_named_anew_in_the_next_answer(base_app, world, full_path_runs):
    [(first, _), (second, _)], [(news, _), _offers] = world(2)
    assert "News" in _post(base_app, first, news).text
    with base_app.app_context():
        db.session.get(lists.MailingList, news).name = "Monthly letter"
        db.session.commit()
    answer = _post(base_app, second, news)
    assert "Monthly letter" in answer.text
    assert full_path_runs == []


def test_the_change_has_committed_before_the_answer_goes_out(base_app, world):
    [(contact_id, _)], [(news, _), _offers] = world()
    seen = []

    def on_answer(sender, response, **extra):
        # Read through a connection of its own: what any other worker would see now.
        with db.engine.connect() as connection:
            seen.append(connection.scalar(sa.select(lists.Subscription.status).where(
                lists.Subscription.contact_id == contact_id,
                lists.Subscription.list_id == news)))

    request_finished.connect(on_answer, base_app)
    try:
        _post(base_app, contact_id, news)
    finally:
        request_finished.disconnect(on_answer, base_app)
    assert seen == ["unsubscribed"]


def test_a_waiting_sign_up_sends_the_post_down_the_full_path_which_forgets_the_list(
    base_app, world, full_path_runs
):
    [(contact_id, _)], [(news, _), (offers, _)] = world()
    with base_app.app_context():
        db.session.add(SignupRequest(contact_id=contact_id, list_ids=[news, offers]))
        db.session.commit()
    assert _post(base_app, contact_id, news).status_code == 200
    assert len(full_path_runs) == 1
    assert _status(base_app, contact_id, news) == "unsubscribed"
    with base_app.app_context():
        waiting = db.session.scalar(
            sa.select(SignupRequest).where(SignupRequest.contact_id == contact_id))
        assert (waiting.list_ids, waiting.status) == ([offers], "pending")


def test_a_pending_change_sends_the_post_down_the_full_path_and_keeps_other_grants(
    base_app, world, full_path_runs
):
    [(contact_id, public_id)], [(news, _), (_offers, offers_slug)] = world()
    item = {"kind": "list", "ref": offers_slug, "value": True}
    with base_app.app_context():
        db.session.add(PendingChange(contact_id=contact_id, items=[item], rule_version=1,
                                     language="en"))
        db.session.commit()
    assert _post(base_app, contact_id, news).status_code == 200
    assert len(full_path_runs) == 1
    assert _status(base_app, contact_id, news) == "unsubscribed"
    assert len(_events(base_app, public_id)) == 1
    with base_app.app_context():
        change = db.session.scalar(
            sa.select(PendingChange).where(PendingChange.contact_id == contact_id))
        assert (change.items, change.status) == ([item], "pending")


def test_when_the_check_under_the_lock_fails_the_lane_undoes_everything(base_app, world):
    """A pending change that appears after the lane's first read is seen under the lock."""
    [(contact_id, public_id)], [(news, _), _offers] = world()
    with base_app.app_context():
        db.session.add(PendingChange(contact_id=contact_id, items=[], rule_version=1,
                                     language="en"))
        db.session.commit()
        before = db.session.get(ledger.LedgerHead, 1).last_event_id
    with base_app.test_request_context("/o/x", method="POST"):
        # The first read finds the contact subscribed; the pending change stops the update.
        assert unsubscribe_lane.leave(public_id, news, Evidence("192.0.2.1", BROWSER)) is None
    with base_app.app_context():
        assert db.session.get(ledger.LedgerHead, 1).last_event_id == before
        assert db.session.get(LedgerEvent, before + 1) is None
    assert _status(base_app, contact_id, news) == "subscribed"


@pytest.mark.parametrize("case", ["unsubscribed", "erased", "other list", "unknown contact",
                                  "NUL in the browser's name"])
def test_the_lane_gives_way_and_changes_nothing_outside_the_common_case(base_app, world, case):
    [(contact_id, public_id)], [(news, _), _offers] = world()
    evidence = Evidence("192.0.2.1", BROWSER)
    with base_app.app_context():
        contact = db.session.get(Contact, contact_id)
        if case == "unsubscribed":
            lists.set_subscription(contact, db.session.get(lists.MailingList, news), False,
                                   method="cli", actor="t")
        elif case == "erased":
            contact.erased_at = contact.created_at
        elif case == "other list":
            news = news + 10_000
        elif case == "unknown contact":
            public_id = "x" * 22
        else:
            evidence = Evidence("192.0.2.1", "Mozilla\x00")
        db.session.commit()
        before = db.session.get(ledger.LedgerHead, 1).last_event_id
    with base_app.test_request_context("/o/x", method="POST"):
        assert unsubscribe_lane.leave(public_id, news, evidence) is None
    with base_app.app_context():
        assert db.session.get(ledger.LedgerHead, 1).last_event_id == before


def test_two_simultaneous_posts_of_one_link_give_one_event(base_app, world):
    """A mail client that retries at once: both answers say done, the ledger says it once."""
    [(contact_id, public_id)], [(news, _), _offers] = world()
    barrier = threading.Barrier(2)
    answers, errors = [], []

    def post():
        try:
            with base_app.app_context():
                contact = db.session.get(Contact, contact_id)
                token = unsubscribe.make_token(
                    contact, db.session.get(lists.MailingList, news))
            client = _mail_client(base_app)
            barrier.wait(timeout=10)
            answers.append(client.post(f"/o/{token}", data=ONE_CLICK).status_code)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert answers == [200, 200]
    assert len(_events(base_app, public_id)) == 1
    assert _status(base_app, contact_id, news) == "unsubscribed"
    with base_app.app_context():
        assert ledger.verify().ok


@pytest.mark.parametrize("writer", ["the lane", "the session's path"])
def test_a_writer_waiting_for_the_ledger_holds_no_subscription(base_app, world, writer):
    """Every writer locks the ledger's head before the subscription it changes (PostgreSQL),
    so a one-click and a page save of the same list at the same moment cannot deadlock: while
    another transaction holds the head, the waiting writer holds nothing the other may need."""
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite has one write lock for the whole database")
        engine = db.engine
    [(contact_id, public_id)], [(news, _), _offers] = world()

    def write():
        if writer == "the lane":
            with base_app.test_request_context("/o/x", method="POST"):
                assert unsubscribe_lane.leave(public_id, news, Evidence(None, BROWSER))
        else:
            with base_app.app_context():
                lists.set_subscription(
                    db.session.get(Contact, contact_id),
                    db.session.get(lists.MailingList, news), False,
                    method="page", actor="contact")
                db.session.commit()

    with the_ledger_held(engine, write) as probe:
        probe.execute(sa.select(lists.Subscription.status).where(
            lists.Subscription.contact_id == contact_id, lists.Subscription.list_id == news,
        ).with_for_update(nowait=True))
    assert _status(base_app, contact_id, news) == "unsubscribed"


def test_a_failure_inside_the_lane_changes_nothing_and_frees_the_next_post(
    base_app, world, monkeypatch
):
    """The error page, nothing written, and the connection and the writers' queue left free:
    the next POST, from another thread, goes through."""
    [(first, first_ref), (second, _)], [(news, _), _offers] = world(2)

    def broken(*args, **kwargs):
        raise RuntimeError("the disk went away")

    with monkeypatch.context() as patched:
        patched.setattr(ledger, "next_event", broken)
        patched.setitem(base_app.config, "PROPAGATE_EXCEPTIONS", False)  # as in production
        failed = _post(base_app, first, news)
    assert failed.status_code == 500
    assert "Something went wrong on our side" in failed.text
    assert "disk" not in failed.text
    assert _status(base_app, first, news) == "subscribed"
    assert _events(base_app, first_ref) == []
    answers = []
    thread = threading.Thread(target=lambda: answers.append(_post(base_app, second, news)))
    thread.start()
    thread.join(timeout=20)
    assert [answer.status_code for answer in answers] == [200]
    assert _status(base_app, second, news) == "unsubscribed"
