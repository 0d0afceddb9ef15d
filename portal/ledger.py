"""The consent ledger: an append-only, HMAC-chained record of every decision (L1, L2).

Each event's hash is an HMAC, under the ledger key, of its own fields and of the previous
event's hash. Someone who can write to the database but does not hold the key can neither edit
an event nor recompute the chain after an edit. Event ids are taken from the head row under the
same lock that orders the chain, so they are gap-free and a deleted event shows as a gap.
The head row and the checkpoints live outside the events table: a cut tail shows as a chain
that ends before the head (or before a checkpoint) does.

Ledger rows hold opaque ids and digests only. Personal evidence (IP address, user agent) sits
in a side table that erasure clears; the event keeps a keyed digest of it.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal.crypto import keyed_digest
from portal.db import canonical_json
from portal.db import db
from portal.db import utcnow
from portal.keys import UnknownKey
from portal.keys import keyset

SUBJECT_TYPES = ("consent", "subscription", "opt_in", "restriction", "erasure", "contact")

#: The fields an event's HMAC covers, in the order they are described in the README.
HASHED_FIELDS = (
    "id",
    "occurred_at",
    "contact_ref",
    "subject_type",
    "subject_ref",
    "action",
    "value_from",
    "value_to",
    "text_version",
    "text_sha256",
    "method",
    "actor",
    "evidence_ref",
    "evidence_digest",
    "language",
    "jurisdiction",
    "legal_basis",
    "purpose",
    "rule_version",
    "key_id",
    "prev_hash",
)


class LedgerEvent(db.Model):
    __tablename__ = "ledger_events"
    __table_args__ = (
        sa.CheckConstraint(sa.column("subject_type").in_(SUBJECT_TYPES), name="subject_type"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime]
    # The contact's public id: an opaque reference that outlives the contact row (tombstone).
    contact_ref: Mapped[str] = mapped_column(sa.String(32), index=True)
    subject_type: Mapped[str] = mapped_column(sa.String(20))
    subject_ref: Mapped[str] = mapped_column(sa.String(100), default="")
    action: Mapped[str] = mapped_column(sa.String(30))
    value_from: Mapped[str | None] = mapped_column(sa.String(40))
    value_to: Mapped[str | None] = mapped_column(sa.String(40))
    text_version: Mapped[int | None]
    text_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    method: Mapped[str] = mapped_column(sa.String(30))
    actor: Mapped[str] = mapped_column(sa.String(60))
    evidence_ref: Mapped[str | None] = mapped_column(sa.String(200))
    evidence_digest: Mapped[str | None] = mapped_column(sa.String(64))
    language: Mapped[str | None] = mapped_column(sa.String(10))
    jurisdiction: Mapped[str | None] = mapped_column(sa.String(20))
    legal_basis: Mapped[str | None] = mapped_column(sa.String(30))
    purpose: Mapped[str | None] = mapped_column(sa.String(200))
    rule_version: Mapped[int | None]
    key_id: Mapped[str] = mapped_column(sa.String(40))
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)

    def hashed_content(self) -> bytes:
        """Return the canonical bytes the event's HMAC is computed over."""
        return _hashed_content({name: getattr(self, name) for name in HASHED_FIELDS})


class LedgerEvidence(db.Model):
    """Personal evidence of an event, kept apart so that erasure can clear it."""

    __tablename__ = "ledger_evidence"

    event_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_events.id"), primary_key=True)
    ip_address: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(500))


class LedgerHead(db.Model):
    """The single row that orders appends: locked by every writer, updated with every event."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_event_id: Mapped[int] = mapped_column(default=0)
    last_hash: Mapped[str] = mapped_column(sa.String(64), default="")


class LedgerCheckpoint(db.Model):
    """A signed record of the chain's head at a moment, for spotting a cut tail later."""

    __tablename__ = "ledger_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int]
    event_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[str] = mapped_column(sa.String(40))
    signature: Mapped[str] = mapped_column(sa.String(64))

    def signed_content(self) -> bytes:
        return f"checkpoint:{self.event_id}:{self.event_hash}".encode()


@dataclass(frozen=True)
class Evidence:
    """Where a decision came from; personal, so stored apart from the event."""

    ip_address: str | None = None
    user_agent: str | None = None

    def digest(self, key_id: str) -> str:
        content = canonical_json({"ip": self.ip_address, "ua": self.user_agent})
        return keyed_digest("ledger", key_id, content.encode())


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _hashed_content(fields: dict) -> bytes:
    """Return the canonical bytes the HMAC of an event with these fields is computed over."""
    hashed = {name: fields[name] for name in HASHED_FIELDS}
    hashed["occurred_at"] = _timestamp(hashed["occurred_at"])
    return canonical_json(hashed).encode()


