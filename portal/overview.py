"""What the back office's overview counts: the work waiting for staff, at a glance."""

from dataclasses import dataclass

import sqlalchemy as sa

from portal import erasure
from portal.campaigns import Campaign
from portal.contacts import Contact
from portal.db import db
from portal.doi import DoiRequest
from portal.outbox import OutboxMessage


@dataclass(frozen=True)
class Attention:
    erasure_open: int
    erasure_overdue: int
    processing_stopped: int
    mail_failed: int
    campaigns_draft: int
    campaigns_sending: int
    doi_waiting: int


def _count(statement) -> int:
    return db.session.scalar(statement) or 0


def attention() -> Attention:
    """Count what needs a staff member's attention now."""
    requests = erasure.requests()
    count = sa.func.count()
    return Attention(
        erasure_open=len(requests),
        erasure_overdue=sum(1 for request in requests if request.overdue),
        processing_stopped=_count(
            sa.select(count).select_from(Contact).where(
                Contact.processing_stopped_at.is_not(None), Contact.erased_at.is_(None)
            )
        ),
        mail_failed=_count(
            sa.select(count).select_from(OutboxMessage).where(OutboxMessage.status == "failed")
        ),
        campaigns_draft=_count(
            sa.select(count).select_from(Campaign).where(Campaign.status == "draft")
        ),
        campaigns_sending=_count(
            sa.select(count).select_from(Campaign).where(Campaign.status == "sending")
        ),
        doi_waiting=_count(
            sa.select(count).select_from(DoiRequest).where(DoiRequest.status == "pending")
        ),
    )
