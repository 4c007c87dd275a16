"""Crash runs: `pdsync sync` killed with SIGKILL at a chosen moment, then checked and rerun.
Shared by tests/test_crash.py (CI-sized) and benchmarks/crash_bench.py (issue #6)."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import sqlite_utils
from helpers import EVERY_RUN, FAST_CLIENT, differences, gone_but_not_flagged

from pdsync import totals
from pdsync.entities import builtin_entities
from pdsync.views import FTS

# Entities synced incrementally: the ones a kill can leave half-written, and whose deletions
# only a full pass sees (except deals, which Pipedrive keeps listing as deleted).
INCREMENTAL = tuple(spec.name for spec in builtin_entities() if spec.incremental)
# Where in a sync's life a kill lands. A first sync of an empty database is split at the
# moment its deals are all committed: loading before, indexes and FTS after.
PHASES = ("first/early", "first/middle", "first/indexes", "incremental", "full")


@dataclass
class CrashRun:
    number: int
    phase: str
    kill_at: float = 0.0  # seconds after the sync process started
    killed: bool = False  # False: the sync finished first (after `kill_at` seconds)
    deals: str = ""  # deals the killed sync had committed, "done/to do"
    read_paths: str = ""  # indexes and full-text tables at the kill, "built/all"
    integrity: str = "?"
    rerun_seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and not self.problems


@dataclass
class Timings:
    """Seconds an unkilled sync takes: what kill moments are drawn over. Measured once, then
    replaced by every sync that finishes before its kill (the machine may have sped up)."""

    startup: float  # interpreter start-up and imports, until the database file is opened
    first: float  # first sync of an empty database
    loaded: float  # ... until its deals were all committed (indexes and FTS come after)
    incremental: float
    full: float

    def window(self, phase: str) -> tuple[float, float]:
        """Kill moments for ``phase``, in seconds after the sync process started (for
        first/indexes: after its deals are all in). Start-up is left out: a kill before the
        process has opened the database tells nothing."""
        middle = (self.startup + self.loaded) / 2
        return {
            "first/early": (self.startup, middle),
            "first/middle": (middle, self.loaded),
            "first/indexes": (0.0, self.first - self.loaded),
            "incremental": (self.startup, self.incremental),
            "full": (self.startup, self.full),
        }[phase]

    def finished(self, phase: str, seconds: float) -> None:
        if phase.startswith("first"):
            scale = (seconds - self.startup) / max(self.first - self.startup, 1e-3)
            self.loaded = self.startup + (self.loaded - self.startup) * scale
            self.first = seconds
        else:
            setattr(self, phase, seconds)


def sync_env(fake, url: str) -> dict[str, str]:
    return {**os.environ, "PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": url}


def start_sync(db_path: str, env: dict, full: bool = False, stderr=None) -> subprocess.Popen:
    args = [sys.executable, "-m", "pdsync", "sync", db_path, "--quiet"]
    return subprocess.Popen(
        args + (["--full"] if full else []),
        env=env,
        cwd=os.path.dirname(db_path),  # no stray auth.json: the token is in env
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if stderr is None else stderr,
    )


def run_sync(db_path: str, env: dict, full: bool = False, timeout: float = 600) -> float:
    """Run `pdsync sync` to the end and return its seconds; AssertionError if it fails."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = start_sync(db_path, env, full, stderr=err)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"pdsync sync did not finish in {timeout:.0f}s") from None
        seconds = time.perf_counter() - started
        if code != 0:
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
            raise AssertionError(f"pdsync sync exited {code}: {message[-2000:]}")
    return seconds


