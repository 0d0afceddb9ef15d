"""The email opt-in state machine (M1-M5, B8): the transition table, in one place.

Every change of a contact's opt-in status goes through `transition`, which looks the pair
(status now, event) up in `TABLE` and records the change as one ledger event. A pair that is
not in the table is refused with a reason; a row of the table that leaves the status as it is
("Double stays Double", a web form for an opted-out address) is not refused and records
nothing, so repeating an event is harmless. The one state beside the status, the status an
opt-out remembers for its revert, obeys the table's last row too (`address_changed`).
"""

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import contacts
from portal import ledger
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.crypto import keyed_digest
from portal.db import db
from portal.db import utcnow
from portal.keys import keyset

#: The state of a contact that has no opt-in status yet: being created.
NEW = "new"
MAX_REASON = 200
MAX_EVIDENCE_TEXT = 2000


class Event(StrEnum):
    """What can happen to a contact's opt-in status (the "Event" column of M5)."""

    CREATED = "created"
    CREATED_SINGLE_USER = "created_single_user"
    STAFF_SINGLE_USER = "staff_single_user"
    WEBFORM_TICKED = "webform_ticked"
    DOI_CONFIRMED = "doi_confirmed"
    STAFF_OPT_OUT = "staff_opt_out"
    STAFF_REVERT = "staff_revert"
    CONTACT_OPT_OUT = "contact_opt_out"
    EMAIL_CHANGED = "email_changed"
    # Not a row of M5's table: the contact uses the undo link mailed with their own opt-out
    # (P4), which gives back the status they had. Only the contact's mailbox holds that link.
    CONTACT_UNDO = "contact_undo"


#: The events staff choose on a contact's record, in the order the record view shows them.
STAFF_EVENTS = (Event.STAFF_SINGLE_USER, Event.STAFF_OPT_OUT, Event.STAFF_REVERT)
#: Staff events that need a reason (M5: "giving a reason"; an opt-out and its revert too).
NEEDS_REASON = frozenset(STAFF_EVENTS)

#: A row's target: a status, None for "unchanged", or a function of the contact.
Target = OptIn | None | Callable[[Contact], OptIn]

SINGLES = (OptIn.SINGLE_USER, OptIn.SINGLE_WEBFORM)
#: The statuses that say the address agreed to marketing email; the address changing takes
#: them back (M5's last row).
CONSENTS = (*SINGLES, OptIn.DOUBLE)
EVERY_STATUS = tuple(OptIn)
#: The ledger's subject_ref for a change of the status an opt-out remembers (not the status).
BEFORE_OPT_OUT = "before_opt_out"


def restored_by_revert(contact: Contact) -> OptIn:
    """Return the status a revert of the contact's opt-out (or their own undo) gives back."""
    before = contact.opt_in_before_opt_out
    if before is None or OptIn(before) in contacts.OPT_OUTS:
        return OptIn.NONE
    return OptIn(before)


def _rows() -> dict[tuple[str, Event], Target]:
    table: dict[tuple[str, Event], Target] = {
        (NEW, Event.CREATED): OptIn.NONE,
        (NEW, Event.CREATED_SINGLE_USER): OptIn.SINGLE_USER,
        (OptIn.NONE, Event.STAFF_SINGLE_USER): OptIn.SINGLE_USER,
        (OptIn.OPTOUT_USER, Event.STAFF_REVERT): restored_by_revert,
    }
    for status in (OptIn.NONE, *SINGLES):
        table[status, Event.WEBFORM_TICKED] = OptIn.SINGLE_WEBFORM
    # Double stays Double; an opted-out address changes only once the double opt-in is
    # confirmed (the mail is sent all the same).
    for status in (OptIn.DOUBLE, *contacts.OPT_OUTS):
        table[status, Event.WEBFORM_TICKED] = None
    for status in EVERY_STATUS:
        # "Any but erased": erasure is checked before the table.
        table[status, Event.DOI_CONFIRMED] = OptIn.DOUBLE
        table[status, Event.CONTACT_OPT_OUT] = OptIn.OPTOUT_CONTACT
        if status is not OptIn.OPTOUT_CONTACT:
            table[status, Event.STAFF_OPT_OUT] = OptIn.OPTOUT_USER
    # An opted-out contact keeps the opt-out (`address_changed` forgets the consent that a
    # revert would give back).
    for status in CONSENTS:
        table[status, Event.EMAIL_CHANGED] = OptIn.NONE
    table[OptIn.OPTOUT_CONTACT, Event.CONTACT_UNDO] = restored_by_revert
    return table


#: M5's transitions: (status now, event) -> the status after. Anything else is refused.
TABLE = _rows()

