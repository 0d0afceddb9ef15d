"""Double opt-in (M2, M3, B9, R1): the mail as received over SMTP, its one-button page, the
24-hour limit, reminders and pruning under frozen time, and the whole-list job."""

import re
import secrets
import time
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token
from test_preferences import BAD_LINK
from test_preferences import BASE_URL
from test_preferences import EXPIRED_LINK
from test_preferences import press_together
from test_preferences import read_form
from test_preferences import text_of

from portal import contact_records
from portal import contacts
from portal import doi
from portal import jobs
from portal import ledger
from portal import lists
from portal import optin
from portal import outbox
from portal import suppression
from portal.contacts import Contact
from portal.contacts import ContactTombstone
from portal.contacts import OptIn
from portal.db import db
from portal.links import make_token
from portal.optin import Event

SUBJECT = "Please confirm you want our email"
REMINDER = "Reminder: please confirm you want our email"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    """Frozen time for the double opt-in module; `advance` moves it on."""

    def __init__(self, monkeypatch):
        self.now = START
        monkeypatch.setattr("portal.doi.utcnow", lambda: self.now)

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def client(app):
    """A browser on HTTPS: Flask-WTF checks the Referer there (SECURITY.md 8)."""
    browser = app.test_client()
    browser.environ_base["HTTP_REFERER"] = "https://localhost/"
    return browser


def add(address: str, status: OptIn = OptIn.NONE, *, method: str = "staff") -> Contact:
    contact = contacts.add_contact(address, method=method, actor="t")
    if status is not OptIn.NONE:
        contacts.record_opt_in(contact, status, method=method, actor="t")
    return contact


def sign_up(address: str) -> Contact:
    """What the web form does for a new address with the marketing box ticked."""
    contact = contacts.add_contact(address, method=doi.WEBFORM_METHOD, actor="contact")
    optin.transition(contact, Event.WEBFORM_TICKED, actor="contact", method=doi.WEBFORM_METHOD)
    assert doi.send_request(contact, source="webform", actor="contact").sent
    return contact


def received(smtp, contact: Contact, subject: str = SUBJECT) -> list:
    outbox.work(once=True)
    return [m.message for m in smtp.to(contact.email) if m.message["Subject"] == subject]


def link_of(message) -> str:
    (url,) = re.findall(rf"{re.escape(BASE_URL)}/d/\S+", text_of(message))
    return url.removeprefix(BASE_URL)


def footprint(contact: Contact) -> tuple:
    db.session.expire_all()
    requests = db.session.scalars(
        sa.select(doi.DoiRequest.status).where(doi.DoiRequest.contact_id == contact.id)
    )
    return (
        db.session.get(Contact, contact.id).opt_in_status,
        sorted(requests),
        len(ledger.history(contact.public_id)),
    )


# --- The mail and its page -----------------------------------------------------------------


def test_the_mail_links_to_a_page_whose_one_button_sets_double_opt_in(app, client, smtp):
    contact = sign_up("ada@example.test")
    db.session.commit()
    (message,) = received(smtp, contact)
    path = link_of(message)
    assert "7 days" in text_of(message)
    assert f'href="{BASE_URL}/d/' in message.get_body(("html",)).get_content()

    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Robots-Tag"] == "noindex"
    action, form = read_form(page.text)
    assert action == path
    assert page.text.count("<button") == 1

    confirmed = client.post(path, data=form)
    assert confirmed.status_code == 200
    assert "Thank you for confirming" in confirmed.text
    assert contact.opt_in_status == OptIn.DOUBLE
    (event,) = [
        e
        for e in ledger.history(contact.public_id)
        if e.subject_type == "opt_in" and e.value_to == "double"
    ]
    assert (event.value_from, event.actor, event.method) == (
        "single_webform",
        "contact",
        "double_opt_in",
    )
    assert event.evidence_ref.startswith("doi:")

    before = footprint(contact)
    again = client.post(path, data=form)
    assert again.status_code == 200
    assert "Already confirmed" in again.text
    assert footprint(contact) == before
    assert "You already confirmed" in client.get(path).text


