"""The demo data set: only in demo mode, idempotent, and with a chain that verifies."""

import re

import pytest
import sqlalchemy as sa
from conftest import make_config

from portal import create_app
from portal import ledger
from portal import links
from portal import optin
from portal.db import db


@pytest.fixture
def demo_app(app, database_url, tmp_path):
    """A demo deployment on the test's database, with its instance folder in tmp_path."""
    application = create_app(
        make_config(database_url, PORTAL_DEMO=True), instance_path=str(tmp_path)
    )
    # CLI commands run in the current application context when there is one.
    with application.app_context():
        yield application


def _row_counts() -> dict[str, int]:
    return {
        table.name: db.session.scalar(sa.select(sa.func.count()).select_from(table))
        for table in db.metadata.sorted_tables
    }


def test_demo_refuses_without_demo_mode(runner):
    result = runner.invoke(args=["demo"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [
        "Error: the demo data is loaded only with FLASK_PORTAL_DEMO=true"
    ]


def test_demo_loads_once_prints_three_links_and_changes_nothing_the_second_time(demo_app):
    runner = demo_app.test_cli_runner()
    before = _row_counts()
    first = runner.invoke(args=["demo"])
    assert first.exit_code == 0, first.output
    after_first = _row_counts()
    assert after_first["contacts"] - before["contacts"] >= 30
    assert after_first["ledger_events"] > after_first["contacts"]
    for table in ("mailing_lists", "consent_definitions", "consent_states", "subscriptions"):
        assert after_first[table] > before[table], table

    second = runner.invoke(args=["demo"])
    assert second.exit_code == 0, second.output
    assert _row_counts() == after_first
    assert "no change" in second.output
    # The admin's password is generated once and kept, so both runs print the same login.
    login = [line for line in first.output.splitlines() if "login" in line]
    assert login and login == [line for line in second.output.splitlines() if "login" in line]

    # Three sample preference links that work, built from the base URL.
    urls = [line.strip() for line in first.output.splitlines() if "/p/" in line]
    assert len(urls) == len(set(urls)) == 3
    for url in urls:
        assert url.startswith("https://prefs.example.test/p/")
        contact, _ = links.read_token("manage", url.rsplit("/", 1)[1])
        assert contact.email.endswith("@demo.example")
    # Each link says whose it is and what its page shows, one of them only the email options.
    lines = first.output.splitlines()
    about = [lines[lines.index(line) - 1].strip() for line in lines if "/p/" in line]
    assert all("@demo.example" in line and "region" in line for line in about)
    assert sum("the email options only" in line for line in about) == 1

    report = ledger.verify()
    assert report.ok, report.problem
    verified = runner.invoke(args=["ledger", "verify"])
    assert verified.exit_code == 0, verified.output


#: What the code writes as a ledger event's evidence_ref: ids and digests, never staff's words.
KNOWN_EVIDENCE = re.compile(
    r"note:[\w-]+(:[0-9a-f]{64})?"  # an opt-in note; a staff reason's with its keyed digest
    r"|(doi|signup|pending|undo|list|consent-event|erasure-log):[\w.-]+"
    r"|page|email_changed"
)


def test_the_demo_ledger_holds_no_free_text(demo_app):
    result = demo_app.test_cli_runner().invoke(args=["demo"])
    assert result.exit_code == 0, result.output
    references = db.session.scalars(
        sa.select(ledger.LedgerEvent.evidence_ref).where(
            ledger.LedgerEvent.evidence_ref.is_not(None)
        )
    ).all()
    assert references
    assert [ref for ref in references if not KNOWN_EVIDENCE.fullmatch(ref)] == []
    # The demo staff's reasons are kept as staff's are, in notes that erasure clears.
    reasons = db.session.scalars(
        sa.select(optin.OptInNote.text).where(optin.OptInNote.kind == optin.REASON)
    )
    assert {"asked by phone", "met at a trade fair"} <= set(reasons)
