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
"""

FLEET_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS durable.fleet_runs (
        run_id text PRIMARY KEY, max_concurrency integer NOT NULL,
        max_deaths integer NOT NULL, submitted_at double precision NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS durable.work (
        run_id text NOT NULL, task_id text NOT NULL, tool text NOT NULL,
        state text NOT NULL CHECK (state IN ('ready', 'running')),
        attempt integer NOT NULL DEFAULT 0, owner uuid, lease_until timestamptz,
        not_before timestamptz NOT NULL DEFAULT now(),
        tries integer NOT NULL DEFAULT 0, losses integer NOT NULL DEFAULT 0,
        queued bigserial, PRIMARY KEY (run_id, task_id))""",
    "CREATE INDEX IF NOT EXISTS work_by_owner ON durable.work (owner) WHERE owner IS NOT NULL",
    # A run's ready rows in queue order, and its running ones (counted by every claim).
    "CREATE INDEX IF NOT EXISTS work_by_state ON durable.work (run_id, state, queued)",
    # Which runs have work: the oldest ready rows of all.
    "CREATE INDEX IF NOT EXISTS work_queue ON durable.work (state, queued)",
    """CREATE TABLE IF NOT EXISTS durable.workers (
        worker_id uuid PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,
        slots integer NOT NULL, tools text[] NOT NULL, started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL, lease double precision NOT NULL)""",
]

#: NOTIFY channel: work became ready.
CHANNEL = "durable_work"
#: The namespace of the fleet's per-run transaction locks (apart from the drivers').
FLEET_LOCK_SPACE = 0x6476