def test_pressing_the_button_reads_nothing_after_its_commit(app, client, smtp, statements):
    """The thanks and its link to the page are made before the commit: no second transaction
    after it (on SQLite it would take the write lock again)."""
    contact = sign_up("ada@example.test")
    db.session.commit()
    path = link_of(received(smtp, contact)[0])
    _action, form = read_form(client.get(path).text)
    statements.clear()
    answer = client.post(path, data=form)
    assert "Thank you for confirming" in answer.text
    # The commit is the request's last statement (under the `app` fixture, a savepoint's end).
    assert statements[-1].startswith("RELEASE SAVEPOINT")
    assert client.get(re.search(r'href="(/p/[^"]+)"', answer.text).group(1)).status_code == 200


def test_a_scanners_get_and_head_change_nothing(app, client, smtp):
    contact = sign_up("scanned@example.test")
    db.session.commit()
    path = link_of(received(smtp, contact)[0])
    before = footprint(contact)
    scanner = app.test_client()  # no cookie, no Referer
    for _ in range(3):
        assert scanner.get(path).status_code == 200
        assert scanner.head(path).status_code == 200
    assert footprint(contact) == before
    assert before[:2] == ("single_webform", ["pending"])
    # The link still works for the human afterwards.
    action, form = read_form(client.get(path).text)
    client.post(action, data=form)
    assert contact.opt_in_status == OptIn.DOUBLE


def test_bad_and_expired_links_get_the_friendly_page(app, client, smtp, monkeypatch):
    contact = sign_up("links@example.test")
    db.session.commit()
    path = link_of(received(smtp, contact)[0])
    form = read_form(client.get(path).text)[1]
    before = footprint(contact)
    bad = [
        path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB"),
        "/d/nonsense",
        "/d/k1.eyJ9",
        f"/d/{make_token('manage', contact)}",
        f"/d/{make_token('doi', contact, d='not-a-request')}",
    ]
    for target in bad:
        for method in ("GET", "POST"):
            response = client.open(target, method=method, data=form)
            assert response.status_code == 404, (target, method)
            assert BAD_LINK in response.text
    later = time.time() + 8 * 24 * 3600
    monkeypatch.setattr("portal.links.time", SimpleNamespace(time=lambda: later))
    for method in ("GET", "POST"):
        response = client.open(path, method=method, data=form)
        assert response.status_code == 410
        assert EXPIRED_LINK in response.text
    assert footprint(contact) == before


# --- Who is sent what --------------------------------------------------------------------------


def test_at_most_one_request_per_contact_per_24_hours(app, clock, smtp):
    contact = add("once@example.test")
    first = doi.send_request(contact, source="staff", actor="staff:1")
    assert first.sent
    clock.advance(hours=23, minutes=59)
    second = doi.send_request(contact, source="staff", actor="staff:1")
    assert (second.sent, second.reason) == (False, "recently_sent")
    assert "less than 24 hours ago" in second.message
    assert not doi.send_request(contact, source="webform", actor="contact").sent
    db.session.commit()
    assert len(received(smtp, contact)) == 1
    clock.advance(minutes=2)
    assert doi.send_request(contact, source="staff", actor="staff:1").sent
    db.session.commit()
    assert len(received(smtp, contact)) == 2


def test_a_new_address_gets_its_first_request_at_once_and_then_the_24_hour_limit(
    agent_client, client, smtp
):
    contact = add("first-box@example.test")
    db.session.commit()
    record = f"/staff/contacts/{contact.public_id}"

    def staff_press(path: str, data: dict | None = None) -> str:
        token = csrf_token(agent_client.get(record).text)
        answer = agent_client.post(record + path, data={"csrf_token": token, **(data or {})})
        assert answer.status_code == 303
        return agent_client.get(record).text

    assert "The double opt-in email is on its way." in staff_press("/double-opt-in")
    staff_press("/email", {"email": "second-box@example.test"})
    # The new mailbox has had nothing yet: the request goes there at once.
    assert "The double opt-in email is on its way." in staff_press("/double-opt-in")
    # A second press within 24 hours is refused, as for any address.
    refused = staff_press("/double-opt-in")
    assert (
        "No double opt-in email was sent: a double opt-in email went to the contact less than "
        "24 hours ago." in refused
    )
    outbox.work(once=True)
    assert len(smtp.to("first-box@example.test")) == len(smtp.to("second-box@example.test")) == 1
    (message,) = received(smtp, db.session.get(Contact, contact.id))
    assert message["To"] == "second-box@example.test"

    # Its link confirms the new address.
    path = link_of(message)
    _action, form = read_form(client.get(path).text)
    assert "Thank you for confirming" in client.post(path, data=form).text
    assert db.session.get(Contact, contact.id).opt_in_status == OptIn.DOUBLE


