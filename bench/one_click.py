"""Benchmark the one-click unsubscribe POST against a Flask hello-world, both under gunicorn.

    .venv/bin/python bench/one_click.py [--db sqlite|postgresql] [--seconds N]

Issue 5's target: the one-click POST (RFC 8058: what a mail client's unsubscribe button sends)
at least 0.35x the hello-world's rate. The set-up is bench/preference_page.py's, imported
from it: the same production-like portal (fresh keys, no demo mode), the same gunicorn
settings, the same rounds that take turns, the same table. The load is bench/one_click.lua:
every POST uses a fresh token (a contact's subscription to one list), so each one is a real
change; its status, body and headers are checked (200, no redirect, no cookie). After the
rounds, a database check counts the one-click ledger events against the POSTs counted.
bench/README.md says more.
"""

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC
from datetime import datetime
from pathlib import Path

import preference_page as setup
import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
TARGET = 0.35
PHASE = "one-click POST"
#: Each of our contacts is on these lists: one token, and one POST, per subscription.
LISTS = ("bench-a", "bench-b", "bench-c")


def load(data_dir: Path, pools: list[str]) -> None:
    """Create subscribed contacts and write their one-click tokens, one file per connection.

    Runs in a subprocess with the portal's environment, so the tokens are signed with the
    keys the server has. A pool is NAME:CONNECTIONS:TOKENS_PER_CONNECTION.
    """
    sys.path.insert(0, str(setup.ROOT))
    from portal import contacts
    from portal import create_app
    from portal import lists
    from portal import unsubscribe
    from portal.db import db

    app = create_app()
    data_dir.mkdir(parents=True, exist_ok=True)
    with app.app_context():
        mailing_lists = []
        for slug in LISTS:
            found = db.session.scalar(
                sa.select(lists.MailingList).where(lists.MailingList.slug == slug)
            )
            mailing_lists.append(found or lists.create_list(slug, slug))
        for pool in pools:
            name, connections, per_connection = pool.split(":")
            connections, per_connection = int(connections), int(per_connection)
            tokens: list[str] = []
            for number in range(math.ceil(connections * per_connection / len(LISTS))):
                contact = contacts.add_contact(
                    f"{name}-{number}@bench.example", method="bench", actor="bench"
                )
                for mailing_list in mailing_lists:
                    lists.set_subscription(
                        contact, mailing_list, True, method="bench", actor="bench"
                    )
                    tokens.append(unsubscribe.make_token(contact, mailing_list))
                if number % 200 == 0:
                    db.session.commit()
            db.session.commit()
            for connection in range(connections):
                mine = tokens[connection::connections][:per_connection]
                (data_dir / f"{name}-{connection + 1}.txt").write_text("\n".join(mine) + "\n")


def _drive(mode: str, port: int, seconds: int, args, data_dir: Path, pool: str, out_dir: Path):
    """Run wrk with one_click.lua for one phase (or one round of it) and read its results."""
    return setup._drive(mode, port, seconds, args, data_dir, pool, out_dir, "one_click.lua")


