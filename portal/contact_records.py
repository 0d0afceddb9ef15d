"""A contact's record as staff see it (P9, S4), and the changes they make to it: its fields,
its address, and reveals of sensitive values.

Each change is a ledger event that names the field but never holds its value (ledger rows hold
ids and digests only). A record whose processing is stopped refuses all of them (P7, B6).
"""

import re
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l

from portal import consent
from portal import contacts
from portal import doi
from portal import gate
from portal import ledger
from portal import optin
from portal import suppression
from portal.consent import ConsentDefinition
from portal.consent import ConsentState
from portal.contact_filters import SavedFilter
from portal.contact_filters import has_control_characters
from portal.contacts import KINDS
from portal.contacts import Contact
from portal.contacts import ContactError
from portal.contacts import FieldDefinition
from portal.db import db
from portal.outbox import OutboxMessage
from portal.staff import RevealPermission
from portal.staff import StaffUser
from portal.staff import can_reveal

#: The built-in fields staff edit as text, with their longest value.
TEXT_FIELDS = {"first_name": 100, "last_name": 100, "phone": 40, "region": 40}
MAX_CUSTOM = 500
NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


class RevealRefused(ValueError):
    """A sensitive value cannot be revealed; the message says why."""


class StaleRecord(ValueError):
    """Someone changed the record since the form was opened."""


def refuse_if_closed(contact: Contact) -> None:
    """Raise ContactError if staff may not change the record: erased, or processing stopped."""
    if contact.erased_at is not None:
        raise ContactError(
            str(_l("This contact's personal data was erased; the record cannot be changed."))
        )
    if contact.processing_stopped_at is not None:
        raise contacts.RecordLocked(contact)


def custom_fields() -> list[FieldDefinition]:
    """Return the custom field definitions, in the order they were made."""
    return list(
        db.session.scalars(
            sa.select(FieldDefinition).where(~FieldDefinition.builtin).order_by(FieldDefinition.id)
        )
    )


def _record(contact: Contact, name: str, action: str, actor: str, evidence=None) -> None:
    ledger.append(
        contact_ref=contact.public_id,
        subject_type="contact",
        subject_ref=name,
        action=action,
        method="staff",
        actor=actor,
        evidence=evidence,
    )


def _control_message() -> str:
    return str(_l("Remove the invisible control characters (a pasted tab or line break)."))


def _check_typed(definition: FieldDefinition, value: str) -> str | None:
    if not value or definition.value_type == "text":
        return None
    if definition.value_type == "number":
        if not NUMBER.match(value):
            return str(_l("Enter a number, such as 42 or 3.5."))
    elif definition.value_type == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            return str(_l("Enter a date as year-month-day, such as 2026-03-31."))
    return None


def update_fields(
    contact: Contact, values: dict[str, str], *, version: int, languages: list[str], actor: str
) -> dict[str, str]:
    """Apply staff's edits of the record's fields; return a message per refused field.

    Nothing is meant to be kept when a message is returned: the caller rolls back. A sensitive
    field left empty keeps its value. Raises StaleRecord if `version` is not the record's.
    """
    refuse_if_closed(contact)
    if version != contact.version:
        raise StaleRecord()
    errors: dict[str, str] = {}
    for name, longest in TEXT_FIELDS.items():
        if name not in values:
            continue  # a field the form did not send keeps its value
        value = " ".join(values[name].split())
        if has_control_characters(value):
            errors[name] = _control_message()
        elif len(value) > longest:
            errors[name] = str(_l("At most %(count)d characters.", count=longest))
        elif value != (getattr(contact, name) or ""):
            setattr(contact, name, value or None)
            _record(contact, name, "field_changed", actor)
    for name, choices in (("language", languages), ("kind", KINDS)):
        if name not in values:
            continue
        value = values[name]
        if name == "language" and value == "":
            value = None
        elif value not in choices:
            errors[name] = str(_l("Choose one of the offered values."))
            continue
        if value != getattr(contact, name):
            setattr(contact, name, value)
            _record(contact, name, "field_changed", actor)
    for definition in custom_fields():
        if definition.name not in values:
            continue
        value = values[definition.name].strip()
        if definition.sensitive and not value:
            continue  # an empty box keeps the stored value: staff never see it to retype it
        current = contacts.field_value(contact, definition.name) or ""
        if not definition.sensitive and value == current:
            continue
        problem = _control_message() if has_control_characters(value) else None
        problem = problem or _check_typed(definition, value)
        if problem is None and len(value) > MAX_CUSTOM:
            problem = str(_l("At most %(count)d characters.", count=MAX_CUSTOM))
        if problem is None:
            try:
                contacts.set_field_value(contact, definition, value or None)
            except ContactError as error:
                problem = str(error)
        if problem is not None:
            errors[definition.name] = problem
        else:
            _record(contact, definition.name, "field_changed", actor)
    if not errors:
        db.session.flush()
    return errors


