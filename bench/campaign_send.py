"""Benchmark sending a campaign against a plain smtplib loop, both to one local SMTP sink.

    .venv/bin/python bench/campaign_send.py [--db sqlite|postgresql] [--messages N]

Prepares a database (a SQLite file in a temporary folder, or the PostgreSQL database
`portal_bench_h3`, dropped and created afresh, dropped at the end), migrates it, and loads N
contacts (default 10,000), double opt-in and subscribed to one list, and one campaign for it.
An SMTP sink (aiosmtpd, in a process of its own) receives both phases:

- baseline: one smtplib connection, a loop that builds each message (text and HTML parts, a
  List-Unsubscribe header) with the standard library and sends it;
- portal: on PostgreSQL, `flask jobs work` and `flask outbox work` already running as two
  processes, as deployed; on SQLite (one writer) the job and then the outbox in this process.
  The clock starts when the campaign is sent (the job queued, as the back office's send
  button does) and stops when the outbox has handed every message to the sink. That
  includes selecting the audience, rendering each message in the sandbox with its footer and
  unsubscribe headers, the gate when queued and again at hand-off, and a commit per message.

The sink counts the messages and distinct recipients of each phase: the run fails unless
each received exactly N, one per contact. Prints messages/s for both, the ratio (issue 5's
target: at least 0.5) and the CPU time per message of the portal's two workers.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from preference_page import BIN  # noqa: E402
from preference_page import ROOT  # noqa: E402
from preference_page import _cpu_of  # noqa: E402
from preference_page import _create_postgresql  # noqa: E402
from preference_page import _drop_postgresql  # noqa: E402
from preference_page import _free_port  # noqa: E402
from preference_page import _portal_environment  # noqa: E402
from preference_page import _revision  # noqa: E402
from preference_page import _run  # noqa: E402

DATABASE = "portal_bench_h3"
TARGET = 0.5
TEXT = (
    "Hello {{ first_name }},\n\n"
    + "Here is what happened this month, in a few paragraphs of plain text. " * 6
    + "\n\nLeave this list: {{ unsubscribe_url }}\n"
)
HTML = (
    "<h2>Hello {{ first_name }}</h2>"
    + "<p>Here is what happened <strong>this month</strong>, in a few paragraphs.</p>" * 6
    + '<p><a href="{{ unsubscribe_url }}">Leave this list</a></p>'
)


def sink_main(port: int) -> None:
    """Run the SMTP sink; on SIGUSR1 print the phase's counts as JSON and start a new phase."""
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.count, self.recipients = 0, set()

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            self.count += 1
            self.recipients.update(envelope.rcpt_tos)
            return "250 Message accepted"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()

    def report(_signal, _frame):
        print(json.dumps({"count": handler.count, "distinct": len(handler.recipients)}), flush=True)
        handler.count, handler.recipients = 0, set()

    def stop(_signal, _frame):
        controller.stop()
        sys.exit(0)

    signal.signal(signal.SIGUSR1, report)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        signal.pause()  # Python runs the handlers in this thread, between pauses


