"""Key sets: parsing, and rotation of every purpose in both directions."""

from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from conftest import TEST_KEYS
from conftest import make_config

from portal import ConfigError
from portal import contacts
from portal import create_app
from portal import crypto
from portal import ledger
from portal import links
from portal import suppression
from portal.db import db
from portal.keys import PURPOSES
from portal.keys import UnknownKey
from portal.keys import new_key
from portal.keys import new_keyset
from portal.keys import parse_keyset

#: A second key per purpose; "k1" is the test run's key, so earlier data stays readable.
SECOND_KEYS = {name: new_key() for name in PURPOSES.values()}
DIRECTIONS = [("k1", "k2"), ("k2", "k1")]


def keys_for(purpose: str, active: str, *key_ids: str) -> dict:
    """Return the configuration of one purpose's key set with these keys and this active id."""
    name = PURPOSES[purpose]
    known = {"k1": TEST_KEYS[name]["keys"]["k1"], "k2": SECOND_KEYS[name]}
    return {name: {"active": active, "keys": {key_id: known[key_id] for key_id in key_ids}}}


@contextmanager
def deployed(database_url: str, **config):
    """Run a block as a deployment with this configuration would, and commit its work."""
    application = create_app(make_config(database_url, **config))
    with application.app_context():
        yield application
        db.session.commit()


def test_parse_keyset_decodes_a_generated_key_set():
    keys = parse_keyset("link", new_keyset("2026-a"))
    assert keys.active_id == "2026-a"
    assert len(keys.active_key) == 32


def test_the_active_key_is_chosen_by_id_not_by_position():
    first, second = new_key(), new_key()
    keys = parse_keyset("field", {"active": "old", "keys": {"new": second, "old": first}})
    alone = parse_keyset("field", {"active": "x", "keys": {"x": first}})
    assert keys.active_key == alone.active_key


def test_parse_keyset_names_the_variable_of_the_purpose():
    with pytest.raises(ConfigError, match="FLASK_PORTAL_SUPPRESSION_KEYS"):
        parse_keyset("suppression", None)


def test_an_unknown_key_id_is_refused_by_name():
    keys = parse_keyset("link", new_keyset("k1"))
    with pytest.raises(UnknownKey, match="k9"):
        keys.key("k9")


@pytest.mark.parametrize(("old", "new"), DIRECTIONS)
def test_link_signing_key_rotates_both_ways(app, database_url, old, new):
    with deployed(database_url):
        contacts.add_contact("rotate@example.com", method="test", actor="test")

    with deployed(database_url, **keys_for("link", old, "k1", "k2")):
        old_token = links.make_token("manage", contacts.find_by_email("rotate@example.com"))

    with deployed(database_url, **keys_for("link", new, "k1", "k2")):
        contact, _ = links.read_token("manage", old_token)
        assert contact.email == "rotate@example.com"
        new_token = links.make_token("manage", contact)

    with deployed(database_url, **keys_for("link", old, "k1", "k2")):
        contact, _ = links.read_token("manage", new_token)
        assert contact.email == "rotate@example.com"

    # Once the old key is removed, links signed with it stop working; newer ones keep working.
    with deployed(database_url, **keys_for("link", new, new)):
        with pytest.raises(links.TokenInvalid):
            links.read_token("manage", old_token)
        contact, _ = links.read_token("manage", new_token)
        assert contact.email == "rotate@example.com"


