"""Workers on many machines sharing runs through the PostgreSQL journal.

See `docs/fleet.md` for the design (tables, the claim and commit transactions, and
why each guarantee holds). `tables.py` holds the SQL, `store.py` the transactions,
`workers.py` who is alive (registration, heartbeats, lease renewal), `worker.py`
the `durable worker` process, `submit.py` handing a run to the fleet, `bench.py`
`durable bench --workers`.
"""
