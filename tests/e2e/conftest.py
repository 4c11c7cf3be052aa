"""Shared helpers for the end-to-end tests, which drive the real `durable` command.

Every e2e test uses these, and no test file defines its own copy. Each helper is a
session-scoped fixture that returns the function (conftest modules cannot be
imported by a stable name, so take them as fixture arguments:
`def test_x(durable, write, tmp_path): ...`); the function behind `durable` is
`run_durable`, the others have the fixture's name.

- `durable(*args, cwd, env=None, timeout=60, check=None, input=None)`: run the
  command to completion and return the `CompletedProcess` (text). It never raises on
  a non-zero exit unless asked: `check=N` asserts that the exit code is N and shows
  stdout and stderr when it is not. `cwd` is required, so that a command run without
  `--db` writes its `.durable/` into the test's own folder. `env` holds variables
  added to this process's environment (a value of None removes one). stdin is empty
  unless `input` is given.
- `start(*args, cwd, env=None, stdout=PIPE, stderr=PIPE, text=True)`: start the
  command in the background, in a session (and process group) of its own, so a
  signal meant for it never reaches pytest. `stop(process)` kills it and its group
  if it is still alive; call it in a `finally`.
- `write(folder, name, text) -> Path`: write a file (a workflow, a `tools.py`).
- `journal_rows(db, sql, params=())`: read the journal directly, read-only. The
  connection is a plain `mode=ro` one (never `immutable=1`, which would read the
  file under a live writer's feet), retried while SQLite says the file is busy or
  not yet created.
- `count_events(db, run_id=None, kind=None, task_id=None)`: committed events, 0
  while the journal does not exist yet. `journal_kinds(db, run_id)`: a run's events
  as (task_id, kind) pairs, in journal order.
- `wait_for_events(db, run_id, kind, count=1, *, task_id=None, process=None,
  timeout=30)`: poll the journal (not the clock) until it holds `count` events of
  `kind`; fail at once if `process` exits first. Returns the count it saw.
- `Lines(stream)`: a child's output line by line, each wait with a timeout.
- `no_traceback(result)`, `as_json(result)`, `json_lines(text)`: small readers of
  a finished command's output.

The journal's backend: SQLite files by default; `DURABLE_TEST_BACKEND=postgres`
runs the same tests on PostgreSQL (the server `tests/pg.py` names: `DURABLE_TEST_PG`,
else 127.0.0.1:5432). Then every journal file a test names becomes a fresh database
of its own, made the first time the test names that path and dropped after the test
(one named by a module fixture lives for the session): `durable` and `start` rewrite
`--db FILE`, `$DURABLE_DB` and the default `.durable/journal.db` (resolved against
the command's `cwd`) to that database's DSN, so the same path is the same database
throughout a test and two paths are two databases; a `postgresql://` target and the
commands that open no journal are left alone. The readers follow: `journal_rows`
runs its query on the database (`?` placeholders numbered, the tables found in
schema `durable`), `count_events` and `wait_for_events` count there. Three more
helpers hide the difference where a test needs it:

- `journal_target(path, cwd=None)`: what `--db` names for that file (the path on
  SQLite, the DSN on PostgreSQL), for a script of the test's own, or a message.
- `journal_digest(db)`: a hash of all the journal holds, for "wrote nothing": the
  file and its WAL on SQLite; every row of every table on PostgreSQL.
- `journal_exists(db)`: the file exists; the database holds durable's schema.

A test about the SQLite file itself (it opens it with sqlite3, damages it, checks its
locks or WAL, or the space `prune` gives back to the file system) is marked
`@pytest.mark.sqlite_only("why")` and skipped on PostgreSQL; one a known bug fails
there, `@pytest.mark.postgres_bug("why")`, a strict xfail. Whole files that open no
journal, or choose PostgreSQL themselves, are skipped there too (`NOT_ON_POSTGRES`).
On SQLite none of this changes anything.

Every test collected here is marked `e2e`, whether or not its file says so. And one
autouse fixture, `no_leftover_processes`: on Linux the pytest process is made a
child subreaper (once, for the rest of the session), so that any process a test's
`durable` started and left behind is re-parented to pytest rather than to init.
After each test, a child of pytest that appeared during the test and is still
alive after 5 s is killed, and the test fails at teardown naming its command line;
dead ones are reaped. Elsewhere than Linux the check is skipped.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import pg
import pytest


def durable_command() -> list[str]:
    """The installed `durable` script beside this interpreter, else `python -m`."""
    script = Path(sys.executable).with_name("durable")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "durable_cli.main"]


DURABLE = durable_command()


def environment(env: Mapping[str, str | None] | None) -> dict[str, str] | None:
    """This process's environment with `env` applied; None (inherit) when `env` is."""
    if env is None:
        return None
    merged = dict(os.environ)
    for key, value in env.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


