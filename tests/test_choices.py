"""What a contact's page offers, and how cheaply it is read (issue 4: at most 4 queries)."""

import pytest
import sqlalchemy as sa

from portal import consent
from portal import contacts
from portal import lists
from portal import settings
from portal.choices import page_for
from portal.db import db
from portal.links import make_token


@pytest.fixture
def count_queries(app):
    """Count the SQL statements run while the test's block runs."""
    counted = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            counted.append(statement)

    engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    yield counted
    sa.event.remove(engine, "before_cursor_execute", record)


def make_page(consent_count: int):
    settings.save({"audience_rule": {"field": "region", "op": "equals", "value": "EU"}},
                  based_on=settings.current().version if settings.current() else 0,
                  author="test")
    stage = contacts.define_field("stage", "Stage")
    for n in range(consent_count):
        condition = {"field": "stage", "op": "equals", "value": "hot"} if n % 2 else None
        consent.define(f"custom-{n}", "custom", f"Consent {n}", f"Text of consent {n}",
                       display_condition=condition)
    newsletter = lists.create_list("news", "News")
    contact = contacts.add_contact("reader@example.com", region="EU", method="cli", actor="t")
    contacts.set_field_value(contact, stage, "hot")
    lists.set_subscription(contact, newsletter, True, method="cli", actor="t")
    db.session.commit()
    return contact


@pytest.mark.parametrize("consent_count", [1, 30])
def test_a_page_get_makes_at_most_four_queries(app, client, count_queries, consent_count):
    contact = make_page(consent_count)
    path = f"/p/{make_token('manage', contact)}"
    assert client.get(path).status_code == 200  # warms the catalogue of this process
    app.config["PORTAL_CATALOGUE_SECONDS"] = 3600
    try:
        client.get(path)  # the catalogue is read here with the test's fresh data
        count_queries.clear()
        response = client.get(path)
    finally:
        app.config["PORTAL_CATALOGUE_SECONDS"] = 0
    assert response.status_code == 200
    assert response.text.count('name="consent:') == 2 * consent_count  # yes and no each
    assert len(count_queries) <= 4, "\n\n".join(count_queries)


def test_outside_the_audience_only_the_email_options_show(app):
    contact = make_page(2)
    contact.region = "US"
    db.session.commit()
    page = page_for(contact)
    assert not page.full
    assert page.consents == []
    assert [item.slug for item in page.lists] == ["news"]


def test_a_rule_that_no_longer_holds_shows_less_instead_of_failing(app, client, caplog):
    contact = make_page(2)
    stage = contacts.field_definition("stage")
    stage.sensitive = True  # the display conditions name it; rules refuse sensitive fields
    db.session.commit()
    page = page_for(contact)
    assert page.full
    assert [c.definition.slug for c in page.consents] == ["custom-0"]
    assert client.get(f"/p/{make_token('manage', contact)}").status_code == 200
    assert "matches nobody" in caplog.text
