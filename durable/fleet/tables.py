"""The fleet's SQL: its tables in the PostgreSQL journal (schema `durable`), beside the
journal's own, and the statements its transactions run (`store.py`).

- `fleet_runs`: a run handed to the workers, and the limits every worker applies
  to it together (`max_concurrency`; per-tool limits are the workflow's own).
- `work`: one row per task of a fleet run that is ready or running, and no row for
  any other. A claim turns `ready` into `running` with an owner, an attempt and a
  lease; the commit of the attempt's outcome deletes the row (or, for a retry, makes
  it `ready` again after its delay). This table, unlike `events`, is mutable state:
  the history stays in `events`.
- `workers`: each worker process start (its own id, never reused), its host, pid,
  slots and heartbeat.

The work table churns (every task inserts, updates and deletes its row): it is
vacuumed after every 1,000 dead rows rather than after a fifth of the table, as a
queue table must be, or its indexes fill with dead entries that every claim walks.
This needs PostgreSQL's autovacuum on (its default).

Work rows are never needed to know what a run did: the events say it. They say only
who may do what next.

Times are `clock_timestamp()`, never `now()`: `now()` is when the transaction began,
and a worker's connection may wait in a transaction begun by its last COMMIT
(`store.FleetStore._transaction`): a lease granted from that clock would be over
before it starts.
"""

_TABLES = [
    """CREATE TABLE IF NOT EXISTS durable.fleet_runs (
        run_id text PRIMARY KEY, max_concurrency integer NOT NULL,
        max_deaths integer NOT NULL, submitted_at double precision NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS durable.work (
        run_id text NOT NULL, task_id text NOT NULL, tool text NOT NULL,
        state text NOT NULL CHECK (state IN ('ready', 'running')),
        attempt integer NOT NULL DEFAULT 0, owner uuid, lease_until timestamptz,
        not_before timestamptz NOT NULL DEFAULT clock_timestamp(),
        tries integer NOT NULL DEFAULT 0, losses integer NOT NULL DEFAULT 0,
        queued bigserial, PRIMARY KEY (run_id, task_id))
        WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0,
              autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0)""",
    "CREATE INDEX IF NOT EXISTS work_by_owner ON durable.work (owner) WHERE owner IS NOT NULL",
    # A run's ready rows in queue order; its running ones (counted by every claim);
    # the oldest ready rows of all runs (which runs have work).
    "CREATE INDEX IF NOT EXISTS work_ready ON durable.work (run_id, queued) WHERE state = 'ready'",
    "CREATE INDEX IF NOT EXISTS work_running ON durable.work (run_id) WHERE state = 'running'",
    "CREATE INDEX IF NOT EXISTS work_queue ON durable.work (queued) WHERE state = 'ready'",
    # Opening a fleet transaction in one round trip (`store.FleetStore._open`): the
    # run's lock, then, each with a snapshot taken after it, the events committed
    # since `after` (e), the rows this worker holds of `held` (f: the fence; counted
    # as running if their lease is live), up to
    # `want` claimable rows (c), what runs per tool (r: how many, how many this
    # worker's), and `reserve` seqs (s).
    """CREATE OR REPLACE FUNCTION durable.fleet_open(
        space integer, key integer, run text, after bigint, me uuid, held text[],
        tools text[], want integer, reserve integer)
    RETURNS TABLE (part text, seq bigint, kind text, task_id text, attempt integer,
        at double precision, data bytea, crc bigint, tool text, state text,
        tries integer, losses integer, owner uuid)
    LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    BEGIN
        PERFORM pg_advisory_xact_lock(space, key);
        IF after >= 0 THEN
            RETURN QUERY SELECT 'e', e.seq, e.kind, e.task_id, e.attempt, e.at, e.data,
                e.crc, NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::uuid
            FROM durable.events e WHERE e.run_id = run AND e.seq > after ORDER BY e.seq;
        END IF;
        IF cardinality(held) > 0 THEN
            RETURN QUERY SELECT 'f', NULL::bigint, NULL::text, w.task_id, w.attempt,
                NULL::double precision, NULL::bytea, NULL::bigint, w.tool, NULL::text,
                (w.lease_until >= clock_timestamp())::integer, NULL::integer, NULL::uuid
            FROM durable.work w WHERE w.run_id = run AND w.task_id = ANY(held)
                AND w.owner = me AND w.state = 'running';
        END IF;
        IF want > 0 THEN
            RETURN QUERY SELECT 'c', NULL::bigint, NULL::text, c.task_id, c.attempt,
                NULL::double precision, NULL::bytea, NULL::bigint, c.tool, c.state, c.tries,
                c.losses, c.owner
            FROM ((SELECT * FROM durable.work w WHERE w.run_id = run AND w.state = 'ready'
                    AND w.not_before <= clock_timestamp() AND w.tool = ANY(tools)
                    ORDER BY w.queued LIMIT want)
                UNION ALL
                (SELECT * FROM durable.work w WHERE w.run_id = run AND w.state = 'running'
                    AND w.lease_until < clock_timestamp() AND w.tool = ANY(tools)
                    ORDER BY w.queued LIMIT want)
                ORDER BY queued LIMIT want) c;
        END IF;
        IF want >= 0 THEN
            RETURN QUERY SELECT 'r', count(*), NULL::text, NULL::text, NULL::integer,
                NULL::double precision, NULL::bytea, NULL::bigint, w.tool, NULL::text,
                (count(*) FILTER (WHERE w.owner = me))::integer, NULL::integer, NULL::uuid
            FROM durable.work w WHERE w.run_id = run AND w.state = 'running'
                AND w.lease_until >= clock_timestamp() GROUP BY w.tool;
        END IF;
        RETURN QUERY SELECT 's', nextval('durable.events_seq_seq'), NULL::text, NULL::text,
            NULL::integer, NULL::double precision, NULL::bytea, NULL::bigint, NULL::text,
            NULL::text, NULL::integer, NULL::integer, NULL::uuid
        FROM generate_series(1, reserve);
    END $$""",
    """CREATE TABLE IF NOT EXISTS durable.workers (
        worker_id uuid PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,
        slots integer NOT NULL, tools text[] NOT NULL, started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL, lease double precision NOT NULL)""",
]

