"""Preview contacts: found by address or public id, or made of typed-in values and never
saved."""

import re

import pytest
import sqlalchemy as sa

from portal import contacts
from portal import preview
from portal import settings
from portal.choices import page_for
from portal.db import db


def test_a_contact_on_file_is_found_by_address_or_public_id(app):
    ada = contacts.add_contact("ada@example.com", method="staff", actor="t")
    assert preview.find_contact("ADA@example.com ") is ada
    assert preview.find_contact(ada.public_id) is ada
    assert preview.find_contact("nobody@example.com") is None
    assert preview.find_contact("") is None


def test_a_typed_in_contact_is_never_saved_and_its_page_reads_its_typed_values(app):
    contacts.define_field("sales_stage", "Sales stage")
    rule = {"field": "sales_stage", "op": "equals", "value": "ready to buy"}
    settings.save({"audience_rule": rule}, based_on=0, author="t")
    typed = preview.transient_contact({"first_name": "Zoe", "sales_stage": "ready to buy"})
    assert typed.display_name == "Zoe"
    assert page_for(typed).full
    assert not page_for(preview.transient_contact({"sales_stage": "just looking"})).full
    db.session.flush()
    assert typed not in db.session
    assert db.session.scalar(sa.select(sa.func.count(contacts.Contact.id))) == 0
    assert db.session.scalar(sa.select(sa.func.count(contacts.FieldValue.id))) == 0


def test_a_typed_in_contact_needs_a_known_kind_and_status(app):
    with pytest.raises(ValueError, match="known kind"):
        preview.transient_contact({"kind": "robot"})
    with pytest.raises(ValueError, match="known kind"):
        preview.transient_contact({"opt_in_status": "forever"})


def _heading(text: str) -> str:
    return re.search(r'<h2 id="preview-heading">([^<]*)</h2>', text).group(1)


def test_the_preview_names_the_contact_by_address_never_by_public_id(admin_client):
    ada = contacts.add_contact("ada@example.com", first_name="Ada", method="staff", actor="t")
    db.session.commit()
    for typed in ("ada@example.com", " ADA@example.com", ada.public_id):
        page = admin_client.get("/staff/settings/preview", query_string={"contact": typed})
        assert page.status_code == 200
        assert _heading(page.text) == "Preview of the page for the contact ada@example.com"
        assert ada.public_id not in _heading(page.text)
    typed_in = admin_client.get(
        "/staff/settings/preview", query_string={"first_name": "Zoe", "kind": "lead",
                                                 "opt_in_status": "none"}
    )
    assert _heading(typed_in.text) == "Preview of the page for a contact with the values typed in"
    unknown = admin_client.get("/staff/settings/preview", query_string={"contact": "x@y.example"})
    assert unknown.status_code == 200 and 'id="preview-heading"' not in unknown.text
    assert "No contact has this email address or public id." in unknown.text
