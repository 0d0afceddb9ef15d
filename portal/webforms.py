"""Web-form sign-ups (M2): a business's own site posts an address and lists to the portal.

A sign-up of a new address creates a lead (None, or Single opt-in (webform) when the
marketing box is ticked, per M5), joins the chosen public lists and sends the double opt-in
mail: nothing reaches a lead before it is confirmed (the campaign policy). An address already
on file joins nothing at once, since anyone can type it: its lists wait for its owner's click
in a mail to that address (`_known_address`), and for an address that opted out nothing
changes until the double opt-in is confirmed (`apply_confirmed`). Whatever happens, the
visitor reads the same answer: known, unknown, suppressed, rate-limited or caught by the
honeypot (SECURITY.md 12).

The answer also takes the same time: each path does different work (a new lead is added, a
known address gets a confirmation or nothing), several milliseconds apart, which a stopwatch
could read to learn who is on file. So the request only queues the sign-up (`queue`: one row,
the same for every address) and the outbox worker does the rest (`answer_queued`, an
`outbox.composer`), deleting the row, a second or so later.
"""

import logging
import secrets
from datetime import datetime

import sqlalchemy as sa
from flask import render_template
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import changes
from portal import contacts
from portal import doi
from portal import lists
from portal import optin
from portal import outbox
from portal import suppression
from portal.choices import LIST
from portal.contacts import OPT_OUTS
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.hardening import quietly_allowed_for
from portal.ledger import Evidence
from portal.links import public_url
from portal.logs import MASK_PERSONAL_DATA
from portal.mail import MessageRejected

log = logging.getLogger(__name__)
log.addFilter(MASK_PERSONAL_DATA)  # what it logs may quote an address

PER_ADDRESS = "5 per hour"
PER_IP = "30 per hour"
METHOD = "webform"
ACTOR = "webform"
STATUSES = ("pending", "applied", "cancelled")
#: The honeypot: a field people never see (hidden) and bots fill in.
HONEYPOT = "website"


#: Queued sign-ups done per transaction of the worker.
BATCH = 100


class UnknownList(LookupError):
    """A form names a list that does not exist or is not public."""


class SignupRequest(db.Model):
    """The lists a known address asked to join, waiting for its double opt-in."""

    __tablename__ = "signup_requests"
    __table_args__ = (sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(
        sa.String(32), unique=True, default=lambda: secrets.token_urlsafe(16)
    )
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    list_ids: Mapped[list] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(10), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]


class QueuedSignup(db.Model):
    """A sign-up as the form posted it, waiting for the outbox worker (`answer_queued`).

    Kept only until the worker's next pass. A request over its limits leaves a row with no
    address, so that it costs what any other does; the worker drops it.
    """

    __tablename__ = "queued_signups"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str | None] = mapped_column(sa.String(254))
    list_ids: Mapped[list] = mapped_column(sa.JSON)
    marketing: Mapped[bool]
    first_name: Mapped[str | None] = mapped_column(sa.String(100))
    language: Mapped[str | None] = mapped_column(sa.String(10))
    ip_address: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def public_lists() -> list[lists.MailingList]:
    """Return the lists a web form may offer, by name."""
    statement = sa.select(lists.MailingList).where(lists.MailingList.public.is_(True))
    return list(db.session.scalars(statement.order_by(lists.MailingList.name)))


def find_lists(slugs: list[str]) -> list[lists.MailingList]:
    """Return the public lists with these slugs (once each), or raise UnknownList."""
    wanted = list(dict.fromkeys(slug for slug in slugs if slug))
    found = {
        item.slug: item
        for item in db.session.scalars(
            sa.select(lists.MailingList).where(
                lists.MailingList.slug.in_(wanted), lists.MailingList.public.is_(True)
            )
        )
    }
    missing = [slug for slug in wanted if slug not in found]
    if missing or not wanted:
        raise UnknownList(", ".join(missing) or "no list")
    return [found[slug] for slug in wanted]


def snippet(mailing_list: lists.MailingList) -> str:
    """Return the HTML form a business copies onto its own site to sign people up."""
    return render_template(
        "signup/_snippet.html",
        mailing_list=mailing_list,
        action=public_url(f"/f/{mailing_list.slug}"),
        honeypot=HONEYPOT,
    ).strip()