def test_an_address_changed_away_and_back_within_24_hours_gets_no_second_request(
    app, clock, smtp
):
    contact = add("home@example.test")
    assert doi.send_request(contact, source="staff", actor="staff:1").sent
    clock.advance(hours=1)
    contact_records.change_email(contact, "away@example.test", actor="staff:1")
    assert doi.send_request(contact, source="staff", actor="staff:1").sent
    clock.advance(hours=1)
    contact_records.change_email(contact, "home@example.test", actor="staff:1")
    # Home had its mail two hours ago: neither staff nor a sign-up sends it another.
    for source in ("staff", "webform"):
        again = doi.send_request(contact, source=source, actor="staff:1")
        assert (again.sent, again.reason) == (False, "recently_sent")
    db.session.commit()
    outbox.work(once=True)
    assert len(smtp.to("home@example.test")) == len(smtp.to("away@example.test")) == 1
    # A day after home's mail, it may have another.
    clock.advance(hours=22, minutes=1)
    assert doi.send_request(contact, source="staff", actor="staff:1").sent
    db.session.commit()
    outbox.work(once=True)
    assert len(smtp.to("home@example.test")) == 2


def test_a_request_mailed_before_addresses_were_recorded_still_counts(app, clock, smtp):
    # A row from before migration 0012 has no address digest: the latest request counts for
    # the current address unless the address changed after it.
    contact = add("older@example.test")
    first = doi.send_request(contact, source="staff", actor="staff:1")
    first.request.sent_to = None
    clock.advance(hours=1)
    assert doi.send_request(contact, source="staff", actor="staff:1").reason == "recently_sent"
    contact_records.change_email(contact, "newer@example.test", actor="staff:1")
    assert doi.send_request(contact, source="staff", actor="staff:1").sent


@pytest.mark.parametrize("status", [OptIn.OPTOUT_USER, OptIn.OPTOUT_CONTACT])
@pytest.mark.parametrize("source", ["staff", "list"])
def test_staff_and_list_requests_skip_opted_out_contacts_with_a_reason(app, smtp, status, source):
    contact = add(f"out-{source}@example.test", status)
    result = doi.send_request(contact, source=source, actor="staff:1")
    assert (result.sent, result.reason) == (False, "opted_out")
    assert result.message == "No double opt-in email was sent: the contact opted out."
    db.session.commit()
    assert received(smtp, contact) == []


def test_a_contact_already_double_is_not_asked_again(app, smtp):
    contact = add("double@example.test", OptIn.DOUBLE)
    for source in doi.SOURCES:
        assert doi.send_request(contact, source=source, actor="t").reason == "already_double"
    with pytest.raises(ValueError, match="source"):
        doi.send_request(contact, source="api", actor="t")


def test_a_web_form_sign_up_of_an_opted_out_address_changes_nothing_until_confirmed(
    app, client, smtp
):
    contact = add("back@example.test", OptIn.OPTOUT_CONTACT)
    optin.transition(contact, Event.WEBFORM_TICKED, actor="contact", method="webform")
    assert doi.send_request(contact, source="webform", actor="contact").sent
    db.session.commit()
    assert contact.opt_in_status == OptIn.OPTOUT_CONTACT
    path = link_of(received(smtp, contact)[0])
    client.get(path)
    assert contact.opt_in_status == OptIn.OPTOUT_CONTACT
    client.post(path, data=read_form(client.get(path).text)[1])
    assert contact.opt_in_status == OptIn.DOUBLE


