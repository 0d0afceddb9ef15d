"""Staff edits of what the preference page is built from: consents and mailing lists.

Settings have their own versions (``portal.settings``); consents keep their wordings as
immutable versions (``portal.consent``). What neither records (a consent's display condition
or default, a list's name) is kept here: every edit is a row saying who changed what, when,
from which value to which, so the history page can show all of it.
"""

import html
import re
import unicodedata
from datetime import datetime

import nh3
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import consent
from portal import lists
from portal import rules
from portal import settings
from portal.contacts import Contact
from portal.contacts import FieldDefinition
from portal.db import db
from portal.db import utcnow

SUBJECTS = ("consent", "list")


class StaleEdit(RuntimeError):
    """Someone edited this consent or list since this edit began; ``edits`` says how."""

    def __init__(self, edits: list["CatalogueEdit"]):
        super().__init__("the item was changed by someone else")
        self.edits = edits


class CatalogueEdit(db.Model):
    __tablename__ = "catalogue_edits"
    __table_args__ = (
        sa.CheckConstraint(sa.column("subject_type").in_(SUBJECTS), name="subject_type"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_type: Mapped[str] = mapped_column(sa.String(10))
    subject_id: Mapped[int]
    # The slug at the time of the edit, so the history reads without joins.
    subject_ref: Mapped[str] = mapped_column(sa.String(60))
    action: Mapped[str] = mapped_column(sa.String(20))
    # {name: [before, after]} for every value the edit changed.
    changes: Mapped[dict] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(60))


def plain_text(value: str | None) -> str:
    """Return staff-typed text with any markup removed: it is shown as text, never as HTML."""
    return html.unescape(nh3.clean(value or "", tags=set())).strip()


def changes_between(before: dict, after: dict) -> dict:
    """Return {name: [before, after]} for every name whose value differs."""
    names = sorted(set(before) | set(after))
    return {
        name: [before.get(name), after.get(name)]
        for name in names
        if before.get(name) != after.get(name)
    }


def settings_history() -> list[tuple[settings.SettingsVersion, dict]]:
    """Return every settings version, newest first, with what it changed."""
    versions = db.session.scalars(
        sa.select(settings.SettingsVersion).order_by(settings.SettingsVersion.version)
    ).all()
    history, previous = [], settings.DEFAULTS
    for version in versions:
        data = {**settings.DEFAULTS, **version.data}
        history.append((version, changes_between(previous, data)))
        previous = data
    return history[::-1]


def settings_data(version: int) -> dict:
    """Return the settings as they were in a version (the defaults for version 0)."""
    found = db.session.get(settings.SettingsVersion, version) if version else None
    return {**settings.DEFAULTS, **(found.data if found else {})}


def rebase_settings(wanted: dict, based_on: int) -> tuple[dict, dict, list[str]]:
    """Return an edit begun on an older version moved onto the settings in force.

    Gives the merged values (this edit's changes over the current settings), what others
    changed since ``based_on``, and the names both changed (the merge keeps this edit's).
    """
    before, now = settings_data(based_on), settings.values()
    mine = {name for name in wanted if wanted[name] != before.get(name)}
    merged = {**now, **{name: wanted[name] for name in mine}}
    both = [name for name in sorted(mine) if now.get(name) not in (before.get(name), wanted[name])]
    return merged, changes_between(before, now), both


def edits(
    subject_type: str | None = None, subject_id: int | None = None, after: int = 0
) -> list[CatalogueEdit]:
    """Return edits of consents and lists, newest first, optionally of one item."""
    statement = sa.select(CatalogueEdit).where(CatalogueEdit.id > after)
    if subject_type is not None:
        statement = statement.where(
            CatalogueEdit.subject_type == subject_type, CatalogueEdit.subject_id == subject_id
        )
    return list(db.session.scalars(statement.order_by(CatalogueEdit.id.desc()).limit(500)))


def last_edit(subject_type: str, subject_id: int) -> int:
    """Return the id of an item's latest edit, the stamp a form carries to detect others."""
    statement = sa.select(sa.func.max(CatalogueEdit.id)).where(
        CatalogueEdit.subject_type == subject_type, CatalogueEdit.subject_id == subject_id
    )
    return db.session.scalar(statement) or 0


def _log(subject_type: str, item, action: str, changes: dict, author: str) -> CatalogueEdit:
    edit = CatalogueEdit(
        subject_type=subject_type,
        subject_id=item.id,
        subject_ref=item.slug,
        action=action,
        changes=changes,
        created_by=author,
    )
    db.session.add(edit)
    db.session.flush()
    return edit


def _check_fresh(subject_type: str, subject_id: int, based_on: int) -> None:
    newer = edits(subject_type, subject_id, after=based_on)
    if newer:
        raise StaleEdit(newer)


def _new_slug(model, title: str, fallback: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")[:50] or fallback
    taken = set(db.session.scalars(sa.select(model.slug).where(model.slug.startswith(base))))
    slug, number = base, 1
    while slug in taken:
        number += 1
        slug = f"{base}-{number}"
    return slug


def _consent_values(definition: consent.ConsentDefinition) -> dict:
    version = definition.current_version
    values = {
        "title": version.title,
        "text": version.text,
        "display_condition": definition.display_condition,
        "default_selected": definition.default_selected,
    }
    # Each language's wording under its own names ("title (de)"), so the history says which.
    for language, wording in sorted((version.translations or {}).items()):
        values[f"title ({language})"] = wording["title"]
        values[f"text ({language})"] = wording["text"]
    return values


def _plain_wordings(translations: dict[str, tuple[str, str]] | None) -> dict:
    return {language: (plain_text(title), plain_text(text))
            for language, (title, text) in (translations or {}).items()}


def add_consent(
    kind: str,
    title: str,
    text: str,
    *,
    field: FieldDefinition | None,
    display_condition: dict | None,
    default_selected: bool,
    author: str,
    translations: dict[str, tuple[str, str]] | None = None,
) -> consent.ConsentDefinition:
    """Create a consent with its first wording (and that wording in other languages:
    {language: (title, text)}), and log it."""
    title, text = plain_text(title), plain_text(text)
    definition = consent.define(
        _new_slug(consent.ConsentDefinition, title, "consent"),
        kind,
        title,
        text,
        field=field,
        display_condition=display_condition,
        default_selected=default_selected,
        translations=_plain_wordings(translations),
    )
    _log("consent", definition, "created", changes_between({}, _consent_values(definition)), author)
    return definition


def edit_consent(
    definition: consent.ConsentDefinition,
    *,
    title: str,
    text: str,
    material: bool,
    display_condition: dict | None,
    default_selected: bool,
    author: str,
    based_on: int,
    translations: dict[str, tuple[str, str]] | None = None,
) -> CatalogueEdit | None:
    """Change a consent: a new wording, in any language, becomes a new version; return the
    logged edit, or None if nothing changed. `translations` ({language: (title, text)})
    gives the whole wording in other languages: a language left out has none."""
    _check_fresh("consent", definition.id, based_on)
    before = _consent_values(definition)
    title, text = plain_text(title), plain_text(text)
    wordings = _plain_wordings(translations)
    display_condition = rules.validate(display_condition)
    current = definition.current_version
    if ((title, text) != (current.title, current.text)
            or consent.translations_of(wordings) != (current.translations or {})):
        consent.add_version(definition, title, text, material=material, translations=wordings)
    definition.display_condition = display_condition
    definition.default_selected = default_selected
    changes = changes_between(before, _consent_values(definition))
    if not changes:
        return None
    if definition.current_version is not current:
        changes["version"] = [None, definition.current_version.number]
        if definition.current_version.material:
            changes["material"] = [None, True]
    return _log("consent", definition, "edited", changes, author)


def retire_consent(definition: consent.ConsentDefinition, *, author: str) -> None:
    """Stop offering a consent; decisions already recorded stay as they are."""
    if definition.retired_at is not None:
        return
    definition.retired_at = utcnow()
    _log("consent", definition, "retired", {}, author)


def _list_values(mailing_list: lists.MailingList) -> dict:
    values = {
        "name": mailing_list.name,
        "description": mailing_list.description,
        "public": mailing_list.public,
    }
    for language, wording in sorted((mailing_list.translations or {}).items()):
        values[f"name ({language})"] = wording["name"]
        values[f"description ({language})"] = wording["description"]
    return values


def _list_translations(translations: dict[str, tuple[str, str]] | None) -> dict | None:
    """Return a list's translations from {language: (name, description)}: a language with
    no name has none."""
    found = {}
    for language, (name, description) in sorted((translations or {}).items()):
        name = plain_text(name)
        if name:
            found[language] = {"name": name, "description": plain_text(description)}
    return found or None


def add_list(
    name: str,
    description: str,
    *,
    public: bool,
    author: str,
    translations: dict[str, tuple[str, str]] | None = None,
) -> lists.MailingList:
    """Create a mailing list (with its name and description in other languages: {language:
    (name, description)}), and log it."""
    name = plain_text(name)
    mailing_list = lists.create_list(
        _new_slug(lists.MailingList, name, "list"), name, plain_text(description), public=public
    )
    mailing_list.translations = _list_translations(translations)
    _log("list", mailing_list, "created", changes_between({}, _list_values(mailing_list)), author)
    return mailing_list


def edit_list(
    mailing_list: lists.MailingList,
    *,
    name: str,
    description: str,
    public: bool,
    author: str,
    based_on: int,
    translations: dict[str, tuple[str, str]] | None = None,
) -> CatalogueEdit | None:
    """Change a list's name, description, their other languages (the whole of them: a
    language left out has none) or visibility; return the logged edit, or None."""
    _check_fresh("list", mailing_list.id, based_on)
    before = _list_values(mailing_list)
    mailing_list.name = plain_text(name)
    mailing_list.description = plain_text(description)
    mailing_list.translations = _list_translations(translations)
    mailing_list.public = public
    changes = changes_between(before, _list_values(mailing_list))
    return _log("list", mailing_list, "edited", changes, author) if changes else None


def rule_fields() -> list[FieldDefinition]:
    """Return the fields rules may use, by name."""
    fields = db.session.scalars(sa.select(FieldDefinition).order_by(FieldDefinition.name))
    return [field for field in fields if rules.usable(field)]


def count_matching(rule: dict | None) -> int:
    """Return how many contacts (not erased) a rule matches, counted in SQL."""
    statement = sa.select(sa.func.count(Contact.id)).where(
        Contact.erased_at.is_(None), rules.where_clause(rule)
    )
    return db.session.scalar(statement)
