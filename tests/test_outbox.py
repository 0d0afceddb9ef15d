"""The outbox (R5) against a real SMTP server on loopback: nothing lost, no second copy.

Each test drains the outbox by calling the worker once; a retry is made due by moving its
`next_attempt_at` into the past, never by sleeping. Rows another test left behind (on the shared
PostgreSQL database) may be delivered too, so every assertion looks only at the rows it made.
"""

import re
import socket
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from smtp_sink import free_port
from sqlalchemy.orm import Session

from portal import contacts
from portal import mail
from portal import outbox
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.mail import MessageRejected
from portal.outbox import OutboxMessage

SENDER = "privacy@example.com"
#: What Flask-Mail writes for a message with a text and an HTML part, and nothing else.
PLAIN_HEADERS = ["Content-Type", "Date", "From", "MIME-Version", "Message-ID", "Subject", "To"]


def queue(recipient="ada@example.test", **fields) -> OutboxMessage:
    values = {
        "category": "ad_hoc",
        "subject": "Your preferences",
        "text_body": "Hello in text",
        "html_body": "<p>Hello in HTML</p>",
    }
    values.update(fields)
    return outbox.enqueue(recipient=recipient, **values)


def queue_many(count: int, prefix: str = "r") -> list[OutboxMessage]:
    rows = [queue(f"{prefix}{n}@example.test", subject=f"Message {n}") for n in range(count)]
    db.session.commit()
    return rows


def fresh(row_id: int) -> OutboxMessage:
    """Read a row as the database has it now."""
    db.session.expire_all()
    return db.session.get(OutboxMessage, row_id)


def received(smtp, message_id: str) -> list:
    return [m for m in smtp.messages if m.message["Message-ID"] == message_id]


def make_due(rows) -> None:
    """Move the rows' next attempt into the past, as if the backoff had passed."""
    db.session.execute(
        sa.update(OutboxMessage)
        .where(OutboxMessage.id.in_([r.id for r in rows]))
        .values(next_attempt_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()


def row_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage))


def parts(message) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_content().rstrip("\n")
        for part in message.walk()
        if not part.is_multipart()
    }


def is_postgresql(application) -> bool:
    return application.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")


@pytest.fixture
def smtp_down(app, monkeypatch):
    """Point Flask-Mail at a port where nothing listens; undone after the test."""
    monkeypatch.setattr(app.extensions["mail"], "port", free_port())


# --- Queueing and delivery -------------------------------------------------------------------


def test_enqueue_writes_a_row_with_a_stable_message_id(app, smtp):
    row = queue()

    assert row.id is not None and row.status == "queued" and row.attempts == 0
    assert re.fullmatch(r"<[0-9a-f]{32}@prefs\.example\.test>", row.message_id)
    assert smtp.messages == []  # queueing sends nothing
    other = queue("bob@example.test")
    assert other.message_id != row.message_id
    db.session.commit()
    assert fresh(row.id).message_id == row.message_id  # stored, not made at hand-off


def test_delivery_sends_the_message_once_with_its_message_id_headers_and_parts(app, smtp):
    row = queue("Ada@Example.test", subject="Your preferences, Ada")
    message_id = row.message_id
    db.session.commit()

    tally = outbox.work(once=True)

    copies = received(smtp, message_id)
    assert len(copies) == 1
    message = copies[0].message
    assert message.get_all("Message-ID") == [message_id]
    assert message["From"] == SENDER
    assert message["To"] == "ada@example.test"
    assert message["Subject"] == "Your preferences, Ada"
    assert copies[0].rcpt_tos == ["ada@example.test"]
    assert parts(message) == {"text/plain": "Hello in text", "text/html": "<p>Hello in HTML</p>"}
    assert tally.sent >= 1
    row = fresh(row.id)
    assert (row.status, row.attempts, row.reason) == ("sent", 1, None)
    assert row.sent_at is not None and row.lease_until is None


