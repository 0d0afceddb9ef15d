"""The database: the Flask-SQLAlchemy extension, the model base and the column types we share."""

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import UTC
from datetime import datetime
from functools import cache
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from flask import g
from flask import has_request_context
from flask import request
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import registry

log = logging.getLogger(__name__)

# Stable constraint names, so that migrations read the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite returns naive datetimes even for DateTime(timezone=True); converting on the way in
    and out keeps comparisons and ledger hashes identical on both databases.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def canonical_json(value) -> str:
    """Serialise a value the same way every time (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Base(DeclarativeBase):
    registry = registry(
        metadata=sa.MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime()},
    )


#: Blueprints whose GET and HEAD views only read (R1: a contact's link pages); see Session.
READ_ONLY_BLUEPRINTS: set[str] = set()
#: Blueprints whose GET views write: only the tracking pixel and redirect (R1), which append
#: engagement events. On SQLite their transactions take the write lock at the start.
GET_WRITING_BLUEPRINTS: set[str] = set()


def reading_only_from_here() -> None:
    """Say that the rest of this request only reads: a view that has committed its one change
    and now shows the result. On PostgreSQL what it reads next runs in autocommit.

    SQLite's next transaction still takes the write lock: reading beside the other worker's
    writes instead made the htmx save slower there (measured: 3.4 against 4.2 CPU ms).
    """
    g.reading_only = True


@lru_cache(maxsize=8)
def _autocommit(engine: sa.Engine) -> sa.Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


class Session(FlaskSession):
    """Flask-SQLAlchemy's session; what only reads on PostgreSQL reads in autocommit: a
    contact's link page's GET, and what a view reads after reading_only_from_here().

    PostgreSQL's default isolation (READ COMMITTED) gives each statement its own snapshot, so
    a transaction adds nothing to a request that only reads, but its BEGIN and the ROLLBACK
    when the connection goes back to the pool: two round trips of a contact page's four.
    SQLite keeps its transaction: there one BEGIN makes the page's reads one snapshot.
    """

    def get_bind(self, mapper=None, clause=None, bind=None, **kwargs):
        found = super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)
        if (
            isinstance(found, sa.Engine)
            and found.dialect.name == "postgresql"
            and has_request_context()
            and (
                (request.method in ("GET", "HEAD") and request.blueprint in READ_ONLY_BLUEPRINTS)
                or g.get("reading_only", False)
            )
        ):
            return _autocommit(found)
        return found


db = SQLAlchemy(model_class=Base, session_options={"class_": Session})
migrate = Migrate()


@contextmanager
def outage_tolerated(worker: str, *, once: bool = False):
    """Let a long-running worker's round survive the database being unavailable.

    SQLite busy past its timeout, or the database server restarting: the round's transaction is
    rolled back, and the worker waits and tries again (what it had leased returns when the
    lease ends). A single pass (`once`) reports it instead.
    """
    try:
        yield
    except sa.exc.OperationalError as error:
        db.session.rollback()
        if once:
            raise
        log.warning("%s: database unavailable, retrying: %s", worker, error.orig)


#: How long a SQLite writer waits for the one before it: in the writers' queue among threads,
#: and in SQLite's own busy handler.
BUSY_TIMEOUT_SECONDS = 10


class _WriterQueue:
    """The portal's writers to one SQLite file, waiting their turn on a lock the system wakes.

    SQLite lets one transaction write at a time; a writer that finds the lock taken polls it
    (its busy handler sleeps 1, 2, 5, 10... ms between tries), so under steady writes a
    request sleeps for many times the few milliseconds the other writer held the lock. Here
    a writer first waits on this queue: the threads of one process on a lock, the processes
    on `flock` of a file beside the database; both wake the next writer the moment the one
    before commits or rolls back. SQLite's own lock still decides (the queue only orders the
    waiting): a program outside the portal that writes, or a writer that lost its place (its
    wait here timed out), is met by SQLite's busy timeout as before.

    A wait on another thread is bounded (`QueuedConnection.busy_seconds`, SQLite's busy
    timeout, after which SQLite's own wait begins); a wait on another process is
    not (`flock` has no timeout, and polling it would bring the sleeps back): the process
    ahead is inside a transaction of its own, which ends, and a process that dies leaves the
    queue with its descriptor. A request stuck behind it is ended by the server's worker
    timeout, as one stuck in SQLite's busy handler would have failed after its timeout.
    """

    def __init__(self, path: str):
        self.path = f"{path}-writers"
        self._threads = threading.Lock()
        self._owner: int | None = None
        self._fd: int | None = None
        self._pid: int | None = None

    def _file(self) -> int:
        # A descriptor inherited through fork shares its lock with the parent: each process
        # opens its own.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def forget_parent(self) -> None:
        """In a child just forked: start afresh, whatever the parent's threads held.

        The inherited descriptor is closed, never unlocked: unlocking it would release the
        parent's lock, which the descriptor shares.
        """
        if self._fd is not None and self._pid != os.getpid():
            os.close(self._fd)
        self._threads = threading.Lock()
        self._owner = self._fd = self._pid = None

    def enter(self, timeout: float) -> bool:
        """Wait for this writer's turn; return whether it holds the queue (then leave() it)."""
        me = threading.get_ident()
        if self._owner == me:
            # A second write transaction of the same thread: left to SQLite's busy timeout.
            return False
        if not self._threads.acquire(timeout=timeout):
            return False
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except OSError:
            self._threads.release()
            return False
        except BaseException:  # a signal's handler raising while the process waits
            self._threads.release()
            raise
        self._owner = me
        return True

    def leave(self) -> None:
        self._owner = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


_queues: dict[str, _WriterQueue] = {}


def _after_fork_in_child() -> None:
    for queue in _queues.values():
        queue.forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


class QueuedConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions wait on the database's writer queue."""

    queue: _WriterQueue
    busy_seconds = BUSY_TIMEOUT_SECONDS
    #: The process in which this connection holds the queue (0: it does not). A connection
    #: carried into a forked child must not leave the queue there on the parent's behalf.
    _queued_in = 0

    def begin_writing(self) -> None:
        if self._queued_in != os.getpid():  # not again while this connection holds it
            self._queued_in = os.getpid() if self.queue.enter(self.busy_seconds) else 0
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._leave()
            raise

    def _leave(self) -> None:
        if self._queued_in:
            mine, self._queued_in = self._queued_in == os.getpid(), 0
            if mine:
                self.queue.leave()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._leave()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._leave()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._leave()

    def __del__(self) -> None:
        # Dropped without a commit, rollback or close (the driver then ends the transaction
        # itself but calls no method of ours): the queue must not stay held.
        self._leave()


def _queued_factory(database: str) -> type[QueuedConnection]:
    path = os.path.abspath(database)
    queue = _queues.setdefault(path, _WriterQueue(path))
    return type("QueuedConnectionTo", (QueuedConnection,), {"queue": queue})


def _configure_sqlite(engine: sa.Engine) -> None:
    """Make SQLite safe for several processes: WAL, a busy timeout and BEGIN IMMEDIATE."""

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection):
        # A transaction that may write takes the write lock at its start, so two writers
        # queue instead of one failing with "database is locked" halfway through. A GET or
        # HEAD request never writes (R1), but for tracking's, so it reads under WAL beside the
        # writers.
        # Sent on the driver's connection: the same statement as SQLAlchemy's recipe, less a
        # whole execution's bookkeeping on every request (its events, context and result).
        if (
            has_request_context()
            and request.method in ("GET", "HEAD")
            and request.blueprint not in GET_WRITING_BLUEPRINTS
        ):
            connection.connection.dbapi_connection.execute("BEGIN")
        else:
            dbapi_connection = connection.connection.dbapi_connection
            if isinstance(dbapi_connection, QueuedConnection):
                dbapi_connection.begin_writing()
            else:
                dbapi_connection.execute("BEGIN IMMEDIATE")


