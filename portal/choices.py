"""What one contact may choose on their page (P2, P3), and where each choice stands now.

The page offers the public mailing lists (and any list the contact is on), "stop all marketing
email", the consents whose display condition the contact meets, "stop processing" and "erase".
Outside the page's audience, or while the page is disabled, it offers the email options only.
"""

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import selectinload

from portal import i18n
from portal import rules
from portal import settings
from portal.consent import ConsentDefinition
from portal.consent import ConsentState
from portal.consent import ConsentVersion
from portal.contacts import OPT_OUTS
from portal.contacts import Contact
from portal.contacts import FieldDefinition
from portal.contacts import FieldValue
from portal.db import UTCDateTime
from portal.db import canonical_json
from portal.db import db
from portal.db import utcnow
from portal.lists import MailingList
from portal.lists import Subscription

log = logging.getLogger(__name__)

#: The kinds of choice, in the order the page shows them.
LIST, MARKETING, CONSENT, RESTRICTION, ERASURE = (
    "list", "marketing", "consent", "restriction", "erasure",
)


@dataclass(frozen=True)
class ListInfo:
    id: int
    slug: str
    name: str
    description: str
    public: bool
    #: Its name and description in other languages: ((language, (name, description)), ...).
    translations: tuple = ()

    def in_language(self, language: str) -> "ListInfo":
        """Return the list as a page in `language` shows it."""
        for found, (name, description) in self.translations:
            if found == language:
                return ListInfo(self.id, self.slug, name, description, self.public)
        return self


@dataclass(frozen=True)
class Condition:
    """A saved rule, checked once when the catalogue is read.

    One that no longer holds (a field since marked sensitive, say) matches nobody, so the
    page shows less instead of failing.
    """

    rule: dict | None
    valid: bool = True
    #: The custom fields it reads, whose values the page loads with its one query.
    field_ids: frozenset[int] = frozenset()

    def holds(self, contact: Contact, fields: dict, values: dict[int, str | None]) -> bool:
        return self.valid and rules.holds(self.rule, contact, fields, values)


@dataclass(frozen=True)
class DefinitionInfo:
    id: int
    slug: str
    kind: str
    field_id: int | None
    display_condition: Condition
    default_selected: bool


@dataclass(frozen=True)
class VersionInfo:
    id: int
    number: int
    title: str
    text: str
    text_sha256: str
    #: The same wording in other languages: ((language, (title, text, text_sha256)), ...).
    translations: tuple = ()

    def in_language(self, language: str) -> "VersionInfo":
        """Return this version as a page in `language` shows it: its wording in that
        language if it has one, else its own."""
        for found, (title, text, text_sha256) in self.translations:
            if found == language:
                return VersionInfo(self.id, self.number, title, text, text_sha256)
        return self


@dataclass(frozen=True)
class FieldInfo:
    """What rules need to know of a field definition."""

    id: int
    name: str
    builtin: bool
    personal: bool
    sensitive: bool
    value_type: str


@dataclass(frozen=True)
class Catalogue:
    """What every contact's page is built from and what changes only when staff edit it."""

    rule_version: int
    settings: dict
    lists: tuple[ListInfo, ...]
    consents: tuple[tuple[DefinitionInfo, VersionInfo], ...]
    fields: dict[str, FieldInfo]
    audience: Condition

    @property
    def custom_field_ids(self) -> frozenset[int]:
        """The custom fields any rule of the page reads."""
        ids = set(self.audience.field_ids)
        for definition, _version in self.consents:
            ids |= definition.display_condition.field_ids
        return frozenset(ids)


def catalogue() -> Catalogue:
    """Return the catalogue, read again at most every PORTAL_CATALOGUE_SECONDS seconds.

    Settings, lists and consent texts are the same for every contact's page, so a busy
    portal reads them once in a while instead of on every request.
    """
    ttl = current_app.config["PORTAL_CATALOGUE_SECONDS"]
    now = time.monotonic()
    # Kept per application: one process may hold several (the tests do).
    cached = current_app.extensions.setdefault("portal_catalogue", {"at": 0.0, "value": None})
    if cached["value"] is None or now - cached["at"] >= ttl:
        cached.update(at=now, value=_read_catalogue())
    return cached["value"]


def forget_catalogue() -> None:
    """Make this process read the catalogue again on its next page (after a staff edit).

    Other processes notice the edit within PORTAL_CATALOGUE_SECONDS.
    """
    current_app.extensions.pop("portal_catalogue", None)