def test_a_batch_goes_over_one_smtp_connection(app, smtp):
    rows = queue_many(5)

    outbox.work(once=True)

    assert smtp.connections == 1
    for row in rows:
        assert len(received(smtp, row.message_id)) == 1
        assert fresh(row.id).status == "sent"


def test_a_message_refused_when_queued_is_kept_with_its_reason_and_never_sent(app, smtp):
    contact = contacts.add_contact("olga@example.test", method="staff", actor="t")
    contacts.record_opt_in(contact, OptIn.OPTOUT_USER, method="staff", actor="t")
    row = queue("olga@example.test", category="notice", contact=contact)
    db.session.commit()

    outbox.work(once=True)

    row = fresh(row.id)
    assert row.status == "refused"
    assert row.reason == "refused when queued: the contact opted out of email"
    assert received(smtp, row.message_id) == []


# --- SMTP down, temporary and permanent failures -------------------------------------------


def test_smtp_down_then_up_delivers_everything_once(app, smtp, monkeypatch):
    rows = queue_many(3)
    mail_state = app.extensions["mail"]
    working_port = mail_state.port
    monkeypatch.setattr(mail_state, "port", free_port())

    outbox.work(once=True)

    assert smtp.messages == []
    for row in rows:
        row = fresh(row.id)
        assert (row.status, row.attempts) == ("queued", 1)
        assert "Connection refused" in row.reason  # what staff see on the outbox page
        assert row.next_attempt_at > utcnow()  # backoff: not retried at once

    mail_state.port = working_port
    outbox.work(once=True)
    assert smtp.messages == [], "a message was retried before its backoff ended"

    make_due(rows)
    outbox.work(once=True)

    for row in rows:
        assert len(received(smtp, row.message_id)) == 1
        row = fresh(row.id)
        assert (row.status, row.attempts, row.reason) == ("sent", 2, None)


