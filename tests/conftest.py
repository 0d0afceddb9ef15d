"""Fixtures built from the factory: app, client, runner, on SQLite and on PostgreSQL.

Every database test runs on SQLite, and again on PostgreSQL when PORTAL_TEST_DATABASE_URL names
a test database (its public schema is dropped and rebuilt by the migrations at the start of the
run). Each test runs inside a transaction that is rolled back, so the append-only ledger never
needs a DELETE.
"""

import os
from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa
from chromium import CHROMIUM
from chromium import CHROMIUM_ARGS
from flask import g
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings
from smtp_sink import SmtpSink
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from portal import create_app
from portal import demo
from portal import staff
from portal.db import db
from portal.hardening import limiter
from portal.keys import PURPOSES
from portal.keys import new_keyset

POSTGRES_URL_VARIABLE = "PORTAL_TEST_DATABASE_URL"

hypothesis_settings.register_profile("portal", derandomize=True, deadline=None)
hypothesis_settings.load_profile("portal")

#: Keys for the whole test run, one set per purpose.
TEST_KEYS = {name: new_keyset("k1") for name in PURPOSES.values()}


def make_config(database_uri: str, **overrides) -> dict:
    """Return a complete test configuration for a database."""
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key-not-for-production",
        "SQLALCHEMY_DATABASE_URI": database_uri,
        "PORTAL_BASE_URL": "https://prefs.example.test",
        "MAIL_SUPPRESS_SEND": False,
        # Every test sees its own lists and consents at once.
        "PORTAL_CATALOGUE_SECONDS": 0,
        **TEST_KEYS,
    }
    config.update(overrides)
    return config


def demo_app(folder: Path, *, admin: tuple[str, str] | None = None,
             database_uri: str | None = None, **overrides):
    """Return the demo application on its own SQLite file (or `database_uri`, empty) and
    instance folder, migrated and loaded (a live server's thread would not see an in-memory
    database); with `admin` (address, password), an admin who can sign in."""
    database_uri = database_uri or f"sqlite:///{folder / 'portal.sqlite3'}"
    application = create_app(
        make_config(database_uri, PORTAL_DEMO=True, **overrides),
        instance_path=str(folder / "instance"),
    )
    with application.app_context():
        flask_migrate.upgrade()
        demo.load()
        if admin is not None:
            staff.create_staff(*admin, "admin")
        db.session.commit()
    return application


def _database_urls(tmp_path_factory) -> dict:
    return {
        "sqlite": f"sqlite:///{tmp_path_factory.mktemp('db')}/test.sqlite3",
        "postgresql": os.environ.get(POSTGRES_URL_VARIABLE),
    }


def _reset_postgresql(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory) -> str:
    """The URL of a migrated test database; PostgreSQL only when configured."""
    url = _database_urls(tmp_path_factory)[request.param]
    if url is None:
        pytest.skip(f"set {POSTGRES_URL_VARIABLE} to run the tests on PostgreSQL too")
    if request.param == "postgresql":
        _reset_postgresql(url)
    return url


class FreshGlobalsClient(FlaskClient):
    """A test client whose every request starts with an empty `g`, as in production.

    The `app` fixture keeps an application context open for the whole test, and Flask reuses
    an open context for requests, so without this `g` (Flask-WTF keeps its CSRF token there)
    would leak from one request into the next.
    """

    def open(self, *args, **kwargs):
        vars(g).clear()
        return super().open(*args, **kwargs)


@pytest.fixture(scope="session")
def smtp_server():
    """One real SMTP server on loopback for the whole run (aiosmtpd)."""
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
def smtp(smtp_server):
    """The test SMTP server, emptied and well-behaved at the start of each test."""
    smtp_server.reset()
    return smtp_server


@pytest.fixture(scope="session")
def base_app(database_url, smtp_server):
    """One application per database for the whole run, its schema built by the migrations."""
    application = create_app(
        make_config(database_url, MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    )
    application.test_client_class = FreshGlobalsClient
    with application.app_context():
        flask_migrate.upgrade()
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def app(base_app):
    """The application, inside a transaction that is rolled back after the test."""
    with base_app.app_context():
        limiter.reset()  # rate-limit counts must not leak from one test into the next
        connection = db.engine.connect()
        transaction = connection.begin()
        original_session = db.session
        # Commits in the code under test release a savepoint; the outer transaction stays.
        db.session = scoped_session(
            sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
        )
        try:
            yield base_app
        finally:
            db.session.remove()
            db.session = original_session
            transaction.rollback()
            connection.close()


@pytest.fixture
def statements(app):
    """Collect the statements sent to the database during the test."""
    seen: list[str] = []

    def collect(_connection, _cursor, statement, *_):
        seen.append(" ".join(statement.split()))

    sa.event.listen(db.engine, "before_cursor_execute", collect)
    yield seen
    sa.event.remove(db.engine, "before_cursor_execute", collect)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def dialect(app) -> str:
    return db.engine.dialect.name


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, driven by Playwright, shared by every browser test of the run."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"PORTAL_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def staff_browser(app, email: str, role: str) -> FlaskClient:
    """Return a browser signed in as a new staff member, on HTTPS with a Referer (Flask-WTF
    checks it there); the staff row is on ``browser.user``."""
    from test_backoffice_auth import PASSWORD
    from test_backoffice_auth import sign_in

    user = staff.create_staff(email, PASSWORD, role)
    db.session.commit()
    browser = app.test_client()
    browser.environ_base.update(
        {"wsgi.url_scheme": "https", "HTTP_REFERER": "https://localhost/staff/"}
    )
    sign_in(browser, email, PASSWORD)
    browser.user = user
    return browser


@pytest.fixture
def admin_client(app):
    """A browser signed in as an admin."""
    return staff_browser(app, "admin@example.com", "admin")


@pytest.fixture
def agent_client(app):
    """A browser signed in as an agent."""
    return staff_browser(app, "agent@example.com", "agent")
