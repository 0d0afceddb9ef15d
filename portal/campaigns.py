"""Campaigns (M4, M7, N4): staff write a message for a mailing list and send it as a job.

The audience is selected in SQL: the list's subscribed members whose opt-in status the
campaign policy admits, and whose processing is not stopped or erased. The job walks them in
contact-id order, in chunks, and queues one outbox message each; each chunk is committed
together with the job's cursor, so a job interrupted anywhere resumes after the last queued
chunk, and a unique constraint on (campaign, contact) in the outbox backs that up. The outbox
asks the gate again at hand-off (R4): a contact who opts out while the campaign is sending
receives nothing more.

Bodies are staff-written templates rendered in Jinja's sandbox, with plain values of the
contact only: a sensitive field is only ever seen masked (SECURITY.md 15). The HTML part is
sanitized after rendering, so whatever a template produces, only the allowed tags go out.
"""

import logging
from datetime import datetime

import jinja2
import sqlalchemy as sa
from flask import current_app
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship
from sqlalchemy.orm import selectinload

from portal import footer
from portal import gate
from portal import jobs
from portal import outbox
from portal import settings
from portal import unsubscribe
from portal.contacts import Contact
from portal.contacts import FieldValue
from portal.contacts import InvalidEmail
from portal.contacts import field_value
from portal.contacts import normalise_email
from portal.db import db
from portal.db import utcnow
from portal.lists import MailingList
from portal.lists import Subscription
from portal.mail import MessageRejected
from portal.mail import check_header

log = logging.getLogger(__name__)

STATUSES = ("draft", "sending", "sent")
#: Recipients per job item: queued together and committed with the job's cursor.
CHUNK = 50
MAX_SUBJECT_LENGTH = 200
#: What a template may use: plain values of the contact, masked custom fields, two links.
PLACEHOLDERS = {
    "first_name": "the contact's first name",
    "last_name": "the contact's last name",
    "name": "first and last name",
    "email": "the contact's address",
    "region": "the contact's region",
    "language": "the contact's language",
    "fields": "custom fields by name, sensitive ones masked, e.g. {{ fields.sales_stage }}",
    "unsubscribe_url": "the link that leaves this list (it opens the preference page)",
}
#: What a trial render at save time fills the placeholders with.
SAMPLE = {name: "sample" for name in PLACEHOLDERS} | {"fields": {}}


