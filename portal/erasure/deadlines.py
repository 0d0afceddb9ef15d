"""Erasure requests and their deadline (GDPR Art. 12(3)): one month from the request, which
staff may extend by two further months in all, telling the contact why within the first."""

import calendar
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask import render_template
from flask_babel import force_locale
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import footer
from portal import ledger
from portal import outbox
from portal.contacts import Contact
from portal.db import db
from portal.db import utcnow
from portal.gate import Category

#: GDPR Art. 12(3): one month to answer, extendable by two further months.
DEADLINE_MONTHS = 1
MAX_EXTENSION_MONTHS = 2
MAX_REASON = 500


class ErasureError(ValueError):
    """An erasure request cannot be handled as asked; the message says why."""


class ErasureExtension(db.Model):
    """A longer deadline for an erasure request, with the reason given to the contact."""

    __tablename__ = "erasure_extensions"

    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    months: Mapped[int]
    reason: Mapped[str] = mapped_column(sa.String(MAX_REASON))
    actor: Mapped[str] = mapped_column(sa.String(60))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def add_months(moment: datetime, months: int) -> datetime:
    """Return the same day and time `months` later (the month's last day if it is shorter)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class Request:
    """An erasure request waiting for staff, measured against its deadline."""

    contact: Contact
    extension: ErasureExtension | None
    now: datetime

    @property
    def requested_at(self) -> datetime:
        return self.contact.erasure_requested_at

    @property
    def deadline(self) -> datetime:
        extra = self.extension.months if self.extension else 0
        return add_months(self.requested_at, DEADLINE_MONTHS + extra)

    @property
    def age_days(self) -> int:
        return (self.now - self.requested_at).days

    @property
    def days_left(self) -> int:
        return (self.deadline - self.now).days

    @property
    def overdue(self) -> bool:
        return self.now > self.deadline

    @property
    def can_extend(self) -> bool:
        used = self.extension.months if self.extension else 0
        return not self.overdue and used < MAX_EXTENSION_MONTHS


def request_of(contact: Contact, now: datetime | None = None) -> Request | None:
    """Return the contact's open erasure request, or None if there is none."""
    if contact.erasure_requested_at is None or contact.erased_at is not None:
        return None
    return Request(contact, db.session.get(ErasureExtension, contact.id), now or utcnow())


def requests(now: datetime | None = None) -> list[Request]:
    """Return the open erasure requests, oldest first."""
    now = now or utcnow()
    statement = (
        sa.select(Contact, ErasureExtension)
        .outerjoin(ErasureExtension, ErasureExtension.contact_id == Contact.id)
        .where(Contact.erasure_requested_at.is_not(None), Contact.erased_at.is_(None))
        .order_by(Contact.erasure_requested_at, Contact.id)
    )
    return [
        Request(contact, extension, now)
        for contact, extension in db.session.execute(statement).all()
    ]


def send(
    contact: Contact, template: str, subject, category: Category, **context
) -> outbox.OutboxMessage:
    """Queue a mail about the erasure to the contact's address, in their language."""
    with force_locale(contact.language or "en"):
        subject = str(subject)
        text = render_template(f"mail/{template}.txt", subject=subject, **context)
        html = render_template(f"mail/{template}.html", subject=subject, **context)
    # Staff send it (N4), but the contact asked to be erased: the impersonal footer, with no
    # preference link to a record on its way out, and nothing personal in a receipt that is
    # kept after the erasure.
    text, html = footer.add_footer(text, html, contact, personal=False)
    return outbox.enqueue(
        category=category,
        contact=contact,
        recipient=contact.email,
        subject=subject,
        text_body=text,
        html_body=html,
    )


def extend(
    contact: Contact, *, months: int, reason: str | None, actor: str, now: datetime | None = None
) -> ErasureExtension:
    """Extend a request's deadline (Art. 12(3)) and tell the contact why, within the first month."""
    request = request_of(contact, now)
    if request is None:
        raise ErasureError(str(_l("This contact has no open erasure request.")))
    reason = (reason or "").strip()
    if not reason:
        raise ErasureError(str(_l("Give a reason: the contact is told why it takes longer.")))
    if len(reason) > MAX_REASON:
        raise ErasureError(str(_l("Keep the reason under %(count)d characters.", count=MAX_REASON)))
    if request.overdue:
        raise ErasureError(
            str(
                _l(
                    "The deadline has passed: an extension must be made and "
                    "announced before it. Erase the data now."
                )
            )
        )
    used = request.extension.months if request.extension else 0
    if months < 1 or used + months > MAX_EXTENSION_MONTHS:
        raise ErasureError(
            str(
                _l(
                    "The deadline can be extended by at most %(count)d further months in all.",
                    count=MAX_EXTENSION_MONTHS,
                )
            )
        )
    extension = request.extension or ErasureExtension(contact_id=contact.id, months=0)
    extension.months, extension.reason, extension.actor = used + months, reason, actor
    db.session.add(extension)
    ledger.append(
        contact_ref=contact.public_id,
        subject_type="erasure",
        action="extended",
        value_from=str(DEADLINE_MONTHS + used),
        value_to=str(DEADLINE_MONTHS + used + months),
        legal_basis="gdpr-art-12-3",
        method="staff",
        actor=actor,
    )
    db.session.flush()
    # Caused by the contact's own request, and the law requires telling them: own_action
    # passes the block a pending erasure request puts on every other kind of mail.
    deadline = Request(contact, extension, request.now).deadline
    send(
        contact,
        "erasure_extended",
        _l("Your erasure request needs more time"),
        Category.OWN_ACTION,
        reason=reason,
        deadline=deadline,
    )
    return extension
