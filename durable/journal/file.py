"""The journal as a file: is it ours, how to read it without writing, what an error means.

A journal file must be refused before anything is written to it when it is not
SQLite, belongs to another program, or has a newer schema; and a journal SQLite
opens must never be refused. A probe that ignores the WAL (`immutable=1`) sees a
file half-checkpointed by a crash, or by another process right now, as malformed,
although SQLite opens it and loses nothing: so the version comes from the file's
header, and only where that says 0 is the file opened to look for foreign tables,
without side files first and, if that fails, the way SQLite reads it.

Reading commands (`runs`, `status`, `log`, `output`, `check`) never write, so they
must work where the journal cannot be written: a read-only folder or file. SQLite
can read a WAL-mode database read-only only if its `-shm` index exists or can be
made; where neither is possible, the journal is read from a private copy.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from durable.errors import JournalAbsent, JournalError

SCHEMA_VERSION = 4

#: A `--db` target that names a PostgreSQL database, not a file (`postgres.py`).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: object) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


SQLITE_MAGIC = b"SQLite format 3\x00"
#: What reading a damaged file can raise: SQLite's errors, and the UnicodeDecodeError
#: Python's sqlite3 raises instead when SQLite's message holds bytes of the file.
READ_ERRORS = (sqlite3.Error, UnicodeDecodeError)


class FileAccess:
    """How to reach a journal for reading: a URI, and a private copy to delete after."""

    def __init__(self, uri: str, copy_dir: str | None = None) -> None:
        self.uri = uri
        self.copy_dir = copy_dir

    def cleanup(self) -> None:
        if self.copy_dir is not None:
            import shutil

            shutil.rmtree(self.copy_dir, ignore_errors=True)
            self.copy_dir = None


def check_file(path: Path, create: bool) -> None:
    """Refuse what is not a durable journal, writing nothing to it or beside it.

    The schema version is read from the file's header. Only a file whose header
    says version 0 (new, or not ours) is opened to look for foreign tables, first
    without locks or side files (`immutable`), and, should that see a file caught
    mid-checkpoint, the way SQLite itself reads it.
    """
    try:
        if not path.exists() or (path.is_file() and path.stat().st_size == 0):
            if not create:
                raise JournalAbsent(
                    str(path), "no journal here (run a workflow first, or pass --db)"
                )
            return
        if path.is_dir():
            raise JournalError(str(path), "is a directory, not a journal file")
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise JournalError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if not header.startswith(SQLITE_MAGIC):
        raise JournalError(str(path), "not a SQLite database (refusing to touch it)")
    version = int.from_bytes(header[60:64], "big")
    if version > SCHEMA_VERSION:
        raise JournalError(
            str(path),
            f"journal schema version {version} is newer than this durable understands "
            f"({SCHEMA_VERSION}); upgrade durable",
        )
    if version == 0:
        version, has_tables = _schema(path)
        if version == 0 and has_tables:
            raise JournalError(
                str(path), "a SQLite database of another program, not a durable journal"
            )


def _schema(path: Path) -> tuple[int, bool]:
    """The schema version, and whether there are tables, as SQLite reads the file."""
    try:
        return _read_schema(f"{path.resolve().as_uri()}?mode=ro&immutable=1")
    except READ_ERRORS:
        pass  # a file caught mid-checkpoint, say: read it properly, with its WAL
    access = readable(path)
    try:
        return _read_schema(access.uri)
    except READ_ERRORS as exc:
        raise JournalError(str(path), f"cannot read the journal: {describe(exc)}") from None
    finally:
        access.cleanup()


def _read_schema(uri: str) -> tuple[int, bool]:
    connection = sqlite3.connect(uri, uri=True)
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' LIMIT 1")
        return version, bool(tables.fetchall())
    finally:
        connection.close()


def readable(path: Path) -> FileAccess:
    """A read-only way into the journal at `path`, however its folder is protected."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        probe = sqlite3.connect(uri, uri=True)
        try:
            probe.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        finally:
            probe.close()
        return FileAccess(uri)
    except READ_ERRORS as exc:
        if isinstance(exc, UnicodeDecodeError) or not _cannot_write(exc):
            return FileAccess(uri)  # a real problem: the caller's read reports it
    # SQLite needs to create `-shm` (and may need `-wal`) beside the file and may not.
    wal = Path(f"{path}-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        # Without a WAL every committed page is in the file itself.
        return FileAccess(f"{uri}&immutable=1")
    import shutil
    import tempfile

    copy_dir = tempfile.mkdtemp(prefix="durable-read-")
    try:
        shutil.copyfile(path, os.path.join(copy_dir, "journal.db"))
        shutil.copyfile(wal, os.path.join(copy_dir, "journal.db-wal"))
    except OSError as exc:
        shutil.rmtree(copy_dir, ignore_errors=True)
        raise JournalError(str(path), f"cannot read: {exc.strerror or exc}") from None
    copy = Path(copy_dir, "journal.db").resolve().as_uri()
    return FileAccess(f"{copy}?mode=ro", copy_dir)


def _cannot_write(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) or "readonly" in str(exc)


def describe(exc: sqlite3.Error | UnicodeDecodeError, path: Path | None = None) -> str:
    """SQLite's error in words that name the real cause.

    SQLite reports a full disk as SQLITE_FULL, but a write refused for the file-size
    limit (`ulimit -f`) only as a generic I/O error: look at the limit and the free
    space to say which it was.
    """
    if isinstance(exc, UnicodeDecodeError):
        # Python's sqlite3 decodes SQLite's message strictly; a damaged schema puts
        # its garbage in the message (`malformed database schema (<bytes>)`).
        return "the journal file is damaged (its schema cannot be read); `durable check` says more"
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) and path is not None:
        cause = _space_problem(path)
        if cause:
            return f"{cause} ({exc})"
    if name.startswith("SQLITE_FULL"):
        return f"no space left on the device, or the file is too large ({exc})"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return f"the journal file is damaged ({exc}); `durable check` says more"
    if name.startswith("SQLITE_READONLY"):
        return f"the journal cannot be written ({exc}): check the permissions of the file and its folder"
    return str(exc)


def _space_problem(path: Path) -> str | None:
    """Why the journal at `path` could not grow, if that is why: a size limit or a full disk."""
    import resource
    import shutil

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    sizes = [p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()]
    if soft != resource.RLIM_INFINITY and sizes and max(sizes) + 65_536 >= soft:
        return f"the journal reached this process's file-size limit (ulimit -f: {soft:,} bytes)"
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    if free < 1 << 20:
        return f"no space left on the device ({free:,} bytes free on {path.parent})"
    return None
