"""The consent ledger: the chain, verification against each tampering, evidence, checkpoints."""

import hashlib
import hmac
import threading
from datetime import UTC
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import ledger
from portal.crypto import keyed_digest
from portal.db import db
from portal.ledger import LedgerCheckpoint
from portal.ledger import LedgerEvent
from portal.ledger import LedgerEvidence
from portal.ledger import LedgerHead


def _append(count: int = 1, contact_ref: str = "ledger-test", **fields) -> list[LedgerEvent]:
    return [
        ledger.append(
            contact_ref=contact_ref,
            subject_type="consent",
            subject_ref=f"consent-{number}",
            action="granted",
            value_to="granted",
            method="page",
            actor="contact",
            **fields,
        )
        for number in range(count)
    ]


def _head() -> LedgerHead:
    return db.session.get(LedgerHead, 1)


@pytest.fixture
def events(app) -> list[int]:
    """Five committed events; return their ids."""
    appended = _append(5)
    db.session.commit()
    return [event.id for event in appended]


@pytest.fixture
def tamper(app, dialect):
    """Run statements as someone with write access to the database but not the ledger key."""
    if dialect == "postgresql":
        # Inside the test's transaction, so the triggers are back once it is rolled back.
        for table in ("ledger_events", "ledger_checkpoints"):
            db.session.execute(sa.text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"))
        db.session.commit()

    def run(*statements) -> None:
        for statement in statements:
            db.session.execute(statement)
        db.session.commit()

    return run


def _verify(runner, *options):
    result = runner.invoke(args=["ledger", "verify", *options])
    return result.exit_code, result.output


def _assert_broken_at(runner, event_id: int, *options, problem: str = "") -> str:
    exit_code, output = _verify(runner, *options)
    assert exit_code != 0
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"Error: ledger broken at event {event_id}:"), output
    assert problem in lines[0]
    return lines[0]


def test_events_chain_with_gap_free_ids(app):
    start = _head()
    start_id, start_hash = start.last_event_id, start.last_hash
    appended = _append(4)
    assert [event.id for event in appended] == list(range(start_id + 1, start_id + 5))
    assert appended[0].prev_hash == start_hash
    for earlier, later in zip(appended, appended[1:], strict=False):
        assert later.prev_hash == earlier.hash
    assert (_head().last_event_id, _head().last_hash) == (appended[-1].id, appended[-1].hash)
    assert len({event.hash for event in appended}) == 4


def test_an_event_hash_is_an_hmac_under_the_ledger_key(app):
    (event,) = _append()
    assert event.key_id == "k1"
    assert event.hash == keyed_digest("ledger", "k1", event.hashed_content())
    assert event.hash != hashlib.sha256(event.hashed_content()).hexdigest()


def test_an_unknown_subject_type_is_refused(app):
    with pytest.raises(ValueError, match="subject type"):
        ledger.append(
            contact_ref="x", subject_type="gossip", action="a", method="m", actor="a"
        )


def test_history_lists_a_contacts_events_oldest_first(app):
    _append(2, contact_ref="alice")
    _append(1, contact_ref="bob")
    _append(1, contact_ref="alice")
    ids = [event.id for event in ledger.history("alice")]
    assert len(ids) == 3
    assert ids == sorted(ids)


def test_verify_passes_on_a_fresh_chain(runner, events):
    exit_code, output = _verify(runner)
    assert exit_code == 0, output
    assert f"head at event {events[-1]}" in output


def test_verify_passes_after_a_reload(app, events):
    db.session.expire_all()
    reloaded = db.session.get(LedgerEvent, events[0])
    assert reloaded.occurred_at.tzinfo is not None
    assert reloaded.occurred_at.utcoffset() == timedelta(0)
    report = ledger.verify()
    assert report.ok, report.problem


def test_a_new_session_reads_back_the_hashed_content(app, events):
    # The timestamps read back by another session must hash exactly as they were written.
    with Session(bind=db.session.connection()) as other:
        for event in other.scalars(sa.select(LedgerEvent).where(LedgerEvent.id.in_(events))):
            assert event.occurred_at.tzinfo == UTC
            assert keyed_digest("ledger", event.key_id, event.hashed_content()) == event.hash


