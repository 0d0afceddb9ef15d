"""Field encryption bound to its record and field, and keyed digests."""

import hashlib

import pytest

from portal import contacts
from portal.crypto import DecryptionFailed
from portal.crypto import decrypt_field
from portal.crypto import encrypt_field
from portal.crypto import keyed_digest
from portal.db import db
from portal.keys import new_keyset
from portal.keys import parse_keyset

WHERE = {"table": "field_values", "column": "national_id", "row_id": "contact-a"}


def test_a_value_decrypts_where_it_was_stored(app):
    key_id, blob = encrypt_field("123-45-6789", **WHERE)
    assert b"123-45-6789" not in blob
    assert decrypt_field(key_id, blob, **WHERE) == "123-45-6789"


def test_the_same_value_encrypts_differently_each_time(app):
    assert encrypt_field("same", **WHERE)[1] != encrypt_field("same", **WHERE)[1]


@pytest.mark.parametrize(
    "elsewhere",
    [
        {**WHERE, "row_id": "contact-b"},
        {**WHERE, "column": "card_number"},
        {**WHERE, "table": "contacts"},
    ],
)
def test_a_ciphertext_moved_to_another_record_or_field_fails(app, elsewhere):
    key_id, blob = encrypt_field("123-45-6789", **WHERE)
    with pytest.raises(DecryptionFailed):
        decrypt_field(key_id, blob, **elsewhere)


def test_an_altered_ciphertext_fails(app):
    key_id, blob = encrypt_field("123-45-6789", **WHERE)
    altered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        decrypt_field(key_id, altered, **WHERE)


@pytest.mark.parametrize("blob", [b"", b"short", b"\x00" * 12])
def test_a_truncated_ciphertext_fails(app, blob):
    with pytest.raises(DecryptionFailed):
        decrypt_field("k1", blob, **WHERE)


@pytest.fixture
def sensitive_field(app):
    return contacts.define_field("national_id", "National ID", sensitive=True)


def test_a_value_copied_to_another_contact_does_not_decrypt(app, sensitive_field):
    alice = contacts.add_contact("alice@example.com", method="test", actor="test")
    bob = contacts.add_contact("bob@example.com", method="test", actor="test")
    contacts.set_field_value(alice, sensitive_field, "111-11-1111")
    contacts.set_field_value(bob, sensitive_field, "222-22-2222")
    db.session.commit()

    # Someone with write access to the database copies Alice's ciphertext onto Bob's row.
    stolen = alice.values[0]
    bob.values[0].ciphertext, bob.values[0].key_id = stolen.ciphertext, stolen.key_id
    db.session.commit()
    with pytest.raises(DecryptionFailed):
        contacts.field_value(bob, "national_id", reveal=True)
    assert contacts.field_value(alice, "national_id", reveal=True) == "111-11-1111"


def test_a_value_copied_to_another_field_does_not_decrypt(app, sensitive_field):
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    alice = contacts.add_contact("alice@example.com", method="test", actor="test")
    contacts.set_field_value(alice, sensitive_field, "111-11-1111")
    contacts.set_field_value(alice, card, "4111 1111 1111 1111")
    db.session.commit()

    by_field = {value.field.name: value for value in alice.values}
    by_field["card_number"].ciphertext = by_field["national_id"].ciphertext
    db.session.commit()
    with pytest.raises(DecryptionFailed):
        contacts.field_value(alice, "card_number", reveal=True)


def test_a_keyed_digest_cannot_be_computed_without_the_key(app, monkeypatch):
    digest = keyed_digest("suppression", "k1", b"ada@example.com")
    assert digest == keyed_digest("suppression", "k1", b"ada@example.com")
    assert digest != hashlib.sha256(b"ada@example.com").hexdigest()
    other = parse_keyset("suppression", new_keyset("k1"))
    monkeypatch.setitem(app.extensions["portal_keys"], "suppression", other)
    assert keyed_digest("suppression", "k1", b"ada@example.com") != digest
