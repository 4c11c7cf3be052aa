"""The journal: one SQLite file holding every run, append-only, checked on every read.

`Journal` opens it and writes (`writer.py`, group commit); its reading half is
`JournalReader` (`reader.py`); the schema and its upgrades are `schema.py`; what a
file must be to be opened, and SQLite's errors in words, are `file.py`. The per-run
lock is `durable/runlock.py`.
"""

from durable.journal.file import SCHEMA_VERSION
from durable.journal.reader import JournalReader, RunRecord, SummaryRow
from durable.journal.schema import DURABILITY
from durable.journal.writer import DEFAULT_PATH, Journal, default_path

__all__ = [
    "DEFAULT_PATH",
    "DURABILITY",
    "SCHEMA_VERSION",
    "Journal",
    "JournalReader",
    "RunRecord",
    "SummaryRow",
    "default_path",
]
