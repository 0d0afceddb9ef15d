"""Background jobs (issue 3, item 5): resumable, exactly once per item, progress to watch."""

import threading
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from portal import contacts
from portal import jobs
from portal import suppression
from portal.db import db
from portal.keys import parse_keyset
from portal.reencryption import REENCRYPT


class Killed(BaseException):
    """Stands for the worker process dying: nothing of the current item is committed."""


@pytest.fixture
def suppress_kind():
    """A job kind whose items each add a suppression entry: a second go at an item would
    violate the unique digest, so the table shows that every item ran exactly once."""
    crash_at = {"key": None}

    def items_after(params, after, limit):
        return [(n, n) for n in range(after + 1, min(params["count"], after + limit) + 1)]

    def process(params, n):
        if crash_at["key"] == n:
            crash_at["key"] = None
            raise Killed
        suppression.suppress(f"item{n}@jobs.example", "test")
        return "suppressed"

    kind = jobs.register(jobs.JobKind(name="test-suppress", label="Test",
                                      count=lambda params: params["count"],
                                      items_after=items_after, process=process))
    yield kind, crash_at
    jobs.KINDS.pop(kind.name)


def suppressed_items() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(suppression.Suppression)
                             .where(suppression.Suppression.reason == "test"))


def test_a_job_killed_halfway_resumes_without_doing_any_item_twice(app, suppress_kind):
    _kind, crash_at = suppress_kind
    job = jobs.start("test-suppress", {"count": 450}, created_by="test")
    db.session.commit()
    crash_at["key"] = 301  # past the first page, so resuming crosses a page boundary
    claimed = jobs.claim()
    with pytest.raises(Killed):
        jobs.run(claimed)
    db.session.rollback()
    assert suppressed_items() == 300
    assert db.session.get(jobs.Job, job.id).status == "running"

    # The dead worker's lease runs out; the next worker picks the job up where it stopped.
    assert jobs.claim() is None
    db.session.get(jobs.Job, job.id).lease_until = jobs.utcnow() - jobs.LEASE
    db.session.commit()
    assert jobs.work(once=True) == 1
    finished = db.session.get(jobs.Job, job.id)
    assert finished.status == "done"
    assert finished.done == finished.total == 450
    assert finished.outcomes == {"suppressed": 450}
    assert suppressed_items() == 450


def test_a_failing_item_fails_the_job_visibly(app, suppress_kind):
    kind, _crash_at = suppress_kind
    jobs.KINDS[kind.name] = jobs.JobKind(
        name=kind.name, label=kind.label, count=kind.count, items_after=kind.items_after,
        process=lambda params, n: 1 / 0,
    )
    job = jobs.start("test-suppress", {"count": 3}, created_by="test")
    db.session.commit()
    jobs.work(once=True)
    failed = db.session.get(jobs.Job, job.id)
    assert failed.status == "failed"
    assert "ZeroDivisionError" in failed.error


def test_a_stopped_worker_hands_the_job_back(app, suppress_kind):
    import threading

    job = jobs.start("test-suppress", {"count": 10}, created_by="test")
    db.session.commit()
    stop = threading.Event()
    jobs.run(jobs.claim(), on_progress=lambda j: j.done == 4 and stop.set(), stop=stop)
    paused = db.session.get(jobs.Job, job.id)
    assert (paused.status, paused.done) == ("queued", 4)
    jobs.work(once=True)
    assert db.session.get(jobs.Job, job.id).done == 10
    assert suppressed_items() == 10


def test_unknown_kind_is_refused(app):
    with pytest.raises(jobs.JobError, match="unknown job kind 'nope'"):
        jobs.start("nope", created_by="test")


ROTATED_KEY = "cm90YXRlZC1rZXktZm9yLXRoZS10ZXN0LXN1aXRlLTAwMDA="


def tax_ids(count: int) -> list[contacts.Contact]:
    """Return contacts, each with a sensitive tax id DE-00000000n stored under key k1."""
    field = contacts.field_definition("tax_id") or contacts.define_field(
        "tax_id", "Tax ID", sensitive=True)
    people = []
    for n in range(count):
        contact = contacts.add_contact(f"p{n}@example.com", method="cli", actor="t")
        contacts.set_field_value(contact, field, f"DE-{n:09d}")
        people.append(contact)
    db.session.commit()
    return people


