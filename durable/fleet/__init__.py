"""Workers on many machines sharing runs through the PostgreSQL journal.

See `docs/fleet.md` for the design (tables, the claim and commit transactions, and
why each guarantee holds). `tables.py` holds the SQL, `store.py` the transactions,
`worker.py` the `durable worker` process, `submit.py` handing a run to the fleet.
"""
