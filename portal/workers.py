"""Running the workers: the outbox and the jobs, from the command line or inside the demo server.

`flask outbox work` and `flask jobs work` run one worker each (several on several hosts with
PostgreSQL; one outbox worker with SQLite). `flask serve` runs the development server with both
workers (and, in the demo, the mailbox) in-process: started once, in the reloader's child.
"""

import os
import threading
from datetime import timedelta

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from portal import consent
from portal import doi
from portal import jobs
from portal import mailbox
from portal import outbox
from portal import tracking
from portal.db import db
from portal.db import outage_tolerated

outbox_cli = AppGroup("outbox", help="Deliver queued mail.")
jobs_cli = AppGroup("jobs", help="Start, run and watch background jobs.")


@outbox_cli.command("work")
@click.option("--once", is_flag=True, help="Stop when nothing is due instead of waiting.")
def outbox_work_command(once):
    """Deliver queued mail through SMTP until stopped."""
    tally = outbox.work(once=once)
    click.echo(f"sent {tally.sent}, refused {tally.refused}, retrying {tally.retry}, "
               f"failed {tally.failed}")


@jobs_cli.command("work")
@click.option("--once", is_flag=True, help="Stop when no job is left instead of waiting.")
def jobs_work_command(once):
    """Run queued jobs until stopped."""
    count = jobs.work(once=once)
    click.echo(f"ran {count} job(s)")


@jobs_cli.command("start")
@click.argument("kind")
def jobs_start_command(kind):
    """Queue a job of a kind (see `flask jobs kinds`) and print its id."""
    try:
        job = jobs.start(kind, created_by="cli")
    except jobs.JobError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"queued job {job.id}: {job.label} ({job.total} items)")


@jobs_cli.command("kinds")
def jobs_kinds_command():
    """List the kinds of job that can be started."""
    for kind in jobs.KINDS.values():
        click.echo(f"{kind.name}: {kind.label}")


@jobs_cli.command("run")
@click.argument("job_id", type=int)
def jobs_run_command(job_id):
    """Run one job in the foreground with a progress bar (resumes where it stopped)."""
    job = jobs.claim(job_id)
    if job is None:
        raise click.ClickException(f"job {job_id} does not exist, is finished, or is running "
                                   "in another worker")
    with click.progressbar(length=max(job.total, job.done), label=job.label,
                           show_pos=True) as bar:
        bar.update(job.done)

        def advance(current):
            bar.length = max(bar.length, current.total)
            bar.update(1)

        job = jobs.run(job, on_progress=advance)
    if job.status == "failed":
        raise click.ClickException(f"job {job.id} failed: {job.error}")
    click.echo(f"job {job.id} {job.status}: {job.done} items")


@jobs_cli.command("list")
def jobs_list_command():
    """List recent jobs."""
    for job in jobs.recent(20):
        click.echo(f"{job.id}\t{job.status}\t{job.done}/{job.total}\t{job.label}")


def _in_thread(app, name: str, target, stop: threading.Event) -> threading.Thread:
    def loop():
        with app.app_context():
            target(stop=stop)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


#: Jobs the housekeeping queues whenever they have work (in production: cron, `flask doi ...`).
SCHEDULED_JOBS = (doi.REMIND, doi.PRUNE)


def queue_due_jobs() -> list[jobs.Job]:
    """Queue each scheduled kind of job that has work and is not already queued or running."""
    queued = []
    for kind in SCHEDULED_JOBS:
        busy = db.session.scalar(
            sa.select(jobs.Job.id)
            .where(jobs.Job.kind == kind.name, jobs.Job.status.in_(("queued", "running")))
            .limit(1)
        )
        if busy is None and kind.count({}):
            queued.append(jobs.start(kind.name, created_by="housekeeping"))
    return queued


def purge_withdrawn() -> tuple[int, int]:
    """Destroy what withdrawn consents no longer allow once the undo window has closed: the
    sensitive values of a storage consent, the recorded engagement of tracking. Return how
    many of each went (`flask consent purge`, and the housekeeping every minute)."""
    window = timedelta(seconds=current_app.config["PORTAL_LINK_MAX_AGE"]["undo"])
    return consent.purge_withdrawn_values(window), tracking.purge_withdrawn(window)


def housekeeping(*, stop: threading.Event, every_seconds: float = 60.0) -> None:
    """Run the scheduled housekeeping until stopped (in production: cron runs the commands)."""
    while not stop.is_set():
        with outage_tolerated("housekeeping"):
            purge_withdrawn()
            queue_due_jobs()
            db.session.commit()
        stop.wait(every_seconds)


def start_background(app) -> threading.Event:
    """Start the in-process workers (and the demo mailbox); return the event that stops them."""
    stop = threading.Event()
    if app.config["PORTAL_DEMO"]:
        mailbox.start_server(app)
    _in_thread(app, "outbox-worker", outbox.work, stop)
    _in_thread(app, "job-worker", jobs.work, stop)
    _in_thread(app, "housekeeping", housekeeping, stop)
    return stop


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--reload/--no-reload", default=True, show_default=True)
def serve_command(host, port, reload):
    """Serve the portal for development, with the workers (and the demo mailbox) in-process."""
    from werkzeug.serving import run_simple

    app = current_app._get_current_object()
    # With the reloader, this command runs twice: in a watcher and in the child that serves.
    # Only the serving process starts the workers, so they run once.
    if not reload or os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        start_background(app)
    run_simple(host, port, app, use_reloader=reload, threaded=True)


def init_app(app) -> None:
    """Register the worker commands."""
    for command in (outbox_cli, jobs_cli, serve_command):
        app.cli.add_command(command)
