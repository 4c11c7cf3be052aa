"""asyncpg or psycopg 3 for the PostgreSQL journal: what the journal needs most.

A standalone script (not a pytest file; `pytest bench` does not collect it):

    pip install asyncpg 'psycopg[binary]'
    python bench/pg_driver_choice.py                       # DSN from DURABLE_TEST_PG
    python bench/pg_driver_choice.py --synchronous-commit off --rounds 3
    python bench/pg_driver_choice.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

It creates a fresh database `durable_bench_<pid>` next to the DSN's (the DSN's user
must be allowed to create databases), measures, and drops it (WITH (FORCE)) even on
failure or Ctrl-C. Each driver uses one connection to it, in autocommit mode
(a transaction is opened where a method needs one), on the event loop durable
would use (uvloop when installed, `DURABLE_LOOP=asyncio` for asyncio's own).

What is measured, per driver, in `--rounds` rounds alternating which driver goes
first (each figure is the median of the rounds, with their min-max; the summary
also gives the asyncpg/psycopg ratio within each round, figures taken moments apart):

- round trip: `SELECT 1`, the median of 2,000 (after 100 untimed), in µs, taken in
  blocks of 200 alternating between the drivers;
- group commit: one transaction inserting N event rows into
  `events (seq bigserial primary key, run_id, task_id, attempt, kind, at, data, crc)`
  for N = 1, 32, 256, batch after batch for `--seconds` each (in two halves, the
  drivers taking turns A B B A), in rows/s; the table is truncated before each
  method and N. Methods:
    asyncpg:  executemany, copy_records_to_table, one multi-row INSERT ($1..$7N) in
              BEGIN..COMMIT, and that INSERT alone (one statement = one transaction);
    both:     `INSERT ... SELECT * FROM unnest($1::text[], ...)` of 7 column arrays
              alone, the journal's way (durable/journal/postgres.py; without its
              RETURNING seq here);
    psycopg:  executemany (pipelined internally), executemany inside pipeline mode
              (`conn.pipeline()` around the transaction), binary COPY, the multi-row
              INSERT with %s placeholders alone, and with $n placeholders on an
              AsyncRawCursor in a transaction and alone (psycopg does not cache its
              %s -> $n conversion for a query of more than 50 parameters or 4 KB, so
              it re-parses the %s one on every execute);
- reading back 200,000 rows ordered by seq (rows/s, twice per round, A B B A):
  asyncpg `fetch` and a cursor (prefetch 10,000); psycopg `fetchall` with text and
  with binary results, and a server-side binary cursor fetching 10,000 at a time.

`--synchronous-commit off` sets it on both sessions: commits stop waiting for the
WAL flush, which shows the drivers' own cost under the fsync that hides it at
small N. The journal itself needs `on`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
COLUMNS = ("run_id", "task_id", "attempt", "kind", "at", "data", "crc")
COPY_TYPES = ("text", "text", "int4", "text", "float8", "bytea", "int8")
TABLE = """CREATE TABLE events (
    seq     bigserial PRIMARY KEY,
    run_id  text NOT NULL,
    task_id text,
    attempt int,
    kind    text NOT NULL,
    at      double precision NOT NULL,
    data    bytea,
    crc     bigint
)"""
BATCHES = (1, 32, 256)
READ_ROWS = 200_000
ROUND_TRIPS = 2_000

Row = tuple[str, str, int, str, float, bytes, int]


def with_database(dsn: str, name: str) -> str:
    """The URL `dsn` with its database replaced by `name`."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise SystemExit(f"--dsn must be a postgresql:// URL, not {dsn!r}")
    return urlunsplit(parts._replace(path="/" + name))


def make_rows(n: int, start: int = 0) -> list[Row]:
    """n events shaped like the journal's: ~100 bytes of msgpack-like data each."""
    rows = []
    now = time.time()
    for i in range(start, start + n):
        data = (b"\x83\xa6output\xda\x00\x40" + (b"%064d" % i) + b"\xa4code\x00\xa2ms\xcb") + (
            i.to_bytes(8, "little")
        )
        rows.append(
            (
                "01JBENCHRUN0000000000000000",
                f"task-{i:06d}",
                1,
                "task_succeeded",
                now + i * 1e-6,
                data,
                zlib.crc32(data),
            )
        )
    return rows


def values_sql(n: int, style: str) -> str:
    cols = ", ".join(COLUMNS)
    if style == "$":
        groups = ("(" + ", ".join(f"${7 * r + c + 1}" for c in range(7)) + ")" for r in range(n))
    else:
        groups = ("(%s, %s, %s, %s, %s, %s, %s)" for _ in range(n))
    return f"INSERT INTO events ({cols}) VALUES " + ", ".join(groups)