def change_email(contact: Contact, address: str, *, actor: str) -> None:
    """Give the contact a new address; its single or double opt-in falls back to None (M5).

    An opted-out contact stays opted out, but a revert no longer gives back a consent the old
    address gave, and the old address goes on the suppression list: nothing else would keep
    it from coming back as a new contact. Links mailed to the old address stop working (its
    mailbox no longer speaks for the contact), and its open double opt-in requests expire: no
    reminder of them goes to the new address.
    """
    refuse_if_closed(contact)
    try:
        address = contacts.normalise_email(address)
    except contacts.InvalidEmail:
        raise ContactError(
            str(_l("Enter a valid email address, such as name@example.com."))
        ) from None
    if address == contact.email:
        raise ContactError(str(_l("This is already the contact's address.")))
    if db.session.scalar(sa.select(Contact.id).where(Contact.email == address)) is not None:
        raise ContactError(str(_l("Another contact has this address.")))
    refused = suppression.refusal(address)
    if refused is not None:
        raise contacts.AddressSuppressed(refused)
    leaving = contact.email
    contact.email = address
    contact.link_version += 1
    _record(contact, "email", "email_changed", actor)
    # After the event, which locks the ledger's head before this reads or writes other rows.
    suppression.keep_out_leaving_address(contact, leaving)
    optin.address_changed(contact, method="staff", actor=actor)
    doi.expire_open(contact)
    db.session.flush()


def reveal(
    contact: Contact,
    definition: FieldDefinition,
    user: StaffUser,
    *,
    evidence: ledger.Evidence | None = None,
) -> str:
    """Return a sensitive value in full, recording who revealed which field (E3, B6).

    Raises PermissionError for staff without the field's reveal right, RevealRefused when the
    record is locked or holds no value that may be shown.
    """
    if not definition.sensitive or definition.builtin:
        raise RevealRefused(str(_l("Only sensitive fields are masked.")))
    if not can_reveal(user, definition.id):
        raise PermissionError(definition.name)
    if contact.processing_stopped_at is not None:
        raise RevealRefused(
            str(_l("Processing of this contact's data is stopped: its values cannot be revealed."))
        )
    value = contacts.field_value(contact, definition.name, reveal=True)
    if value is None:
        raise RevealRefused(
            str(_l("There is no value to reveal, or the contact withdrew the consent to store it."))
        )
    _record(contact, definition.name, "field_revealed", f"staff:{user.id}", evidence)
    return value


@dataclass
class FieldRow:
    """One field of the record as staff see it: its value masked when sensitive."""

    definition: FieldDefinition
    value: str | None
    may_reveal: bool = False
    withdrawn: bool = False


def field_rows(contact: Contact, user: StaffUser) -> list[FieldRow]:
    """Return the record's custom fields, sensitive values masked, with who may reveal them."""
    rows = []
    for definition in custom_fields():
        row = FieldRow(definition, contacts.field_value(contact, definition.name))
        if definition.sensitive:
            row.withdrawn = contacts.storage_withdrawn(contact, definition)
            row.may_reveal = (
                row.value is not None
                and can_reveal(user, definition.id)
                and contact.processing_stopped_at is None
            )
        rows.append(row)
    return rows


@dataclass
class ConsentRow:
    """One consent on the record's Consents block: its state now and its history (P9)."""

    definition: ConsentDefinition
    state: ConsentState | None
    history: list[ledger.LedgerEvent]


def consent_rows(contact: Contact, events: list[ledger.LedgerEvent]) -> list[ConsentRow]:
    """Return each consent's state (None: never asked) and its events, for the Consents block."""
    states = {state.consent_id: state for state in consent.states_of(contact)}
    definitions = db.session.scalars(sa.select(ConsentDefinition).order_by(ConsentDefinition.id))
    rows = []
    for definition in definitions:
        state = states.get(definition.id)
        if definition.retired_at is not None and state is None:
            continue
        history = [
            event
            for event in events
            if event.subject_type == "consent" and event.subject_ref == definition.slug
        ]
        rows.append(ConsentRow(definition, state, history))
    return rows


@dataclass
class MessageRow:
    """A message to the contact; for one still waiting, what the gate would decide now."""

    message: OutboxMessage
    decision_now: gate.Decision | None = None


def messages_to(contact: Contact, limit: int = 50) -> list[MessageRow]:
    """Return the newest messages queued for the contact, with the gate's decisions."""
    statement = (
        sa.select(OutboxMessage)
        .where(OutboxMessage.contact_id == contact.id)
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    )
    rows = []
    for message in db.session.scalars(statement):
        row = MessageRow(message)
        if message.status in ("queued", "sending"):
            # The gate is asked again at hand-off: show staff what it would say now.
            row.decision_now = gate.decide(
                message.category,
                recipient=message.recipient,
                contact=contact,
                list_id=message.list_id,
                in_reply_to=message.in_reply_to,
                consent_slug=message.consent_slug,
                queued_at=message.created_at,
            )
        rows.append(row)
    return rows


#: Saved filters the demo starts with: entry points into the list on a newcomer's first day.
DEMO_FILTERS = (
    ("Erasure requested", "erasure=yes"),
    ("Processing stopped", "stopped=yes"),
    ("Double opt-in in the EU, on the newsletter", "opt_in=double&region=EU&list=newsletter"),
    ("Tracking consent never asked", "consent.tracking=never"),
)


def prepare_demo(admin_email: str, count_created) -> None:
    """Give the demo's contacts pages saved filters and let the demo admin reveal sensitive
    fields; call `count_created` for each thing made. Changes nothing the second time."""
    for name, query in DEMO_FILTERS:
        if db.session.scalar(sa.select(SavedFilter.id).where(SavedFilter.name == name)) is None:
            db.session.add(SavedFilter(name=name, query=query))
            count_created("saved filters")
    admin = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == admin_email))
    for definition in custom_fields():
        if admin is not None and definition.sensitive and not can_reveal(admin, definition.id):
            db.session.add(RevealPermission(staff_id=admin.id, field_id=definition.id))
            count_created("reveal permissions")
    db.session.flush()
