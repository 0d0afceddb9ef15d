"""Signed links: purpose, expiry, tampering, revocation, and where their URLs point."""

import base64
import json
import time
from types import SimpleNamespace

import pytest
from itsdangerous import URLSafeTimedSerializer

from portal import contacts
from portal import links
from portal.db import db
from portal.db import utcnow
from portal.keys import keyset


@pytest.fixture
def contact(app):
    created = contacts.add_contact("link@example.com", method="test", actor="test")
    db.session.commit()
    return created


def _reader_clock(monkeypatch, offset_seconds: float) -> None:
    """Make the node that reads links see a clock this far from the signer's."""
    now = time.time()
    monkeypatch.setattr(links, "time", SimpleNamespace(time=lambda: now + offset_seconds))


def _signed_by_us(purpose: str, payload: bytes) -> str:
    """Return a token whose signature is genuine but whose payload is the given bytes."""
    keys = keyset("link")
    serializer = URLSafeTimedSerializer(keys.active_key, salt=f"portal.link.{purpose}")
    return f"{keys.active_id}.{serializer.make_signer().sign(payload).decode()}"


@pytest.mark.parametrize("purpose", links.PURPOSES)
def test_a_token_reads_back_as_its_contact(contact, purpose):
    token = links.make_token(purpose, contact, request=7)
    found, payload = links.read_token(purpose, token)
    assert found.id == contact.id
    assert payload["request"] == 7


def test_a_token_holds_only_opaque_ids(contact):
    # The payload of a signed token is readable by anyone who has the link.
    token = links.make_token("manage", contact)
    encoded = token.split(".")[1]
    readable = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    assert json.loads(readable) == {"c": contact.public_id, "v": contact.link_version}


def test_a_token_is_bound_to_its_purpose(contact):
    token = links.make_token("manage", contact)
    for other in ("confirm", "undo", "export"):
        with pytest.raises(links.TokenInvalid):
            links.read_token(other, token)


def test_a_token_expires_after_its_purpose_allows(app, contact, monkeypatch):
    token = links.make_token("confirm", contact)
    max_age = app.config["PORTAL_LINK_MAX_AGE"]["confirm"]
    _reader_clock(monkeypatch, max_age - 60)
    links.read_token("confirm", token)
    _reader_clock(monkeypatch, max_age + 60)
    with pytest.raises(links.TokenExpired):
        links.read_token("confirm", token)


def test_the_maximum_age_is_configurable(app, contact, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_LINK_MAX_AGE", {"manage": 3600})
    token = links.make_token("manage", contact)
    _reader_clock(monkeypatch, 3700)
    with pytest.raises(links.TokenExpired):
        links.read_token("manage", token)


def test_a_reader_clock_slightly_behind_still_accepts_a_fresh_token(contact, monkeypatch):
    token = links.make_token("manage", contact)
    _reader_clock(monkeypatch, -60)
    found, _ = links.read_token("manage", token)
    assert found.id == contact.id


def test_a_token_from_far_in_the_future_is_invalid(contact, monkeypatch):
    token = links.make_token("manage", contact)
    _reader_clock(monkeypatch, -links.CLOCK_SKEW_SECONDS - 600)
    with pytest.raises(links.TokenInvalid):
        links.read_token("manage", token)


def _flip(text: str, position: int) -> str:
    replacement = "A" if text[position] != "A" else "B"
    return text[:position] + replacement + text[position + 1 :]


@pytest.mark.parametrize("position", [3, 10, -2])
def test_a_tampered_token_is_invalid(contact, position):
    token = links.make_token("manage", contact)
    with pytest.raises(links.TokenInvalid):
        links.read_token("manage", _flip(token, position))


@pytest.mark.parametrize(
    "token", ["", "k1", "k1.", "nodot", "k9.abc.def.ghi", "k1.!!!.???", "k1." + "A" * 500]
)
def test_garbage_is_invalid(app, token):
    with pytest.raises(links.TokenInvalid):
        links.read_token("manage", token)


@pytest.mark.parametrize("payload", [b"!!not-base64!!", b".eJzLSM3JyQcABiwCFQ", b"bm90IGpzb24"])
def test_a_mangled_payload_with_a_good_signature_is_invalid(app, payload):
    # itsdangerous raises BadPayload here, which a BadSignature handler would miss.
    with pytest.raises(links.TokenInvalid):
        links.read_token("manage", _signed_by_us("manage", payload))


@pytest.mark.parametrize("payload", [b"WzFd", b"eyJjIjoxfQ", b"eyJ2IjoxfQ"])
def test_a_signed_payload_of_the_wrong_shape_is_invalid(app, payload):
    # [1], {"c": 1}, {"v": 1}: signed by us, but not a link we would ever issue.
    with pytest.raises(links.TokenInvalid):
        links.read_token("manage", _signed_by_us("manage", payload))


def test_a_mangled_link_shows_the_invalid_page_not_an_error(client, app):
    response = client.get(f"/p/{_signed_by_us('manage', b'!!not-base64!!')}")
    assert response.status_code == 404


def test_raising_the_link_version_revokes_every_outstanding_link(contact):
    manage = links.make_token("manage", contact)
    confirm = links.make_token("confirm", contact)
    contact.link_version += 1
    db.session.commit()
    for purpose, token in (("manage", manage), ("confirm", confirm)):
        with pytest.raises(links.TokenInvalid):
            links.read_token(purpose, token)
    fresh = links.make_token("manage", contact)
    assert links.read_token("manage", fresh)[0].id == contact.id


def test_a_link_of_an_erased_contact_is_invalid(contact):
    token = links.make_token("manage", contact)
    contact.erased_at = utcnow()
    db.session.commit()
    with pytest.raises(links.TokenInvalid):
        links.read_token("manage", token)


def test_links_are_built_from_the_base_url_not_the_host_header(app, contact):
    with app.test_request_context("/", headers={"Host": "evil.example"}):
        url = links.manage_url(contact)
    assert url.startswith("https://prefs.example.test/p/")
    assert "evil.example" not in url


def test_a_base_url_with_a_path_keeps_its_path(app, contact, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_BASE_URL", "https://example.org/privacy/")
    url = links.manage_url(contact)
    assert url.startswith("https://example.org/privacy/p/")
    token = url.rsplit("/", 1)[1]
    assert links.read_token("manage", token)[0].id == contact.id