def _one_click_counts(database_url: str) -> tuple[int, int]:
    """Return the one-click ledger events and the ended subscriptions of our lists."""
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        events = connection.exec_driver_sql(
            "SELECT count(*) FROM ledger_events WHERE method = 'one_click'"
        ).scalar_one()
        ended = connection.execute(
            sa.text(
                "SELECT count(*) FROM subscriptions JOIN mailing_lists "
                "ON mailing_lists.id = list_id "
                "WHERE status = 'unsubscribed' AND slug IN :slugs"
            ).bindparams(sa.bindparam("slugs", expanding=True)),
            {"slugs": list(LISTS)},
        ).scalar_one()
    engine.dispose()
    return events, ended


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the one-click unsubscribe POST against a Flask hello-world."
    )
    parser.add_argument("--load", nargs="+", metavar=("DATA_DIR", "POOL"), help=argparse.SUPPRESS)
    setup.add_server_options(parser, max_post_rate=2500.0, database="bench_one_click")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.load:
        load(Path(args.load[0]), args.load[1:])
        return 0
    slice_seconds = max(1, args.seconds // args.rounds)
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    if not (setup.BIN / "gunicorn").exists():
        sys.exit("gunicorn is missing: .venv/bin/pip install -e '.[serve]'")

    work = Path(tempfile.mkdtemp(prefix="bench-one-click-"))
    portal_port, hello_port = setup._free_port(), setup._free_port()
    if args.db == "sqlite":
        database_url = f"sqlite:///{work}/portal.sqlite3"
    else:
        database_url = setup._create_postgresql(args.postgresql_server, args.postgresql_database)
    env = setup._portal_environment(database_url, portal_port)
    servers: list[setup.Server] = []
    started = datetime.now(UTC)
    try:
        print(f"preparing {args.db} database in {work if args.db == 'sqlite' else database_url}")
        setup._run([str(setup.BIN / "flask"), "--app", "wsgi", "db", "upgrade"], env, "migration")
        data_dir = work / "data"
        per_connection = math.ceil(args.max_post_rate * slice_seconds / args.connections) + 2
        warm = math.ceil(args.max_post_rate * args.warmup / args.connections) + 2
        pools = [f"warm:{args.connections}:{warm}"] + [
            f"r{number}:{args.connections}:{per_connection}" for number in range(1, args.rounds + 1)
        ]
        print(f"loading {len(pools)} pools of fresh tokens ({args.max_post_rate:.0f} POSTs/s)")
        setup._run(
            [str(setup.BIN / "python"), str(Path(__file__)), "--load", str(data_dir), *pools],
            env,
            "loading data",
        )
        database = args.postgresql_database if args.db == "postgresql" else None
        portal = setup.Server(
            "portal",
            "wsgi:app",
            portal_port,
            args,
            env,
            setup.ROOT,
            work / "portal-gunicorn.log",
            database,
        )
        servers.append(portal)
        hello = setup.Server(
            "hello-world", "hello:app", hello_port, args, env, BENCH, work / "hello-gunicorn.log"
        )
        servers.append(hello)
        portal.wait_ready("/")
        hello.wait_ready("/")
        print(
            f"serving: gunicorn {args.workers} workers ({args.worker_class}), wrk "
            f"{args.connections} connections; {args.warmup} s warm-up per phase, then "
            f"{args.rounds} rounds of {slice_seconds} s, the phases taking turns"
        )
        plan = (("hello-world", "hello", hello), (PHASE, "one-click", portal))
        for name, mode, server in plan:
            warmed = _drive(mode, server.port, args.warmup, args, data_dir, "warm", work)
            if warmed.errors:
                print(f"  warm-up of {name} had errors: {warmed.errors}")
        phases = {name: setup.Phase(name) for name, _mode, _server in plan}
        time.sleep(1)  # let the warm-up's requests in flight when wrk stopped finish
        events_before, ended_before = _one_click_counts(database_url)
        load_before = os.getloadavg()[0]
        for number in range(1, args.rounds + 1):
            for name, mode, server in plan:
                cpu_before = server.cpu_seconds()
                result = _drive(
                    mode, server.port, slice_seconds, args, data_dir, f"r{number}", work
                )
                result.cpu_seconds = server.cpu_seconds() - cpu_before
                if result.stopped_early > args.connections // 2:
                    result.errors["out-of-contacts"] = result.stopped_early
                phases[name].add(result)
            print(
                f"  round {number}: "
                + ", ".join(f"{name} {phases[name].round_rates[-1]:.1f}/s" for name, *_ in plan)
            )
        time.sleep(1)  # let the requests in flight when wrk stopped finish
        events_after, ended_after = _one_click_counts(database_url)
        one_click = phases[PHASE]
        events, ended = events_after - events_before, ended_after - ended_before
        print(
            f"  database check: {one_click.ok} POSTs counted; {events} one-click ledger events, "
            f"{ended} subscriptions ended"
        )
        if not one_click.ok <= events == ended <= one_click.ok + args.connections * args.rounds:
            one_click.errors["database-check"] = abs(events - one_click.ok)
        setup.TARGETS = {PHASE: TARGET}
        met = setup._report(list(phases.values()))
        print()
        print(
            f"load average (1 min) {load_before:.2f} before the phases, "
            f"{os.getloadavg()[0]:.2f} after"
        )
        print(
            f"date {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores "
            f"({platform.machine()}); {platform.python_implementation()} "
            f"{platform.python_version()}; database {args.db}; portal {setup._revision()}"
        )
        print(
            "one request: hello-world = GET /; one-click POST = POST /o/<token> with "
            "List-Unsubscribe=One-Click (urlencoded and multipart in turn), no cookie, a fresh "
            "subscription each time, answered 200 with no redirect and no cookie"
        )
        return 0 if met else 1
    finally:
        for server in servers:
            server.stop()
        if args.db == "postgresql" and not args.keep:
            setup._drop_postgresql(args.postgresql_server, args.postgresql_database)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
