"""What one contact may choose on their page (P2, P3), and where each choice stands now.

The page offers the public mailing lists (and any list the contact is on), "stop all marketing
email", the consents whose display condition the contact meets, "stop processing" and "erase".
Outside the page's audience, or while the page is disabled, it offers the email options only.
"""

import hashlib
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from portal import rules
from portal import settings
from portal.consent import ConsentDefinition
from portal.consent import ConsentState
from portal.consent import ConsentVersion
from portal.contacts import OPT_OUTS
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import canonical_json
from portal.db import db
from portal.lists import MailingList
from portal.lists import Subscription

#: The kinds of choice, in the order the page shows them.
LIST, MARKETING, CONSENT, RESTRICTION, ERASURE = (
    "list", "marketing", "consent", "restriction", "erasure",
)


@dataclass(frozen=True)
class ConsentChoice:
    definition: ConsentDefinition
    version: ConsentVersion
    state: ConsentState | None

    @property
    def granted(self) -> bool:
        return self.state is not None and self.state.state == "granted"

    @property
    def preselected(self) -> bool | None:
        """The control's position: the decision on file, else the default (P3), else none."""
        if self.state is not None:
            return self.granted
        return True if self.definition.default_selected else None


@dataclass
class Page:
    """Everything one contact's page shows, read with a handful of queries."""

    contact: Contact
    full: bool
    rule_version: int
    policy_html: str
    lists: list[MailingList] = field(default_factory=list)
    subscribed: set[int] = field(default_factory=set)
    consents: list[ConsentChoice] = field(default_factory=list)

    @property
    def marketing_stopped(self) -> bool:
        return self.contact.opt_in_status == OptIn.OPTOUT_CONTACT

    def current(self) -> dict[tuple[str, str], bool]:
        """Return where each offered choice stands now, keyed by (kind, reference)."""
        state = {(LIST, item.slug): item.id in self.subscribed for item in self.lists}
        state[(MARKETING, "")] = self.contact.opt_in_status not in OPT_OUTS
        for choice in self.consents:
            if choice.state is not None:
                state[(CONSENT, choice.definition.slug)] = choice.granted
        if self.full:
            state[(RESTRICTION, "")] = self.contact.processing_stopped_at is not None
            state[(ERASURE, "")] = self.contact.erasure_requested_at is not None
        return state

    def stamp(self) -> str:
        """Return a short digest of the current choices: a form posted from an older page
        carries another stamp, so a stale form is never applied silently."""
        items = sorted(f"{kind}:{ref}={value}" for (kind, ref), value in self.current().items())
        return hashlib.sha256(canonical_json(items).encode()).hexdigest()[:20]

    def consent(self, slug: str) -> ConsentChoice | None:
        return next((c for c in self.consents if c.definition.slug == slug), None)

    def mailing_list(self, slug: str) -> MailingList | None:
        return next((item for item in self.lists if item.slug == slug), None)


def page_for(contact: Contact) -> Page:
    """Return what this contact's page offers and where each choice stands."""
    latest = settings.current()
    values = settings.values()
    full = bool(values["page_enabled"]) and rules.matches(values["audience_rule"], contact)
    page = Page(contact=contact, full=full, rule_version=latest.version if latest else 0,
                policy_html=values["policy_html"] if full else "")
    subscriptions = db.session.scalars(
        sa.select(Subscription).where(Subscription.contact_id == contact.id)
    ).all()
    page.subscribed = {s.list_id for s in subscriptions if s.status == "subscribed"}
    page.lists = list(db.session.scalars(
        sa.select(MailingList)
        .where(sa.or_(MailingList.public.is_(True), MailingList.id.in_(page.subscribed)))
        .order_by(MailingList.name)
    ))
    if not full:
        return page
    states = {
        state.consent_id: state
        for state in db.session.scalars(
            sa.select(ConsentState).where(ConsentState.contact_id == contact.id)
        )
    }
    definitions = db.session.scalars(
        sa.select(ConsentDefinition)
        .where(ConsentDefinition.retired_at.is_(None))
        .options(selectinload(ConsentDefinition.versions), selectinload(ConsentDefinition.field))
        .order_by(ConsentDefinition.id)
    ).all()
    for definition in definitions:
        if rules.matches(definition.display_condition, contact):
            page.consents.append(ConsentChoice(definition, definition.current_version,
                                               states.get(definition.id)))
    return page
