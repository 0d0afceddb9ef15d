"""Erase personal data and delete records (P8, B5).

Erasing keeps the record's non-personal history (its ledger events hold opaque ids and digests
only) and removes everything that names the person: the personal fields, sensitive values,
pending changes and undo records, the ledger's personal evidence, the bodies and addresses of
mail to them (outbox and demo mailbox), and what staff wrote about them. A receipt is queued to
the address before it goes; the outbox row keeps the address until the receipt is handed to
SMTP, and the address is masked in that row as soon as its delivery ends (sent, failed or
refused). Deleting does the same and removes the row, leaving a tombstone.
"""

import re

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from portal import doi
from portal import export
from portal import ledger
from portal import optin
from portal import outbox
from portal import restriction
from portal import suppression
from portal import tracking
from portal import webforms
from portal.changes import PendingChange
from portal.changes import Undo
from portal.contacts import Contact
from portal.contacts import ContactTombstone
from portal.contacts import FieldDefinition
from portal.db import db
from portal.db import utcnow
from portal.erasure.deadlines import ErasureError
from portal.erasure.deadlines import ErasureExtension
from portal.erasure.deadlines import send
from portal.erasure.log import KEPT
from portal.erasure.log import ErasureLog
from portal.erasure.log import latest_log
from portal.erasure.log import mask_email
from portal.gate import Category
from portal.gate import InboundMessage
from portal.mailbox import CapturedMail

#: The built-in fields that name the person; erasure blanks them (with the personal custom ones).
PERSONAL_COLUMNS = ("email", "first_name", "last_name", "phone")


class AlreadyErased(ErasureError):
    """The contact's personal data was erased before: nothing is left to erase."""


def _blank_fields(contact: Contact) -> list[dict]:
    erased = []
    blanked = [name for name in PERSONAL_COLUMNS if getattr(contact, name)]
    for name in PERSONAL_COLUMNS:
        setattr(contact, name, None)
    sensitive = []
    for value in list(contact.values):
        field: FieldDefinition = value.field
        if field.sensitive:
            sensitive.append(field.name)
        elif field.personal:
            blanked.append(field.name)
        else:
            continue
        contact.values.remove(value)  # delete-orphan: the row and its ciphertext are gone
    if blanked:
        erased.append({"item": "fields", "detail": ", ".join(blanked)})
    if sensitive:
        erased.append({"item": "sensitive", "detail": ", ".join(sensitive)})
    return erased


def _counted(item: str, count: int) -> list[dict]:
    return [{"item": item, "detail": str(count)}] if count else []


def _delete_rows(model, contact: Contact) -> int:
    return db.session.execute(sa.delete(model).where(model.contact_id == contact.id)).rowcount


def _scrub_mail(contact: Contact, address: str, masked: str, keep_id: int) -> list[dict]:
    """Remove the address and the bodies of every message to it, but the receipt just queued."""
    rows = db.session.scalars(
        sa.select(outbox.OutboxMessage).where(
            sa.or_(
                outbox.OutboxMessage.contact_id == contact.id,
                sa.func.lower(outbox.OutboxMessage.recipient) == address,
            ),
            outbox.OutboxMessage.id != keep_id,
        )
    ).all()
    for row in rows:
        row.recipient, row.subject, row.text_body, row.html_body = masked, "[erased]", "", None
        row.headers = {}
        if row.reason:
            # A mail server's answer, or our own refusal, may quote the address.
            row.reason = _replace_caseless(row.reason, address, masked)
        if row.status in ("queued", "sending"):
            row.status, row.lease_until = "refused", None
            row.reason = "refused when erased: the contact's personal data was erased"
    caught = db.session.scalars(
        sa.select(CapturedMail).where(sa.func.lower(CapturedMail.rcpt_to).contains(address))
    ).all()
    caught = [
        mail
        for mail in caught
        if address in (line.strip().lower() for line in mail.rcpt_to.splitlines())
    ]
    for mail in caught:
        db.session.delete(mail)
    return _counted("outbox", len(rows)) + _counted("mailbox", len(caught))


def _forget(contact: Contact, address: str, masked: str, receipt_id: int) -> list[dict]:
    """Remove everything but the contact row that names the person; return what went."""
    erased = _counted("pending_changes", _delete_rows(PendingChange, contact))
    erased += _counted("undo_records", _delete_rows(Undo, contact))
    erased += _counted("ledger_evidence", ledger.clear_evidence(contact.public_id))
    erased += _scrub_mail(contact, address, masked, receipt_id)
    erased += _counted("inbound", _delete_rows(InboundMessage, contact))
    waiting = _delete_rows(webforms.SignupRequest, contact) + _delete_rows(doi.DoiRequest, contact)
    erased += _counted("requests", waiting)
    erased += _counted("exports", _delete_rows(export.ExportLine, contact))
    erased += _counted("engagement", _delete_rows(tracking.EngagementEvent, contact))
    notes = _delete_rows(restriction.RestrictionNote, contact)
    notes += _delete_rows(ErasureExtension, contact)
    # Opt-in notes (out-of-band evidence, the reasons staff gave) keep their row, so the
    # ledger events naming them still show that a note was written, but lose its text; staff
    # wrote names and phone numbers there.
    notes += db.session.execute(
        sa.update(optin.OptInNote)
        .where(optin.OptInNote.contact_id == contact.id, optin.OptInNote.text.is_not(None))
        .values(text=None)
    ).rowcount
    erased += _counted("staff_notes", notes)
    suppression.suppress(address, suppression.ERASURE)
    return erased