# -- the journal's backend: SQLite files, or PostgreSQL databases in their place ----

#: `DURABLE_TEST_BACKEND=postgres` runs the e2e tests on PostgreSQL (see the docstring).
BACKEND = os.environ.get("DURABLE_TEST_BACKEND", "sqlite").strip().lower() or "sqlite"
if BACKEND not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"DURABLE_TEST_BACKEND={BACKEND!r}: sqlite or postgres")
ON_POSTGRES = BACKEND == "postgres"
#: Commands that open no journal: no database is made for them.
NO_JOURNAL = frozenset({"validate", "graph", "bench", "--help", "-h", "--version"})
#: Test files (name patterns) that postgres mode skips, leaving them to the SQLite
#: pass: they would run exactly the same test again, or choose PostgreSQL themselves.
NOT_ON_POSTGRES = {
    "test_validate_cli.py": "opens no journal",
    "test_examples_validate.py": "opens no journal",
    "test_workflow_fuzz.py": "opens no journal",
    "test_docs.py": "opens no journal",
    "test_bench_cli.py": "bench measures a temporary SQLite file of its own",
    "test_postgres_cli.py": "on PostgreSQL already, a database of its own per test",
    "test_fleet*.py": "the fleet is on PostgreSQL already, and its tests choose the journal",
}


