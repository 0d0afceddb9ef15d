"""The preference page's GET lane (portal/page_lane.py): a contact's page read in two
statements on the driver's cursor, which must show exactly what the session's path shows and
give way to it whenever it cannot open the link.

The lane reads on a connection of its own, so it sees only what is committed: these tests
serve the demo data, committed on a database of their own (a SQLite file, and a schema of
its own in the PostgreSQL test database), as `make run` and the benchmarks do.
"""

import logging
import re
import secrets
import time

import pytest
import sqlalchemy as sa
from conftest import demo_app
from test_preferences import read_form

from portal import page_lane
from portal.contacts import Contact
from portal.db import db
from portal.links import make_token


@pytest.fixture(scope="module")
def demo(database_url, tmp_path_factory):
    """The demo application, its data committed, on the test run's kind of database."""
    folder = tmp_path_factory.mktemp("page-lane")
    if database_url.startswith("sqlite"):
        yield demo_app(folder)
        return
    schema = f"page_lane_{secrets.token_hex(4)}"
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in database_url else "?"
    application = demo_app(folder,
                           database_uri=f"{database_url}{separator}options=-csearch_path%3D{schema}")
    try:
        yield application
    finally:
        with application.app_context():
            db.engine.dispose()
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.fixture
def lane_runs(monkeypatch):
    """Count the pages the lane read (it returns None when it gives way)."""
    read = []
    real = page_lane.read

    def counted(payload):
        found = real(payload)
        read.append(found is not None)
        return found

    monkeypatch.setattr(page_lane, "read", counted)
    return read


