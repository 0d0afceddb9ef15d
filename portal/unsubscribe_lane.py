"""The one-click unsubscribe's common case, in a handful of statements on the driver's cursor.

A campaign's one-click POSTs (RFC 8058) are the portal's busiest writes: each takes a contact
off one list, appends the ledger event and commits before answering. The full path
(`unsubscribe.unsubscribe` in the ORM session) handles every case, but costs several times
what the change itself needs, and on SQLite it holds the database's write lock throughout.

This lane makes the same change when the case is the common one: the contact is on file, not
erased, and subscribed to the list, with no pending change and no web-form sign-up waiting
(leaving would have to cancel those: the full path does). It reads with no lock held, then
takes the write lock (SQLite's BEGIN IMMEDIATE) for these statements and the commit:

1. the ledger's head row, locked (FOR UPDATE on PostgreSQL), first, as every writer takes it
   (`ledger.lock_head`);
2. the subscription, if it still is subscribed and nothing is waiting for the contact: the
   read without the lock, checked again under it;
3. the event, built by `ledger.next_event` as every event is, so the chain is the same;
4. the event written, the subscription moved to "unsubscribed", the evidence (address and
   browser), and the head moved to the new event: on PostgreSQL in one statement, one round
   trip while the head is held.

Whenever a step finds the case is not the common one, the lane rolls back, has changed
nothing, and returns None: the caller then takes the full path, which gives the right answer
for everything (an unknown link, a second POST, a pending grant to cancel). The statements are
Core statements compiled once per database, their parameters converted by their column types,
as SQLAlchemy would (`db.DriverStatement`); only its per-execution bookkeeping is skipped.
"""

import json
from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa

from portal import ledger
from portal import lists
from portal import unsubscribe
from portal.changes import PendingChange
from portal.contacts import Contact
from portal.db import DriverStatement
from portal.db import QueuedConnection
from portal.db import db
from portal.db import detached
from portal.db import holds_nul
from portal.webforms import SignupRequest

_SUBSCRIPTIONS = lists.Subscription.__table__
_LISTS = lists.MailingList.__table__
_CONTACTS = Contact.__table__

_FIND = (
    sa.select(_CONTACTS.c.id, _CONTACTS.c.language, _LISTS.c.slug, _LISTS.c.name,
              _LISTS.c.translations)
    .join(_LISTS, _LISTS.c.id == sa.bindparam("list_id"))
    .join(
        _SUBSCRIPTIONS,
        (_SUBSCRIPTIONS.c.contact_id == _CONTACTS.c.id)
        & (_SUBSCRIPTIONS.c.list_id == _LISTS.c.id)
        & (_SUBSCRIPTIONS.c.status == "subscribed"),
    )
    .where(_CONTACTS.c.public_id == sa.bindparam("public_id"), _CONTACTS.c.erased_at.is_(None))
)
_NOTHING_WAITING = ~sa.exists().where(
    PendingChange.contact_id == sa.bindparam("contact"),
    PendingChange.status == "pending",
) & ~sa.exists().where(
    SignupRequest.contact_id == sa.bindparam("contact"),
    SignupRequest.status == "pending",
)
#: The subscription, locked (FOR UPDATE on PostgreSQL), if it is still the common case: read
#: after the ledger's head is locked, as every writer reads what it changes (ledger.lock_head).
_STILL_SUBSCRIBED = (
    sa.select(_SUBSCRIPTIONS.c.list_id)
    .where(
        _SUBSCRIPTIONS.c.contact_id == sa.bindparam("contact"),
        _SUBSCRIPTIONS.c.list_id == sa.bindparam("list"),
        _SUBSCRIPTIONS.c.status == "subscribed",
        _NOTHING_WAITING,
    )
    .with_for_update()
)


_EVENTS = ledger.LedgerEvent.__table__
_EVIDENCE = ledger.LedgerEvidence.__table__
#: The event's columns, bound as "ledger_<column>" in the one-statement write below.
_EVENT_VALUES = {column.key: sa.bindparam(f"ledger_{column.key}", type_=column.type)
                 for column in _EVENTS.columns}
_EVIDENCE_COLUMNS = ("event_id", "ip_address", "user_agent")  # what ledger.evidence_row gives
_EVIDENCE_VALUES = {name: sa.bindparam(name) for name in _EVIDENCE_COLUMNS}


def _one_statement(with_evidence: bool):
    """The four writes as one statement (PostgreSQL's data-modifying WITH): the event, the
    subscription moved, the evidence (when there is some) and the head moved, in one round
    trip to the server instead of four while the head is held. Its foreign keys are checked
    at the statement's end, when every row is there."""
    parts = [sa.insert(_EVENTS).values(_EVENT_VALUES).cte("new_event"),
             lists.MOVE_SUBSCRIPTION.cte("left_list")]
    if with_evidence:
        parts.append(sa.insert(_EVIDENCE).values(_EVIDENCE_VALUES).cte("kept_evidence"))
    return ledger.MOVE_HEAD.add_cte(*parts)


