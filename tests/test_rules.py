"""Rules over contacts: the stored format, its validation, and two evaluators that agree."""

import itertools
import json

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from portal import contacts
from portal import rules
from portal.contacts import Contact
from portal.contacts import FieldDefinition
from portal.contacts import FieldValue
from portal.db import db
from portal.rules import RuleError

_numbers = itertools.count()


@pytest.fixture
def fields(app):
    """Two plain custom fields and a sensitive one."""
    return {
        "sales_stage": contacts.define_field("sales_stage", "Sales stage"),
        "tier": contacts.define_field("tier", "Tier"),
        "card_number": contacts.define_field("card_number", "Card number", sensitive=True),
    }


def insert(fields: dict, people: list[dict]) -> list[Contact]:
    """Insert contacts with values stored exactly as given: a custom field left out has no row,
    one given as None has a row without a value."""
    inserted = []
    for values in people:
        builtin = {name: value for name, value in values.items() if name not in fields}
        contact = Contact(email=f"rule{next(_numbers)}@example.test", **builtin)
        for name, value in values.items():
            if name in fields:
                contact.values.append(FieldValue(field=fields[name], value=value))
        inserted.append(contact)
    db.session.add_all(inserted)
    db.session.flush()
    return inserted


def selections(rule, people: list[Contact]) -> tuple[set[int], set[int]]:
    """Return the ids of the contacts selected by SQL and by Python."""
    ids = [person.id for person in people]
    query = sa.select(Contact.id).where(Contact.id.in_(ids), rules.where_clause(rule))
    by_sql = set(db.session.scalars(query))
    by_python = {person.id for person in people if rules.matches(rule, person)}
    return by_sql, by_python


@pytest.fixture
def people(fields) -> dict[str, Contact]:
    values = {
        "eu": {"region": "EU", "first_name": "Émile", "sales_stage": "Ready to buy"},
        "spaced": {"region": "  eu ", "sales_stage": " ready TO buy ", "tier": "a_b"},
        "us": {"region": "US", "sales_stage": "qualified", "tier": "50% off"},
        "similar": {"region": "USA", "tier": "500 axb"},
        "blank": {"region": "", "first_name": "   ", "sales_stage": None},
        "nothing": {},
    }
    return dict(zip(values, insert(fields, list(values.values())), strict=True))


def assert_selects(people: dict[str, Contact], rule, expected: set[str]) -> None:
    by_sql, by_python = selections(rule, list(people.values()))
    names = {person.id: name for name, person in people.items()}
    assert {names[i] for i in by_sql} == expected
    assert {names[i] for i in by_python} == expected


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (None, {"eu", "spaced", "us", "similar", "blank", "nothing"}),
        # Case and surrounding spaces are ignored, on both sides.
        ({"field": "region", "op": "equals", "value": " eu"}, {"eu", "spaced"}),
        ({"field": "sales_stage", "op": "equals", "value": "READY to buy"}, {"eu", "spaced"}),
        # No value is not equal to "EU": not_equals is exactly the opposite of equals.
        (
            {"field": "region", "op": "not_equals", "value": "EU"},
            {"us", "similar", "blank", "nothing"},
        ),
        (
            {"field": "sales_stage", "op": "not_equals", "value": "qualified"},
            {"eu", "spaced", "similar", "blank", "nothing"},
        ),
        ({"field": "region", "op": "in", "value": ["us", "Eu"]}, {"eu", "spaced", "us"}),
        ({"field": "sales_stage", "op": "in", "value": ["new", "Qualified"]}, {"us"}),
        ({"field": "region", "op": "contains", "value": "Us"}, {"us", "similar"}),
        ({"field": "sales_stage", "op": "contains", "value": "to B"}, {"eu", "spaced"}),
        # % and _ are ordinary characters, not LIKE wildcards.
        ({"field": "tier", "op": "contains", "value": "50%"}, {"us"}),
        ({"field": "tier", "op": "contains", "value": "a_b"}, {"spaced"}),
        # Empty: NULL, "", only spaces, no value row, a row without a value.
        ({"field": "region", "op": "is_empty"}, {"blank", "nothing"}),
        (
            {"field": "first_name", "op": "is_empty"},
            {"spaced", "us", "similar", "blank", "nothing"},
        ),
        ({"field": "sales_stage", "op": "is_empty"}, {"similar", "blank", "nothing"}),
        ({"field": "tier", "op": "not_empty"}, {"spaced", "us", "similar"}),
        # Only A-Z fold: É is not é on either database.
        ({"field": "first_name", "op": "equals", "value": "ÉMILE"}, {"eu"}),
        ({"field": "first_name", "op": "equals", "value": "émile"}, set()),
        (
            {
                "all": [
                    {"field": "region", "op": "in", "value": ["EU", "US"]},
                    {
                        "any": [
                            {"field": "tier", "op": "is_empty"},
                            {"field": "tier", "op": "contains", "value": "off"},
                        ]
                    },
                ]
            },
            {"eu", "us"},
        ),
        ({"any": [{"field": "kind", "op": "equals", "value": "contact"}]}, set()),
    ],
)
def test_operators(people, rule, expected):
    assert_selects(people, rule, expected)


