"""Double opt-in (M2, M3, B9): the request mail, its confirmation, reminders and pruning.

A request is a row; its mail carries a link to a page with one button, and only the POST
behind it sets Double opt-in (R1), once: an UPDATE moves the row from "pending" and acts only
if it moved exactly one row. At most one request mail goes to a contact's address per 24
hours: a new address is a new mailbox, which the limit does not hold against.
Reminders (capped) and the pruning of web-form sign-ups nobody confirmed are job kinds, and
so is sending the request to a whole mailing list.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from flask import render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import footer
from portal import gate
from portal import jobs
from portal import ledger
from portal import optin
from portal import outbox
from portal import suppression
from portal.contacts import OPT_OUTS
from portal.contacts import Contact
from portal.contacts import ContactTombstone
from portal.contacts import OptIn
from portal.contacts import mailable
from portal.db import db
from portal.db import utcnow
from portal.links import make_token
from portal.links import public_url
from portal.lists import MailingList
from portal.lists import Subscription

SOURCES = ("webform", "staff", "list")
STATUSES = ("pending", "confirmed", "expired")
#: The method the web form records its events with: a contact whose every event has it was
#: created by a sign-up and nothing else, and is pruned if the sign-up is never confirmed.
WEBFORM_METHOD = "webform"
RESEND_AFTER = timedelta(hours=24)

#: Why a request was not sent, as staff (and the list job's report) read it.
REASONS = {
    "opted_out": _l("the contact opted out"),
    "already_double": _l("the contact already confirmed a double opt-in"),
    "recently_sent": _l("a double opt-in email went to the contact less than 24 hours ago"),
    "no_address": _l("the contact has no email address (erased)"),
    "unmailable": _l("the address on file cannot receive our email"),
}


class DoiRequest(db.Model):
    """One double opt-in request: its mail (and reminders) and whether it was confirmed."""

    __tablename__ = "doi_requests"
    __table_args__ = (
        sa.CheckConstraint(sa.column("source").in_(SOURCES), name="source"),
        sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),
        sa.Index("ix_doi_requests_status_last_sent_at", "status", "last_sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(
        sa.String(32), unique=True, default=lambda: secrets.token_urlsafe(16)
    )
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(sa.String(10))
    status: Mapped[str] = mapped_column(sa.String(10), default="pending")
    reminders: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(sa.String(60))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    # The address its last mail went to, as a keyed digest (the suppression list's keys, never
    # the address itself): the 24-hour limit holds per address. None on rows from before it.
    sent_to: Mapped[str | None] = mapped_column(sa.String(64))


@dataclass(frozen=True)
class DoiResult:
    """What `send_request` did: sent (with its request row), or not and why."""

    sent: bool
    reason: str | None = None
    request: DoiRequest | None = None
    explanation: str | None = None

    @property
    def message(self) -> str:
        if self.sent:
            return _("The double opt-in email is on its way.")
        return _("No double opt-in email was sent: %(why)s.", why=self.explanation)


def _not_sent(reason: str, explanation: str | None = None) -> DoiResult:
    return DoiResult(False, reason, None, explanation or str(REASONS[reason]))


def _category(source: str) -> gate.Category:
    # The contact's own sign-up causes its mail; staff asking is a notice, which an opt-out
    # stops (M3: opted-out contacts are skipped).
    return gate.Category.OWN_ACTION if source == "webform" else gate.Category.NOTICE


def _queue_mail(
    contact: Contact, request: DoiRequest, *, reminder: bool = False
) -> outbox.OutboxMessage:
    url = public_url(f"/d/{make_token('doi', contact, d=request.public_id)}")
    days = current_app.config["PORTAL_LINK_MAX_AGE"]["doi"] // 86400
    context = {"contact": contact, "url": url, "days": days, "reminder": reminder}
    category = _category(request.source)
    with force_locale(contact.language or "en"):
        subject = (
            _("Reminder: please confirm you want our email")
            if reminder
            else _("Please confirm you want our email")
        )
        text = render_template("mail/double_opt_in.txt", subject=subject, **context)
        html = render_template("mail/double_opt_in.html", subject=subject, **context)
    if category is gate.Category.NOTICE:
        # Staff asked (N4: their mail carries the footer). A sign-up's own request asks one
        # thing of an address nobody has confirmed yet, and is pruned unanswered: no footer.
        text, html = footer.add_footer(text, html, contact)
    return outbox.enqueue(
        category=category,
        contact=contact,
        recipient=contact.email,
        subject=subject,
        text_body=text,
        html_body=html,
    )


def expire_open(contact: Contact) -> None:
    """Expire the contact's requests still waiting: mailed to an address no longer theirs,
    they get no reminder and cannot be confirmed."""
    db.session.execute(
        sa.update(DoiRequest)
        .where(DoiRequest.contact_id == contact.id, DoiRequest.status == "pending")
        .values(status="expired", decided_at=utcnow())
    )


@optin.on_opt_out
def _expire_on_opt_out(contact: Contact) -> None:
    # Its "no" outranks an earlier request's "yes" (R5): the old link cannot be confirmed. A
    # request made after the opt-out (the web form's, M5) stays open until the next one.
    expire_open(contact)


def latest_request(contact: Contact) -> DoiRequest | None:
    """Return the contact's most recently mailed double opt-in request, if any."""
    return db.session.scalar(
        sa.select(DoiRequest)
        .where(DoiRequest.contact_id == contact.id)
        .order_by(DoiRequest.last_sent_at.desc(), DoiRequest.id.desc())
        .limit(1)
    )