@dataclass(frozen=True)
class _Statements:
    find: DriverStatement
    still_subscribed: DriverStatement
    read_head: DriverStatement
    insert_event: DriverStatement
    insert_evidence: DriverStatement
    leave: DriverStatement
    move_head: DriverStatement
    #: PostgreSQL's one-statement writes, without and with evidence; None elsewhere.
    write_all: dict[bool, DriverStatement] | None


@lru_cache(maxsize=4)
def _statements(dialect: sa.Dialect) -> _Statements:
    return _Statements(
        find=DriverStatement(_FIND, dialect),
        still_subscribed=DriverStatement(_STILL_SUBSCRIBED, dialect),
        read_head=DriverStatement(ledger.READ_HEAD, dialect),
        insert_event=DriverStatement(
            sa.insert(_EVENTS), dialect, [column.key for column in _EVENTS.columns]
        ),
        insert_evidence=DriverStatement(
            sa.insert(_EVIDENCE), dialect, list(_EVIDENCE_COLUMNS)
        ),
        leave=DriverStatement(lists.MOVE_SUBSCRIPTION, dialect),
        move_head=DriverStatement(ledger.MOVE_HEAD, dialect),
        write_all={with_evidence: DriverStatement(_one_statement(with_evidence), dialect)
                   for with_evidence in (False, True)}
        if dialect.name == "postgresql" else None,
    )


@dataclass(frozen=True)
class Left:
    """What the lane did: whose language the answer is in, and which list was left (a copy of
    its row, outside the session)."""

    language: str | None
    mailing_list: lists.MailingList


def leave(public_id: str, list_id: int, evidence: ledger.Evidence) -> Left | None:
    """Take the contact off the list and commit, as unsubscribe.unsubscribe() would; return
    None, having changed nothing, when the case is not the common one (see the module)."""
    if holds_nul([evidence.ip_address, evidence.user_agent]):
        return None  # the full path answers it as the malformed request it is
    if db.session.registry.has() and db.session().in_transaction():
        # On SQLite the session's transaction may hold the write lock this lane would wait for.
        return None
    engine = db.engine
    statements = _statements(engine.dialect)
    connection = engine.raw_connection()
    try:
        driver = connection.dbapi_connection
        cursor = driver.cursor()
        found = statements.find.run(
            cursor, {"list_id": list_id, "public_id": public_id}
        ).fetchone()
        if found is None:
            return None
        contact_id, language, slug, name, translations = found
        if isinstance(driver, QueuedConnection):
            driver.begin_writing()
        elif engine.dialect.name == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        mine = {"contact": contact_id, "list": list_id}
        head = statements.read_head.run(cursor, {}).fetchone()
        if head is None or statements.still_subscribed.run(cursor, mine).fetchone() is None:
            driver.rollback()
            return None
        row = ledger.next_event(
            _Head(*head),
            contact_ref=public_id,
            subject_type="subscription",
            subject_ref=slug,
            action="unsubscribed",
            value_from="subscribed",
            value_to="unsubscribed",
            method=unsubscribe.METHOD,
            actor="contact",
            evidence_ref=f"list:{slug}",
            evidence=evidence,
        )
        _write(cursor, statements, row, {**mine, "new_status": "unsubscribed",
                                          "event": row["id"], "at": row["occurred_at"]},
               ledger.evidence_row(row["id"], evidence))
        driver.commit()
    except BaseException:
        # Whatever failed (a lost server, a lock timeout), the connection is not reused: closing
        # it ends its transaction, and on SQLite leaves the writers' queue.
        connection.invalidate()
        raise
    finally:
        connection.close()
    if isinstance(translations, str):  # SQLite's driver returns JSON as its text
        translations = json.loads(translations)
    copy = detached(lists.MailingList, {"id": list_id, "slug": slug, "name": name,
                                        "translations": translations})
    return Left(language=language, mailing_list=copy)


def _write(cursor, statements: _Statements, row: dict, leaving: dict, kept: dict | None):
    """Write the event, the subscription it moves, its evidence and the head."""
    moved = {"event_id": row["id"], "event_hash": row["hash"]}
    if statements.write_all is not None:
        values = {f"ledger_{name}": value for name, value in row.items()}
        statements.write_all[kept is not None].run(cursor, {**values, **leaving, **(kept or {}),
                                                            **moved})
        return
    statements.insert_event.run(cursor, row)
    statements.leave.run(cursor, leaving)
    if kept is not None:
        statements.insert_evidence.run(cursor, kept)
    statements.move_head.run(cursor, moved)


@dataclass(frozen=True)
class _Head:
    last_event_id: int
    last_hash: str