def flat(rows: list[Row]) -> list[Any]:
    return [v for row in rows for v in row]


def unnest_sql(style: str) -> str:
    """One INSERT of the batch as 7 column arrays, whatever N (as durable/journal/postgres.py)."""
    casts = ("text[]", "text[]", "integer[]", "text[]", "double precision[]", "bytea[]", "bigint[]")
    args = ", ".join(f"${i + 1}::{c}" if style == "$" else f"%s::{c}" for i, c in enumerate(casts))
    return f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT * FROM unnest({args})"


def columns(rows: list[Row]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)]


# --- asyncpg ---------------------------------------------------------------------------


class Asyncpg:
    name = "asyncpg"

    def __init__(self, dsn: str, synchronous_commit: str) -> None:
        self.dsn = dsn
        self.sync = synchronous_commit
        self.insert_one = (
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )

    async def open(self) -> None:
        self.conn = await asyncpg.connect(
            self.dsn, server_settings={"synchronous_commit": self.sync}
        )

    async def close(self) -> None:
        await self.conn.close()

    async def round_trip(self) -> None:
        await self.conn.fetchval("SELECT 1")

    def insert_methods(self) -> dict[str, Callable[[list[Row]], Awaitable[None]]]:
        conn = self.conn
        sql = {n: values_sql(n, "$") for n in BATCHES}
        unnest = unnest_sql("$")

        async def executemany(rows: list[Row]) -> None:
            async with conn.transaction():
                await conn.executemany(self.insert_one, rows)

        async def copy(rows: list[Row]) -> None:
            async with conn.transaction():
                await conn.copy_records_to_table("events", records=rows, columns=COLUMNS)

        async def values(rows: list[Row]) -> None:
            async with conn.transaction():
                await conn.execute(sql[len(rows)], *flat(rows))

        async def values_alone(rows: list[Row]) -> None:
            await conn.execute(sql[len(rows)], *flat(rows))

        async def unnest_alone(rows: list[Row]) -> None:
            await conn.execute(unnest, *columns(rows))

        return {
            "executemany": executemany,
            "copy_records_to_table": copy,
            "multi-row INSERT": values,
            "multi-row INSERT, no BEGIN": values_alone,
            "unnest of column arrays, no BEGIN": unnest_alone,
        }

    def read_methods(self) -> dict[str, Callable[[], Awaitable[int]]]:
        conn = self.conn
        sql = f"SELECT seq, {', '.join(COLUMNS)} FROM events ORDER BY seq"

        async def fetch() -> int:
            return len(await conn.fetch(sql))

        async def cursor() -> int:
            n = 0
            async with conn.transaction():
                async for _ in conn.cursor(sql, prefetch=10_000):
                    n += 1
            return n

        return {"fetch": fetch, "cursor, prefetch 10,000": cursor}

    async def truncate(self) -> None:
        await self.conn.execute("TRUNCATE events RESTART IDENTITY")


# --- psycopg 3 -------------------------------------------------------------------------


