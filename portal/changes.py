"""Changes a contact makes on their page (P4, R5, SECURITY.md 9).

Withdrawals (leave a list, stop all marketing email, revoke a consent) apply at once and are
mailed to the contact with an undo link. Everything else (join a list, receive marketing email
again, grant a consent, stop processing, erasure) becomes one pending change, applied only by
the POST behind the link mailed to the address on file: whoever holds a forwarded page link can
withdraw but cannot grant. Confirming and undoing are single-use: an UPDATE that moves the row
from its open status, acting only if it moved exactly one row.
"""

import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask import render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import consent
from portal import contacts
from portal import ledger
from portal import lists
from portal import optin
from portal import outbox
from portal.choices import CONSENT
from portal.choices import ERASURE
from portal.choices import LIST
from portal.choices import MARKETING
from portal.choices import RESTRICTION
from portal.choices import Page
from portal.choices import page_for
from portal.contacts import Contact
from portal.db import db
from portal.db import utcnow
from portal.gate import Category
from portal.links import make_token
from portal.links import public_url

STATUSES = ("pending", "applied", "superseded", "cancelled")
UNDO_STATUSES = ("open", "used")


class StaleForm(Exception):
    """The choices changed since the page was loaded; nothing was applied."""

    def __init__(self, page: Page, submitted: dict[tuple[str, str], bool]):
        super().__init__("the page was out of date")
        self.page = page
        self.submitted = submitted


@dataclass(frozen=True)
class Item:
    """One change: a kind, what it is about, the new value, and the consent text version."""

    kind: str
    ref: str
    value: bool
    version: int | None = None

    @property
    def is_withdrawal(self) -> bool:
        return self.kind in (LIST, MARKETING, CONSENT) and not self.value

    def as_dict(self) -> dict:
        return {"kind": self.kind, "ref": self.ref, "value": self.value, "version": self.version}

    @classmethod
    def from_dict(cls, data: dict) -> "Item":
        return cls(data["kind"], data["ref"], bool(data["value"]), data.get("version"))