@pytest.fixture
def still_clock(monkeypatch):
    """Stop the clock, so that two pages carry the same form token."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)


def _tokens(app) -> list[str]:
    with app.app_context():
        return [make_token("manage", contact) for contact in db.session.scalars(
            sa.select(Contact).order_by(Contact.id))]


def _browser(app):
    browser = app.test_client()
    browser.environ_base["HTTP_REFERER"] = "https://localhost/"
    return browser


def _session_path_page(app, path: str, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(page_lane, "read", lambda payload: None)
        return _browser(app).get(path)


def test_every_demo_contacts_page_is_the_same_by_the_lane_and_by_the_session(
    demo, lane_runs, still_clock, monkeypatch
):
    tokens = _tokens(demo)
    # A grant waiting for its confirmation, and a list the contact may leave, shown too.
    first = _browser(demo).get(f"/p/{tokens[0]}")
    _action, form = read_form(first.text)
    public = ("list:newsletter", "list:product-updates", "list:events")
    unticked = [name for name in public if name not in form]
    assert unticked
    asked = _browser(demo).post(f"/p/{tokens[0]}", data={**form, unticked[0]: "on"})
    assert asked.status_code == 303
    paths = [f"/p/{token}" for token in tokens] + [f"/p/{tokens[1]}?list=newsletter"]
    lane_runs.clear()
    for path in paths:
        by_lane = _browser(demo).get(path)
        by_session = _session_path_page(demo, path, monkeypatch)
        assert by_lane.status_code == by_session.status_code == 200, path
        assert by_lane.text == by_session.text, path
        assert sorted(by_lane.headers.items()) == sorted(by_session.headers.items())
    assert lane_runs == [True] * len(paths)
    # The pages differ from one another (languages, consents shown, the waiting grant).
    pages = {_browser(demo).get(path).text for path in paths}
    assert len(pages) == len(paths)
    assert "hint waiting" in _browser(demo).get(paths[0]).text
    assert sum('lang="de"' in page for page in pages) > 0


def test_a_link_the_lane_cannot_open_gets_the_bad_link_page_from_the_session(
    demo, lane_runs, caplog
):
    caplog.set_level(logging.INFO, logger="portal.preferences")
    tokens = _tokens(demo)
    with demo.app_context():
        revoked = db.session.scalars(sa.select(Contact).order_by(Contact.id)).all()[2]
        revoked.link_version += 1
        revoked_id = revoked.id
        db.session.commit()
    stale = _browser(demo).get(f"/p/{tokens[2]}")
    assert stale.status_code == 404
    assert "This link is not valid" in stale.text
    assert lane_runs == [False]
    assert "the link was revoked" in caplog.text
    # Another of the contact's links, made now, opens the page by the lane again.
    with demo.app_context():
        fresh = make_token("manage", db.session.get(Contact, revoked_id))
    assert _browser(demo).get(f"/p/{fresh}").status_code == 200
    assert lane_runs == [False, True]


def test_the_lane_hands_its_connection_back_ready_for_a_save(demo, lane_runs, monkeypatch):
    """After the lane's read, its connection goes back to the pool out of any transaction and,
    on PostgreSQL, out of autocommit: the next writer on it writes in a transaction."""
    used = []
    real = page_lane._read

    def watched(cursor, *args):
        used.append(cursor.connection)
        return real(cursor, *args)

    monkeypatch.setattr(page_lane, "_read", watched)
    token = _tokens(demo)[3]
    browser = _browser(demo)
    page = browser.get(f"/p/{token}")
    assert lane_runs == [True]
    [connection] = used
    with demo.app_context():
        if db.engine.dialect.name == "postgresql":
            assert connection.autocommit is False
        else:
            assert not connection.in_transaction
    # A save after it applies its withdrawal, which the next page shows.
    _action, form = read_form(page.text)
    ticked = [name for name in form if name.startswith("list:")]
    assert ticked, "the demo contact is on a list"
    saved = browser.post(f"/p/{token}", data={k: v for k, v in form.items() if k != ticked[0]})
    assert saved.status_code == 303
    after = browser.get(f"/p/{token}")
    assert f'name="{ticked[0]}"' in after.text
    assert not re.search(rf'name="{re.escape(ticked[0])}"[^>]*checked', after.text)


def test_a_page_read_by_the_lane_makes_at_most_four_statements(tmp_path):
    """The issue's budget for a page GET, counted at SQLite's own connection: the lane's
    BEGIN, its two reads and the ROLLBACK (the catalogue is cached, as in production)."""
    app = demo_app(tmp_path, PORTAL_CATALOGUE_SECONDS=300)
    statements = []
    with app.app_context():
        sa.event.listen(db.engine, "connect",
                        lambda connection, _record: connection.set_trace_callback(
                            statements.append))
        db.engine.dispose()  # the connections from here on are traced
    token = _tokens(app)[0]
    assert _browser(app).get(f"/p/{token}").status_code == 200  # the catalogue read, once
    statements.clear()
    assert _browser(app).get(f"/p/{token}").status_code == 200
    reads = [s for s in statements if not s.startswith("PRAGMA")]
    assert len(reads) <= 4, reads
    assert sum(s.startswith("SELECT") for s in reads) == 2



def test_a_failure_inside_the_lane_discards_its_connection_and_the_next_page_opens(
    demo, monkeypatch, lane_runs
):
    """A statement that fails (a lost server, say): the error is the request's, and the lane's
    connection is closed rather than pooled mid-read (on PostgreSQL, still in autocommit)."""
    token = _tokens(demo)[4]
    used = []

    def lost(cursor, *_args):
        used.append(cursor.connection)
        raise sa.exc.OperationalError("SELECT", {}, ConnectionError("the server went away"))

    with monkeypatch.context() as patched:
        patched.setattr(page_lane, "_read", lost)
        with pytest.raises(sa.exc.OperationalError):
            _browser(demo).get(f"/p/{token}")
    [connection] = used
    with pytest.raises(Exception, match="(?i)closed"):
        connection.cursor().execute("SELECT 1")
    assert _browser(demo).get(f"/p/{token}").status_code == 200
    assert lane_runs == [True]


def test_an_htmx_save_answers_with_the_form_the_lane_reads_after_the_commit(demo, lane_runs):
    """The form an htmx save sends back is read by the lane once the change is committed:
    it shows the change, and its stamp is the new state's, so the next toggle is not stale."""
    token = _tokens(demo)[5]
    browser = _browser(demo)
    _action, form = read_form(browser.get(f"/p/{token}").text)
    left = next(name for name in form if name.startswith("list:"))
    toggle = {name: value for name, value in form.items() if name != left}
    answer = browser.post(f"/p/{token}", data=toggle, headers={"HX-Request": "true"})
    assert answer.status_code == 200
    assert lane_runs == [True, True]  # the page's GET, then the form after the save
    _action, after = read_form(answer.text)
    assert left not in after
    assert after["stamp"] != form["stamp"]
    # The answer's own form, posted as it stands, is the current state: nothing is stale.
    again = browser.post(f"/p/{token}", data=after, headers={"HX-Request": "true"})
    assert again.status_code == 200
    assert 'id="preferences"' in again.text and "stale" not in again.text.lower()
