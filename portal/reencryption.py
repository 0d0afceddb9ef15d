"""Re-encryption of sensitive values under the active field key, as a background job.

After a new field key is made active, old values still decrypt with their own key id; this job
rewrites each one under the active key so that the old key can eventually be retired.
"""

import logging

import sqlalchemy as sa

from portal import jobs
from portal.contacts import FieldValue
from portal.crypto import DecryptionFailed
from portal.crypto import decrypt_field
from portal.crypto import encrypt_field
from portal.db import db
from portal.keys import UnknownKey
from portal.keys import keyset

log = logging.getLogger(__name__)

#: The outcome of a value that does not decrypt, as the job's page counts it.
LEFT_AS_IT_IS = "does not decrypt, left as it is (ids in the log)"


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
    try:
        plain = decrypt_field(value.key_id, value.ciphertext, **where)
    except (DecryptionFailed, UnknownKey) as error:
        # An altered or copied value, or one under a key no longer configured, would fail the
        # job on every resume, and with it the retirement of the old key. It stays as it is,
        # counted for staff; the log names it by ids, never by its content.
        log.warning("field value %s of contact %s does not decrypt (%s): left as it is",
                    value.id, value.contact.public_id, type(error).__name__)
        return LEFT_AS_IT_IS
    value.key_id, value.ciphertext = encrypt_field(plain, **where)
    return "re-encrypted"


REENCRYPT = jobs.register(jobs.JobKind(
    name="reencrypt-fields",
    label="Re-encrypt sensitive values with the active key",
    count=_count,
    items_after=_items_after,
    process=_process,
))
