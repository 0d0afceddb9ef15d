"""The embedded SQLite database under several processes (STYLE.md, known traps)."""

import sqlite3

import flask_migrate
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
