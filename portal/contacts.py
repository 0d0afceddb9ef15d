"""Contacts (leads and customers), their fields and their email opt-in status."""

import re
import secrets
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from portal import ledger
from portal.crypto import decrypt_field
from portal.crypto import encrypt_field
from portal.db import db
from portal.db import utcnow


class OptIn(StrEnum):
    """The six email opt-in statuses of M1."""

    NONE = "none"
    SINGLE_USER = "single_user"
    SINGLE_WEBFORM = "single_webform"
    DOUBLE = "double"
    OPTOUT_USER = "optout_user"
    OPTOUT_CONTACT = "optout_contact"


OPT_OUTS = (OptIn.OPTOUT_USER, OptIn.OPTOUT_CONTACT)
KINDS = ("lead", "contact")
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Deliberately plain: one @, no spaces or control characters, a dot in the domain.
EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


class ContactError(ValueError):
    """A contact cannot be created or changed as asked; the message says why."""


class InvalidEmail(ContactError):
    pass


class RecordLocked(ContactError):
    """The contact stopped the processing of their data (P7): staff cannot change the record."""

    def __init__(self, contact: "Contact"):
        super().__init__("processing of this contact's data is stopped; the record is locked")
        self.contact = contact


class AddressSuppressed(ContactError):
    """The address is on the suppression list (erased, or it left a "no"): it cannot come back
    (B5); the message says why."""


def refuse_if_locked(contact: "Contact") -> None:
    """Raise RecordLocked if the contact's processing is stopped."""
    if contact.processing_stopped_at is not None:
        raise RecordLocked(contact)


def new_public_id() -> str:
    """Return a random opaque id for links and encryption (never the row number)."""
    return secrets.token_urlsafe(16)


def canonical_email(address: str) -> str:
    """Return the address trimmed and lower-cased, or raise InvalidEmail if it is no address.

    The form an address is stored, looked up and hashed in (suppression digests). An address
    typed in is checked further by normalise_email; this one also reads addresses on file from
    before that check existed.
    """
    cleaned = (address or "").strip().lower()
    if len(cleaned) > 254 or not EMAIL.match(cleaned) or ".." in cleaned:
        raise InvalidEmail(f"{address!r} is not a valid email address")
    return cleaned


def normalise_email(address: str) -> str:
    """Return an address typed in, in its canonical form, or raise InvalidEmail.

    Only an address the portal can mail is valid: mail leaves over SMTP as Flask-Mail speaks it
    (no SMTPUTF8), which carries an ASCII local part and a domain IDNA can spell. An address
    that could never be mailed is refused where it is typed, next to its field, rather than on
    file where its first mail (a withdrawal's notice, a fresh link) would fail.
    """
    cleaned = canonical_email(address)
    local_part, domain = cleaned.rsplit("@", 1)
    try:
        if not local_part.isascii():
            raise UnicodeError
        domain.encode("idna")
    except UnicodeError:
        raise InvalidEmail(f"{address!r} cannot receive our email") from None
    return cleaned


def mailable(address: str | None) -> bool:
    """Say whether the portal can mail this address (normalise_email's rules).

    An address on file from before normalise_email refused the ones SMTP cannot carry is
    skipped with a reason by what mails a contact, rather than stopping a job or a withdrawal.
    """
    try:
        normalise_email(address or "")
    except InvalidEmail:
        return False
    return True


class Contact(db.Model):
    __tablename__ = "contacts"
    __table_args__ = (
        sa.CheckConstraint(sa.column("kind").in_(KINDS), name="kind"),
        sa.CheckConstraint(
            sa.column("opt_in_status").in_([s.value for s in OptIn]), name="opt_in_status"
        ),
        sa.CheckConstraint(
            sa.or_(
                sa.column("opt_in_before_opt_out").is_(None),
                sa.column("opt_in_before_opt_out").in_([s.value for s in OptIn]),
            ),
            name="opt_in_before_opt_out",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True, default=new_public_id)
    kind: Mapped[str] = mapped_column(sa.String(10), default="lead")
    # Null once the contact's personal data is erased (the suppression list keeps a digest).
    email: Mapped[str | None] = mapped_column(sa.String(254), unique=True)
    first_name: Mapped[str | None] = mapped_column(sa.String(100))
    last_name: Mapped[str | None] = mapped_column(sa.String(100))
    phone: Mapped[str | None] = mapped_column(sa.String(40))
    region: Mapped[str | None] = mapped_column(sa.String(40))
    language: Mapped[str | None] = mapped_column(sa.String(10))
    opt_in_status: Mapped[str] = mapped_column(sa.String(20), default=OptIn.NONE.value)
    # The status before an opt-out by staff, restored when staff revert it (M5).
    opt_in_before_opt_out: Mapped[str | None] = mapped_column(sa.String(20))
    processing_stopped_at: Mapped[datetime | None]
    erasure_requested_at: Mapped[datetime | None]
    erased_at: Mapped[datetime | None]
    # Raising it revokes every link issued to this contact (R2).
    link_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(default=1)

    values: Mapped[list["FieldValue"]] = relationship(
        back_populates="contact", cascade="all, delete-orphan"
    )

    __mapper_args__ = {"version_id_col": version}

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part) or ""


