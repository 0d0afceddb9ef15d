"""Contact filters (S4, P9): read them from a query string, run them as one query, save them.

A filter set is plain data that round-trips through a query string, so every filtered list is
a URL that can be bookmarked, paged, exported and saved under a name. Parsing never raises:
a value that makes no sense is left out and reported, keyed by its query-string name.
"""

import re
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from urllib.parse import parse_qsl
from urllib.parse import urlencode

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.datastructures import MultiDict

from portal import rules
from portal.consent import ConsentDefinition
from portal.consent import ConsentState
from portal.contacts import Contact
from portal.contacts import FieldValue
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.lists import MailingList
from portal.lists import Subscription

PAGE_SIZE = 25
MAX_TEXT = 100
MAX_QUERY = 2000
CONSENT_PREFIX = "consent."
#: What a consent filter may ask for; "never" means the contact was never asked.
CONSENT_ANSWERS = ("granted", "revoked", "never")
YES_NO = ("yes", "no")


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(text: str) -> bool:
    """Say whether text holds control characters (a NUL byte, say), which no field may store."""
    return CONTROL.search(text) is not None


class FilterError(ValueError):
    """A saved filter cannot be stored as asked; the message says why."""


@dataclass
class Filters:
    """A checked set of contact filters; every part is optional and they all combine (and)."""

    opt_in: list[str] = field(default_factory=list)
    consents: dict[str, str] = field(default_factory=dict)
    erasure: str = ""
    stopped: str = ""
    region: str = ""
    mailing_list: str = ""
    text: str = ""

    def query_args(self) -> list[tuple[str, str]]:
        """Return the filters as query-string pairs, in a stable order."""
        pairs = [("opt_in", status) for status in self.opt_in]
        pairs += [(CONSENT_PREFIX + slug, answer) for slug, answer in sorted(self.consents.items())]
        for name, value in (
            ("erasure", self.erasure),
            ("stopped", self.stopped),
            ("region", self.region),
            ("list", self.mailing_list),
            ("q", self.text),
        ):
            if value:
                pairs.append((name, value))
        return pairs

    def query_string(self) -> str:
        """Return the filters as a canonical query string (no leading "?")."""
        return urlencode(self.query_args())

    @property
    def empty(self) -> bool:
        return not self.query_args()


def consent_slugs() -> list[str]:
    """Return the slugs of the consents a filter may name, in the order they were defined."""
    return list(
        db.session.scalars(sa.select(ConsentDefinition.slug).order_by(ConsentDefinition.id))
    )


def consent_choices() -> list[tuple[str, str]]:
    """Return (slug, title) of each consent a filter may name, in the order they were defined."""
    definitions = db.session.scalars(sa.select(ConsentDefinition).order_by(ConsentDefinition.id))
    return [(item.slug, item.current_version.title) for item in definitions]


def list_slugs() -> list[str]:
    """Return the slugs of every mailing list, by name."""
    return list(db.session.scalars(sa.select(MailingList.slug).order_by(MailingList.name)))


def list_choices() -> list[tuple[str, str]]:
    """Return (slug, name) of every mailing list, by name."""
    statement = sa.select(MailingList.slug, MailingList.name).order_by(MailingList.name)
    return [(slug, name) for slug, name in db.session.execute(statement)]


def regions() -> list[str]:
    """Return the regions contacts have, for the region filter's choices."""
    statement = (
        sa.select(Contact.region)
        .where(Contact.region.is_not(None), Contact.region != "")
        .distinct()
        .order_by(Contact.region)
    )
    return list(db.session.scalars(statement))


def parse(args: MultiDict) -> tuple[Filters, dict[str, str]]:
    """Read filters from query arguments; return them and a message for each value left out."""
    filters, errors = Filters(), {}
    statuses = {status.value for status in OptIn}
    for status in args.getlist("opt_in"):
        if status in statuses:
            if status not in filters.opt_in:
                filters.opt_in.append(status)
        elif status:
            errors["opt_in"] = _l(
                "“%(value)s” is not an opt-in status; that part of the filter is not applied.",
                value=status[:40],
            )
    known_consents = None
    for name, answer in args.items(multi=True):
        if not name.startswith(CONSENT_PREFIX) or not answer:
            continue
        slug = name[len(CONSENT_PREFIX) :]
        known_consents = known_consents if known_consents is not None else consent_slugs()
        if slug not in known_consents:
            errors[name] = _l(
                "There is no consent named “%(slug)s”; that part of the filter is not applied.",
                slug=slug[:60],
            )
        elif answer not in CONSENT_ANSWERS:
            errors[name] = _l(
                "Choose granted, revoked or never asked; that part of the filter is not applied."
            )
        else:
            filters.consents[slug] = answer
    for name in ("erasure", "stopped"):
        value = args.get(name, "")
        if value in YES_NO:
            setattr(filters, name, value)
        elif value:
            errors[name] = _l("Choose yes or no; that part of the filter is not applied.")
    region = args.get("region", "").strip()
    if has_control_characters(region):
        errors["region"] = _l(
            "The region holds control characters; that part of the filter is not applied."
        )
    elif len(region) > 40:
        errors["region"] = _l(
            "A region has at most 40 characters; that part of the filter is not applied."
        )
    else:
        filters.region = region
    mailing_list = args.get("list", "")
    if mailing_list and mailing_list not in list_slugs():
        errors["list"] = _l(
            "There is no mailing list named “%(slug)s”; that part of the filter is not applied.",
            slug=mailing_list[:60],
        )
    else:
        filters.mailing_list = mailing_list
    text = " ".join(args.get("q", "").split())
    if has_control_characters(text):
        errors["q"] = _l("The search holds control characters; it is not applied.")
    elif len(text) > MAX_TEXT:
        errors["q"] = _l(
            "Search for at most %(count)s characters; the search is not applied.", count=MAX_TEXT
        )
    else:
        filters.text = text
    return filters, errors


