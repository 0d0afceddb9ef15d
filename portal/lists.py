"""Mailing lists and each contact's subscriptions to them."""

from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from portal import contacts
from portal import ledger
from portal.contacts import Contact
from portal.db import db
from portal.db import utcnow

STATUSES = ("subscribed", "unsubscribed")


class ListError(ValueError):
    """A list cannot be created or joined as asked; the message says why."""


class MailingList(db.Model):
    __tablename__ = "mailing_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(60), unique=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    # A public list is offered on the preference page; others are managed by staff only.
    public: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Its name and description in the page's other languages: {language: {"name",
    # "description"}}. A language without one shows the above.
    translations: Mapped[dict | None] = mapped_column(sa.JSON)

    def wording(self, language: str | None) -> tuple[str, str]:
        """Return the name and description a page in `language` shows."""
        found = (self.translations or {}).get(language or "")
        if found:
            return found["name"], found["description"]
        return self.name, self.description


class Subscription(db.Model):
    """A contact's membership of a list: the projection of its latest ledger event."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        sa.PrimaryKeyConstraint("contact_id", "list_id"),
        sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),
    )

    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    status: Mapped[str] = mapped_column(sa.String(12))
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_events.id"))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    mailing_list: Mapped[MailingList] = relationship()


#: A contact's subscription to a list, read under a row lock (FOR UPDATE on PostgreSQL).
LOCKED_SUBSCRIPTION = (
    sa.select(Subscription)
    .where(
        Subscription.contact_id == sa.bindparam("contact_id"),
        Subscription.list_id == sa.bindparam("list_id"),
    )
    .with_for_update()
    .execution_options(populate_existing=True)
)
#: A change of an existing subscription, built once: a Core UPDATE costs a fraction of a flush.
_SUBSCRIPTIONS = Subscription.__table__
MOVE_SUBSCRIPTION = (
    sa.update(_SUBSCRIPTIONS)
    .where(
        _SUBSCRIPTIONS.c.contact_id == sa.bindparam("contact"),
        _SUBSCRIPTIONS.c.list_id == sa.bindparam("list"),
    )
    .values(
        status=sa.bindparam("new_status"),
        event_id=sa.bindparam("event"),
        changed_at=sa.bindparam("at"),
    )
)


def create_list(slug: str, name: str, description: str = "", *, public: bool = True) -> MailingList:
    """Create a mailing list."""
    if db.session.scalar(sa.select(MailingList.id).where(MailingList.slug == slug)):
        raise ListError(f"a list named {slug!r} already exists")
    mailing_list = MailingList(slug=slug, name=name, description=description, public=public)
    db.session.add(mailing_list)
    db.session.flush()
    return mailing_list


def subscriptions_of(contact: Contact) -> list[Subscription]:
    """Return a contact's subscriptions, current and ended, by list name."""
    statement = (
        sa.select(Subscription)
        .join(MailingList)
        .where(Subscription.contact_id == contact.id)
        .order_by(MailingList.name)
    )
    return list(db.session.scalars(statement))


class ListRef(Protocol):
    """What a subscription change needs of a list: a MailingList, or the catalogue's copy."""

    id: int
    slug: str


def set_subscription(
    contact: Contact,
    mailing_list: ListRef,
    subscribed: bool,
    *,
    method: str,
    actor: str,
    evidence_ref: str | None = None,
    evidence: ledger.Evidence | None = None,
) -> Subscription | None:
    """Join or leave a list, recording the change; return the subscription (None if no-op)."""
    status = "subscribed" if subscribed else "unsubscribed"
    if subscribed and actor != "contact":
        # As for consents: a stopped record takes no new subscription but the contact's own.
        contacts.refuse_if_locked(contact)
    # The ledger's head first, then the subscription read (and locked) under it: the order of
    # every writer (ledger.lock_head), so a simultaneous change waits and then sees this one.
    ledger.lock_head()
    current = db.session.scalar(
        LOCKED_SUBSCRIPTION, {"contact_id": contact.id, "list_id": mailing_list.id}
    )
    if current is not None and current.status == status:
        return current
    if current is None and not subscribed:
        return None
    event = ledger.append(
        contact_ref=contact.public_id,
        subject_type="subscription",
        subject_ref=mailing_list.slug,
        action=status,
        value_from=current.status if current else None,
        value_to=status,
        method=method,
        actor=actor,
        evidence_ref=evidence_ref,
        evidence=evidence,
    )
    if current is None:
        current = Subscription(
            contact_id=contact.id,
            list_id=mailing_list.id,
            status=status,
            event_id=event.id,
            changed_at=event.occurred_at,
        )
        db.session.add(current)
        db.session.flush()
        return current
    db.session.execute(
        MOVE_SUBSCRIPTION,
        {
            "contact": contact.id,
            "list": mailing_list.id,
            "new_status": status,
            "event": event.id,
            "at": event.occurred_at,
        },
    )
    # The loaded row reads the new values back if anyone asks for them.
    db.session.expire(current, ["status", "event_id", "changed_at"])
    return current
