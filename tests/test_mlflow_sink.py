"""The MLflow mirror against a temporary sqlite store: parent + nested children, stale runs, and the
driver's trial mirror (a background writer that never raises)."""

from __future__ import annotations

import pytest

EXPERIMENT = "sweep-test"


@pytest.fixture(scope="module", autouse=True)
def _quiet_mlflow():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
        mp.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        mp.setenv("GIT_PYTHON_REFRESH", "quiet")
        yield


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def uri(store_dir):
    return f"sqlite:///{store_dir}/mlflow.db"


@pytest.fixture(scope="module")
def sink(uri, store_dir):
    """One sqlite store for the module (creating it runs MLflow's migrations, which take seconds)."""
    from sweep.results.mlflow_sink import MlflowSink

    return MlflowSink(uri, EXPERIMENT, artifact_dir=store_dir / "artifacts")


def status(sink, run_id: str) -> str:
    return sink.client.get_run(run_id).info.status


def test_parent_and_children(sink):
    from sweep.results.mlflow_sink import PARENT_TAG

    parent = sink.start_parent("demo", {"trials": 12, "sampler": "tpe", "skip": None}, tags={"sweep.name": "demo"})
    c1 = sink.start_child(parent, "magnitude-t1", {"method": "magnitude", "ratio": 0.3})
    c2 = sink.start_child(parent, "magnitude-t2", {"method": "magnitude", "ratio": 0.7}, tags={"extra": "x"})

    p = sink.client.get_run(parent)
    assert p.data.params == {"trials": "12", "sampler": "tpe"}  # None is not logged
    assert p.data.tags["sweep.role"] == "parent" and p.data.tags["sweep.name"] == "demo"
    assert PARENT_TAG not in p.data.tags
    for cid, ratio in ((c1, "0.3"), (c2, "0.7")):
        r = sink.client.get_run(cid)
        assert r.data.tags[PARENT_TAG] == parent
        assert r.data.tags["sweep.role"] == "trial"
        assert r.data.params == {"method": "magnitude", "ratio": ratio}
        assert r.info.experiment_id == sink.experiment_id
    assert sink.client.get_run(c2).data.tags["extra"] == "x"

    found = sink.children(parent)
    assert sorted(r.info.run_id for r in found) == sorted([c1, c2])
    # another sweep's children are not mixed in
    other = sink.start_parent("other", {})
    sink.start_child(other, "t", {})
    assert sorted(r.info.run_id for r in sink.children(parent)) == sorted([c1, c2])


