"""Measure how long a change holds SQLite's write lock: the ceiling of writes per second.

    .venv/bin/python bench/write_lock.py [--requests N] [--profile]

SQLite lets one transaction write at a time. A request that changes something takes the
write lock when its write transaction begins (`BEGIN IMMEDIATE`, so that two writers queue
rather than fail halfway; the one-click lane reads before it, without the lock) and holds it
until the commit has reached the disk. However many workers
serve them, such requests cannot complete faster than one per lock hold, so 1 / (mean hold)
is the ceiling of their rate on SQLite, before any other cost.

This script serves requests in this process (Flask's test client, no HTTP server) on a SQLite
database in a temporary folder, loaded as bench/preference_page.py loads it, and times every
write transaction from its BEGIN IMMEDIATE to the end of its COMMIT:

- one-click POST: `POST /o/<token>` with `List-Unsubscribe=One-Click` (issue 5);
- submit POST: the preference form leaving one list (a ledger event, an undo record and a
  notice in the outbox; issue 4), its form read by a page GET first (not timed).

Prints, for each, the mean and median lock hold, the ceiling it implies, and the CPU time per
request in this process. Compare the ceiling with the hello-world's rate in the same
machine's gunicorn benchmark: issue 4 asks 0.20x of it for the submit POST, issue 5 0.35x for
the one-click POST.
"""

import argparse
import cProfile
import os
import pstats
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import preference_page as setup
import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
#: The portal's public address in the benchmark environment (its only trusted host).
BASE = "http://127.0.0.1:5000"


class LockClock:
    """Time each committed write transaction, from the moment it holds the write lock (its
    BEGIN IMMEDIATE has returned) to the end of its COMMIT.

    Every write of the portal on a SQLite file begins through the connection's
    `begin_writing` (portal.db.QueuedConnection), the session's and the one-click lane's
    alike: the clock wraps that and the commit.
    """

    def __init__(self, connection_class):
        self.holds: list[float] = []
        begin_writing, commit = connection_class.begin_writing, connection_class.commit
        clock = self

        def timed_begin(connection):
            begin_writing(connection)
            connection.lock_clock_started = time.perf_counter()

        def timed_commit(connection):
            commit(connection)
            started = getattr(connection, "lock_clock_started", None)
            if started is not None:
                clock.holds.append(time.perf_counter() - started)
                connection.lock_clock_started = None

        connection_class.begin_writing = timed_begin
        connection_class.commit = timed_commit


def _form_fields(html: str) -> list[tuple[str, str]]:
    """Return what a browser would send for the page's form, as it stands."""
    form = html[html.index('<form method="post" action="/p/') :]
    fields = []
    for match in re.finditer(r"<input([^>]*)>", form):
        attributes = dict(re.findall(r'([\w:-]+)="([^"]*)"', match.group(1)))
        kind, name = attributes.get("type"), attributes.get("name")
        checked = " checked" in match.group(1)
        if name and (kind == "hidden" or (kind in ("checkbox", "radio") and checked)):
            fields.append((name, attributes.get("value", "on")))
    return fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests of each kind")
    parser.add_argument("--profile", action="store_true",
                        help="also print cProfile's 40 costliest functions of each kind "
                        "(its figures then include the profiler's own cost)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-write-lock-"))
    try:
        env = setup._portal_environment(f"sqlite:///{work}/portal.sqlite3", 5000)
        setup._run([str(setup.BIN / "flask"), "--app", "wsgi", "db", "upgrade"], env, "migrate")
        contacts = args.requests + 50
        setup._run(
            [sys.executable, str(BENCH / "data.py"), str(work / "data"), "--demo",
             "--pool", f"lock:1:{contacts}"],
            env,
            "load data",
        )
        # This process becomes the portal: its keys and database.
        os.environ.update(env)
        sys.path.insert(0, str(setup.ROOT))
        from portal import create_app
        from portal import lists
        from portal import unsubscribe
        from portal.contacts import Contact
        from portal.db import QueuedConnection
        from portal.db import db

        app = create_app(instance_path=str(work / "data" / "instance"))
        client = app.test_client()
        with app.app_context():
            clock = LockClock(QueuedConnection)
            rows = db.session.execute(
                sa.select(Contact, lists.MailingList)
                .join(lists.Subscription, lists.Subscription.contact_id == Contact.id)
                .join(lists.MailingList, lists.MailingList.id == lists.Subscription.list_id)
                .where(lists.Subscription.status == "subscribed", Contact.email.like("%lock%"))
                .order_by(Contact.id, lists.MailingList.id)
            ).all()
            # Each contact's first list for the page submit, its second for the one-click.
            by_contact: dict[int, list] = {}
            for contact, mailing_list in rows:
                by_contact.setdefault(contact.id, []).append((contact, mailing_list))
            pairs = [found for found in by_contact.values() if len(found) >= 2]
            one_click = [unsubscribe.make_token(*found[1]) for found in pairs]
            db.session.remove()
        lines = (work / "data" / "lock-1.txt").read_text().splitlines()
        pages = [line.split("\t")[0] for line in lines if line]

        results = {}
        # One-click POSTs.
        clock.holds.clear()
        started = time.process_time()
        done = 0
        one_click_profile = cProfile.Profile() if args.profile else None
        for token in one_click[: args.requests]:
            if one_click_profile:
                one_click_profile.enable()
            response = client.post(f"/o/{token}", base_url=BASE,
                                   data={"List-Unsubscribe": "One-Click"})
            if one_click_profile:
                one_click_profile.disable()
            assert response.status_code == 200, response.status_code
            done += 1
        results["one-click POST"] = (list(clock.holds), (time.process_time() - started) / done)

        # Page submits leaving one list, each form read by a GET first (not counted).
        holds, cpu = [], 0.0
        submit_profile = cProfile.Profile() if args.profile else None
        for token in pages[: args.requests]:
            page = client.get(f"/p/{token}", base_url=BASE)
            fields = _form_fields(page.text)
            leave = next(field for field in fields if field[0].startswith("list:"))
            fields.remove(leave)
            clock.holds.clear()
            started = time.process_time()
            if submit_profile:
                submit_profile.enable()
            response = client.post(f"/p/{token}", base_url=BASE, data=urlencode(fields),
                                   content_type="application/x-www-form-urlencoded")
            if submit_profile:
                submit_profile.disable()
            cpu += time.process_time() - started
            assert response.status_code == 303, response.status_code
            holds += clock.holds
        results["submit POST"] = (holds, cpu / len(pages[: args.requests]))

        print(f"{'request':<16}{'writes':>8}{'mean hold ms':>14}{'median ms':>11}"
              f"{'ceiling /s':>12}{'CPU ms/request':>16}")
        for name, (found, cpu_each) in results.items():
            mean = statistics.fmean(found)
            median = statistics.median(found)
            print(f"{name:<16}{len(found):>8}{1000 * mean:>14.3f}{1000 * median:>11.3f}"
                  f"{1 / mean:>12.0f}{1000 * cpu_each:>16.3f}")
        profiles = {"one-click POST": one_click_profile, "submit POST": submit_profile}
        for label, recorded in profiles.items():
            if recorded:
                print(f"\n{label}: cProfile's 40 costliest functions, by cumulative time")
                pstats.Stats(recorded).sort_stats("cumulative").print_stats(40)
        print(f"CPython {sys.version.split()[0]}; portal {setup._revision()}; "
              f"SQLite {sqlite3.sqlite_version}, WAL, synchronous at its default (FULL)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