def test_a_rule_selects_contacts_in_bulk(people):
    rule = {"field": "region", "op": "equals", "value": "EU"}
    selected = db.session.scalars(sa.select(Contact).where(rules.where_clause(rule))).all()
    assert set(selected) == {people["eu"], people["spaced"]}


def test_unknown_field_is_refused_with_its_name(fields):
    with pytest.raises(RuleError, match="unknown field 'salse_stage'"):
        rules.validate({"field": "salse_stage", "op": "equals", "value": "ready to buy"})


def deep(levels: int) -> dict:
    rule = {"field": "region", "op": "equals", "value": "EU"}
    for _ in range(levels):
        rule = {"all": [rule]}
    return rule


def many(count: int) -> dict:
    return {"any": [{"field": "region", "op": "equals", "value": f"r{n}"} for n in range(count)]}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"field": "salse_stage", "op": "equals", "value": "x"},
            "unknown field 'salse_stage' (did you mean 'sales_stage'?)",
        ),
        ({"field": "id", "op": "equals", "value": "1"}, "unknown field 'id'"),
        ({"op": "equals", "value": "x"}, "a condition names a field as text, not null"),
        (
            {"field": "region", "op": "equal", "value": "EU"},
            "unknown operator 'equal' for field 'region' (use equals, not_equals, in, ",
        ),
        ({"field": "region", "value": "EU"}, "no operator for field 'region' (use equals, "),
        (
            {"field": "region", "op": "in", "value": "EU"},
            "field 'region': in takes a non-empty list of text values, not text ('EU')",
        ),
        (
            {"field": "region", "op": "in", "value": []},
            "field 'region': in takes a non-empty list of text values, not an empty list",
        ),
        (
            {"field": "region", "op": "in", "value": ["EU", 5]},
            "field 'region': in takes text values, not a number (5)",
        ),
        (
            {"field": "region", "op": "in", "value": ["\x00"]},
            "field 'region': a value cannot hold a NUL character",
        ),
        (
            {"field": "region", "op": "equals", "value": "E\x00U"},
            "field 'region': a value cannot hold a NUL character",
        ),
        (
            {"field": "region", "op": "equals", "value": "E\ud800U"},
            "field 'region': a value cannot hold half a character (a lone surrogate)",
        ),
        (
            {"field": "region", "op": "in", "value": ["EU", "\udfff"]},
            "field 'region': a value cannot hold half a character (a lone surrogate)",
        ),
        (
            {"field": "region", "op": "in", "value": [str(n) for n in range(101)]},
            "field 'region': in takes at most 100 values",
        ),
        (
            {"field": "region", "op": "equals", "value": ["EU"]},
            "field 'region': equals takes text values, not a list",
        ),
        (
            {"field": "region", "op": "equals", "value": {"eq": "EU"}},
            "field 'region': equals takes text values, not an object",
        ),
        (
            {"field": "tier", "op": "equals", "value": 5},
            "field 'tier': equals takes text values, not a number (5); write it as text",
        ),
        (
            {"field": "tier", "op": "not_equals", "value": True},
            "field 'tier': not_equals takes text values, not a boolean (true)",
        ),
        (
            {"field": "tier", "op": "contains", "value": None},
            "field 'tier': contains takes text values, not null",
        ),
        ({"field": "tier", "op": "equals"}, "field 'tier': equals needs a value"),
        (
            {"field": "tier", "op": "equals", "value": "  "},
            "field 'tier': equals needs a non-empty value (is_empty tests for none)",
        ),
        (
            {"field": "tier", "op": "contains", "value": "x" * 201},
            "field 'tier': a value has at most 200 characters",
        ),
        ({"field": "tier", "op": "is_empty", "value": ""}, "field 'tier': is_empty takes no value"),
        (
            {"field": "tier", "op": "equals", "vlaue": "gold"},
            "field 'tier': unexpected key 'vlaue'",
        ),
        (
            {"field": "card_number", "op": "contains", "value": "1234"},
            "field 'card_number' is sensitive: rules cannot use sensitive fields",
        ),
        (
            {"field": "opt_in_status", "op": "in", "value": ["double", "dobule"]},
            "field 'opt_in_status': 'dobule' is not one of none, single_user, ",
        ),
        ("region = 'EU'", "a rule is an object, not text"),
        ({"all": []}, "'all' takes a non-empty list of rules, not an empty list"),
        ({"any": {"field": "tier"}}, "'any' takes a non-empty list of rules, not an object"),
        ({"all": [deep(0)], "any": [deep(0)]}, "a group has the one key 'all', not also 'any'"),
        ({"all": ["region = 'EU'"]}, "a rule is an object, not text"),
        (deep(6), "rules nest at most 5 groups deep"),
        (many(51), "a rule has at most 50 conditions"),
    ],
)
def test_validate_refuses_with_a_clear_message(fields, rule, message):
    with pytest.raises(RuleError) as refused:
        rules.validate(rule)
    assert str(refused.value).startswith(message)


