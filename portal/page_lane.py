"""A contact page's GET in two statements on the driver's cursor.

Opening the preference page from an email is the portal's busiest request. Through the ORM
session it reads the link's contact and the page's state in two queries, but most of its
time goes to the session around them: the session itself, its transaction, two executions
with their bookkeeping, loading the contact into the identity map, and closing it all at the
request's end.

This lane reads the same two things on a pooled driver connection, with the statements
compiled once per database (`db.DriverStatement`): the contact's row by the link's public id,
then the page's state query (`choices.STATE_QUERIES`), in one snapshot on SQLite (a BEGIN, as
the session's path has) and in autocommit on PostgreSQL (as the session's path reads a link
page, `db.Session`). The contact comes back as a `Contact` outside any session, holding its
row, and the page is built from it and the rows by `choices.page_from`, as the session's path
builds it: the two pages are the same, byte for byte (the tests compare them).

The lane gives way (returns None, having read nothing else) whenever it might not see what
the session would: when the session already has a transaction open in this request, and when
the contact is not found or the link no longer opens it. The caller then takes the session's
path, which gives the right answer in every case (the bad-link page included).
"""

from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa

from portal import choices
from portal.contacts import Contact
from portal.db import DriverStatement
from portal.db import db
from portal.db import detached
from portal.db import holds_nul
from portal.links import still_valid

_CONTACTS = Contact.__table__
_CONTACT = sa.select(_CONTACTS).where(_CONTACTS.c.public_id == sa.bindparam("public_id"))
#: The Contact attribute each of the row's columns fills.
_ATTRIBUTES = tuple(column.key for column in _CONTACTS.columns)


@dataclass(frozen=True)
class _Statements:
    contact: DriverStatement
    states: dict[bool, DriverStatement]


@lru_cache(maxsize=4)
def _statements(dialect: sa.Dialect) -> _Statements:
    return _Statements(
        contact=DriverStatement(_CONTACT, dialect),
        states={with_values: DriverStatement(query, dialect)
                for with_values, query in choices.STATE_QUERIES.items()},
    )


@dataclass(frozen=True)
class Found:
    """The contact a link opens (outside the session), the catalogue and its page's rows."""

    contact: Contact
    known: choices.Catalogue
    rows: list[tuple]

    def page(self) -> choices.Page:
        """Return the page, as page_for would (call it once the page's language is known)."""
        return choices.page_from(self.contact, self.known, self.rows)


def read(payload: dict) -> Found | None:
    """Read the page of the contact a checked manage link's payload names; None to give way."""
    if db.session.registry.has() and db.session().in_transaction():
        return None
    if holds_nul([payload["c"]]):
        return None
    known = choices.catalogue()
    engine = db.engine
    postgresql = engine.dialect.name == "postgresql"
    connection = engine.raw_connection()
    try:
        driver = connection.dbapi_connection
        if postgresql:
            driver.autocommit = True
        else:
            driver.execute("BEGIN")
        found = _read(driver.cursor(), _statements(engine.dialect), payload, known)
        driver.rollback()  # ends SQLite's read; nothing to end in autocommit
        if postgresql:
            driver.autocommit = False
    except BaseException:
        # Whatever failed (a lost server), the connection is not reused.
        connection.invalidate()
        raise
    finally:
        connection.close()
    return found


def _read(cursor, statements: _Statements, payload: dict, known) -> Found | None:
    row = statements.contact.run(cursor, {"public_id": payload["c"]}).fetchone()
    if row is None:
        return None
    contact = detached(Contact, dict(zip(_ATTRIBUTES, statements.contact.read(row), strict=True)))
    if not still_valid(contact, payload):
        return None
    with_values, params = choices.state_query(contact.id, known)
    state = statements.states[with_values]
    return Found(contact, known, [state.read(each) for each in state.run(cursor, params)])