class PendingChange(db.Model):
    """Changes waiting for the contact to confirm them from their mailbox."""

    __tablename__ = "pending_changes"
    __table_args__ = (sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(
        sa.String(32), unique=True, default=lambda: secrets.token_urlsafe(16)
    )
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    items: Mapped[list] = mapped_column(sa.JSON)
    rule_version: Mapped[int]
    language: Mapped[str] = mapped_column(sa.String(10))
    status: Mapped[str] = mapped_column(sa.String(12), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]

    def changes(self) -> list[Item]:
        return [Item.from_dict(data) for data in self.items]


#: A contact's changes still waiting for confirmation, built once (constructing a statement
#: costs more than running it): every save of the page and every one-click POST reads them.
_WAITING = sa.select(PendingChange).where(
    PendingChange.contact_id == sa.bindparam("contact_id"), PendingChange.status == "pending"
)


class Undo(db.Model):
    """What a withdrawal took away, restorable once through the link in its notice."""

    __tablename__ = "undos"
    __table_args__ = (sa.CheckConstraint(sa.column("status").in_(UNDO_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(
        sa.String(32), unique=True, default=lambda: secrets.token_urlsafe(16)
    )
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    # The items that restore what was withdrawn.
    items: Mapped[list] = mapped_column(sa.JSON)
    language: Mapped[str] = mapped_column(sa.String(10))
    status: Mapped[str] = mapped_column(sa.String(8), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime | None]

    def changes(self) -> list[Item]:
        return [Item.from_dict(data) for data in self.items]


@dataclass
class Outcome:
    withdrawn: list[Item]
    pending: PendingChange | None
    undo: Undo | None


def diff(page: Page, submitted: dict[tuple[str, str], bool],
         versions: dict[str, int]) -> list[Item]:
    """Return the changes between the current choices and the submitted ones."""
    current = page.current()
    items = []
    for (kind, ref), value in submitted.items():
        if current.get((kind, ref)) == value:
            continue
        items.append(Item(kind, ref, value, versions.get(ref) if kind == CONSENT else None))
    return items


def _apply(contact: Contact, page: Page, item: Item, *, method: str, evidence_ref: str,
           evidence: ledger.Evidence | None, language: str,
           rule_version: int | None = None) -> None:
    """Apply one change, writing its ledger event in the current transaction.

    ``rule_version`` is the version of the rules that showed the choice (B2), when it was not
    the page's current one (a change confirmed later).
    """
    common = {"method": method, "actor": "contact", "evidence_ref": evidence_ref,
              "evidence": evidence}
    if item.kind == LIST:
        # The page knows the lists it offers (an id and a slug are all a subscription needs);
        # another (one created or made private since, say) is looked up.
        mailing_list = page.mailing_list(item.ref) or db.session.scalar(
            sa.select(lists.MailingList).where(lists.MailingList.slug == item.ref)
        )
        if mailing_list is not None:
            lists.set_subscription(contact, mailing_list, item.value, **common)
    elif item.kind == MARKETING:
        if not item.value:
            event = optin.Event.CONTACT_OPT_OUT
        elif item.ref:
            # An undo (its ref names the status taken away) gives back the status before the
            # contact's own opt-out.
            event = optin.Event.CONTACT_UNDO
        else:
            # A "yes" confirmed from the contact's mailbox is a double opt-in.
            event = optin.Event.DOI_CONFIRMED
        if optin.allowed(contact, event):
            optin.transition(contact, event, **common)
    elif item.kind == CONSENT:
        definition = db.session.scalar(
            sa.select(consent.ConsentDefinition).where(consent.ConsentDefinition.slug == item.ref)
        )
        if definition is None:
            return
        version = next((v for v in definition.versions if v.number == item.version),
                       definition.current_version)
        if definition.retired_at is not None and item.value:
            return
        consent.decide(contact, version, item.value, language=language,
                       rule_version=page.rule_version if rule_version is None else rule_version,
                       **common)
    elif item.kind == RESTRICTION and item.value:
        contacts.stop_processing(contact, **common)
    elif item.kind == ERASURE and item.value and contact.erasure_requested_at is None:
        contacts.request_erasure(contact, **common)
        # Every link issued before dies: an old undo or confirmation link must not bring back
        # consents or subscriptions of someone who asked to be erased.
        contact.link_version += 1


def _inverse(page: Page, item: Item) -> Item:
    """Return the item that restores what a withdrawal changed."""
    if item.kind == CONSENT:
        choice = page.consent(item.ref)
        version = choice.state.version_number if choice and choice.state else item.version
        return Item(CONSENT, item.ref, True, version)
    if item.kind == MARKETING:
        # Restore the status the contact had, not a double opt-in they never confirmed.
        return Item(MARKETING, str(page.contact.opt_in_status), True)
    return Item(item.kind, item.ref, True)


def _send(contact: Contact, template: str, subject, language: str, **context) -> None:
    """Queue a mail the contact's own action caused, in their language, to the address on file.

    An address on file that cannot be mailed (from before such addresses were refused) gets
    the mail kept as failed, with the reason, for staff to see: what the contact did stands.
    """
    if not contacts.mailable(contact.email):
        outbox.record_failed(category=Category.OWN_ACTION, recipient=contact.email or "",
                             subject=str(subject), contact=contact,
                             reason="the address on file cannot receive our email")
        return
    with force_locale(language):
        subject = str(subject)
        outbox.enqueue(
            category=Category.OWN_ACTION, contact=contact, recipient=contact.email,
            subject=subject,
            text_body=render_template(f"mail/{template}.txt", contact=contact, subject=subject,
                                      **context),
            html_body=render_template(f"mail/{template}.html", contact=contact, subject=subject,
                                      **context),
        )


def cancel_pending_grants(contact: Contact, withdrawn: list[Item]) -> None:
    """Drop the grants of withdrawn items from pending changes: an old link cannot undo a no."""
    keys = {(item.kind, item.ref) for item in withdrawn}
    for change in db.session.scalars(_WAITING, {"contact_id": contact.id}):
        kept = [data for data in change.items if (data["kind"], data["ref"]) not in keys]
        if len(kept) != len(change.items):
            change.items = kept
            if not kept:
                change.status, change.decided_at = "cancelled", utcnow()


def withdraw(contact: Contact, page: Page, withdrawn: list[Item], *, language: str,
             evidence: ledger.Evidence | None = None,
             rule_version: int | None = None) -> Undo | None:
    """Apply withdrawals now, cancel pending grants of the same items, and mail a notice with
    an undo link; return the undo record (None when there is nothing to restore)."""
    # A "no" to a consent never asked is recorded as a refusal; there is nothing to undo.
    current = page.current()
    restorable = [item for item in withdrawn if current.get((item.kind, item.ref))]
    record, undo_url = None, None
    if restorable:
        record = Undo(contact_id=contact.id, language=language,
                      items=[_inverse(page, item).as_dict() for item in restorable])
        db.session.add(record)
        db.session.flush()
        undo_url = public_url(f"/u/{make_token('undo', contact, u=record.public_id)}")
    reference = f"undo:{record.public_id}" if record else "page"
    lines = describe(page, withdrawn)
    for item in withdrawn:
        _apply(contact, page, item, method="page", evidence_ref=reference, evidence=evidence,
               language=language, rule_version=rule_version)
    cancel_pending_grants(contact, withdrawn)
    _send(contact, "withdrawn", _l("Your choices were saved"), language, items=lines,
          undo_url=undo_url)
    return record


def leave_list(contact: Contact, slug: str, *, language: str,
               evidence: ledger.Evidence | None = None) -> Undo | None:
    """Leave one list at once (the unsubscribe landing, N5); None if not on it."""
    page = page_for(contact)
    mailing_list = page.mailing_list(slug)
    if mailing_list is None or mailing_list.id not in page.subscribed:
        return None
    return withdraw(contact, page, [Item(LIST, slug, False)], language=language,
                    evidence=evidence)


def submit(contact: Contact, submitted: dict[tuple[str, str], bool], *, versions: dict[str, int],
           stamp: str | None, language: str, evidence: ledger.Evidence | None = None,
           rule_version: int | None = None, page: Page | None = None) -> Outcome:
    """Apply the withdrawals at once and turn everything else into one pending change.

    `stamp` is the stamp of the page the form was posted from (None for a change asked for
    without the page: a web-form sign-up). `rule_version` is the version of the rules that the
    page showed (it travels in the form and is recorded with each decision, B2). `page` is the
    contact's page if already read in this transaction.
    """
    # The ledger's head first, as every writer takes it (ledger.lock_head), and the state read
    # after it: on PostgreSQL a page read before it may predate a save committed meanwhile (a
    # double click's first press), and both presses would pass the stamp and ask twice. Read
    # under the lock, the second sees the first's result. On SQLite a writer holds the
    # database's lock from its first statement, so the page it was given is already current.
    ledger.lock_head()
    if page is None or db.session.get_bind().dialect.name != "sqlite":
        db.session.refresh(contact)
        page = page_for(contact)
    if stamp is not None and stamp != page.stamp():
        raise StaleForm(page, submitted)
    shown_rule_version = page.rule_version if rule_version is None else rule_version
    offered = set(page.current()) | {(CONSENT, c.definition.slug) for c in page.consents}
    # Only what this page offers can change; anything else in the form is ignored.
    items = diff(page, {key: value for key, value in submitted.items() if key in offered},
                 versions)
    withdrawn = [item for item in items if item.is_withdrawal]
    # A grant already waiting for confirmation is not asked for again (a default-selected
    # consent would otherwise send a new confirmation with every save), unless its link has
    # expired: then it is asked for anew. The page read which grants wait, in its one query.
    grants = [item for item in items if not item.is_withdrawal
              and (item.kind, item.ref) not in page.waiting]
    outcome = Outcome(withdrawn=withdrawn, pending=None, undo=None)
    if withdrawn:
        outcome.undo = withdraw(contact, page, withdrawn, language=language, evidence=evidence,
                                rule_version=shown_rule_version)
    if grants:
        pending = PendingChange(contact_id=contact.id, items=[item.as_dict() for item in grants],
                                rule_version=shown_rule_version, language=language)
        db.session.add(pending)
        db.session.flush()
        outcome.pending = pending
        _send(contact, "confirm", _l("Please confirm your choices"), language,
              items=describe(page, grants),
              confirm_url=public_url(f"/c/{make_token('confirm', contact, p=pending.public_id)}"))
    return outcome


def describe(page: Page, items: list[Item]) -> list[str]:
    """Return each change in plain words, as the contact will read it."""
    lines = []
    for item in items:
        if item.kind == LIST:
            mailing_list = page.mailing_list(item.ref)
            name = mailing_list.name if mailing_list else item.ref
            lines.append(_("Subscribe to %(name)s", name=name) if item.value
                         else _("Unsubscribe from %(name)s", name=name))
        elif item.kind == MARKETING:
            lines.append(_("Receive marketing email again") if item.value
                         else _("Stop all marketing email"))
        elif item.kind == CONSENT:
            choice = page.consent(item.ref)
            title = choice.version.title if choice else item.ref
            lines.append(_("Give consent: %(title)s", title=title) if item.value
                         else _("Withdraw consent: %(title)s", title=title))
        elif item.kind == RESTRICTION:
            lines.append(_("Stop all processing of my data"))
        elif item.kind == ERASURE:
            lines.append(_("Erase my personal data"))
    return lines


def summary(page: Page) -> list[str]:
    """Return where each choice on the page stands now, in plain words."""
    lines = [
        (_("Subscribed to %(name)s", name=item.name) if item.id in page.subscribed
         else _("Not subscribed to %(name)s", name=item.name))
        for item in page.lists
    ]
    lines.append(_("All marketing email stopped") if page.current()[(MARKETING, "")] is False
                 else _("Marketing email allowed"))
    for choice in page.consents:
        if choice.state is None:
            lines.append(_("Not asked yet: %(title)s", title=choice.version.title))
        elif choice.granted:
            lines.append(_("Consent given: %(title)s", title=choice.version.title))
        else:
            lines.append(_("Consent withdrawn: %(title)s", title=choice.version.title))
    return lines


def _claim(model, public_id: str, contact: Contact, open_status: str, new_status: str,
           stamp_column: str) -> bool:
    """Move one row from its open status, atomically; True only for the request that did.

    The ledger's head is locked first, as by every writer (ledger.lock_head): the row claimed
    here is one that a writer holding the head may change too (a withdrawal cancels pending
    grants, a confirmation supersedes older changes).
    """
    ledger.lock_head()
    result = db.session.execute(
        sa.update(model)
        .where(model.public_id == public_id, model.contact_id == contact.id,
               model.status == open_status)
        .values(status=new_status, **{stamp_column: utcnow()})
    )
    return result.rowcount == 1


def confirm(contact: Contact, public_id: str, *,
            evidence: ledger.Evidence | None = None) -> tuple[str, PendingChange | None]:
    """Apply a pending change once; return its outcome and the row.

    The outcome is "applied", "already_applied" (by an earlier request), "superseded",
    "cancelled" or "unknown".
    """
    change = pending_of(contact, public_id)
    if change is None:
        return "unknown", None
    if not _claim(PendingChange, public_id, contact, "pending", "applied", "decided_at"):
        db.session.refresh(change)
        return ("already_applied" if change.status == "applied" else change.status), change
    db.session.refresh(change)
    page = page_for(contact)
    items = change.changes()
    lines = describe(page, items)
    for item in items:
        _apply(contact, page, item, method="page+email", evidence_ref=f"pending:{public_id}",
               evidence=evidence, language=change.language, rule_version=change.rule_version)
    # A newer confirmed change supersedes the older ones still waiting.
    db.session.execute(
        sa.update(PendingChange)
        .where(PendingChange.contact_id == contact.id, PendingChange.status == "pending",
               PendingChange.id < change.id)
        .values(status="superseded", decided_at=utcnow())
    )
    _send(contact, "receipt", _l("Your changes are confirmed"), change.language, items=lines,
          erasure=asks_erasure(change))
    return "applied", change


def asks_erasure(change: PendingChange) -> bool:
    """Say whether a change asks for erasure, after which every earlier link is dead."""
    return any(item.kind == ERASURE and item.value for item in change.changes())


def undo(contact: Contact, public_id: str, *,
         evidence: ledger.Evidence | None = None) -> tuple[str, Undo | None]:
    """Restore what a withdrawal took away, once; return ("applied" | "used" | "unknown", row)."""
    record = undo_of(contact, public_id)
    if record is None:
        return "unknown", None
    if not _claim(Undo, public_id, contact, "open", "used", "used_at"):
        return "used", record
    db.session.refresh(record)
    page = page_for(contact)
    items = record.changes()
    lines = describe(page, items)
    for item in items:
        _apply(contact, page, item, method="undo+email", evidence_ref=f"undo:{public_id}",
               evidence=evidence, language=record.language)
    _send(contact, "receipt", _l("Your changes are undone"), record.language, items=lines)
    return "applied", record


def pending_of(contact: Contact, public_id: str) -> PendingChange | None:
    """Return a contact's pending change by its public id."""
    return db.session.scalar(
        sa.select(PendingChange).where(PendingChange.public_id == public_id,
                                       PendingChange.contact_id == contact.id)
    )


def undo_of(contact: Contact, public_id: str) -> Undo | None:
    """Return a contact's undo record by its public id."""
    return db.session.scalar(
        sa.select(Undo).where(Undo.public_id == public_id, Undo.contact_id == contact.id)
    )
