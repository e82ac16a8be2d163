"""``trials.parquet``: the source of truth of a sweep.

One writer (the driver process) keeps every row keyed by ``trial_id``; each write replaces the file
atomically (temporary file + rename), so a crash never leaves a half-written table and a re-run
trial replaces its row instead of duplicating it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SweepDirError
from .schema import COLUMN_NAMES, COLUMN_TYPES, KNOB_PREFIX

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


def _ts(v: Any):
    if v is None or isinstance(v, datetime):
        return v
    return datetime.fromtimestamp(float(v), tz=timezone.utc)


def rows_to_table(rows: list[dict], meta: dict) -> pa.Table:
    knob_cols = sorted({k for r in rows for k in r if k.startswith(KNOB_PREFIX)})
    arrays, fields = [], []
    for name in COLUMN_NAMES:
        typ = COLUMN_TYPES[name]
        vals = [r.get(name) for r in rows]
        if pa.types.is_timestamp(typ):
            vals = [_ts(v) for v in vals]
        elif pa.types.is_integer(typ):
            vals = [None if v is None else int(v) for v in vals]
        elif pa.types.is_floating(typ):
            vals = [None if v is None else float(v) for v in vals]
        arrays.append(pa.array(vals, type=typ))
        fields.append(pa.field(name, typ))
    for name in knob_cols:
        arr = _knob_array([r.get(name) for r in rows])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta, default=str).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


class TrialStore:
    def __init__(self, sweep_dir: str | Path):
        self.path = Path(sweep_dir) / FILENAME

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> tuple[list[dict], dict]:
        if not self.path.is_file():
            return [], {}
        try:
            table = pq.read_table(self.path)
        except Exception as e:  # a corrupt file is the user's to know about, in one line
            raise SweepDirError(f"cannot read {self.path}: {e}") from None
        meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        return table.to_pylist(), meta

    def write(self, rows: Iterable[dict], meta: dict) -> None:
        rows = list(rows)
        ids = [r["trial_id"] for r in rows]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate trial ids in results: {sorted(ids)}")
        table = rows_to_table(rows, meta)
        tmp = self.path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)

    def upsert(self, new_rows: Iterable[dict], meta: dict | None = None) -> list[dict]:
        rows, old_meta = self.read()
        by_id = {r["trial_id"]: r for r in rows}
        for r in new_rows:
            by_id[r["trial_id"]] = {**by_id.get(r["trial_id"], {}), **r}
        out = list(by_id.values())
        self.write(out, meta if meta is not None else old_meta)
        return out
