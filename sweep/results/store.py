"""``trials.parquet`` and its journal: the source of truth of a sweep.

Conventions:

* One writer (the driver process) keeps every :class:`~sweep.results.schema.TrialRecord` keyed by
  ``trial_id``; the store is the only code that turns records into Parquet and back.
* A finished trial is **appended** as one small Parquet part in ``trials.journal/`` (numbered in
  order; trials that finish together may share one): the driver's cost per trial does not grow with
  the sweep.  :meth:`TrialStore.write`
  **compacts**: it writes the whole table to ``trials.parquet`` and records in its metadata the last
  journal part it includes, then deletes those parts; a crash between the two leaves parts that
  readers skip, so nothing is applied twice.
* Reading merges the table and the journal parts after it, in order; the newest record of a trial id
  wins (a re-run trial replaces its ``stopped`` row instead of duplicating it).
* Every file is written durably: temporary file, fsync, rename, fsync of the folder.  A crash never
  leaves a half-written table and a finished trial, once appended, survives a power cut.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..durable import durably
from ..errors import SweepDirError
from .schema import COLUMN_NAMES, COLUMN_TYPES, KNOB_PREFIX, TrialRecord

FILENAME = "trials.parquet"
JOURNAL = "trials.journal"
META_KEY = b"sweep"
JOURNAL_KEY = "journal_upto"  # in the table's metadata: the last journal part it includes
READ_TRIES = 5  # reads of the table and its journal while a driver compacts them (TrialStore.records)


class _PartGone(Exception):
    """A journal part listed a moment ago was deleted by a compaction: the table includes it now."""


def _knob_array(values: list) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def records_to_table(records: Iterable[TrialRecord], meta: dict) -> pa.Table:
    """The Parquet table of ``records``: the record's columns in order, then the knob columns sorted."""
    rows = [r.to_row() for r in records]
    knob_cols = sorted({k for r in rows for k in r if k.startswith(KNOB_PREFIX)})
    arrays = [pa.array([r[name] for r in rows], type=COLUMN_TYPES[name]) for name in COLUMN_NAMES]
    fields = [pa.field(name, COLUMN_TYPES[name]) for name in COLUMN_NAMES]
    for name in knob_cols:
        arr = _knob_array([r.get(name) for r in rows])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta, default=str).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def replace_by_id(records: Iterable[TrialRecord], new: Iterable[TrialRecord]) -> list[TrialRecord]:
    """``records`` with each of ``new`` replacing the record of the same trial id (or appended)."""
    by_id = {r.trial_id: r for r in records}
    for r in new:
        by_id[r.trial_id] = r
    return list(by_id.values())