def queue(
    address: str,
    mailing_lists: list[lists.MailingList],
    *,
    marketing: bool,
    client_ip: str | None,
    first_name: str | None = None,
    language: str | None = None,
    evidence: Evidence | None = None,
) -> None:
    """Queue a web-form sign-up in the current transaction, for the outbox worker to do.

    The same work for every address: its limits counted and one row added (with no address
    when over them). Raises contacts.InvalidEmail for a malformed address.
    """
    normalised = contacts.normalise_email(address)
    allowed = quietly_allowed_for(
        "signup", normalised, client_ip, per_ip=PER_IP, per_address=PER_ADDRESS
    )
    evidence = evidence or Evidence()
    # Over its limits, the row keeps nothing personal: the worker drops it.
    db.session.add(QueuedSignup(
        address=normalised if allowed else None, list_ids=[item.id for item in mailing_lists],
        marketing=marketing, language=language,
        first_name=(first_name or "").strip()[:100] or None if allowed else None,
        ip_address=(evidence.ip_address or "")[:45] or None if allowed else None,
        user_agent=(evidence.user_agent or "")[:500] or None if allowed else None,
    ))


@outbox.composer
def answer_queued(limit: int = BATCH) -> int:
    """Do the sign-ups queued since the worker's last pass, each in a savepoint of the current
    transaction (the pass's claim commits them); return how many rows were taken.

    One that a rule refuses (an address that cannot be mailed, a record that may not change)
    leaves nothing, as the request's answer promised nothing.
    """
    taken = outbox.take_queued(
        QueuedSignup, limit, QueuedSignup.address, QueuedSignup.list_ids, QueuedSignup.marketing,
        QueuedSignup.first_name, QueuedSignup.language, QueuedSignup.ip_address,
        QueuedSignup.user_agent,
    )
    for row in taken:
        if row.address is None:
            continue
        mailing_lists = [found for found in (db.session.get(lists.MailingList, list_id)
                                             for list_id in row.list_ids)
                         if found is not None and found.public]
        if not mailing_lists:
            continue  # made private or deleted since
        refused = (contacts.ContactError, optin.TransitionRefused, MessageRejected)
        with outbox.composing(log, f"queued sign-up {row.id}", refused=refused):
            sign_up(row.address, mailing_lists, marketing=row.marketing,
                    first_name=row.first_name, language=row.language,
                    evidence=Evidence(ip_address=row.ip_address, user_agent=row.user_agent))
    return len(taken)


def sign_up(
    address: str,
    mailing_lists: list[lists.MailingList],
    *,
    marketing: bool,
    first_name: str | None = None,
    language: str | None = None,
    evidence: Evidence | None = None,
) -> None:
    """Do a web-form sign-up of a normalised address in the current transaction; do nothing
    where nothing may be (a suppressed address, an erased or locked contact)."""
    if suppression.is_suppressed(address):
        return
    known = contacts.find_by_email(address)
    if known is not None:
        _known_address(known, mailing_lists, marketing=marketing, evidence=evidence)
        return
    contact = _new_lead(address, first_name, language)
    if contact.erasure_requested_at is not None:
        return
    if contact.opt_in_status in OPT_OUTS or contact.processing_stopped_at is not None:
        # A double click's other request added the address first and it has opted out since.
        _known_address(contact, mailing_lists, marketing=marketing, evidence=evidence)
        return
    for mailing_list in mailing_lists:
        lists.set_subscription(
            contact, mailing_list, True, method=METHOD, actor=ACTOR, evidence=evidence
        )
    if marketing:
        optin.transition(
            contact, optin.Event.WEBFORM_TICKED, actor=ACTOR, method=METHOD, evidence=evidence
        )
        doi.send_request(contact, source="webform", actor=ACTOR)


