"""The embedded SQLite database under several processes (STYLE.md, known traps)."""

import os
import sqlite3

import flask_migrate
import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL_VARIABLE
from conftest import make_config

from portal import contacts
from portal import create_app
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
