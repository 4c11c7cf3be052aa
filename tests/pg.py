"""PostgreSQL for the tests that need it: reachability, a fresh database each, skip or fail.

    import pg

    def test_something_on_postgres():
        with pg.fresh_database() as dsn:   # skips (locally) or fails (CI) if unreachable
            ...                              # dsn: postgresql://.../durable_test_1a2b3c4d

    # or as a fixture, in the test module:
    pg_database = pg.pg_database            # then `def test_x(pg_database): ...`

- `pg_dsn()`: the server's base DSN, from `DURABLE_TEST_PG` (default
  `postgresql://postgres@127.0.0.1:5432/postgres`), or None when it cannot be
  connected to within 2 s (or asyncpg is not installed). Answered once per DSN and
  process.
- `require_pg()`: that DSN, or the test stops: `pytest.skip` locally, `pytest.fail`
  when the `CI` environment variable is set (as `tests/conftest.py` reads it: any
  value but "", "0", "false"), since on CI a PostgreSQL test that does not run must
  not pass as skipped.
- `fresh_database(dsn=None)`: a context manager that creates `durable_test_<8 hex>`
  on the server (the base DSN's user must be allowed to CREATE DATABASE), yields its
  DSN, and drops it afterwards with `DROP DATABASE ... WITH (FORCE)` (PostgreSQL 13+),
  which ends whatever connections the test left open.

The driver is asyncpg (the journal's, see bench/README.md "PostgreSQL driver"); it has
no synchronous API, so each call runs its own `asyncio.run`, on a worker thread when
the calling thread already runs an event loop. DSNs must be postgresql:// URLs
(asyncpg takes no `key=value` strings). `tests/` is on sys.path for every test (its
conftest.py is the root one), so `import pg` works from tests/unit and tests/e2e.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

T = TypeVar("T")

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 2.0
HOW_TO_START = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
    "or point DURABLE_TEST_PG at a server"
)


def base_dsn() -> str:
    """The DSN the tests use, whether or not a server answers there."""
    return os.environ.get("DURABLE_TEST_PG") or DEFAULT_DSN


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def pg_dsn() -> str | None:
    """The base DSN if PostgreSQL answers there within 2 s, else None."""
    dsn = base_dsn()
    return dsn if _reachable(dsn) is None else None


def require_pg() -> str:
    """The base DSN; or skip the test (locally) or fail it (on CI) if it is unreachable."""
    dsn = base_dsn()
    why = _reachable(dsn)
    if why is None:
        return dsn
    message = f"PostgreSQL is not reachable at {redacted(dsn)} ({why}): {HOW_TO_START}"
    if on_ci():
        pytest.fail(message + " [CI is set: PostgreSQL tests must run there, not skip]")
    pytest.skip(message)


@contextmanager
def fresh_database(dsn: str | None = None) -> Iterator[str]:
    """Create a uniquely named database, yield its DSN, drop it (forcibly) afterwards.

    `dsn` is the server's base DSN; by default `require_pg()`'s, so an unreachable
    server skips or fails the test here.
    """
    base = dsn if dsn is not None else require_pg()
    name = f"durable_test_{uuid.uuid4().hex[:8]}"
    _run(_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(base, name)
    finally:
        _run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The DSN of a fresh database for this test (see `fresh_database`)."""
    with fresh_database() as dsn:
        yield dsn


def with_database(dsn: str, name: str) -> str:
    """The URL `dsn` with its database replaced by `name` (host, user, query kept)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgresql:// URL: {redacted(dsn)}")
    return urlunsplit(parts._replace(path="/" + name))


def redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# --- internals ---------------------------------------------------------------------------


@functools.cache
def _reachable(dsn: str) -> str | None:
    """None if a connection to `dsn` opens within the timeout, else why not."""
    try:
        import asyncpg
    except ImportError as e:
        return f"asyncpg cannot be imported ({e}): pip install -e '.[test]'"

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
        finally:
            await conn.close(timeout=CONNECT_TIMEOUT_S)

    try:
        _run(asyncio.wait_for(probe(), CONNECT_TIMEOUT_S + 0.5))
    except Exception as e:  # refused, timed out, no such role or database, bad DSN...
        return f"{type(e).__name__}: {str(e) or f'no answer within {CONNECT_TIMEOUT_S:g} s'}"
    return None


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def execute(dsn: str, *statements: str) -> None:
    """Run statements on `dsn`, in order, each committed (for tests that change
    what durable would never change: set triggers aside, plant another schema)."""

    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    _run(run())


def fetch(dsn: str, query: str) -> list[tuple[Any, ...]]:
    """The rows of one query on `dsn`, as tuples."""

    async def run() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            return [tuple(row) for row in await conn.fetch(query)]
        finally:
            await conn.close()

    return _run(run())