class Sink:
    def __init__(self, port: int):
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(port)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline().strip() == "ready"

    def phase(self) -> dict:
        self.process.send_signal(signal.SIGUSR1)
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def load(count: int) -> int:
    """Load `count` contacts on one list and a campaign for it; return the campaign's id."""
    from portal import campaigns
    from portal import contacts
    from portal import create_app
    from portal import lists
    from portal.contacts import OptIn
    from portal.db import db
    from portal.db import utcnow

    app = create_app()
    with app.app_context():
        newsletter = lists.create_list("bench", "Bench newsletter")
        first = contacts.add_contact(
            "bench0@example.test",
            first_name="Ada",
            method="staff",
            actor="bench",
            opt_in=OptIn.SINGLE_USER,
        )
        contacts.record_opt_in(first, OptIn.DOUBLE, method="staff", actor="bench")
        event_id = lists.set_subscription(
            first, newsletter, True, method="staff", actor="bench"
        ).event_id
        # The rest in bulk; every subscription points at the one real ledger event (the
        # benchmark measures sending, not the ledger).
        now = utcnow()
        for start in range(1, count, 5000):
            numbers = range(start, min(start + 5000, count))
            rows = [
                {
                    "public_id": secrets.token_urlsafe(16),
                    "email": f"bench{n}@example.test",
                    "first_name": f"Name{n}",
                    "kind": "lead",
                    "opt_in_status": "double",
                    "link_version": 1,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in numbers
            ]
            db.session.execute(sa.insert(contacts.Contact), rows)
            ids = db.session.scalars(
                sa.select(contacts.Contact.id).where(
                    contacts.Contact.email.in_([row["email"] for row in rows])
                )
            ).all()
            db.session.execute(
                sa.insert(lists.Subscription),
                [
                    {
                        "contact_id": contact_id,
                        "list_id": newsletter.id,
                        "status": "subscribed",
                        "event_id": event_id,
                        "changed_at": now,
                    }
                    for contact_id in ids
                ],
            )
        campaign = campaigns.create(
            subject="Monthly news",
            text_body=TEXT,
            html_body=HTML,
            list_id=newsletter.id,
            author="bench",
        )
        db.session.commit()
        return campaign.id


def baseline(port: int, count: int) -> tuple[float, float]:
    """Send `count` messages with a plain smtplib loop over one connection; return seconds and
    CPU seconds."""
    text = TEXT.replace("{{ first_name }}", "Ada").replace(
        "{{ unsubscribe_url }}", "https://bench.example/o/x"
    )
    html = HTML.replace("{{ first_name }}", "Ada").replace(
        "{{ unsubscribe_url }}", "https://bench.example/o/x"
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    with smtplib.SMTP("127.0.0.1", port) as connection:
        for number in range(count):
            message = EmailMessage()
            message["From"] = "privacy@example.com"
            message["To"] = f"bench{number}@example.test"
            message["Subject"] = "Monthly news"
            message["Message-ID"] = make_msgid(domain="bench.example")
            message["List-Unsubscribe"] = "<https://bench.example/o/x>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            message.set_content(text)
            message.add_alternative(html, subtype="html")
            connection.send_message(message)
    return time.perf_counter() - started, time.process_time() - cpu_started


def portal_one_process(campaign_id: int) -> tuple[float, float, str]:
    """Send the campaign on SQLite: the job, then the outbox, in this process.

    SQLite has one writer, and a waiting writer only polls: two worker processes that each
    commit and begin again at once starve one another past the busy timeout (the workers then
    wait and retry), so here they take turns.
    """
    from portal import campaigns
    from portal import create_app
    from portal import jobs
    from portal import outbox
    from portal.db import db

    app = create_app()
    with app.app_context():
        campaign = db.session.get(campaigns.Campaign, campaign_id)
        started, cpu_started = time.perf_counter(), time.process_time()
        job = campaigns.send(campaign, author="bench")
        db.session.commit()
        jobs.work(once=True)
        queued = time.perf_counter() - started
        cpu_queued = time.process_time() - cpu_started
        tally = outbox.work(once=True)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        db.session.refresh(job)
        count = max(tally.handled, 1)
        state = (
            f"job {job.status}, outcomes {job.outcomes}, sent {tally.sent}, refused "
            f"{tally.refused}, failed {tally.failed}; the job took {queued:.1f} s "
            f"({1000 * cpu_queued / count:.2f} CPU ms per message), the outbox "
            f"{elapsed - queued:.1f} s ({1000 * (cpu - cpu_queued) / count:.2f} CPU ms per message)"
        )
    return elapsed, cpu, state


def portal(campaign_id: int, count: int, env: dict, timeout: float) -> tuple[float, float, str]:
    """Send the campaign through the job and outbox workers; return seconds, CPU s, job state."""
    from portal import campaigns
    from portal import create_app
    from portal import jobs
    from portal.db import db
    from portal.outbox import OutboxMessage

    flask = [str(BIN / "flask"), "--app", "wsgi"]
    workers = [
        subprocess.Popen([*flask, command, "work"], cwd=ROOT, env=env, start_new_session=True)
        for command in ("jobs", "outbox")
    ]
    app = create_app()
    try:
        time.sleep(4)  # both workers up and idle, as in a deployment
        cpu_before = [_cpu_of(worker.pid) for worker in workers]
        with app.app_context():
            campaign = db.session.get(campaigns.Campaign, campaign_id)
            started = time.perf_counter()
            job = campaigns.send(campaign, author="bench")
            db.session.commit()
            job_id = job.id
        # Watched through an engine of its own, read-only: on SQLite the portal's sessions
        # take the write lock, which would hold the workers up.
        watcher = sa.create_engine(env["FLASK_SQLALCHEMY_DATABASE_URI"])
        done = sa.select(sa.func.count()).where(
            OutboxMessage.campaign_id == campaign_id,
            OutboxMessage.status.in_(("sent", "refused", "failed")),
        )
        job_state = sa.select(jobs.Job.status, jobs.Job.outcomes).where(jobs.Job.id == job_id)
        while True:
            time.sleep(0.05)
            with watcher.connect() as connection:
                finished = connection.scalar(done)
                status, outcomes = connection.execute(job_state).one()
            if finished >= count or status == "failed":
                break
            if any(worker.poll() is not None for worker in workers):
                print("a worker stopped; see its error above")
                break
            if time.perf_counter() - started > timeout:
                break
        elapsed = time.perf_counter() - started
        cpu = [
            _cpu_of(worker.pid) - before for worker, before in zip(workers, cpu_before, strict=True)
        ]
        state = (
            f"job {status}, outcomes {outcomes}, messages handed over {finished}; CPU ms "
            f"per message: job worker {1000 * cpu[0] / count:.2f}, outbox worker "
            f"{1000 * cpu[1] / count:.2f}"
        )
        cpu = sum(cpu)
        watcher.dispose()
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(10)
    return elapsed, cpu, state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--postgresql-server", default="postgresql+psycopg://postgres@127.0.0.1")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink_main(args.sink)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    if args.db == "postgresql":
        database_url = _create_postgresql(args.postgresql_server, DATABASE)
    else:
        database_url = f"sqlite:///{work}/portal.sqlite3"
    sink = Sink(_free_port())
    try:
        env = _portal_environment(database_url, _free_port())
        env.update({"FLASK_MAIL_SERVER": "127.0.0.1", "FLASK_MAIL_PORT": str(sink.port)})
        print(
            f"revision {_revision()}, {args.db}, {args.messages} messages; load average "
            f"{os.getloadavg()[0]:.1f}"
        )
        _run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], env, "migration")
        os.environ.update(env)
        loading = time.perf_counter()
        campaign_id = load(args.messages)
        print(f"loaded {args.messages} contacts in {time.perf_counter() - loading:.1f} s")

        base_seconds, base_cpu = baseline(sink.port, args.messages)
        base_received = sink.phase()
        print(f"smtplib loop: {base_seconds:.1f} s", flush=True)
        if args.db == "sqlite":
            seconds, cpu, state = portal_one_process(campaign_id)
        else:
            seconds, cpu, state = portal(campaign_id, args.messages, env, 20 * base_seconds + 60)
        received = sink.phase()
    finally:
        sink.stop()
        if args.db == "postgresql":
            _drop_postgresql(args.postgresql_server, DATABASE)
        shutil.rmtree(work, ignore_errors=True)

    ok = all(
        r == {"count": args.messages, "distinct": args.messages} for r in (base_received, received)
    )
    base_rate, rate = args.messages / base_seconds, args.messages / seconds
    ratio = rate / base_rate
    print(f"load average after {os.getloadavg()[0]:.1f}")
    print("| phase | seconds | messages/s | × smtplib | CPU ms/message | received |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    print(
        f"| smtplib loop | {base_seconds:.1f} | {base_rate:.0f} | 1 | "
        f"{1000 * base_cpu / args.messages:.2f} | "
        f"{base_received['count']} to {base_received['distinct']} |"
    )
    print(
        f"| portal campaign | {seconds:.1f} | {rate:.0f} | {ratio:.2f} | "
        f"{1000 * cpu / args.messages:.2f} | {received['count']} to {received['distinct']} |"
    )
    print(state)
    print(f"× smtplib by CPU: {base_cpu / cpu:.2f}")
    verdict = "met" if ratio >= TARGET else "missed"
    print(f"target ≥ {TARGET}: {verdict}" + ("" if ok else "; RECEIVED COUNTS WRONG"))
    return 0 if ok and ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