@contextmanager
def rotated_to_k2(app):
    """Make k2 the active field key, k1 still there to decrypt older values; yield the app's
    key sets, and give the field's back as they were afterwards."""
    keys = app.extensions["portal_keys"]
    original = keys["field"]
    keys["field"] = parse_keyset("field", {
        "active": "k2",
        "keys": {"k1": app.config["PORTAL_FIELD_KEYS"]["keys"]["k1"], "k2": ROTATED_KEY},
    })
    try:
        yield keys
    finally:
        keys["field"] = original


def reencrypt() -> jobs.Job:
    """Start the re-encryption job, run it to its end and return it."""
    job = jobs.start(REENCRYPT.name, created_by="test")
    db.session.commit()
    jobs.work(once=True)
    return db.session.get(jobs.Job, job.id)


def stored_tax_id(contact: contacts.Contact) -> contacts.FieldValue:
    return next(value for value in contact.values if value.field.name == "tax_id")


def test_reencryption_moves_every_value_to_the_active_key(app):
    people = tax_ids(5)
    field = contacts.field_definition("tax_id")
    with rotated_to_k2(app) as keys:
        job = reencrypt()
        assert (job.total, job.status) == (5, "done")
        stored = db.session.scalars(
            sa.select(contacts.FieldValue).where(contacts.FieldValue.field_id == field.id)
        ).all()
        assert {value.key_id for value in stored} == {"k2"}
        for n, contact in enumerate(people):
            assert contacts.field_value(contact, "tax_id", reveal=True) == f"DE-{n:09d}"
        # With k1 retired, every value still decrypts.
        keys["field"] = parse_keyset("field", {"active": "k2", "keys": {"k2": ROTATED_KEY}})
        assert contacts.field_value(people[0], "tax_id", reveal=True) == "DE-000000000"


def test_a_value_that_does_not_decrypt_is_left_as_it_is_and_the_rotation_goes_on(app, caplog):
    people = tax_ids(3)
    # A value copied from another contact: it is bound to that contact, so it cannot decrypt.
    swapped = stored_tax_id(people[1])
    swapped.ciphertext = copied = stored_tax_id(people[0]).ciphertext
    db.session.commit()
    with rotated_to_k2(app):
        finished = reencrypt()
        assert finished.status == "done"
        assert finished.error is None
        assert finished.outcomes == {"re-encrypted": 2,
                                     "does not decrypt, left as it is (ids in the log)": 1}
        for n in (0, 2):
            assert stored_tax_id(people[n]).key_id == "k2"
            assert contacts.field_value(people[n], "tax_id", reveal=True) == f"DE-{n:09d}"
        left = stored_tax_id(people[1])
        assert left.key_id == "k1"
        assert left.ciphertext == copied
        # The log names the value and its contact by id, and holds none of the values.
        assert f"field value {left.id} of contact {people[1].public_id}" in caplog.text
        assert "DE-" not in caplog.text


def test_jobs_run_shows_a_progress_bar(runner, app, suppress_kind):
    job = jobs.start("test-suppress", {"count": 5}, created_by="test")
    db.session.commit()
    result = runner.invoke(args=["jobs", "run", str(job.id)])
    assert result.exit_code == 0, result.output
    # Without a terminal click prints the bar's label only; the summary line follows.
    assert result.output.splitlines()[0] == "Test"
    assert f"job {job.id} done: 5 items" in result.output
    again = runner.invoke(args=["jobs", "run", str(job.id)])
    assert again.exit_code == 1
    assert "is finished" in again.output


def test_jobs_start_names_unknown_kinds_in_one_line(runner):
    result = runner.invoke(args=["jobs", "start", "nope"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown job kind 'nope'")
    assert "Traceback" not in result.output


def test_a_busy_database_does_not_stop_the_job_worker(app, suppress_kind, monkeypatch, caplog):
    job = jobs.start("test-suppress", {"count": 3}, created_by="test")
    db.session.commit()
    stop, calls, real_claim = threading.Event(), [], jobs.claim

    def claim():
        calls.append(1)
        if len(calls) == 1:  # as SQLite answers when busy past its timeout
            raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
        found = real_claim()
        if found is None:
            stop.set()
        return found

    monkeypatch.setattr(jobs, "claim", claim)
    assert jobs.work(stop=stop, idle_seconds=0) == 1
    assert db.session.get(jobs.Job, job.id).status == "done"
    assert suppressed_items() == 3
    assert "database unavailable, retrying" in caplog.text
