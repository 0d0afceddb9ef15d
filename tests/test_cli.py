"""Command-line commands: contacts add and link, keys generate."""

import json

import pytest

from portal import contacts
from portal import ledger
from portal import links
from portal import optin
from portal.keys import parse_keyset


def _one_line_failure(result) -> str:
    """Assert a command stopped on purpose with one line and no traceback; return the line."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_contacts_add_creates_a_contact(runner):
    result = runner.invoke(
        args=["contacts", "add", " Ada@Example.COM ", "--first-name", "Ada", "--region", "EU"]
    )
    assert result.exit_code == 0, result.output
    contact = contacts.find_by_email("ada@example.com")
    assert contact is not None
    assert (contact.first_name, contact.region) == ("Ada", "EU")
    assert contact.opt_in_status == "none"
    assert result.output.strip() == f"added contact {contact.public_id}"


def test_contacts_add_refuses_a_duplicate_address(runner):
    assert runner.invoke(args=["contacts", "add", "ada@example.com"]).exit_code == 0
    line = _one_line_failure(runner.invoke(args=["contacts", "add", "ADA@example.com"]))
    assert "already exists" in line


@pytest.mark.parametrize("address", ["not-an-address", "ada@", "a b@example.com", "ada@@x.org"])
def test_contacts_add_refuses_a_malformed_address(runner, address):
    line = _one_line_failure(runner.invoke(args=["contacts", "add", address]))
    assert "not a valid email address" in line


def test_single_opt_in_needs_a_reason(runner):
    line = _one_line_failure(
        runner.invoke(args=["contacts", "add", "ada@example.com", "--single-opt-in"])
    )
    assert "--reason" in line
    assert contacts.find_by_email("ada@example.com") is None


def test_single_opt_in_with_a_reason_is_recorded(runner):
    result = runner.invoke(
        args=[
            "contacts",
            "add",
            "ada@example.com",
            "--single-opt-in",
            "--reason",
            "signed up at the fair",
        ]
    )
    assert result.exit_code == 0, result.output
    contact = contacts.find_by_email("ada@example.com")
    assert contact.opt_in_status == "single_user"
    events = ledger.history(contact.public_id)
    assert [e.value_to for e in events if e.subject_type == "opt_in"] == ["single_user"]
    # The reason is a note beside the ledger, which erasure clears; the event points at it.
    assert [n.text for n in optin.notes_of(contact, optin.REASON)] == ["signed up at the fair"]


def test_contacts_add_refuses_an_unknown_language(runner):
    line = _one_line_failure(
        runner.invoke(args=["contacts", "add", "ada@example.com", "--language", "xx"])
    )
    assert "--language" in line


def test_contacts_link_prints_a_working_url_from_the_base_url(app, runner):
    runner.invoke(args=["contacts", "add", "ada@example.com"])
    result = runner.invoke(args=["contacts", "link", "Ada@Example.com"])
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith(app.config["PORTAL_BASE_URL"] + "/p/")
    assert url.startswith("https://")
    contact, _ = links.read_token("manage", url.rsplit("/", 1)[1])
    assert contact.email == "ada@example.com"


@pytest.mark.parametrize("address", ["nobody@example.com", "not-an-address"])
def test_contacts_link_for_an_unknown_address_is_one_line(runner, address):
    _one_line_failure(runner.invoke(args=["contacts", "link", address]))


@pytest.mark.parametrize("key_id", [None, "2026-b"])
def test_keys_generate_prints_a_key_set_the_configuration_accepts(runner, key_id):
    args = ["keys", "generate"] + (["--key-id", key_id] if key_id else [])
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    keys = parse_keyset("link", json.loads(result.output))
    assert keys.active_id == (key_id or "k1")
    assert len(keys.active_key) >= 32


def test_keys_generate_prints_a_new_key_each_time(runner):
    first = runner.invoke(args=["keys", "generate"]).output
    assert first != runner.invoke(args=["keys", "generate"]).output