def _known_address(contact: Contact, mailing_lists: list[lists.MailingList], *,
                   marketing: bool, evidence: Evidence | None) -> None:
    """Sign up an address already on file: nothing joins until its owner confirms by email.

    Anyone can type someone else's address into a form, so a sign-up joins no list of a known
    contact at once. Without the box ticked nothing changes. With it, the lists the contact is
    not on wait for the owner's click in the mail sent to the address on file: for a contact at
    Double opt-in, a confirmation of those lists (the page's own pending change, P4); for any
    other, the double opt-in mail (the lists wait in a sign-up request, joined when it is
    confirmed). A contact who has not opted out moves to Single opt-in (webform) as M5 says; an
    opted-out contact changes only once the double opt-in is confirmed.
    """
    if contact.erasure_requested_at is not None or not marketing:
        return
    subscribed = {
        item.list_id for item in lists.subscriptions_of(contact) if item.status == "subscribed"
    }
    wanted = [item for item in mailing_lists if item.id not in subscribed]
    if contact.opt_in_status == OptIn.DOUBLE:
        if wanted and contact.processing_stopped_at is None:
            # The page's own pending change and its confirmation mail (no form: no stamp).
            changes.submit(contact, {(LIST, item.slug): True for item in wanted}, versions={},
                           stamp=None, language=contact.language or "en", evidence=evidence)
        return
    if wanted:
        db.session.add(SignupRequest(contact_id=contact.id, list_ids=[item.id for item in wanted]))
        db.session.flush()
    if contact.opt_in_status not in OPT_OUTS and contact.processing_stopped_at is None:
        optin.transition(
            contact, optin.Event.WEBFORM_TICKED, actor=ACTOR, method=METHOD, evidence=evidence
        )
    doi.send_request(contact, source="webform", actor=ACTOR)


def _new_lead(address: str, first_name: str | None, language: str | None) -> Contact:
    """Add a lead for a new address; or, when a sign-up of the same address at the same moment
    (a double click, done by two outbox workers) added it first, return that one.

    On PostgreSQL both workers find no contact and add one; the second's INSERT waits for the
    first to commit and then finds the address taken. Only its savepoint is undone.
    """
    try:
        with db.session.begin_nested():
            return contacts.add_contact(
                address,
                first_name=first_name,
                language=language,
                method=METHOD,
                actor=ACTOR,
            )
    except IntegrityError:
        found = contacts.find_by_email(address)
        if found is None:
            raise
        return found


#: A contact's sign-up requests still waiting, built once (constructing a statement costs
#: more than running it): every one-click POST reads them.
_WAITING = (
    sa.select(SignupRequest)
    .where(
        SignupRequest.contact_id == sa.bindparam("contact_id"),
        SignupRequest.status == "pending",
    )
    .order_by(SignupRequest.id)
)


def pending_of(contact: Contact) -> list[SignupRequest]:
    """Return the contact's sign-up requests still waiting for the double opt-in."""
    return list(db.session.scalars(_WAITING, {"contact_id": contact.id}))


def apply_confirmed(contact: Contact, *, evidence: Evidence | None = None) -> int:
    """Join the lists the contact's waiting sign-ups asked for, now that the double opt-in is
    confirmed; return how many lists were joined."""
    joined = 0
    for waiting in pending_of(contact):
        for list_id in waiting.list_ids:
            mailing_list = db.session.get(lists.MailingList, list_id)
            if mailing_list is None:
                continue
            current = db.session.get(lists.Subscription, (contact.id, list_id))
            if current is None or current.status != "subscribed":
                lists.set_subscription(
                    contact,
                    mailing_list,
                    True,
                    method=METHOD,
                    actor="contact",
                    evidence_ref=f"signup:{waiting.public_id}",
                    evidence=evidence,
                )
                joined += 1
        waiting.status, waiting.decided_at = "applied", utcnow()
    db.session.flush()
    return joined


@doi.on_confirm
def _join_waiting_lists(contact: Contact, request: doi.DoiRequest) -> None:
    # Runs in the confirmation's transaction: the lists and the status change together.
    apply_confirmed(contact)


def forget_list(contact: Contact, mailing_list: lists.MailingList) -> None:
    """Drop a list from the contact's waiting sign-ups: leaving it outranks an older ask."""
    for waiting in pending_of(contact):
        if mailing_list.id in waiting.list_ids:
            waiting.list_ids = [item for item in waiting.list_ids if item != mailing_list.id]
            if not waiting.list_ids:
                waiting.status, waiting.decided_at = "cancelled", utcnow()
