"""trials.parquet and the trial record: round trip, replacement by id, metadata, atomic write,
corruption, validation, and the README's schema table."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweep.errors import SweepDirError
from sweep.results.schema import BASELINE_ID, COLUMN_NAMES, COLUMNS, TrialRecord, knob_column
from sweep.results.store import FILENAME, META_KEY, TrialStore, records_to_table, replace_by_id

T0 = 1_700_000_000.5  # exactly representable: microsecond-exact after the round trip
META = {"name": "demo", "objectives": ["accuracy", "latency_ms"], "baseline": {"accuracy": 0.9, "params": 1000}}

K_RATIO = knob_column("magnitude", "ratio")
K_ROUND = knob_column("magnitude", "round_to")
K_GLOBAL = knob_column("magnitude", "global_pruning")
K_IMP = knob_column("magnitude", "importance")
K_OTHER = knob_column("toy", "steps")


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def rows():
    """The rows as the table shows them (knob columns included)."""
    base = {"sweep": "demo", "trial_id": BASELINE_ID, "status": "ok", "error": "", "method": "baseline",
            "accuracy": 0.9, "test_accuracy": 0.88, "params": 1000, "macs": 50_000, "latency_ms": 1.5,
            "latency_batch": 1, "latency_alone": False, "started_at": T0, "ended_at": T0 + 10.25,
            "wall_s": 10.25, "seed": 0}
    t1 = {"sweep": "demo", "trial_id": "t_0001", "trial_number": 0, "status": "ok", "error": "",
          "method": "magnitude", "accuracy": 0.85, "params": 600, "macs": 30_000, "latency_ms": 1.0,
          "on_front": True, "started_at": T0 + 20, "ended_at": T0 + 30.5, "info": '{"channel_ratio": 0.3}',
          K_RATIO: 0.3, K_ROUND: 4, K_GLOBAL: True, K_IMP: "l2"}
    t2 = {"sweep": "demo", "trial_id": "t_0002", "trial_number": 1, "status": "failed",
          "error": "diverged: non-finite loss nan in epoch 1", "method": "magnitude",
          "started_at": T0 + 40, "ended_at": None,
          K_RATIO: None, K_ROUND: 8, K_GLOBAL: False, K_IMP: None}
    return [base, t1, t2]


def records():
    return [TrialRecord.from_row(r) for r in rows()]


def test_round_trip(tmp_path):
    store = TrialStore(tmp_path)
    assert not store.exists() and store.read() == ([], {})
    store.write(records(), META)
    assert store.exists() and store.path == tmp_path / FILENAME
    back, meta = store.read()
    assert meta == META
    assert [r["trial_id"] for r in back] == [BASELINE_ID, "t_0001", "t_0002"]
    for orig, got in zip(rows(), back):
        for k, v in orig.items():
            if k in ("started_at", "ended_at"):
                assert got[k] == (None if v is None else utc(v)), k
            else:
                assert got[k] == v, (k, got[k], v)
        # columns a row did not set come back as nulls, not missing keys
        for k in COLUMN_NAMES:
            if k not in orig:
                assert got[k] is None, k


def test_timestamps_are_utc(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    table = pq.read_table(store.path)
    assert table.schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    started = store.read()[0][0]["started_at"]
    assert isinstance(started, datetime) and started.utcoffset().total_seconds() == 0
    assert started.timestamp() == T0


def test_knob_column_kinds(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    schema = pq.read_schema(store.path)
    assert schema.field(K_RATIO).type == pa.float64()
    assert schema.field(K_ROUND).type == pa.int64()
    assert schema.field(K_GLOBAL).type == pa.bool_()
    assert schema.field(K_IMP).type == pa.string()
    back = {r["trial_id"]: r for r in store.read()[0]}
    assert back["t_0001"][K_ROUND] == 4 and isinstance(back["t_0001"][K_ROUND], int)
    assert back["t_0002"][K_GLOBAL] is False
    assert back[BASELINE_ID][K_RATIO] is None  # the baseline has no knobs


def test_mixed_int_and_float_knob_becomes_float():
    recs = [TrialRecord(trial_id=t, method="magnitude", knobs={"ratio": v}) for t, v in (("a", 1), ("b", 0.5))]
    table = records_to_table(recs, {})
    assert table.schema.field(K_RATIO).type == pa.float64()
    assert table.column(K_RATIO).to_pylist() == [1.0, 0.5]


def test_every_schema_column_present_in_order(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    schema = pq.read_schema(store.path)
    assert schema.names[:len(COLUMNS)] == COLUMN_NAMES
    for name, typ, _ in COLUMNS:
        assert schema.field(name).type == typ, name
    assert sorted(schema.names[len(COLUMNS):]) == sorted([K_RATIO, K_ROUND, K_GLOBAL, K_IMP])


def test_schema_metadata_survives(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    raw = pq.read_schema(store.path).metadata[META_KEY]
    import json

    assert json.loads(raw) == {**META, "journal_upto": 0}  # the store's own bookkeeping beside the sweep's
    assert store.read()[1] == META
    # and survives reading records back and writing them again
    store.write(store.records()[0], store.records()[1])
    assert store.read()[1] == META


def test_replace_by_id_replaces_whole_records(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    old, _ = store.records()
    new2 = old[2].replace(status="ok", error="", accuracy=0.8, params=500, macs=20_000, latency_ms=0.9,
                          ended_at=T0 + 50)
    new3 = TrialRecord(sweep="demo", trial_id="t_0003", status="stopped", method="toy", knobs={"steps": 3})
    out = replace_by_id(old, [new2, new3])
    store.write(out, {**META, "hypervolume": 0.4})
    back, meta = store.read()
    ids = [r["trial_id"] for r in back]
    assert ids == [BASELINE_ID, "t_0001", "t_0002", "t_0003"]
    r2 = {r["trial_id"]: r for r in back}["t_0002"]
    assert r2["status"] == "ok" and r2["accuracy"] == 0.8 and r2["error"] == ""
    assert r2["ended_at"] == utc(T0 + 50)
    # fields of the replaced record that the new one carries over stay
    assert r2["method"] == "magnitude" and r2["trial_number"] == 1 and r2[K_ROUND] == 8
    assert r2["started_at"] == utc(T0 + 40)
    # the new knob column appears, null for the other rows
    r3 = {r["trial_id"]: r for r in back}["t_0003"]
    assert r3[K_OTHER] == 3 and r2[K_OTHER] is None
    assert meta["hypervolume"] == 0.4
    # the same replacement twice changes nothing
    store.write(replace_by_id(store.records()[0], [new2, new3]), meta)
    assert store.read()[0] == back


def test_records_survive_the_round_trip_exactly(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    assert store.records()[0] == records()
    for r in records():
        assert TrialRecord.from_json(r.to_json()) == r


@pytest.mark.parametrize("kw, match", [
    ({"trial_id": ""}, "trial_id must be"),
    ({"trial_id": "a", "status": "done"}, "status must be one of"),
    ({"trial_id": "a", "status": "ok"}, "an ok record must carry params, macs, latency_ms"),
    ({"trial_id": "a", "params": 1.5}, "params must be int64"),
    ({"trial_id": "a", "accuracy": "high"}, "accuracy must be double"),
    ({"trial_id": "a", "latency_alone": 1}, "latency_alone must be bool"),
])
def test_invalid_records_are_refused_when_built(kw, match):
    with pytest.raises(ValueError, match=match):
        TrialRecord(**kw)


def test_record_get_reads_columns_and_its_own_knobs():
    r = records()[1]
    assert r.get("accuracy") == 0.85 and r.get(K_RATIO) == 0.3 and r.get(K_OTHER) is None
    assert r.get("no_such_column", 7) == 7 and r.info_dict() == {"channel_ratio": 0.3}


def test_readme_schema_table_matches_the_record():
    """The README's table of columns is the record's fields, in order, with their types and meanings."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    start = lines.index("| column | type | meaning |") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, typ, meaning = (c.strip() for c in line.strip("|").split(" | "))
        table.append((name.strip("`"), typ, meaning))
    family = [t for t in table if t[0] == "knob.<method>.<knob>"]
    assert len(family) == 1 and family[0][1] == "per knob"
    assert [t for t in table if t not in family] == [(n, str(t), doc) for n, t, doc in COLUMNS]


