"""The SQLite writer queue (portal.db): a write transaction waits its turn on it (threads on a
lock, processes on flock) and leaves it when it commits, rolls back, closes or fails to begin.

The queued connections here have a busy timeout of 0: a writer that reached SQLite's write lock
while another held it would fail at once with "database is locked", so a writer that waits and
then commits shows that the queue made it wait. Every wait is bounded, and the queue's own wait
is longer than any of those bounds, so a writer never let in shows as a timed-out join rather
than as one that goes on late without its turn.
"""

import gc
import multiprocessing
import sqlite3
import threading

import pytest
import sqlalchemy as sa
from conftest import make_config

from portal import create_app
from portal.db import _queued_factory
from portal.db import db

# Python 3.12 warns when a process with threads forks: here that is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks")

#: Seconds to wait for what should happen.
WAIT = 5
#: Seconds a writer that should be waiting is watched not to go on.
PAUSE = 0.2


class Database:
    """A SQLite file in WAL mode holding one counter row, and its queued connections."""

    def __init__(self, path: str):
        self.path = path
        self.factory = _queued_factory(path)
        self.factory.busy_seconds = 60  # longer than WAIT, see the module's docstring

    def connect(self, busy_ms: int = 0, factory=None) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, factory=factory or self.factory, isolation_level=None, timeout=WAIT
        )
        connection.execute("SELECT value FROM counter")  # opens the WAL, with a busy timeout
        connection.execute(f"PRAGMA busy_timeout = {busy_ms}")
        return connection

    def value(self) -> int:
        connection = sqlite3.connect(self.path)
        try:
            return connection.execute("SELECT value FROM counter").fetchone()[0]
        finally:
            connection.close()


def create_counter(path: str) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE counter (value INTEGER NOT NULL)")
    connection.execute("INSERT INTO counter VALUES (0)")
    connection.close()


@pytest.fixture
def database(tmp_path) -> Database:
    path = str(tmp_path / "queue.sqlite3")
    create_counter(path)
    return Database(path)


def increment(connection: sqlite3.Connection) -> None:
    # Read, then write what was read: a lost update would show in the count.
    (value,) = connection.execute("SELECT value FROM counter").fetchone()
    connection.execute("UPDATE counter SET value = ?", (value + 1,))


def write_once(database: Database, entered: threading.Event | None = None) -> None:
    connection = database.connect()
    try:
        connection.begin_writing()
        if entered is not None:
            entered.set()
        increment(connection)
        connection.commit()
    finally:
        connection.close()


class Worker(threading.Thread):
    """A daemon thread that keeps what its work raised, for finish() to raise again."""

    def __init__(self, work, *args):
        super().__init__(daemon=True)
        self.work, self.args_, self.error = work, args, None

    def run(self):
        try:
            self.work(*self.args_)
        except BaseException as error:
            self.error = error


def start(work, *args) -> Worker:
    worker = Worker(work, *args)
    worker.start()
    return worker


def finish(worker: Worker) -> None:
    worker.join(timeout=WAIT)
    assert not worker.is_alive(), "the writer was not let in"
    if worker.error is not None:
        raise worker.error


def assert_free(database: Database) -> None:
    """Assert that a writer in another thread gets its turn and commits."""
    finish(start(write_once, database))


def assert_waiting(worker: Worker, entered) -> None:
    assert not entered.wait(PAUSE)
    assert worker.is_alive(), f"the writer failed instead of waiting: {worker.error!r}"


def start_waiting_writer(database: Database) -> Worker:
    """Start a writer in another thread, assert that it waits for its turn, and return it."""
    entered = threading.Event()
    writer = start(write_once, database, entered)
    assert_waiting(writer, entered)
    return writer


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_a_second_writer_waits_for_the_first_and_goes_on_once_it_ends(database, end):
    """Another thread's writer waits while the first holds the queue, and goes on once it ends."""
    first = database.connect()
    first.begin_writing()
    increment(first)
    try:
        second = start_waiting_writer(database)
        getattr(first, end)()
        finish(second)
    finally:
        first.close()
    assert database.value() == (2 if end == "commit" else 1)
    assert_free(database)


