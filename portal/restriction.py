"""Stopping and lifting the processing of a contact's data on staff's side (P7, B6, Art. 18).

A contact stops processing from their own page; staff can record it for them (the contact asked
by phone, say), and the contact is mailed a receipt. Lifting it needs a reason, and the contact
is mailed before it is lifted (Art. 18(3)). Each step is a ledger event; the reason staff wrote
is kept beside it, out of the ledger, because free text may name people and erasure must be
able to clear it.
"""

from datetime import datetime

import sqlalchemy as sa
from flask import render_template
from flask_babel import force_locale
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import contacts
from portal import footer
from portal import ledger
from portal import outbox
from portal.contacts import Contact
from portal.db import db
from portal.db import utcnow
from portal.gate import Category

ACTIONS = ("stopped", "lifted")
MAX_REASON = 500


class RestrictionError(ValueError):
    """Processing cannot be stopped or lifted as asked; the message says why."""


class RestrictionNote(db.Model):
    """Why staff stopped or lifted the processing of a contact's data."""

    __tablename__ = "restriction_notes"
    __table_args__ = (sa.CheckConstraint(sa.column("action").in_(ACTIONS), name="action"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    action: Mapped[str] = mapped_column(sa.String(10))
    reason: Mapped[str] = mapped_column(sa.String(MAX_REASON))
    actor: Mapped[str] = mapped_column(sa.String(60))
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_events.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _clean_reason(reason: str | None) -> str:
    cleaned = (reason or "").strip()
    if not cleaned:
        raise RestrictionError(str(_l("Give a reason.")))
    if len(cleaned) > MAX_REASON:
        raise RestrictionError(
            str(_l("Keep the reason under %(count)d characters.", count=MAX_REASON))
        )
    return cleaned


def _note(contact: Contact, action: str, reason: str, actor: str, event_id: int) -> None:
    db.session.add(
        RestrictionNote(
            contact_id=contact.id, action=action, reason=reason, actor=actor, event_id=event_id
        )
    )
    db.session.flush()


def _mail(contact: Contact, template: str, subject) -> None:
    with force_locale(contact.language or "en"):
        subject = str(subject)
        text = render_template(f"mail/{template}.txt", contact=contact, subject=subject)
        html = render_template(f"mail/{template}.html", contact=contact, subject=subject)
    # Staff stop or lift it (N4: their mail carries the footer); the page it links to shows
    # the contact that their processing is stopped.
    text, html = footer.add_footer(text, html, contact)
    outbox.enqueue(
        category=Category.OWN_ACTION,
        contact=contact,
        recipient=contact.email,
        subject=subject,
        text_body=text,
        html_body=html,
    )


def stop(contact: Contact, *, reason: str | None, actor: str) -> None:
    """Stop processing on the contact's behalf (they asked staff), recording why."""
    reason = _clean_reason(reason)
    if contact.erased_at is not None:
        raise RestrictionError(str(_l("This contact's personal data was erased.")))
    if contact.processing_stopped_at is not None:
        raise RestrictionError(str(_l("Processing of this contact's data is already stopped.")))
    contacts.stop_processing(contact, method="staff", actor=actor)
    stopped = db.session.scalar(
        sa.select(ledger.LedgerEvent.id)
        .where(
            ledger.LedgerEvent.contact_ref == contact.public_id,
            ledger.LedgerEvent.subject_type == "restriction",
        )
        .order_by(ledger.LedgerEvent.id.desc())
        .limit(1)
    )
    _note(contact, "stopped", reason, actor, stopped)
    # A receipt, as for a change the contact confirms on their page: and if someone else asked
    # in their name, the real contact hears of it at once.
    _mail(contact, "restriction_stopped", _l("We have stopped processing your data"))


def lift(contact: Contact, *, reason: str | None, actor: str) -> None:
    """Lift a stopped processing: mail the contact first (Art. 18(3)), then unlock the record.

    The contact stays opted out of marketing email: only they can opt in again (M5).
    """
    reason = _clean_reason(reason)
    if contact.processing_stopped_at is None:
        raise RestrictionError(str(_l("Processing of this contact's data is not stopped.")))
    if contact.erased_at is not None or not contact.email:
        raise RestrictionError(str(_l("This contact's personal data was erased.")))
    # "own_action": the law requires telling the contact before the lift, whatever their
    # opt-in status, and the stop this answers was their own request. A notice would be
    # refused by the very opt-out that stopping processing set.
    _mail(contact, "restriction_lifted", _l("The processing of your data resumes"))
    event = ledger.append(
        contact_ref=contact.public_id,
        subject_type="restriction",
        action="lifted",
        legal_basis="gdpr-art-18",
        method="staff",
        actor=actor,
    )
    contact.processing_stopped_at = None
    _note(contact, "lifted", reason, actor, event.id)


def notes_of(contact: Contact) -> list[RestrictionNote]:
    """Return the reasons staff gave for stopping and lifting, newest first."""
    statement = (
        sa.select(RestrictionNote)
        .where(RestrictionNote.contact_id == contact.id)
        .order_by(RestrictionNote.id.desc())
    )
    return list(db.session.scalars(statement))