#: Why a pair is refused, for the events whose refusals have a specific explanation.
REFUSALS = {
    Event.CREATED: _l("only a new contact is created"),
    Event.CREATED_SINGLE_USER: _l("only a new contact is created"),
    Event.STAFF_SINGLE_USER: _l("staff can mark Single opt-in (user) only from None"),
    Event.STAFF_OPT_OUT: _l("the contact opted out themselves; only the contact can change that"),
    Event.STAFF_REVERT: _l("only an opt-out set by staff can be reverted"),
    Event.EMAIL_CHANGED: _l("only a single or double opt-in depends on the address"),
    Event.CONTACT_UNDO: _l("only the contact's own opt-out can be undone"),
}


ERASED = _l("the contact's personal data was erased")
#: What an erased contact refuses: the confirmation ("any but erased"), and staff's changes,
#: since an erased record cannot be changed (the view shows no button for them).
ERASED_REFUSES = frozenset({Event.DOI_CONFIRMED, *STAFF_EVENTS})


class TransitionRefused(ValueError):
    """The opt-in status cannot change as asked; the message says why."""

    def __init__(self, status: str, event: Event, reason):
        super().__init__(f"{_label(status)}: {reason}")
        self.status = status
        self.event = event
        self.reason = reason


def _label(status: str) -> str:
    return "a new contact" if status == NEW else STATUS_WORDS[OptIn(status)]


#: The statuses in plain words, for staff (the contact's page words them for the contact).
STATUS_WORDS = {
    OptIn.NONE: _l("None"),
    OptIn.SINGLE_USER: _l("Single opt-in (user)"),
    OptIn.SINGLE_WEBFORM: _l("Single opt-in (webform)"),
    OptIn.DOUBLE: _l("Double opt-in"),
    OptIn.OPTOUT_USER: _l("Opt-out (user)"),
    OptIn.OPTOUT_CONTACT: _l("Opt-out (contact)"),
}

#: What each status means, in a sentence, for staff on the contact's record.
STATUS_MEANINGS = {
    OptIn.NONE: _l("The contact has not said whether they want marketing email."),
    OptIn.SINGLE_USER: _l(
        "Staff recorded that the contact agreed to marketing email; the address is not confirmed."
    ),
    OptIn.SINGLE_WEBFORM: _l(
        "The contact ticked the marketing box on a web form but has not confirmed the "
        "double opt-in email yet."
    ),
    OptIn.DOUBLE: _l("The contact asked for marketing email and confirmed their address."),
    OptIn.OPTOUT_USER: _l("Staff opted the contact out at their request; staff can revert it."),
    OptIn.OPTOUT_CONTACT: _l(
        "The contact opted out themselves. Only they can opt in again, by confirming a "
        "double opt-in."
    ),
}

#: What each staff event does, as the record view's buttons say it.
EVENT_WORDS = {
    Event.STAFF_SINGLE_USER: _l("Mark Single opt-in (user)"),
    Event.STAFF_OPT_OUT: _l("Opt out (the contact asked us)"),
    Event.STAFF_REVERT: _l("Revert the opt-out"),
}


#: What an opt-in note holds: evidence of an opt-in confirmed out of band (B8), or the reason
#: staff gave for a change of the status (M5, and `flask contacts add --reason`).
OUT_OF_BAND = "out_of_band"
REASON = "reason"
NOTE_KINDS = (OUT_OF_BAND, REASON)


