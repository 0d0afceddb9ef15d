"""The back office's overview: what needs attention now, and where each task lives."""

from datetime import timedelta

from test_backoffice_auth import PASSWORD
from test_backoffice_auth import admin  # noqa: F401 (fixture)
from test_backoffice_auth import agent  # noqa: F401 (fixture)
from test_backoffice_auth import client  # noqa: F401 (fixture)
from test_backoffice_auth import sign_in

from portal import contacts
from portal import overview
from portal.db import db
from portal.db import utcnow


def test_the_counts_follow_the_records(app):
    assert overview.attention().erasure_open == 0
    late = contacts.add_contact("late@example.test", method="staff", actor="t")
    fresh = contacts.add_contact("fresh@example.test", method="staff", actor="t")
    locked = contacts.add_contact("locked@example.test", method="staff", actor="t")
    for contact in (late, fresh):
        contacts.request_erasure(contact, method="page", actor="contact")
    late.erasure_requested_at = utcnow() - timedelta(days=40)
    contacts.stop_processing(locked, method="page", actor="contact")
    db.session.commit()

    counts = overview.attention()
    assert (counts.erasure_open, counts.erasure_overdue) == (2, 1)
    assert counts.processing_stopped == 1


def test_an_admin_sees_what_needs_attention_with_links_to_it(client, admin):  # noqa: F811
    late = contacts.add_contact("late@example.test", method="staff", actor="t")
    contacts.request_erasure(late, method="page", actor="contact")
    late.erasure_requested_at = utcnow() - timedelta(days=40)
    db.session.commit()
    sign_in(client, admin.email, PASSWORD)

    page = client.get("/staff/").text
    assert "1 open, 1 past their deadline" in page
    assert 'href="/staff/erasure"' in page
    assert 'href="/staff/contacts?stopped=yes"' in page
    assert 'href="/staff/settings"' in page


def test_an_agent_is_sent_to_the_contacts_filter_instead_of_the_admin_pages(
    client, agent  # noqa: F811
):
    sign_in(client, agent.email, PASSWORD)
    page = client.get("/staff/").text
    assert 'href="/staff/contacts?erasure=yes"' in page
    assert 'href="/staff/erasure"' not in page
    assert 'href="/staff/settings"' not in page
    assert client.get("/staff/contacts?erasure=yes").status_code == 200
