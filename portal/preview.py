"""Previewing the preference page as a contact: one on file, or one made of typed-in values."""

import sqlalchemy as sa

from portal.catalogue import rule_fields
from portal.contacts import KINDS
from portal.contacts import Contact
from portal.contacts import FieldValue
from portal.contacts import InvalidEmail
from portal.contacts import OptIn
from portal.contacts import find_by_email
from portal.db import db

#: Built-in columns a typed-in preview contact may have.
PREVIEW_COLUMNS = ("first_name", "last_name", "region", "language", "kind", "opt_in_status")


def find_contact(reference: str) -> Contact | None:
    """Return the contact with this email address or public id, if any."""
    reference = (reference or "").strip()
    try:
        found = find_by_email(reference)
    except InvalidEmail:
        found = None
    if found is None and reference:
        found = db.session.scalar(sa.select(Contact).where(Contact.public_id == reference))
    return found


def transient_contact(values: dict[str, str]) -> Contact:
    """Return a contact that exists only in memory, with these attribute values."""
    contact = Contact(kind="lead", opt_in_status=OptIn.NONE.value, link_version=1)
    for name in PREVIEW_COLUMNS:
        if values.get(name):
            setattr(contact, name, values[name])
    if contact.kind not in KINDS or contact.opt_in_status not in set(OptIn):
        raise ValueError("a preview contact needs a known kind and opt-in status")
    for field in rule_fields():
        if not field.builtin and values.get(field.name):
            contact.values.append(FieldValue(field_id=field.id, value=values[field.name]))
    return contact
