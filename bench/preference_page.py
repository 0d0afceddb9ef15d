"""Benchmark the preference page against a Flask hello-world, both served by gunicorn.

    .venv/bin/python bench/preference_page.py [--db sqlite|postgresql] [--seconds N]

Prepares a database (a SQLite file in a temporary folder, or the PostgreSQL database
`bench_portal`, dropped and created afresh), migrates it, loads the demo data and contacts of
our own, starts the portal and bench/hello.py under the same gunicorn settings, and drives
both with wrk (bench/load.lua) over loopback: the hello-world, the page GET, the submit POST
without JavaScript (303) and with htmx (200), each warmed up and then measured for a fixed
time, in rounds that take turns. Every response's status and body is checked; only the
expected ones count. Prints requests/s, p50 and p99 per phase, the ratios against the
targets, CPU time per request, and a database check that each counted POST was a real
change. Everything it starts is stopped at the end, and the temporary folder and database
are removed. bench/README.md says more.
"""

import argparse
import base64
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
KEY_VARIABLES = (
    "FLASK_PORTAL_LINK_KEYS",
    "FLASK_PORTAL_FIELD_KEYS",
    "FLASK_PORTAL_LEDGER_KEYS",
    "FLASK_PORTAL_SUPPRESSION_KEYS",
    "FLASK_PORTAL_UNSUBSCRIBE_KEYS",
)
#: Issue 4's targets: each phase's rate as a fraction of the hello-world's.
TARGETS = {"page GET": 0.35, "submit POST": 0.20, "htmx POST": 0.20}
#: The load generator's POST modes: the plain form (303) and htmx's (200 with the form).
POST_MODES = ("post", "post-htmx")
#: POSTs one contact of ours takes: leave and re-join each of its 3 public lists, then stop
#: and restart marketing email (load.lua's steps).
POSTS_PER_CONTACT = 8
#: Tables that each counted POST adds a row to (the database check).
CHECKED_TABLES = ("undos", "pending_changes", "outbox_messages", "ledger_events")


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    setup: int = 0
    #: Connections that ran out of fresh contacts and stopped before the end of their round.
    stopped_early: int = 0
    #: Per round: this phase's rate in that round (for the spread between rounds).
    round_rates: list[float] = field(default_factory=list)
    #: Rows the database gained during the phase (POST phases), and the slack allowed for
    #: requests in flight when wrk stopped (one per connection per round).
    grown: dict[str, int] = field(default_factory=dict)
    slack: int = 0
    #: CPU seconds the server's processes (and, for the portal on PostgreSQL, the database's
    #: backends serving it) used during the phase.
    cpu_seconds: float = 0.0

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per counted request: what a request costs, whatever else runs."""
        return 1000 * self.cpu_seconds / self.ok if self.ok else float("nan")

    def add(self, other: "Phase") -> None:
        """Add one round's results to this phase's."""
        self.seconds += other.seconds
        self.ok += other.ok
        self.setup += other.setup
        self.stopped_early += other.stopped_early
        self.latencies_ms += other.latencies_ms
        self.cpu_seconds += other.cpu_seconds
        self.round_rates.append(other.rate)
        for what, number in other.errors.items():
            self.errors[what] = self.errors.get(what, 0) + number

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _keyset() -> str:
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return json.dumps({"active": "k1", "keys": {"k1": key}})


def _cpu_of(pid: int) -> float:
    """Return a process's user and system CPU seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime field 14 and stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _portal_environment(database_url: str, port: int) -> dict[str, str]:
    """Return the environment of a production-like portal: explicit keys, no demo mode."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLASK_")}
    env.update({name: _keyset() for name in KEY_VARIABLES})
    env.update(
        {
            # This checkout's portal, even where another one is installed in the environment.
            "PYTHONPATH": str(ROOT),
            "FLASK_SECRET_KEY": secrets.token_urlsafe(32),
            "FLASK_PORTAL_BASE_URL": f"http://127.0.0.1:{port}",
            "FLASK_TRUSTED_HOSTS": '["127.0.0.1"]',
            # Plain HTTP on loopback: a Secure cookie is what a browser would not send back.
            "FLASK_SESSION_COOKIE_SECURE": "false",
            "FLASK_RATELIMIT_STORAGE_URI": "memory://",
            "FLASK_SQLALCHEMY_DATABASE_URI": database_url,
        }
    )
    return env


def _create_postgresql(server_url: str, name: str) -> str:
    engine = sa.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return f"{server_url}/{name}"


def _drop_postgresql(server_url: str, name: str) -> None:
    engine = sa.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


def _run(command: list, env: dict, what: str) -> None:
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{what} failed:\n{result.stdout}{result.stderr}")
    if result.stderr.strip():
        print("  " + result.stderr.strip().splitlines()[-1])


def _demo_database(work: Path, port: int) -> dict[str, str]:
    """Make a SQLite database in `work`, migrated and holding the demo data (data.py --demo,
    into work/data), and return the production-like environment it was made with."""
    env = _portal_environment(f"sqlite:///{work / 'portal.sqlite3'}", port)
    _run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], env, "migration")
    _run([str(BIN / "python"), str(BENCH / "data.py"), str(work / "data"), "--demo"], env,
         "loading data")
    return env


class Server:
    """One gunicorn, in its own process group so that its workers stop with it."""

    def __init__(
        self,
        name: str,
        app: str,
        port: int,
        args,
        env: dict,
        chdir: Path,
        log: Path,
        database: str | None = None,
    ):
        # database: the PostgreSQL database whose backends' CPU time counts as this server's.
        self.name, self.port, self.log, self.database = name, port, log, database
        command = [
            str(BIN / "gunicorn"),
            "--workers",
            str(args.workers),
            "--worker-class",
            args.worker_class,
            "--threads",
            str(args.threads),
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(chdir),
            "--log-level",
            "warning",
            "--error-logfile",
            str(log),
            app,
        ]
        self.process = subprocess.Popen(
            command,
            cwd=chdir,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name} exited at start-up:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        sys.exit(f"{self.name} did not answer within {timeout:.0f} s:\n{self.log.read_text()}")

    def cpu_seconds(self) -> float:
        """Return the CPU time used so far by this server's processes and database backends."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        if self.database:
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if f" {self.database} ".encode() in cmdline.read_bytes():
                        pids.append(int(cmdline.parent.name))
                except OSError:
                    continue
        return sum(_cpu_of(pid) for pid in pids)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _drive(
    mode: str,
    port: int,
    seconds: int,
    args,
    data_dir: Path,
    pool: str,
    out_dir: Path,
    script: str = "load.lua",
) -> Phase:
    """Run wrk with a script of bench/ for one phase (or one round of it) and read back what
    the script recorded (load.lua here; bench/one_click.py passes one_click.lua)."""
    result_file = out_dir / f"wrk-{pool}.txt"
    command = [
        "wrk",
        "-t",
        str(args.connections),
        "-c",
        str(args.connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / script),
        f"http://127.0.0.1:{port}",
        "--",
        mode,
        str(data_dir),
        pool,
    ]
    env = {**os.environ, "BENCH_RESULT_FILE": str(result_file)}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if run.returncode != 0 or not result_file.exists():
        sys.exit(f"wrk failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    phase = Phase(mode)
    for line in result_file.read_text().splitlines():
        kind, *rest = line.split()
        if kind == "duration_us":
            phase.seconds = int(rest[0]) / 1e6
        elif kind.startswith("socket_") and kind != "socket_status" and int(rest[0]):
            # (socket_status is wrk's own count of 4xx/5xx, which load.lua counts by status.)
            phase.errors[kind.replace("_", " ")] = int(rest[0])
        elif kind == "count":
            outcome, number = rest[0], int(rest[1])
            if outcome == "ok":
                phase.ok += number
            elif outcome == "setup-ok":
                phase.setup += number
            elif outcome == "out-of-contacts":
                phase.stopped_early += number
            else:
                phase.errors[outcome] = phase.errors.get(outcome, 0) + number
        elif kind == "latency":
            phase.latencies_ms.append(float(rest[0]) / 1000)
    return phase


def _per_client(rate: float, seconds: int, clients: int) -> int:
    """Return how many contacts each client needs to POST at this rate for this long."""
    return int(rate * seconds / clients / POSTS_PER_CONTACT) + 2


def _row_counts(database_url: str) -> dict[str, int]:
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        counts = {
            table: connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            for table in CHECKED_TABLES
        }
    engine.dispose()
    return counts


def _revision() -> str:
    def git(*words):
        return subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = git(
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "portal",
        "templates",
        "config.py",
        "wsgi.py",
    ).strip()
    return commit + (" plus uncommitted changes" if dirty else "")


def _report(phases: list[Phase]) -> bool:
    """Print the table; return whether every target was met with no error anywhere."""
    hello = phases[0]
    print()
    print(
        f"{'phase':<13} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'counted':>8} "
        f"{'errors':>7}  {'x hello':>7} {'rounds':>13}  {'CPU ms':>6} {'x hello':>7}  target"
    )
    met = True
    for phase in phases:
        ratio = phase.rate / hello.rate if hello.rate else float("nan")
        # The ratio in each round, against that round's hello-world: its spread shows how much
        # other load on the machine moved the figures.
        pairs = zip(phase.round_rates, hello.round_rates, strict=True)
        per_round = [rate / base for rate, base in pairs if base]
        spread = f"{min(per_round):.3f}-{max(per_round):.3f}" if per_round else ""
        target = TARGETS.get(phase.name)
        verdict = ""
        if target is not None:
            verdict = f">= {target:.2f}  {'met' if ratio >= target else 'MISSED'}"
            met = met and ratio >= target
        errors = sum(phase.errors.values())
        met = met and not errors
        by_cpu = hello.cpu_ms / phase.cpu_ms if phase.ok else 0.0
        print(
            f"{phase.name:<13} {phase.rate:>11.1f} {phase.percentile(0.50):>8.2f} "
            f"{phase.percentile(0.99):>8.2f} {phase.ok:>8} {errors:>7}  {ratio:>7.3f} "
            f"{spread if phase is not hello else '':>13}  {phase.cpu_ms:>6.2f} {by_cpu:>7.3f}"
            f"  {verdict}"
        )
    print(
        "x hello: the rate against the hello-world's; rounds: the lowest and highest of "
        "that ratio in one round; CPU ms: CPU time of the server's processes (and of its "
        "PostgreSQL backends) per counted request, and x hello by that measure, which other "
        "load on the machine hardly moves"
    )
    rates = hello.round_rates
    if rates and min(rates) and max(rates) / min(rates) > 1.25:
        print(
            f"WARNING: the hello-world's rate moved between rounds ({min(rates):.0f} to "
            f"{max(rates):.0f}/s): other load on the machine, so take these figures with care"
        )
    for phase in phases:
        if phase.stopped_early:
            print(
                f"  {phase.name}: {phase.stopped_early} connection-rounds ran out of fresh "
                "contacts and stopped early (the rest kept the workers busy; raise "
                "--max-post-rate if this is more than a few)"
            )
        if phase.errors:
            listed = ", ".join(f"{what}: {n}" for what, n in sorted(phase.errors.items()))
            print(f"  {phase.name} errors (not counted as throughput): {listed}")
    return met


def add_server_options(parser: argparse.ArgumentParser, *, max_post_rate: float, database: str):
    """Add the options every gunicorn-and-wrk benchmark takes (this one and one_click.py)."""
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--seconds",
        type=int,
        default=10,
        help="measured seconds of each phase, in all its rounds together",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="the phases take turns this many times, so that other load on "
        "the machine falls on all of them alike",
    )
    parser.add_argument("--warmup", type=int, default=3, help="each warm-up, not counted")
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="wrk connections (one thread each), the same in every phase",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-post-rate",
        type=float,
        default=max_post_rate,
        help="POSTs per second to provision fresh contacts or tokens for",
    )
    parser.add_argument(
        "--postgresql-server", default="postgresql+psycopg://postgres@127.0.0.1:5432"
    )
    parser.add_argument("--postgresql-database", default=database)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the preference page against a Flask hello-world under gunicorn."
    )
    add_server_options(parser, max_post_rate=300.0, database="bench_portal")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record each portal phase with py-spy (flame graphs in --keep)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (logs, wrk results, data files)",
    )
    args = parser.parse_args()
    if args.profile:
        args.rounds = 1  # one py-spy recording per phase
    slice_seconds = max(1, args.seconds // args.rounds)
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    if not (BIN / "gunicorn").exists():
        sys.exit("gunicorn is missing: .venv/bin/pip install -e '.[serve]'")

    work = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    portal_port, hello_port = _free_port(), _free_port()
    if args.db == "sqlite":
        database_url = f"sqlite:///{work}/portal.sqlite3"
    else:
        database_url = _create_postgresql(args.postgresql_server, args.postgresql_database)
    env = _portal_environment(database_url, portal_port)
    servers: list[Server] = []
    started = datetime.now(UTC)
    try:
        print(f"preparing {args.db} database in {work if args.db == 'sqlite' else database_url}")
        _run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], env, "migration")
        data_dir = work / "data"
        # Each warm-up of a POST phase has its own contacts, provisioned for --max-post-rate.
        warm_per_client = _per_client(args.max_post_rate, args.warmup, args.connections)
        pools = [f"--pool=warm-{mode}:{args.connections}:{warm_per_client}" for mode in POST_MODES]
        _run(
            [str(BIN / "python"), str(BENCH / "data.py"), str(data_dir), "--demo", *pools],
            env,
            "loading data",
        )

        portal = Server(
            "portal",
            "wsgi:app",
            portal_port,
            args,
            env,
            ROOT,
            work / "portal-gunicorn.log",
            args.postgresql_database if args.db == "postgresql" else None,
        )
        servers.append(portal)
        hello = Server(
            "hello-world", "hello:app", hello_port, args, env, BENCH, work / "hello-gunicorn.log"
        )
        servers.append(hello)
        portal.wait_ready("/")
        hello.wait_ready("/")
        print(
            f"serving: gunicorn {args.workers} workers ({args.worker_class}"
            f"{f', {args.threads} threads' if args.worker_class == 'gthread' else ''}), "
            f"wrk {args.connections} connections; per phase {args.warmup} s warm-up, then "
            f"{args.rounds} rounds of {slice_seconds} s, the phases taking turns"
        )

        plan = (
            ("hello-world", "hello", hello),
            ("page GET", "get", portal),
            ("submit POST", "post", portal),
            ("htmx POST", "post-htmx", portal),
        )
        for name, mode, server in plan:
            warm = _drive(mode, server.port, args.warmup, args, data_dir, f"warm-{mode}", work)
            if warm.errors:
                listed = ", ".join(f"{what}: {n}" for what, n in sorted(warm.errors.items()))
                print(f"  warm-up of {name} had errors: {listed}")
            if mode in POST_MODES:
                # Contacts for the measured rounds: three times what the warm-up's
                # rate needs (a quarter of --max-post-rate at least), so that each POST
                # changes a contact no other POST has touched.
                rate = max(warm.rate * 3, args.max_post_rate / 4)
                per_client = _per_client(rate, slice_seconds, args.connections)
                pools = [
                    f"--pool={mode}-r{number}:{args.connections}:{per_client}"
                    for number in range(1, args.rounds + 1)
                ]
                _run(
                    [str(BIN / "python"), str(BENCH / "data.py"), str(data_dir), *pools],
                    env,
                    "loading data",
                )
        phases = {name: Phase(name) for name, _mode, _server in plan}
        load_before = os.getloadavg()[0]
        for number in range(1, args.rounds + 1):
            for name, mode, server in plan:
                before = _row_counts(database_url) if mode in POST_MODES else None
                profiler = _start_profile(server, name, args, work) if mode != "hello" else None
                cpu_before = server.cpu_seconds()
                result = _drive(
                    mode, server.port, slice_seconds, args, data_dir, f"{mode}-r{number}", work
                )
                result.cpu_seconds = server.cpu_seconds() - cpu_before
                if result.stopped_early > args.connections // 2:
                    # Too few connections left to keep both workers busy: the rate is low.
                    result.errors["out-of-contacts"] = result.stopped_early
                if profiler is not None:
                    profiler.wait()
                if before is not None:
                    time.sleep(0.5)  # let the requests in flight when wrk stopped finish
                    after = _row_counts(database_url)
                    for table in CHECKED_TABLES:
                        grown = after[table] - before[table]
                        phases[name].grown[table] = phases[name].grown.get(table, 0) + grown
                    phases[name].slack += args.connections
                phases[name].add(result)
            print(
                f"  round {number}: "
                + ", ".join(f"{name} {phases[name].round_rates[-1]:.1f}/s" for name, _m, _s in plan)
            )
        for name, mode, _server in plan:
            if mode in POST_MODES:
                _database_check(phases[name])
        met = _report(list(phases.values()))
        print()
        print(
            f"load average (1 min) {load_before:.2f} before the phases, "
            f"{os.getloadavg()[0]:.2f} after"
        )
        print(
            f"date {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores "
            f"({platform.machine()}); {platform.python_implementation()} "
            f"{platform.python_version()}; database {args.db}; portal {_revision()}"
        )
        print(
            "one request: hello-world = GET /; page GET = GET /p/<token> of a demo contact "
            "(round-robin, no cookie: a first visit from an email); submit POST = the whole "
            "form, changing one choice of the connection's own contact, answered with a 303 "
            "(not followed); htmx POST = the same with HX-Request: true, answered with the "
            "updated form (200)"
        )
        return 0 if met else 1
    finally:
        for server in servers:
            server.stop()
        if args.db == "postgresql" and not args.keep:
            _drop_postgresql(args.postgresql_server, args.postgresql_database)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _database_check(phase: Phase) -> None:
    """Say whether the database grew by one change per counted POST."""
    grown = phase.grown
    changes = grown["undos"] + grown["pending_changes"]
    print(
        f"  database check, {phase.name}: {phase.ok} POSTs counted; {grown['undos']} undo "
        f"records + {grown['pending_changes']} pending changes = {changes} changes; "
        f"{grown['outbox_messages']} mails queued, {grown['ledger_events']} ledger events"
    )
    # wrk stops with up to one request per connection in flight, which the server may finish.
    if not phase.ok <= changes <= phase.ok + phase.slack:
        phase.errors["database-check"] = abs(changes - phase.ok)


def _start_profile(server: Server, name: str, args, work: Path):
    if not args.profile:
        return None
    output = work / f"profile-{name.replace(' ', '-')}.txt"
    # --idle: waiting (for SQLite's write lock, say) shows too, not only running code.
    command = [
        str(BIN / "py-spy"),
        "record",
        "--pid",
        str(server.process.pid),
        "--subprocesses",
        "--nonblocking",
        "--idle",
        "--format",
        "raw",
        "--duration",
        str(args.seconds),
        "--output",
        str(output),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
