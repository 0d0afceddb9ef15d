"""Sending a campaign: the job that queues one message per recipient of its audience.

The job walks the audience (see `audience`) in contact-id order, in chunks, and queues one
outbox message each; each chunk is committed together with the job's cursor, so a job
interrupted anywhere resumes after the last queued chunk, and a unique constraint on
(campaign, contact) in the outbox backs that up. The outbox asks the gate again at hand-off
(R4): a contact who opts out while the campaign is sending receives nothing more.

A job that fails (the database dropping its connection, a bug) leaves the campaign sending;
`resume` starts the job again after its cursor. The outbox rows already written for the
campaign are the record of who was queued: nobody gets a second copy.

A message that cannot be made for one contact (a template failing on their values, an
address SMTP cannot carry) is kept in the outbox as failed, with the reason: it counts on the
campaign's page, the campaign goes on, and a resumed job does not try it again.
"""

import logging

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from portal import gate
from portal import jobs
from portal import outbox
from portal import rules
from portal import settings
from portal import suppression
from portal import tracking
from portal import unsubscribe
from portal.campaigns import Campaign
from portal.campaigns import CampaignError
from portal.campaigns import check
from portal.campaigns.audience import audience_breakdown
from portal.campaigns.audience import audience_conditions
from portal.campaigns.audience import audience_count
from portal.campaigns.content import render
from portal.contacts import Contact
from portal.contacts import FieldValue
from portal.db import db
from portal.db import utcnow
from portal.lists import Subscription
from portal.mail import MessageRejected

log = logging.getLogger(__name__)

#: Recipients per job item: queued together and committed with the job's cursor.
CHUNK = 50
#: The outbox reasons of a message that could not be made for its contact.
NOT_RENDERED = "could not be rendered"
NOT_QUEUED = "could not be queued"


def send(campaign: Campaign, *, author: str) -> jobs.Job:
    """Start sending a draft: check it again, then start the job that queues its messages."""
    if not campaign.editable:
        raise CampaignError("this campaign was already sent")
    check(
        subject=campaign.subject,
        text_body=campaign.text_body,
        html_body=campaign.html_body,
        list_id=campaign.list_id,
        audience_rule=campaign.audience_rule,
    )
    # The policy in force now fixes the audience; the gate applies the current one at hand-off.
    policy = settings.values()["campaign_policy"]
    job = jobs.start(SEND.name, {"campaign_id": campaign.id, "policy": policy}, created_by=author)
    campaign.status, campaign.job_id = "sending", job.id
    # Who is left out, and why, as it stands now: the page keeps showing it once contacts move on.
    campaign.audience_at_start = audience_breakdown(
        campaign.list_id, policy, campaign.audience_rule
    )
    db.session.flush()
    return job


def resume(campaign: Campaign) -> jobs.Job:
    """Start a campaign's failed send job again after the last chunk it queued, or raise
    CampaignError saying why it cannot."""
    if not campaign.stalled:
        raise CampaignError("this campaign's sending has not failed: there is nothing to resume")
    try:
        # The job would fail on it again at once: say so now instead.
        rules.validate(campaign.audience_rule)
    except rules.RuleError as error:
        raise CampaignError(f"the audience rule no longer holds: {error}", "audience") from None
    return jobs.resume(campaign.job)


