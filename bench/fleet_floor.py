"""The floor of a fleet chain step on this machine: three round trips against one.

Not durable: a bare asyncpg loop over scratch tables shaped like the fleet's
(`fl.events`, `fl.work`, in a schema `fl` of the database given), doing what a
chain step does to them: take the run's lock, check nothing was appended since the
last step and that the finished task's row is still this worker's, insert two
events, delete that row and insert the next task's. `three`: the lock and checks in
one function call, the write, then `COMMIT; BEGIN` (what the long way costs);
`one`: all of it in one function call outside a transaction (`durable.fleet_step`).
Two interleaved rounds; the schema `fl` is dropped and made again for each.

    python bench/fleet_floor.py [--dsn postgresql://...] [--steps 2000] [--synchronous-commit off]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import asyncpg

SETUP = """
DROP SCHEMA IF EXISTS fl CASCADE; CREATE SCHEMA fl;
CREATE TABLE fl.events (seq bigserial PRIMARY KEY, run_id text, task_id text, attempt int,
    kind text, at float8, data bytea, crc bigint);
CREATE INDEX ON fl.events (run_id, seq);
CREATE TABLE fl.work (run_id text, task_id text, state text, attempt int, owner uuid,
    lease_until timestamptz, PRIMARY KEY (run_id, task_id));
CREATE FUNCTION fl.open(r text, after bigint, me uuid, held text)
RETURNS TABLE (part text, seq bigint) LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(1, hashtext(r));
  RETURN QUERY SELECT 'e', e.seq FROM fl.events e WHERE e.run_id = r AND e.seq > after;
  RETURN QUERY SELECT 'f', w.attempt::bigint FROM fl.work w WHERE w.run_id = r
      AND w.task_id = held AND w.owner = me AND w.state = 'running';
  RETURN QUERY SELECT 's', nextval('fl.events_seq_seq') FROM generate_series(1, 2);
END $$;
CREATE FUNCTION fl.step(r text, after bigint, me uuid, held text, nxt text, k text[], d bytea[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE last bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(1, hashtext(r));
  IF EXISTS (SELECT 1 FROM fl.events e WHERE e.run_id = r AND e.seq > after) THEN
    RETURN -1;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM fl.work w WHERE w.run_id = r AND w.task_id = held
      AND w.owner = me AND w.state = 'running') THEN
    RETURN -2;
  END IF;
  WITH i AS (INSERT INTO fl.events (run_id, task_id, attempt, kind, at, data, crc)
     SELECT r, held, 1, x.k, 0, x.d, 0 FROM unnest(k, d) AS x (k, d) RETURNING seq)
  SELECT max(seq) INTO last FROM i;
  DELETE FROM fl.work WHERE run_id = r AND task_id = held;
  INSERT INTO fl.work VALUES (r, nxt, 'running', 1, me, clock_timestamp() + interval '30 s');
  RETURN last;
END $$;
"""
WRITE = """WITH e AS (INSERT INTO fl.events (seq, run_id, task_id, attempt, kind, at, data, crc)
    SELECT x.s, $2, $3, 1, x.k, 0, x.d, 0 FROM unnest($1::bigint[], $5::text[], $6::bytea[])
        AS x (s, k, d)),
  d AS (DELETE FROM fl.work WHERE run_id = $2 AND task_id = $3)
  INSERT INTO fl.work VALUES ($2, $4, 'running', 1, $7, clock_timestamp() + interval '30 s')"""
ME = uuid.UUID(int=1)
KINDS = ["task_succeeded", "task_started"]
DATA = [b"x" * 40, b"y" * 60]


async def three(conn: asyncpg.Connection, run: str, steps: int) -> None:
    last = 0
    await conn.execute("BEGIN")
    for i in range(steps):
        rows = await conn.fetch("SELECT * FROM fl.open($1, $2, $3, $4)", run, last, ME, f"t{i}")
        seqs = [row[1] for row in rows if row[0] == "s"]
        await conn.execute(WRITE, seqs, run, f"t{i}", f"t{i + 1}", KINDS, DATA, ME)
        await conn.execute("COMMIT; BEGIN")
        last = seqs[-1]
    await conn.execute("COMMIT")


async def one(conn: asyncpg.Connection, run: str, steps: int) -> None:
    last = 0
    for i in range(steps):
        last = await conn.fetchval(
            "SELECT fl.step($1, $2, $3, $4, $5, $6, $7)",
            run, last, ME, f"t{i}", f"t{i + 1}", KINDS, DATA,
        )  # fmt: skip
        assert last > 0, last


async def main(dsn: str, steps: int, synchronous_commit: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"SET synchronous_commit = {synchronous_commit}")
    try:
        for round_ in (1, 2):
            for name, loop in (("three", three), ("one", one)):
                await conn.execute(SETUP)
                await conn.execute(
                    "INSERT INTO fl.work VALUES ($1, 't0', 'running', 1, $2, now())", name, ME
                )
                began = time.perf_counter()
                await loop(conn, name, steps)
                rate = steps / (time.perf_counter() - began)
                print(f"round {round_}: {name} round trip(s) a step: {rate:,.0f} steps/s")
        await conn.execute("DROP SCHEMA fl CASCADE")
    finally:
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.dsn, arguments.steps, arguments.synchronous_commit))