# The statements of an append, built once: constructing a statement costs more than running
# it, and Core skips the unit of work, which would otherwise be most of an append's cost.
_HEAD = LedgerHead.__table__
READ_HEAD = (
    sa.select(_HEAD.c.last_event_id, _HEAD.c.last_hash).where(_HEAD.c.id == 1).with_for_update()
)
MOVE_HEAD = (
    sa.update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(last_event_id=sa.bindparam("event_id"), last_hash=sa.bindparam("event_hash"))
)
_HEAD_IDENTITY = sa.inspect(LedgerHead).identity_key_from_primary_key((1,))
_INSERT_EVENT = sa.insert(LedgerEvent.__table__)
_INSERT_EVIDENCE = sa.insert(LedgerEvidence.__table__)


def lock_head():
    """Lock the head row until the transaction ends and return its last event's id and hash.

    FOR UPDATE on PostgreSQL (SQLite's BEGIN IMMEDIATE holds the write lock already): ids stay
    gap-free and the chain unforked. Every writer takes it before any other row it will change
    and reads what it changes after it, so writers queue in one order (no deadlock) and each
    sees what the one before it committed.

    Changes the caller made to loaded objects (a contact's opt-in status, say) are not flushed
    by this statement but by the next one, after the head is locked: flushed first, they would
    lock their rows before the head, and a writer holding the head and wanting those rows
    would deadlock with this one.
    """
    with db.session.no_autoflush:
        head = db.session.execute(READ_HEAD).first()
    if head is None:
        # The migration creates it; a missing head means the database was tampered with.
        raise RuntimeError("the ledger head row is missing; run 'flask db upgrade'")
    return head


def next_event(
    head,
    *,
    contact_ref: str,
    subject_type: str,
    action: str,
    method: str,
    actor: str,
    subject_ref: str = "",
    value_from: str | None = None,
    value_to: str | None = None,
    text_version: int | None = None,
    text_sha256: str | None = None,
    evidence_ref: str | None = None,
    evidence: Evidence | None = None,
    language: str | None = None,
    jurisdiction: str | None = None,
    legal_basis: str | None = None,
    purpose: str | None = None,
    rule_version: int | None = None,
) -> dict:
    """Return the row of the event that follows `head` (the locked head row: its last event's
    id and hash), chained to it and keyed with the active ledger key; nothing is written."""
    if subject_type not in SUBJECT_TYPES:
        raise ValueError(f"unknown ledger subject type {subject_type!r}")
    keys = keyset("ledger")
    row = {
        "id": head.last_event_id + 1,
        "occurred_at": utcnow(),
        "contact_ref": contact_ref,
        "subject_type": subject_type,
        "subject_ref": subject_ref,
        "action": action,
        "value_from": value_from,
        "value_to": value_to,
        "text_version": text_version,
        "text_sha256": text_sha256,
        "method": method,
        "actor": actor,
        "evidence_ref": evidence_ref,
        "evidence_digest": evidence.digest(keys.active_id) if evidence else None,
        "language": language,
        "jurisdiction": jurisdiction,
        "legal_basis": legal_basis,
        "purpose": purpose,
        "rule_version": rule_version,
        "key_id": keys.active_id,
        "prev_hash": head.last_hash,
    }
    row["hash"] = keyed_digest("ledger", keys.active_id, _hashed_content(row))
    return row


def evidence_row(event_id: int, evidence: Evidence | None) -> dict | None:
    """Return the personal evidence row of an event, or None when there is none to keep."""
    if evidence is None or not (evidence.ip_address or evidence.user_agent):
        return None
    return {
        "event_id": event_id,
        "ip_address": evidence.ip_address,
        "user_agent": (evidence.user_agent or "")[:500] or None,
    }


def append(**fields) -> LedgerEvent:
    """Append one event (the fields of next_event) to the chain in the current transaction and
    return it.

    The event is written at once (it is not added to the session): the returned object is a
    read-only copy of the row. The head stays locked until the transaction ends (lock_head).
    """
    row = next_event(lock_head(), **fields)
    db.session.execute(_INSERT_EVENT, row)
    kept = evidence_row(row["id"], fields.get("evidence"))
    if kept is not None:
        db.session.execute(_INSERT_EVIDENCE, kept)
    db.session.execute(MOVE_HEAD, {"event_id": row["id"], "event_hash": row["hash"]})
    # A copy of the head loaded earlier in this session (by a checkpoint, say) is now stale.
    loaded = db.session.identity_map.get(_HEAD_IDENTITY)
    if loaded is not None:
        db.session.expire(loaded)
    # As before, the caller's changes made up to the event reach the database with it (a
    # no-op when there are none).
    db.session.flush()
    return LedgerEvent(**row)


def clear_evidence(contact_ref: str) -> int:
    """Delete the personal evidence of a contact's events (erasure); return how many rows."""
    event_ids = sa.select(LedgerEvent.id).where(LedgerEvent.contact_ref == contact_ref)
    result = db.session.execute(
        sa.delete(LedgerEvidence).where(LedgerEvidence.event_id.in_(event_ids))
    )
    return result.rowcount