def _recently_mailed(contact: Contact, latest: DoiRequest | None, now: datetime) -> bool:
    """Whether a double opt-in mail went to the contact's current address in the last 24
    hours, under any of the contact's requests: an address changed A to B and back to A
    within a day gets no second mail at A. `latest` is the contact's latest request."""
    since = now - RESEND_AFTER
    if db.session.scalar(
        sa.select(sa.func.count()).select_from(DoiRequest).where(
            DoiRequest.contact_id == contact.id,
            DoiRequest.last_sent_at > since,
            DoiRequest.sent_to.in_(suppression.digests(contact.email)),
        )
    ):
        return True
    # A request mailed before its address was recorded: the latest one counts if no address
    # change came after it.
    return (
        latest is not None
        and latest.sent_to is None
        and latest.last_sent_at > since
        and _sent_to_this_address(contact, latest)
    )


def _sent_to_this_address(contact: Contact, request: DoiRequest) -> bool:
    """Whether a request's last mail went to the contact's current address: no address change
    (which contact_records.change_email records in the ledger) came after it."""
    changed = db.session.scalar(
        sa.select(sa.func.max(ledger.LedgerEvent.occurred_at)).where(
            ledger.LedgerEvent.contact_ref == contact.public_id,
            ledger.LedgerEvent.subject_type == "contact",
            ledger.LedgerEvent.subject_ref == "email",
            ledger.LedgerEvent.action == "email_changed",
        )
    )
    return changed is None or request.last_sent_at >= changed


def send_request(contact: Contact, *, source: str, actor: str) -> DoiResult:
    """Queue the double opt-in mail for a contact, or say why not (nothing queued then).

    ``source`` is "webform" (the contact's own sign-up, mailed whatever the status, M5) or
    "staff"/"list" (opted-out contacts are skipped, M3). At most one mail per address per 24
    hours.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}")
    if not contact.email or contact.erased_at is not None:
        return _not_sent("no_address")
    if not mailable(contact.email):
        return _not_sent("unmailable")
    status = OptIn(contact.opt_in_status)
    if status is OptIn.DOUBLE:
        return _not_sent("already_double")
    if source != "webform" and status in OPT_OUTS:
        return _not_sent("opted_out")
    # Two requests at once (a double click, a list job beside a staff click) queue one mail:
    # the contact's row is locked until the transaction ends (PostgreSQL; SQLite serialises).
    db.session.execute(sa.select(Contact.id).where(Contact.id == contact.id).with_for_update())
    now = utcnow()
    latest = latest_request(contact)
    if _recently_mailed(contact, latest, now):
        return _not_sent("recently_sent")
    decision = gate.decide(_category(source), recipient=contact.email, contact=contact)
    if not decision.allowed:
        return _not_sent(decision.reason, decision.explanation)
    if latest is not None and latest.status == "pending":
        # One open request per contact: its old links keep working, its reminders restart.
        request = latest
        request.last_sent_at, request.reminders = now, 0
        if source == "webform":
            # A new sign-up: pruning counts from it.
            request.source, request.created_at = source, now
    else:
        request = DoiRequest(
            contact_id=contact.id, source=source, created_by=actor, created_at=now, last_sent_at=now
        )
        db.session.add(request)
        db.session.flush()
    request.sent_to = suppression.digest(contact.email)
    _queue_mail(contact, request)
    return DoiResult(True, None, request)


def request_of(contact: Contact, public_id: str) -> DoiRequest | None:
    """Return a contact's double opt-in request by its public id."""
    return db.session.scalar(
        sa.select(DoiRequest).where(
            DoiRequest.public_id == public_id, DoiRequest.contact_id == contact.id
        )
    )


