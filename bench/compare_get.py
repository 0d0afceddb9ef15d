"""The page GET of two checkouts side by side under gunicorn, beside the hello-world: an A/B run.

    git worktree add ../before <commit>
    .venv/bin/python bench/compare_get.py ../before [--rounds 8] [--seconds 2]

Serves this checkout's portal, the other checkout's portal and bench/hello.py, each under
gunicorn with the same settings as preference_page.py (2 sync workers by default), on one
SQLite database prepared as preference_page.py prepares it (migrated by this checkout, the
demo data loaded, a production-like environment with fresh keys that both portals share, so
the same links open both). Then wrk asks each of the three in turn, `--rounds` times, for
`--seconds` each: the page GET round-robin over the demo contacts (load.lua's `get`) and the
hello-world's `GET /`, each round starting one server further on. Taking turns in short
slices puts the same share of whatever else the machine is doing on all three, which two
separate runs of preference_page.py cannot: on a shared machine their rates move by a fifth
from one minute to the next. Even so, run it two or three times: one run of six rounds here
once showed two commits equal that three other runs put a tenth apart.

It prints each server's rate, CPU milliseconds per request (its gunicorn processes, read from
/proc around each slice) and both as a ratio to the hello-world. The two checkouts must read
the same database schema (no migration between them). Exits 1 if any response was not the
expected one.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from preference_page import Phase  # noqa: E402
from preference_page import Server  # noqa: E402
from preference_page import _demo_database  # noqa: E402
from preference_page import _drive  # noqa: E402
from preference_page import _free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout (a git worktree)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=2, help="each server's slice of a round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    other = args.other.resolve()
    if not (other / "wsgi.py").exists():
        parser.error(f"{other} is not a checkout of the portal (no wsgi.py)")
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    if shutil.which("wrk") is None or not (BIN / "gunicorn").exists():
        sys.exit("needs wrk (apt-get install wrk) and gunicorn "
                 "(.venv/bin/pip install -e '.[serve]')")

    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    servers: dict[str, Server] = {}
    try:
        hello_port, this_port, other_port = _free_port(), _free_port(), _free_port()
        env = _demo_database(work, this_port)
        data = work / "data"
        servers["this checkout"] = Server("this checkout", "wsgi:app", this_port, args, env, ROOT,
                                          work / "this.log")
        servers[other.name] = Server(other.name, "wsgi:app", other_port, args,
                                          {**env, "PYTHONPATH": str(other)}, other,
                                          work / "other.log")
        servers["hello-world"] = Server("hello-world", "hello:app", hello_port, args, env, BENCH,
                                        work / "hello.log")
        for server in servers.values():
            server.wait_ready("/")
        modes = {name: "hello" if name == "hello-world" else "get" for name in servers}
        for name, server in servers.items():  # warm-up, not counted
            _drive(modes[name], server.port, args.seconds, args, data, "warm", work)
        totals = {name: Phase(name) for name in servers}
        names = list(servers)
        for number in range(args.rounds):
            # Each round starts with the next server, so that none always follows the same one.
            for name in names[number % len(names):] + names[:number % len(names)]:
                server = servers[name]
                before = server.cpu_seconds()
                phase = _drive(modes[name], server.port, args.seconds, args, data,
                               f"round-{number}", work)
                phase.cpu_seconds = server.cpu_seconds() - before
                totals[name].add(phase)
        return _report(totals, args)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _report(totals: dict[str, Phase], args) -> int:
    hello = totals["hello-world"]
    print(f"{args.rounds} rounds of {args.seconds} s each, the servers taking turns; gunicorn "
          f"{args.workers} workers ({args.worker_class}), wrk {args.connections} connections")
    print(f"{'server':18s} {'requests/s':>10s} {'x hello':>8s} {'CPU ms':>7s} "
          f"{'x hello by CPU':>14s}  errors")
    failed = False
    for name, phase in totals.items():
        errors = ", ".join(f"{what} {count}" for what, count in phase.errors.items()) or "none"
        failed = failed or bool(phase.errors)
        print(f"{name:18s} {phase.rate:10.1f} {phase.rate / hello.rate:8.3f} "
              f"{phase.cpu_ms:7.3f} {hello.cpu_ms / phase.cpu_ms:14.3f}  {errors}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
