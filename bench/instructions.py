"""Instructions per request, counted by valgrind's callgrind: a repeatable measure for A/B runs.

    apt-get install valgrind
    .venv/bin/python bench/instructions.py [--requests N] [--kinds hello,constant,page,one-click]

On a shared machine the rates, and even the CPU time of one process, move by a quarter from
one minute to the next, so a change worth a few percent hides in their noise. Callgrind counts
the instructions the processor runs instead: the same count for the same code and inputs,
whatever else the machine is doing. It is not a time (a cache miss costs more than an
addition) but a change that runs fewer instructions for the same work is faster.

This prepares a SQLite database in a temporary folder as page_parts.py does (migrated, the
demo data loaded, a production-like environment with fresh keys), then, for each kind of
request, runs itself twice under callgrind in a fresh process (with a fixed hash seed): once
only starting the application and warming it up with 100 requests, once adding `--requests`
more. The difference over `--requests` is what one request runs. Starting the application
does not run quite the same instructions twice (some ten million either way), so the figure
is good to about 10k instructions a request with the default 1000 requests:

- hello: the Flask hello-world (bench/hello.py), called as a server would;
- constant: a route of the portal's contact pages that returns a constant;
- page: the preference page's GET, round-robin over the demo contacts, as wrk asks it;
- one-click: the one-click unsubscribe POST, urlencoded, each on a fresh subscription (the
  contacts and tokens bench/one_click.py makes; each run starts from the database as loaded).

Compare two commits by running each one's copy of this script (a `git worktree` of the other
commit beside this one). A run takes one to three minutes per kind on this kind of machine.
"""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from preference_page import _demo_database  # noqa: E402
from preference_page import _run  # noqa: E402

PORT = 5000
KINDS = ("hello", "constant", "page", "one-click")
WARM_UP = 100


def _child(work: Path, kind: str, requests: int) -> None:
    """Start the application in this process and make the warm-up and the requests."""
    from page_parts import _get

    os.environ.update(json.loads((work / "environment.json").read_text()))
    tokens = (work / "data" / "get-tokens.txt").read_text().split()
    if kind == "hello":
        from hello import app
    else:
        from portal import create_app

        app = create_app(instance_path=str(work / "data" / "instance"))
        app.add_url_rule("/bench/constant", endpoint="preferences.bench_constant",
                         view_func=lambda: "constant")
    if kind == "one-click":
        unsubscribing = (work / "one-click" / "p-1.txt").read_text().split()
        for number in range(WARM_UP + requests):
            _one_click(app, unsubscribing[number])
        return
    paths = {"hello": lambda n: "/", "constant": lambda n: "/bench/constant",
             "page": lambda n: f"/p/{tokens[n % len(tokens)]}"}[kind]
    for number in range(WARM_UP + requests):
        _get(app, paths(number))


def _one_click(app, token: str) -> None:
    """POST a mail client's one-click unsubscribe, as one_click.lua does (urlencoded)."""
    from page_parts import _environ

    body = b"List-Unsubscribe=One-Click"
    environ = _environ(f"/o/{token}")
    environ.update({"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(body),
                    "CONTENT_TYPE": "application/x-www-form-urlencoded",
                    "CONTENT_LENGTH": str(len(body))})
    status = []
    answer = b"".join(app.wsgi_app(environ, lambda line, *_: status.append(line)))
    if not status[0].startswith("200") or b"You are unsubscribed" not in answer:
        sys.exit(f"POST /o/{token} answered {status[0]}: {answer[:300]!r}")


def _instructions(work: Path, kind: str, requests: int) -> int:
    """Return the instructions a fresh process runs for the warm-up and `requests` more."""
    out = work / f"callgrind-{kind}-{requests}.out"
    if kind == "one-click":
        # Each run unsubscribes the same contacts afresh: the database as it was loaded.
        for suffix in ("", "-wal", "-shm"):
            (work / f"portal.sqlite3{suffix}").unlink(missing_ok=True)
        shutil.copy(work / "loaded.sqlite3", work / "portal.sqlite3")
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               str(BIN / "python"), __file__, "--child", str(work), kind, str(requests)]
    run = subprocess.run(command, env=dict(os.environ, PYTHONHASHSEED="0"),
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"callgrind run failed ({run.returncode}):\n{run.stderr[-2000:]}")
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        sys.exit(f"no total in {out}")
    return int(totals.group(1))


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per kind")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"which requests, comma-separated, of {', '.join(KINDS)}")
    args = parser.parse_args()
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if not kinds or any(kind not in KINDS for kind in kinds):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is missing: apt-get install valgrind")

    work = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    try:
        env = _demo_database(work, PORT)
        portal = {name: value for name, value in env.items() if name.startswith("FLASK_")}
        # One catalogue read for the whole run: a read every few seconds would fall on one
        # run and not the other, as valgrind's slowness stretches them.
        portal["FLASK_PORTAL_CATALOGUE_SECONDS"] = str(24 * 3600)
        (work / "environment.json").write_text(json.dumps(portal))
        if "one-click" in kinds:
            # Contacts subscribed to three lists, a one-click token per subscription (the
            # ones bench/one_click.py makes), kept as loaded for each run to start from.
            pool = f"p:1:{WARM_UP + args.requests}"
            _run([str(BIN / "python"), str(BENCH / "one_click.py"), "--load",
                  str(work / "one-click"), pool], env, "loading one-click tokens")
            shutil.copy(work / "portal.sqlite3", work / "loaded.sqlite3")
        print(f"instructions per request (callgrind, {args.requests} requests after "
              f"{WARM_UP} to warm up); {len(kinds)} kinds, a few minutes each")
        costs = {}
        for kind in kinds:
            start = _instructions(work, kind, 0)
            costs[kind] = (_instructions(work, kind, args.requests) - start) / args.requests
            line = f"  {kind:9s} {costs[kind] / 1000:9.1f} k"
            if kind != "hello" and "hello" in costs:
                line += f"   {costs['hello'] / costs[kind]:.3f}x the hello-world's"
            print(line, flush=True)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