@pytest.mark.parametrize(
    "change",
    [
        {"value_to": "revoked"},
        {"actor": "someone-else"},
        {"contact_ref": "another-contact"},
        {"text_sha256": "0" * 64},
        {"hash": "f" * 64},
    ],
    ids=["value", "actor", "contact", "text-digest", "hash"],
)
def test_verify_names_an_edited_event(runner, events, tamper, change):
    edited = events[2]
    tamper(sa.update(LedgerEvent).where(LedgerEvent.id == edited).values(**change))
    _assert_broken_at(runner, edited)


def test_verify_names_an_event_whose_time_was_moved(runner, events, tamper):
    edited = events[1]
    moved = db.session.get(LedgerEvent, edited).occurred_at - timedelta(days=30)
    tamper(sa.update(LedgerEvent).where(LedgerEvent.id == edited).values(occurred_at=moved))
    _assert_broken_at(runner, edited, problem="altered")


def test_verify_names_a_deleted_event(runner, events, tamper):
    deleted = events[2]
    tamper(sa.delete(LedgerEvent).where(LedgerEvent.id == deleted))
    _assert_broken_at(runner, deleted, problem="missing")


def _rewrite_chain_from(first_id: int, digest) -> None:
    """Edit an event and recompute every hash from it onward, as an attacker without the key."""
    rewritten = db.session.scalars(
        sa.select(LedgerEvent).where(LedgerEvent.id >= first_id).order_by(LedgerEvent.id)
    ).all()
    rewritten[0].value_to = "revoked"
    previous = rewritten[0].prev_hash
    for event in rewritten:
        event.prev_hash = previous
        event.hash = digest(event.hashed_content())
        previous = event.hash
    _head().last_hash = previous
    db.session.commit()


@pytest.mark.parametrize(
    "digest",
    [
        lambda content: hashlib.sha256(content).hexdigest(),
        lambda content: hmac.new(b"a key the attacker made up", content, "sha256").hexdigest(),
    ],
    ids=["plain-sha256", "other-hmac-key"],
)
def test_verify_names_the_first_event_of_a_recomputed_chain(runner, events, tamper, digest):
    _rewrite_chain_from(events[1], digest)
    _assert_broken_at(runner, events[1], problem="altered")


def test_verify_catches_a_cut_tail_that_only_the_head_remembers(runner, events, tamper):
    tamper(sa.delete(LedgerEvent).where(LedgerEvent.id >= events[3]))
    _assert_broken_at(runner, events[3], problem="cut tail")


def _checkpoint(runner) -> tuple[int, str]:
    result = runner.invoke(args=["ledger", "checkpoint"])
    assert result.exit_code == 0, result.output
    event_id, _, digest = result.output.strip().partition(":")
    return int(event_id), digest


def _cut_tail_and_rewind_head(tamper, first_removed: int) -> None:
    survivor = db.session.get(LedgerEvent, first_removed - 1)
    tamper(
        sa.delete(LedgerEvent).where(LedgerEvent.id >= first_removed),
        sa.update(LedgerHead).values(last_event_id=survivor.id, last_hash=survivor.hash),
    )


def test_checkpoint_prints_the_head(runner, events):
    event_id, digest = _checkpoint(runner)
    assert event_id == events[-1]
    assert digest == db.session.get(LedgerEvent, events[-1]).hash


def test_verify_catches_a_cut_tail_below_a_checkpoint(runner, events, tamper):
    _checkpoint(runner)
    _cut_tail_and_rewind_head(tamper, events[3])
    _assert_broken_at(runner, events[3], problem="cut tail")


def test_an_outside_checkpoint_catches_a_cut_tail_the_database_forgot(runner, events, tamper):
    event_id, digest = _checkpoint(runner)
    _cut_tail_and_rewind_head(tamper, events[3])
    tamper(sa.delete(LedgerCheckpoint))
    # Nothing inside the database remembers the tail any more; the copy kept outside does.
    exit_code, output = _verify(runner)
    assert exit_code == 0, output
    _assert_broken_at(runner, events[3], "--expect", f"{event_id}:{digest}", problem="cut tail")


def test_verify_accepts_an_outside_checkpoint_of_an_intact_chain(runner, events):
    event_id, digest = _checkpoint(runner)
    _append(2)
    db.session.commit()
    exit_code, output = _verify(runner, "--expect", f"{event_id}:{digest}")
    assert exit_code == 0, output


def test_verify_refuses_a_chain_that_differs_from_an_outside_checkpoint(runner, events):
    _assert_broken_at(runner, events[2], "--expect", f"{events[2]}:{'a' * 64}")