class CampaignError(ValueError):
    """A campaign cannot be saved or sent as it is; `field` names the culprit, if one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Campaign(db.Model):
    __tablename__ = "campaigns"
    __table_args__ = (sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(sa.String(MAX_SUBJECT_LENGTH))
    text_body: Mapped[str] = mapped_column(sa.Text)
    html_body: Mapped[str] = mapped_column(sa.Text, default="")
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    status: Mapped[str] = mapped_column(sa.String(10), default="draft")
    created_by: Mapped[str] = mapped_column(sa.String(60))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The job that queues the messages, once sending began.
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"))
    sent_at: Mapped[datetime | None]

    mailing_list: Mapped[MailingList] = relationship()
    job: Mapped[jobs.Job | None] = relationship()

    @property
    def editable(self) -> bool:
        return self.status == "draft"


# Two sandboxes: the text part is not HTML, the HTML part escapes every value it inserts.
_TEXT = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_HTML = SandboxedEnvironment(autoescape=True)
# Compiled templates by campaign and version: a 10,000-message campaign compiles them once.
_compiled: dict[tuple, tuple[jinja2.Template, jinja2.Template | None, frozenset[str]]] = {}


def _parse(environment: SandboxedEnvironment, source: str, field: str) -> set[str]:
    """Return the names a template uses, or raise CampaignError for a syntax error."""
    try:
        names = meta.find_undeclared_variables(environment.parse(source))
    except jinja2.TemplateSyntaxError as error:
        raise CampaignError(f"line {error.lineno}: {error.message}", field) from None
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise CampaignError(
            f"unknown placeholder {unknown[0]!r}; use {', '.join(sorted(PLACEHOLDERS))}", field
        )
    try:
        # A trial render catches what only rendering finds, such as the sandbox refusing
        # `{{ name.__class__ }}`, before anyone is sent anything.
        environment.from_string(source).render(SAMPLE)
    except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError) as error:
        raise CampaignError(f"the template cannot be rendered: {error}", field) from None
    return names


def _check(subject: str, text_body: str, html_body: str, list_id) -> MailingList:
    if not subject.strip():
        raise CampaignError("write a subject", "subject")
    try:
        check_header("Subject", subject)
    except MessageRejected:
        raise CampaignError(
            "the subject must be one line, without line breaks", "subject"
        ) from None
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise CampaignError(f"the subject has at most {MAX_SUBJECT_LENGTH} characters", "subject")
    if not text_body.strip():
        raise CampaignError("write the text of the message", "text_body")
    limit = current_app.config["PORTAL_MAX_BODY_BYTES"]
    if len(text_body.encode()) + len(html_body.encode()) > limit // 2:
        # Half the outbox's limit: each recipient's values and the footer are added to it.
        raise CampaignError(
            f"the text and HTML together are larger than {limit // 2} bytes", "text_body"
        )
    _parse(_TEXT, text_body, "text_body")
    _parse(_HTML, html_body, "html_body")
    mailing_list = db.session.get(MailingList, list_id) if isinstance(list_id, int) else None
    if mailing_list is None:
        raise CampaignError("choose one of the mailing lists", "list_id")
    return mailing_list


def create(*, subject: str, text_body: str, html_body: str, list_id: int, author: str) -> Campaign:
    """Create a draft campaign, or raise CampaignError naming the field that is wrong."""
    html_body = html_body or ""
    _check(subject, text_body, html_body, list_id)
    campaign = Campaign(
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        list_id=list_id,
        created_by=author,
    )
    db.session.add(campaign)
    db.session.flush()
    return campaign


def update(
    campaign: Campaign, *, subject: str, text_body: str, html_body: str, list_id: int
) -> Campaign:
    """Change a draft, or raise CampaignError (a campaign being sent is not edited)."""
    if not campaign.editable:
        raise CampaignError("this campaign is no longer a draft: it cannot be changed")
    html_body = html_body or ""
    _check(subject, text_body, html_body, list_id)
    campaign.subject, campaign.text_body, campaign.html_body = subject, text_body, html_body
    campaign.list_id = list_id
    campaign.updated_at = utcnow()
    db.session.flush()
    return campaign


def recent(limit: int = 100) -> list[Campaign]:
    """Return the newest campaigns first."""
    return list(db.session.scalars(sa.select(Campaign).order_by(Campaign.id.desc()).limit(limit)))


def find_contact(reference: str) -> Contact | None:
    """Return the contact with this address or public id; raise CampaignError if malformed."""
    reference = (reference or "").strip()
    if not reference:
        raise CampaignError("give a contact's email address or id", "contact")
    if "@" in reference:
        try:
            address = normalise_email(reference)
        except InvalidEmail:
            raise CampaignError("this is not a valid email address", "contact") from None
        return db.session.scalar(sa.select(Contact).where(Contact.email == address))
    return db.session.scalar(sa.select(Contact).where(Contact.public_id == reference[:32]))


# Rendering -------------------------------------------------------------------------------


def _templates(campaign: Campaign):
    key = (campaign.id, campaign.updated_at, campaign.text_body, campaign.html_body)
    found = _compiled.get(key)
    if found is None:
        names = _parse(_TEXT, campaign.text_body, "text_body")
        names |= _parse(_HTML, campaign.html_body, "html_body")
        html = _HTML.from_string(campaign.html_body) if campaign.html_body.strip() else None
        found = (_TEXT.from_string(campaign.text_body), html, frozenset(names))
        if len(_compiled) > 50:
            _compiled.clear()
        _compiled[key] = found
    return found


def _context(campaign: Campaign, contact: Contact, names: frozenset[str]) -> dict:
    """Return what a template sees: plain strings only, never a model or a decrypted value."""
    context = {
        "first_name": contact.first_name or "",
        "last_name": contact.last_name or "",
        "name": contact.display_name,
        "email": contact.email or "",
        "region": contact.region or "",
        "language": contact.language or "",
    }
    if "fields" in names:
        # field_value without reveal: a sensitive field's masked characters, never its value.
        context["fields"] = {
            value.field.name: field_value(contact, value.field.name) or ""
            for value in contact.values
        }
    if "unsubscribe_url" in names:
        context["unsubscribe_url"] = unsubscribe.visible_url(contact, campaign.mailing_list)
    return context


def render(campaign: Campaign, contact: Contact) -> tuple[str, str, str | None]:
    """Return the subject, text and HTML a contact would receive, footer included."""
    text_template, html_template, names = _templates(campaign)
    context = _context(campaign, contact, names)
    text = text_template.render(context)
    html = settings.sanitize_html(html_template.render(context)) if html_template else None
    text, html = footer.add_footer(text, html, contact)
    return campaign.subject, text, html


# Audience and sending --------------------------------------------------------------------


def audience_conditions(list_id: int, policy: str) -> list[sa.ColumnElement[bool]]:
    """Return the SQL conditions of a campaign's audience (a join of contacts and subscriptions).

    A plain IN on the status column, not a rules.where_clause: the statuses are exact values of
    a checked column, and the bare comparison lets the database use it as it is.
    """
    statuses = sorted(status.value for status in gate.POLICY_STATUSES[policy])
    return [
        Subscription.contact_id == Contact.id,
        Subscription.list_id == list_id,
        Subscription.status == "subscribed",
        Contact.opt_in_status.in_(statuses),
        Contact.processing_stopped_at.is_(None),
        Contact.erasure_requested_at.is_(None),
        Contact.erased_at.is_(None),
        Contact.email.is_not(None),
    ]


def audience_count(list_id: int, policy: str | None = None) -> int:
    """Return how many contacts a campaign to this list would go to under the policy."""
    policy = policy or settings.values()["campaign_policy"]
    statement = (
        sa.select(sa.func.count())
        .select_from(Contact)
        .join(Subscription, sa.true())
        .where(*audience_conditions(list_id, policy))
    )
    return db.session.scalar(statement)


def send(campaign: Campaign, *, author: str) -> jobs.Job:
    """Start sending a draft: check it again, then start the job that queues its messages."""
    if not campaign.editable:
        raise CampaignError("this campaign was already sent")
    _check(campaign.subject, campaign.text_body, campaign.html_body, campaign.list_id)
    # The policy in force now fixes the audience; the gate applies the current one at hand-off.
    params = {"campaign_id": campaign.id, "policy": settings.values()["campaign_policy"]}
    job = jobs.start(SEND.name, params, created_by=author)
    campaign.status, campaign.job_id = "sending", job.id
    db.session.flush()
    return job


def _count(params: dict) -> int:
    campaign = db.session.get(Campaign, params["campaign_id"])
    return -(-audience_count(campaign.list_id, params["policy"]) // CHUNK)


def _items_after(params: dict, after: int, limit: int):
    """Return the next chunks of recipients' ids after a contact id, keyed by their last id."""
    campaign = db.session.get(Campaign, params["campaign_id"])
    statement = (
        sa.select(Contact.id)
        .join(Subscription, sa.true())
        .where(*audience_conditions(campaign.list_id, params["policy"]), Contact.id > after)
        .order_by(Contact.id)
        .limit(limit * CHUNK)
    )
    ids = list(db.session.scalars(statement))
    if not ids and campaign.status == "sending":
        # The last chunk is done: every recipient is queued, committed with the job's end.
        campaign.status, campaign.sent_at = "sent", utcnow()
    # Ids, not contacts: each chunk's commit would expire contacts loaded ahead of it.
    chunks = [ids[start : start + CHUNK] for start in range(0, len(ids), CHUNK)]
    return [(chunk[-1], chunk) for chunk in chunks]


