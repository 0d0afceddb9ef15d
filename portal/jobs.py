"""Background jobs with progress: bulk work runs as a job row that a worker picks up.

A job walks its items in the order of an integer key. Each item's effect, the job's cursor and
its progress are committed in one transaction, so a worker killed halfway leaves a job that the
next worker resumes after the last committed item: no item is done twice, none is skipped.
A claimed job carries a lease; a job whose worker died is claimed again when the lease ends.
A job that failed keeps its cursor: resumed, it goes on after the last committed item.
"""

import logging
import threading
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal.db import db
from portal.db import outage_tolerated
from portal.db import utcnow
from portal.rules import RuleError

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed")
LEASE = timedelta(minutes=2)
PAGE = 200


class JobError(ValueError):
    """A job cannot be started as asked; the message says why."""


@dataclass(frozen=True)
class JobKind:
    """What a kind of job does: how many items, which items after a key, and one item's work.

    `process` returns an outcome label (counted on the job, e.g. "skipped: opted out") or None.
    """

    name: str
    label: str
    count: Callable[[dict], int]
    items_after: Callable[[dict, int, int], Iterable[tuple[int, object]]]
    process: Callable[[dict, object], str | None]


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Make a kind of job available to start and to run."""
    KINDS[kind.name] = kind
    return kind


class Job(db.Model):
    __tablename__ = "jobs"
    __table_args__ = (sa.CheckConstraint(sa.column("status").in_(STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(40))
    params: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    status: Mapped[str] = mapped_column(sa.String(10), default="queued")
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    # The key of the last item whose effect is committed.
    cursor: Mapped[int] = mapped_column(default=0)
    outcomes: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    error: Mapped[str | None] = mapped_column(sa.String(500))
    created_by: Mapped[str] = mapped_column(sa.String(60))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]

    @property
    def label(self) -> str:
        kind = KINDS.get(self.kind)
        return kind.label if kind else self.kind

    @property
    def percent(self) -> int:
        if self.status == "done":
            return 100
        return int(100 * self.done / self.total) if self.total else 0

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


def start(kind: str, params: dict | None = None, *, created_by: str) -> Job:
    """Queue a job of a registered kind and return it."""
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    params = params or {}
    job = Job(kind=kind, params=params, created_by=created_by, total=KINDS[kind].count(params))
    db.session.add(job)
    db.session.flush()
    return job


def claim(job_id: int | None = None) -> Job | None:
    """Lease the oldest runnable job (or the given one) to this worker; None if there is none."""
    now = utcnow()
    runnable = sa.or_(
        Job.status == "queued",
        sa.and_(Job.status == "running", Job.lease_until < now),
    )
    statement = sa.select(Job).where(runnable).order_by(Job.id).limit(1)
    if job_id is not None:
        statement = statement.where(Job.id == job_id)
    job = db.session.scalar(statement.with_for_update(skip_locked=True))
    if job is None:
        db.session.commit()
        return None
    job.status = "running"
    job.started_at = job.started_at or now
    job.lease_until = now + LEASE
    db.session.commit()
    return job


def _stopping(stop) -> bool:
    return stop is not None and stop.is_set()


def run(job: Job, on_progress: Callable[[Job], None] | None = None, stop=None) -> Job:
    """Process a claimed job's remaining items, committing each together with the cursor."""
    kind = KINDS[job.kind]
    job_id = job.id
    try:
        while page := list(kind.items_after(job.params, job.cursor, PAGE)):
            for key, item in page:
                if _stopping(stop):
                    # Hand the job back; the next worker resumes after the cursor.
                    job.status, job.lease_until = "queued", None
                    db.session.commit()
                    return job
                outcome = kind.process(job.params, item)
                job.cursor = key
                job.done += 1
                if outcome:
                    job.outcomes = {**job.outcomes, outcome: job.outcomes.get(outcome, 0) + 1}
                job.lease_until = utcnow() + LEASE
                db.session.commit()
                if on_progress:
                    on_progress(job)
    except Exception as error:  # a job must end visibly, whatever its kind raised
        db.session.rollback()
        job = db.session.get(Job, job_id)
        job.status, job.error = "failed", describe(error)
        job.finished_at, job.lease_until = utcnow(), None
        db.session.commit()
        # The error's type, not its text, which may quote what the job handled (as describe()
        # says); the traceback is logged with addresses and tokens masked (portal/logs.py).
        log.error("job %s (%s) failed: %s", job_id, kind.name, type(error).__name__,
                  exc_info=error)
        return job
    job.status, job.finished_at, job.lease_until = "done", utcnow(), None
    job.total = max(job.total, job.done)
    db.session.commit()
    return job


def describe(error: Exception) -> str:
    """Say in plain words what stopped a job: the kind of error, never its text, which may quote
    what the job was handling (a database error quotes its statement and values)."""
    if isinstance(error, RuleError):
        # Its text names the rule's field and what is wrong with it, never a contact's data.
        return f"a rule it uses no longer holds: {error}; fix the rule, then resume"
    if isinstance(error, sa.exc.DBAPIError):
        what = f"the database failed or could not be reached ({type(error.orig or error).__name__})"
    elif isinstance(error, sa.exc.SQLAlchemyError):
        what = f"the database layer failed ({type(error).__name__})"
    else:
        what = f"an unexpected error ({type(error).__name__})"
    return f"{what}; the server log has the details"


def resume(job: Job) -> Job:
    """Queue a failed job again, to go on after its last committed item; raise JobError unless
    it failed."""
    if job.status != "failed":
        raise JobError(f"job {job.id} has not failed: there is nothing to resume")
    job.status, job.error, job.finished_at, job.lease_until = "queued", None, None, None
    db.session.flush()
    return job


def work(*, once: bool = False, idle_seconds: float = 1.0, stop=None) -> int:
    """Run runnable jobs until stopped (or until none is left, with `once`); return how many."""
    count = 0
    stop = stop or threading.Event()  # never set: run until the process ends
    while not stop.is_set():
        with outage_tolerated("job worker", once=once):
            job = claim()
            if job is not None:
                run(job, stop=stop)
                count += 1
                continue
        if once:
            break
        stop.wait(idle_seconds)
    return count


def recent(limit: int = 50) -> list[Job]:
    """Return the newest jobs first."""
    return list(db.session.scalars(sa.select(Job).order_by(Job.id.desc()).limit(limit)))