def read_only(path: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the database at ``path``; [] when the file or table is missing."""
    if not os.path.exists(path):
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def deal_rows(path: str) -> int:
    rows = read_only(path, "select count(*) from deals")
    return rows[0][0] if rows else 0


def wait_for_deals(db_path: str, proc: subprocess.Popen, total: int) -> bool:
    """Until the sync in ``proc`` has committed ``total`` deals; False if it ended first."""
    conn = None
    try:
        while proc.poll() is None:
            if conn is None and os.path.exists(db_path):
                conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            try:
                if conn and conn.execute("select count(*) from deals").fetchone()[0] >= total:
                    return True
            except sqlite3.Error:
                pass  # no deals table yet
            time.sleep(0.01)
        return False
    finally:
        if conn is not None:
            conn.close()


def remove_database(db_path: str) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.exists(db_path + suffix):
            os.remove(db_path + suffix)


def mutate(fake, changes: int, rng: random.Random) -> None:
    """Realistic upstream changes: updates, additions, deletions of every entity."""
    fake.advance(5)
    fake.random_mutations(changes, rng)
    fake.advance(5)


def measure(db_path: str, fake, url: str, changes: int, rng: random.Random) -> Timings:
    """Time one unkilled sync of each kind: first (into a fresh ``db_path``), incremental
    after ``changes``, full after ``changes``. ``db_path`` ends up converged."""
    env = sync_env(fake, url)
    remove_database(db_path)
    started = time.perf_counter()
    proc = start_sync(db_path, env)
    while not os.path.exists(db_path) and proc.poll() is None:
        time.sleep(0.005)
    startup = time.perf_counter() - started
    wait_for_deals(db_path, proc, fake.count("deals"))
    loaded = time.perf_counter() - started
    assert proc.wait() == 0, f"the first sync exited {proc.returncode}"
    first = time.perf_counter() - started
    mutate(fake, changes, rng)
    incremental = run_sync(db_path, env)
    mutate(fake, changes, rng)
    full = run_sync(db_path, env, full=True)
    return Timings(startup, first, min(loaded, first), incremental, full)


def integrity(db_path: str) -> str:
    if not os.path.exists(db_path):
        return "ok"  # killed before it created the file: nothing to damage
    try:
        conn = sqlite3.connect(db_path, timeout=5)
        try:
            return "; ".join(row[0] for row in conn.execute("pragma integrity_check"))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"


def deals_behind(db_path: str, fake) -> int:
    """Deals the database lacks, or holds in an older version than the fake's."""
    if not read_only(db_path, "select 1 from sqlite_master where name = 'deals'"):
        return fake.count("deals")
    db = sqlite_utils.Database(db_path)
    try:
        return len({p.split(".")[0].split(":")[0] for p in differences(db, fake, ["deals"])})
    finally:
        db.close()


def fts_problems(db: sqlite_utils.Database) -> list[str]:
    """Full-text indexes that miss rows of their table, or the triggers that keep them current
    (a table must be searchable however its sync was interrupted)."""
    problems = []
    for table in FTS:
        fts = db[table].detect_fts()
        if fts is None:
            problems.append(f"{table}: no full-text index")
            continue
        triggers = {t.name for t in db[table].triggers}
        missing = sorted({f"{table}_ai", f"{table}_ad", f"{table}_au"} - triggers)
        if missing:
            problems.append(f"{table}: full-text triggers missing: {', '.join(missing)}")
        # External content: the index's own row count is in its docsize table.
        indexed = db.execute(f"select count(*) from [{fts}_docsize]").fetchone()[0]
        rows = db.execute(f"select count(*) from [{table}]").fetchone()[0]
        if indexed != rows:
            problems.append(f"{fts}: indexes {indexed} of {rows} rows")
    return problems


def read_paths(db_path: str) -> int:
    """Indexes and full-text tables in the database (built at the end of a first load)."""
    sql = (
        "select count(*) from sqlite_master where (type = 'index' and sql is not null)"
        " or sql like 'CREATE VIRTUAL TABLE%'"
    )
    rows = read_only(db_path, sql)
    return rows[0][0] if rows else 0


def entity_states(db_path: str) -> dict[str, tuple]:
    """Per entity: (full pass pending, status, what its last sync recorded). Timestamps
    have whole seconds, so duration and requests tell two quick runs apart."""
    sql = (
        "select entity_type, full_pending, status, last_success_time, last_sync_duration_ms,"
        " requests from sync_metadata"
    )
    return {row[0]: row[1:] for row in read_only(db_path, sql)}


def full_pass_reached(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    """Entities the killed full pass reconciled, or left pending for the rerun to resume."""
    reached = set()
    for entity in INCREMENTAL:
        state = after.get(entity)
        if state and (state[0] or (state[1] == "success" and state != before.get(entity))):
            reached.add(entity)
    return reached


def kill_sync(
    run: CrashRun, db_path: str, env: dict, full: bool, delay: float, after_deals: int = 0
) -> float | None:
    """Start `pdsync sync` and SIGKILL it ``delay`` seconds later (counted from the moment
    ``after_deals`` deals are committed, if given). Fills in ``run.kill_at`` and
    ``run.killed``; returns the sync's seconds if it finished first."""
    started = time.perf_counter()
    proc = start_sync(db_path, env, full)
    try:
        if after_deals and not wait_for_deals(db_path, proc, after_deals):
            raise subprocess.TimeoutExpired(proc.args, 0)  # ended before its deals were in
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # ended or not, it is not reaped yet: still ours
        proc.wait()
    run.kill_at = time.perf_counter() - started
    run.killed = proc.returncode == -signal.SIGKILL
    if not run.killed and proc.returncode != 0:
        run.problems.append(f"the sync exited {proc.returncode} before the kill")
    return None if run.killed else run.kill_at


def rerun_in_process(db_path: str, fake, url: str) -> None:
    """The rerun through the library (no interpreter start-up: quicker in tests)."""
    import pdsync

    result = pdsync.sync(
        db_path, token=fake.token, base_url=url, auth_path=None, client_options=FAST_CLIENT
    )
    if not result.ok:
        raise AssertionError(f"pdsync.sync: {result.status} {result.errors}")


def crash_run(
    run: CrashRun, delay: float, db_path: str, fake, url: str, in_process: bool = False
) -> float | None:
    """Start `pdsync sync` (``--full`` in the full phase) and SIGKILL it after ``delay``
    seconds, check the file's integrity, sync again without a kill (`pdsync sync`, or
    ``pdsync.sync`` if ``in_process``) and compare the database with the fake. Findings go in
    ``run``; returns the sync's seconds if it finished before the kill.

    First-phase runs start from an empty database; the others from a converged one that the
    fake has changed since (see ``mutate``).
    """
    env = sync_env(fake, url)
    full, first = run.phase == "full", run.phase.startswith("first")
    if first:
        remove_database(db_path)
    before = entity_states(db_path)
    behind = fake.count("deals") if first else deals_behind(db_path, fake)
    after_deals = fake.count("deals") if run.phase == "first/indexes" else 0
    finished = kill_sync(run, db_path, env, full, delay, after_deals)
    run.integrity = integrity(db_path)
    if run.integrity != "ok":
        return finished  # a damaged file: what a rerun makes of it is beside the point
    built = read_paths(db_path)
    after = entity_states(db_path)
    reached = full_pass_reached(before, after) if full else set()
    if first:
        run.deals = f"{deal_rows(db_path)}/{behind}"  # the database started empty
    elif full:
        # The full pass's progress: deals it has seen, or all once it reconciled them.
        total, done = fake.count("deals"), 0
        if after.get("deals", (0,))[0]:
            sql = "select count(*) from _pdsync_seen where entity_type = 'deals'"
            done = read_only(db_path, sql)[0][0]
        elif "deals" in reached:
            done = total
        run.deals = f"{done}/{total}"
    else:
        run.deals = f"{behind - deals_behind(db_path, fake)}/{behind}"
    # Deletions of persons, organizations, activities and notes only show in a full pass:
    # expect them flagged after a first sync, and where the killed full pass got to.
    reconciled = {"deals"} | (set(INCREMENTAL) if first else reached)
    started = time.perf_counter()
    try:
        if in_process:
            rerun_in_process(db_path, fake, url)
        else:
            run_sync(db_path, env)
    except AssertionError as exc:
        run.problems.append(f"rerun: {exc}")
        return finished
    run.rerun_seconds = time.perf_counter() - started
    run.read_paths = f"{built}/{read_paths(db_path)}"
    db = sqlite_utils.Database(db_path)
    try:
        # Projects and tasks wait for the hourly rotation, unless this was a first sync.
        run.problems += differences(db, fake, None if first else EVERY_RUN)
        run.problems += fts_problems(db)
        run.problems += totals.problems(db)
        for entity in sorted(reconciled):
            gone = gone_but_not_flagged(db, fake, entity)
            run.problems += [f"{entity} {id_}: gone upstream, not flagged" for id_ in gone]
        running = db.execute("select count(*) from sync_runs where status = 'running'")
        if running.fetchone()[0]:
            run.problems.append("sync_runs: a run still says it is running")
    finally:
        db.close()
    return finished


def crash_runs(
    runs: int,
    db_path: str,
    fake,
    url: str,
    timings: Timings,
    changes: int,
    rng: random.Random,
    in_process: bool = False,
):
    """Yield ``runs`` crash runs, cycling through PHASES, each killed at a moment drawn
    uniformly from its phase's window; the fake changes before every non-first run."""
    for number in range(1, runs + 1):
        run = CrashRun(number, PHASES[(number - 1) % len(PHASES)])
        if not run.phase.startswith("first"):
            mutate(fake, changes, rng)
        delay = rng.uniform(*timings.window(run.phase))
        finished = crash_run(run, delay, db_path, fake, url, in_process)
        if finished is not None:
            timings.finished(run.phase, finished)
        yield run