@pytest.mark.parametrize(("old", "new"), DIRECTIONS)
def test_field_encryption_key_rotates_both_ways(app, database_url, old, new):
    where = {"table": "field_values", "column": "national_id", "row_id": "row-1"}
    with deployed(database_url, **keys_for("field", old, "k1", "k2")):
        contact = contacts.add_contact("rotate@example.com", method="test", actor="test")
        national_id = contacts.define_field("national_id", "National ID", sensitive=True)
        contacts.define_field("card_number", "Card number", sensitive=True)
        contacts.set_field_value(contact, national_id, "123-45-6789")
        old_key_id, old_blob = crypto.encrypt_field("under the old key", **where)

    with deployed(database_url, **keys_for("field", new, "k1", "k2")):
        contact = contacts.find_by_email("rotate@example.com")
        assert contacts.field_value(contact, "national_id", reveal=True) == "123-45-6789"
        assert crypto.decrypt_field(old_key_id, old_blob, **where) == "under the old key"
        card = contacts.field_definition("card_number")
        contacts.set_field_value(contact, card, "4111 1111 1111 1111")
        new_key_id, new_blob = crypto.encrypt_field("under the new key", **where)
        assert new_key_id != old_key_id

    with deployed(database_url, **keys_for("field", old, "k1", "k2")):
        contact = contacts.find_by_email("rotate@example.com")
        assert contacts.field_value(contact, "national_id", reveal=True) == "123-45-6789"
        assert contacts.field_value(contact, "card_number", reveal=True) == "4111 1111 1111 1111"
        assert crypto.decrypt_field(new_key_id, new_blob, **where) == "under the new key"

    with deployed(database_url, **keys_for("field", new, new)):
        assert crypto.decrypt_field(new_key_id, new_blob, **where) == "under the new key"
        with pytest.raises(UnknownKey):
            crypto.decrypt_field(old_key_id, old_blob, **where)


@pytest.mark.parametrize(("old", "new"), DIRECTIONS)
def test_ledger_key_rotates_both_ways(app, database_url, old, new):
    with deployed(database_url, **keys_for("ledger", old, "k1", "k2")):
        contact = contacts.add_contact("rotate@example.com", method="test", actor="test")
        contacts.record_opt_in(
            contact,
            contacts.OptIn.DOUBLE,
            method="email_confirmation",
            actor="contact",
            evidence=ledger.Evidence(ip_address="192.0.2.1", user_agent="test"),
        )
        ledger.checkpoint()
        assert ledger.verify().ok

    with deployed(database_url, **keys_for("ledger", new, "k1", "k2")):
        contact = contacts.find_by_email("rotate@example.com")
        contacts.record_opt_in(contact, contacts.OptIn.OPTOUT_USER, method="staff", actor="t")
        ledger.checkpoint()
        report = ledger.verify()
        assert report.ok, report.problem

    with deployed(database_url, **keys_for("ledger", old, "k1", "k2")):
        contact = contacts.find_by_email("rotate@example.com")
        contacts.record_opt_in(contact, contacts.OptIn.DOUBLE, method="staff", actor="t")
        report = ledger.verify()
        assert report.ok, report.problem
        assert report.last_event_id == ledger.history(contact.public_id)[-1].id

    # Without the old key the chain cannot be checked, and verification says which key is gone.
    with deployed(database_url, **keys_for("ledger", new, new)):
        report = ledger.verify()
        assert not report.ok
        assert f"ledger key {old!r}" in report.problem


@pytest.mark.parametrize(("old", "new"), DIRECTIONS)
def test_suppression_key_rotates_both_ways(app, database_url, old, new):
    with deployed(database_url, **keys_for("suppression", old, "k1", "k2")):
        suppression.suppress("Ada@Example.com", "unsubscribed")

    with deployed(database_url, **keys_for("suppression", new, "k1", "k2")):
        assert suppression.is_suppressed("ada@example.com")
        suppression.suppress("ADA@example.com", "bounced")
        suppression.suppress("grace@example.com", "complaint")

    with deployed(database_url, **keys_for("suppression", old, "k1", "k2")):
        assert suppression.is_suppressed("Ada@example.com")
        assert suppression.is_suppressed("Grace@Example.com")
        assert not suppression.is_suppressed("alan@example.com")
        entries = db.session.scalar(sa.select(sa.func.count()).select_from(suppression.Suppression))
        assert entries == 2
