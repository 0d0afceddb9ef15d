"""Rules over contacts (P3, N3): one stored format, and two evaluators that always agree.

A rule is JSON data, never code. ``None`` means everyone; otherwise a condition, or a group
nested at most ``MAX_DEPTH`` groups deep with at most ``MAX_CONDITIONS`` conditions in all::

    {"field": "region", "op": "equals", "value": "EU"}
    {"field": "sales_stage", "op": "in", "value": ["qualified", "ready to buy"]}
    {"field": "phone", "op": "is_empty"}
    {"all": [rule, ...]}    every rule holds (and)
    {"any": [rule, ...]}    at least one rule holds (or)

A field is a built-in contact column (a field definition with ``builtin=True``) or a custom
field. ``equals``, ``not_equals`` and ``contains`` (substring) take one text value, ``in`` a
non-empty list of them, ``is_empty`` and ``not_empty`` none. Field values are stored as text,
so rule values are text too: a JSON number or boolean is refused, not guessed at (write
``"5"``), and so is an empty value (``is_empty`` says that).

Values compare the same way in Python (``matches``) and in SQL (``where_clause``):

- A missing value is the empty string: a NULL column, a custom field with no value row, or a
  row without a plain value. So a contact with no region is ``is_empty`` and
  ``not_equals "EU"``: each negation is exactly the opposite of ``not_empty`` or ``equals``.
- Leading and trailing spaces (U+0020, not tabs or newlines) are ignored, on both sides.
- The letters A-Z compare regardless of case; every other character compares exactly
  (``"É"`` is not ``"é"``), because SQLite's ``lower()`` folds A-Z only.
- ``contains`` is a plain substring test: ``%`` and ``_`` are ordinary characters.

Sensitive fields are refused outright, the simpler safe choice: a rule could only see their
masked characters, so ``equals`` on a card number would quietly never hold, and the
evaluators never touch ciphertext or masks. ``validate`` runs when a rule is saved and again
in both evaluators, so a rule that no longer holds (a field since marked sensitive) raises
``RuleError`` rather than matching wrongly.
"""

import difflib
import re
import string

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from portal.contacts import KINDS
from portal.contacts import Contact
from portal.contacts import FieldDefinition
from portal.contacts import FieldValue
from portal.contacts import OptIn
from portal.db import db

OPERATORS = ("equals", "not_equals", "in", "contains", "is_empty", "not_empty")
GROUPS = ("all", "any")
#: The operators that test the negation of another one.
NEGATIONS = {"not_equals": "equals", "is_empty": "not_empty"}
MAX_DEPTH = 5
MAX_CONDITIONS = 50
MAX_CHOICES = 100
MAX_VALUE_LENGTH = 200
# Built-in fields whose values come from a fixed set, so a typo is caught when a rule is saved.
CHOICES = {"kind": KINDS, "opt_in_status": tuple(status.value for status in OptIn)}

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_SURROGATE = re.compile("[\ud800-\udfff]")


class RuleError(ValueError):
    """A rule is malformed or uses a field it may not; the message names the culprit."""


def normal(value: str | None) -> str:
    """Return a value as rules compare it: missing as empty, trimmed of spaces, A-Z folded."""
    return (value or "").strip(" ").translate(_ASCII_LOWER)


def validate(rule: dict | None, *, fields: dict | None = None) -> dict | None:
    """Return the rule in normal form, or raise RuleError naming what is wrong.

    ``fields`` (name -> field definition) spares the query for them.
    """
    return _checked(rule, fields)[0]


def matches(rule: dict | None, contact: Contact, *, fields: dict | None = None) -> bool:
    """Return whether one contact satisfies the rule.

    ``fields`` (name -> field definition) spares the query for them: the preference page
    passes the definitions it keeps cached.
    """
    rule, fields = _checked(rule, fields)
    return rule is None or _holds(rule, contact, fields, None)


def holds(
    rule: dict | None,
    contact: Contact,
    fields: dict,
    values: dict[int, str | None] | None = None,
) -> bool:
    """Match a rule already in normal form (from ``validate``) without checking it again.

    ``values`` (field id -> plain value) gives the contact's custom field values read in
    advance; without it they are read from ``contact.values``.
    """
    return rule is None or _holds(rule, contact, fields, values)


def custom_field_ids(rule: dict | None, fields: dict) -> set[int]:
    """Return the ids of the custom (not built-in) fields a rule in normal form reads."""
    if rule is None:
        return set()
    if "all" in rule or "any" in rule:
        members = rule.get("all") or rule.get("any")
        return set().union(*(custom_field_ids(member, fields) for member in members))
    definition = fields[rule["field"]]
    return set() if definition.builtin else {definition.id}


