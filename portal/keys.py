"""Key sets: one per purpose, each a mapping of key id to key with one active id.

A value signed, encrypted or hashed under a key carries that key's id, and is checked with the
key of that id. Rotation is therefore "add a key, make it active"; going back is "make the old
id active again". Nothing depends on the order of a list (itsdangerous signs with the last key
of its list, MultiFernet with the first: we use neither ordering).
"""

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

#: Purpose name -> configuration key. Each purpose has its own keys, so that rotating the
#: link-signing key never breaks a year-old unsubscribe link, say.
PURPOSES = {
    "link": "PORTAL_LINK_KEYS",
    "field": "PORTAL_FIELD_KEYS",
    "ledger": "PORTAL_LEDGER_KEYS",
    "suppression": "PORTAL_SUPPRESSION_KEYS",
    "unsubscribe": "PORTAL_UNSUBSCRIBE_KEYS",
}

MIN_KEY_BYTES = 32

#: The kinds of contact link signed with the "link" key set, each with its own salt and
#: maximum age (PORTAL_LINK_MAX_AGE).
LINK_PURPOSES = ("manage", "confirm", "undo", "export", "doi", "track")


class ConfigError(RuntimeError):
    """A configuration value is missing or malformed; the message names the variable."""


class UnknownKey(LookupError):
    """A stored value names a key id that is not configured (any more)."""


@dataclass(frozen=True)
class KeySet:
    purpose: str
    active_id: str
    keys: dict[str, bytes]

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active_id]

    def key(self, key_id: str) -> bytes:
        """Return the key with this id, or raise UnknownKey."""
        try:
            return self.keys[key_id]
        except KeyError:
            raise UnknownKey(f"{self.purpose} key {key_id!r} is not configured") from None


def new_key() -> str:
    """Return a fresh random key, encoded as configuration expects it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(MIN_KEY_BYTES)).decode()


def new_keyset(key_id: str = "k1") -> dict:
    """Return the configuration value of a new key set with one active key."""
    return {"active": key_id, "keys": {key_id: new_key()}}


def parse_keyset(purpose: str, value: object) -> KeySet:
    """Check a configured key set and decode it, or raise ConfigError naming the variable."""
    variable = "FLASK_" + PURPOSES[purpose]
    example = '{"active": "k1", "keys": {"k1": "<base64 of 32 random bytes>"}}'
    if value is None or value == "":
        raise ConfigError(
            f"{variable} is missing; set it to {example} "
            "(`flask --app wsgi keys generate` prints one)"
        )
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{variable} is not valid JSON; expected {example}") from None
    if not isinstance(value, dict) or set(value) != {"active", "keys"}:
        raise ConfigError(f"{variable} must be an object with exactly 'active' and 'keys'")
    raw_keys = value["keys"]
    if not isinstance(raw_keys, dict) or not raw_keys:
        raise ConfigError(f"{variable}: 'keys' must map at least one key id to a key")
    keys: dict[str, bytes] = {}
    for key_id, encoded in raw_keys.items():
        if not key_id or not key_id.isascii() or not key_id.replace("-", "").isalnum():
            raise ConfigError(f"{variable}: key id {key_id!r} must be letters, digits or '-'")
        try:
            decoded = base64.urlsafe_b64decode(str(encoded).encode())
        except (binascii.Error, ValueError):
            raise ConfigError(f"{variable}: key {key_id!r} is not base64") from None
        if len(decoded) < MIN_KEY_BYTES:
            raise ConfigError(f"{variable}: key {key_id!r} must decode to at least 32 bytes")
        keys[key_id] = decoded
    active = value["active"]
    if active not in keys:
        raise ConfigError(f"{variable}: the active id {active!r} is not one of its keys")
    return KeySet(purpose=purpose, active_id=active, keys=keys)


def load_demo_secrets(instance_path: str) -> dict:
    """Return the demo's secrets, generating them into the instance folder the first time."""
    path = Path(instance_path) / "demo-secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    secrets_ = {"SECRET_KEY": secrets.token_urlsafe(32)}
    secrets_.update({name: new_keyset() for name in PURPOSES.values()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(secrets_, indent=2))
    return secrets_


def init_app(app) -> None:
    """Decode every key set of the configuration, failing closed on a missing one."""
    app.extensions["portal_keys"] = {
        purpose: parse_keyset(purpose, app.config.get(name)) for purpose, name in PURPOSES.items()
    }


def keyset(purpose: str) -> KeySet:
    """Return the current application's key set for a purpose."""
    return current_app.extensions["portal_keys"][purpose]
