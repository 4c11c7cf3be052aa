"""The fleet's tables in the PostgreSQL journal (schema `durable`), beside the journal's own.

- `fleet_runs`: a run handed to the workers, and the limits every worker applies
  to it together (`max_concurrency`; per-tool limits are the workflow's own).
- `work`: one row per task of a fleet run that is ready or running, and no row for
  any other. A claim turns `ready` into `running` with an owner, an attempt and a
  lease; the commit of the attempt's outcome deletes the row (or, for a retry, makes
  it `ready` again after its delay). This table, unlike `events`, is mutable state:
  the history stays in `events`.
- `workers`: each worker process start (its own id, never reused), its host, pid,
  slots and heartbeat.

Work rows are never needed to know what a run did: the events say it. They say only
who may do what next.

Times are `clock_timestamp()`, never `now()`: `now()` is when the transaction began,
and a worker's connection may wait in a transaction begun by its last COMMIT
(`store.FleetStore._transaction`): a lease granted from that clock would be over
before it starts.
"""

FLEET_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS durable.fleet_runs (
        run_id text PRIMARY KEY, max_concurrency integer NOT NULL,
        max_deaths integer NOT NULL, submitted_at double precision NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS durable.work (
        run_id text NOT NULL, task_id text NOT NULL, tool text NOT NULL,
        state text NOT NULL CHECK (state IN ('ready', 'running')),
        attempt integer NOT NULL DEFAULT 0, owner uuid, lease_until timestamptz,
        not_before timestamptz NOT NULL DEFAULT clock_timestamp(),
        tries integer NOT NULL DEFAULT 0, losses integer NOT NULL DEFAULT 0,
        queued bigserial, PRIMARY KEY (run_id, task_id)) WITH (fillfactor = 70)""",
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
    # `want` claimable rows (c), what runs per tool (r), and `reserve` seqs (s).
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
                NULL::integer, NULL::integer, NULL::uuid
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