def _begin(contact: Contact, mode: str, actor: str) -> tuple[ErasureLog, str, int]:
    if contact.erased_at is not None or not contact.email:
        raise AlreadyErased(
            str(
                _l(
                    "This contact's personal data was already erased on "
                    "%(date)s. Nothing was changed.",
                    date=(contact.erased_at or utcnow()).date().isoformat(),
                )
            )
        )
    address = contact.email
    log = ErasureLog(
        contact_ref=contact.public_id,
        masked_identity=mask_email(address),
        mode=mode,
        actor=actor,
        requested_at=contact.erasure_requested_at,
        erased=[],
        kept=[],
    )
    db.session.add(log)
    db.session.flush()
    # The receipt goes before the address does; the gate lets it through because it was
    # queued no later than the erasure.
    kept = ("ledger", "suppression") + (("non_personal",) if mode == "erase" else ())
    receipt = send(
        contact,
        "erasure_receipt",
        _l("Your personal data has been erased"),
        Category.ERASURE_RECEIPT,
        reference=log.id,
        kept=[KEPT[key] for key in kept],
    )
    return log, address, receipt.id


def erase(contact: Contact, *, actor: str, method: str = "staff") -> ErasureLog:
    """Erase the contact's personal data, keep its non-personal history; return the log entry."""
    log, address, receipt_id = _begin(contact, "erase", actor)
    erased = _blank_fields(contact) + _forget(contact, address, log.masked_identity, receipt_id)
    contact.erased_at = utcnow()
    contact.link_version += 1  # every link issued to the address dies with it
    event = ledger.append(
        contact_ref=contact.public_id,
        subject_type="erasure",
        action="erased",
        legal_basis="gdpr-art-17",
        method=method,
        actor=actor,
        evidence_ref=f"erasure-log:{log.id}",
    )
    log.erased = erased
    log.kept = ["ledger", "suppression", "non_personal", "message_history", "receipt"]
    log.event_id = event.id
    db.session.flush()
    return log


def delete(contact: Contact, *, actor: str, method: str = "staff") -> ErasureLog:
    """Delete the whole record, leaving a tombstone and the same suppression as an erasure."""
    already_erased = contact.erased_at is not None
    if already_erased:
        address, receipt_id = None, None
        log = ErasureLog(
            contact_ref=contact.public_id,
            mode="delete",
            actor=actor,
            masked_identity=_previous_identity(contact),
            requested_at=contact.erasure_requested_at,
            erased=[],
            kept=[],
        )
        db.session.add(log)
        db.session.flush()
        erased = []
    else:
        log, address, receipt_id = _begin(contact, "delete", actor)
        erased = _forget(contact, address, log.masked_identity, receipt_id)
    erased.append({"item": "record", "detail": ""})
    event = ledger.append(
        contact_ref=contact.public_id,
        subject_type="erasure",
        action="deleted",
        legal_basis="gdpr-art-17",
        method=method,
        actor=actor,
        evidence_ref=f"erasure-log:{log.id}",
    )
    db.session.add(
        ContactTombstone(
            public_id=contact.public_id, reason=f"deleted by {actor}; erasure log {log.id}"
        )
    )
    db.session.delete(contact)
    log.erased = erased
    log.kept = ["ledger", "suppression", "tombstone"] + (["receipt"] if address else [])
    log.event_id = event.id
    db.session.flush()
    return log


def _previous_identity(contact: Contact) -> str:
    earlier = latest_log(contact.public_id)
    return earlier.masked_identity if earlier else "—"


@sa.event.listens_for(outbox.OutboxMessage.status, "set")
def _mask_receipt_address(row, status, _previous, _initiator) -> None:
    """Mask an erasure receipt's address once its delivery ends (sent, failed or refused)."""
    if (
        row.category == Category.ERASURE_RECEIPT.value
        and status in ("sent", "failed", "refused")
        and row.recipient
        and "***@" not in row.recipient
    ):
        row.recipient = mask_email(row.recipient)


#: An address as a mail server's answer may quote it.
_ADDRESS = re.compile(r"[^\s<>\"'(),;:@]+@[^\s<>\"'(),;:@]+")


@sa.event.listens_for(Session, "before_flush")
def _mask_receipt_reasons(session, _context, _instances) -> None:
    """Mask any address in an erasure receipt's outcome (a bounce quotes its recipient)."""
    for row in (*session.new, *session.dirty):
        if (
            isinstance(row, outbox.OutboxMessage)
            and row.category == Category.ERASURE_RECEIPT.value
            and row.reason
            and "@" in row.reason
        ):
            row.reason = _ADDRESS.sub(lambda found: mask_email(found.group(0)), row.reason)


@sa.event.listens_for(Session, "before_flush")
def _mask_caught_receipts(session, _context, _instances) -> None:
    """Mask a suppressed address in mail the demo mailbox catches (the erasure receipt)."""
    for mail in session.new:
        if not isinstance(mail, CapturedMail):
            continue
        with session.no_autoflush:
            for address in (line.strip() for line in mail.rcpt_to.splitlines()):
                if "@" in address and _suppressed(address):
                    masked = mask_email(address)
                    mail.rcpt_to = mail.rcpt_to.replace(address, masked)
                    mail.raw = _replace_caseless(mail.raw, address, masked)


def _suppressed(address: str) -> bool:
    try:
        return suppression.is_suppressed(address)
    except ValueError:
        return False


def _replace_caseless(text: str, old: str, new: str) -> str:
    lowered, needle, parts, start = text.lower(), old.lower(), [], 0
    while (found := lowered.find(needle, start)) >= 0:
        parts.append(text[start:found] + new)
        start = found + len(old)
    parts.append(text[start:])
    return "".join(parts)