class FieldDefinition(db.Model):
    """A contact field, built-in or custom: personal ones are blanked by erasure (P8), sensitive
    ones are stored encrypted (E1)."""

    __tablename__ = "field_definitions"
    __table_args__ = (
        sa.CheckConstraint(
            sa.column("value_type").in_(["text", "number", "date"]), name="value_type"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)
    label: Mapped[str] = mapped_column(sa.String(100))
    builtin: Mapped[bool] = mapped_column(default=False)
    personal: Mapped[bool] = mapped_column(default=False)
    sensitive: Mapped[bool] = mapped_column(default=False)
    value_type: Mapped[str] = mapped_column(sa.String(10), default="text")
    # For sensitive fields: how many trailing characters stay visible when masked (E2).
    visible_suffix: Mapped[int] = mapped_column(default=4)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FieldValue(db.Model):
    """The value of a custom field for one contact: plain, or encrypted when sensitive."""

    __tablename__ = "field_values"
    __table_args__ = (sa.UniqueConstraint("contact_id", "field_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    field_id: Mapped[int] = mapped_column(sa.ForeignKey("field_definitions.id"))
    value: Mapped[str | None] = mapped_column(sa.Text)
    ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    key_id: Mapped[str | None] = mapped_column(sa.String(40))
    # The public characters of a sensitive value (E2, E4): what masks show and search matches.
    masked: Mapped[str | None] = mapped_column(sa.String(100))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    contact: Mapped[Contact] = relationship(back_populates="values")
    field: Mapped[FieldDefinition] = relationship()


class ContactTombstone(db.Model):
    """What remains of a deleted contact: its public id, so ledger events still resolve."""

    __tablename__ = "contact_tombstones"

    public_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(sa.String(200))


def mask(value: str, visible_suffix: int) -> str:
    """Return a value with all but its last characters hidden."""
    shown = value[-visible_suffix:] if visible_suffix and len(value) > visible_suffix else ""
    return "•" * min(len(value) - len(shown), 12) + shown


def find_by_email(address: str) -> Contact | None:
    """Return the contact with this address, if any."""
    return db.session.scalar(sa.select(Contact).where(Contact.email == canonical_email(address)))


def field_definition(name: str) -> FieldDefinition | None:
    """Return the definition of a field by name."""
    return db.session.scalar(sa.select(FieldDefinition).where(FieldDefinition.name == name))


def define_field(
    name: str,
    label: str,
    *,
    personal: bool = False,
    sensitive: bool = False,
    value_type: str = "text",
    visible_suffix: int = 4,
) -> FieldDefinition:
    """Create a custom field definition."""
    if not FIELD_NAME.match(name):
        raise ContactError(f"field name {name!r}: use lower-case letters, digits and _")
    if field_definition(name) is not None:
        raise ContactError(f"a field named {name!r} already exists")
    definition = FieldDefinition(
        name=name,
        label=label,
        personal=personal or sensitive,
        sensitive=sensitive,
        value_type=value_type,
        visible_suffix=visible_suffix,
    )
    db.session.add(definition)
    db.session.flush()
    return definition


def set_field_value(contact: Contact, definition: FieldDefinition, value: str | None) -> None:
    """Store a custom field's value for a contact, encrypting it if the field is sensitive."""
    if definition.builtin:
        raise ContactError(f"{definition.name} is a built-in field")
    refuse_if_locked(contact)
    if definition.sensitive and value and storage_withdrawn(contact, definition):
        raise ContactError(f"{definition.label}: the contact withdrew consent to store it")
    # A value added earlier in this transaction has no field_id until the session flushes.
    current = next(
        (
            v
            for v in contact.values
            if (v.field_id == definition.id if v.field_id is not None else v.field is definition)
        ),
        None,
    )
    if current is None:
        current = FieldValue(field=definition)
        contact.values.append(current)
    current.value = current.ciphertext = current.key_id = current.masked = None
    if value is None or value == "":
        return
    if definition.sensitive:
        current.key_id, current.ciphertext = encrypt_field(
            value, table="field_values", column=definition.name, row_id=contact.public_id
        )
        current.masked = mask(value, definition.visible_suffix)
    else:
        current.value = value


def storage_withdrawn(contact: Contact, definition: FieldDefinition) -> bool:
    """Say whether the contact withdrew the consent to store this sensitive field (P5)."""
    # Consents build on contacts, so the tables are reached through the consent module here.
    from portal.consent import storage_revoked

    return storage_revoked(contact, definition)


def field_value(contact: Contact, name: str, *, reveal: bool = False) -> str | None:
    """Return a custom field's value: masked for a sensitive field unless revealing."""
    current = next((v for v in contact.values if v.field.name == name), None)
    if current is None:
        return None
    if current.ciphertext is not None and storage_withdrawn(contact, current.field):
        return None  # locked from the moment the consent is withdrawn (P5)
    if current.ciphertext is None:
        return current.value
    if not reveal:
        return current.masked
    return decrypt_field(
        current.key_id,
        current.ciphertext,
        table="field_values",
        column=name,
        row_id=contact.public_id,
    )


def add_contact(
    email: str,
    *,
    kind: str = "lead",
    first_name: str | None = None,
    last_name: str | None = None,
    phone: str | None = None,
    region: str | None = None,
    language: str | None = None,
    opt_in: OptIn = OptIn.NONE,
    method: str,
    actor: str,
    reason: str | None = None,
) -> Contact:
    """Create a contact, recording its creation and initial opt-in status in the ledger."""
    address = normalise_email(email)
    if kind not in KINDS:
        raise ContactError(f"kind must be one of {', '.join(KINDS)}")
    if opt_in not in (OptIn.NONE, OptIn.SINGLE_USER):
        # M5: a new contact starts at None, or Single opt-in (user) when staff create it so.
        raise ContactError("a new contact starts at 'none' or 'single_user'")
    if db.session.scalar(sa.select(Contact.id).where(Contact.email == address)) is not None:
        raise ContactError("a contact with this email address already exists")
    # Suppression builds on contacts, so it is reached from here at call time.
    from portal.suppression import refusal

    refused = refusal(address)
    if refused is not None:
        raise AddressSuppressed(refused)
    contact = Contact(
        email=address,
        kind=kind,
        first_name=first_name,
        last_name=last_name,
        phone=phone,
        region=region,
        language=language,
    )
    db.session.add(contact)
    db.session.flush()
    ledger.append(
        contact_ref=contact.public_id,
        subject_type="contact",
        action="created",
        method=method,
        actor=actor,
    )
    # The opt-in state machine builds on contacts, so it is reached from here at call time.
    from portal.optin import Event
    from portal.optin import transition

    event = Event.CREATED_SINGLE_USER if opt_in == OptIn.SINGLE_USER else Event.CREATED
    transition(contact, event, method=method, actor=actor, reason=reason)
    return contact


def record_opt_in(
    contact: Contact,
    status: OptIn,
    *,
    method: str,
    actor: str,
    evidence_ref: str | None = None,
    evidence: ledger.Evidence | None = None,
    created: bool = False,
    text_sha256: str | None = None,
) -> ledger.LedgerEvent:
    """Set the opt-in status and record it in the ledger in the same transaction.

    This is the low-level write; which transitions are allowed (M5) is decided by
    `portal.optin.transition`, which callers go through. ``created`` records the first status
    of a new contact (it had none before).
    """
    if status not in OPT_OUTS and actor != "contact":
        # Only the contact may opt in again while their processing is stopped (P7).
        refuse_if_locked(contact)
    before = None if created else contact.opt_in_status
    if status in OPT_OUTS and before not in OPT_OUTS:
        contact.opt_in_before_opt_out = before
    contact.opt_in_status = status.value
    return ledger.append(
        contact_ref=contact.public_id,
        subject_type="opt_in",
        action="set",
        value_from=before,
        value_to=status.value,
        method=method,
        actor=actor,
        evidence_ref=evidence_ref,
        evidence=evidence,
        text_sha256=text_sha256,
    )


def stop_processing(
    contact: Contact,
    *,
    method: str,
    actor: str,
    evidence_ref: str | None = None,
    evidence: ledger.Evidence | None = None,
) -> None:
    """Lock the record (P7) and opt the contact out of email, with one ledger event each."""
    if contact.processing_stopped_at is not None:
        return
    contact.processing_stopped_at = utcnow()
    ledger.append(
        contact_ref=contact.public_id,
        subject_type="restriction",
        action="stopped",
        legal_basis="gdpr-art-18",
        method=method,
        actor=actor,
        evidence_ref=evidence_ref,
        evidence=evidence,
    )
    from portal.optin import Event
    from portal.optin import transition

    transition(contact, Event.CONTACT_OPT_OUT, method=method, actor=actor,
               evidence_ref=evidence_ref, evidence=evidence)


def request_erasure(
    contact: Contact,
    *,
    method: str,
    actor: str,
    evidence_ref: str | None = None,
    evidence: ledger.Evidence | None = None,
) -> None:
    """Mark the contact as having asked for erasure (P8)."""
    if contact.erasure_requested_at is not None:
        return
    contact.erasure_requested_at = utcnow()
    ledger.append(
        contact_ref=contact.public_id,
        subject_type="erasure",
        action="requested",
        legal_basis="gdpr-art-17",
        method=method,
        actor=actor,
        evidence_ref=evidence_ref,
        evidence=evidence,
    )