def test_metric_history_with_steps(sink):
    parent = sink.start_parent("hist", {})
    child = sink.start_child(parent, "t", {})
    for step, loss in enumerate([2.0, 1.5, 1.0]):
        sink.log_metrics(child, {"train_loss": loss}, step=step)
    sink.log_metrics(child, {"accuracy": 0.9, "params": 1200, "bad": float("nan"), "flag": True, "text": "x"})
    hist = sink.client.get_metric_history(child, "train_loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    metrics = sink.client.get_run(child).data.metrics
    assert metrics["accuracy"] == 0.9 and metrics["params"] == 1200.0
    assert "bad" not in metrics and "flag" not in metrics and "text" not in metrics


def test_long_params_are_truncated_and_many_are_batched(sink):
    parent = sink.start_parent("params", {f"p{i}": i for i in range(150)})
    run = sink.client.get_run(parent)
    assert len(run.data.params) == 150
    sink.set_tags(parent, {"error": "e" * 7000})
    assert len(sink.client.get_run(parent).data.tags["error"]) == 6000


def test_close_stale_children(sink):
    parent = sink.start_parent("stale", {})
    running = [sink.start_child(parent, f"r{i}", {}) for i in range(2)]
    done = sink.start_child(parent, "done", {})
    sink.end(done, "FINISHED")
    failed = sink.start_child(parent, "failed", {})
    sink.end(failed, "FAILED")
    assert all(status(sink, r) == "RUNNING" for r in running)

    assert sink.close_stale_children(parent, "the driver died before the trial ended") == 2
    assert all(status(sink, r) == "KILLED" for r in running)
    assert {sink.client.get_run(r).data.tags["sweep.stopped"] for r in running} == {
        "the driver died before the trial ended"}
    assert "sweep.stopped" not in sink.client.get_run(done).data.tags
    assert status(sink, done) == "FINISHED"
    assert status(sink, failed) == "FAILED"
    assert sink.close_stale_children(parent, "again") == 0  # idempotent
    # the parent itself is not a child
    assert status(sink, parent) == "RUNNING"
    sink.end(parent)
    sink.reopen(parent)
    assert status(sink, parent) == "RUNNING"


def test_existing_experiment_is_reused_and_opens_as_model_training(sink, uri):
    from sweep.results.mlflow_sink import MlflowSink

    again = MlflowSink(uri, EXPERIMENT)
    assert again.experiment_id == sink.experiment_id
    tags = sink.client.get_experiment(sink.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the runs table, not the GenAI view


def _record(tid: str, status: str = "ok", **kw):
    from sweep.results.schema import TrialRecord

    if status != "ok":
        return TrialRecord.unfinished("s", tid, status, kw.pop("error", "boom"), method="magnitude").replace(**kw)
    return TrialRecord(sweep="s", trial_id=tid, status="ok", method="magnitude", accuracy=0.7, params=1000,
                       macs=2000, latency_ms=0.5, seed=3, knobs={"ratio": 0.5}, **kw)


def _thread_mirror(sink, parent, **kw):
    from sweep.results.mlflow_sink import TrialMirror

    return TrialMirror(sink, parent, **kw)


def _process_mirror(sink, parent, **kw):
    from sweep.results.mirror_process import MirrorProcess

    return MirrorProcess(sink.uri, EXPERIMENT, parent, **kw)


MIRRORS = pytest.mark.parametrize("make_mirror", [_thread_mirror, _process_mirror], ids=["thread", "process"])


@MIRRORS
def test_trial_mirror_writes_each_trial_in_order_off_the_callers_thread(sink, make_mirror):
    import threading

    from sweep.results.mlflow_sink import PARENT_TAG

    parent = sink.start_parent("mirrored", {})
    mirror = make_mirror(sink, parent, sweep_params={"model": "small_cnn", "dataset": "digits"})
    callers = {threading.get_ident()}
    mirror.started("t1", "magnitude-t1", {"method": "magnitude", "ratio": 0.5})
    mirror.started("t2", "magnitude-t2", {"method": "magnitude", "ratio": 0.25})
    mirror.finished(_record("t1"), [("magnitude/train_loss", 1.0, 0, 1000), ("magnitude/train_loss", 0.5, 1, 2000)])
    mirror.finished(_record("t2", "failed", error="diverged: loss nan"))
    mirror.parent_metrics({"hypervolume": 0.25}, step=2)
    assert mirror.flush()
    if hasattr(mirror, "_thread"):
        assert mirror._thread.ident not in callers
    else:  # written by another process
        assert mirror.alive and mirror._proc.pid != __import__("os").getpid()
    r1, r2 = (sink.client.get_run(mirror.run_ids[t]) for t in ("t1", "t2"))
    assert r1.data.tags[PARENT_TAG] == parent and r1.data.tags["sweep.trial_id"] == "t1"
    assert r1.data.params == {"model": "small_cnn", "dataset": "digits", "method": "magnitude", "ratio": "0.5"}
    assert r1.info.status == "FINISHED" and r1.data.metrics["accuracy"] == 0.7 and r1.data.metrics["params"] == 1000
    assert [(m.step, m.value) for m in sink.client.get_metric_history(r1.info.run_id, "magnitude/train_loss")] == [
        (0, 1.0), (1, 0.5)]
    assert r2.info.status == "FAILED" and r2.data.tags["error"] == "diverged: loss nan"
    assert sink.client.get_run(parent).data.metrics["hypervolume"] == 0.25
    for step in (3, 4, 5):  # however the writes batch up, every step is kept
        mirror.parent_metrics({"hypervolume": step / 10}, step=step)
    assert mirror.flush()
    assert [(m.step, m.value) for m in sink.client.get_metric_history(parent, "hypervolume")] == [
        (2, 0.25), (3, 0.3), (4, 0.4), (5, 0.5)]
    mirror.remeasured([_record("t1", latency_alone=True).replace(latency_ms=0.25)])
    assert mirror.flush()
    r1 = sink.client.get_run(mirror.run_ids["t1"])
    assert r1.data.metrics["latency_ms"] == 0.25 and r1.data.tags["sweep.latency"] == "re-measured alone"
    assert [m.value for m in sink.client.get_metric_history(r1.info.run_id, "latency_ms")] == [0.5, 0.25]
    # a row not timed again, put on the re-measured baseline's scale: its figure, tagged as what it is
    mirror.remeasured([_record("t2", status="ok").replace(latency_ms=0.4)])
    assert mirror.flush()
    r2 = sink.client.get_run(mirror.run_ids["t2"])
    assert r2.data.metrics["latency_ms"] == 0.4
    assert r2.data.tags["sweep.latency"] == "timed during the sweep, put on the re-measured baseline's scale"
    mirror.close()


@MIRRORS
def test_trial_mirror_stops_and_catches_up(sink, make_mirror):
    """Stopped trials' runs end KILLED with the reason; a finished record with no run anywhere (its driver died
    before mirroring it) gets one."""
    parent = sink.start_parent("caught-up", {})
    mirror = make_mirror(sink, parent)
    mirror.started("t8", "magnitude-t8", {})
    mirror.stopped(["t8", "never-started"], "terminated (SIGTERM)")
    mirror.finished(_record("t9"))
    assert mirror.flush()
    stopped = sink.client.get_run(mirror.run_ids["t8"])
    assert stopped.info.status == "KILLED" and stopped.data.tags["sweep.stopped"] == "terminated (SIGTERM)"
    fresh = sink.client.get_run(mirror.run_ids["t9"])
    assert fresh.info.status == "FINISHED" and fresh.data.params["seed"] == "3"
    assert fresh.data.metrics["accuracy"] == 0.7 and "sweep.superseded" not in fresh.data.tags
    assert [r.info.run_id for r in sink.children(parent, trial_id="t9")] == [fresh.info.run_id]
    mirror.close()


@MIRRORS
@pytest.mark.parametrize("earlier", ["killed-open", "complete", "two"])
def test_a_resumed_sweep_adopts_the_run_an_earlier_driver_wrote_instead_of_doubling_it(sink, make_mirror,
                                                                                          earlier):
    """The driver died after the mirror wrote a trial's run but before the table learned its id: the resumed
    sweep's mirror takes that run (completing it if it was left open and then closed as KILLED), so each trial
    keeps one current run; of two earlier runs the older is tagged superseded."""
    import time

    parent = sink.start_parent(f"adopt-{earlier}", {})
    runs = []
    for _ in range(2 if earlier == "two" else 1):
        runs.append(sink.start_child(parent, "magnitude-t5", {"seed": 3}, tags={"sweep.trial_id": "t5"},
                                     start_ms=int(time.time() * 1000) + len(runs)))
    old = runs[-1]
    if earlier == "complete":
        sink.log_metrics(old, {k: _record("t5").get(k) for k in ("accuracy", "params", "macs", "latency_ms")})
        sink.end(old, "FINISHED", end_ms=1234)
    else:  # left RUNNING by the killed driver, then closed by the resume's start, as close_stale_children does
        sink.set_tags(old, {"sweep.stopped": "killed"})
        for r in runs:
            sink.end(r, "KILLED")
    mirror = make_mirror(sink, parent)
    mirror.finished(_record("t5"))
    assert mirror.flush()
    assert mirror.run_ids["t5"] == old
    run = sink.client.get_run(old)
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == 0.7
    assert "sweep.stopped" not in run.data.tags and "sweep.superseded" not in run.data.tags
    if earlier == "complete":
        assert run.info.end_time == 1234  # left as it was
    current = [r for r in sink.children(parent, trial_id="t5") if r.data.tags.get("sweep.superseded") != "true"]
    assert [r.info.run_id for r in current] == [old]
    assert len(sink.children(parent, trial_id="t5")) == len(runs)
    mirror.close()


@pytest.mark.parametrize("stall_s, expect", [(0.4, True), (4.0, False)], ids=["writing", "stalled"])
def test_flush_waits_for_a_backlog_being_written_however_long_but_not_for_one_that_stands_still(
        sink, monkeypatch, stall_s, expect):
    """At a sweep's end the mirror may be far behind (it writes last on a busy machine): flush waits as long
    as writes get done, each within the timeout, and gives up (one warning) only after a timeout without any."""
    import time

    from sweep.results.mlflow_sink import TrialMirror

    real = sink.start_child
    calls = []

    def slow_start(*args, **kw):
        calls.append(1)
        time.sleep(stall_s if len(calls) == 2 else 0.4)
        return real(*args, **kw)

    monkeypatch.setattr(sink, "start_child", slow_start)
    parent = sink.start_parent("backlog", {})
    warnings, progress = [], []
    mirror = TrialMirror(sink, parent, warn=warnings.append)
    t0 = time.monotonic()
    for i in range(5):
        mirror.finished(_record(f"b{i}"))
    assert mirror.flush(timeout_s=1.5, on_progress=progress.append) is expect
    if expect:  # five writes of 0.4 s each: longer than the timeout in all, each well within it
        assert time.monotonic() - t0 >= 1.9 and warnings == [] and len(mirror.run_ids) == 5
        assert progress and progress == sorted(progress, reverse=True) and min(progress) >= 1
    else:  # the second write stands still for 4 s: given up after 1.5 s without a write
        assert len(mirror.run_ids) < 5 and len(warnings) == 1 and "none written in 1.5 s" in warnings[0]
        assert mirror.flush(timeout_s=10.0)  # and it is all written once the store moves again
        assert len(mirror.run_ids) == 5
    assert all(status(sink, mirror.run_ids[f"b{i}"]) == "FINISHED" for i in range(5))
    mirror.close()


def test_trial_mirror_never_raises_and_warns_once_per_kind(sink):
    from sweep.results.mlflow_sink import TrialMirror

    warnings = []
    mirror = TrialMirror(sink, "0" * 32, warn=warnings.append)  # a parent run that does not exist
    for i in range(3):
        mirror.run_ids[f"x{i}"] = "f" * 32  # nor do these trials' runs
        mirror.finished(_record(f"x{i}"))
        mirror.parent_metrics({"hypervolume": 1.0})
    assert mirror.flush()
    assert len(warnings) == 2 and all("trials.parquet holds every trial" in w for w in warnings)
    assert {w.split()[2] for w in warnings} == {"finish", "parent_metrics"}
    mirror.close()
    assert not mirror._thread.is_alive()


@pytest.mark.parametrize("env, expect", [(None, 19), ("0", 0), ("12", 12)], ids=["default", "driver's", "12"])
def test_the_mirror_process_runs_below_ray_workers_unless_the_environment_says(sink, monkeypatch, env, expect):
    import os

    from sweep.results import mirror_process as mp
    from sweep.results.mirror_process import MirrorProcess

    if env is None:
        monkeypatch.delenv(mp.NICENESS_ENV, raising=False)
    else:
        monkeypatch.setenv(mp.NICENESS_ENV, env)
    mirror = MirrorProcess(sink.uri, EXPERIMENT, sink.start_parent("nice", {}))
    assert mirror.flush()  # up, with the store open
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, mirror._proc.pid) == max(own, expect)  # by default below Ray's nice 15
    mirror.close()
    assert mp.NICENESS == 19


def test_the_mirror_process_outlives_ctrl_c_ends_when_closed_and_says_once_if_it_dies(sink):
    """Ctrl-C reaches the whole process group: the mirror process ignores it (the driver still has runs to
    close), ends when closed, and if it dies anyway the driver gets one warning line and flush says False."""
    import os
    import signal

    from sweep.results.mirror_process import MirrorProcess

    parent = sink.start_parent("process", {})
    warnings: list[str] = []
    mirror = MirrorProcess(sink.uri, EXPERIMENT, parent, warn=warnings.append)
    assert mirror.flush()  # up, with the store open
    os.kill(mirror._proc.pid, signal.SIGINT)
    mirror.started("p1", "magnitude-p1", {"ratio": 0.5}, at_ms=1_000)
    mirror.finished(_record("p1"), at_ms=2_000)
    assert mirror.flush() and mirror.alive
    run = sink.client.get_run(mirror.run_ids["p1"])
    assert (run.info.status, run.info.start_time, run.info.end_time) == ("FINISHED", 1_000, 2_000)
    mirror.close()
    assert mirror._proc.returncode == 0 and warnings == []

    dying = MirrorProcess(sink.uri, EXPERIMENT, parent, warn=warnings.append)
    assert dying.flush()
    dying._proc.kill()
    dying._proc.wait()
    dying.started("p2", "magnitude-p2", {})
    assert not dying.flush(timeout_s=5)
    dying.close()
    assert len(warnings) == 1 and "MLflow mirror process ended" in warnings[0]
    assert "trials.parquet holds every trial" in warnings[0]


def test_a_mirror_process_whose_driver_died_writes_what_finished_and_leaves_no_run_running(sink):
    """The driver dies with trials in flight: what finished is written; a trial whose run is not opened yet
    (its start held) gets none, and one whose run is open already (held long enough, or flushed) is closed as
    KILLED with the reason, whichever the mirror process met first."""
    from sweep.results import mirror_process as mp

    parent = sink.start_parent("orphan", {})
    mirror = mp.MirrorProcess(sink.uri, EXPERIMENT, parent)
    assert mirror.flush()
    mirror.started("done", "magnitude-done", {})
    mirror.finished(_record("done"))
    mirror.started("opened", "magnitude-opened", {})
    assert mirror.flush()  # a flush opens held runs: this one is RUNNING now
    mirror.started("in-flight", "magnitude-in-flight", {})  # held: its run is not opened yet
    mirror._q.put(mp._CLOSE)  # its stdin ends without the driver's close: the driver died
    assert mirror._proc.wait(timeout=60) == 0
    runs = {r.data.tags["sweep.trial_id"]: r for r in sink.children(parent)}
    assert {t: r.info.status for t, r in runs.items() if t != "in-flight"} == {"done": "FINISHED",
                                                                              "opened": "KILLED"}
    assert runs["opened"].data.tags["sweep.stopped"] == mp.DRIVER_GONE
    # a held start that came due before the end was read is closed the same way: never RUNNING
    assert "in-flight" not in runs or runs["in-flight"].info.status == "KILLED"


def _count_writes(sink, monkeypatch) -> list:
    """(call, run id) of every write the client makes from now on."""
    calls = []
    for name in ("create_run", "log_batch", "set_terminated", "set_tag"):
        real = getattr(sink.client, name)

        def counted(*args, _name=name, _real=real, **kw):
            calls.append((_name, kw.get("run_id", args[0] if args else None)))
            return _real(*args, **kw)

        monkeypatch.setattr(sink.client, name, counted)
    return calls


def test_a_short_trial_has_its_run_opened_finished_and_a_long_one_once_its_start_is_held_long_enough(
        sink, monkeypatch):
    """Each write is a store transaction: a trial that ends within START_HOLD_S of its start has its run
    written in three (opened with its tags, parameters and metrics, closed), with the start and end times
    the driver noted; a longer one is opened, RUNNING, once START_HOLD_S has passed."""
    import time

    from sweep.results import mlflow_sink as ms

    parent = sink.start_parent("held", {})
    calls = _count_writes(sink, monkeypatch)
    mirror = ms.TrialMirror(sink, parent, sweep_params={"model": "small_cnn"})
    t0 = int(time.time() * 1000)
    mirror.started("s1", "magnitude-s1", {"method": "magnitude", "ratio": 0.5})
    mirror.finished(_record("s1"), [("magnitude/train_loss", 1.0, 0, t0)])
    assert mirror.flush()
    assert [c for c, _ in calls] == ["create_run", "log_batch", "set_terminated"]
    r = sink.client.get_run(mirror.run_ids["s1"])
    assert r.info.status == "FINISHED" and r.data.tags["sweep.trial_id"] == "s1"
    assert r.data.params == {"model": "small_cnn", "method": "magnitude", "ratio": "0.5"}
    assert r.data.metrics["accuracy"] == 0.7 and r.data.metrics["magnitude/train_loss"] == 1.0
    assert t0 <= r.info.start_time <= r.info.end_time <= int(time.time() * 1000)

    monkeypatch.setattr(ms, "START_HOLD_S", 0.2)
    mirror.started("s2", "magnitude-s2", {"method": "magnitude", "ratio": 0.25})
    deadline = time.time() + 30
    while "s2" not in mirror.run_ids and time.time() < deadline:  # no flush: the hold ends by itself
        time.sleep(0.05)
    assert sink.client.get_run(mirror.run_ids["s2"]).info.status == "RUNNING"
    mirror.finished(_record("s2"))
    assert mirror.flush()
    assert sink.client.get_run(mirror.run_ids["s2"]).info.status == "FINISHED"
    mirror.close()


def test_parent_metrics_keep_every_step_in_a_few_writes(sink, monkeypatch):
    import time

    from sweep.results.mlflow_sink import PARENT_METRICS_EVERY_S, TrialMirror

    parent = sink.start_parent("hv", {})
    calls = _count_writes(sink, monkeypatch)
    mirror = TrialMirror(sink, parent)
    t0 = time.monotonic()
    for step in range(1, 41):  # a trial every 10 ms
        mirror.parent_metrics({"hypervolume": step / 100, "trials_done": step}, step=step)
        time.sleep(0.01)
    assert mirror.flush()
    writes = sum(1 for c, run in calls if run == parent)
    assert 1 <= writes <= 2 + (time.monotonic() - t0) / PARENT_METRICS_EVERY_S
    assert [(m.step, m.value) for m in sink.client.get_metric_history(parent, "hypervolume")] == [
        (s, s / 100) for s in range(1, 41)]
    mirror.close()


def test_the_embedded_store_writes_ahead_and_syncs_at_checkpoints_while_other_sqlite_files_are_left_alone(
        sink, store_dir, tmp_path):
    import sqlite3

    from sqlalchemy import create_engine, text

    from sweep.results.mlflow_sink import _sqlite_file

    def pragmas(url: str) -> tuple:
        engine = create_engine(url)
        try:
            with engine.connect() as c:  # a new connection, as MLflow's engine opens them
                return (c.execute(text("PRAGMA journal_mode")).scalar(), c.execute(text("PRAGMA synchronous")).scalar())
        finally:
            engine.dispose()

    sink.start_parent("wal-probe", {"a": 1})  # the store is in use
    assert sqlite3.connect(store_dir / "mlflow.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert pragmas(f"sqlite:///{store_dir}/mlflow.db") == ("wal", 1)  # 1: NORMAL
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert pragmas(f"sqlite:///{other}") == ("delete", 2)  # sqlite's defaults: a rollback journal, FULL
    assert _sqlite_file("sqlite:///relative/m.db?mode=rw").endswith("/relative/m.db")
    assert _sqlite_file("sqlite:///:memory:") is None and _sqlite_file("http://127.0.0.1:5000") is None


def _default_and_own_experiment(db) -> list:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT experiment_id, artifact_location FROM experiments ORDER BY 1").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("template", ["none yet", "garbage", "truncated", "a full store", "no cache folder"])
def test_a_new_store_takes_its_tables_from_the_template_the_first_one_left(tmp_path, monkeypatch, template):
    """The first new store's tables are made by MLflow's migrations and kept (less the default experiment) in
    the cache folder; the next new store is a copy that runs no migration, with its own default experiment.
    A template that is not one is replaced; a cache folder that cannot be made changes nothing."""
    import mlflow.store.db.utils as db_utils

    import sweep.results.mlflow_sink as ms
    from sweep.results.mlflow_sink import MlflowSink

    cache = tmp_path / "cache"
    monkeypatch.setenv(ms.CACHE_ENV, str(cache))
    kept = ms._template()
    if template == "garbage":
        kept.write_bytes(b"not a database at all" * 100)
    elif template == "truncated":
        MlflowSink(f"sqlite:///{tmp_path / 'first.db'}", "first", artifact_dir=tmp_path / "a0")
        kept.write_bytes(kept.read_bytes()[:8192])
    elif template == "a full store":  # another store's tables, experiments and runs: not copied
        other = MlflowSink(f"sqlite:///{tmp_path / 'other.db'}", "other", artifact_dir=tmp_path / "a0")
        other.start_parent("somebody else's", {})
        other.client._tracking_client.store.engine.dispose()
        kept.write_bytes((tmp_path / "other.db").read_bytes())
        assert ms._rows(str(kept), "experiments") == 2 and ms._rows(str(kept), "runs") == 1
    elif template == "no cache folder":
        cache.rmdir()
        cache.write_text("a file where the folder should be")

    first = MlflowSink(f"sqlite:///{tmp_path / 'one.db'}", EXPERIMENT, artifact_dir=tmp_path / "a1")
    assert _default_and_own_experiment(tmp_path / "one.db") == [
        (0, (tmp_path / "a1").resolve().as_uri() + "/0"), (1, (tmp_path / "a1").resolve().as_uri())]
    if template == "no cache folder":
        assert ms._template() is None and cache.read_text() == "a file where the folder should be"
        return
    assert [e for e, _ in _default_and_own_experiment(kept)] == []  # the tables, no experiment

    made = []
    monkeypatch.setattr(db_utils, "_initialize_tables", lambda engine: made.append(engine))
    second = MlflowSink(f"sqlite:///{tmp_path / 'two.db'}", EXPERIMENT, artifact_dir=tmp_path / "a2")
    assert made == []  # no migration ran
    assert _default_and_own_experiment(tmp_path / "two.db") == [
        (0, (tmp_path / "a2").resolve().as_uri() + "/0"), (1, (tmp_path / "a2").resolve().as_uri())]
    run = second.start_parent("p", {"a": 1})
    assert second.client.get_run(run).data.params == {"a": "1"}
    assert first.client.get_run(first.start_parent("q", {})).info.status == "RUNNING"
    assert not list(tmp_path.glob("*.new-*")) and not list(cache.glob("*.new-*"))


def test_a_new_embedded_store_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """MLflow makes a new store's tables with a chain of migrations: a process killed half-way must not leave
    a database that later opens fail on.  The store is made beside its place and renamed in once complete; a
    half-made one of a dead process is removed by the next open."""
    import sweep.durable as durable
    import sweep.results.mlflow_sink as ms
    from sweep.results.mlflow_sink import MlflowSink

    db = tmp_path / "mlflow.db"

    def killed(src, dst):
        raise KeyboardInterrupt  # the process ends with the tables made but not renamed in

    monkeypatch.setattr(durable, "durable_rename", killed)
    with pytest.raises(KeyboardInterrupt):
        MlflowSink(f"sqlite:///{db}", "whole", artifact_dir=tmp_path / "art")
    assert not db.exists()
    half = list(tmp_path.glob("mlflow.db.new-*"))
    assert len(half) == 1
    half[0].rename(tmp_path / "mlflow.db.new-999999999")  # as left by a process that is gone
    monkeypatch.undo()
    sink = MlflowSink(f"sqlite:///{db}", "whole", artifact_dir=tmp_path / "art")
    run = sink.start_parent("p", {"a": 1})
    assert sink.client.get_run(run).data.params == {"a": "1"}
    assert db.is_file() and not list(tmp_path.glob("mlflow.db.new-*"))
    assert ms._sqlite_file(f"sqlite:///{db}") in ms._SQLITE_FILES  # the store is tuned (WAL) as before


@pytest.mark.parametrize("sweep_first, opted_in, reports", [
    (True, False, False),  # a sweep's process: MLflow reports nothing
    (True, True, True),  # the user opted in: as they asked
    (False, False, True),  # the control: MLflow alone would report from this environment
])
def test_mlflow_reports_no_usage_from_a_sweep_unless_the_user_opts_in(tmp_path, sweep_first, opted_in, reports):
    """MLflow starts its usage telemetry when imported, unless switched off first (tests and CI switch it
    off themselves: the child process runs without those variables, in a home folder of its own)."""
    import os
    import subprocess
    import sys

    # what mlflow.telemetry.utils reads as "CI or testing", and the two switches themselves
    ci = {"PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "TF_BUILD",
          "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION",
          "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"}
    env = {k: v for k, v in os.environ.items() if k not in ci}
    env.update(HOME=str(tmp_path), **({"MLFLOW_DISABLE_TELEMETRY": "false"} if opted_in else {}))
    code = ("import sweep.results.mlflow_sink\n" if sweep_first else "") + (
        "import mlflow\nfrom mlflow.telemetry import get_telemetry_client\n"
        "print(get_telemetry_client() is not None)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(reports)


@pytest.mark.parametrize("folder", ["plain", "a folder with spaces", "odd#1?x=%20"])
def test_rows_counts_the_table_of_the_file_named_whatever_its_path(tmp_path, folder):
    import sqlite3

    import sweep.results.mlflow_sink as ms

    (tmp_path / folder).mkdir()
    file = tmp_path / folder / "store.db"
    con = sqlite3.connect(file)
    con.execute("CREATE TABLE runs (a)")
    con.executemany("INSERT INTO runs VALUES (?)", [(1,), (2,)])
    con.commit()
    con.close()
    assert ms._rows(str(file), "runs") == 2
    with pytest.raises(sqlite3.OperationalError):  # read-only: nothing is created where there is nothing
        ms._rows(str(tmp_path / folder / "absent.db"), "runs")
    assert not (tmp_path / folder / "absent.db").exists()


@pytest.mark.parametrize("how", ["copied", "moved"])
def test_a_sweep_folder_moved_or_copied_keeps_its_artifacts_in_itself_and_leaves_the_original_alone(tmp_path, how):
    """MLflow records artifact locations as absolute URIs: a sweep folder moved or copied (a new name, a
    backup, rsync to a laptop) would log its artifacts where it used to be.  Opened from its new place, the
    folder's own store is pointed at its own artifacts, every run and model under it; the original's store is
    untouched; a sqlite store that is not a folder's own (not beside the artifacts) is never rewritten."""
    import shutil

    from sweep.results.mlflow_sink import MlflowSink, relocate_artifacts

    a, b = tmp_path / "sweeps" / "a", tmp_path / "elsewhere" / "b 50%"
    a.mkdir(parents=True)
    sink = MlflowSink(f"sqlite:///{a}/mlflow.db", EXPERIMENT, artifact_dir=a / "mlartifacts")
    run = sink.start_parent("p", {})
    (tmp_path / "note.txt").write_text("kept")
    sink.log_artifact(run, tmp_path / "note.txt")
    sink.client._tracking_client.store.engine.dispose()
    b.parent.mkdir()
    (shutil.copytree if how == "copied" else shutil.move)(a, b)
    before = (a / "mlflow.db").read_bytes() if how == "copied" else None

    moved = MlflowSink(f"sqlite:///{b}/mlflow.db", EXPERIMENT, artifact_dir=b / "mlartifacts")
    new_root = (b / "mlartifacts").resolve().as_uri()
    assert moved.client.get_experiment(moved.experiment_id).artifact_location == new_root
    assert moved.client.get_run(run).info.artifact_uri.startswith(new_root + "/")
    assert [f.path for f in moved.client.list_artifacts(run)] == ["note.txt"]  # read from b's own copy
    (tmp_path / "more.txt").write_text("new")
    moved.log_artifact(run, tmp_path / "more.txt")
    assert sorted(p.name for p in (b / "mlartifacts").rglob("*.txt")) == ["more.txt", "note.txt"]
    if how == "copied":
        assert (a / "mlflow.db").read_bytes() == before and not list((a / "mlartifacts").rglob("more.txt"))
    else:
        assert not a.exists()  # nothing written where it used to be
    assert relocate_artifacts(str(b / "mlflow.db"), b / "mlartifacts") == []  # once is enough

    # a store other sweeps may share (not beside the artifacts): left as it is
    shared = tmp_path / "shared"
    shared.mkdir()
    one = MlflowSink(f"sqlite:///{shared}/mlflow.db", "one", artifact_dir=a / "mlartifacts")
    one.client._tracking_client.store.engine.dispose()
    again = MlflowSink(f"sqlite:///{shared}/mlflow.db", "one", artifact_dir=b / "mlartifacts")
    assert again.client.get_experiment(again.experiment_id).artifact_location == (a / "mlartifacts").resolve().as_uri()