def _process(params: dict, ids: list[int]) -> str | None:
    """Queue one message for each recipient of a chunk, committed by the job with its cursor."""
    campaign = db.session.get(Campaign, params["campaign_id"])
    # Read again now, in one query: a contact who left the audience since is skipped.
    recipients = db.session.scalars(
        sa.select(Contact)
        .join(Subscription, sa.true())
        .where(*audience_conditions(campaign.list_id, params["policy"]), Contact.id.in_(ids))
        .options(selectinload(Contact.values).selectinload(FieldValue.field))
        .order_by(Contact.id)
    ).all()
    # Nobody is queued twice, even by a job that walks the audience again from the start.
    already = set(
        db.session.scalars(
            sa.select(outbox.OutboxMessage.contact_id).where(
                outbox.OutboxMessage.campaign_id == campaign.id,
                outbox.OutboxMessage.contact_id.in_(ids),
            )
        )
    )
    outcome = "already queued" if already else None
    for contact in recipients:
        if contact.id in already:
            continue
        try:
            subject, text, html = render(campaign, contact)
            outbox.enqueue(
                category=gate.Category.CAMPAIGN,
                recipient=contact.email,
                subject=subject,
                text_body=text,
                html_body=html,
                contact=contact,
                list_id=campaign.list_id,
                headers=unsubscribe.headers(contact, campaign.mailing_list),
                campaign_id=campaign.id,
            )
        except (MessageRejected, jinja2.TemplateError) as error:
            # One contact's values must not stop the campaign; logged by id, never address.
            log.warning(
                "campaign %s: nothing queued for contact %s: %s",
                campaign.id,
                contact.id,
                type(error).__name__,
            )
            outcome = f"not queued for some: {error}"[:120]
    return outcome