def parse_query_string(query: str) -> tuple[Filters, dict[str, str]]:
    """Read filters from a query string, as stored in a saved filter or an export job."""
    return parse(MultiDict(parse_qsl(query[:MAX_QUERY], keep_blank_values=True)))


def _consent_clause(slug: str, answer: str) -> sa.ColumnElement[bool]:
    decided = (
        sa.select(ConsentState.contact_id)
        .join(ConsentDefinition, ConsentDefinition.id == ConsentState.consent_id)
        .where(ConsentState.contact_id == Contact.id, ConsentDefinition.slug == slug)
    )
    if answer == "never":
        return ~decided.exists()
    return decided.where(ConsentState.state == answer).exists()


def _text_clause(text: str) -> sa.ColumnElement[bool]:
    # Names and the address compare as rules do (A-Z regardless of case, % and _ plain);
    # a sensitive value matches on its public characters only, what its mask shows (E4).
    plain = rules.where_clause(
        {
            "any": [
                {"field": name, "op": "contains", "value": text}
                for name in ("first_name", "last_name", "email")
            ]
        }
    )
    masked = (
        sa.select(FieldValue.id)
        .where(
            FieldValue.contact_id == Contact.id, FieldValue.masked.icontains(text, autoescape=True)
        )
        .exists()
    )
    return sa.or_(plain, masked)


def where(filters: Filters) -> sa.ColumnElement[bool]:
    """Return the filters as one condition on Contact."""
    clauses = []
    if filters.opt_in:
        clauses.append(
            rules.where_clause({"field": "opt_in_status", "op": "in", "value": filters.opt_in})
        )
    for slug, answer in filters.consents.items():
        clauses.append(_consent_clause(slug, answer))
    for column, value in (
        (Contact.erasure_requested_at, filters.erasure),
        (Contact.processing_stopped_at, filters.stopped),
    ):
        if value:
            clauses.append(column.is_not(None) if value == "yes" else column.is_(None))
    if filters.region:
        clauses.append(
            rules.where_clause({"field": "region", "op": "equals", "value": filters.region})
        )
    if filters.mailing_list:
        clauses.append(
            sa.select(Subscription.contact_id)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(
                Subscription.contact_id == Contact.id,
                Subscription.status == "subscribed",
                MailingList.slug == filters.mailing_list,
            )
            .exists()
        )
    if filters.text:
        clauses.append(_text_clause(filters.text))
    return sa.and_(sa.true(), *clauses)


def count(filters: Filters) -> int:
    """Return how many contacts match the filters."""
    statement = sa.select(sa.func.count()).select_from(Contact).where(where(filters))
    return db.session.scalar(statement)


@dataclass
class Page:
    """One page of a filtered list, newest contacts first."""

    contacts: list[Contact]
    number: int
    total: int
    size: int = PAGE_SIZE

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages

    @property
    def first_index(self) -> int:
        return (self.number - 1) * self.size + 1 if self.contacts else 0

    @property
    def last_index(self) -> int:
        return (self.number - 1) * self.size + len(self.contacts)


def page(filters: Filters, number: int = 1, size: int = PAGE_SIZE) -> Page:
    """Return one page of the contacts matching the filters (a page past the end is the last)."""
    total = count(filters)
    number = min(max(1, number), max(1, -(-total // size)))
    statement = (
        sa.select(Contact)
        .where(where(filters))
        .order_by(Contact.id.desc())
        .limit(size)
        .offset((number - 1) * size)
    )
    return Page(list(db.session.scalars(statement)), number, total, size)


def contacts_after(filters: Filters, after: int, limit: int) -> list[Contact]:
    """Return up to `limit` matching contacts whose id is above `after`, in id order."""
    statement = (
        sa.select(Contact)
        .where(where(filters), Contact.id > after)
        .order_by(Contact.id)
        .limit(limit)
    )
    return list(db.session.scalars(statement))


class SavedFilter(db.Model):
    """A filtered contact list saved under a name, shared by the staff."""

    __tablename__ = "saved_filters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80), unique=True)
    query: Mapped[str] = mapped_column(sa.String(MAX_QUERY))
    created_by_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("staff_users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def saved_filters() -> list[SavedFilter]:
    """Return every saved filter, by name."""
    return list(db.session.scalars(sa.select(SavedFilter).order_by(SavedFilter.name)))


def save(name: str, filters: Filters, *, created_by_id: int | None) -> SavedFilter:
    """Save filters under a name, or raise FilterError."""
    name = " ".join((name or "").split())
    if not name:
        raise FilterError(_l("Give the filter a name."))
    if has_control_characters(name):
        raise FilterError(_l("A name cannot hold control characters."))
    if len(name) > 80:
        raise FilterError(_l("A name has at most 80 characters."))
    if filters.empty:
        raise FilterError(_l("Choose at least one filter before saving."))
    if db.session.scalar(sa.select(SavedFilter.id).where(SavedFilter.name == name)):
        raise FilterError(
            _l("A saved filter is already named “%(name)s”; choose another name.", name=name)
        )
    saved = SavedFilter(name=name, query=filters.query_string(), created_by_id=created_by_id)
    db.session.add(saved)
    db.session.flush()
    return saved
