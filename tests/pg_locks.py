"""Watching PostgreSQL's locks from a test: whether another backend waits for one, and a
writer run while the ledger's head is held."""

import threading
import time
from contextlib import contextmanager


def waiting_for_a_lock(connection, timeout: float = 10.0) -> bool:
    """Wait until another backend of this database waits for a lock; say whether one did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND pid <> pg_backend_pid()").scalar_one()
        # PostgreSQL keeps one snapshot of the activity view per transaction: end it.
        connection.rollback()
        if waiting:
            return True
        time.sleep(0.02)
    return False


@contextmanager
def the_ledger_held(engine, write):
    """Hold the ledger's head and run `write` in a thread; once it waits for a lock, yield a
    connection to look at what it holds. Then release the head, wait for the writer to end,
    and fail with whatever it raised."""
    errors = []

    def run():
        try:
            write()
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    with engine.connect() as holder, engine.connect() as probe:
        holder.exec_driver_sql("SELECT 1 FROM ledger_head WHERE id = 1 FOR UPDATE")
        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert waiting_for_a_lock(probe), "the writer never waited for the ledger"
            yield probe
            probe.rollback()
        finally:
            holder.rollback()
            thread.join(timeout=20)
    assert not thread.is_alive(), "the writer never ended"
    assert not errors, errors