def test_validate_returns_the_rule_in_normal_form(fields):
    rule = {
        "all": [
            {"op": "equals", "value": "  EU ", "field": "region"},
            {"field": "tier", "op": "in", "value": ["Gold ", "gold", "silver"]},
            {"field": "phone", "op": "not_empty"},
        ]
    }
    normalised = rules.validate(rule)
    assert normalised == {
        "all": [
            {"field": "region", "op": "equals", "value": "EU"},
            {"field": "tier", "op": "in", "value": ["Gold", "silver"]},
            {"field": "phone", "op": "not_empty"},
        ]
    }
    assert json.loads(json.dumps(normalised)) == normalised
    assert rules.validate(normalised) == normalised
    assert rules.validate(None) is None


def test_the_limits_themselves_are_allowed(fields):
    assert rules.validate(deep(5)) == deep(5)
    assert rules.validate(many(50)) == many(50)


def test_a_builtin_field_that_is_no_contact_column_is_refused(fields):
    db.session.add(FieldDefinition(name="score", label="Score", builtin=True))
    with pytest.raises(RuleError, match="field 'score' cannot be used in rules"):
        rules.validate({"field": "score", "op": "equals", "value": "1"})


def test_matches_takes_known_definitions_and_sees_unsaved_values(fields):
    known = {field.name: field for field in db.session.scalars(sa.select(FieldDefinition))}
    contact = Contact(email="unsaved@example.test", region="EU")
    contact.values.append(FieldValue(field=fields["tier"], value=" Gold"))
    rule = {
        "all": [
            {"field": "tier", "op": "equals", "value": "gold"},
            {"field": "region", "op": "in", "value": ["eu"]},
        ]
    }
    assert rules.matches(rule, contact, fields=known)
    assert not rules.matches({"field": "tier", "op": "is_empty"}, contact, fields=known)
    with pytest.raises(RuleError, match="unknown field 'tier'"):
        rules.matches(rule, contact, fields={"region": known["region"]})