#: NOTIFY channel: work became ready.
CHANNEL = "durable_work"
#: The namespace of the fleet's per-run transaction locks (apart from the drivers').
FLEET_LOCK_SPACE = 0x6476


# -- the statements of the transactions (`store.py`) -----------------------------

#: The fleet's runs with claimable work for this worker, each with its oldest such
#: row's place in the queue (a ready row, found by an index range read in order, or
#: a lease run out). Every run is listed, not just those of the oldest rows: a
#: backlog this worker cannot take (a tool it lacks, a run at its limit) must not
#: hide the runs behind it.
#:
#: A run this worker would lock and fold only to claim nothing is left out: each
#: worker with a free slot looks each time one of its tasks is committed, at each
#: NOTIFY and every 0.5 s, and the run's other workers would wait for its lock.
#: - A run at its `max_concurrency` (as many rows running with a live lease, as the
#:   claim counts them).
#: - Of a run the worker knows (`$1`, with each tool it can run of it in `$2`, that
#:   tool's limit in the workflow or NULL in `$3`; one NULL tool if it can run
#:   none), the rows of a tool it cannot run or of a tool at its limit. A run it
#:   does not know yet is listed whatever its tools: it learns them by loading it
#:   (a run's `imports:` can add tools).
#:
#: Then, with a NULL place, the runs it knows that have ended (no `fleet_runs`
#: row): its copies of them are dropped.
CLAIMABLE_RUNS = """WITH known AS (
        SELECT k.run_id, coalesce(array_agg(k.tool) FILTER (WHERE k.tool IS NOT NULL
            AND (k.cap IS NULL OR (SELECT count(*) FROM durable.work r
                WHERE r.run_id = k.run_id AND r.state = 'running'
                AND r.lease_until >= clock_timestamp() AND r.tool = k.tool) < k.cap)),
            '{}') AS tools
        FROM unnest($1::text[], $2::text[], $3::integer[]) AS k (run_id, tool, cap)
        GROUP BY k.run_id)
    (SELECT run_id, oldest FROM (
        SELECT f.run_id, least(
            (SELECT w.queued FROM durable.work w WHERE w.run_id = f.run_id
                AND w.state = 'ready' AND w.not_before <= clock_timestamp()
                AND (k.run_id IS NULL OR w.tool = ANY(k.tools))
                ORDER BY w.queued LIMIT 1),
            (SELECT min(w.queued) FROM durable.work w WHERE w.run_id = f.run_id
                AND w.state = 'running' AND w.lease_until < clock_timestamp()
                AND (k.run_id IS NULL OR w.tool = ANY(k.tools)))) AS oldest
        FROM durable.fleet_runs f LEFT JOIN known k ON k.run_id = f.run_id
        WHERE (SELECT count(*) FROM durable.work w WHERE w.run_id = f.run_id
            AND w.state = 'running' AND w.lease_until >= clock_timestamp())
            < f.max_concurrency) AS runs
    WHERE oldest IS NOT NULL ORDER BY oldest LIMIT 64)
    UNION ALL
    SELECT k.run_id, NULL FROM known k
    WHERE NOT EXISTS (SELECT 1 FROM durable.fleet_runs f WHERE f.run_id = k.run_id)"""
