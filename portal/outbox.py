"""The outbox (R5): every outgoing message is a row, delivered by a worker over SMTP.

A message is written in the same transaction as the change that caused it. The worker claims
a batch with a lease (rows locked with SKIP LOCKED on PostgreSQL, so several workers on several
hosts never claim the same row), asks the gate again right before each message, hands each
to SMTP over one connection, and commits its outcome before the next message goes. Killed
before the hand-off, a claimed message goes out when its lease ends; killed after the commit,
it is never sent again. Only a crash between the SMTP server's acceptance and that commit can
send a second copy of the one message in flight, with the same Message-ID.
"""

import logging
import smtplib
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from flask_mail import BadHeaderError
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import gate
from portal import settings
from portal import suppression
from portal.contacts import Contact
from portal.db import db
from portal.db import outage_tolerated
from portal.db import utcnow
from portal.lists import Subscription
from portal.mail import MessageRejected
from portal.mail import build_message
from portal.mail import check_address
from portal.mail import check_extra_header
from portal.mail import check_header
from portal.mail import connect
from portal.mail import new_message_id

log = logging.getLogger(__name__)

STATUSES = ("queued", "sending", "sent", "failed", "refused")


class OutboxMessage(db.Model):
    __tablename__ = "outbox_messages"
    __table_args__ = (
        sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),
        sa.CheckConstraint(sa.column("category").in_([c.value for c in gate.Category]),
                           name="category"),
        sa.Index("ix_outbox_messages_due", "status", "next_attempt_at"),
        # A campaign queues one message per contact, however often its job is resumed.
        sa.UniqueConstraint("campaign_id", "contact_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(250), unique=True)
    category: Mapped[str] = mapped_column(sa.String(20))
    contact_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    list_id: Mapped[int | None] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    consent_slug: Mapped[str | None] = mapped_column(sa.String(60))
    in_reply_to: Mapped[str | None] = mapped_column(sa.String(250))
    campaign_id: Mapped[int | None] = mapped_column(sa.ForeignKey("campaigns.id"))
    sender: Mapped[str] = mapped_column(sa.String(254))
    recipient: Mapped[str] = mapped_column(sa.String(254))
    subject: Mapped[str] = mapped_column(sa.String(998))
    text_body: Mapped[str] = mapped_column(sa.Text)
    html_body: Mapped[str | None] = mapped_column(sa.Text)
    headers: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    status: Mapped[str] = mapped_column(sa.String(10), default="queued")
    # Why the gate refused it, or why delivery failed; shown to staff.
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


def enqueue(
    *,
    category: str,
    recipient: str,
    subject: str,
    text_body: str,
    html_body: str | None = None,
    contact: Contact | None = None,
    list_id: int | None = None,
    consent_slug: str | None = None,
    in_reply_to: str | None = None,
    headers: dict[str, str] | None = None,
    sender: str | None = None,
    campaign_id: int | None = None,
    policy: str | None = None,
    suppressed: bool | None = None,
    flush: bool = True,
) -> OutboxMessage:
    """Queue a message in the current transaction, or raise MessageRejected if malformed.

    The gate is asked now; a refused message is kept with its reason, for staff to see.
    `policy` and `suppressed` are for a caller that read them for many messages at once
    (see gate.decide). So is `flush=False`: the row is written at the session's next flush,
    together with the others queued before it, and has no id until then.
    """
    recipient = check_address(recipient, "recipient")
    sender = check_address(sender or current_app.config["MAIL_DEFAULT_SENDER"], "sender")
    check_header("Subject", subject)
    if not subject.strip():
        raise MessageRejected("the subject is empty")
    headers = {name: check_extra_header(name, value) for name, value in (headers or {}).items()}
    if in_reply_to is not None:
        check_header("In-Reply-To", in_reply_to)
    size = len(text_body.encode()) + len((html_body or "").encode())
    limit = current_app.config["PORTAL_MAX_BODY_BYTES"]
    if size > limit:
        raise MessageRejected(f"the body is larger than {limit} bytes")
    try:
        category = gate.Category(category).value
    except ValueError:
        raise MessageRejected(f"unknown message category {category!r}") from None
    row = OutboxMessage(
        message_id=new_message_id(), category=category, recipient=recipient, sender=sender,
        subject=subject, text_body=text_body, html_body=html_body, headers=headers,
        contact_id=contact.id if contact else None, list_id=list_id,
        consent_slug=consent_slug, in_reply_to=in_reply_to, created_at=utcnow(),
        campaign_id=campaign_id,
    )
    decision = gate.decide(category, recipient=recipient, contact=contact, list_id=list_id,
                           in_reply_to=in_reply_to, consent_slug=consent_slug,
                           queued_at=row.created_at, policy=policy, suppressed=suppressed)
    if not decision.allowed:
        row.status, row.reason = "refused", f"refused when queued: {decision.explanation}"
    db.session.add(row)
    if flush:
        db.session.flush()
    return row


def record_failed(
    *,
    category: str,
    recipient: str,
    subject: str,
    reason: str,
    contact: Contact | None = None,
    list_id: int | None = None,
    campaign_id: int | None = None,
) -> OutboxMessage:
    """Keep a message that could not be made (or written) as failed: counted, never sent.

    Its body is empty and nothing is checked: this is the record of a failure, in the same
    table as the messages that went, so that a job walking its audience again skips it.
    """
    row = OutboxMessage(
        message_id=new_message_id(), category=gate.Category(category).value,
        recipient=recipient[:254], sender=current_app.config["MAIL_DEFAULT_SENDER"],
        subject=subject, text_body="", contact_id=contact.id if contact else None,
        list_id=list_id, campaign_id=campaign_id, status="failed", reason=reason[:500],
        created_at=utcnow(),
    )
    db.session.add(row)
    return row


#: What the gate reads about a message's recipient at hand-off, afresh and in one query: the
#: contact, their subscription to the message's list (left in the session, where the gate's
#: lookup by primary key finds it) and whether the address is on the suppression list. Built
#: once: only the values change from one message to the next.
_RECIPIENT = (
    sa.select(Contact, Subscription, suppression.LISTED)
    .outerjoin(Subscription, sa.and_(Subscription.contact_id == Contact.id,
                                     Subscription.list_id == sa.bindparam("list_id")))
    .where(Contact.id == sa.bindparam("contact_id"))
    .execution_options(populate_existing=True)
)


def _decide_at_handoff(row, policy: str | None) -> gate.Decision:
    contact = subscription = suppressed = None
    if row.contact_id is not None:
        found = db.session.execute(
            _RECIPIENT,
            {"contact_id": row.contact_id, "list_id": row.list_id,
             "suppression_digests": suppression.digests(row.recipient)},
        ).first()
        if found is not None:
            contact, subscription, suppressed = found
    decision = gate.decide(row.category, recipient=row.recipient, contact=contact,
                           list_id=row.list_id, in_reply_to=row.in_reply_to,
                           consent_slug=row.consent_slug, queued_at=row.created_at,
                           policy=policy, suppressed=suppressed)
    del subscription  # held until the gate has decided
    return decision


def claim(limit: int) -> list[int]:
    """Lease up to `limit` due messages to this worker and return their ids."""
    now = utcnow()
    config = current_app.config
    # The lease must outlast a whole batch against a slow server, or another worker could
    # take back messages that are still being sent and send them twice.
    slowest_batch = limit * config["PORTAL_SMTP_TIMEOUT"] + 60
    lease = timedelta(seconds=max(config["PORTAL_OUTBOX_LEASE_SECONDS"], slowest_batch))
    due = sa.or_(
        sa.and_(OutboxMessage.status == "queued", OutboxMessage.next_attempt_at <= now),
        # A worker that died holding a lease: its messages were never handed over.
        sa.and_(OutboxMessage.status == "sending", OutboxMessage.lease_until < now),
    )
    statement = (
        sa.select(OutboxMessage.id).where(due).order_by(OutboxMessage.id).limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(db.session.scalars(statement))
    if ids:
        db.session.execute(
            sa.update(OutboxMessage).where(OutboxMessage.id.in_(ids))
            .values(status="sending", lease_until=now + lease)
        )
    db.session.commit()
    return ids


def _is_permanent(error: Exception) -> bool:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        return bool(codes) and all(500 <= code < 600 for code in codes)
    code = getattr(error, "smtp_code", None)
    return isinstance(code, int) and 500 <= code < 600


def _describe(error: Exception) -> str:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{code} {text.decode(errors='replace')}"
                         for code, text in error.recipients.values())[:500]
    if isinstance(error, smtplib.SMTPResponseException):
        return f"{error.smtp_code} {error.smtp_error.decode(errors='replace')}"[:500]
    return f"{type(error).__name__}: {error}"[:500]


def _retry_or_fail(row: OutboxMessage, error: Exception, *, server_down: bool = False) -> str:
    """Record a failed attempt. The server being unreachable (or refusing us, say for a wrong
    password) is no fault of the message: it delays the message but never fails it (R5)."""
    row.attempts += 1
    row.lease_until = None
    row.reason = _describe(error)
    if _is_permanent(error) and not server_down:
        row.status = "failed"
        return "failed"
    if row.attempts >= current_app.config["PORTAL_OUTBOX_MAX_ATTEMPTS"] and not server_down:
        row.status = "failed"
        row.reason = f"gave up after {row.attempts} attempts: {row.reason}"
        return "failed"
    row.status = "queued"
    row.next_attempt_at = utcnow() + timedelta(seconds=min(30 * 2 ** (row.attempts - 1), 3600))
    return "retry"


@dataclass
class Tally:
    sent: int = 0
    refused: int = 0
    retry: int = 0
    failed: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def handled(self) -> int:
        return self.sent + self.refused + self.retry + self.failed


def _release(ids: list[int]) -> None:
    """Give unsent claimed messages back to the queue (in the current transaction)."""
    if ids:
        db.session.execute(
            sa.update(OutboxMessage)
            .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending")
            .values(status="queued", lease_until=None)
        )


def _connection_lost(connection, error: Exception) -> bool:
    """Say whether an SMTP error left the connection unusable."""
    # SMTPException is an OSError: only a socket error or a disconnection loses the connection,
    # or an answer after which smtplib closed it (a 421).
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return True
    if not isinstance(error, smtplib.SMTPException):
        return True
    return getattr(connection.host, "sock", None) is None


#: A handed-over message's outcome, built once: the statement is the same for every message.
#: Core statements on the table: the ORM's bulk UPDATE took more CPU than the database did, to
#: keep no loaded object in step either (it ran with synchronize_session=False).
_TABLE = OutboxMessage.__table__
_SENT = (
    sa.update(_TABLE)
    # Written again after a failed statement (see deliver): a second time changes nothing.
    .where(_TABLE.c.id == sa.bindparam("row_id"), _TABLE.c.status == "sending")
    .values(
        status="sent", lease_until=None, reason=None, attempts=_TABLE.c.attempts + 1,
        sent_at=sa.bindparam("handed_over_at", type_=_TABLE.c.sent_at.type),
    )
)
_REFUSED = (
    sa.update(_TABLE)
    .where(_TABLE.c.id == sa.bindparam("row_id"))
    .values(status="refused", lease_until=None, reason=sa.bindparam("why", type_=sa.String()))
)


def _through_the_orm(row) -> OutboxMessage | None:
    """Return the stored row if its outcome must be written through the ORM, else None.

    An erasure receipt's address is masked by a listener on the status attribute
    (portal/erasure/forget.py), which the UPDATE statements above would bypass.
    """
    if row.category == gate.Category.ERASURE_RECEIPT:
        return db.session.get(OutboxMessage, row.id)
    return None


def _mark_sent(row, handed_over_at: datetime) -> None:
    stored = _through_the_orm(row)
    if stored is None:
        db.session.execute(_SENT, {"row_id": row.id, "handed_over_at": handed_over_at})
        return
    if stored.status != "sending":
        return  # marked already
    stored.status, stored.sent_at, stored.lease_until, stored.reason = (
        "sent", handed_over_at, None, None
    )
    stored.attempts += 1


def _mark_refused(row, reason: str) -> None:
    stored = _through_the_orm(row)
    if stored is None:
        db.session.execute(_REFUSED, {"row_id": row.id, "why": reason})
        return
    stored.status, stored.lease_until, stored.reason = "refused", None, reason


def deliver(ids: list[int], tally: Tally) -> None:
    """Hand claimed messages to SMTP over one connection, recording each outcome before the
    next message goes."""
    remaining = list(ids)
    try:
        connection = connect().__enter__()
    except (OSError, smtplib.SMTPException) as error:
        # The server is down or refused us: nothing was handed over; try again later.
        for message_id in remaining:
            row = db.session.get(OutboxMessage, message_id)
            tally.add(_retry_or_fail(row, error, server_down=True))
        db.session.commit()
        return
    # The batch's rows in one query, as plain rows that no commit expires: nobody else changes
    # a row while this worker holds its lease, and outcomes are written with the statements
    # above.
    columns = sa.select(*OutboxMessage.__table__.columns)
    rows = {row.id: row for row in db.session.execute(columns.where(OutboxMessage.id.in_(ids)))}
    # The campaign policy once per batch; the recipient's own state is read for each message.
    policy = settings.values().get("campaign_policy")
    handed_over = None  # (row, time) of the message SMTP accepted, its "sent" not committed
    try:
        while remaining:
            row = rows[remaining[0]]
            if handed_over is not None:
                # The previous message's "sent" is committed before this one goes to SMTP (with
                # this one's decision, or on its own in autocommit): one commit per message, at
                # most one message in doubt.
                _mark_sent(*handed_over)
            decision = _decide_at_handoff(row, policy)
            if not decision.allowed:
                _mark_refused(row, f"refused at hand-off: {decision.explanation}")
            # End the transaction before talking to SMTP: on SQLite it holds the write lock.
            db.session.commit()
            handed_over = None
            if not decision.allowed:
                tally.add("refused")
                remaining.pop(0)
                continue
            message = build_message(row)
            try:
                connection.send(message)
            except (OSError, smtplib.SMTPException) as error:
                row = db.session.get(OutboxMessage, remaining.pop(0))
                tally.add(_retry_or_fail(row, error))
                db.session.commit()
                if _connection_lost(connection, error):
                    break  # the rest go back to the queue, for a fresh connection
                continue
            except (ValueError, BadHeaderError) as error:
                # The message cannot be written as SMTP (say, an address it cannot carry):
                # no retry helps, and it must not stop the worker or the messages behind it.
                row = db.session.get(OutboxMessage, remaining.pop(0))
                row.status, row.lease_until = "failed", None
                row.attempts += 1
                # Its kind only: the error's text may quote the address.
                row.reason = f"cannot be written as SMTP ({type(error).__name__})"
                db.session.commit()
                tally.add("failed")
                break  # the SMTP session may be mid-transaction; start the rest afresh
            remaining.pop(0)
            handed_over = (row, utcnow())
            tally.add("sent")
    except BaseException:
        # A statement that failed (the connection to the database lost, say) leaves the
        # transaction unusable, perhaps with the previous message's "sent" in it: roll it back,
        # and write what the batch knows afresh below.
        db.session.rollback()
        raise
    finally:
        try:
            # The last message's "sent", and the messages not handed over back to the queue.
            if handed_over is not None:
                _mark_sent(*handed_over)
            _release(remaining)
            if handed_over is not None or remaining:
                db.session.commit()
        finally:
            try:
                connection.__exit__(None, None, None)
            except (OSError, smtplib.SMTPException):
                pass  # the messages' outcomes are committed; a failed QUIT changes nothing


@contextmanager
def _one_connection():
    """Run the session's transactions on one database connection, statement by statement on
    PostgreSQL, until the block ends.

    Otherwise each transaction of a worker that commits once a message takes a connection
    from the engine's pool and gives it back, and the pool rolls it back on its return: a
    round trip for every message, on top of the transaction's own. Held for a batch, the
    connection is taken once. If it is lost mid-batch, a statement fails with an
    OperationalError, which the worker survives (see work()). A transaction still open when the
    block ends is rolled back: the outbox commits all it writes.

    On PostgreSQL the connection is in autocommit mode: each statement is its own transaction,
    without the round trips of BEGIN and COMMIT. It suits delivery, each of whose writes records
    messages' outcomes that stand on their own, and whose reads need no transaction to see what
    is committed; not the claim, whose row locks must last until its UPDATE. SQLite keeps its
    transactions, whose BEGIN IMMEDIATE takes the write lock (portal/db.py).
    """
    session = db.session()
    engine = session.get_bind()
    if not isinstance(engine, sa.Engine):
        yield  # the session is bound to one connection already (the tests' transaction)
        return

    def begin_on_it(session, transaction):
        if transaction.parent is None:  # a savepoint is on its transaction's connection
            session.connection(bind_arguments={"bind": connection})

    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT")
        sa.event.listen(session, "after_transaction_create", begin_on_it)
        try:
            yield
        finally:
            sa.event.remove(session, "after_transaction_create", begin_on_it)
            session.rollback()


#: Functions that queue mail the worker composes itself, each called before every delivery
#: pass: it queues in the current transaction, which the pass's claim commits (and delivers
#: in the same pass), and returns how much it took (0 when nothing waits).
COMPOSERS: list[Callable[[], int]] = []


def composer(function: Callable[[], int]) -> Callable[[], int]:
    """Have the worker call `function` before each delivery pass (see COMPOSERS).

    For mail that a request must not compose itself, so that its answer takes the same time
    whatever the mail would say or whether it is sent at all (link_requests).
    """
    COMPOSERS.append(function)
    return function


def take_queued(model, limit: int, *columns) -> list:
    """Delete up to `limit` of the oldest rows of a composer's queue table and return the
    given columns of each, oldest first.

    Read first, so that a pass with nothing waiting writes nothing; then one DELETE ...
    RETURNING: two workers on PostgreSQL never both take a row (the second's DELETE finds it
    gone once the first commits), and a rollback puts the rows back.
    """
    # SKIP LOCKED (PostgreSQL): a second worker takes other rows rather than wait for these.
    ids = list(db.session.scalars(sa.select(model.id).order_by(model.id).limit(limit)
                                  .with_for_update(skip_locked=True)))
    if not ids:
        return []
    statement = sa.delete(model).where(model.id.in_(ids)).returning(model.id, *columns)
    return sorted(db.session.execute(statement).all(), key=lambda row: row.id)


@contextmanager
def composing(logger: logging.Logger, what: str, refused: tuple = ()):
    """Do one queued item's work in a savepoint: an error the rules raise (`refused`) is
    logged as such; any other fault of ours is logged, with its traceback, and the item
    dropped, so that it holds up none of the mail behind it on every pass. A database that
    is away is not the item's fault: the worker rolls back and the items come back."""
    try:
        with db.session.begin_nested():
            yield
    except refused as error:
        logger.info("%s not done: %s", what, error)
    except sa.exc.OperationalError:
        raise
    except Exception:
        logger.exception("%s failed and is dropped", what)


def work(*, once: bool = False, idle_seconds: float = 1.0, stop=None) -> Tally:
    """Deliver due messages until stopped (or until none is due, with `once`)."""
    tally = Tally()
    batch = current_app.config["PORTAL_OUTBOX_BATCH"]
    stop = stop or threading.Event()  # never set: run until the process ends
    while not stop.is_set():
        with outage_tolerated("outbox worker", once=once):
            # A composer that took anything may have more waiting: no sleep until all are done.
            busy = sum(compose() for compose in COMPOSERS)
            ids = claim(batch)
            if ids:
                with _one_connection():
                    deliver(ids, tally)
                continue
            if busy:
                continue
        if once:
            break
        stop.wait(idle_seconds)
    return tally


def status_counts() -> dict[str, int]:
    """Return how many messages are in each status."""
    statement = sa.select(OutboxMessage.status, sa.func.count()).group_by(OutboxMessage.status)
    return {status: 0 for status in STATUSES} | dict(db.session.execute(statement).all())


def recent(*, status: str | None = None, limit: int = 100) -> list[OutboxMessage]:
    """Return the newest messages first, optionally of one status."""
    statement = sa.select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)
    if status is not None:
        statement = statement.where(OutboxMessage.status == status)
    return list(db.session.scalars(statement))
