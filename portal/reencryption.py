"""Re-encryption of sensitive values under the active field key, as a background job.

After a new field key is made active, old values still decrypt with their own key id; this job
rewrites each one under the active key so that the old key can eventually be retired.
"""

import sqlalchemy as sa

from portal import jobs
from portal.contacts import FieldValue
from portal.crypto import decrypt_field
from portal.crypto import encrypt_field
from portal.db import db
from portal.keys import keyset


def _stale() -> sa.ColumnElement[bool]:
    return sa.and_(FieldValue.ciphertext.is_not(None),
                   FieldValue.key_id != keyset("field").active_id)


def _count(_params: dict) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(FieldValue).where(_stale()))


def _items_after(_params: dict, after: int, limit: int):
    statement = (
        sa.select(FieldValue).where(_stale(), FieldValue.id > after)
        .order_by(FieldValue.id).limit(limit)
    )
    return [(value.id, value) for value in db.session.scalars(statement)]


def _process(_params: dict, value: FieldValue) -> str:
    where = {"table": "field_values", "column": value.field.name,
             "row_id": value.contact.public_id}
    plain = decrypt_field(value.key_id, value.ciphertext, **where)
    value.key_id, value.ciphertext = encrypt_field(plain, **where)
    return "re-encrypted"


REENCRYPT = jobs.register(jobs.JobKind(
    name="reencrypt-fields",
    label="Re-encrypt sensitive values with the active key",
    count=_count,
    items_after=_items_after,
    process=_process,
))
