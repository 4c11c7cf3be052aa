"""Who is alive in the fleet: worker rows, their heartbeats and the leases they renew.

Each worker process start registers a new id (never a dead one's: procrastinate
#1518), renews its leases and heartbeat every third of its lease on a connection
of its own, and is listed by `durable workers` while its heartbeat is within its
lease.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import msgspec


def new_worker_id() -> str:
    """A worker process start's own id."""
    return str(uuid.uuid4())


async def register(
    conn: Any, worker_id: str, slots: int, tool_names: list[str], lease: float
) -> None:
    """Record this worker process (a new id per start: never a dead one's), and
    forget workers silent for an hour."""
    await conn.execute(
        "DELETE FROM durable.workers WHERE heartbeat_at < clock_timestamp() - interval '1 hour'"
    )
    await conn.execute(
        "INSERT INTO durable.workers VALUES ($1, $2, $3, $4, $5, clock_timestamp(), clock_timestamp(), $6)"
        " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = clock_timestamp()",
        uuid.UUID(worker_id),
        socket.gethostname(),
        os.getpid(),
        slots,
        tool_names,
        lease,
    )


async def renew(conn: Any, worker_id: str, lease: float) -> set[tuple[str, str, int]]:
    """Extend every lease this worker holds, and its heartbeat; return the attempts
    it still holds (one missing was claimed again: the worker must drop it)."""
    me = uuid.UUID(worker_id)
    rows = await conn.fetch(
        "UPDATE durable.work SET lease_until = clock_timestamp() + $2 * interval '1 second'"
        " WHERE owner = $1 AND state = 'running' RETURNING run_id, task_id, attempt",
        me,
        lease,
    )
    await conn.execute(
        "UPDATE durable.workers SET heartbeat_at = clock_timestamp() WHERE worker_id = $1", me
    )
    return {(row[0], row[1], row[2]) for row in rows}


async def unregister(conn: Any, worker_id: str) -> None:
    await conn.execute("DELETE FROM durable.workers WHERE worker_id = $1", uuid.UUID(worker_id))


class WorkerRow(msgspec.Struct):
    """A live worker as `durable workers` lists it."""

    worker_id: str
    host: str
    pid: int
    slots: int
    held: int
    heartbeat_age: float
    started_at: float
    tools: list[str]


async def live_workers(conn: Any) -> list[WorkerRow]:
    """Workers whose last heartbeat is within their lease: alive, as far as anyone can tell."""
    rows = await conn.fetch(
        "SELECT w.worker_id, w.host, w.pid, w.slots,"
        " (SELECT count(*) FROM durable.work k WHERE k.owner = w.worker_id"
        "  AND k.state = 'running'),"
        " extract(epoch from clock_timestamp() - w.heartbeat_at), extract(epoch from w.started_at), w.tools"
        " FROM durable.workers w WHERE w.heartbeat_at >= clock_timestamp() - w.lease * interval '1 second'"
        " ORDER BY w.started_at"
    )
    return [
        WorkerRow(str(r[0]), r[1], r[2], r[3], r[4], float(r[5]), float(r[6]), list(r[7]))
        for r in rows
    ]