@pytest.mark.parametrize(
    "opt_out",
    [
        (Event.CONTACT_OPT_OUT, "contact", None, OptIn.OPTOUT_CONTACT),
        (Event.STAFF_OPT_OUT, "staff", "asked by phone", OptIn.OPTOUT_USER),
    ],
    ids=["by-the-contact", "by-staff"],
)
def test_an_opt_out_expires_the_request_mailed_before_it(app, client, smtp, opt_out):
    """R5: a later "no" outranks the "yes" an old confirmation link would give."""
    event, actor, reason, status_after = opt_out
    contact = add("changed-mind@example.test", OptIn.SINGLE_WEBFORM)
    assert doi.send_request(contact, source="staff", actor="t").sent
    db.session.commit()
    path = link_of(received(smtp, contact)[0])
    form = read_form(client.get(path).text)[1]
    optin.transition(contact, event, actor=actor, method="test", reason=reason)
    db.session.commit()
    for method in ("GET", "POST"):
        answer = client.open(path, method=method, data=form)
        assert answer.status_code == 410
        assert EXPIRED_LINK in answer.text
    assert footprint(contact)[:2] == (status_after, ["expired"])


def test_a_sign_up_after_an_opt_out_is_confirmed_until_the_next_opt_out(
    app, client, clock, smtp
):
    """M5: the web form's request for an opted-out address stays open; another "no" ends it."""
    contact = add("twice@example.test", OptIn.OPTOUT_CONTACT)

    def sign_up_again() -> tuple[str, dict]:
        optin.transition(contact, Event.WEBFORM_TICKED, actor="contact", method="webform")
        assert doi.send_request(contact, source="webform", actor="contact").sent
        db.session.commit()
        path = link_of(received(smtp, contact)[-1])
        return path, read_form(client.get(path).text)[1]

    path, form = sign_up_again()
    assert client.post(path, data=form).status_code == 200
    assert contact.opt_in_status == OptIn.DOUBLE
    optin.transition(contact, Event.CONTACT_OPT_OUT, actor="contact", method="page")
    db.session.commit()
    clock.advance(days=2)  # past the 24-hour limit
    path, form = sign_up_again()
    optin.transition(contact, Event.CONTACT_OPT_OUT, actor="contact", method="page")
    db.session.commit()
    assert client.post(path, data=form).status_code == 410
    assert contact.opt_in_status == OptIn.OPTOUT_CONTACT


def test_a_suppressed_address_is_sent_nothing(app, smtp):
    contact = add("gone@example.test")
    suppression.suppress(contact.email, "test")
    result = doi.send_request(contact, source="webform", actor="contact")
    assert (result.sent, result.reason) == (False, "suppressed")
    assert "suppression list" in result.message


# --- Reminders and pruning under frozen time ------------------------------------------------


def test_reminders_are_capped_and_wait_their_time(app, runner, clock, smtp, monkeypatch):
    contact = sign_up("remind@example.test")
    opted_out = sign_up("stop@example.test")
    optin.transition(opted_out, Event.CONTACT_OPT_OUT, actor="contact", method="page")
    db.session.commit()

    clock.advance(hours=47)
    result = runner.invoke(args=["doi", "remind"])
    assert result.exit_code == 0, result.output
    assert received(smtp, contact, REMINDER) == []

    clock.advance(hours=2)
    result = runner.invoke(args=["doi", "remind"])
    assert "reminder sent: 1" in result.output
    (reminder,) = received(smtp, contact, REMINDER)
    assert "here is the link once more" in text_of(reminder)
    assert received(smtp, opted_out, REMINDER) == []  # never nag an opted-out contact

    clock.advance(days=10)
    runner.invoke(args=["doi", "remind"])
    assert len(received(smtp, contact, REMINDER)) == 1  # the default cap is one

    monkeypatch.setitem(app.config, "PORTAL_DOI_MAX_REMINDERS", 2)
    runner.invoke(args=["doi", "remind"])
    runner.invoke(args=["doi", "remind"])
    assert len(received(smtp, contact, REMINDER)) == 2

    # The reminder's link confirms like the first one; a confirmed contact is reminded no more.
    client = app.test_client()
    client.environ_base["HTTP_REFERER"] = "https://localhost/"
    path = link_of(received(smtp, contact, REMINDER)[-1])
    client.post(path, data=read_form(client.get(path).text)[1])
    assert contact.opt_in_status == OptIn.DOUBLE
    monkeypatch.setitem(app.config, "PORTAL_DOI_MAX_REMINDERS", 5)
    clock.advance(days=10)
    runner.invoke(args=["doi", "remind"])
    assert len(received(smtp, contact, REMINDER)) == 2


