"""Consents: their definitions, their immutable text versions, and each contact's state."""

from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from portal import contacts
from portal import ledger
from portal import rules
from portal.contacts import Contact
from portal.contacts import FieldDefinition
from portal.contacts import FieldValue
from portal.crypto import sha256_hex
from portal.db import db
from portal.db import utcnow

KINDS = ("storage", "tracking", "custom")
STATES = ("granted", "revoked")


class ConsentError(ValueError):
    """A consent cannot be defined or decided as asked; the message says why."""


class ConsentDefinition(db.Model):
    __tablename__ = "consent_definitions"
    __table_args__ = (
        sa.CheckConstraint(sa.column("kind").in_(KINDS), name="kind"),
        sa.CheckConstraint(
            sa.or_(sa.column("kind") != "storage", sa.column("field_id").is_not(None)),
            name="storage_names_field",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(60), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(10))
    # For a storage consent: the sensitive field it covers (P2.3).
    field_id: Mapped[int | None] = mapped_column(sa.ForeignKey("field_definitions.id"))
    # Who is asked (P3): a rule in the platform's rule format, or null for everyone.
    display_condition: Mapped[dict | None] = mapped_column(sa.JSON)
    # Only pre-positions the control; the consent stays "not asked" until submitted (P3).
    default_selected: Mapped[bool] = mapped_column(default=False)
    legal_basis: Mapped[str] = mapped_column(sa.String(30), default="consent")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None]

    field: Mapped[FieldDefinition | None] = relationship()
    versions: Mapped[list["ConsentVersion"]] = relationship(
        back_populates="consent", order_by="ConsentVersion.number"
    )

    @property
    def current_version(self) -> "ConsentVersion":
        return self.versions[-1]


