"""Where a preference page GET's time goes, in one process, without a server.

    .venv/bin/python bench/page_parts.py [--requests N] [--rounds N] [--profile]

Prepares a SQLite database in a temporary folder as bench/preference_page.py does (migrated,
the demo data loaded, a production-like environment with fresh keys), then calls the portal's
WSGI application directly, as a server would, and reports the CPU time of one request:

- the Flask hello-world (bench/hello.py) and a route of the portal that returns a constant:
  what any request costs in each application;
- the same route reading `SELECT 1` through the session: a transaction's cost;
- the same route reading a link's signature and its contact through the session;
- the whole page GET, round-robin over the demo contacts (what wrk's page GET asks), which
  reads through the page lane (`portal/page_lane.py`);

and, inside one request context, the page GET's parts on their own: checking the link's
signature, the lane's two statements (`page_lane.read`), building the page from what they
read, and rendering the template; then, for comparison, the session's path for the same
reads (`read_token` and `page_for`), which a GET takes when the lane gives way. Each figure
is the lowest of `--rounds` rounds of `--requests` calls (CPU time of this process, so other
load on the machine moves it little). `--profile` adds cProfile's 40 costliest functions of
the page GET, by cumulative time. Run by hand, like every benchmark here; it changes nothing
outside its temporary folder, which it removes.
"""

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from preference_page import _demo_database  # noqa: E402

PORT = 5000


def _environ(path: str) -> dict:
    """Return the WSGI environment of a browser's GET on loopback, with no cookie."""
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(PORT), "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": f"127.0.0.1:{PORT}", "HTTP_USER_AGENT": "page_parts", "HTTP_ACCEPT": "*/*",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _get(app, path: str) -> bytes:
    """Call the application for one GET; stop the run unless it answers 200."""
    status = []
    body = b"".join(app.wsgi_app(_environ(path), lambda line, *_: status.append(line)))
    if not status[0].startswith("200"):
        sys.exit(f"GET {path} answered {status[0]}: {body[:300]!r}")
    return body


def _cpu_ms(call, requests: int, rounds: int) -> float:
    """Return the lowest CPU milliseconds per call over the rounds (call takes the index)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for number in range(requests):
            call(number)
        best = min(best, (time.process_time() - started) / requests * 1000)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile the page GET")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-page-parts-"))
    try:
        env = _demo_database(work, PORT)
        os.environ.update({name: value for name, value in env.items()
                           if name.startswith("FLASK_")})
        tokens = (work / "data" / "get-tokens.txt").read_text().split()
        return _measure(tokens, args, work / "data" / "instance")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(tokens: list[str], args, instance: Path) -> int:
    import sqlalchemy as sa
    from flask import render_template
    from hello import app as hello

    from portal import create_app
    from portal import page_lane
    from portal.choices import page_for
    from portal.db import db
    from portal.links import read_payload
    from portal.links import read_token
    from portal.preferences import manage_context

    app = create_app(instance_path=str(instance))

    # Routes on the contact pages' blueprint, so that its hooks run around them too; added
    # before the first request, as Flask requires.
    def constant():
        return "constant"

    def select_one():
        return str(db.session.execute(sa.text("SELECT 1")).scalar())

    def contact(token: str):
        return read_token("manage", token)[0].public_id

    for name, view, rule in (("bench_constant", constant, "/bench/constant"),
                             ("bench_select", select_one, "/bench/select"),
                             ("bench_contact", contact, "/bench/contact/<token>")):
        app.add_url_rule(rule, endpoint=f"preferences.{name}", view_func=view)

    pages = [f"/p/{token}" for token in tokens]
    requests = {
        "hello-world (its own app)": (hello, lambda n: "/"),
        "a constant": (app, lambda n: "/bench/constant"),
        "SELECT 1 in a transaction": (app, lambda n: "/bench/select"),
        "the link and its contact": (app, lambda n: f"/bench/contact/{tokens[n % len(tokens)]}"),
        "the page GET": (app, lambda n: pages[n % len(pages)]),
    }
    print(f"CPU ms per call, the lowest of {args.rounds} rounds of {args.requests}; "
          f"{len(tokens)} demo contacts")
    print("\nwhole requests:")
    for label, (application, path) in requests.items():
        for number in range(len(tokens) * 3):  # warm: templates compiled, caches filled
            _get(application, path(number))
        cost = _cpu_ms(lambda n, a=application, p=path: _get(a, p(n)), args.requests, args.rounds)
        print(f"  {label:32s} {cost:6.3f}")

    print("\nthe page's parts, in one request context:")
    # Within one request context a catalogue read through the session (every few seconds)
    # would leave its transaction open, and the lane would give way for the rest of the run.
    app.config["PORTAL_CATALOGUE_SECONDS"] = 24 * 3600
    with app.test_request_context("/", base_url=f"http://127.0.0.1:{PORT}"):
        payloads = [read_payload("manage", token) for token in tokens]
        found = [page_lane.read(payload) for payload in payloads]
        contacts = [each.contact for each in found]
        contexts = [manage_context(token, each.page())
                    for token, each in zip(tokens, found, strict=True)]
        parts = {
            "checking the link's signature": lambda n: read_payload(
                "manage", tokens[n % len(tokens)]),
            "the lane's two statements": lambda n: page_lane.read(payloads[n % len(payloads)]),
            "building the page": lambda n: found[n % len(found)].page(),
            "rendering the page": lambda n: render_template(
                "preferences/manage.html", **contexts[n % len(contexts)]),
            "(the session's path) the contact": lambda n: read_token(
                "manage", tokens[n % len(tokens)]),
            "(the session's path) page_for": lambda n: page_for(contacts[n % len(contacts)]),
        }
        for label, call in parts.items():
            for number in range(len(tokens)):
                call(number)
            print(f"  {label:32s} {_cpu_ms(call, args.requests, args.rounds):6.3f}")

    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for number in range(args.requests):
            _get(app, pages[number % len(pages)])
        profile.disable()
        print()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
