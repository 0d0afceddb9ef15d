"""Preview contacts: found by address or public id, or made of typed-in values and held in the
database only while their page is built."""

import pytest
import sqlalchemy as sa

from portal import contacts
from portal import preview
from portal.db import db


def test_a_contact_on_file_is_found_by_address_or_public_id(app):
    ada = contacts.add_contact("ada@example.com", method="staff", actor="t")
    assert preview.find_contact("ADA@example.com ") is ada
    assert preview.find_contact(ada.public_id) is ada
    assert preview.find_contact("nobody@example.com") is None
    assert preview.find_contact("") is None


def test_a_typed_in_contact_is_held_only_inside_the_block(app):
    stage = contacts.define_field("sales_stage", "Sales stage")
    typed = preview.transient_contact({"first_name": "Zoe", "sales_stage": "ready to buy"})
    assert typed not in db.session
    assert typed.display_name == "Zoe"
    with preview.imagined(typed):
        assert typed.id is not None
        row = db.session.scalar(
            sa.select(contacts.FieldValue.value).where(contacts.FieldValue.contact_id == typed.id)
        )
        assert row == "ready to buy"
    assert db.session.scalar(sa.select(sa.func.count(contacts.Contact.id))) == 0
    assert (
        db.session.scalar(
            sa.select(sa.func.count(contacts.FieldValue.id)).where(
                contacts.FieldValue.field_id == stage.id
            )
        )
        == 0
    )


def test_a_typed_in_contact_needs_a_known_kind_and_status(app):
    with pytest.raises(ValueError, match="known kind"):
        preview.transient_contact({"kind": "robot"})
    with pytest.raises(ValueError, match="known kind"):
        preview.transient_contact({"opt_in_status": "forever"})
