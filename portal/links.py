"""Signed links for contacts: one salt per purpose, opaque ids only, always a maximum age (R2).

A token is ``<key id>.<itsdangerous token>``: it names the key it was signed with, so keys
rotate by id and never by their order in a list. The payload holds the contact's public id and
its link version; raising the version revokes every outstanding link at once.
"""

import hashlib
import hmac
import time
from functools import lru_cache
from urllib.parse import urljoin

import sqlalchemy as sa
from flask import current_app
from flask_wtf.csrf import CSRFError
from itsdangerous import BadData
from itsdangerous import URLSafeTimedSerializer

from portal.contacts import Contact
from portal.db import db
from portal.db import whole_number
from portal.keys import LINK_PURPOSES
from portal.keys import UnknownKey
from portal.keys import keyset

PURPOSES = LINK_PURPOSES
# A web node whose clock is slightly behind the signer's must not reject a fresh link.
CLOCK_SKEW_SECONDS = 120


class TokenInvalid(ValueError):
    """The link is malformed, tampered with, for another purpose, or revoked."""


class TokenExpired(TokenInvalid):
    """The link was genuine but is older than its purpose allows."""


#: The contact a token names, built once (constructing a statement costs more than running it).
_CONTACT_BY_PUBLIC_ID = sa.select(Contact).where(Contact.public_id == sa.bindparam("public_id"))


@lru_cache(maxsize=64)
def _serializer(purpose: str, key: bytes) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    return URLSafeTimedSerializer(key, salt=f"portal.link.{purpose}")


@lru_cache(maxsize=64)
def _signer(purpose: str, key: bytes):
    # What the serializer's loads would build again for every token it reads.
    return _serializer(purpose, key).make_signer()


def make_token(purpose: str, contact: Contact, **extra: str | int) -> str:
    """Return a signed token for one purpose, naming the contact by its public id."""
    keys = keyset("link")
    payload = {"c": contact.public_id, "v": contact.link_version, **extra}
    return f"{keys.active_id}.{_serializer(purpose, keys.active_key).dumps(payload)}"


def read_signed(purpose: str, token: str) -> tuple[dict, float]:
    """Return a token's payload and its age in seconds, checking its signature only.

    Raise TokenInvalid for a malformed or tampered token, an unknown key or a payload that
    names no contact. Whether the age is acceptable, and whether the contact still exists and
    the link version matches, is the caller's to check (read_token does both).
    """
    key_id, _, signed = (token or "").partition(".")
    try:
        key = keyset("link").key(key_id)
        # As the serializer's loads does it (it has no fallback signers), with the signer kept.
        encoded, signed_at = _signer(purpose, key).unsign(signed, return_timestamp=True)
        payload = _serializer(purpose, key).load_payload(encoded)
    except (UnknownKey, BadData):
        raise TokenInvalid("the link is not valid") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("c"), str):
        raise TokenInvalid("the link is not valid")
    age = time.time() - signed_at.timestamp()
    if age < -CLOCK_SKEW_SECONDS:
        raise TokenInvalid("the link was signed in the future")
    return payload, age


def contact_of(payload: dict) -> Contact | None:
    """Return the contact a signed payload names, unless erased or its links were revoked."""
    contact = db.session.scalar(_CONTACT_BY_PUBLIC_ID, {"public_id": payload["c"]})
    return contact if contact is not None and still_valid(contact, payload) else None


def still_valid(contact: Contact, payload: dict) -> bool:
    """Say whether a signed payload still opens its contact's pages: not erased since, and
    no link version bump (R2)."""
    return contact.erased_at is None and payload.get("v") == contact.link_version


def read_payload(purpose: str, token: str) -> dict:
    """Return a token's payload if its signature holds and it is young enough for its purpose,
    or raise TokenInvalid/TokenExpired. Whether its contact still exists and the link version
    matches is contact_of's to check."""
    payload, age = read_signed(purpose, token)
    # The age is checked here rather than by itsdangerous so that a small clock skew between
    # nodes is tolerated instead of rejecting a token signed "in the future".
    if age > current_app.config["PORTAL_LINK_MAX_AGE"][purpose]:
        raise TokenExpired("the link has expired")
    return payload


def read_token(purpose: str, token: str) -> tuple[Contact, dict]:
    """Return the contact a token names and its payload, or raise TokenInvalid/TokenExpired."""
    payload = read_payload(purpose, token)
    contact = contact_of(payload)
    if contact is None:
        raise TokenInvalid("the link was revoked")
    return contact, payload


def token_digest(token: str) -> str:
    """Return what may be logged of a refused token: the start of its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def public_url(path: str) -> str:
    """Return an absolute URL built from the configured public base URL, never the Host header."""
    base = current_app.config["PORTAL_BASE_URL"].rstrip("/") + "/"
    return urljoin(base, path.lstrip("/"))


def manage_url(contact: Contact) -> str:
    """Return the contact's preference-page URL, to be put in an email."""
    return public_url(f"/p/{make_token('manage', contact)}")


def _form_mac(secret: str | bytes, contact: Contact, issued: str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    content = f"portal.link-form|{issued}|{contact.public_id}|{contact.link_version}".encode()
    return hmac.new(key, content, hashlib.sha256).hexdigest()[:32]


def form_token(contact: Contact) -> str:
    """Return the CSRF token of a form on a contact's link page: timed, signed, theirs alone.

    A contact's page has no sign-in and needs no session: the link in its address is the
    credential, and this token shows that the form was served, recently, on a page of this
    contact's links (raising the link version voids it with them). So a first visit from an
    email sets no cookie.
    """
    issued = str(int(time.time()))
    return f"{issued}.{_form_mac(current_app.secret_key, contact, issued)}"


def check_form_token(contact: Contact, value: str | None) -> None:
    """Raise CSRFError unless `value` is a form token of this contact, younger than the limit.

    Flask's fallback keys are accepted too, so rotating SECRET_KEY breaks no open form.
    """
    issued, _, mac = (value or "").partition(".")
    # Seconds since 1970, with room past 2038: "²" or a thousand digits is no token, not a 500.
    seconds = whole_number(issued, maximum=2**53)
    if seconds is None or not mac:
        raise CSRFError("The CSRF token is missing.")
    age = time.time() - seconds
    limit = current_app.config.get("WTF_CSRF_TIME_LIMIT", 3600)
    if age < -CLOCK_SKEW_SECONDS or (limit is not None and age > limit):
        raise CSRFError("The CSRF token has expired.")
    secrets = [current_app.secret_key, *(current_app.config.get("SECRET_KEY_FALLBACKS") or ())]
    # As bytes: compare_digest refuses a str with non-ASCII characters (a TypeError, a 500).
    posted = mac.encode()
    if not any(
        hmac.compare_digest(posted, _form_mac(secret, contact, issued).encode())
        for secret in secrets
        if secret
    ):
        raise CSRFError("The CSRF token is invalid.")