def test_a_connection_dropped_in_its_transaction_leaves_the_queue(database):
    """A driver connection lost without commit, rollback or close (its last reference gone)
    frees the queue: the next writer goes on, and what the lost one wrote is gone."""
    first = database.connect()
    first.begin_writing()
    increment(first)
    del first
    gc.collect()
    assert_free(database)
    assert database.value() == 1


def test_a_writer_whose_wait_timed_out_leaves_the_holder_its_place(database):
    """A writer that gave up waiting fails on SQLite's lock, not freeing the holder's place."""
    impatient = type("Impatient", (database.factory,), {"busy_seconds": 0.05})

    def give_up():
        connection = database.connect(factory=impatient)
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                connection.begin_writing()
        finally:
            connection.close()

    first = database.connect()
    first.begin_writing()
    increment(first)
    try:
        finish(start(give_up))
        third = start_waiting_writer(database)
        first.commit()
        finish(third)
    finally:
        first.close()
    assert database.value() == 2


def test_a_begin_that_fails_on_an_outside_writer_leaves_the_queue_free(database):
    """A BEGIN IMMEDIATE refused for an outside writer's lock raises and leaves the queue."""
    outside = sqlite3.connect(database.path, isolation_level=None)  # not queued: another program
    failed = database.connect(busy_ms=50)
    try:
        outside.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            failed.begin_writing()
        outside.execute("ROLLBACK")
        assert_free(database)  # while the failed connection is still open
    finally:
        outside.close()
        failed.close()
    assert database.value() == 1


def test_a_second_write_in_the_holding_thread_fails_instead_of_deadlocking(database):
    """The thread holding the queue gets "database is locked" for a second write, not a hang."""

    def nested():
        first = database.connect()
        second = database.connect(busy_ms=50)
        try:
            first.begin_writing()
            increment(first)
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                second.begin_writing()
            first.commit()
        finally:
            first.close()
            second.close()

    finish(start(nested))
    assert database.value() == 1
    assert_free(database)


def test_a_transaction_ended_in_sql_keeps_the_connections_place_until_it_commits(database):
    """A connection whose transaction ended without commit() keeps its place, and leaves at the
    next commit."""
    connection = database.connect()
    try:
        connection.begin_writing()
        increment(connection)
        connection.execute("COMMIT")  # not through commit(): the connection keeps the queue
        connection.begin_writing()
        increment(connection)
        connection.commit()
        assert_free(database)
    finally:
        connection.close()
    assert database.value() == 3


def hold_in_child(database, holding, release):
    connection = database.connect()
    connection.begin_writing()
    increment(connection)
    holding.set()
    assert release.wait(WAIT)
    connection.commit()
    connection.close()


def write_in_child(database, ready, go, entered):
    connection = database.connect()
    ready.set()
    assert go.wait(WAIT)
    connection.begin_writing()
    entered.set()
    increment(connection)
    connection.commit()
    connection.close()


def fork(target, *args):
    """Start `target(*args)` in a forked child."""
    process = multiprocessing.get_context("fork").Process(target=target, args=args)
    process.start()
    return process


def reap(process) -> None:
    process.join(timeout=WAIT)
    if process.is_alive():
        process.kill()
        process.join()


def test_a_child_process_holding_the_queue_makes_the_parents_writer_wait(database):
    """A forked child that holds the queue made before the fork makes the parent's writer wait."""
    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()
    write_once(database)  # the parent's queue has its file open: the child must open its own
    child = fork(hold_in_child, database, holding, release)
    try:
        assert holding.wait(WAIT)
        parent = start_waiting_writer(database)
        release.set()
        finish(parent)
    finally:
        release.set()
        reap(child)
    assert child.exitcode == 0
    assert database.value() == 3


