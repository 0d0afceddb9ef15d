"""Engagement tracking (P6): the open pixel and the click redirect of campaign mail.

Engagement is recorded only for a contact who has granted a tracking consent and withdrawn
none (asked for in parts, withdrawing any part stops all of it), and only while that holds:
every hit asks again, so withdrawing the consent on the page stops it at once, and so do
stopping processing and asking for erasure. A campaign's HTML part is instrumented (its links
through the redirect, the pixel at its end) only for contacts who allowed it when their message
was queued; nobody else's mail carries a tracking link at all.

These are the only GETs that write (R1), and they only append engagement events: no ledger
event, no change of state. A HEAD writes nothing. A click always leads on to the address it
was signed for, even once its token is too old to record or the contact withdrew consent, so
that a link in an old mail keeps working; a token that is not ours gets the 404 page and never
a redirect. Recorded events are deleted when tracking is withdrawn and the undo window closes,
and when the contact's data is erased.
"""

import html
import re
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from flask import Blueprint
from flask import abort
from flask import current_app
from flask import redirect
from flask import request
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import hardening
from portal.consent import ConsentDefinition
from portal.consent import ConsentState
from portal.contacts import Contact
from portal.db import GET_WRITING_BLUEPRINTS
from portal.db import db
from portal.db import utcnow
from portal.links import TokenInvalid
from portal.links import contact_of
from portal.links import make_token
from portal.links import public_url
from portal.links import read_signed

KINDS = ("open", "click")
PURPOSE = "track"
#: Longer addresses are left as they are rather than tracked.
MAX_URL = 2000
#: How many hits of one contact's mail, and of one client address, are recorded; the rest
#: are answered the same but not recorded (a forwarded mail opened by a crowd, a scanner).
PER_CONTACT = "120/hour"
PER_IP = "600/minute"

#: A transparent 1x1 GIF.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

bp = Blueprint("tracking", __name__)
GET_WRITING_BLUEPRINTS.add(bp.name)


