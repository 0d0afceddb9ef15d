"""The send gate (M6, R4): one function decides whether a message may go to its recipient.

The outbox asks it when a message is queued and again at the moment of hand-off to SMTP, so a
contact who opts out while a campaign is sending receives nothing more.

Categories and their rules, in the order they are checked:

- ``erasure_receipt`` passes only if queued no later than the erasure; erasure and the
  suppression list block every other category.
- ``own_action`` (a confirmation, undo notice, receipt, fresh link, the double opt-in mail of
  the contact's own sign-up, an export link) and ``reply`` (answering a message recorded as
  received from this contact) pass every opt-in status and a stopped processing.
- Stopped processing, or a pending erasure request, blocks everything else.
- ``campaign`` needs list membership and a status the campaign policy admits (M4).
- ``notice``, ``workflow``, ``auto_reply`` and ``ad_hoc`` need a status that is not an opt-out.
- ``partner`` (the contact's data to a third party) needs the named consent to be granted,
  and stops when the contact's own address is on the suppression list.
- The double opt-in request is ``own_action`` for the contact's own web-form sign-up and
  ``notice`` when staff send it (to one contact or a whole list), which an opt-out stops.
- ``internal`` (mail to staff about the portal itself) is not about a contact and passes.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import settings
from portal import suppression
from portal.consent import ConsentDefinition
from portal.consent import ConsentState
from portal.contacts import OPT_OUTS
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.contacts import find_by_email
from portal.db import db
from portal.db import utcnow
from portal.lists import Subscription


class Category(StrEnum):
    OWN_ACTION = "own_action"
    REPLY = "reply"
    CAMPAIGN = "campaign"
    NOTICE = "notice"
    WORKFLOW = "workflow"
    AUTO_REPLY = "auto_reply"
    AD_HOC = "ad_hoc"
    PARTNER = "partner"
    ERASURE_RECEIPT = "erasure_receipt"
    INTERNAL = "internal"


#: Which statuses each campaign policy admits (M4).
POLICY_STATUSES = {
    "double": {OptIn.DOUBLE},
    "double_single_user": {OptIn.DOUBLE, OptIn.SINGLE_USER},
    "double_single_user_single_webform": {OptIn.DOUBLE, OptIn.SINGLE_USER, OptIn.SINGLE_WEBFORM},
}


def policy_statuses(policy: str | None) -> set[OptIn]:
    """Return the statuses a campaign policy admits; an unknown policy admits Double only."""
    # Fail closed: a settings row written by hand or by an older version must not widen the
    # audience beyond the recommended default.
    return POLICY_STATUSES.get(policy or "", POLICY_STATUSES["double"])


#: What staff read for each refusal.
REASONS = {
    "erased": "the contact's personal data was erased",
    "suppressed": "the address is on the suppression list",
    "processing_stopped": "the contact stopped the processing of their data",
    "erasure_requested": "the contact asked for erasure",
    "opted_out": "the contact opted out of email",
    "not_subscribed": "the contact is not subscribed to the campaign's list",
    "policy": "the campaign policy does not admit the contact's opt-in status",
    "not_a_reply": "it does not answer a message received from this contact",
    "no_consent": "the contact has not granted the consent this message relies on",
    "no_contact": "this kind of message needs a contact",
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str | None = None

    @property
    def explanation(self) -> str:
        return "allowed" if self.allowed else REASONS[self.reason]


ALLOW = Decision(True)


def refuse(reason: str) -> Decision:
    return Decision(False, reason)


class InboundMessage(db.Model):
    """A message the business received from a contact, reported by its CRM or mail server.

    Only a message answering one of these counts as a reply (a made-up In-Reply-To does not).
    """

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(250), unique=True)
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


def record_inbound(sender: str, message_id: str) -> InboundMessage | None:
    """Record a message received from an address; None if no contact has that address."""
    message_id = message_id.strip()
    if not (message_id.startswith("<") and message_id.endswith(">") and "@" in message_id):
        raise ValueError("a Message-ID looks like <something@domain>")
    if len(message_id) > 250 or any(c in message_id for c in "\r\n\x00 "):
        raise ValueError("the Message-ID is too long or contains spaces or line breaks")
    contact = find_by_email(sender)
    if contact is None:
        return None
    existing = db.session.scalar(
        sa.select(InboundMessage).where(InboundMessage.message_id == message_id)
    )
    if existing is not None:
        if existing.contact_id != contact.id:
            raise ValueError("this Message-ID was already recorded from another sender")
        return existing
    inbound = InboundMessage(message_id=message_id, contact_id=contact.id)
    db.session.add(inbound)
    db.session.flush()
    return inbound


def _is_reply(contact: Contact, in_reply_to: str | None) -> bool:
    if not in_reply_to:
        return False
    statement = sa.select(InboundMessage.id).where(
        InboundMessage.message_id == in_reply_to, InboundMessage.contact_id == contact.id
    )
    return db.session.scalar(statement) is not None


def decide(
    category: str,
    *,
    recipient: str,
    contact: Contact | None,
    list_id: int | None = None,
    in_reply_to: str | None = None,
    consent_slug: str | None = None,
    queued_at: datetime | None = None,
    policy: str | None = None,
    suppressed: bool | None = None,
) -> Decision:
    """Say whether a message of this category may go to this recipient now, and why not.

    `policy` is the campaign policy in force, and `suppressed` whether `recipient` is on the
    suppression list, if the caller read them already in this transaction (the campaign job
    does once per chunk, the outbox reads the policy once per batch); otherwise the gate does.
    """
    category = Category(category)
    if category is Category.INTERNAL:
        return ALLOW
    if contact is None and category is not Category.PARTNER:
        # Mail to a contact's address obeys that contact's state, whether or not the caller
        # named the contact: an opt-out stops ad-hoc mail too (M6).
        contact = find_by_email(recipient)
    if contact is not None and contact.erased_at is not None:
        if category is Category.ERASURE_RECEIPT and queued_at and queued_at <= contact.erased_at:
            return ALLOW
        return refuse("erased")
    if category is Category.ERASURE_RECEIPT:
        return ALLOW
    # Partner mail goes to the partner but carries the contact's data: the contact's own
    # address on the suppression list stops it as well (M6: the list blocks everything).
    watched = contact.email if category is Category.PARTNER and contact else recipient
    if watched == recipient and suppressed is not None:
        on_the_list = suppressed
    else:
        on_the_list = bool(watched) and suppression.is_suppressed(watched)
    if on_the_list:
        return refuse("suppressed")
    if contact is None:
        # Mail to an address that is no contact (a partner's, say) has no status to obey.
        return ALLOW if category in (Category.AD_HOC, Category.WORKFLOW) else refuse("no_contact")
    if category is Category.OWN_ACTION:
        return ALLOW
    if category is Category.REPLY:
        return ALLOW if _is_reply(contact, in_reply_to) else refuse("not_a_reply")
    if contact.processing_stopped_at is not None:
        return refuse("processing_stopped")
    if contact.erasure_requested_at is not None:
        return refuse("erasure_requested")
    status = OptIn(contact.opt_in_status)
    if category is Category.CAMPAIGN:
        subscription = db.session.get(Subscription, (contact.id, list_id)) if list_id else None
        if subscription is None or subscription.status != "subscribed":
            return refuse("not_subscribed")
        if policy is None:
            policy = settings.values().get("campaign_policy")
        if status not in policy_statuses(policy):
            return refuse("policy")
        return ALLOW
    if category is Category.PARTNER:
        state = db.session.scalar(
            sa.select(ConsentState)
            .join(ConsentDefinition)
            .where(ConsentState.contact_id == contact.id, ConsentDefinition.slug == consent_slug)
        )
        return ALLOW if state is not None and state.state == "granted" else refuse("no_consent")
    # Notices, workflow, auto-replies and ad-hoc mail.
    return refuse("opted_out") if status in OPT_OUTS else ALLOW