#: Called with (contact, request) when a request is confirmed, in the same transaction: the
#: web form, say, joins the lists a sign-up chose only now.
CONFIRM_HOOKS: list[Callable[[Contact, DoiRequest], None]] = []


def on_confirm(hook: Callable[[Contact, DoiRequest], None]):
    """Register a function to run when a double opt-in request is confirmed."""
    CONFIRM_HOOKS.append(hook)
    return hook


def confirm(
    contact: Contact, public_id: str, *, evidence: ledger.Evidence | None = None
) -> tuple[str, DoiRequest | None]:
    """Set Double opt-in from a request, once; return ("confirmed" | "already_confirmed" |
    "expired" | "unknown", the request)."""
    request = request_of(contact, public_id)
    if request is None:
        return "unknown", None
    now = utcnow()
    # The ledger's head first, as every writer takes it (ledger.lock_head): an opt-out holding
    # it expires this contact's open requests, the very rows claimed here.
    ledger.lock_head()
    claimed = (
        db.session.execute(
            sa.update(DoiRequest)
            .where(DoiRequest.id == request.id, DoiRequest.status == "pending")
            .values(status="confirmed", decided_at=now)
        ).rowcount
        == 1
    )
    db.session.refresh(request)
    if not claimed:
        return ("already_confirmed" if request.status == "confirmed" else request.status), request
    optin.transition(
        contact,
        optin.Event.DOI_CONFIRMED,
        actor="contact",
        method="double_opt_in",
        evidence_ref=f"doi:{request.public_id}",
        evidence=evidence,
    )
    # The address is confirmed: the contact's other open requests need no reminder.
    db.session.execute(
        sa.update(DoiRequest)
        .where(DoiRequest.contact_id == contact.id, DoiRequest.status == "pending")
        .values(status="confirmed", decided_at=now)
    )
    for hook in CONFIRM_HOOKS:
        hook(contact, request)
    return "confirmed", request


# --- Reminders ------------------------------------------------------------------------------


def _due_reminders(statement: sa.Select) -> sa.Select:
    """Narrow a query on requests to those due a reminder: never to an opted-out contact."""
    config = current_app.config
    before = utcnow() - timedelta(hours=config["PORTAL_DOI_REMIND_AFTER_HOURS"])
    return statement.join(Contact, Contact.id == DoiRequest.contact_id).where(
        DoiRequest.status == "pending",
        DoiRequest.reminders < config["PORTAL_DOI_MAX_REMINDERS"],
        DoiRequest.last_sent_at <= before,
        Contact.opt_in_status.not_in([*OPT_OUTS, OptIn.DOUBLE]),
        Contact.email.is_not(None),
    )


def _count_reminders(_params: dict) -> int:
    return db.session.scalar(_due_reminders(sa.select(sa.func.count(DoiRequest.id))))


def _reminders_after(_params: dict, after: int, limit: int):
    statement = _due_reminders(sa.select(DoiRequest)).where(DoiRequest.id > after)
    statement = statement.order_by(DoiRequest.id).limit(limit)
    return [(request.id, request) for request in db.session.scalars(statement)]


def _remind(_params: dict, request: DoiRequest) -> str:
    contact = db.session.get(Contact, request.contact_id)
    if not mailable(contact.email):
        why = REASONS["unmailable" if contact.email else "no_address"]
        return str(_l("skipped: %(why)s", why=why))
    request.reminders += 1
    request.last_sent_at = utcnow()
    request.sent_to = suppression.digest(contact.email)
    row = _queue_mail(contact, request, reminder=True)
    if row.status == "refused":
        # The gate said no (stopped processing, say); the row keeps the reason for staff.
        return str(_l("skipped: %(why)s", why=row.reason))
    return str(_l("reminder sent"))