class TrialStore:
    def __init__(self, sweep_dir: str | Path):
        self.path = Path(sweep_dir) / FILENAME
        self.journal = Path(sweep_dir) / JOURNAL
        self._next: int | None = None  # number of the next journal part (parts only grow)

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> tuple[list[dict], dict]:
        """Plain rows (column name -> value) and the sweep metadata: the table view, journal merged."""
        records, meta = self.records()
        if not self._parts_after(meta):
            table = self._table()
            return (table.to_pylist() if table is not None else []), meta
        return records_to_table(records, meta).to_pylist(), meta

    def records(self) -> tuple[list[TrialRecord], dict]:
        """The typed view: one :class:`TrialRecord` per trial (journal merged), and the sweep metadata.

        Safe beside a live driver (``sweep status``, a report while the sweep runs): each file is read through
        one open handle, so a table renamed into place meanwhile is read whole, old or new; a journal part
        that a compaction deleted after it was listed means the table now holds it, so the read starts again --
        as it does when the table was replaced while its journal was read (a compaction that deleted parts
        before they were listed: the old table without them would lose their rows)."""
        for _ in range(READ_TRIES - 1):
            try:
                return self._records_once()
            except _PartGone:
                continue
        return self._records_once()

    def _records_once(self) -> tuple[list[TrialRecord], dict]:
        before = self._stamp()
        table = self._table()
        meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}")) if table is not None else {}
        records = [TrialRecord.from_row(r) for r in table.to_pylist()] if table is not None else []
        for _, part in self._parts_after(meta):
            records = replace_by_id(records, [TrialRecord.from_row(r) for r in self._read(part).to_pylist()])
        if self._stamp() != before:  # compacted meanwhile: the parts listed may lack some the table read lacks
            raise _PartGone(self.path)
        meta.pop(JOURNAL_KEY, None)
        return records, meta

    def _stamp(self) -> tuple | None:
        """Which table file is at the path now (a compaction renames a new one over it), None without one."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def append(self, record: TrialRecord) -> None:
        """Add or replace one trial's record in O(1): one small durable part in the journal."""
        self.append_many([record])

    def append_many(self, records: Iterable[TrialRecord]) -> None:
        """Add or replace a few records (trials that finished together) as one durable journal part: the
        cost of a part (two fsyncs) is paid once for them all.  Later records of a trial id win."""
        records = list(records)
        if not records:
            return
        self.journal.mkdir(exist_ok=True)
        if self._next is None:  # once per store: after that, appending reads nothing
            parts = self._parts()
            self._next = max(parts[-1][0] if parts else 0, self._upto()) + 1
        _write_durably(records_to_table(replace_by_id([], records), {}), self.journal / f"{self._next:08d}.parquet")
        self._next += 1

    def write(self, records: Iterable[TrialRecord], meta: dict) -> None:
        """Compact: the whole table, durably, then the journal parts it now includes are deleted."""
        records = list(records)
        ids = [r.trial_id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"trial ids must be unique in results, but got {sorted(ids)}")
        parts = self._parts()
        upto = max(parts[-1][0] if parts else 0, self._upto())
        _write_durably(records_to_table(records, {**meta, JOURNAL_KEY: upto}), self.path)
        for _, part in parts:
            part.unlink(missing_ok=True)
        self._next = upto + 1

    def _upto(self) -> int:
        """The last journal part the table includes (0 without a table)."""
        if not self.path.is_file():
            return 0
        try:
            meta = pq.read_schema(self.path).metadata or {}
        except Exception:  # unreadable: reading the table says so in one line
            self._read(self.path)
            raise
        return int(json.loads(meta.get(META_KEY, b"{}")).get(JOURNAL_KEY, 0) or 0)

    def _table(self) -> pa.Table | None:
        return self._read(self.path) if self.path.is_file() else None

    def _read(self, path: Path) -> pa.Table:
        try:
            with open(path, "rb") as f:  # one inode, whatever is renamed over the path meanwhile
                # no Arrow thread at all: a thread of Arrow's pools still busy as the interpreter ends aborts a
                # short process (`sweep status`: "terminate called without an active exception", pyarrow 25).
                # `read_table(use_threads=False)` still pre-buffers on the I/O pool; this reader starts none.
                # These tables are small.
                return pq.ParquetFile(f, pre_buffer=False).read(use_threads=False)
        except FileNotFoundError:
            if path == self.path:
                raise
            raise _PartGone(path) from None  # compacted meanwhile (records() reads again)
        except Exception as e:  # a corrupt file is the user's to know about, in one line
            what = FILENAME if path == self.path else f"{FILENAME} journal part {path.name}"
            raise SweepDirError(f"sweep folder must hold a readable {what}, but reading it failed: "
                                f"{' '.join(str(e).split())} ({path}); restore it from a copy of the sweep "
                                f"folder: the rows cannot be rebuilt from elsewhere") from None

    def _parts(self) -> list[tuple[int, Path]]:
        if not self.journal.is_dir():
            return []
        return sorted((int(p.stem), p) for p in self.journal.glob("*.parquet") if p.stem.isdigit())

    def _parts_after(self, meta: dict) -> list[tuple[int, Path]]:
        upto = int(meta.get(JOURNAL_KEY, 0) or 0)
        return [(n, p) for n, p in self._parts() if n > upto]


def _write_durably(table: pa.Table, path: Path) -> None:
    """A Parquet table at ``path``, all or nothing (:func:`sweep.durable.durably`)."""
    durably(path, lambda tmp: pq.write_table(table, tmp))