RESERVE = "SELECT nextval('durable.events_seq_seq') FROM generate_series(1, $1)"
#: The fence, and what an accepted outcome does to its row: gone, or (a retry, a
#: hand-back) ready again after its delay. Returns the tasks whose outcome counts.
OPEN = "SELECT * FROM durable.fleet_open($1, $2, $3, $4, $5, $6, $7, $8, $9)"
#: Every write of a transaction in one statement. Rows are reached by primary key
#: (`task_id = ANY(...)`) and per-row values looked up by position, not joined:
#: the work table's statistics are always stale (it fills and empties with every
#: run), and a join planned on them scanned it once per outcome.
_WRITES = """WITH e AS (INSERT INTO durable.events (seq, run_id, task_id, attempt, kind, at, data, crc)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], $5::text[],
            $6::double precision[], $7::bytea[], $8::bigint[])),
    s AS (INSERT INTO durable.summaries (run_id, last_seq, data, crc)
        SELECT $9::text, $10, $11, $12 WHERE $10::bigint > 0
        ON CONFLICT (run_id) DO UPDATE SET last_seq = excluded.last_seq,
        data = excluded.data, crc = excluded.crc),
    q AS (INSERT INTO durable.work (run_id, task_id, tool, state, attempt, owner, lease_until)
        SELECT $9, t, u, CASE WHEN a > 0 THEN 'running' ELSE 'ready' END, a,
            CASE WHEN a > 0 THEN $13::uuid END,
            CASE WHEN a > 0 THEN clock_timestamp() + $14 * interval '1 second' END
        FROM unnest($15::text[], $16::text[], $17::integer[]) AS x (t, u, a)),
    c AS (UPDATE durable.work SET state = 'running', owner = $13,
            attempt = ($19::integer[])[array_position($18::text[], task_id)],
            losses = ($20::integer[])[array_position($18::text[], task_id)],
            lease_until = clock_timestamp() + $14 * interval '1 second'
        WHERE run_id = $9 AND task_id = ANY($18::text[])),
    b AS (UPDATE durable.work SET state = 'ready', owner = NULL, lease_until = NULL,
            not_before = clock_timestamp() + ($24::double precision[])[array_position($23::text[], task_id)]
                * interval '1 second',
            tries = tries + ($25::integer[])[array_position($23::text[], task_id)]
        WHERE run_id = $9 AND task_id = ANY($23::text[])),
    d AS (DELETE FROM durable.work WHERE run_id = $9 AND task_id = ANY($21::text[])),
    f AS (DELETE FROM durable.fleet_runs WHERE run_id = $9 AND $26)
"""
#: A run's next seqs, reserved (under its lock) for the fast commit of its next step.
_SPARE = "ARRAY(SELECT nextval('durable.events_seq_seq') FROM generate_series(1, $27))"
WRITE = _WRITES + f"    SELECT CASE WHEN $22 THEN pg_notify('durable_work', $9) END, {_SPARE}"


#: The parameters of `WRITE` ($1-$27), then the step's own ($28-$33).
_STEP_PARAMETERS = """bigint[], text[], text[], integer[], text[], double precision[], bytea[],
    bigint[], text, bigint, bytea, bigint, uuid, double precision, text[], text[], integer[],
    text[], integer[], integer[], text[], boolean, text[], double precision[], integer[],
    boolean, integer, integer, integer, bigint, text[], integer[], text[]"""

#: A commit in one round trip, when its worker can decide it from what it knows
#: (`store.FleetStore._commit_fast`): under the run's lock, if nothing happened to
#: the run since this worker's last transaction on it (no event after `$30`; the
#: attempts `$31`/`$32` still held by it, their leases live; no row of its tools
#: claimable), the transaction's writes, at seqs it reserved then; else nothing,
#: and NULL. Returns the seqs reserved for the run's next step.
STEP_FUNCTION = f"""CREATE OR REPLACE FUNCTION durable.fleet_step({_STEP_PARAMETERS})
    RETURNS bigint[] LANGUAGE plpgsql AS $$
    DECLARE spare bigint[];
    BEGIN
        PERFORM pg_advisory_xact_lock($28, $29);
        IF EXISTS (SELECT 1 FROM durable.events e WHERE e.run_id = $9 AND e.seq > $30)
            OR (SELECT count(*) FROM durable.work w WHERE w.run_id = $9
                AND w.task_id = ANY($31) AND w.owner = $13 AND w.state = 'running'
                AND w.attempt = ($32)[array_position($31, w.task_id)]
                AND w.lease_until >= clock_timestamp()) < cardinality($31)
            OR EXISTS (SELECT 1 FROM durable.work w WHERE w.run_id = $9 AND w.state = 'ready'
                AND w.not_before <= clock_timestamp() AND w.tool = ANY($33))
            OR EXISTS (SELECT 1 FROM durable.work w WHERE w.run_id = $9
                AND w.state = 'running' AND w.lease_until < clock_timestamp()
                AND w.tool = ANY($33)) THEN
            RETURN NULL;
        END IF;
        IF $22 THEN
            PERFORM pg_notify('durable_work', $9);
        END IF;
{_WRITES}        SELECT {_SPARE} INTO spare;
        RETURN spare;
    END $$"""
STEP = f"SELECT durable.fleet_step({', '.join(f'${n}' for n in range(1, 34))})"

FLEET_SCHEMA = [*_TABLES, STEP_FUNCTION]