def where_clause(rule: dict | None) -> sa.ColumnElement[bool]:
    """Return the rule as a condition on Contact, for ``select(Contact).where(...)``."""
    rule, fields = _checked(rule)
    return sa.true() if rule is None else _compile(rule, fields)


def _checked(rule, fields: dict | None = None) -> tuple[dict | None, dict[str, FieldDefinition]]:
    if rule is None:
        return None, {}
    if fields is None:
        fields = {field.name: field for field in db.session.scalars(sa.select(FieldDefinition))}
    conditions = 0

    def walk(node, depth: int) -> dict:
        nonlocal conditions
        if not isinstance(node, dict):
            raise RuleError(f"a rule is an object, not {_describe(node)}")
        groups = [key for key in GROUPS if key in node]
        if not groups:
            conditions += 1
            if conditions > MAX_CONDITIONS:
                raise RuleError(f"a rule has at most {MAX_CONDITIONS} conditions")
            return _condition(node, fields)
        key = groups[0]
        other = next((other for other in node if other != key), None)
        if other is not None:
            raise RuleError(f"a group has the one key {key!r}, not also {str(other)[:60]!r}")
        if depth >= MAX_DEPTH:
            raise RuleError(f"rules nest at most {MAX_DEPTH} groups deep")
        members = node[key]
        if not isinstance(members, list) or not members:
            raise RuleError(f"'{key}' takes a non-empty list of rules, not {_describe(members)}")
        return {key: [walk(member, depth + 1) for member in members]}

    return walk(rule, 0), fields


def _condition(node: dict, fields: dict[str, FieldDefinition]) -> dict:
    name = node.get("field")
    if not isinstance(name, str):
        raise RuleError(f"a condition names a field as text, not {_describe(name)}")
    definition = fields.get(name)
    if definition is None:
        names = [field.name for field in fields.values() if usable(field)]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RuleError(f"unknown field {name[:60]!r}{hint}")
    if definition.sensitive:
        raise RuleError(f"field {name!r} is sensitive: rules cannot use sensitive fields")
    if not usable(definition):
        raise RuleError(f"field {name!r} cannot be used in rules")
    unexpected = next((key for key in node if key not in ("field", "op", "value")), None)
    if unexpected is not None:
        raise RuleError(f"field {name!r}: unexpected key {str(unexpected)[:60]!r}")
    op = node.get("op")
    if op not in OPERATORS:
        shown = f"unknown operator {op[:60]!r}" if isinstance(op, str) else "no operator"
        raise RuleError(f"{shown} for field {name!r} (use {', '.join(OPERATORS)})")
    if op in ("is_empty", "not_empty"):
        if "value" in node:
            raise RuleError(f"field {name!r}: {op} takes no value")
        return {"field": name, "op": op}
    if "value" not in node:
        raise RuleError(f"field {name!r}: {op} needs a value")
    value = node["value"]
    if op != "in":
        value = _text(name, op, value)
        _check_choice(name, [value])
        return {"field": name, "op": op, "value": value}
    if not isinstance(value, list) or not value:
        raise RuleError(
            f"field {name!r}: in takes a non-empty list of text values, not {_describe(value)}"
        )
    if len(value) > MAX_CHOICES:
        raise RuleError(f"field {name!r}: in takes at most {MAX_CHOICES} values")
    unique = {}
    for item in value:
        text = _text(name, op, item)
        unique.setdefault(normal(text), text)
    _check_choice(name, list(unique.values()))
    return {"field": name, "op": op, "value": list(unique.values())}


def usable(field: FieldDefinition) -> bool:
    """Return whether rules may read this field (never a sensitive one)."""
    return not field.sensitive and (not field.builtin or field.name in Contact.__table__.c)


def _text(name: str, op: str, value) -> str:
    if not isinstance(value, str):
        raise RuleError(f"field {name!r}: {op} takes text values, not {_describe(value)}")
    trimmed = value.strip(" ")
    if not trimmed:
        raise RuleError(f"field {name!r}: {op} needs a non-empty value (is_empty tests for none)")
    if len(trimmed) > MAX_VALUE_LENGTH:
        raise RuleError(f"field {name!r}: a value has at most {MAX_VALUE_LENGTH} characters")
    if "\x00" in trimmed:
        # No value on file holds one (PostgreSQL cannot store it in text), and inside the
        # rule's JSON it would pass the check that refuses it in text (db.holds_nul).
        raise RuleError(f"field {name!r}: a value cannot hold a NUL character")
    if _SURROGATE.search(trimmed):
        # Only a JSON escape (a nested rule's "\ud800") makes one: it is half a character,
        # which no database driver can send, so counting the rule would fail.
        raise RuleError(f"field {name!r}: a value cannot hold half a character (a lone surrogate)")
    return trimmed


