"""The journal's SQLite schema, its upgrades, and how a connection is set up.

`runs` has a row per run (the spec snapshot, so a resume needs nothing else);
`events` is the append-only log that `state.py` folds. Triggers make UPDATE and
DELETE of either table fail, and INSERT over an existing key: history is never
rewritten. `summaries` caches the fold's answer per run, for `durable runs`
(`summary.py`). Every row carries a checksum (`integrity.py`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from durable.journal.file import SCHEMA_VERSION

DURABILITY = {
    # In WAL mode a NORMAL commit survives the process dying (the OS has the pages)
    # but the last commits may roll back on power loss; FULL fsyncs every commit.
    "normal": "NORMAL",
    "full": "FULL",
    # No syncs at all: for tests and benchmarks only.
    "off": "OFF",
}

# A run's summary (`summary.py`): the one row that is rewritten, in the same
# transaction as the events it covers. A cache of the fold, not history.
_SUMMARIES = """CREATE TABLE IF NOT EXISTS summaries (
    run_id   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,  -- the run's last event that the summary covers
    data     BLOB NOT NULL,     -- msgpack of a summary.RunSummary
    crc      INTEGER NOT NULL   -- integrity.summary_crc
) WITHOUT ROWID"""

#: The triggers that make `runs` and `events` append-only: name -> statement, in
#: the order the schema creates them. `durable prune` (`durable/prune.py`), the one
#: sanctioned deletion, drops them and re-creates them from here in one transaction.
APPEND_ONLY_TRIGGERS = {
    "runs_append_only_update": """CREATE TRIGGER IF NOT EXISTS runs_append_only_update BEFORE UPDATE ON runs
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END""",
    "runs_append_only_delete": """CREATE TRIGGER IF NOT EXISTS runs_append_only_delete BEFORE DELETE ON runs
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END""",
    "events_append_only_update": """CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END""",
    "events_append_only_delete": """CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END""",
    "runs_append_only_replace": """-- INSERT OR REPLACE deletes the old row without firing DELETE triggers (unless
-- recursive_triggers is on), so an insert over an existing key is refused here.
CREATE TRIGGER IF NOT EXISTS runs_append_only_replace BEFORE INSERT ON runs
    WHEN EXISTS (SELECT 1 FROM runs WHERE run_id = NEW.run_id)
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END""",
    "events_append_only_replace": """CREATE TRIGGER IF NOT EXISTS events_append_only_replace BEFORE INSERT ON events
    WHEN NEW.seq IS NOT NULL AND EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq)
    BEGIN SELECT RAISE(ABORT, 'the durable journal is append-only'); END""",
}
_TRIGGERS = "".join(f"{statement};\n" for statement in APPEND_ONLY_TRIGGERS.values())

# The cache across runs (`durable run --cache`): a task's fingerprint -> the
# committed success that answers it. Written in the same transaction as that
# success, so an entry never names an output a crash could take back; deleted by
# `durable cache clear` (the events it points to stay).
_CACHE = """CREATE TABLE IF NOT EXISTS cache (
    fingerprint TEXT PRIMARY KEY,
    tool        TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,  -- the task_succeeded event
    at          REAL NOT NULL
) WITHOUT ROWID"""

# Requests to the process driving a run, from another process (`durable cancel`).
# Not history: the driver journals what it does about one, and deletes it.
_REQUESTS = """CREATE TABLE IF NOT EXISTS requests (
    run_id TEXT NOT NULL,
    kind   TEXT NOT NULL,
    at     REAL NOT NULL
)"""

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    workflow   TEXT NOT NULL,
    spec       BLOB NOT NULL,   -- JSON snapshot of the workflow as it was run
    spec_hash  TEXT NOT NULL,
    params     BLOB NOT NULL,   -- JSON of the effective params
    base_dir   TEXT NOT NULL,   -- where `imports:` are found on resume
    created_at REAL NOT NULL,
    cwd        TEXT,            -- where the run's tasks run, whoever resumes it
    crc        INTEGER          -- integrity.run_crc of the row
);
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL,
    task_id TEXT,
    attempt INTEGER,
    kind    TEXT NOT NULL,
    at      REAL NOT NULL,
    data    BLOB,
    crc     INTEGER  -- integrity.event_crc, chained per run
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq);
{_SUMMARIES};
{_CACHE};
{_REQUESTS};
{_TRIGGERS}PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

# Version 1 had no checksums and no working directory. Its rows keep NULL there
# and are read unchecked; everything written since carries checksums.
_MIGRATE_FROM_1 = (
    "ALTER TABLE runs ADD COLUMN cwd TEXT",
    "ALTER TABLE runs ADD COLUMN crc INTEGER",
    "ALTER TABLE events ADD COLUMN crc INTEGER",
    "PRAGMA user_version = 2",
)
# Version 2 had no summaries (its runs are folded until a session writes one),
# no cache and no requests.
_MIGRATE_FROM_2 = (_SUMMARIES, _CACHE, _REQUESTS, "PRAGMA user_version = 3")
# Version 3 had no `task_ran` rows (`events.RAN`); the tables are the same. The
# number changes so that an older durable refuses the journal as newer than it
# understands, rather than calling those rows damage.
_MIGRATE_FROM_3 = ("PRAGMA user_version = 4",)
_MIGRATIONS = {
    1: _MIGRATE_FROM_1 + _MIGRATE_FROM_2 + _MIGRATE_FROM_3,
    2: _MIGRATE_FROM_2 + _MIGRATE_FROM_3,
    3: _MIGRATE_FROM_3,
}

_INSERT_EVENTS = "INSERT INTO events (run_id, task_id, attempt, kind, at, data, crc) VALUES "
# Multi-row INSERTs bind a batch in one call: about a third cheaper per row than
# `executemany`, which binds row by row from Python. Chunk sizes are fixed so that
# only these few statements are ever prepared (the sqlite3 module caches them);
# 1 is a chain's commit (a task's `task_ran` row), 2 its start and an outcome apart.
CHUNKS = (256, 32, 4, 2, 1)
INSERT_CHUNK = {
    size: _INSERT_EVENTS + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * size) for size in CHUNKS
}


# An upsert changes the row in place (REPLACE would delete and insert it), and
# WITHOUT ROWID keeps it in one b-tree: a commit dirties one more page, not three.
SAVE_SUMMARY = (
    "INSERT INTO summaries (run_id, last_seq, data, crc) VALUES (?, ?, ?, ?) ON CONFLICT"
    " (run_id) DO UPDATE SET last_seq = excluded.last_seq, data = excluded.data, crc = excluded.crc"
)

REMEMBER = "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?, ?)"

#: The most often a run's summary is rewritten, in seconds; and the events with
#: which it always is, so that a run that stopped has a summary of all it did.
SUMMARY_EVERY = 0.05
SESSION_ENDS = frozenset({"run_finished", "run_interrupted"})

#: Rows written between two checkpoints (`Journal._start_checkpoint`): rows, not
#: events, since the WAL grows by the rows and the pages a commit writes (a
#: `task_ran` row is two events in one row).
CHECKPOINT_EVERY = 2000

#: The WAL's length past which a checkpoint takes a second pass, with the writer
#: waiting, so that the WAL starts over (`Journal._finish_checkpoint`). A chain of
#: tasks adds about 17 MB to it every `CHECKPOINT_EVERY` rows (a row and two pages a
#: commit), a wide DAG about 0.5 MB.
WAL_LIMIT = 64 * 2**20


def roll_back(conn: sqlite3.Connection) -> None:
    """Undo a failed write. SQLite has already rolled back after some errors (a
    full disk): a second ROLLBACK would hide the real cause behind its own error,
    so it is only issued while a transaction is still open."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class immediate:
    """`with immediate(conn):` one write transaction: BEGIN IMMEDIATE, then COMMIT,
    or ROLLBACK (`roll_back`) if anything in it raised. A class rather than a
    generator: the group commit goes through it once per batch.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:  # a COMMIT that fails (busy, I/O) may leave it open
                roll_back(self.conn)
                raise
        else:
            roll_back(self.conn)


def checkpoint(path: Path) -> int:
    """A PASSIVE checkpoint of the journal at `path`, from a connection of its own;
    returns the length of the WAL it found, in bytes."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout=5000")
        _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        page_size: int = connection.execute("PRAGMA page_size").fetchone()[0]
        return max(frames, 0) * page_size
    finally:
        connection.close()


