"""``trials.parquet``: the source of truth of a sweep.

One writer (the driver process) keeps every :class:`~sweep.results.schema.TrialRecord` keyed by
``trial_id``; each write replaces the file atomically (temporary file + rename), so a crash never
leaves a half-written table and a re-run trial replaces its row instead of duplicating it.  The store
is the only code that turns records into Parquet and back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SweepDirError
from .schema import COLUMN_NAMES, COLUMN_TYPES, KNOB_PREFIX, TrialRecord

FILENAME = "trials.parquet"
META_KEY = b"sweep"


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

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> tuple[list[dict], dict]:
        """Plain rows (column name -> value) and the sweep metadata: the table view of the file."""
        table = self._table()
        if table is None:
            return [], {}
        return table.to_pylist(), json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))

    def records(self) -> tuple[list[TrialRecord], dict]:
        """The typed view: one :class:`TrialRecord` per row, and the sweep metadata."""
        rows, meta = self.read()
        return [TrialRecord.from_row(r) for r in rows], meta

    def _table(self) -> pa.Table | None:
        if not self.path.is_file():
            return None
        try:
            return pq.read_table(self.path)
        except Exception as e:  # a corrupt file is the user's to know about, in one line
            raise SweepDirError(f"sweep folder must hold a readable {FILENAME}, but reading it failed: "
                                f"{' '.join(str(e).split())} ({self.path})") from None

    def write(self, records: Iterable[TrialRecord], meta: dict) -> None:
        records = list(records)
        ids = [r.trial_id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"trial ids must be unique in results, but got {sorted(ids)}")
        table = records_to_table(records, meta)
        tmp = self.path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)
