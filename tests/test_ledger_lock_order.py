"""Every writer locks the ledger's head before the rows it changes (PostgreSQL).

Two transactions that take the same two row locks in opposite orders deadlock: PostgreSQL
then aborts one of them after a second, and its request fails. The portal's writers avoid it
by taking the ledger's head first (`ledger.lock_head`). A change made to a loaded contact (its
opt-in status, "processing stopped", "erasure requested") waits in the ORM session until the
next statement flushes it; the statement that locks the head must not be that one, or the
contact's row would be locked before the head. These tests hold the head in one transaction,
start such a writer in a thread, and check, while it waits for the head, that its contact's
row is still free.

They commit for real (a thread has its own session and connection): each makes its own
contact and deletes it afterwards; the ledger keeps its events, which name no one.
"""

import re
import secrets

import pytest
import sqlalchemy as sa
from pg_locks import the_ledger_held
from test_backoffice_contacts import edit_form
from test_doi import sign_up
from test_preferences import CONFIRM_SUBJECT
from test_preferences import NOTICE_SUBJECT
from test_preferences import client  # noqa: F401 (a fixture)
from test_preferences import deliver
from test_preferences import link_in
from test_preferences import manage_path
from test_preferences import post_page
from test_preferences import press
from test_preferences import read_form
from test_preferences import the_mail
from test_preferences import world  # noqa: F401 (a fixture)

from portal import contacts
from portal import doi
from portal import ledger
from portal import optin
from portal import unsubscribe
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import db


def _opt_out(contact):
    optin.transition(contact, optin.Event.CONTACT_OPT_OUT, method="page", actor="contact")


def _stop_processing(contact):
    contacts.stop_processing(contact, method="page", actor="contact")


def _ask_for_erasure(contact):
    contacts.request_erasure(contact, method="page", actor="contact")


WRITERS = {"an opt-out": _opt_out, "stopping processing": _stop_processing,
           "asking for erasure": _ask_for_erasure}


@pytest.fixture
def contact_id(base_app):
    """A committed contact who is opted in (Single, user), deleted afterwards."""
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite has one write lock for the whole database")
        contact = contacts.add_contact(
            f"order-{secrets.token_hex(6)}@example.com", opt_in=OptIn.SINGLE_USER,
            method="cli", actor="t",
        )
        db.session.commit()
        made = contact.id
    yield made
    with base_app.app_context():
        db.session.execute(sa.delete(Contact).where(Contact.id == made))
        db.session.commit()


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_writer_waiting_for_the_ledger_holds_no_contact_row(base_app, contact_id, writer):
    def write():
        with base_app.app_context():
            WRITERS[writer](db.session.get(Contact, contact_id))
            db.session.commit()

    with base_app.app_context():
        engine = db.engine
    with the_ledger_held(engine, write) as probe:
        # Raises LockNotAvailable if the waiting writer had already locked the row.
        probe.execute(sa.select(Contact.id).where(Contact.id == contact_id)
                      .with_for_update(nowait=True))
    with base_app.app_context():
        contact = db.session.get(Contact, contact_id)
        assert contact.opt_in_status == OptIn.OPTOUT_CONTACT.value or writer == "asking for erasure"
        assert (contact.processing_stopped_at is not None) == (writer == "stopping processing")
        assert (contact.erasure_requested_at is not None) == (writer == "asking for erasure")
        assert ledger.verify().ok


# --- Statement by statement --------------------------------------------------------------------

#: A statement that changes or locks existing rows. A new row (INSERT) is nobody else's yet.
_CHANGES_ROWS = re.compile(r"^(UPDATE|DELETE)\b|\bFOR UPDATE\b")


def _early_writes(statements: list[str]) -> list[str]:
    """Return what transactions that read the ledger's head changed or locked before it.

    Under the `app` fixture each transaction of the code is a savepoint of the test's own.
    """
    early, before_head = [], []
    for statement in statements:
        if statement.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK")):
            before_head = []
        elif "FROM ledger_head" in statement:
            early += before_head or []
            before_head = None
        elif before_head is not None and _CHANGES_ROWS.search(statement):
            before_head.append(statement)
    return early


ASK_FOR_EVERYTHING = {"list:offers": "on", "consent:partners": "yes", "stop_processing": "on",
                      "erasure": "on"}


def _save(browser, smtp, ada):
    return lambda: post_page(browser, manage_path(ada), clear=("list:news",),
                             choose={"consent:tracking": "no", **ASK_FOR_EVERYTHING})


def _undo(browser, smtp, ada):
    _save(browser, smtp, ada)()
    deliver()
    undo = link_in(the_mail(smtp, ada, NOTICE_SUBJECT), "u")
    return lambda: press(browser, undo)


def _confirm(browser, smtp, ada):
    post_page(browser, manage_path(ada), choose=ASK_FOR_EVERYTHING)
    deliver()
    confirm = link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c")
    return lambda: press(browser, confirm)


def _leave(browser, smtp, ada):
    # The landing's first form is its one button, which posts to the list's own address.
    action, form = read_form(browser.get(f"{manage_path(ada)}?list=news").text)
    assert action.endswith("/leave/news")
    return lambda: browser.post(action, data=form)


def _one_click(browser, smtp, ada):
    news = db.session.scalar(sa.select(unsubscribe.lists.MailingList)
                             .where(unsubscribe.lists.MailingList.slug == "news"))
    path = f"/o/{unsubscribe.make_token(ada, news)}"
    return lambda: browser.post(path, data={"List-Unsubscribe": "One-Click"})


def _double_opt_in(browser, smtp, ada):
    contact = sign_up(f"doi-{secrets.token_hex(4)}@example.com")
    request = doi.latest_request(contact)
    return lambda: doi.confirm(contact, request.public_id)


REQUESTS = {"a save that withdraws and asks": _save, "an undo": _undo,
            "a confirmation": _confirm, "leaving from the unsubscribe landing": _leave,
            "a one-click unsubscribe": _one_click, "a double opt-in confirmation": _double_opt_in}


@pytest.mark.parametrize("request_kind", list(REQUESTS))
def test_no_transaction_changes_a_row_before_it_locks_the_ledger(
    client, smtp, world, statements, request_kind  # noqa: F811 (fixtures)
):
    act = REQUESTS[request_kind](client, smtp, world.ada)
    statements.clear()
    act()
    assert any("FROM ledger_head" in statement for statement in statements)
    assert _early_writes(statements) == []


def _staff_edit(staff, ada):
    data = edit_form(staff, ada, first_name="Adah", sales_stage="ready to buy")
    data.pop("employees")
    return lambda: staff.post(f"/staff/contacts/{ada.public_id}/edit", data=data)


def _staff_new_address(staff, ada):
    token = edit_form(staff, ada)["csrf_token"]
    return lambda: staff.post(f"/staff/contacts/{ada.public_id}/email",
                              data={"csrf_token": token, "email": "ada.new@example.com"})


STAFF_REQUESTS = {"a staff edit of a record": _staff_edit,
                  "a staff change of the address": _staff_new_address}


@pytest.mark.parametrize("request_kind", list(STAFF_REQUESTS))
def test_no_staff_change_changes_a_row_before_it_locks_the_ledger(
    agent_client, world, statements, request_kind  # noqa: F811 (a fixture)
):
    act = STAFF_REQUESTS[request_kind](agent_client, world.ada)
    statements.clear()
    assert act().status_code == 303
    assert any("FROM ledger_head" in statement for statement in statements)
    assert _early_writes(statements) == []