@pytest.mark.parametrize("expect", ["42", "x:" + "a" * 64, "42:abc"])
def test_a_malformed_expect_is_one_clear_line(runner, expect):
    exit_code, output = _verify(runner, "--expect", expect)
    assert exit_code != 0
    assert output.strip().splitlines() == [
        "Error: --expect must look like 42:<64 hex characters>"
    ]


def test_verify_from_the_checkpoint_walks_only_the_newer_events(runner, events):
    event_id, _ = _checkpoint(runner)
    _append(2)
    db.session.commit()
    exit_code, output = _verify(runner, "--from-checkpoint")
    assert exit_code == 0, output
    assert "3 events checked" in output
    assert f"head at event {event_id + 2}" in output


def test_verify_from_the_checkpoint_still_catches_an_edit_after_it(runner, events, tamper):
    _checkpoint(runner)
    (later, _) = _append(2)
    db.session.commit()
    tamper(sa.update(LedgerEvent).where(LedgerEvent.id == later.id).values(actor="x"))
    _assert_broken_at(runner, later.id, "--from-checkpoint", problem="altered")


def test_verify_from_the_checkpoint_catches_an_edited_anchor(runner, events, tamper):
    event_id, _ = _checkpoint(runner)
    tamper(sa.update(LedgerEvent).where(LedgerEvent.id == event_id).values(actor="x"))
    _assert_broken_at(runner, event_id, "--from-checkpoint")


def test_verify_catches_a_forged_checkpoint(runner, events, tamper):
    _checkpoint(runner)
    tamper(sa.update(LedgerCheckpoint).values(event_id=events[1]))
    _assert_broken_at(runner, events[1], problem="bad signature")


def test_evidence_is_kept_apart_and_cleared_by_erasure(app):
    evidence = ledger.Evidence(ip_address="203.0.113.7", user_agent="Mozilla/5.0 (test)")
    (with_evidence,) = _append(contact_ref="erase-me", evidence=evidence)
    (without,) = _append(contact_ref="erase-me")
    (someone_else,) = _append(contact_ref="keep-me", evidence=evidence)
    db.session.commit()

    stored = db.session.get(LedgerEvidence, with_evidence.id)
    assert (stored.ip_address, stored.user_agent) == ("203.0.113.7", "Mozilla/5.0 (test)")
    assert db.session.get(LedgerEvidence, without.id) is None
    assert "203.0.113.7" not in with_evidence.hashed_content().decode()
    assert with_evidence.evidence_digest == evidence.digest("k1")

    assert ledger.clear_evidence("erase-me") == 1
    db.session.commit()
    assert db.session.get(LedgerEvidence, with_evidence.id) is None
    assert db.session.get(LedgerEvidence, someone_else.id) is not None
    report = ledger.verify()
    assert report.ok, report.problem


def test_postgresql_refuses_to_update_or_delete_the_ledger(app, dialect, events):
    if dialect != "postgresql":
        pytest.skip("the append-only trigger exists on PostgreSQL")
    statements = [
        sa.text("UPDATE ledger_events SET actor = 'x' WHERE id = :id").bindparams(id=events[0]),
        sa.text("DELETE FROM ledger_events WHERE id = :id").bindparams(id=events[-1]),
        sa.text("TRUNCATE ledger_events CASCADE"),
    ]
    for statement in statements:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with db.session.begin_nested():
                db.session.execute(statement)
    report = ledger.verify()
    assert report.ok, report.problem
    assert report.last_event_id == events[-1]


def test_concurrent_appends_on_postgresql_keep_one_chain(base_app):
    # Commits for real (no rollback fixture): the rows stay in the test database.
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers; the race is PostgreSQL's")
        start = db.session.get(LedgerHead, 1).last_event_id
    rounds, writers = 6, 2
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            for _ in range(rounds):
                with base_app.app_context():
                    barrier.wait(timeout=10)
                    ledger.append(
                        contact_ref=f"concurrent-{number}",
                        subject_type="contact",
                        action="created",
                        method="test",
                        actor=f"writer-{number}",
                    )
                    db.session.commit()
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors

    with base_app.app_context():
        head = db.session.get(LedgerHead, 1)
        assert head.last_event_id == start + rounds * writers
        report = ledger.verify()
        assert report.ok, report.problem
        assert report.last_event_id == head.last_event_id