def _check_choice(name: str, values: list[str]) -> None:
    choices = CHOICES.get(name)
    if choices is None:
        return
    for value in values:
        if normal(value) not in choices:
            raise RuleError(f"field {name!r}: {value!r} is not one of {', '.join(choices)}")


def _describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r}); write it as text"
    if isinstance(value, str):
        return f"text ({value[:60]!r})"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _holds(rule: dict, contact: Contact, fields: dict, values: dict | None) -> bool:
    if "all" in rule:
        return all(_holds(member, contact, fields, values) for member in rule["all"])
    if "any" in rule:
        return any(_holds(member, contact, fields, values) for member in rule["any"])
    op = rule["op"]
    if op in NEGATIONS:
        return not _holds({**rule, "op": NEGATIONS[op]}, contact, fields, values)
    actual = normal(_read(contact, fields[rule["field"]], values))
    if op == "equals":
        return actual == normal(rule["value"])
    if op == "in":
        return actual in {normal(value) for value in rule["value"]}
    if op == "contains":
        return normal(rule["value"]) in actual
    return actual != ""  # not_empty


def _read(contact: Contact, field: FieldDefinition, values: dict | None) -> str | None:
    if field.builtin:
        return getattr(contact, field.name)
    if values is not None:
        return values.get(field.id)
    # Only the plain value, never a sensitive field's ciphertext or mask. Compared by field_id
    # so that no row loads its definition; a row not yet flushed has only its definition.
    for row in contact.values:
        if (row.field_id if row.field_id is not None else row.field.id) == field.id:
            return row.value
    return None


def _compile(rule: dict, fields: dict[str, FieldDefinition]) -> sa.ColumnElement[bool]:
    if "all" in rule:
        return sa.and_(*(_compile(member, fields) for member in rule["all"]))
    if "any" in rule:
        return sa.or_(*(_compile(member, fields) for member in rule["any"]))
    op = rule["op"]
    if op in NEGATIONS:
        # Every value below is coalesced or tested under EXISTS, so NOT never meets a NULL.
        return sa.not_(_compile({**rule, "op": NEGATIONS[op]}, fields))
    field = fields[rule["field"]]
    if field.builtin:
        return _test(_normal_sql(getattr(Contact, field.name)), op, rule.get("value"))
    # Each positive test is false on the empty string, so "no value row" needs no case of its
    # own: EXISTS is false, and the negations above turn it into NOT EXISTS.
    return (
        sa.select(FieldValue.id)
        .where(
            FieldValue.contact_id == Contact.id,
            FieldValue.field_id == field.id,
            _test(_normal_sql(FieldValue.value), op, rule.get("value")),
        )
        .exists()
    )


def _test(column: sa.ColumnElement[str], op: str, value) -> sa.ColumnElement[bool]:
    if op == "equals":
        return column == normal(value)
    if op == "in":
        return column.in_([normal(item) for item in value])
    if op == "contains":
        # autoescape makes % and _ (and the escape character /) match only themselves.
        return column.contains(normal(value), autoescape=True)
    return column != ""  # not_empty


def _normal_sql(column) -> sa.ColumnElement[str]:
    return AsciiLower(sa.func.trim(sa.func.coalesce(column, "")))


class AsciiLower(FunctionElement):
    """SQL that lower-cases the letters A-Z and nothing else, like ``normal``."""

    type = sa.String()
    name = "ascii_lower"
    inherit_cache = True


@compiles(AsciiLower)
def _ascii_lower_unsupported(element, compiler, **kw):
    raise sa.exc.CompileError("rules compile to SQL for SQLite and PostgreSQL only")


@compiles(AsciiLower, "sqlite")
def _ascii_lower_sqlite(element, compiler, **kw):
    # SQLite's built-in lower() folds A-Z only (without the ICU extension, which we never load).
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(AsciiLower, "postgresql")
def _ascii_lower_postgresql(element, compiler, **kw):
    # lower() follows the database's locale and would fold É; translate() folds exactly A-Z.
    argument = compiler.process(element.clauses, **kw)
    return f"translate({argument}, '{string.ascii_uppercase}', '{string.ascii_lowercase}')"
