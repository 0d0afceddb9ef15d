"""Campaigns (M4, M7, N4): staff write a message for a mailing list and send it as a job.

This module holds the campaign and its drafts; `content` checks and renders what it says,
`audience` selects who receives it, `sending` queues its messages.
"""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from portal import jobs
from portal import rules
from portal.campaigns import content
from portal.campaigns.content import MAX_SUBJECT_LENGTH
from portal.campaigns.content import PLACEHOLDERS
from portal.campaigns.content import CampaignError
from portal.campaigns.content import CampaignErrors
from portal.campaigns.content import RenderError
from portal.campaigns.content import render
from portal.contacts import Contact
from portal.contacts import InvalidEmail
from portal.contacts import normalise_email
from portal.db import db
from portal.db import utcnow
from portal.lists import MailingList

__all__ = ["PLACEHOLDERS", "Campaign", "CampaignError", "CampaignErrors", "RenderError", "render"]

STATUSES = ("draft", "sending", "sent")


class Campaign(db.Model):
    __tablename__ = "campaigns"
    __table_args__ = (sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(sa.String(MAX_SUBJECT_LENGTH))
    text_body: Mapped[str] = mapped_column(sa.Text)
    html_body: Mapped[str] = mapped_column(sa.Text, default="")
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    # Who among the list's members receives it (rules.py format); None: all the policy admits.
    audience_rule: Mapped[dict | None] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(10), default="draft")
    created_by: Mapped[str] = mapped_column(sa.String(60))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The job that queues the messages, once sending began.
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"))
    sent_at: Mapped[datetime | None]
    # Counted in SQL when sending began: {"audience": n, "left_out": {reason: n}} (see
    # audience.audience_breakdown). Kept, so the page says what happened then, not since.
    audience_at_start: Mapped[dict | None] = mapped_column(sa.JSON)

    mailing_list: Mapped[MailingList] = relationship()
    job: Mapped[jobs.Job | None] = relationship()

    @property
    def editable(self) -> bool:
        return self.status == "draft"

    @property
    def stalled(self) -> bool:
        """Whether sending stopped because its job failed (see sending.resume)."""
        return self.status == "sending" and self.job is not None and self.job.status == "failed"


def check(
    *, subject: str, text_body: str, html_body: str, list_id, audience_rule: dict | None = None
) -> dict | None:
    """Return the audience rule in normal form, or raise CampaignError naming the field,
    unless a campaign like this can be sent (CampaignErrors, one for each, where several
    fields are wrong)."""
    errors = []
    with content.collected(errors):
        content.check(subject, text_body, html_body)
    mailing_list = db.session.get(MailingList, list_id) if isinstance(list_id, int) else None
    if mailing_list is None:
        errors.append(CampaignError("choose one of the mailing lists", "list_id"))
    rule = None
    try:
        rule = rules.validate(audience_rule)
    except rules.RuleError as error:
        errors.append(CampaignError(str(error), "audience"))
    content.raise_all(errors)
    return rule


def create(
    *,
    subject: str,
    text_body: str,
    html_body: str,
    list_id: int,
    author: str,
    audience_rule: dict | None = None,
) -> Campaign:
    """Create a draft campaign, or raise CampaignError naming the field that is wrong."""
    html_body = html_body or ""
    audience_rule = check(
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        list_id=list_id,
        audience_rule=audience_rule,
    )
    campaign = Campaign(
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        list_id=list_id,
        audience_rule=audience_rule,
        created_by=author,
    )
    db.session.add(campaign)
    db.session.flush()
    return campaign


def update(
    campaign: Campaign,
    *,
    subject: str,
    text_body: str,
    html_body: str,
    list_id: int,
    audience_rule: dict | None = None,
) -> Campaign:
    """Change a draft, or raise CampaignError (a campaign being sent is not edited)."""
    if not campaign.editable:
        raise CampaignError("this campaign is no longer a draft: it cannot be changed")
    html_body = html_body or ""
    audience_rule = check(
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        list_id=list_id,
        audience_rule=audience_rule,
    )
    campaign.subject, campaign.text_body, campaign.html_body = subject, text_body, html_body
    campaign.list_id, campaign.audience_rule = list_id, audience_rule
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
            "Here is what happened this month. Thank you for reading.\n"
            "Read more: https://www.example.com/news\n\n"
            "Leave this list: {{ unsubscribe_url }}\n"
        ),
        html_body=(
            "<p>Hello {{ first_name or 'there' }},</p>"
            "<p>Here is what happened <strong>this month</strong>. Thank you for reading.</p>"
            '<p><a href="https://www.example.com/news">Read more on our site</a></p>'
            '<p><a href="{{ unsubscribe_url }}">Leave this list</a></p>'
        ),
        list_id=mailing_list.id,
        author=author,
    )


# The sending half needs the model above; importing it here registers the job kind.
from portal.campaigns.audience import LEFT_OUT  # noqa: E402,F401
from portal.campaigns.audience import audience_breakdown  # noqa: E402,F401
from portal.campaigns.audience import audience_conditions  # noqa: E402,F401
from portal.campaigns.audience import audience_count  # noqa: E402,F401
from portal.campaigns.sending import SEND  # noqa: E402,F401
from portal.campaigns.sending import counts  # noqa: E402,F401
from portal.campaigns.sending import resume  # noqa: E402,F401
from portal.campaigns.sending import send  # noqa: E402,F401
