"""Field encryption (AES-256-GCM bound to its record) and keyed digests."""

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portal.db import canonical_json
from portal.keys import keyset

NONCE_BYTES = 12


class DecryptionFailed(ValueError):
    """A ciphertext does not belong to this record and field, or was altered."""


def _associated_data(table: str, column: str, row_id: str, key_id: str) -> bytes:
    # Binding the ciphertext to where it is stored makes a value copied to another record or
    # field fail to decrypt instead of decrypting silently (which Fernet would allow).
    return canonical_json({"table": table, "column": column, "row": row_id, "key": key_id}).encode()


def encrypt_field(plaintext: str, *, table: str, column: str, row_id: str) -> tuple[str, bytes]:
    """Encrypt a value for one record and field with the active key; return (key id, blob)."""
    keys = keyset("field")
    nonce = os.urandom(NONCE_BYTES)
    aad = _associated_data(table, column, row_id, keys.active_id)
    sealed = AESGCM(keys.active_key[:32]).encrypt(nonce, plaintext.encode(), aad)
    return keys.active_id, nonce + sealed


def decrypt_field(key_id: str, blob: bytes, *, table: str, column: str, row_id: str) -> str:
    """Decrypt a value stored for this record and field, or raise DecryptionFailed."""
    key = keyset("field").key(key_id)
    aad = _associated_data(table, column, row_id, key_id)
    if len(blob) < NONCE_BYTES:
        # AESGCM would raise a bare ValueError for the short nonce of a truncated value.
        raise DecryptionFailed(f"{table}.{column} of {row_id} is truncated")
    try:
        plain = AESGCM(key[:32]).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionFailed(f"{table}.{column} of {row_id} does not decrypt") from None
    return plain.decode()


def keyed_digest(purpose: str, key_id: str, message: bytes) -> str:
    """Return the hex HMAC-SHA256 of a message under one key of a purpose's key set."""
    return hmac.new(keyset(purpose).key(key_id), message, hashlib.sha256).hexdigest()


def sha256_hex(text: str) -> str:
    """Return the hex SHA-256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()