SEND = jobs.register(
    jobs.JobKind(
        name="send-campaign",
        label="Send a campaign",
        count=_count,
        items_after=_items_after,
        process=_process,
    )
)


def counts(campaign: Campaign) -> dict:
    """Return the campaign's messages by outcome: queued, sent, failed, skipped by reason."""
    statement = (
        sa.select(outbox.OutboxMessage.status, outbox.OutboxMessage.reason, sa.func.count())
        .where(outbox.OutboxMessage.campaign_id == campaign.id)
        .group_by(outbox.OutboxMessage.status, outbox.OutboxMessage.reason)
    )
    result = {"queued": 0, "sent": 0, "failed": 0, "skipped": 0, "reasons": {}}
    for status, reason, number in db.session.execute(statement):
        if status in ("queued", "sending"):
            result["queued"] += number
        elif status == "refused":
            # "refused when queued: <the gate's reason>" or "refused at hand-off: <...>".
            explanation = (reason or "").partition(": ")[2] or reason or ""
            result["skipped"] += number
            result["reasons"][explanation] = result["reasons"].get(explanation, 0) + number
        else:
            result[status] += number
    return result


def ensure_demo_draft(list_slug: str, *, author: str) -> Campaign | None:
    """Create the demo's draft campaign for a list, unless there is one already."""
    mailing_list = db.session.scalar(sa.select(MailingList).where(MailingList.slug == list_slug))
    if mailing_list is None:
        return None
    existing = db.session.scalar(sa.select(Campaign).where(Campaign.list_id == mailing_list.id))
    if existing is not None:
        return existing
    return create(
        subject=f"{mailing_list.name}: what is new this month",
        text_body=(
            "Hello {{ first_name or 'there' }},\n\n"
            "Here is what happened this month. Thank you for reading.\n\n"
            "Leave this list: {{ unsubscribe_url }}\n"
        ),
        html_body=(
            "<p>Hello {{ first_name or 'there' }},</p>"
            "<p>Here is what happened <strong>this month</strong>. Thank you for reading.</p>"
            '<p><a href="{{ unsubscribe_url }}">Leave this list</a></p>'
        ),
        list_id=mailing_list.id,
        author=author,
    )
