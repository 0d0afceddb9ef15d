"""Benchmark selecting a campaign's audience among 1,000,000 contacts on PostgreSQL.

    .venv/bin/python bench/campaign_audience.py [--contacts N] [--repeat N]

Creates the PostgreSQL database `portal_bench_h3` (dropped first if it exists, dropped again
at the end), migrates it, and loads N contacts (default 1,000,000) with SQL: the six opt-in
statuses in turn, 1 % with processing stopped, 1 % asking for erasure, two in three on the
campaign's list (one in ten of those unsubscribed since), and one other list. Then, in turns,
`--repeat` times each (the median is reported):

- bare SQL: one hand-written `SELECT count(*)` over contacts joined to subscriptions with
  the same filter, run through psycopg directly;
- portal count: `campaigns.audience_count(list_id, policy)`, what the send job runs first
  (the conditions the job uses, built by SQLAlchemy, through the app's session);
- and, for information, the whole walk of the job over the audience: the bare
  `SELECT id ... ORDER BY id` against the job's own pages (`items_after`, 200 chunks of 50).

Issue 5's target: the portal's count within 2x the bare SQL's time, for each policy.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from preference_page import BIN  # noqa: E402
from preference_page import _create_postgresql  # noqa: E402
from preference_page import _drop_postgresql  # noqa: E402
from preference_page import _free_port  # noqa: E402
from preference_page import _portal_environment  # noqa: E402
from preference_page import _revision  # noqa: E402
from preference_page import _run  # noqa: E402

DATABASE = "portal_bench_h3"
TARGET = 2.0
STATUSES = ("none", "single_user", "single_webform", "double", "optout_user", "optout_contact")
BARE_COUNT = """
SELECT count(*) FROM contacts c JOIN subscriptions s ON s.contact_id = c.id
WHERE s.list_id = %(list_id)s AND s.status = 'subscribed' AND c.opt_in_status = ANY(%(statuses)s)
  AND c.processing_stopped_at IS NULL AND c.erasure_requested_at IS NULL
  AND c.erased_at IS NULL AND c.email IS NOT NULL
