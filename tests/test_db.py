"""The database: the embedded SQLite under several processes (STYLE.md, known traps), and how
the portal uses PostgreSQL's connections."""

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL_VARIABLE
from conftest import make_config

from portal import contacts
from portal import create_app
from portal import lists
from portal.db import db
from portal.links import make_token


def test_a_page_get_reads_while_another_process_holds_the_write_lock(tmp_path):
    path = tmp_path / "busy.sqlite3"
    app = create_app(make_config(f"sqlite:///{path}"), instance_path=str(tmp_path))
    with app.app_context():
        flask_migrate.upgrade()
        contact = contacts.add_contact("reader@example.com", method="cli", actor="t")
        db.session.commit()
        link = f"/p/{make_token('manage', contact)}"
        db.engine.dispose()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA busy_timeout = 0")
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        # Reads never wait for the write lock: without this the GET would wait out the busy
        # timeout and fail with "database is locked".
        assert app.test_client().get(link).status_code == 200
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        with app.app_context():
            db.engine.dispose()


def _backend_pid(app) -> int:
    with app.app_context():
        pid = db.session.scalar(sa.text("SELECT pg_backend_pid()"))
        db.session.remove()  # back to the pool, where the server will drop it
    return pid


@pytest.mark.parametrize("idle_seconds", [0, 3600])
def test_a_pooled_connection_the_server_dropped_is_replaced_once_idle(idle_seconds):
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"set {POSTGRES_URL_VARIABLE} to run the tests on PostgreSQL too")
    app = create_app(make_config(url, PORTAL_DB_PING_IDLE_SECONDS=idle_seconds))
    pid = _backend_pid(app)
    # A server restart or an idle timeout: the pooled connection dies while checked in.
    killer = sa.create_engine(url)
    with killer.connect() as connection:
        assert connection.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    killer.dispose()
    try:
        if idle_seconds == 0:
            # Idle long enough to be checked: the dead connection is replaced unseen.
            assert _backend_pid(app) != pid
        else:
            # One used moments ago is trusted: its failure invalidates the pool, and the next
            # use gets a fresh connection.
            with pytest.raises(sa.exc.OperationalError):
                _backend_pid(app)
            assert _backend_pid(app) != pid
    finally:
        with app.app_context():
            db.engine.dispose()


def test_on_postgresql_a_contact_page_reads_without_a_transaction_and_writes_in_one():
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"set {POSTGRES_URL_VARIABLE} to run the tests on PostgreSQL too")
    app = create_app(make_config(url))
    with app.app_context():
        news = lists.create_list(f"autocommit-{os.getpid()}", "Autocommit news")
        contact = contacts.add_contact(
            f"autocommit-{os.getpid()}@example.com", method="cli", actor="t", first_name="Ida"
        )
        lists.set_subscription(contact, news, True, method="cli", actor="t")
        db.session.commit()
        path, slug, contact_id = f"/p/{make_token('manage', contact)}", news.slug, contact.id
        autocommit = []

        def note(connection, *_args):
            autocommit.append(connection.connection.dbapi_connection.autocommit)

        sa.event.listen(db.engine, "before_cursor_execute", note)
    try:
        client = app.test_client()
        page = client.get(path)
        assert page.status_code == 200 and "Hello Ida." in page.text
        assert autocommit and all(autocommit)

        autocommit.clear()
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
        assert client.post(path, data=form).status_code == 303  # the list's box left unticked
        assert autocommit and not any(autocommit)

        # With htmx the answer is the updated form: read after the commit, in autocommit.
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                               client.get(path).text))
        autocommit.clear()
        saved = client.post(path, data={**form, f"list:{slug}": "on"},
                            headers={"HX-Request": "true"})
        assert saved.status_code == 200 and "Autocommit news" in saved.text
        written = autocommit.index(True)
        assert written > 0 and not any(autocommit[:written]) and all(autocommit[written:])
        with app.app_context():
            status = db.session.scalar(
                sa.select(lists.Subscription.status).where(
                    lists.Subscription.contact_id == contact_id
                )
            )
        assert status == "unsubscribed"
    finally:
        with app.app_context():
            db.session.execute(sa.delete(contacts.Contact).where(contacts.Contact.id == contact_id))
            db.session.execute(sa.delete(lists.MailingList).where(lists.MailingList.slug == slug))
            db.session.commit()
            db.engine.dispose()


def test_a_database_error_never_carries_a_statements_values(tmp_path):
    """A failed statement's values (an address, a name) stay out of its error and the logs,
    even where a deployment sets engine options of its own."""
    secret = "zoltana.quibbleworth@example.com"
    config = make_config(f"sqlite:///{tmp_path}/portal.sqlite3")
    for options in ({}, {"echo": False}):
        app = create_app({**config, "SQLALCHEMY_ENGINE_OPTIONS": options},
                         instance_path=str(tmp_path))
        with app.app_context():
            statement = sa.text("SELECT * FROM no_such_table WHERE email = :e")
            with pytest.raises(sa.exc.DBAPIError) as raised:
                db.session.execute(statement, {"e": secret})
            db.session.rollback()
            assert secret not in str(raised.value), options
            assert "no_such_table" in str(raised.value)  # the statement itself is still told


def test_a_detached_row_reads_as_its_model_even_as_the_processs_first_instance():
    """db.detached: a row read on the driver's cursor, as the lanes make it. In a process
    whose ORM has made no instance yet (a server worker's first one-click POST), its mapper is
    not configured until something configures it: detached must, or reading fails (a 500)."""
    script = (
        "from portal import lists\n"
        "from portal.db import detached\n"
        "row = detached(lists.MailingList, {'id': 7, 'slug': 'news', 'name': 'News',\n"
        "               'translations': {'de': {'name': 'Neuigkeiten', 'description': ''}}})\n"
        "print(row.id, row.wording('de')[0], row.wording('fr')[0], row.description)\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["7", "Neuigkeiten", "News", "None"]


def test_a_driver_statement_reads_each_value_as_its_column_type_does():
    from datetime import UTC
    from datetime import datetime

    from portal.db import DriverStatement
    from portal.db import UTCDateTime

    table = sa.Table("sample", sa.MetaData(), sa.Column("id", sa.Integer),
                     sa.Column("name", sa.String), sa.Column("at", UTCDateTime))
    dialect = sa.create_engine("sqlite://").dialect
    statement = DriverStatement(sa.select(table), dialect)
    # SQLite hands the datetime over as text: it comes back aware, in UTC.
    assert statement.read((1, "a", "2026-12-07 19:00:00.000000")) == (
        1, "a", datetime(2026, 12, 7, 19, tzinfo=UTC))
    assert statement.read((2, None, None)) == (2, None, None)
    with pytest.raises(ValueError, match="a row of 2 values for 3 columns"):
        statement.read((1, "a"))
    names = DriverStatement(sa.select(table.c.id, table.c.name), dialect)
    assert names.read([3, "b"]) == (3, "b")