def history(contact_ref: str) -> list[LedgerEvent]:
    """Return a contact's events, oldest first."""
    statement = (
        sa.select(LedgerEvent)
        .where(LedgerEvent.contact_ref == contact_ref)
        .order_by(LedgerEvent.id)
    )
    return list(db.session.scalars(statement))


def checkpoint() -> LedgerCheckpoint:
    """Record the current head as a signed checkpoint and return it."""
    head = lock_head()
    keys = keyset("ledger")
    mark = LedgerCheckpoint(
        event_id=head.last_event_id, event_hash=head.last_hash, key_id=keys.active_id
    )
    mark.signature = keyed_digest("ledger", mark.key_id, mark.signed_content())
    db.session.add(mark)
    db.session.flush()
    return mark


@dataclass(frozen=True)
class Report:
    """The outcome of a verification: how many events were checked and the first problem."""

    checked: int
    last_event_id: int
    bad_event_id: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _events_from(first_id: int) -> Iterator[LedgerEvent]:
    statement = (
        sa.select(LedgerEvent)
        .where(LedgerEvent.id >= first_id)
        .order_by(LedgerEvent.id)
        .execution_options(yield_per=1000)
    )
    # yield_per streams through a server-side cursor on PostgreSQL: close it even when the
    # walk stops at the first break, instead of leaving it open until garbage collection.
    events = db.session.scalars(statement)
    try:
        yield from events
    finally:
        events.close()


def _checkpoint_problem(mark: LedgerCheckpoint) -> str | None:
    try:
        expected = keyed_digest("ledger", mark.key_id, mark.signed_content())
    except UnknownKey:
        return f"checkpoint {mark.id} uses ledger key {mark.key_id!r}, which is not configured"
    if expected != mark.signature:
        return f"checkpoint {mark.id} has a bad signature (edited)"
    return None


def verify(from_checkpoint: bool = False, expect: tuple[int, str] | None = None) -> Report:
    """Walk the chain and return the first break: an edit, a gap, a recomputed hash, a cut tail.

    With ``from_checkpoint`` the walk starts at the newest valid checkpoint instead of the first
    event. ``expect`` is a checkpoint (event id, hash) kept outside the database.
    """
    marks = list(db.session.scalars(sa.select(LedgerCheckpoint).order_by(LedgerCheckpoint.id)))
    for mark in marks:
        problem = _checkpoint_problem(mark)
        if problem:
            return Report(0, 0, mark.event_id, problem)
    start_id, prev_hash = 1, ""
    if from_checkpoint and marks and marks[-1].event_id > 0:
        anchor = db.session.get(LedgerEvent, marks[-1].event_id)
        if anchor is None or anchor.hash != marks[-1].event_hash:
            return Report(
                0,
                0,
                marks[-1].event_id,
                f"event {marks[-1].event_id} does not match checkpoint {marks[-1].id}",
            )
        start_id, prev_hash = anchor.id, anchor.prev_hash

    known = {mark.event_id: mark.event_hash for mark in marks}
    if expect:
        known[expect[0]] = expect[1]
    checked, expected_id = 0, start_id
    for event in _events_from(start_id):
        if event.id != expected_id:
            return Report(
                checked,
                expected_id - 1,
                expected_id,
                f"event {expected_id} is missing (the next event is {event.id})",
            )
        if event.prev_hash != prev_hash:
            return Report(
                checked,
                event.id,
                event.id,
                f"event {event.id} does not link to event {event.id - 1}",
            )
        try:
            expected = keyed_digest("ledger", event.key_id, event.hashed_content())
        except UnknownKey:
            return Report(
                checked,
                event.id,
                event.id,
                f"event {event.id} uses ledger key {event.key_id!r}, which is not configured",
            )
        if expected != event.hash:
            return Report(
                checked,
                event.id,
                event.id,
                f"event {event.id} was altered: its content does not match its HMAC",
            )
        if event.id in known and known[event.id] != event.hash:
            return Report(
                checked,
                event.id,
                event.id,
                f"event {event.id} differs from the checkpoint taken of it",
            )
        prev_hash, expected_id, checked = event.hash, expected_id + 1, checked + 1

    last_id = expected_id - 1
    head = db.session.get(LedgerHead, 1)
    recorded = [(mark_id, "a checkpoint") for mark_id in known]
    if head is not None:
        recorded.append((head.last_event_id, "the head"))
        if head.last_event_id == last_id and head.last_hash != prev_hash:
            return Report(
                checked, last_id, last_id, f"event {last_id} does not match the head of the chain"
            )
    for mark_id, source in sorted(recorded, reverse=True):
        if mark_id > last_id:
            return Report(
                checked,
                last_id,
                last_id + 1,
                f"the chain ends at event {last_id} but {source} records event "
                f"{mark_id}: events {last_id + 1} to {mark_id} are missing (cut tail)",
            )
    return Report(checked, last_id)