class ConsentVersion(db.Model):
    """One wording of a consent. Never edited: a change of wording is a new version (S3)."""

    __tablename__ = "consent_versions"
    __table_args__ = (sa.UniqueConstraint("consent_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    consent_id: Mapped[int] = mapped_column(sa.ForeignKey("consent_definitions.id"))
    number: Mapped[int]
    title: Mapped[str] = mapped_column(sa.String(200))
    text: Mapped[str] = mapped_column(sa.Text)
    text_sha256: Mapped[str] = mapped_column(sa.String(64))
    # A material change re-asks contacts whose accepted version is older (B3).
    material: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The same wording in the page's other languages, part of the version and as immutable:
    # {language: {"title", "text", "text_sha256"}}. A language without one shows the above.
    translations: Mapped[dict | None] = mapped_column(sa.JSON)

    consent: Mapped[ConsentDefinition] = relationship(back_populates="versions")

    def wording(self, language: str | None) -> tuple[str, str, str]:
        """Return the title, text and text digest shown in a language (the version's own
        wording where it has none in that language)."""
        found = (self.translations or {}).get(language or "")
        if found:
            return found["title"], found["text"], found["text_sha256"]
        return self.title, self.text, self.text_sha256


@sa.event.listens_for(ConsentVersion, "before_update")
def _refuse_edits(mapper, _connection, version: ConsentVersion) -> None:
    # The wording people agreed to is evidence (the ledger keeps its digest): never edit it.
    state = sa.inspect(version)
    if any(state.attrs[column.key].history.has_changes() for column in mapper.column_attrs):
        raise ConsentError("a consent version cannot be edited; add a new version instead")


class ConsentState(db.Model):
    """A contact's current decision on a consent: the projection of its latest ledger event.

    No row means "not asked". Written only together with its ledger event.
    """

    __tablename__ = "consent_states"
    __table_args__ = (
        sa.PrimaryKeyConstraint("contact_id", "consent_id"),
        sa.CheckConstraint(sa.column("state").in_(STATES), name="state"),
    )

    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    consent_id: Mapped[int] = mapped_column(sa.ForeignKey("consent_definitions.id"))
    state: Mapped[str] = mapped_column(sa.String(10))
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("consent_versions.id"))
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_events.id"))
    method: Mapped[str] = mapped_column(sa.String(30))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    consent: Mapped[ConsentDefinition] = relationship()
    version: Mapped[ConsentVersion] = relationship()


def define(
    slug: str,
    kind: str,
    title: str,
    text: str,
    *,
    field: FieldDefinition | None = None,
    display_condition: dict | None = None,
    default_selected: bool = False,
    legal_basis: str = "consent",
    translations: dict[str, tuple[str, str]] | None = None,
) -> ConsentDefinition:
    """Create a consent with its first text version (and its wording in other languages)."""
    if kind not in KINDS:
        raise ConsentError(f"kind must be one of {', '.join(KINDS)}")
    if kind == "storage" and (field is None or not field.sensitive):
        raise ConsentError("a storage consent names a sensitive field")
    display_condition = rules.validate(display_condition)
    if db.session.scalar(sa.select(ConsentDefinition.id).where(ConsentDefinition.slug == slug)):
        raise ConsentError(f"a consent named {slug!r} already exists")
    definition = ConsentDefinition(
        slug=slug,
        kind=kind,
        field=field,
        display_condition=display_condition,
        default_selected=default_selected,
        legal_basis=legal_basis,
    )
    db.session.add(definition)
    add_version(definition, title, text, translations=translations)
    return definition


def translations_of(wordings: dict[str, tuple[str, str]] | None) -> dict:
    """Return a version's translations from {language: (title, text)}: an empty pair means no
    wording in that language, half of one is refused."""
    found = {}
    for language, (title, text) in sorted((wordings or {}).items()):
        if not title.strip() and not text.strip():
            continue
        if not title.strip() or not text.strip():
            raise ConsentError(f"the wording in {language!r} needs both a title and a text")
        found[language] = {"title": title, "text": text, "text_sha256": sha256_hex(text)}
    return found


def add_version(
    definition: ConsentDefinition,
    title: str,
    text: str,
    *,
    material: bool = False,
    translations: dict[str, tuple[str, str]] | None = None,
) -> ConsentVersion:
    """Add a new wording to a consent, with its wording in other languages ({language:
    (title, text)}); the earlier versions stay as they were."""
    if not title.strip() or not text.strip():
        raise ConsentError("a consent needs a title and a text")
    number = len(definition.versions) + 1
    version = ConsentVersion(
        number=number,
        title=title,
        text=text,
        text_sha256=sha256_hex(text),
        material=material and number > 1,
        translations=translations_of(translations) or None,
    )
    definition.versions.append(version)
    db.session.flush()
    return version


def state_of(contact: Contact, definition: ConsentDefinition) -> ConsentState | None:
    """Return a contact's decision on a consent, or None if never asked."""
    return db.session.get(ConsentState, (contact.id, definition.id))


def decide(
    contact: Contact,
    version: ConsentVersion,
    granted: bool,
    *,
    method: str,
    actor: str,
    evidence_ref: str | None = None,
    evidence: ledger.Evidence | None = None,
    language: str | None = None,
    jurisdiction: str | None = None,
    rule_version: int | None = None,
) -> ConsentState:
    """Record a grant or a revocation of the version the contact saw, and update the state."""
    definition = version.consent
    if granted and actor != "contact":
        # A stopped record takes no new grant but the contact's own (P7); a withdrawal only
        # narrows the processing, so staff may still record one the contact asked for.
        contacts.refuse_if_locked(contact)
    if definition.retired_at is not None and granted:
        raise ConsentError(f"the consent {definition.slug!r} is retired")
    state = "granted" if granted else "revoked"
    current = state_of(contact, definition)
    # The digest of the wording shown: the page shows the version in its language (B2).
    _title, _text, shown_sha256 = version.wording(language)
    event = ledger.append(
        contact_ref=contact.public_id,
        subject_type="consent",
        subject_ref=definition.slug,
        action=state,
        value_from=current.state if current else None,
        value_to=state,
        text_version=version.number,
        text_sha256=shown_sha256,
        method=method,
        actor=actor,
        evidence_ref=evidence_ref,
        evidence=evidence,
        language=language,
        jurisdiction=jurisdiction,
        legal_basis=definition.legal_basis,
        purpose=definition.slug,
        rule_version=rule_version,
    )
    if current is None:
        current = ConsentState(contact_id=contact.id, consent_id=definition.id)
        db.session.add(current)
    current.state = state
    current.version_id = version.id
    current.event_id = event.id
    current.method = method
    current.changed_at = event.occurred_at
    db.session.flush()
    return current


def states_of(contact: Contact) -> list[ConsentState]:
    """Return a contact's decisions on every consent, in the order consents were defined."""
    statement = (
        sa.select(ConsentState)
        .where(ConsentState.contact_id == contact.id)
        .order_by(ConsentState.consent_id)
    )
    return list(db.session.scalars(statement))


def storage_revoked(contact: Contact, field: FieldDefinition) -> bool:
    """Say whether the contact revoked a storage consent covering this field."""
    statement = (
        sa.select(ConsentState.state)
        .join(ConsentDefinition, ConsentDefinition.id == ConsentState.consent_id)
        .where(ConsentState.contact_id == contact.id, ConsentDefinition.kind == "storage",
               ConsentDefinition.field_id == field.id, ConsentState.state == "revoked")
    )
    return db.session.scalar(statement.limit(1)) is not None


def purge_withdrawn_values(undo_window: timedelta, now: datetime | None = None) -> int:
    """Destroy sensitive values whose storage consent was revoked longer ago than the undo
    window (P5), each with a ledger event; return how many values were destroyed."""
    cutoff = (now or utcnow()) - undo_window
    statement = (
        sa.select(FieldValue, ConsentState)
        .join(ConsentDefinition, ConsentDefinition.field_id == FieldValue.field_id)
        .join(ConsentState, sa.and_(ConsentState.consent_id == ConsentDefinition.id,
                                    ConsentState.contact_id == FieldValue.contact_id))
        .where(ConsentDefinition.kind == "storage", ConsentState.state == "revoked",
               ConsentState.changed_at <= cutoff, FieldValue.ciphertext.is_not(None))
    )
    destroyed = 0
    for value, state in db.session.execute(statement).all():
        ledger.append(contact_ref=value.contact.public_id, subject_type="erasure",
                      subject_ref=value.field.name, action="value_destroyed", method="system",
                      actor="system", evidence_ref=f"consent-event:{state.event_id}",
                      legal_basis="gdpr-art-7-3")
        db.session.delete(value)
        destroyed += 1
    db.session.flush()
    return destroyed