def test_a_long_outage_delays_but_never_fails_a_message(app, smtp, smtp_down, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_OUTBOX_MAX_ATTEMPTS", 2)
    [row] = queue_many(1)

    for attempt in (1, 2, 3):
        outbox.work(once=True)
        current = fresh(row.id)
        assert (current.status, current.attempts) == ("queued", attempt)
        make_due([row])
    monkeypatch.undo()  # the server is back
    outbox.work(once=True)

    assert len(received(smtp, row.message_id)) == 1
    assert fresh(row.id).status == "sent"


def test_a_server_that_refuses_service_keeps_the_messages_queued(app, smtp, monkeypatch):
    """A 5xx greeting (or a wrong password) is about the server, not the message: retry."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def greet_and_hang_up():
        while not stop.is_set():
            try:
                peer, _ = listener.accept()
            except TimeoutError:
                continue
            with peer:
                peer.sendall(b"554 5.3.2 no service for you\r\n")

    thread = threading.Thread(target=greet_and_hang_up, daemon=True)
    thread.start()
    rows = queue_many(2)
    monkeypatch.setattr(app.extensions["mail"], "port", listener.getsockname()[1])
    try:
        outbox.work(once=True)
    finally:
        stop.set()
        thread.join(5)
        listener.close()

    for row in rows:
        row = fresh(row.id)
        assert (row.status, row.attempts) == ("queued", 1)
        assert "554" in row.reason


def test_a_temporary_data_error_is_retried_then_delivered_once(app, smtp):
    row = queue()
    message_id = row.message_id
    db.session.commit()
    smtp.data_replies.append("451 4.3.0 try again")

    outbox.work(once=True)

    row = fresh(row.id)
    assert (row.status, row.attempts, row.reason) == ("queued", 1, "451 4.3.0 try again")
    assert received(smtp, message_id) == []

    make_due([row])
    outbox.work(once=True)

    copies = received(smtp, message_id)
    assert len(copies) == 1  # and still carrying the Message-ID given when it was queued
    row = fresh(row.id)
    assert (row.status, row.attempts, row.reason) == ("sent", 2, None)


def test_a_permanent_recipient_refusal_fails_with_the_servers_reason(app, smtp):
    smtp.recipient_replies["gone@example.test"] = "550 5.1.1 no such user"
    gone = queue("gone@example.test")
    fine = queue("fine@example.test")
    db.session.commit()

    outbox.work(once=True)

    gone = fresh(gone.id)
    assert (gone.status, gone.attempts) == ("failed", 1)
    assert gone.reason == "550 5.1.1 no such user"
    # The same connection carried on with the next message.
    assert len(received(smtp, fine.message_id)) == 1
    assert smtp.connections == 1

    make_due([gone])
    outbox.work(once=True)
    assert fresh(gone.id).attempts == 1  # a failed message is never tried again


def test_a_temporary_refusal_gives_up_after_the_maximum_attempts(app, smtp, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_OUTBOX_MAX_ATTEMPTS", 3)
    smtp.recipient_replies["busy@example.test"] = "450 4.2.1 try later"
    row = queue("busy@example.test")
    db.session.commit()

    for attempt in (1, 2):
        outbox.work(once=True)
        current = fresh(row.id)
        assert (current.status, current.attempts) == ("queued", attempt)
        assert current.reason == "450 4.2.1 try later"
        make_due([row])
    outbox.work(once=True)

    row = fresh(row.id)
    assert (row.status, row.attempts) == ("failed", 3)
    assert row.reason == "gave up after 3 attempts: 450 4.2.1 try later"
    assert smtp.messages == []


def test_a_slow_server_times_out_and_nothing_is_lost(app, smtp, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_SMTP_TIMEOUT", 0.3)
    rows = queue_many(2)
    smtp.delay = 1.0

    outbox.work(once=True)

    for row in rows:
        row = fresh(row.id)
        assert (row.status, row.attempts) == ("queued", 1)
        assert "timed out" in row.reason
    # The server dropped the transactions whose client hung up before its answer.
    assert smtp.messages == []

    smtp.delay = 0
    app.config["PORTAL_SMTP_TIMEOUT"] = 10  # the server is quick again (restored after the test)
    make_due(rows)
    outbox.work(once=True)

    for row in rows:
        assert len(received(smtp, row.message_id)) == 1
        assert fresh(row.id).status == "sent"


def test_a_server_closing_the_connection_sends_the_rest_back_untouched(app, smtp):
    rows = queue_many(3)
    smtp.data_replies.append("421 4.3.2 shutting down")

    outbox.work(once=True)

    first = fresh(rows[0].id)
    assert (first.status, first.attempts, first.reason) == (
        "queued", 1, "421 4.3.2 shutting down"
    )
    # The others were not tried on the closed connection: no attempt counted, no odd reason.
    for row in rows[1:]:
        assert len(received(smtp, row.message_id)) == 1
        row = fresh(row.id)
        assert (row.status, row.attempts, row.reason) == ("sent", 1, None)


def test_a_message_that_cannot_be_encoded_fails_alone_and_does_not_stop_the_worker(app, smtp):
    # A row written before the address check existed (or by hand): SMTP cannot carry it.
    bad = queue("placeholder@example.test")
    bad.recipient = "jörg@example.test"
    good = queue("good@example.test")
    db.session.commit()

    outbox.work(once=True)

    bad = fresh(bad.id)
    assert (bad.status, bad.attempts) == ("failed", 1)
    # Its kind only: the error's text would quote the address.
    assert bad.reason == "cannot be written as SMTP (UnicodeEncodeError)"
    assert len(received(smtp, good.message_id)) == 1
    assert fresh(good.id).status == "sent"


def test_an_address_with_an_international_domain_is_delivered(app, smtp):
    row = queue("ines@bücher.example")
    db.session.commit()

    outbox.work(once=True)

    [copy] = received(smtp, row.message_id)
    assert copy.rcpt_tos == ["ines@xn--bcher-kva.example"]
    assert fresh(row.id).status == "sent"


# --- Crashes --------------------------------------------------------------------------------


def test_a_worker_killed_before_hand_off_delays_but_sends_each_message_once(app, smtp):
    rows = queue_many(3)
    claimed = outbox.claim(10)  # ... and the worker dies here, holding the lease
    assert {r.id for r in rows} <= set(claimed)
    for row in rows:
        row = fresh(row.id)
        assert row.status == "sending" and row.lease_until > utcnow()

    outbox.work(once=True)
    assert smtp.messages == [], "a live lease was taken over"

    db.session.execute(
        sa.update(OutboxMessage)
        .where(OutboxMessage.id.in_([r.id for r in rows]))
        .values(lease_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    outbox.work(once=True)

    for row in rows:
        assert len(received(smtp, row.message_id)) == 1
        row = fresh(row.id)
        assert (row.status, row.attempts, row.lease_until) == ("sent", 1, None)


def test_a_worker_killed_after_commit_sends_no_second_copy(app, smtp):
    rows = queue_many(2)
    outbox.work(once=True)  # delivered and committed; the worker dies now

    outbox.work(once=True)  # the next worker starts
    make_due(rows)
    outbox.work(once=True)

    for row in rows:
        assert len(received(smtp, row.message_id)) == 1
        assert fresh(row.id).status == "sent"


# --- Several workers on PostgreSQL ----------------------------------------------------------


def _delete_rows(application, ids: list[int]) -> None:
    with application.app_context():
        db.session.execute(sa.delete(OutboxMessage).where(OutboxMessage.id.in_(ids)))
        db.session.commit()


def _queue_committed(application, count: int) -> tuple[list[int], set[str]]:
    with application.app_context():
        rows = [
            outbox.enqueue(category="ad_hoc", recipient=f"w{n}@example.test",
                           subject=f"Worker test {n}", text_body="one copy only")
            for n in range(count)
        ]
        db.session.commit()
        return [r.id for r in rows], {r.message_id for r in rows}


def test_two_workers_on_postgresql_never_send_the_same_message(base_app, smtp, monkeypatch):
    if not is_postgresql(base_app):
        pytest.skip("several workers share the outbox on PostgreSQL only; SQLite runs one")
    monkeypatch.setitem(base_app.config, "PORTAL_OUTBOX_BATCH", 4)
    ids, message_ids = _queue_committed(base_app, 36)
    start = threading.Barrier(2)
    tallies, errors = [], []

    def worker():
        try:
            with base_app.app_context():
                start.wait(10)
                tallies.append(outbox.work(once=True))
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)

    try:
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert len(tallies) == 2
        arrived = [m.message["Message-ID"] for m in smtp.messages]
        for message_id in message_ids:
            assert arrived.count(message_id) == 1, message_id
        with base_app.app_context():
            statuses = db.session.scalars(
                sa.select(OutboxMessage.status).where(OutboxMessage.id.in_(ids))
            ).all()
        assert statuses == ["sent"] * len(ids)
    finally:
        _delete_rows(base_app, ids)


def test_a_worker_skips_rows_another_worker_has_locked(base_app, smtp):
    if not is_postgresql(base_app):
        pytest.skip("SKIP LOCKED exists on PostgreSQL only")
    ids, _ = _queue_committed(base_app, 6)
    try:
        with base_app.app_context(), Session(db.engine) as other_worker:
            locked = other_worker.scalars(
                sa.select(OutboxMessage.id).where(OutboxMessage.id.in_(ids[:3]))
                .with_for_update()
            ).all()
            assert sorted(locked) == ids[:3]
            claimed = outbox.claim(len(ids) + 50)  # a second worker, mid-claim of the first
            other_worker.rollback()
        assert set(ids) & set(claimed) == set(ids[3:])
    finally:
        _delete_rows(base_app, ids)


# --- The worker's database connection -------------------------------------------------------


def _stop_when_idle(real, stop):
    """Wrap a claim function: the first call that finds nothing ends the worker's loop."""

    def claim(*args):
        found = real(*args)
        if not found:
            stop.set()
        return found

    return claim


def _contacts_committed(application, count: int) -> list[int]:
    """Commit contacts without the ledger (append-only, it is never cleaned up); return ids."""
    with application.app_context():
        now = utcnow()
        statement = sa.insert(contacts.Contact).returning(
            contacts.Contact.id, sort_by_parameter_order=True
        )
        ids = list(db.session.scalars(statement, [
            {"public_id": f"outbox-test-{n}", "email": f"c{n}@example.test", "kind": "lead",
             "opt_in_status": "double", "link_version": 1, "version": 1, "created_at": now,
             "updated_at": now}
            for n in range(count)
        ]))
        db.session.commit()
        return ids


def test_a_batch_takes_one_database_connection_from_the_pool(base_app, smtp):
    # The pool rolls back every connection given back to it: a connection taken for each
    # message's commit would cost a round trip a message on PostgreSQL.
    ids, message_ids = _queue_committed(base_app, 8)
    checkouts = []

    def count(*_args):
        checkouts.append(1)

    try:
        with base_app.app_context():
            sa.event.listen(db.engine.pool, "checkout", count)
            try:
                outbox.work(once=True)
            finally:
                sa.event.remove(db.engine.pool, "checkout", count)
            statuses = db.session.scalars(
                sa.select(OutboxMessage.status).where(OutboxMessage.id.in_(ids))
            ).all()
        assert len(checkouts) <= 3  # the claim, the batch, the claim that finds nothing
        assert statuses == ["sent"] * len(ids)
        arrived = [m.message["Message-ID"] for m in smtp.messages]
        assert sorted(arrived) == sorted(message_ids)
    finally:
        _delete_rows(base_app, ids)


def test_a_database_connection_lost_mid_batch_loses_no_message_and_sends_none_twice(
    base_app, smtp, monkeypatch, caplog
):
    if not is_postgresql(base_app):
        pytest.skip("a database server that ends the worker's connection: PostgreSQL")
    ids, message_ids = _queue_committed(base_app, 4)
    built = []
    build_message = outbox.build_message

    def build_then_lose_the_connection(row):
        built.append(row.id)
        if len(built) == 2:
            # The server ends the worker's connection (restarted, say) while the second
            # message goes to SMTP: the first one's "sent" is committed, the second's not yet.
            pid = db.session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with db.engine.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        return build_message(row)

    monkeypatch.setattr(outbox, "build_message", build_then_lose_the_connection)
    stop = threading.Event()
    monkeypatch.setattr(outbox, "claim", _stop_when_idle(outbox.claim, stop))
    try:
        with base_app.app_context():
            outbox.work(stop=stop, idle_seconds=0)
            rows = db.session.execute(
                sa.select(OutboxMessage.status, OutboxMessage.attempts)
                .where(OutboxMessage.id.in_(ids))
            ).all()
        assert "database unavailable, retrying" in caplog.text
        assert rows == [("sent", 1)] * len(ids)
        arrived = [m.message["Message-ID"] for m in smtp.messages]
        for message_id in message_ids:
            assert arrived.count(message_id) == 1, message_id
    finally:
        _delete_rows(base_app, ids)


def test_the_gate_reads_each_recipient_afresh_on_the_workers_connection(
    base_app, smtp, monkeypatch
):
    contact_ids = _contacts_committed(base_app, 3)
    with base_app.app_context():
        rows = [
            outbox.enqueue(category="notice", recipient=f"c{n}@example.test",
                           contact=db.session.get(contacts.Contact, contact_id),
                           subject="A notice", text_body="Hello")
            for n, contact_id in enumerate(contact_ids)
        ]
        db.session.commit()
        ids = [row.id for row in rows]
    build_message = outbox.build_message

    def build_then_opt_out(row):
        if row.id == ids[0]:
            # The third contact opts out while the first message goes.
            with db.engine.begin() as other:
                other.execute(
                    sa.update(contacts.Contact).where(contacts.Contact.id == contact_ids[2])
                    .values(opt_in_status=OptIn.OPTOUT_USER.value)
                )
        return build_message(row)

    monkeypatch.setattr(outbox, "build_message", build_then_opt_out)
    try:
        with base_app.app_context():
            outbox.work(once=True)
            outcomes = db.session.execute(
                sa.select(OutboxMessage.status, OutboxMessage.reason)
                .where(OutboxMessage.id.in_(ids)).order_by(OutboxMessage.id)
            ).all()
        assert outcomes == [
            ("sent", None),
            ("sent", None),
            ("refused", "refused at hand-off: the contact opted out of email"),
        ]
        assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["c0@example.test",
                                                                "c1@example.test"]
    finally:
        _delete_rows(base_app, ids)
        with base_app.app_context():
            db.session.execute(sa.delete(contacts.Contact)
                               .where(contacts.Contact.id.in_(contact_ids)))
            db.session.commit()


# --- The gate at hand-off -------------------------------------------------------------------


def test_the_gate_refuses_at_hand_off_a_message_allowed_when_queued(app, smtp):
    contact = contacts.add_contact("ines@example.test", method="staff", actor="t")
    row = queue("ines@example.test", category="notice", contact=contact)
    assert row.status == "queued"
    db.session.commit()

    contacts.record_opt_in(contact, OptIn.OPTOUT_USER, method="staff", actor="t")
    db.session.commit()
    outbox.work(once=True)

    assert smtp.to("ines@example.test") == []
    row = fresh(row.id)
    assert row.status == "refused"
    assert row.reason == "refused at hand-off: the contact opted out of email"
    assert row.sent_at is None and row.lease_until is None


# --- Header injection and other bad input ---------------------------------------------------

BAD_INPUT = {
    "subject with CRLF": dict(subject="Hello\r\nBcc: x@evil.example"),
    "subject with LF": dict(subject="Hello\nBcc: x@evil.example"),
    "header value with LF": dict(
        headers={"List-Unsubscribe": "<https://a.test/u>\nBcc: x@evil.example"}
    ),
    "header value with CR": dict(headers={"X-Campaign": "spring\rBcc: x@evil.example"}),
    "header name with a colon": dict(headers={"Bcc: x@evil.example\r\nX-A": "1"}),
    "extra Bcc header": dict(headers={"Bcc": "x@evil.example"}),
    "extra To header": dict(headers={"to": "x@evil.example"}),
    "a second Message-ID": dict(headers={"Message-ID": "<forged@evil.example>"}),
    "In-Reply-To with LF": dict(in_reply_to="<a@b.example>\nBcc: x@evil.example"),
    "recipient with CRLF": dict(recipient="ada@example.test\r\nBcc: x@evil.example"),
    "recipient without @": dict(recipient="ada.example.test"),
    "recipient with two @": dict(recipient="ada@b@example.test"),
    "recipient with a name": dict(recipient="Ada <ada@example.test>"),
    "recipient SMTP cannot carry": dict(recipient="jörg@example.test"),
    "malformed sender": dict(sender="privacy at example.com"),
    "empty subject": dict(subject="  "),
    "unknown category": dict(category="newsletter"),
}


@pytest.mark.parametrize("fields", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_refused_before_queuing(app, fields):
    before = row_count()
    with pytest.raises(MessageRejected) as refused:
        queue(**fields)
    assert str(refused.value)  # a reason a person can read
    assert "\n" not in str(refused.value).strip()
    assert row_count() == before


def test_an_oversized_body_is_refused_before_queuing(app, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_MAX_BODY_BYTES", 1000)
    before = row_count()
    queue(text_body="t" * 600, html_body="h" * 400)  # exactly the limit: accepted
    assert row_count() == before + 1

    for fields in (
        dict(text_body="t" * 601, html_body="h" * 400),
        dict(text_body="t" * 1001, html_body=None),
        dict(text_body="é" * 501, html_body=None),  # 1002 bytes in 501 characters
    ):
        with pytest.raises(MessageRejected, match="larger than 1000 bytes"):
            queue(**fields)
    assert row_count() == before + 1


def test_the_refusal_names_what_is_wrong(app):
    with pytest.raises(MessageRejected, match="Subject"):
        queue(subject="Hi\r\nBcc: x@evil.example")
    with pytest.raises(MessageRejected, match="X-Campaign"):
        queue(headers={"X-Campaign": "a\nb"})
    with pytest.raises(MessageRejected, match="recipient"):
        queue(recipient="nobody")
    with pytest.raises(MessageRejected, match="newsletter"):
        queue(category="newsletter")


def test_a_line_like_a_mime_boundary_stays_in_its_part(app, smtp, monkeypatch):
    # The first boundary drawn is in the text: another is drawn, as the standard library does.
    tokens = iter(["0" * 20, "1" * 20, "2" * 20])
    monkeypatch.setattr(mail, "secrets", SimpleNamespace(token_hex=lambda _size: next(tokens)))
    text = "Hello\n--===============00000000000000000000==\nstill the text"
    row = queue(text_body=text)
    db.session.commit()

    outbox.work(once=True)

    [copy] = received(smtp, row.message_id)
    body = parts(copy.message)
    assert body["text/plain"].replace("\r\n", "\n") == text  # written with CRLF, as SMTP has it
    assert body["text/html"] == "<p>Hello in HTML</p>"


def test_a_legitimate_list_unsubscribe_arrives_and_nothing_else_is_added(app, smtp):
    unsubscribe = "<https://prefs.example.test/u/abc>, <mailto:unsubscribe@example.com>"
    row = queue(headers={
        "List-Unsubscribe": unsubscribe,
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    })
    plain = queue("plain@example.test")
    db.session.commit()

    outbox.work(once=True)

    [copy] = received(smtp, row.message_id)
    message = copy.message
    assert sorted(message.keys()) == sorted(
        PLAIN_HEADERS + ["List-Unsubscribe", "List-Unsubscribe-Post"]
    )
    assert message["List-Unsubscribe"].strip() == unsubscribe  # folded onto a second line
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert copy.rcpt_tos == ["ada@example.test"]
    [plain_copy] = received(smtp, plain.message_id)
    assert sorted(plain_copy.message.keys()) == sorted(PLAIN_HEADERS)



def _locked_once(real, stop=None):
    """Wrap a claim function: the first call fails as SQLite does when busy past its timeout;
    with ``stop``, the first call that finds nothing ends the worker's loop."""
    calls = []

    def claim(*args):
        calls.append(args)
        if len(calls) == 1:
            raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
        found = real(*args)
        if stop is not None and not found:
            stop.set()
        return found

    return claim


def test_a_busy_database_does_not_stop_the_outbox_worker(app, smtp, monkeypatch, caplog):
    (row,) = queue_many(1)
    stop = threading.Event()
    monkeypatch.setattr(outbox, "claim", _locked_once(outbox.claim, stop))

    outbox.work(stop=stop, idle_seconds=0)

    assert len(received(smtp, row.message_id)) == 1
    assert fresh(row.id).status == "sent"
    assert "database unavailable, retrying" in caplog.text


def test_a_single_pass_reports_a_busy_database(app, smtp, monkeypatch):
    queue_many(1)
    monkeypatch.setattr(outbox, "claim", _locked_once(outbox.claim))
    with pytest.raises(sa.exc.OperationalError):
        outbox.work(once=True)
    assert smtp.messages == []