def configure(connection: sqlite3.Connection, durability: str) -> None:
    """Pragmas, once per connection, and the schema if the file is new."""
    # Durability first: on a new file, the switch to WAL below is a transaction of
    # the rollback journal, which NORMAL commits with one fsync of that journal
    # fewer than the default FULL (a new journal has nothing to lose; 8 syncs for
    # a one-task run, not 9).
    connection.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
    # WAL: readers (status, log --follow) never block the writer, and appends are
    # sequential writes to the log rather than page rewrites.
    connection.execute("PRAGMA journal_mode=WAL")
    # Another process holding the write lock (a second run on the same journal)
    # makes us wait up to 5 s instead of failing at once.
    connection.execute("PRAGMA busy_timeout=5000")
    # Checkpoints run on a thread of their own (`Journal._start_checkpoint`).
    connection.execute("PRAGMA wal_autocheckpoint=0")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        # Idempotent (IF NOT EXISTS) and in one IMMEDIATE transaction, so two
        # processes creating the same journal at once both end up with one schema.
        connection.executescript(_SCHEMA)
    elif version in _MIGRATIONS:
        with immediate(connection):
            # Another process may have migrated it while we waited for the lock.
            if connection.execute("PRAGMA user_version").fetchone()[0] == version:
                for statement in _MIGRATIONS[version]:
                    connection.execute(statement)