def _ping_when_idle(engine: sa.Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use when it has been idle, and replace it if dead.

    SQLAlchemy's pool_pre_ping checks before every use: a round trip per request. A server
    restart or idle timeout drops connections that sat unused; one used moments ago is alive
    (and should it fail anyway, SQLAlchemy invalidates the whole pool on that error).
    """

    @sa.event.listens_for(engine, "checkin")
    def on_checkin(_dbapi_connection, record):
        record.info["checked_in_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection, record, _proxy):
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is not None and time.monotonic() - checked_in_at < idle_seconds:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            # The ping must not leave a transaction open for the connection's next user.
            dbapi_connection.rollback()
        except Exception as error:
            # The pool discards this connection and checks out another (SQLAlchemy's
            # documented way for a checkout handler to say "dead").
            raise sa.exc.DisconnectionError(str(error)) from error


class NulCharacter(ValueError):
    """Text to be written or compared holds a NUL character: refused on both databases.

    PostgreSQL cannot store one in text (its driver raises, a 500), where SQLite would keep
    it. No person types one: it comes in a crafted request, which the web layer answers
    with its "could not be understood" page (hardening). Forms that refuse control
    characters next to their field do so before anything reaches the database.
    """


def holds_nul(parameters) -> bool:
    """Say whether any text among a statement's parameters holds a NUL character.

    They come as a dict or a tuple, or for executemany a list of them (SQLAlchemy flattens
    some of those into one tuple: its "insertmanyvalues"), so each level is looked into.
    """
    values = parameters.values() if isinstance(parameters, dict) else parameters
    for value in values:
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict | list | tuple) and holds_nul(value):
            return True
    return False


def detached(model: type, values: dict):
    """Return an instance of a mapped class holding a row's values, outside any session.

    For a row read on a driver's cursor (`DriverStatement`), to be read, never written: the
    values are set as the ORM sets those it loads, without the constructor, which records each
    one as a change to flush and costs more than the query that read them.
    """
    _configured(model)
    instance = model.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


@cache
def _configured(model: type) -> None:
    # The constructor would configure the mappers on a process's first instance; without it,
    # the class's attributes are not set up yet.
    sa.orm.configure_mappers()


class DriverStatement:
    """A Core statement compiled once for one database, run on a driver's cursor.

    For the few requests whose SQLAlchemy execution would cost more than the statement (the
    one-click lane, a contact page's GET): the parameters are converted by their column types
    and, for a SELECT, the values read back by theirs, as SQLAlchemy would; only its
    per-execution bookkeeping is skipped. The caller refuses text holding NUL itself.
    """

    def __init__(self, statement, dialect: sa.Dialect, column_keys=None):
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        self.compiled = compiled
        self.sql = compiled.string
        # A list bound to IN (bindparam(..., expanding=True)): one placeholder per item, the
        # statement's text made once per length of the lists.
        self.expanding = tuple(name for name, bind in compiled.binds.items() if bind.expanding)
        self._expanded: dict[tuple, tuple] = {}
        self.positions = compiled.positiontup  # None where the driver takes names
        # The values written into the statement (a literal 1, "pending"), bound as well.
        self.fixed = {
            name: bind.value for name, bind in compiled.binds.items() if not bind.required
        }
        # Each type as this database has it (SQLite's DATETIME writes and reads its own text).
        self.processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        selected = statement.selected_columns if isinstance(statement, sa.Selectable) else ()
        self.readers = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                        for column in selected]
        # Only the columns whose type converts what the driver gives (SQLite's datetimes).
        self._converting = tuple(
            (index, reader) for index, reader in enumerate(self.readers) if reader is not None
        )

    def run(self, cursor, values: dict):
        values = {
            name: self._process(name, value) if name in self.processors else value
            for name, value in (self.fixed | values).items()
        }
        sql, positions = self.sql, self.positions
        if self.expanding:
            lengths = tuple(len(values[name]) for name in self.expanding)
            if lengths not in self._expanded:
                state = self.compiled.construct_expanded_state(values)
                self._expanded[lengths] = (state.statement, state.positiontup)
            sql, positions = self._expanded[lengths]
            for name in self.expanding:
                values.update((f"{name}_{number}", item)
                              for number, item in enumerate(values.pop(name), start=1))
        if positions is not None:
            return cursor.execute(sql, tuple(values[name] for name in positions))
        return cursor.execute(sql, values)

    def _process(self, name: str, value):
        processor = self.processors[name]
        return [processor(item) for item in value] if name in self.expanding else processor(value)

    def read(self, row: tuple) -> tuple:
        """Return a row of this SELECT's result with each value converted by its type."""
        if len(row) != len(self.readers):
            raise ValueError(f"a row of {len(row)} values for {len(self.readers)} columns")
        if not self._converting:
            return tuple(row)
        values = list(row)
        for index, reader in self._converting:
            if values[index] is not None:
                values[index] = reader(values[index])
        return tuple(values)


def _refuse_nul_characters(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "before_cursor_execute")
    def check(_connection, _cursor, _statement, parameters, _context, _executemany):
        if parameters and holds_nul(parameters):
            raise NulCharacter("a NUL character in text")


def _render_item(type_, obj, _context):
    """Write UTCDateTime columns into migrations as the plain type they store."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def init_app(app) -> None:
    """Bind the database and migrations to the app."""
    # A database error's text and the log never carry a statement's values: they may be a
    # contact's address or name, which would then outlive an erasure in the logs. Added to
    # the engine options a deployment sets, never replaced by them.
    options = {**(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}), "hide_parameters": True}
    url = sa.engine.make_url(app.config.get("SQLALCHEMY_DATABASE_URI") or "sqlite://")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # A relative path is the instance folder's, as Flask-SQLAlchemy reads it.
        database = os.path.join(app.instance_path, url.database)
        options["connect_args"] = {
            "factory": _queued_factory(database), **options.get("connect_args", {})
        }
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    db.init_app(app)
    directory = Path(app.root_path).parent / "migrations"
    migrate.init_app(
        app,
        db,
        directory=str(directory),
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )
    with app.app_context():
        _refuse_nul_characters(db.engine)
        if db.engine.dialect.name == "sqlite":
            _configure_sqlite(db.engine)
        else:
            # A SQLite file has no server to drop the connection: nothing to ping.
            _ping_when_idle(db.engine, app.config["PORTAL_DB_PING_IDLE_SECONDS"])


#: The largest value of PostgreSQL's ``integer``, the type of every id and version number.
INTEGER_MAX = 2**31 - 1


def whole_number(value: str | None, maximum: int = INTEGER_MAX) -> int | None:
    """Return the number a request field spells in ASCII digits, or None if it spells none
    from 0 to `maximum`.

    ``str.isdigit()`` also accepts "²" and other digits that ``int()`` refuses, and a number
    past the database's integer fails on insert: either would be a 500.
    """
    if not value or len(value) > len(str(maximum)) or not (value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number <= maximum else None