def test_duplicate_ids_rejected_and_file_untouched(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    before = store.path.read_bytes()
    with pytest.raises(ValueError, match="trial ids must be unique"):
        store.write([TrialRecord(trial_id="a"), TrialRecord(trial_id="a")], META)
    assert store.path.read_bytes() == before


def test_atomic_write_leaves_no_tmp_file(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    store.write(records()[:1], META)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]


def test_failed_write_keeps_the_previous_table(tmp_path, monkeypatch):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    before = store.read()

    def boom(table, where, *a, **k):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        store.write(records()[:1], META)
    monkeypatch.undo()
    assert store.read() == before


def test_corrupt_file_raises_sweep_dir_error_with_path(tmp_path):
    store = TrialStore(tmp_path)
    store.path.write_bytes(b"this is not parquet at all")
    with pytest.raises(SweepDirError) as ei:
        store.read()
    assert str(store.path) in str(ei.value)
    assert "\n" not in str(ei.value).strip()


def test_pandas_reads_it(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    df = pd.read_parquet(store.path)
    assert len(df) == 3
    assert set(COLUMN_NAMES) <= set(df.columns)
    assert str(df["started_at"].dt.tz) == "UTC"
    assert df.loc[df["trial_id"] == "t_0001", "accuracy"].item() == 0.85
    assert df.loc[df["trial_id"] == "t_0001", K_ROUND].item() == 4


def test_append_adds_one_part_and_readers_merge_it(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    before = store.path.read_bytes()
    new = TrialRecord(sweep="demo", trial_id="t_0003", status="stopped", method="magnitude", knobs={"ratio": 0.7})
    store.append(new)
    rerun = records()[2].replace(status="ok", error="", params=500, macs=20_000, latency_ms=0.9)
    store.append(rerun)
    assert store.path.read_bytes() == before  # appending never rewrites the table
    assert sorted(p.name for p in store.journal.iterdir()) == ["00000001.parquet", "00000002.parquet"]
    recs, meta = store.records()
    assert meta == META
    assert [r.trial_id for r in recs] == [BASELINE_ID, "t_0001", "t_0002", "t_0003"]  # replaced, not duplicated
    assert recs[2] == rerun and recs[3] == new
    rows, _ = store.read()
    assert [r["trial_id"] for r in rows] == [BASELINE_ID, "t_0001", "t_0002", "t_0003"]
    assert rows[3][K_RATIO] == 0.7


def test_compaction_folds_the_journal_in_and_never_applies_a_part_twice(tmp_path):
    store = TrialStore(tmp_path)
    store.write(records(), META)
    store.append(records()[1].replace(latency_ms=5.0))
    recs, meta = store.records()
    # the compaction rewrites the trial with a newer figure (e.g. latency re-measured alone)
    remeasured = [r.replace(latency_ms=1.1) if r.trial_id == "t_0001" else r for r in recs]
    part = next(store.journal.iterdir())
    kept = part.read_bytes()
    store.write(remeasured, meta)
    assert list(store.journal.iterdir()) == []
    # a crash between the compaction and the deletion leaves the part behind: readers skip it
    part.write_bytes(kept)
    assert {r.trial_id: r.latency_ms for r in store.records()[0]}["t_0001"] == 1.1
    # parts appended after the compaction are read, by this store and by a fresh one
    part.unlink()
    store.append(records()[1].replace(latency_ms=0.7))
    assert {r.trial_id: r.latency_ms for r in store.records()[0]}["t_0001"] == 0.7
    store.write(*store.records())
    TrialStore(tmp_path).append(records()[1].replace(latency_ms=0.6))
    assert {r.trial_id: r.latency_ms for r in store.records()[0]}["t_0001"] == 0.6


@pytest.mark.parametrize("moment", ["part listed", "table read"])
def test_a_reader_beside_a_compacting_driver_reads_every_trial(tmp_path, monkeypatch, moment):
    """`sweep status` reads while the driver compacts: the journal parts folded into the table and deleted after
    the reader listed one (before reading it), or after it read the old table (before listing the parts, which
    are then gone), send the reader back to the new table -- neither an error nor rows missing."""
    writer = TrialStore(tmp_path)
    writer.write(records()[:1], META)
    for r in records()[1:]:
        writer.append(r)
    reader = TrialStore(tmp_path)
    real_read, real_parts = TrialStore._read, TrialStore._parts
    compacted = []

    def compact_once():
        if not compacted:
            compacted.append(real_parts(writer))
            writer.write(*writer.records())

    def read(self, path):
        if self is reader and path != self.path and moment == "part listed":
            compact_once()
        return real_read(self, path)

    def parts(self):
        if self is reader and moment == "table read":
            compact_once()
        return real_parts(self)

    monkeypatch.setattr(TrialStore, "_read", read)
    monkeypatch.setattr(TrialStore, "_parts", parts)
    recs, meta = reader.records()
    assert compacted and compacted[0] and not any(p.exists() for _, p in compacted[0])
    assert sorted(r.trial_id for r in recs) == sorted(r.trial_id for r in records()) and meta["name"] == "demo"


def test_writes_are_synced_before_they_count(tmp_path, monkeypatch):
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    store = TrialStore(tmp_path)
    store.write(records(), META)
    store.append(records()[1])
    assert len(synced) == 4  # each of the two files, then its folder


def test_trials_that_finish_together_share_one_durable_part(tmp_path, monkeypatch):
    import os

    store = TrialStore(tmp_path)
    store.write(records(), META)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    a = TrialRecord(sweep="demo", trial_id="t_0003", status="stopped", method="magnitude", knobs={"ratio": 0.7})
    b = records()[2].replace(status="ok", error="", params=500, macs=20_000, latency_ms=0.9)
    store.append_many([a, b, a.replace(error="cut short")])
    assert len(synced) == 2  # one part: the file, then its folder
    assert sorted(p.name for p in store.journal.iterdir()) == ["00000001.parquet"]
    recs, _ = store.records()
    assert [r.trial_id for r in recs] == [BASELINE_ID, "t_0001", "t_0002", "t_0003"]
    assert recs[2] == b and recs[3].error == "cut short"  # the later record of a trial wins
    store.append_many([])
    assert len(synced) == 2 and len(list(store.journal.iterdir())) == 1


def test_a_short_process_that_reads_the_table_exits_cleanly(tmp_path):
    """`sweep status` is a short process that reads the table and ends: a threaded read from the open file left
    Arrow's thread pool busy as the interpreter ended, and most such processes aborted ("terminate called
    without an active exception", exit 134; a read with `use_threads=False` still pre-buffered on Arrow's I/O
    pool and aborted a few in a hundred on a loaded machine).  Reading the table and a journal part must start
    no thread at all (the cause, checked every time), and ten such processes in a row must all exit 0."""
    import subprocess
    import sys

    store = TrialStore(tmp_path)
    store.write(records(), META)
    store.append(records()[1].replace(error="again"))
    code = ("import os, sys; from sweep.results.store import TrialStore; threads = lambda: len(os.listdir("
            "'/proc/self/task')); before = threads(); recs, _ = TrialStore(sys.argv[1]).records(); "
            "print(before, threads(), len(recs))")
    for _ in range(10):
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        before, after, n = map(int, res.stdout.split())
        assert after == before and n == len(records()), res.stdout