class Psycopg:
    name = "psycopg"

    def __init__(self, dsn: str, synchronous_commit: str) -> None:
        self.dsn = dsn
        self.sync = synchronous_commit
        self.insert_one = (
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )

    async def open(self) -> None:
        self.conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, options=f"-c synchronous_commit={self.sync}"
        )
        self.cur = self.conn.cursor()

    async def close(self) -> None:
        await self.conn.close()

    async def round_trip(self) -> None:
        await self.cur.execute("SELECT 1")
        await self.cur.fetchone()

    def insert_methods(self) -> dict[str, Callable[[list[Row]], Awaitable[None]]]:
        conn, cur = self.conn, self.cur
        sql = {n: values_sql(n, "%") for n in BATCHES}
        raw, raw_sql = psycopg.AsyncRawCursor(conn), {n: values_sql(n, "$") for n in BATCHES}
        unnest = unnest_sql("%")
        copy_sql = f"COPY events ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

        async def executemany(rows: list[Row]) -> None:
            async with conn.transaction():
                await cur.executemany(self.insert_one, rows)

        async def pipeline(rows: list[Row]) -> None:
            async with conn.pipeline(), conn.transaction():
                await cur.executemany(self.insert_one, rows)

        async def copy(rows: list[Row]) -> None:
            async with conn.transaction(), cur.copy(copy_sql) as cp:
                cp.set_types(COPY_TYPES)
                for row in rows:
                    await cp.write_row(row)

        async def values_client(rows: list[Row]) -> None:
            await cur.execute(sql[len(rows)], flat(rows))

        async def values_raw(rows: list[Row]) -> None:
            async with conn.transaction():
                await raw.execute(raw_sql[len(rows)], flat(rows))

        async def values_raw_alone(rows: list[Row]) -> None:
            await raw.execute(raw_sql[len(rows)], flat(rows))

        async def unnest_alone(rows: list[Row]) -> None:
            await cur.execute(unnest, columns(rows))

        return {
            "executemany": executemany,
            "executemany in pipeline mode": pipeline,
            "binary COPY": copy,
            "multi-row INSERT (%s), no BEGIN": values_client,
            "multi-row INSERT (raw cursor, $n)": values_raw,
            "multi-row INSERT (raw cursor, $n), no BEGIN": values_raw_alone,
            "unnest of column arrays, no BEGIN": unnest_alone,
        }

    def read_methods(self) -> dict[str, Callable[[], Awaitable[int]]]:
        conn = self.conn
        sql = f"SELECT seq, {', '.join(COLUMNS)} FROM events ORDER BY seq"

        async def fetchall(binary: bool) -> int:
            async with conn.cursor(binary=binary) as cur:
                await cur.execute(sql)
                return len(await cur.fetchall())

        async def server_side() -> int:
            n = 0
            async with conn.transaction(), conn.cursor("replay", binary=True) as cur:
                await cur.execute(sql)
                while batch := await cur.fetchmany(10_000):
                    n += len(batch)
            return n

        return {
            "fetchall, text": lambda: fetchall(False),
            "fetchall, binary": lambda: fetchall(True),
            "server-side cursor, binary, 10,000 a fetch": server_side,
        }

    async def truncate(self) -> None:
        await self.conn.execute("TRUNCATE events RESTART IDENTITY")


# --- measuring ---------------------------------------------------------------------------