"""
BARE_IDS = BARE_COUNT.replace("count(*)", "c.id") + " ORDER BY c.id"


def load(count: int) -> tuple[int, int]:
    """Load the contacts and subscriptions; return the campaign list's id and the other's."""
    from portal import contacts
    from portal import create_app
    from portal import lists
    from portal.db import db

    app = create_app()
    with app.app_context():
        target = lists.create_list("bench", "Bench newsletter")
        other = lists.create_list("other", "Other list")
        first = contacts.add_contact("seed@example.test", method="staff", actor="bench")
        # Every bulk subscription points at this one real ledger event: the benchmark
        # measures the audience query, not the ledger.
        event_id = lists.set_subscription(
            first, other, True, method="staff", actor="bench"
        ).event_id
        db.session.commit()
        target_id, other_id = target.id, other.id
        statements = [
            f"""
            INSERT INTO contacts (public_id, kind, email, first_name, opt_in_status,
                processing_stopped_at, erasure_requested_at, link_version, created_at,
                updated_at, version)
            SELECT substr(md5(i::text), 1, 22), 'lead', 'c' || i || '@example.test',
                'Name' || i, (ARRAY{list(STATUSES)!r})[1 + mod(i, 6)],
                CASE WHEN mod(i, 100) = 7 THEN now() END, CASE WHEN mod(i, 100) = 11 THEN now() END,
                1, now(), now(), 1
            FROM generate_series(1, {count - 1}) AS i
            """,
            f"""
            INSERT INTO subscriptions (contact_id, list_id, status, event_id, changed_at)
            SELECT id, {target_id}, CASE WHEN mod(id, 10) = 3 THEN 'unsubscribed' ELSE 'subscribed'
                END, {event_id}, now()
            FROM contacts WHERE mod(abs(hashtext(id::text)), 3) <> 0
            """,
            f"""
            INSERT INTO subscriptions (contact_id, list_id, status, event_id, changed_at)
            SELECT id, {other_id}, 'subscribed', {event_id}, now()
            FROM contacts WHERE mod(id, 2) = 0 AND id <> {first.id}
            """,
        ]
        with db.engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    return target_id, other_id


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--postgresql-server", default="postgresql+psycopg://postgres@127.0.0.1")
    args = parser.parse_args()

    database_url = _create_postgresql(args.postgresql_server, DATABASE)
    try:
        env = _portal_environment(database_url, _free_port())
        print(
            f"revision {_revision()}, {args.contacts} contacts; load average "
            f"{os.getloadavg()[0]:.1f}"
        )
        _run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], env, "migration")
        os.environ.update(env)
        loading = time.perf_counter()
        list_id, _other = load(args.contacts)
        print(f"loaded in {time.perf_counter() - loading:.0f} s")
        ok = measure(list_id, args.repeat)
        print(f"load average after {os.getloadavg()[0]:.1f}")
    finally:
        _drop_postgresql(args.postgresql_server, DATABASE)
    return 0 if ok else 1


def measure(list_id: int, repeat: int) -> bool:
    from portal import campaigns
    from portal import create_app
    from portal import gate
    from portal.db import db

    app = create_app()
    ok = True
    print("| policy | audience | bare SQL count ms | portal count ms | × bare | target |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    walks = []
    with app.app_context():
        raw = db.engine.raw_connection()
        cursor = raw.cursor()
        for policy, admitted in gate.POLICY_STATUSES.items():
            params = {"list_id": list_id, "statuses": sorted(s.value for s in admitted)}
            bare_times, portal_times = [], []
            for _ in range(repeat):
                seconds, _ = timed(lambda p=params: cursor.execute(BARE_COUNT, p).fetchone())
                bare_times.append(seconds)
                raw.commit()
                seconds, number = timed(lambda p=policy: campaigns.audience_count(list_id, p))
                portal_times.append(seconds)
                db.session.commit()
            bare_count = cursor.execute(BARE_COUNT, params).fetchone()[0]
            raw.commit()
            if bare_count != number:
                print(f"COUNTS DIFFER for {policy}: bare {bare_count}, portal {number}")
                ok = False
            bare, ours = statistics.median(bare_times), statistics.median(portal_times)
            met = ours <= TARGET * bare
            ok = ok and met
            print(
                f"| {policy} | {number} | {1000 * bare:.0f} | {1000 * ours:.0f} | "
                f"{ours / bare:.2f} | ≤ {TARGET}: {'met' if met else 'missed'} |"
            )
            if policy == "double":
                walks.append(walk(cursor, raw, params, list_id, policy))
        raw.close()
    for bare, ours, count in walks:
        print(
            f"whole walk of the {count} recipients (policy double): bare SELECT of ids "
            f"{1000 * bare:.0f} ms, the job's pages {1000 * ours:.0f} ms ({ours / bare:.2f}×)"
        )
    return ok


def walk(cursor, raw, params: dict, list_id: int, policy: str) -> tuple[float, float, int]:
    """Time reading every recipient's id: one bare query against the job's own pages."""
    from portal import campaigns
    from portal.campaigns import sending
    from portal.db import db

    bare, ids = timed(lambda: cursor.execute(BARE_IDS, params).fetchall())
    raw.commit()
    campaign = campaigns.Campaign(
        subject="Bench", text_body="Hello", html_body="", list_id=list_id, created_by="bench"
    )
    db.session.add(campaign)
    db.session.flush()
    job_params = {"campaign_id": campaign.id, "policy": policy}

    def pages() -> int:
        seen, after = 0, 0
        while page := sending._items_after(job_params, after, 200):
            seen += sum(len(chunk) for _key, chunk in page)
            after = page[-1][0]
        return seen

    ours, seen = timed(pages)
    db.session.rollback()
    if seen != len(ids):
        print(f"WALKS DIFFER: bare {len(ids)}, job {seen}")
    return bare, ours, len(ids)


if __name__ == "__main__":
    sys.exit(main())