class EngagementEvent(db.Model):
    """One open or click of a campaign message, by a contact who had granted tracking."""

    __tablename__ = "engagement_events"
    __table_args__ = (sa.CheckConstraint(sa.column("kind").in_(KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(sa.String(10))
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="SET NULL"), index=True
    )
    # The address a click led to; none for an open.
    url: Mapped[str | None] = mapped_column(sa.String(MAX_URL))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


def _decided(state: str, *, offered_only: bool = True) -> sa.Select:
    """Contacts whose decision on a tracking consent (one still offered) is `state`."""
    statement = (
        sa.select(ConsentState.contact_id)
        .join(ConsentDefinition, ConsentDefinition.id == ConsentState.consent_id)
        .where(ConsentDefinition.kind == "tracking", ConsentState.state == state)
    )
    return statement.where(ConsentDefinition.retired_at.is_(None)) if offered_only else statement


def _allowed() -> sa.Select:
    """Contacts who granted a tracking consent and withdrew none: where a business asks for
    tracking in parts, withdrawing any part stops all of it."""
    return _decided("granted").except_(_decided("revoked"))


_ALLOWED_ONE = sa.select(
    sa.literal(True)
).where(
    sa.exists(_decided("granted").where(ConsentState.contact_id == sa.bindparam("contact_id"))),
    ~sa.exists(_decided("revoked").where(ConsentState.contact_id == sa.bindparam("contact_id"))),
)


def _locked(contact: Contact) -> bool:
    """Stopped processing, an erasure asked for or done: nothing is recorded, consent or not."""
    return (
        contact.erased_at is not None
        or contact.erasure_requested_at is not None
        or contact.processing_stopped_at is not None
    )


def may_track(contact: Contact) -> bool:
    """Say whether engagement of this contact may be recorded now."""
    if _locked(contact):
        return False
    return db.session.scalar(_ALLOWED_ONE, {"contact_id": contact.id}) is not None


def consenting(contacts: list[Contact]) -> set[int]:
    """Return the ids of those contacts whose engagement may be recorded, in one query."""
    candidates = [contact.id for contact in contacts if not _locked(contact)]
    if not candidates:
        return set()
    allowed = _allowed().subquery()
    return set(db.session.scalars(
        sa.select(allowed.c.contact_id).where(allowed.c.contact_id.in_(candidates))
    ))


# nh3 writes every attribute value in double quotes, with & < > " escaped.
_HREF = re.compile(r'(<a\s[^>]*?href=")([^"]*)(")', re.IGNORECASE)


def _trackable(url: str) -> bool:
    base = current_app.config["PORTAL_BASE_URL"].rstrip("/") + "/"
    return (
        url.lower().startswith(("https://", "http://"))
        and not url.startswith(base)  # the portal's own links: unsubscribe, preferences
        and len(url) <= MAX_URL
    )


def instrument(html_body: str, contact: Contact, campaign_id: int) -> str:
    """Return a campaign's sanitized HTML with its web links through the click redirect and
    the open pixel at its end, for a contact who granted tracking."""

    def through_redirect(match: re.Match) -> str:
        url = html.unescape(match.group(2))
        if not _trackable(url):
            return match.group(0)
        token = make_token(PURPOSE, contact, m=campaign_id, u=url)
        return f"{match.group(1)}{html.escape(public_url(f'/t/c/{token}'))}{match.group(3)}"

    pixel_url = public_url(f"/t/o/{make_token(PURPOSE, contact, m=campaign_id)}")
    pixel = f'<img src="{html.escape(pixel_url)}" width="1" height="1" alt="">'
    return _HREF.sub(through_redirect, html_body) + pixel


def record(
    kind: str, payload: dict, age: float, *, client_ip: str | None, url: str | None = None
) -> bool:
    """Append an engagement event for a signed token's hit, if the token is recent enough, the
    contact allows it now and the quiet limits hold; say whether one was added."""
    if age > current_app.config["PORTAL_LINK_MAX_AGE"][PURPOSE]:
        return False
    contact = contact_of(payload)
    if contact is None or not may_track(contact):
        return False
    if not hardening.quietly_allowed_for(
        "track", payload["c"], client_ip, per_ip=PER_IP, per_address=PER_CONTACT
    ):
        return False
    campaign_id = payload.get("m") if isinstance(payload.get("m"), int) else None
    db.session.add(
        EngagementEvent(contact_id=contact.id, kind=kind, campaign_id=campaign_id, url=url)
    )
    return True


def _no_store(response):
    # The token must not travel on to the site a click leads to.
    hardening.answer_headers((("Cache-Control", "no-store"), ("X-Robots-Tag", "noindex"),
                              ("Referrer-Policy", "no-referrer")))
    return response


@bp.get("/t/o/<token>")
def opened(token: str):
    """Serve the open pixel: the same image whatever the token, recorded only with consent."""
    try:
        payload, age = read_signed(PURPOSE, token)
    except TokenInvalid:
        pass
    else:
        # A HEAD (a scanner) records nothing; nor does a click token used as the image.
        if (
            request.method == "GET"
            and "u" not in payload
            and record("open", payload, age, client_ip=request.remote_addr)
        ):
            db.session.commit()
    return _no_store(current_app.response_class(PIXEL, mimetype="image/gif"))


@bp.get("/t/c/<token>")
def clicked(token: str):
    """Lead on to the address a click token was signed for, recording it only with consent."""
    try:
        payload, age = read_signed(PURPOSE, token)
    except TokenInvalid:
        abort(404)
    url = payload.get("u")
    if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
        abort(404)
    if request.method == "GET" and record(
        "click", payload, age, client_ip=request.remote_addr, url=url
    ):
        db.session.commit()
    return _no_store(redirect(url, code=302))


def purge_withdrawn(undo_window: timedelta, now: datetime | None = None) -> int:
    """Delete the recorded engagement of contacts who withdrew tracking longer ago than the
    undo window and are not tracked now; return how many events went."""
    cutoff = (now or utcnow()) - undo_window
    withdrawn = _decided("revoked", offered_only=False).where(ConsentState.changed_at <= cutoff)
    statement = sa.delete(EngagementEvent).where(
        EngagementEvent.contact_id.in_(withdrawn),
        EngagementEvent.contact_id.not_in(_allowed()),
    )
    return db.session.execute(statement).rowcount


def summary(contact: Contact, limit: int = 10) -> dict:
    """Return what the contact record shows: tracking allowed, counts, the latest events."""
    counts = dict(
        db.session.execute(
            sa.select(EngagementEvent.kind, sa.func.count())
            .where(EngagementEvent.contact_id == contact.id)
            .group_by(EngagementEvent.kind)
        ).all()
    )
    latest = db.session.scalars(
        sa.select(EngagementEvent)
        .where(EngagementEvent.contact_id == contact.id)
        .order_by(EngagementEvent.id.desc())
        .limit(limit)
    ).all()
    return {"allowed": may_track(contact), "opens": counts.get("open", 0),
            "clicks": counts.get("click", 0), "latest": latest}


def campaign_counts(campaign_id: int) -> dict[str, int]:
    """Return how many recipients of a campaign opened it and clicked in it (each once)."""
    rows = db.session.execute(
        sa.select(EngagementEvent.kind, sa.func.count(sa.distinct(EngagementEvent.contact_id)))
        .where(EngagementEvent.campaign_id == campaign_id)
        .group_by(EngagementEvent.kind)
    ).all()
    found = dict(rows)
    return {"opened": found.get("open", 0), "clicked": found.get("click", 0)}