async def round_trip_us(drivers: list[Any]) -> dict[str, float]:
    """Median `SELECT 1` of each driver, in µs: ROUND_TRIPS each, in blocks of 200
    alternating between the drivers, so that both see the same moments of a loaded
    machine (its speed drifts within seconds)."""
    for d in drivers:
        for _ in range(100):
            await d.round_trip()
    times: dict[str, list[int]] = {d.name: [] for d in drivers}
    clock = time.perf_counter_ns
    for block in range(ROUND_TRIPS // 200):
        for d in drivers if block % 2 == 0 else drivers[::-1]:
            for _ in range(200):
                t0 = clock()
                await d.round_trip()
                times[d.name].append(clock() - t0)
    return {name: statistics.median(ts) / 1000 for name, ts in times.items()}


async def insert_rows(driver: Any, method: Callable, n: int, seconds: float) -> tuple[int, float]:
    """Batches of n rows, one `method` call each, for `seconds` (and 20 batches at
    least), on a table truncated first: (rows, elapsed seconds)."""
    await driver.truncate()
    pool = make_rows(4096)
    batches = [pool[i : i + n] for i in range(0, len(pool), n)]
    for b in batches[:3]:  # prepares the statements
        await method(b)
    rows = 0
    i = 0
    t0 = time.perf_counter()
    while True:
        batch = batches[i % len(batches)]
        await method(batch)
        rows += len(batch)
        i += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and i >= 20:
            return rows, elapsed


async def fill_for_reading(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE events RESTART IDENTITY")
        rows = make_rows(READ_ROWS)
        await conn.copy_records_to_table("events", records=rows, columns=COLUMNS)
        await conn.execute("VACUUM ANALYZE events")
        await conn.fetch("SELECT * FROM events ORDER BY seq")  # hint bits, cache
    finally:
        await conn.close()


async def read_rows(method: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = await method()
    elapsed = time.perf_counter() - t0
    if n != READ_ROWS:
        raise AssertionError(f"read {n} rows, expected {READ_ROWS}")
    return n, elapsed


async def measure(dsn: str, args: argparse.Namespace) -> dict[tuple[str, str, str], list[float]]:
    results: dict[tuple[str, str, str], list[float]] = {}

    def add(key: tuple[str, str, str], value: float) -> None:
        results.setdefault(key, []).append(value)

    drivers = [Asyncpg(dsn, args.synchronous_commit), Psycopg(dsn, args.synchronous_commit)]
    for d in drivers:
        await d.open()
    admin = await asyncpg.connect(dsn)
    await admin.execute(TABLE)
    try:
        for r in range(args.rounds):
            order = drivers if r % 2 == 0 else drivers[::-1]
            print(
                f"round {r + 1}/{args.rounds}: {' then '.join(d.name for d in order)}",
                file=sys.stderr,
            )
            for name, us in (await round_trip_us(order)).items():
                add((name, "round trip", "SELECT 1"), us)
            # Each method twice, half the time each, in the order A B B A: a drift of
            # the machine's speed within the round weighs on both drivers alike.
            for n in BATCHES:
                done: dict[tuple[str, str, str], list[float]] = {}
                for d in order + order[::-1]:
                    for label, method in d.insert_methods().items():
                        rows, elapsed = await insert_rows(d, method, n, args.seconds / 2)
                        total = done.setdefault((d.name, f"group commit N={n}", label), [0, 0])
                        total[0] += rows
                        total[1] += elapsed
                for key, (rows, elapsed) in done.items():
                    add(key, rows / elapsed)
            await drivers[0].truncate()
            await fill_for_reading(dsn)
            done = {}
            for d in order + order[::-1]:
                for label, method in d.read_methods().items():
                    rows, elapsed = await read_rows(method)
                    total = done.setdefault((d.name, f"read {READ_ROWS:,}", label), [0, 0])
                    total[0] += rows
                    total[1] += elapsed
            for key, (rows, elapsed) in done.items():
                add(key, rows / elapsed)
    finally:
        await admin.close()
        for d in drivers:
            await d.close()
    return results


def fmt(values: list[float], unit: str) -> str:
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    if unit == "µs":
        return f"{med:7.1f} ({lo:.1f}-{hi:.1f})"
    return f"{med:10,.0f} ({lo:,.0f}-{hi:,.0f})"


def report(results: dict[tuple[str, str, str], list[float]]) -> None:
    measures = list(dict.fromkeys(k[1] for k in results))
    print()
    print("| measure | driver | method | median (min-max) |")
    print("| --- | --- | --- | --- |")
    for m in measures:
        unit = "µs" if m == "round trip" else "rows/s"
        for driver in ("asyncpg", "psycopg"):
            keys = [k for k in results if k[0] == driver and k[1] == m]
            best = (min if unit == "µs" else max)(keys, key=lambda k: statistics.median(results[k]))
            for k in keys:
                mark = " **best**" if k == best and len(keys) > 1 else ""
                print(f"| {m} ({unit}) | {driver} | {k[2]}{mark} | {fmt(results[k], unit)} |")
    print()
    print("Best method of each driver (median of rounds):")
    print("| measure | asyncpg | psycopg | asyncpg faster by: ratio of medians (per round) |")
    print("| --- | --- | --- | --- |")
    for m in measures:
        unit = "µs" if m == "round trip" else "rows/s"
        pick = min if unit == "µs" else max
        best = {}
        for driver in ("asyncpg", "psycopg"):
            keys = [k for k in results if k[0] == driver and k[1] == m]
            best[driver] = pick(keys, key=lambda k: statistics.median(results[k]))
        a, p = (statistics.median(results[best[d]]) for d in ("asyncpg", "psycopg"))
        ratio = p / a if unit == "µs" else a / p  # > 1: asyncpg faster
        # The same round's two figures, taken moments apart: steadier than the medians.
        pairs = zip(results[best["asyncpg"]], results[best["psycopg"]], strict=True)
        per_round = [pv / av if unit == "µs" else av / pv for av, pv in pairs]
        print(
            f"| {m} ({unit}) | {fmt(results[best['asyncpg']], unit).strip()} [{best['asyncpg'][2]}] "
            f"| {fmt(results[best['psycopg']], unit).strip()} [{best['psycopg'][2]}] "
            f"| {ratio:.2f}x ({min(per_round):.2f}-{max(per_round):.2f}) |"
        )


async def main_async(args: argparse.Namespace) -> None:
    name = f"durable_bench_{os.getpid()}"
    admin = await asyncpg.connect(args.dsn, timeout=5)
    version = await admin.fetchval("SHOW server_version")
    fsync = await admin.fetchval("SHOW fsync")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        print(
            f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={args.synchronous_commit}), "
            f"asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__} "
            f"(libpq {psycopg.pq.version()}, {psycopg.pq.__impl__}), "
            f"Python {sys.version.split()[0]}, loop {type(asyncio.get_running_loop()).__module__}, "
            f"database {name}"
        )
        results = await measure(with_database(args.dsn, name), args)
        report(results)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("DURABLE_TEST_PG", DEFAULT_DSN))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per method and N")
    parser.add_argument("--synchronous-commit", default="on", choices=("on", "off"))
    args = parser.parse_args()
    try:
        from durable.eventloop import loop_factory

        factory = loop_factory()
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main_async(args))


if __name__ == "__main__":
    main()
