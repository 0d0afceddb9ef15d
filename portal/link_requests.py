"""Fresh-link requests, answered by the outbox worker rather than by the request (B1).

"Email me a fresh link" answers the same page whether the address is on file or not
(SECURITY.md 12). Composing the mail in the request would make the answer slower for an
address on file, by the mail's rendering and its row in the outbox: about 2 ms here, which a
stopwatch can read. So every accepted request does the same work, whoever it names: one
indexed look-up of an id, and one row here holding that id or nothing (never the typed
address), committed. The outbox worker turns each row into the mail before its delivery pass
(`outbox.composer`) and deletes it, in the transaction that claims the mail for delivery.
"""

import logging
from datetime import datetime

import sqlalchemy as sa
from flask import render_template
from flask_babel import force_locale
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import contacts
from portal import outbox
from portal import suppression
from portal.contacts import Contact
from portal.db import db
from portal.db import utcnow
from portal.gate import Category
from portal.links import manage_url
from portal.logs import MASK_PERSONAL_DATA
from portal.mail import MessageRejected

log = logging.getLogger(__name__)
log.addFilter(MASK_PERSONAL_DATA)  # what it logs may quote an address

#: Requests turned into mail per transaction.
BATCH = 100


class LinkRequest(db.Model):
    """One accepted request for a fresh link: the contact it names, or none."""

    __tablename__ = "link_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    # None for an address not on file, or a request over its limits: the row only evens out
    # the work, and the worker drops it. No foreign key: checking one (on PostgreSQL, a look-up
    # and a lock of the contact's row) would cost an address on file alone, and the worker
    # drops a row whose contact is gone.
    contact_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


_CONTACT_ID = sa.select(Contact.id).where(Contact.email == sa.bindparam("email"))


def ask(address: str, *, allowed: bool) -> None:
    """Record a request for a fresh link to a normalised address, in the current transaction.

    `allowed` is whether the request is within its limits; one that is not does the same work
    and records no contact.
    """
    contact_id = db.session.scalar(_CONTACT_ID, {"email": contacts.canonical_email(address)})
    db.session.add(LinkRequest(contact_id=contact_id if allowed else None))


def _wanted(contact: Contact | None) -> bool:
    return (contact is not None and contact.erased_at is None
            and contacts.mailable(contact.email) and not suppression.is_suppressed(contact.email))


def send_link(contact: Contact, category: str, subject) -> None:
    """Queue the mail that tells a contact where their page is, in their language (`subject`
    a lazy string, translated into it)."""
    context = {"name": contact.first_name, "url": manage_url(contact)}
    with force_locale(contact.language or "en"):
        subject = str(subject)
        outbox.enqueue(
            category=category, contact=contact, recipient=contact.email,
            subject=subject,
            text_body=render_template("mail/preference_link.txt", subject=subject, **context),
            html_body=render_template("mail/preference_link.html", subject=subject, **context),
        )


@outbox.composer
def answer(limit: int = BATCH) -> int:
    """Queue the fresh links asked for since the last pass, in the current transaction (the
    worker's claim that follows commits it); return how many requests were taken, their mails
    queued or dropped (no contact, erased, suppressed or unmailable)."""
    taken = outbox.take_queued(LinkRequest, limit, LinkRequest.contact_id)
    for row in taken:
        contact = db.session.get(Contact, row.contact_id) if row.contact_id is not None else None
        if not _wanted(contact):
            continue
        with outbox.composing(log, f"fresh link for contact {contact.public_id}",
                              refused=(MessageRejected,)):
            send_link(contact, Category.OWN_ACTION, _l("Your link to your privacy preferences"))
    return len(taken)