def test_evaluators_refuse_a_rule_that_no_longer_validates(fields, people):
    rule = {"field": "sales_stage", "op": "equals", "value": "ready to buy"}
    rules.validate(rule)
    fields["sales_stage"].sensitive = True
    with pytest.raises(RuleError, match="field 'sales_stage' is sensitive"):
        rules.matches(rule, people["eu"])
    with pytest.raises(RuleError, match="field 'sales_stage' is sensitive"):
        rules.where_clause(rule)


# The property: for any valid rule and any contacts, SQL and Python select the same contacts.

FIELDS = ("region", "sales_stage", "tier")
WORDS = ["eu", "a_b", "axb", "50%", "500", "é", "Éé", "a\\b"]
ALPHABET = "aAeEÉé _%/\\\t"
EMPTY = st.sampled_from([None, "", "   ", "\t"])


def dress(word: str, case, before: str, after: str) -> str:
    return before + case(word) + after


def not_blank(text: str) -> bool:
    return bool(text.strip(" "))


def dressed(words, around=("", " ", "  ", "\t")):
    """Return a strategy for the words in any case, with something around them."""
    return st.builds(
        dress,
        words,
        st.sampled_from([str.lower, str.upper, str.title]),
        st.sampled_from(around),
        st.sampled_from(around),
    )


WANTED = st.one_of(
    dressed(st.sampled_from(WORDS)),
    st.sampled_from(["e", "_", "%", "/", "\\", "\t"]),
    st.text(alphabet=ALPHABET, min_size=1, max_size=4),
).filter(not_blank)
VALUES = {
    "equals": WANTED,
    "not_equals": WANTED,
    "in": st.lists(WANTED, min_size=1, max_size=3),
    "contains": WANTED,
}
CONDITIONS = st.one_of(
    *(
        st.fixed_dictionaries(
            {"field": st.sampled_from(FIELDS), "op": st.just(op)}
            | ({"value": VALUES[op]} if op in VALUES else {})
        )
        for op in rules.OPERATORS
    )
)


def groups(depth: int):
    """Return a strategy for a group of rules with at most this many levels of groups."""
    member = CONDITIONS if depth == 1 else st.one_of(CONDITIONS, groups(depth - 1))
    members = st.lists(member, min_size=1, max_size=4)
    return st.dictionaries(st.sampled_from(["all", "any"]), members, min_size=1, max_size=1)


def mentioned(rule) -> list[str]:
    """Return the values a rule compares with."""
    if "field" in rule:
        value = rule.get("value", [])
        return value if isinstance(value, list) else [value]
    return [value for member in [*rule.values()][0] for value in mentioned(member)]


NO_ROW = object()


def present(values: dict) -> dict:
    return {name: value for name, value in values.items() if value is not NO_ROW}


def people_for(batch: list[dict]):
    """Return a strategy for contacts whose values are often near the ones the rules name."""
    near = st.sampled_from([value for rule in batch for value in mentioned(rule)] + WORDS)
    stored = st.one_of(
        near,
        dressed(near),
        dressed(near, around=("x", "y ", " ")),
        EMPTY,
        st.just(NO_ROW),
        st.text(alphabet=ALPHABET, max_size=5),
    )
    person = st.fixed_dictionaries({name: stored for name in FIELDS}).map(present)
    return st.lists(person, min_size=4, max_size=8)


def test_sql_and_python_select_the_same_contacts(fields):
    @settings(max_examples=100)
    @given(batch=st.lists(groups(3), min_size=1, max_size=6), data=st.data())
    def agree(batch, data):
        people = data.draw(people_for(batch), label="people")
        savepoint = db.session.begin_nested()
        try:
            inserted = insert(fields, people)
            for rule in batch:
                by_sql, by_python = selections(rules.validate(rule), inserted)
                assert by_sql == by_python, rule
        finally:
            savepoint.rollback()

    agree()