def _condition(rule: dict | None, fields: dict[str, FieldInfo]) -> Condition:
    try:
        rule = rules.validate(rule, fields=fields)
    except rules.RuleError as error:
        log.warning("a saved rule no longer holds and matches nobody: %s", error)
        return Condition(rule, valid=False)
    return Condition(rule, field_ids=frozenset(rules.custom_field_ids(rule, fields)))


def _read_catalogue() -> Catalogue:
    latest = settings.current()
    lists = tuple(
        ListInfo(item.id, item.slug, item.name, item.description, item.public, tuple(
            (language, (w["name"], w["description"]))
            for language, w in sorted((item.translations or {}).items())
        ))
        for item in db.session.scalars(sa.select(MailingList).order_by(MailingList.name))
    )
    fields = {
        f.name: FieldInfo(f.id, f.name, f.builtin, f.personal, f.sensitive, f.value_type)
        for f in db.session.scalars(sa.select(FieldDefinition))
    }
    definitions = db.session.scalars(
        sa.select(ConsentDefinition)
        .where(ConsentDefinition.retired_at.is_(None))
        .options(selectinload(ConsentDefinition.versions))
        .order_by(ConsentDefinition.id)
    ).all()
    consents = tuple(
        (
            DefinitionInfo(d.id, d.slug, d.kind, d.field_id,
                           _condition(d.display_condition, fields), d.default_selected),
            VersionInfo(v.id, v.number, v.title, v.text, v.text_sha256, tuple(
                (language, (w["title"], w["text"], w["text_sha256"]))
                for language, w in sorted((v.translations or {}).items())
            )),
        )
        for d in definitions
        for v in [d.current_version]
    )
    values = {**settings.DEFAULTS, **(latest.data if latest else {})}
    return Catalogue(rule_version=latest.version if latest else 0, settings=values,
                     lists=lists, consents=consents, fields=fields,
                     audience=_condition(values["audience_rule"], fields))


@dataclass(frozen=True)
class StateInfo:
    state: str
    version_number: int
    changed_at: datetime
    #: How the decision was made ("page", "page+email", "staff"...: ConsentState.method).
    method: str


@dataclass(frozen=True)
class ConsentChoice:
    definition: DefinitionInfo
    version: VersionInfo
    state: StateInfo | None

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
    """Everything one contact's page shows."""

    contact: Contact
    full: bool
    rule_version: int
    policy_html: str
    lists: list[ListInfo] = field(default_factory=list)
    subscribed: set[int] = field(default_factory=set)
    consents: list[ConsentChoice] = field(default_factory=list)
    #: Grants the contact asked for whose confirmation link is still alive: when each was
    #: last asked for, keyed by (kind, reference). The page says they are waiting, so that a
    #: contact who reloads it does not think the request was lost.
    waiting: dict[tuple[str, str], datetime] = field(default_factory=dict)

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

    def positions(self, wanted: dict[tuple[str, str], bool] | None = None) -> dict:
        """Return how each control is set: as the contact asked (after a form had to be sent
        back), else as things stand, a consent's default only pre-positioning it (P3)."""
        positions = {(LIST, item.slug): item.id in self.subscribed for item in self.lists}
        positions[(MARKETING, "")] = self.contact.opt_in_status not in OPT_OUTS
        for choice in self.consents:
            positions[(CONSENT, choice.definition.slug)] = choice.preselected
        positions.update({key: value for key, value in (wanted or {}).items()
                          if key in positions or key[0] in (RESTRICTION, ERASURE)})
        return positions

    def stamp(self) -> str:
        """Return a short digest of the current choices: a form posted from an older page
        carries another stamp, so a stale form is never applied silently."""
        items = sorted(f"{kind}:{ref}={value}" for (kind, ref), value in self.current().items())
        return hashlib.sha256(canonical_json(items).encode()).hexdigest()[:20]

    def consent(self, slug: str) -> ConsentChoice | None:
        return next((c for c in self.consents if c.definition.slug == slug), None)

    def mailing_list(self, slug: str) -> ListInfo | None:
        return next((item for item in self.lists if item.slug == slug), None)


#: The table of portal.changes.PendingChange (which imports this module).
_PENDING = sa.table(
    "pending_changes",
    sa.column("contact_id"),
    sa.column("items", sa.JSON),
    sa.column("status"),
    sa.column("created_at", UTCDateTime()),
)