def _count(params: dict) -> int:
    campaign = db.session.get(Campaign, params["campaign_id"])
    return -(-audience_count(campaign.list_id, params["policy"], campaign.audience_rule) // CHUNK)


def _items_after(params: dict, after: int, limit: int):
    """Return the next chunks of recipients' ids after a contact id, keyed by their last id."""
    campaign = db.session.get(Campaign, params["campaign_id"])
    statement = (
        sa.select(Contact.id)
        .join(Subscription, sa.true())
        .where(
            *audience_conditions(campaign.list_id, params["policy"], campaign.audience_rule),
            Contact.id > after,
        )
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
    # Read again now, in one query: a contact who left the audience since is skipped. Their
    # subscriptions come along and stay in the session while `found` holds them, where the
    # gate's lookup by primary key finds them without a query of its own.
    found = db.session.execute(
        sa.select(Contact, Subscription)
        .join(Subscription, sa.true())
        .where(
            *audience_conditions(campaign.list_id, params["policy"], campaign.audience_rule),
            Contact.id.in_(ids),
        )
        .options(selectinload(Contact.values).selectinload(FieldValue.field))
        .order_by(Contact.id)
    ).all()
    recipients = [contact for contact, _subscription in found]
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
    # What the gate and the footer read, once for the chunk and in its transaction.
    in_force = settings.values()
    suppressed = suppression.suppressed_among([contact.email for contact in recipients])
    tracked = tracking.consenting(recipients)
    for contact in recipients:
        if contact.id in already:
            continue
        try:
            subject, text, html = render(
                campaign, contact, in_force["footer_html"], track=contact.id in tracked
            )
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
                policy=in_force["campaign_policy"],
                suppressed=contact.email in suppressed,
                flush=False,
            )
        except CampaignError as error:
            # One contact's values must not stop the campaign. Logged by id and error type:
            # the error's text may quote the contact's values.
            kind = getattr(error, "kind", type(error).__name__)
            log.warning(
                "campaign %s: contact %s could not be rendered: %s", campaign.id, contact.id, kind
            )
            _failed(campaign, contact, f"{NOT_RENDERED}: {kind}")
            outcome = f"failed for some: {NOT_RENDERED}"
        except MessageRejected as error:
            log.warning(
                "campaign %s: nothing queued for contact %s: %s",
                campaign.id,
                contact.id,
                type(error).__name__,
            )
            # The reason alone: the error's text may quote the address.
            _failed(campaign, contact, NOT_QUEUED)
            outcome = f"failed for some: {NOT_QUEUED}"
    # The chunk's messages in one flush (one INSERT on PostgreSQL), not a flush a message.
    db.session.flush()
    return outcome


def _failed(campaign: Campaign, contact: Contact, reason: str) -> None:
    outbox.record_failed(
        category=gate.Category.CAMPAIGN,
        recipient=contact.email,
        subject=campaign.subject,
        reason=reason,
        contact=contact,
        list_id=campaign.list_id,
        campaign_id=campaign.id,
    )


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
    """Return the campaign's messages by outcome: queued, sent, failed and skipped, these two by
    reason; and how many recipients opened it and clicked in it, of those who allow tracking
    (P6). A failure's reason is NOT_RENDERED, NOT_QUEUED or "delivery" (see the outbox)."""
    statement = (
        sa.select(outbox.OutboxMessage.status, outbox.OutboxMessage.reason, sa.func.count())
        .where(outbox.OutboxMessage.campaign_id == campaign.id)
        .group_by(outbox.OutboxMessage.status, outbox.OutboxMessage.reason)
    )
    result = {"queued": 0, "sent": 0, "failed": 0, "skipped": 0, "reasons": {},
              "failures": {}, **tracking.campaign_counts(campaign.id)}
    for status, reason, number in db.session.execute(statement):
        if status in ("queued", "sending"):
            result["queued"] += number
        elif status == "refused":
            # "refused when queued: <the gate's reason>" or "refused at hand-off: <...>".
            explanation = (reason or "").partition(": ")[2] or reason or ""
            result["skipped"] += number
            result["reasons"][explanation] = result["reasons"].get(explanation, 0) + number
        elif status == "failed":
            cause = (reason or "").partition(": ")[0]
            cause = cause if cause in (NOT_RENDERED, NOT_QUEUED) else "delivery"
            result["failed"] += number
            result["failures"][cause] = result["failures"].get(cause, 0) + number
        else:
            result[status] += number
    return result