class OptInNote(db.Model):
    """Staff-written text behind an opt-in event: out-of-band evidence (B8) or a reason (M5).

    The text may name the person ("Ann Smith phoned from +44..."), so it lives here, where
    erasure can clear it, and never in the ledger, which nobody can edit. The ledger event
    names the note (evidence_ref "note:<public id>") and pins its text: out-of-band evidence
    by its SHA-256 (text_sha256, here and in the event), a reason by a keyed digest after the
    note's id in evidence_ref (`reason_digest`). A reason is short and easy to guess, so a bare
    hash of it, kept for ever in the ledger, would let anyone confirm a guess after erasure.
    """

    __tablename__ = "opt_in_notes"
    __table_args__ = (sa.CheckConstraint(sa.column("kind").in_(NOTE_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(
        sa.String(32), unique=True, default=lambda: secrets.token_urlsafe(16)
    )
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    # Notes written before reasons were kept here are all out-of-band evidence.
    kind: Mapped[str] = mapped_column(
        sa.String(20), default=OUT_OF_BAND, server_default=OUT_OF_BAND
    )
    text: Mapped[str | None] = mapped_column(sa.Text)
    text_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    created_by: Mapped[str] = mapped_column(sa.String(60))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def reason_digest(note_id: str, text: str, key_id: str) -> str:
    """Return the keyed digest of a reason that the ledger event naming its note keeps."""
    return keyed_digest("ledger", key_id, f"opt-in-reason:{note_id}:{text}".encode())


def _reason_note(contact: Contact, reason: str, actor: str) -> str:
    """Keep the reason in a note the ledger event names; return the event's evidence_ref."""
    # The id is set here rather than by the column default so that nothing is flushed before
    # the ledger's head is locked (see ledger.lock_head).
    note = OptInNote(
        public_id=secrets.token_urlsafe(16),
        contact_id=contact.id,
        kind=REASON,
        text=reason,
        created_by=actor,
    )
    db.session.add(note)
    # The event is keyed with the active ledger key, so its key_id says which key this is.
    digest = reason_digest(note.public_id, reason, keyset("ledger").active_id)
    return f"note:{note.public_id}:{digest}"


def _state(contact: Contact) -> str:
    """Return the contact's status, or NEW if no opt-in status was ever recorded for it."""
    if contact.id is None:
        return NEW
    recorded = db.session.scalar(
        sa.select(ledger.LedgerEvent.id)
        .where(
            ledger.LedgerEvent.contact_ref == contact.public_id,
            ledger.LedgerEvent.subject_type == "opt_in",
        )
        .limit(1)
    )
    return OptIn(contact.opt_in_status) if recorded is not None else NEW


def target(contact: Contact, event: Event | str, *, state: str | None = None) -> OptIn | None:
    """Return the status an event would give the contact (None: unchanged), or raise
    TransitionRefused naming why the table has no such row."""
    event = Event(event)
    state = state or _state(contact)
    if contact.erased_at is not None and event in ERASED_REFUSES:
        raise TransitionRefused(state, event, ERASED)
    if state == NEW and event not in (Event.CREATED, Event.CREATED_SINGLE_USER):
        raise TransitionRefused(state, event, _l("a new contact starts at None or Single (user)"))
    key = (state if state == NEW else OptIn(state), event)
    if key not in TABLE:
        raise TransitionRefused(state, event, REFUSALS.get(event, _l("not an allowed transition")))
    row = TABLE[key]
    after = row(contact) if callable(row) else row
    if after is not None and state != NEW and after == OptIn(state):
        return None
    return after


def allowed(contact: Contact, event: Event | str) -> bool:
    """Say whether the table has a row for this contact's status and this event."""
    try:
        target(contact, event)
    except TransitionRefused:
        return False
    return True


#: The events by which the contact says no to our email, themselves or through staff.
OPT_OUT_EVENTS = (Event.CONTACT_OPT_OUT, Event.STAFF_OPT_OUT)
#: Called with the contact on each of those events, in the same transaction: the double opt-in
#: module cancels the requests still open, so an old confirmation link cannot undo the "no".
OPT_OUT_HOOKS: list = []


def on_opt_out(hook):
    """Register a function to run when the contact opts out (see OPT_OUT_HOOKS)."""
    OPT_OUT_HOOKS.append(hook)
    return hook


def transition(
    contact: Contact,
    event: Event | str,
    *,
    actor: str,
    method: str,
    reason: str | None = None,
    evidence_ref: str | None = None,
    evidence: ledger.Evidence | None = None,
    text_sha256: str | None = None,
) -> OptIn:
    """Apply one event of M5's table to the contact and return its status after it.

    A change is one ledger event (actor, method, evidence). The reason staff give is kept in an
    opt-in note that erasure clears, and the event only names it (when no other evidence
    reference is given): staff write names and phone numbers there. Raises TransitionRefused.
    """
    event = Event(event)
    reason = (reason or "").strip() or None
    if event in NEEDS_REASON and not reason:
        raise TransitionRefused(contact.opt_in_status, event, _l("give a reason"))
    if reason and len(reason) > MAX_REASON:
        raise TransitionRefused(
            contact.opt_in_status,
            event,
            _l("the reason is longer than %(count)s characters", count=MAX_REASON),
        )
    state = _state(contact)
    after = target(contact, event, state=state)
    if event in OPT_OUT_EVENTS:
        # A "no" outranks every "yes" still waiting for its confirmation (R5), even when the
        # status already said no: a sign-up made since the last opt-out waits too.
        for hook in OPT_OUT_HOOKS:
            hook(contact)
    if after is None:
        return OptIn(contact.opt_in_status)
    if _locked(contact, after, actor):
        raise TransitionRefused(state, event, LOCKED)
    if reason and not evidence_ref:
        evidence_ref = _reason_note(contact, reason, actor)
    contacts.record_opt_in(
        contact,
        after,
        method=method,
        actor=actor,
        evidence_ref=evidence_ref,
        evidence=evidence,
        created=state == NEW,
        text_sha256=text_sha256,
    )
    return after


def _locked(contact: Contact, after: OptIn, actor: str) -> bool:
    # While processing is stopped (P7) only the contact may opt in again; anyone may opt out.
    return (
        contact.processing_stopped_at is not None
        and after not in contacts.OPT_OUTS
        and actor != "contact"
    )


LOCKED = _l("processing of this contact's data is stopped; only the contact can opt in again")


def staff_events(contact: Contact) -> list[Event]:
    """Return the staff transitions the table allows now that would change the status."""
    state = _state(contact)
    events = []
    for event in STAFF_EVENTS:
        try:
            after = target(contact, event, state=state)
        except TransitionRefused:
            continue
        if after is not None and not _locked(contact, after, "staff"):
            events.append(event)
    return events


def address_changed(contact: Contact, *, actor: str, method: str) -> OptIn:
    """Apply M5's "the email address changes" row; return the status after it.

    A single or double opt-in falls to None: the new address has not consented. An opted-out
    contact stays opted out, but the status a revert (or the contact's undo) would give back
    falls to None too, with its own ledger event, so no consent of the old address reaches
    the new one that way.
    """
    if allowed(contact, Event.EMAIL_CHANGED):
        return transition(contact, Event.EMAIL_CHANGED, actor=actor, method=method)
    remembered = restored_by_revert(contact)
    if contact.opt_in_status in contacts.OPT_OUTS and remembered in CONSENTS:
        contact.opt_in_before_opt_out = OptIn.NONE.value
        ledger.append(
            contact_ref=contact.public_id,
            subject_type="opt_in",
            subject_ref=BEFORE_OPT_OUT,
            action="set",
            value_from=remembered.value,
            value_to=OptIn.NONE.value,
            method=method,
            actor=actor,
            evidence_ref=Event.EMAIL_CHANGED.value,
        )
    return OptIn(contact.opt_in_status)


#: Why staff cannot record an opt-in for a contact who opted out on their own (M5).
OWN_OPT_OUT = _l(
    "the contact opted out themselves; only they can opt in again, by confirming a double "
    "opt-in they ask for on a web form or on their preference page"
)
ALREADY_DOUBLE = _l("the contact has already confirmed a double opt-in")


def out_of_band_refusal(contact: Contact):
    """Return why staff cannot record an out-of-band opt-in for the contact now, or None."""
    if contact.opt_in_status == OptIn.OPTOUT_CONTACT:
        # Staff cannot revert the contact's own opt-out (M5); evidence typed by staff would.
        return OWN_OPT_OUT
    try:
        after = target(contact, Event.DOI_CONFIRMED)
    except TransitionRefused as refused:
        return refused.reason
    if after is None:
        return ALREADY_DOUBLE
    if _locked(contact, after, "staff"):
        return LOCKED
    return None


def record_out_of_band(
    contact: Contact,
    *,
    evidence_text: str,
    actor: str,
    evidence: ledger.Evidence | None = None,
) -> OptInNote:
    """Set Double opt-in from a confirmation staff received out of band (B8), with its evidence.

    The evidence (say, "reply of 3 May to our mail, ticket 4411") is required; it is kept
    beside the ledger event that records the change, which names it and its digest. It
    cannot undo an opt-out the contact made themselves: see `out_of_band_refusal`.
    """
    refusal = out_of_band_refusal(contact)
    if refusal is not None:
        raise TransitionRefused(contact.opt_in_status, Event.DOI_CONFIRMED, refusal)
    text = (evidence_text or "").strip()
    if not text:
        raise TransitionRefused(
            contact.opt_in_status,
            Event.DOI_CONFIRMED,
            _l("describe the evidence of the opt-in (a reply email, a signed form)"),
        )
    if len(text) > MAX_EVIDENCE_TEXT:
        raise TransitionRefused(
            contact.opt_in_status,
            Event.DOI_CONFIRMED,
            _l("the evidence is longer than %(count)s characters", count=MAX_EVIDENCE_TEXT),
        )
    digest = hashlib.sha256(text.encode()).hexdigest()
    note = OptInNote(contact_id=contact.id, text=text, text_sha256=digest, created_by=actor)
    db.session.add(note)
    db.session.flush()
    transition(
        contact,
        Event.DOI_CONFIRMED,
        actor=actor,
        method="out_of_band",
        evidence_ref=f"note:{note.public_id}",
        evidence=evidence,
        text_sha256=digest,
    )
    return note


def notes_of(contact: Contact, kind: str | None = OUT_OF_BAND) -> list[OptInNote]:
    """Return a contact's opt-in notes of one kind (all kinds for None), newest first."""
    statement = sa.select(OptInNote).where(OptInNote.contact_id == contact.id)
    if kind is not None:
        statement = statement.where(OptInNote.kind == kind)
    return list(db.session.scalars(statement.order_by(OptInNote.id.desc())))
