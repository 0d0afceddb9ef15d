"""Watching PostgreSQL's locks from a test: whether another backend waits for one."""

import time


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