def test_a_forked_child_waits_for_the_parents_writer(database):
    """A forked child's writer, on the queue made before the fork, waits for the parent's."""
    context = multiprocessing.get_context("fork")
    ready, go, entered = context.Event(), context.Event(), context.Event()
    write_once(database)  # the parent's queue has its file open: the child must open its own
    child = fork(write_in_child, database, ready, go, entered)
    try:
        assert ready.wait(WAIT)
        first = database.connect()
        try:
            first.begin_writing()
            increment(first)
            go.set()
            assert not entered.wait(PAUSE)
            assert child.is_alive(), "the child's writer failed instead of waiting"
            first.commit()
        finally:
            first.close()
        assert entered.wait(WAIT)
    finally:
        go.set()
        reap(child)
    assert child.exitcode == 0
    assert database.value() == 3


def hold_queue(queue, held, release):
    assert queue.enter(WAIT)
    held.set()
    try:
        assert release.wait(WAIT)
    finally:
        queue.leave()


@pytest.mark.parametrize("holder", ["forking thread", "other thread"])
def test_a_child_forked_while_the_parent_holds_the_queue_waits_for_it(database, holder):
    """A child forked while a thread of the parent holds the queue waits for it, then writes."""
    queue = database.factory.queue
    context = multiprocessing.get_context("fork")
    ready, go, entered = context.Event(), context.Event(), context.Event()
    if holder == "forking thread":
        assert queue.enter(WAIT)
        let_go = queue.leave
    else:
        held, release = threading.Event(), threading.Event()
        other = start(hold_queue, queue, held, release)
        assert held.wait(WAIT)

        def let_go():
            release.set()
            finish(other)

    child = fork(write_in_child, database, ready, go, entered)
    try:
        try:
            assert ready.wait(WAIT)
            go.set()
            assert not entered.wait(PAUSE)
            assert child.is_alive(), "the child's writer failed instead of waiting"
        finally:
            let_go()
        assert entered.wait(WAIT), "the child was not let in"
    finally:
        go.set()
        reap(child)
    assert child.exitcode == 0
    assert database.value() == 1


THREADS, PROCESSES, INCREMENTS = 4, 2, 40


def increment_many(database, ready):
    # Connected before all start, as a pooled connection is: nothing reads outside the queue
    # while the others write.
    connection = database.connect()
    try:
        ready.wait(WAIT)
        for _ in range(INCREMENTS):
            connection.begin_writing()
            increment(connection)
            connection.commit()
    finally:
        connection.close()


def test_no_write_is_lost_among_threads_and_processes(database):
    """Threads and forked processes incrementing one row through the queue lose no write."""
    ready = multiprocessing.get_context("fork").Barrier(THREADS + PROCESSES + 1)
    write_once(database)  # the parent's queue has its file open: each child must open its own
    children = [fork(increment_many, database, ready) for _ in range(PROCESSES)]
    try:
        threads = [start(increment_many, database, ready) for _ in range(THREADS)]
        ready.wait(WAIT)
        for thread in threads:
            finish(thread)
    finally:
        ready.abort()
        for child in children:
            reap(child)
    assert [child.exitcode for child in children] == [0] * PROCESSES
    assert database.value() == 1 + (THREADS + PROCESSES) * INCREMENTS


def test_two_threads_writing_through_the_portals_engine_take_turns_and_commit(tmp_path):
    """Two threads' write transactions through the app's engine take turns and both commit."""
    path = str(tmp_path / "portal.sqlite3")
    create_counter(path)
    app = create_app(make_config(f"sqlite:///{path}"), instance_path=str(tmp_path))
    with app.app_context():
        engine = db.engine

    @sa.event.listens_for(engine, "connect")
    def no_busy_timeout(dbapi_connection, _record):  # after the portal's own listener
        dbapi_connection.execute("PRAGMA busy_timeout = 0")

    engine.dispose()
    holding, release, entered = threading.Event(), threading.Event(), threading.Event()

    def write(started: threading.Event, then: threading.Event | None):
        with engine.begin() as connection:
            started.set()
            connection.exec_driver_sql("UPDATE counter SET value = value + 1")
            if then is not None:
                assert then.wait(WAIT)

    try:
        first = start(write, holding, release)
        assert holding.wait(WAIT)
        second = start(write, entered, None)
        assert_waiting(second, entered)
        release.set()
        finish(first)
        finish(second)
        assert Database(path).value() == 2
        assert_free(Database(path))
    finally:
        release.set()
        engine.dispose()