def _key(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """A journal file's identity: its absolute path (relative to `cwd` if given)."""
    return os.path.realpath(os.path.join(cwd, path) if cwd is not None else path)


class PgJournals:
    """One test's journal files, each a fresh PostgreSQL database (postgres mode).

    The same path (after resolving it against the command's folder) is always the same
    database within a test, and two paths are two databases. A database is made the
    first time a path is named, by a command or a helper, and dropped after the test.
    """

    def __init__(self) -> None:
        self._databases: dict[str, str] = {}
        self._stack = ExitStack()
        self._lock = threading.Lock()  # module fixtures run commands from threads

    def dsn(self, path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
        key = _key(path, cwd)
        with self._lock:
            if key not in self._databases:
                self._databases[key] = self._stack.enter_context(pg.fresh_database())
            return self._databases[key]

    def known(self, path: str | os.PathLike[str]) -> str | None:
        return self._databases.get(_key(path))

    def close(self) -> None:
        try:
            _reader.close(list(self._databases.values()))
        finally:
            self._stack.close()


#: The running test's databases (postgres mode), set by the autouse `pg_journals`.
_journals: PgJournals | None = None
#: Databases named outside a test (by a module- or session-scoped fixture): kept for
#: the session, since later tests read them, and dropped at its end.
_session_journals = PgJournals()


def _dsn(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None) -> str:
    shared = _session_journals.known(_key(path, cwd))
    if shared is not None:
        return shared
    return (_journals or _session_journals).dsn(path, cwd)


def pytest_sessionfinish() -> None:
    if ON_POSTGRES:
        _session_journals.close()


def journal_target(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """What `--db` should name for the journal file `path`: the path itself on SQLite,
    its test database's DSN on PostgreSQL. For a test that runs durable in another
    way than `durable`/`start` (a script of its own calling the API)."""
    if not ON_POSTGRES or str(path).startswith(("postgresql://", "postgres://")):
        return str(path)
    return _dsn(path, cwd)


def on_backend(
    args: tuple[str | os.PathLike[str], ...],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str | None] | None,
) -> tuple[list[str], Mapping[str, str | None] | None]:
    """A command's arguments and environment, with its journal on the test's backend.

    On SQLite, unchanged. On PostgreSQL, `--db FILE`, `$DURABLE_DB` (a file) and the
    default `.durable/journal.db` each become the DSN of that file's database (shell
    completion, a bare `durable` with `_DURABLE_COMPLETE` set, included); a
    `postgresql://` journal stays as it is, and commands without a journal are left alone.
    """
    command = [str(arg) for arg in args]
    if not ON_POSTGRES or (command and command[0] in NO_JOURNAL):
        return command, env
    named = False
    for i, arg in enumerate(command):
        if arg == "--db" and i + 1 < len(command):
            command[i + 1] = journal_target(command[i + 1], cwd)
            named = True
        elif arg.startswith("--db="):
            command[i] = "--db=" + journal_target(arg[len("--db=") :], cwd)
            named = True
    if named:
        return command, env
    if env is not None and "DURABLE_DB" in env:
        chosen = env["DURABLE_DB"]
    else:
        chosen = os.environ.get("DURABLE_DB")
    target = journal_target(chosen or os.path.join(".durable", "journal.db"), cwd)
    return command, {**(env or {}), "DURABLE_DB": target}


class _PgReader:
    """The helpers' reads of a PostgreSQL journal: one connection per database, on an
    event loop of its own (a daemon thread), so any thread of a test can read."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="pg-reader", daemon=True
                ).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def fetch(self, dsn: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async def fetch() -> list[tuple[Any, ...]]:
            import asyncpg

            entry = self._connections.get(dsn)
            if entry is None or entry[0].is_closed():
                connection = await asyncpg.connect(
                    dsn, timeout=10, server_settings={"search_path": "durable"}
                )
                entry = self._connections[dsn] = (connection, asyncio.Lock())
            connection, lock = entry
            async with lock:
                return [tuple(row) for row in await connection.fetch(sql, *params)]

        return self._run(fetch())

    def close(self, dsns: list[str]) -> None:
        async def close() -> None:
            for dsn in dsns:
                entry = self._connections.pop(dsn, None)
                if entry is not None:
                    try:
                        await entry[0].close(timeout=5)
                    except Exception:
                        entry[0].terminate()

        if any(dsn in self._connections for dsn in dsns):
            self._run(close())


_reader = _PgReader()


def _pg_sql(sql: str) -> str:
    """SQLite's `?` placeholders as PostgreSQL's `$1, $2...` (the tables are found
    through the connection's search_path, schema `durable`)."""
    numbers = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)


def _pg_rows(db: Path, sql: str, params: tuple[Any, ...], timeout: float) -> list[tuple[Any, ...]]:
    """`journal_rows` on PostgreSQL; retried while durable has not made the schema yet."""
    import asyncpg

    dsn = journal_target(db)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _reader.fetch(dsn, _pg_sql(sql), params)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def run_durable(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str | None] | None = None,
    timeout: float = 60,
    check: int | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `durable ARGS...` to completion (see the module docstring)."""
    command, env = on_backend(args, cwd, env)
    result = subprocess.run(
        [*DURABLE, *command],
        cwd=cwd,
        env=environment(env),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check is not None:
        assert result.returncode == check, (
            f"durable {' '.join(map(str, args))} exited {result.returncode}, not {check}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def start(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str | None] | None = None,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    text: bool = True,
) -> subprocess.Popen[Any]:
    """Start `durable ARGS...` in the background, in a session of its own."""
    command, env = on_backend(args, cwd, env)
    return subprocess.Popen(
        [*DURABLE, *command],
        cwd=cwd,
        env=environment(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=text,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[Any] | None) -> None:
    """Kill a started command (and its process group) if it is still running; reap it."""
    if process is None:
        return
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def write(folder: Path, name: str, text: str) -> Path:
    """Write `text` to `folder/name` and return the path."""
    path = folder / name
    path.write_text(text)
    return path


def journal_rows(
    db: Path, sql: str, params: tuple[Any, ...] = (), *, timeout: float = 5.0
) -> list[tuple[Any, ...]]:
    """Run one query on the journal, read-only; retry SQLite's transient refusals.

    A writer in another process may hold a lock for a moment, or not have created
    the file, its schema or its WAL index yet: each is an OperationalError, retried
    for up to `timeout` seconds and raised after that.

    On PostgreSQL (postgres mode), the same query on the file's database, its `?`
    placeholders numbered; retried while its tables are not there yet.
    """
    if ON_POSTGRES:
        return _pg_rows(db, sql, params, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout)
            try:
                return connection.execute(sql, params).fetchall()
            finally:
                connection.close()
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def count_events(
    db: Path, run_id: str | None = None, kind: str | None = None, task_id: str | None = None
) -> int:
    """Committed events (of a run, of one kind, for one task); 0 while there is no journal."""
    if ON_POSTGRES:
        return _pg_count_events(db, run_id, kind, task_id)
    if not db.exists():
        return 0
    sql, params = _count_query(run_id, kind, task_id)
    try:
        return journal_rows(db, sql, params, timeout=0)[0][0]
    except sqlite3.OperationalError:  # the schema or the WAL index is not there yet
        return 0


def _count_query(
    run_id: str | None, kind: str | None, task_id: str | None
) -> tuple[str, tuple[Any, ...]]:
    """The count of events `count_events` asks either backend (`?` placeholders).

    A `task_ran` row is two events, a task's `task_started` and its `task_succeeded`
    committed together (`durable.events.RAN`): it counts as one of either kind, and
    as two events of any kind.
    """
    sql = "SELECT coalesce(sum(CASE kind WHEN 'task_ran' THEN 2 ELSE 1 END), 0) FROM events"
    sql += " WHERE TRUE"
    params: list[Any] = []
    if kind in ("task_started", "task_succeeded"):
        sql = "SELECT count(*) FROM events WHERE kind IN (?, 'task_ran')"
        params.append(kind)
        kind = None
    for column, value in (("run_id", run_id), ("kind", kind), ("task_id", task_id)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    return sql, tuple(params)


def _pg_count_events(db: Path, run_id: str | None, kind: str | None, task_id: str | None) -> int:
    import asyncpg

    sql, params = _count_query(run_id, kind, task_id)
    try:
        return _pg_rows(db, sql, params, timeout=0)[0][0]
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0  # durable has not made the journal's tables yet


#: Every table of the PostgreSQL journal, each in an order that fixes its rows.
_PG_TABLES = {
    "schema_version": "version",
    "runs": "run_id",
    "events": "seq",
    "summaries": "run_id",
    "cache": "fingerprint",
    "requests": "run_id, kind, at",
}


def journal_digest(db: Path) -> str:
    """A hash of everything the journal holds, to check that a command wrote nothing.

    On SQLite, the file's bytes and its write-ahead log's (a missing WAL and an empty
    one are the same journal: a read-only reader may create an empty one, a writer's
    last close deletes it); the file must exist. On PostgreSQL, every row of every
    table of schema `durable` (none while there is no journal there).
    """
    if not ON_POSTGRES:
        digest = hashlib.sha256(db.read_bytes())
        wal = Path(f"{db}-wal")
        digest.update(wal.read_bytes() if wal.exists() else b"")
        return digest.hexdigest()
    tables = []
    if journal_exists(db):
        for table, order in _PG_TABLES.items():
            tables.append(journal_rows(db, f"SELECT * FROM {table} ORDER BY {order}"))
    return hashlib.sha256(repr(tables).encode()).hexdigest()


def journal_exists(db: Path) -> bool:
    """Whether there is a journal at `db`: the file on SQLite, the schema on PostgreSQL."""
    if not ON_POSTGRES:
        return db.exists()
    found = _reader.fetch(
        journal_target(db), "SELECT to_regclass('durable.schema_version') IS NOT NULL", ()
    )
    return bool(found[0][0])


def journal_kinds(db: Path, run_id: str) -> list[tuple[str | None, str]]:
    """A run's events as (task_id, kind), in journal order: a `task_ran` row is its
    task's `task_started` and `task_succeeded`."""
    kinds: list[tuple[str | None, str]] = []
    for task_id, kind in journal_rows(
        db, "SELECT task_id, kind FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
    ):
        if kind == "task_ran":
            kinds += [(task_id, "task_started"), (task_id, "task_succeeded")]
        else:
            kinds.append((task_id, kind))
    return kinds


def wait_for_events(
    db: Path,
    run_id: str,
    kind: str,
    count: int = 1,
    *,
    task_id: str | None = None,
    process: subprocess.Popen[Any] | None = None,
    timeout: float = 30,
    poll: float = 0.002,
) -> int:
    """Return as soon as the journal holds `count` committed events of `kind`.

    With `process`, fail as soon as it exits before that (showing its stderr, if
    piped); a process that is still running at the deadline is killed.
    """
    deadline = time.monotonic() + timeout
    what = f"{count} {kind} event(s) for run {run_id}" + (f", task {task_id}" if task_id else "")
    while (seen := count_events(db, run_id, kind, task_id)) < count:
        if process is not None and process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            pytest.fail(f"durable exited ({process.returncode}) before {what}: {stderr}")
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(poll)
    return seen


def read_first_line_and_quit(
    process: subprocess.Popen[Any], timeout: float = 60
) -> tuple[str, int, str]:
    """Read a started command's first line of output, then close the pipe, as
    `| head -1` does; return that line, its exit code and its stderr."""
    first = process.stdout.readline()  # type: ignore[union-attr]
    process.stdout.close()  # type: ignore[union-attr]
    code = process.wait(timeout=timeout)
    return first, code, process.stderr.read()  # type: ignore[union-attr]


class Lines:
    """A child's output, line by line, read by a thread so that every wait can time out.

    (Selecting on the pipe and then calling `readline` is not enough: the text
    wrapper may buffer several lines at once, and the next select never wakes.)
    """

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):  # closed under us by `stop`, after a failure
            pass
        self._queue.put(None)

    def next(self, timeout: float = 30) -> str:
        """The next line; fails if none comes within `timeout` or the output ended."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None
        assert line is not None, "the output ended"
        return line

    def rest(self, timeout: float = 30) -> str:
        """Everything until the stream closes."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"output still open after {timeout}s"
        lines = []
        while (line := self._queue.get_nowait()) is not None:
            lines.append(line)
        return "".join(lines)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    """A traceback means a user error reached durable as a bug."""
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a command printed; it must have exited 0."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def json_lines(text: str) -> list[dict[str, Any]]:
    """One JSON object per non-blank line (`--json` event streams)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is an e2e test (`-m "not e2e"` skips them all). In
    postgres mode, one marked `sqlite_only("why")` is skipped, saying why, and one
    marked `postgres_bug("why")` is expected to fail (strictly: once the bug is fixed,
    the test passes and the pass fails, until the marker goes)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            if not ON_POSTGRES:
                continue
            for pattern, why in NOT_ON_POSTGRES.items():
                if fnmatch.fnmatch(item.path.name, pattern):
                    item.add_marker(pytest.mark.skip(reason=f"not on postgres: {why}"))
            marker = item.get_closest_marker("sqlite_only")
            if marker is not None:
                why = marker.args[0] if marker.args else "about the SQLite journal file"
                item.add_marker(pytest.mark.skip(reason=f"sqlite_only: {why}"))
            marker = item.get_closest_marker("postgres_bug")
            if marker is not None:
                why = marker.args[0] if marker.args else "a known bug on PostgreSQL"
                item.add_marker(pytest.mark.xfail(reason=f"postgres_bug: {why}", strict=True))


@pytest.fixture(autouse=True)
def pg_journals() -> Iterator[PgJournals | None]:
    """Postgres mode: this test's journal files as databases, dropped afterwards."""
    global _journals
    if not ON_POSTGRES:
        yield None
        return
    _journals = PgJournals()
    try:
        yield _journals
    finally:
        journals, _journals = _journals, None
        journals.close()


@pytest.fixture
def dsn() -> Iterator[str]:
    """A fresh PostgreSQL database, whatever the backend of the run: for the tests
    that choose PostgreSQL themselves (the fleet, the DSN's own errors)."""
    pg.require_pg()
    with pg.fresh_database() as found:
        yield found


# -- the same helpers as fixtures ------------------------------------------------


@pytest.fixture(scope="session", name="durable")
def durable_fixture() -> Any:
    return run_durable


@pytest.fixture(scope="session", name="start")
def start_fixture() -> Any:
    return start


@pytest.fixture(scope="session", name="stop")
def stop_fixture() -> Any:
    return stop


@pytest.fixture(scope="session", name="write")
def write_fixture() -> Any:
    return write


@pytest.fixture(scope="session", name="journal_target")
def journal_target_fixture() -> Any:
    return journal_target


@pytest.fixture(scope="session", name="journal_digest")
def journal_digest_fixture() -> Any:
    return journal_digest


@pytest.fixture(scope="session", name="journal_exists")
def journal_exists_fixture() -> Any:
    return journal_exists


@pytest.fixture(scope="session", name="journal_rows")
def journal_rows_fixture() -> Any:
    return journal_rows


@pytest.fixture(scope="session", name="count_events")
def count_events_fixture() -> Any:
    return count_events


@pytest.fixture(scope="session", name="journal_kinds")
def journal_kinds_fixture() -> Any:
    return journal_kinds


@pytest.fixture(scope="session", name="wait_for_events")
def wait_for_events_fixture() -> Any:
    return wait_for_events


@pytest.fixture(scope="session", name="Lines")
def lines_fixture() -> Any:
    return Lines


@pytest.fixture(scope="session", name="no_traceback")
def no_traceback_fixture() -> Any:
    return no_traceback


@pytest.fixture(scope="session", name="as_json")
def as_json_fixture() -> Any:
    return as_json


@pytest.fixture(scope="session", name="json_lines")
def json_lines_fixture() -> Any:
    return json_lines


# -- process hygiene --------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_GRACE_SECONDS = 5.0


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def children() -> dict[int, tuple[str, str]]:
    """This process's child processes: pid -> (state letter, command line).

    Threads are not listed in /proc (only in /proc/PID/task), so the threads pytest
    and the tests run are never mistaken for processes.
    """
    me = os.getpid()
    found: dict[int, tuple[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) != me:
                continue
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # gone meanwhile
        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        found[int(entry)] = (state, command or stat.split("(", 1)[1].rsplit(")", 1)[0])
    return found


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@pytest.fixture(scope="session")
def subreaper() -> bool:
    return become_subreaper()


@pytest.fixture(autouse=True)
def no_leftover_processes(subreaper: bool, pg_journals: Any) -> Iterator[None]:
    """After each test, no process the test started (or its `durable` did) is alive.

    Only processes that appeared during the test count: a process pool that unit
    tests left in the pytest process earlier in the session is not this test's.
    Dead children (zombies) are reaped, not reported. (It takes `pg_journals` so
    that, in postgres mode, the test's databases are dropped only after this check.)
    """
    if not subreaper:
        yield
        return
    before = set(children())
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while True:
        alive = {}
        for pid, (state, command) in children().items():
            if pid in before:
                continue
            if state in ("Z", "X"):
                reap(pid)
            else:
                alive[pid] = command
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if not alive:
        return
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in alive:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    listing = "\n".join(f"  {pid}: {command}" for pid, command in sorted(alive.items()))
    pytest.fail(f"processes left running after the test (now killed):\n{listing}")