def _state_query(with_values: bool) -> sa.CompoundSelect:
    """One query for what a page needs of one contact: consent states (and how each decision
    was made), subscriptions, the grants waiting for confirmation and (when a rule reads custom
    fields) the plain values of those fields."""
    contact_id = sa.bindparam("contact_id")
    none = sa.null()
    parts = [
        sa.select(sa.literal_column("'consent'").label("kind"),
                  ConsentState.consent_id.label("ref"), ConsentState.state.label("text"),
                  ConsentVersion.number.label("number"), ConsentState.changed_at.label("at"),
                  ConsentState.method.label("method"))
        .join(ConsentVersion, ConsentVersion.id == ConsentState.version_id)
        .where(ConsentState.contact_id == contact_id),
        sa.select(sa.literal_column("'list'"), Subscription.list_id, none, none, none, none)
        .where(Subscription.contact_id == contact_id, Subscription.status == "subscribed"),
        # The grants waiting for confirmation, as their JSON text (changes.PendingChange).
        sa.select(sa.literal_column("'waiting'"), none, sa.cast(_PENDING.c["items"], sa.Text),
                  none, _PENDING.c.created_at, none)
        .where(_PENDING.c.contact_id == contact_id, _PENDING.c.status == "pending",
               _PENDING.c.created_at > sa.bindparam("waiting_since")),
    ]
    if with_values:
        # Only the plain value: rules never read a sensitive field's ciphertext or mask.
        parts.append(
            sa.select(sa.literal_column("'value'"), FieldValue.field_id, FieldValue.value, none,
                      none, none)
            .where(FieldValue.contact_id == contact_id,
                   FieldValue.field_id.in_(sa.bindparam("field_ids", expanding=True)))
        )
    return sa.union_all(*parts)


#: Built once per process: constructing the statement costs more than running it.
STATE_QUERIES = {False: _state_query(False), True: _state_query(True)}


def page_for(contact: Contact) -> Page:
    """Return what this contact's page offers and where each choice stands.

    Beyond the cached catalogue it makes one query (consent states, subscriptions, the grants
    waiting for confirmation and the custom field values the rules read), none for a contact
    not yet saved.
    """
    known = catalogue()
    if contact.id is None:
        # A contact that exists only in memory (the staff preview of typed-in values): no
        # decisions or subscriptions yet, and its values are the ones it holds.
        return page_from(contact, known, (), {row.field_id: row.value for row in contact.values})
    with_values, params = state_query(contact.id, known)
    return page_from(contact, known, db.session.execute(STATE_QUERIES[with_values], params))


def state_query(contact_id: int, known: Catalogue) -> tuple[bool, dict]:
    """Return which of the two state queries a contact's page needs (True: the one that also
    reads custom field values) and its parameters."""
    field_ids = known.custom_field_ids
    # A request older than its confirmation link can no longer be confirmed.
    alive = timedelta(seconds=current_app.config["PORTAL_LINK_MAX_AGE"]["confirm"])
    params = {"contact_id": contact_id, "waiting_since": utcnow() - alive}
    if field_ids:
        params["field_ids"] = sorted(field_ids)
    return bool(field_ids), params


def page_from(contact: Contact, known: Catalogue, rows, values: dict | None = None) -> Page:
    """Return the contact's page from the catalogue and the rows of its state query."""
    states, subscribed, values, waiting = {}, set(), dict(values or {}), {}
    for kind, ref, text, number, at, method in rows:
        if kind == "consent":
            states[ref] = StateInfo(text, number, at, method)
        elif kind == "list":
            subscribed.add(ref)
        elif kind == "waiting":
            for item in json.loads(text):
                key = (item["kind"], item["ref"])
                if item["value"] and (key not in waiting or at > waiting[key]):
                    waiting[key] = at
        else:
            values[ref] = text
    settings_now = known.settings
    full = bool(settings_now["page_enabled"]) and known.audience.holds(contact, known.fields,
                                                                      values)
    # The page's language: the wording of the policy and of each consent shown in it (B11).
    language = i18n.language()
    policy = (settings_now["policy_translations"] or {}).get(language) or settings_now[
        "policy_html"]
    page = Page(contact=contact, full=full, rule_version=known.rule_version,
                policy_html=policy if full else "", subscribed=subscribed, waiting=waiting)
    page.lists = [item.in_language(language) for item in known.lists
                  if item.public or item.id in subscribed]
    if full:
        # A decision then records the digest of the wording shown (B2).
        page.consents = [
            ConsentChoice(definition, version.in_language(language), states.get(definition.id))
            for definition, version in known.consents
            if definition.display_condition.holds(contact, known.fields, values)
        ]
    return page