REMIND = jobs.register(
    jobs.JobKind(
        name="doi-reminders",
        label="Remind contacts of unconfirmed double opt-in requests",
        count=_count_reminders,
        items_after=_reminders_after,
        process=_remind,
    )
)


# --- Pruning --------------------------------------------------------------------------------


def _due_pruning() -> sa.ColumnElement[bool]:
    days = current_app.config["PORTAL_DOI_PRUNE_AFTER_DAYS"]
    return sa.and_(
        DoiRequest.status == "pending",
        DoiRequest.source == "webform",
        DoiRequest.created_at <= utcnow() - timedelta(days=days),
    )


def _count_pruning(_params: dict) -> int:
    return db.session.scalar(
        sa.select(sa.func.count()).select_from(DoiRequest).where(_due_pruning())
    )


def _pruning_after(_params: dict, after: int, limit: int):
    statement = (
        sa.select(DoiRequest)
        .where(_due_pruning(), DoiRequest.id > after)
        .order_by(DoiRequest.id)
        .limit(limit)
    )
    return [(request.id, request) for request in db.session.scalars(statement)]


def _only_a_signup(contact: Contact) -> bool:
    """Say whether the contact is nothing but an unconfirmed web-form sign-up."""
    if contact.kind != "lead" or contact.opt_in_status not in (OptIn.NONE, OptIn.SINGLE_WEBFORM):
        return False
    other = db.session.scalar(
        sa.select(ledger.LedgerEvent.id)
        .where(
            ledger.LedgerEvent.contact_ref == contact.public_id,
            ledger.LedgerEvent.method != WEBFORM_METHOD,
        )
        .limit(1)
    )
    return other is None


def _prune(_params: dict, request: DoiRequest) -> str:
    contact = db.session.get(Contact, request.contact_id)
    if not _only_a_signup(contact):
        # The contact existed before the sign-up, or did more since: only the request ends.
        request.status, request.decided_at = "expired", utcnow()
        return str(_l("sign-up expired, contact kept"))
    ledger.append(
        contact_ref=contact.public_id,
        subject_type="contact",
        action="deleted",
        method="prune",
        actor="system",
        evidence_ref=f"doi:{request.public_id}",
    )
    ledger.clear_evidence(contact.public_id)
    # Only double opt-in mail ever went to this address: its copies go with the person.
    db.session.execute(
        sa.delete(outbox.OutboxMessage).where(outbox.OutboxMessage.contact_id == contact.id)
    )
    db.session.add(
        ContactTombstone(public_id=contact.public_id, reason="unconfirmed web-form sign-up pruned")
    )
    db.session.delete(contact)
    return str(_l("unconfirmed sign-up deleted"))


PRUNE = jobs.register(
    jobs.JobKind(
        name="doi-prune",
        label="Delete web-form sign-ups nobody confirmed",
        count=_count_pruning,
        items_after=_pruning_after,
        process=_prune,
    )
)


# --- A whole mailing list -------------------------------------------------------------------


def _members(params: dict):
    return sa.and_(Subscription.list_id == params["list_id"], Subscription.status == "subscribed")


def _count_members(params: dict) -> int:
    return db.session.scalar(
        sa.select(sa.func.count()).select_from(Subscription).where(_members(params))
    )


def _members_after(params: dict, after: int, limit: int):
    statement = (
        sa.select(Contact)
        .join(Subscription, Subscription.contact_id == Contact.id)
        .where(_members(params), Contact.id > after)
        .order_by(Contact.id)
        .limit(limit)
    )
    return [(contact.id, contact) for contact in db.session.scalars(statement)]


def _send_to_member(params: dict, contact: Contact) -> str:
    result = send_request(contact, source="list", actor=params["actor"])
    if result.sent:
        return str(_l("sent"))
    return str(_l("skipped: %(why)s", why=result.explanation))


SEND_LIST = jobs.register(
    jobs.JobKind(
        name="doi-send-list",
        label="Send the double opt-in email to a mailing list",
        count=_count_members,
        items_after=_members_after,
        process=_send_to_member,
    )
)


def start_list_job(mailing_list: MailingList, *, actor: str) -> jobs.Job:
    """Queue the job that sends the double opt-in email to every member of a list."""
    return jobs.start(
        SEND_LIST.name, {"list_id": mailing_list.id, "actor": actor}, created_by=actor
    )