def test_a_reminder_the_gate_refuses_is_counted_as_skipped(app, runner, clock, smtp):
    contact = add("paused@example.test")
    assert doi.send_request(contact, source="staff", actor="staff:1").sent
    # Set directly: stopping from the page would opt the contact out as well.
    contact.processing_stopped_at = clock.now
    db.session.commit()
    clock.advance(hours=49)
    result = runner.invoke(args=["doi", "remind"])
    assert "the contact stopped the processing of their data: 1" in result.output
    assert received(smtp, contact, REMINDER) == []


def test_no_reminder_when_the_cap_is_zero(app, runner, clock, smtp, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_DOI_MAX_REMINDERS", 0)
    contact = sign_up("never@example.test")
    db.session.commit()
    clock.advance(days=5)
    runner.invoke(args=["doi", "remind"])
    assert received(smtp, contact, REMINDER) == []


def test_unconfirmed_web_form_sign_ups_are_pruned_after_the_configured_time(
    app, runner, clock, smtp, monkeypatch
):
    news = lists.create_list("news", "News")
    stranger = sign_up("stranger@example.test")
    lists.set_subscription(stranger, news, True, method=doi.WEBFORM_METHOD, actor="contact")
    known = add("known@example.test")  # created by staff, then signed up on the web form
    optin.transition(known, Event.WEBFORM_TICKED, actor="contact", method="webform")
    doi.send_request(known, source="webform", actor="contact")
    confirmed = sign_up("confirmed@example.test")
    (request_id,) = db.session.scalars(
        sa.select(doi.DoiRequest.public_id).where(doi.DoiRequest.contact_id == confirmed.id)
    )
    assert doi.confirm(confirmed, request_id)[0] == "confirmed"
    asked_by_staff = add("asked@example.test")
    doi.send_request(asked_by_staff, source="staff", actor="staff:1")
    db.session.commit()
    stranger_ref, stranger_id = stranger.public_id, stranger.id
    assert len(received(smtp, stranger)) == 1

    clock.advance(days=29, hours=23)
    result = runner.invoke(args=["doi", "prune"])
    assert result.exit_code == 0 and "0 item(s)" in result.output, result.output
    assert db.session.get(Contact, stranger_id) is not None

    clock.advance(hours=2)
    result = runner.invoke(args=["doi", "prune"])
    assert "unconfirmed sign-up deleted: 1" in result.output
    assert "sign-up expired, contact kept: 1" in result.output
    db.session.expire_all()
    assert db.session.get(Contact, stranger_id) is None
    assert db.session.get(ContactTombstone, stranger_ref) is not None
    assert ledger.history(stranger_ref)[-1].action == "deleted"
    assert not db.session.scalars(
        sa.select(outbox.OutboxMessage.id).where(
            outbox.OutboxMessage.recipient == "stranger@example.test"
        )
    ).all()
    assert ledger.verify().ok
    for kept in (known, confirmed, asked_by_staff):
        assert db.session.get(Contact, kept.id) is not None
    assert footprint(known)[1] == ["expired"]
    assert footprint(confirmed)[:2] == ("double", ["confirmed"])

    monkeypatch.setitem(app.config, "PORTAL_DOI_PRUNE_AFTER_DAYS", 400)
    late = sign_up("late@example.test")
    db.session.commit()
    clock.advance(days=300)
    runner.invoke(args=["doi", "prune"])
    assert db.session.get(Contact, late.id) is not None


# --- A whole mailing list ----------------------------------------------------------------------


def test_staff_send_to_a_whole_list_and_see_how_many_were_skipped_and_why(
    app, agent_client, clock, smtp
):
    news = lists.create_list("news", "News")
    people = {status: add(f"{status}@example.test", status) for status in OptIn}
    recent = add("recent@example.test")
    doi.send_request(recent, source="staff", actor="staff:1")
    left = add("left@example.test")
    for contact in (*people.values(), recent, left):
        lists.set_subscription(contact, news, True, method="staff", actor="t")
    lists.set_subscription(left, news, False, method="page", actor="contact")
    db.session.commit()
    clock.advance(hours=1)

    page = agent_client.get("/staff/double-opt-in")
    assert page.status_code == 200
    assert "News" in page.text
    refused = agent_client.post(
        "/staff/double-opt-in", data={"csrf_token": csrf_token(page.text), "list_id": "999999"}
    )
    assert refused.status_code == 200
    assert "Choose one of the lists." in refused.text

    started = agent_client.post(
        "/staff/double-opt-in", data={"csrf_token": csrf_token(page.text), "list_id": str(news.id)}
    )
    assert started.status_code == 303
    job_path = started.headers["Location"]
    assert "Status: queued" in agent_client.get(job_path).text
    assert jobs.work(once=True) == 1

    progress = agent_client.get(job_path).text
    assert "Status: done" in progress
    assert "7 of 7 items done." in progress
    assert "sent: 3" in progress
    assert "skipped: the contact opted out: 2" in progress
    assert "skipped: the contact already confirmed a double opt-in: 1" in progress
    assert (
        "skipped: a double opt-in email went to the contact less than 24 hours ago: 1" in progress
    )
    outbox.work(once=True)
    mailed = {m.rcpt_tos[0] for m in smtp.messages if m.message["Subject"] == SUBJECT}
    assert mailed == {
        "none@example.test",
        "single_user@example.test",
        "single_webform@example.test",
        "recent@example.test",
    }


def test_the_list_job_can_be_run_from_the_command_line(app, runner, smtp):
    news = lists.create_list("weekly", "Weekly")
    member = add("member@example.test")
    lists.set_subscription(member, news, True, method="staff", actor="t")
    db.session.commit()
    result = runner.invoke(args=["doi", "send-list", "weekly"])
    assert result.exit_code == 0, result.output
    assert "sent: 1" in result.output
    assert len(received(smtp, member)) == 1
    assert runner.invoke(args=["doi", "send-list", "nope"]).exit_code != 0
    result = runner.invoke(args=["doi", "send", "member@example.test"])
    assert result.exit_code != 0 and "less than 24 hours ago" in result.output
    assert "no contact" in runner.invoke(args=["doi", "send", "x@example.test"]).output


# --- Two confirmations at once (PostgreSQL) ----------------------------------------------------


def test_two_simultaneous_confirmations_give_one_event(base_app, smtp):
    # Commits for real (no rollback fixture): two browsers press the button at the same moment.
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers; the race is PostgreSQL's")
        address = f"race-{secrets.token_hex(4)}@example.test"
        contact = sign_up(address)
        db.session.commit()
        contact_id, public_ref = contact.id, contact.public_id
        path = link_of(received(smtp, contact)[0])

    browsers = []
    for _ in range(2):
        browser = base_app.test_client()
        browser.environ_base["HTTP_REFERER"] = "https://localhost/"
        browsers.append(browser)
    try:
        with base_app.app_context():
            forms = [read_form(browser.get(path).text)[1] for browser in browsers]
        pages = press_together(base_app, path, browsers, forms)
        assert sorted("Already confirmed" in page for page in pages) == [False, True]
        with base_app.app_context():
            doubles = [
                e
                for e in ledger.history(public_ref)
                if e.subject_type == "opt_in" and e.value_to == "double"
            ]
            assert len(doubles) == 1
            assert ledger.verify().ok
    finally:
        with base_app.app_context():
            db.session.rollback()
            for model in (outbox.OutboxMessage, doi.DoiRequest):
                db.session.execute(sa.delete(model).where(model.contact_id == contact_id))
            db.session.execute(sa.delete(Contact).where(Contact.id == contact_id))
            db.session.commit()


def test_the_servers_housekeeping_queues_reminders_and_pruning_once_due(app, clock):
    from portal.workers import queue_due_jobs

    sign_up("later@example.test")
    db.session.commit()
    assert queue_due_jobs() == []  # nothing is due yet

    clock.advance(hours=49)
    (reminders,) = queue_due_jobs()
    assert reminders.kind == doi.REMIND.name and reminders.total == 1
    assert queue_due_jobs() == []  # already queued: not twice

    clock.advance(days=31)
    assert [job.kind for job in queue_due_jobs()] == [doi.PRUNE.name]
