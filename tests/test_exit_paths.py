"""One writer per sweep folder, every exit path closing the books, and `sweep status` -- without Ray.

Ray Tune is replaced by a stand-in tuner that drives the driver's real callback (trial start, step end)
and then stops the way the real one would: returning, raising, or receiving SIGTERM.  A real Ray sweep
with a time budget and a SIGTERM is in tests/test_integration.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweep.errors import SweepDirError
from sweep.folder import SweepFolder

SPACE = """
name: exitpaths
model: {name: small_cnn}
dataset: {name: digits}
baseline: {epochs: 1, lr: 0.05}
finetune: {epochs: 1, lr: 0.01}
search: {trials: 3, concurrency: 1, sampler: random, objectives: [accuracy, latency_ms, params]}
measure: {repeats: 5, warmup: 1}
methods:
  magnitude:
    ratio: {low: 0.2, high: 0.8}
"""

# holds a sweep folder's lock until killed, as a running `sweep run` would
HOLDER = ("import sys, time; from sweep.folder import SweepFolder; "
          "SweepFolder(sys.argv[1]).lock('sweep run').acquire(); print('locked', flush=True); time.sleep(600)")


class FakeTuner:
    """Stands in for Ray Tune: ``fit`` runs ``script(callback)``."""

    def __init__(self, callback, script):
        self.callback, self.script = callback, script

    def fit(self):
        self.script(self.callback)


def start_trial(callback, trial_id: str, number: int):
    """What Tune does when a trial starts: the callback hears of it (and the driver opens its MLflow run)."""
    import sweep.driver as driver

    callback.on_trial_start(iteration=0, trials=[], trial=SimpleNamespace(
        trial_id=trial_id, config={"method": "magnitude", "trial_number": number}))
    st = driver._ACTIVE["sweep"]
    assert st.mirror.flush()
    return st.mirror.run_ids[trial_id]


def budget_from_now() -> None:
    """The time budget's clock restarted here: the script's windows (a tenth of a second) are then measured
    from this line, not from Tune's start, which includes waiting on the MLflow mirror's process."""
    import sweep.driver as driver

    driver._ACTIVE["sweep"].fit_t0 = time.time()


def run_with(monkeypatch, script, cfg, sweep_dir: Path, tmp_path: Path, resume: bool = True):
    import sweep.driver as driver

    monkeypatch.setattr(driver, "_ray_init", lambda *a, **k: False)
    monkeypatch.setattr(driver, "_model_inbox", lambda folder: None)  # an actor would start a Ray of its own
    monkeypatch.setattr(driver, "_tuner", lambda cfg, folder, callback, records, inbox=None, scheduler=None, new=None:
                        FakeTuner(callback, script))
    return driver.run_sweep(cfg, sweep_dir, report_root=tmp_path / "reports", resume=resume, log=lambda m: None)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from sweep.config import load_config

    p = tmp_path_factory.mktemp("space") / "exitpaths.yaml"
    p.write_text(SPACE)
    return load_config(p)


@pytest.fixture(scope="module")
def built(cfg, tmp_path_factory):
    """A sweep with its baseline and MLflow store (built once), after a Tune that returned with all trials
    left: what Ray Tune does on Ctrl-C (its own SIGINT handler stops it; it then returns normally)."""
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        outcome = run_with(mp, lambda cb: None, cfg, root / "s", root, resume=False)
    return root / "s", outcome


@pytest.fixture
def sweep_dir(built, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(built[0], d)
    folder = SweepFolder(d)
    folder.write_state({**folder.state(), "tracking_uri": folder.default_tracking_uri})  # the copy's own store
    return d


def mlflow_runs(sweep_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("exitpaths").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    return parent, {r.data.tags.get("sweep.trial_id"): r for r in runs if r.data.tags.get("sweep.role") == "trial"}


def rows(sweep_dir: Path) -> dict:
    records, _ = SweepFolder(sweep_dir).store.records()
    return {r.trial_id: r for r in records}


@pytest.fixture
def holder(sweep_dir):
    """A process holding the folder's lock; killed by pid (SIGKILL) at the end if still alive."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(sweep_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


# ----------------------------------------------------------------------------- one writer per folder
def test_a_second_writer_is_refused_naming_the_holder_until_it_dies(cfg, sweep_dir, holder, capsys):
    from sweep.cli import main
    from sweep.driver import run_sweep

    before = sorted(p.name for p in sweep_dir.iterdir())
    assert main(["resume", str(sweep_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep: error: sweep folder must have one writer at a time")
    assert f"pid {holder.pid} on {socket.gethostname()}" in err[0] and "`sweep run`" in err[0]
    with pytest.raises(SweepDirError, match=f"pid {holder.pid} "):
        run_sweep(cfg, sweep_dir, report_root=None, log=lambda m: None)  # a new run into the folder
    assert main(["select", str(sweep_dir), "--max-params", "1000"]) == 2
    assert f"pid {holder.pid} " in capsys.readouterr().err
    assert sorted(p.name for p in sweep_dir.iterdir()) == before  # nothing touched

    holder.kill()  # SIGKILL: the kernel releases the flock, the lock file still names the dead holder
    holder.wait(timeout=30)
    folder = SweepFolder(sweep_dir)
    assert folder.lock_holder()["pid"] == holder.pid
    with folder.lock("sweep resume") as lock:
        assert lock.previous["pid"] == holder.pid
        assert folder.lock_holder()["pid"] == os.getpid()
        assert folder.lock_holder()["command"] == "sweep resume"
    assert folder.lock_holder() is None  # released cleanly


def test_the_lock_creates_nothing_in_a_folder_that_is_not_a_sweep(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    with pytest.raises(SweepDirError, match="not empty and not a sweep folder"):
        SweepFolder(plain).lock("sweep run", new=True)
    with pytest.raises(SweepDirError, match="not a sweep folder"):
        SweepFolder(plain).lock("sweep resume")
    assert [p.name for p in plain.iterdir()] == ["notes.txt"]


# ----------------------------------------------------------------------------- every exit path closes the books
def test_tune_returning_with_trials_left_is_an_interruption(built):
    sweep_dir, outcome = built
    assert outcome.interrupted and outcome.stop_reason == "interrupted (Ctrl-C)"
    parent, _ = mlflow_runs(sweep_dir)
    assert parent.info.status == "KILLED" and parent.data.tags["sweep.ended"] == "interrupted (Ctrl-C)"
    state = json.loads((sweep_dir / "state.json").read_text())
    assert state["outcome"] == "interrupted (Ctrl-C)" and state["running"] == []
    assert SweepFolder(sweep_dir).lock_holder() is None


def test_a_driver_error_in_tune_stops_the_running_trials_and_fails_the_parent(cfg, sweep_dir, tmp_path, monkeypatch):
    def script(cb):
        start_trial(cb, "t1", 0)
        raise RuntimeError("boom in a callback")

    with pytest.raises(RuntimeError, match="boom in a callback"):
        run_with(monkeypatch, script, cfg, sweep_dir, tmp_path)
    reason = "driver error: RuntimeError: boom in a callback"
    r = rows(sweep_dir)["t1"]
    assert (r.status, r.error, r.method, r.trial_number) == ("stopped", reason, "magnitude", 0)
    parent, children = mlflow_runs(sweep_dir)
    assert children["t1"].info.status == "KILLED"
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.ended"] == reason
    assert SweepFolder(sweep_dir).lock_holder() is None


# a stop signal that arrives while Ray starts (sent from inside ray.init: before its core worker connects,
# where Ray's Python handler would exit 15, or after, where its C++ handler catches SIGTERM): the caller's
# handler must get it once, after ray.init has returned, and the process go on
SIGNAL_IN_RAY_INIT = r"""
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import ray
import ray._private.worker as worker
from sweep import driver
sig, where = getattr(signal, sys.argv[2]), sys.argv[3]
seen = []
signal.signal(sig, lambda signum, frame: seen.append((signum, ray.is_initialized())))
real_connect = worker.connect
def connect(*a, **k):
    if where == "before":
        os.kill(os.getpid(), sig)
    r = real_connect(*a, **k)
    if where == "after":
        os.kill(os.getpid(), sig)
    return r
worker.connect = connect
assert driver._ray_init(None, Path.cwd(), 1, print, None)
after = signal.getsignal(sig)
driver._ray_shutdown(True, print)
os.kill(os.getpid(), sig)  # after Ray: the re-measurement, the report
print(json.dumps({"seen": seen, "handler_kept": getattr(after, "__name__", "") == "<lambda>"}))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("where", ["before", "after"], ids=["before-connect", "after-connect"])
def test_a_stop_signal_while_ray_starts_reaches_the_callers_handler_once_ray_is_up(tmp_path, sig, where):
    """A scheduler's SIGTERM (or a Ctrl-C) in the second or two Ray takes to start must take the sweep's way
    out (the CLI's handler), not Ray's exit 15 nor an abort of a half-connected driver; and so must one after
    Ray has shut down (its core worker set SIGTERM back to the default underneath Python: killed, exit -15)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.run([sys.executable, "-c", SIGNAL_IN_RAY_INIT, str(Path(__file__).resolve().parents[1]), sig,
                        where], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"seen": [[int(getattr(signal, sig)), True], [int(getattr(signal, sig)), False]],
                   "handler_kept": True}


def test_sigterm_stops_the_sweep_like_ctrl_c_with_exit_code_143(sweep_dir, tmp_path, monkeypatch, capsys):
    """Through the CLI: its SIGTERM handler turns the signal into the Ctrl-C path."""
    import sweep.driver as driver
    from sweep.cli import main

    slept = []

    def script(cb):
        start_trial(cb, "t1", 0)  # its result never comes
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this
        slept.append(True)
        raise AssertionError("SIGTERM did not stop the sweep")

    monkeypatch.setattr(driver, "_ray_init", lambda *a, **k: False)
    monkeypatch.setattr(driver, "_model_inbox", lambda folder: None)
    monkeypatch.setattr(driver, "_tuner", lambda cfg, folder, callback, records, inbox=None, scheduler=None, new=None:
                        FakeTuner(callback, script))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["resume", str(sweep_dir), "--reports", str(tmp_path / "reports")]) == 143
    assert not slept  # the handler cut the sleep short
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler lives only while the sweep runs
    out = capsys.readouterr().out
    assert f"terminated (SIGTERM): 0 of 3 trials finished and kept; continue with `sweep resume {sweep_dir}`" in out
    r = rows(sweep_dir)["t1"]
    assert (r.status, r.error) == ("stopped", "terminated (SIGTERM)")
    parent, children = mlflow_runs(sweep_dir)
    assert children["t1"].info.status == "KILLED" and children["t1"].data.tags["sweep.stopped"] == r.error
    assert parent.info.status == "KILLED" and parent.data.tags["sweep.ended"] == "terminated (SIGTERM)"


class ClosingPipe:
    """stdout whose reader goes away (``sweep run ... | head``) once ``gone`` is set: every write after that
    raises BrokenPipeError."""

    def __init__(self, fd: int):
        self.fd, self.gone, self.lines, self.broken_writes = fd, False, [], 0

    def write(self, text):
        if self.gone:
            self.broken_writes += 1
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)

    def flush(self):
        pass

    def fileno(self):
        return self.fd


@pytest.mark.parametrize("thread", ["main", "other"])
def test_a_closed_output_stops_the_sweep_with_the_books_closed_and_exit_code_141(sweep_dir, tmp_path, monkeypatch,
                                                                                 capsys, thread):
    """`sweep run ... | head`: once the reader has gone the sweep stops the way SIGTERM stops it (not with a
    driver error), its later lines (the one that failed first) go to stderr, and it can be resumed.  A line
    from another thread (the recorder's, the mirror's) asks for the stop, which Tune's next step delivers."""
    import threading

    import sweep.cli as cli
    import sweep.driver as driver

    read_end, write_end = os.pipe()
    os.close(read_end)
    pipe = ClosingPipe(write_end)
    reached = []

    def script(cb):
        start_trial(cb, "t1", 0)  # its result never comes
        pipe.gone = True
        if thread == "main":
            cli._log("a progress line")
        else:
            t = threading.Thread(target=cli._log, args=("a progress line",))
            t.start()
            t.join()
            cb.on_step_end(iteration=1, trials=[])
        reached.append(True)

    monkeypatch.setattr(driver, "_ray_init", lambda *a, **k: False)
    monkeypatch.setattr(driver, "_model_inbox", lambda folder: None)
    monkeypatch.setattr(driver, "_tuner", lambda cfg, folder, callback, records, inbox=None, scheduler=None, new=None:
                        FakeTuner(callback, script))
    monkeypatch.setattr(cli, "_OUTPUT_CLOSED", [])
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", pipe)
        code = cli.main(["resume", str(sweep_dir), "--reports", str(tmp_path / "reports")])
    os.close(write_end)
    assert code == 141
    assert not reached or thread == "other"  # from the main thread the stop comes at once
    assert pipe.broken_writes == 1  # after the first broken write nothing more was tried on the closed pipe
    assert any(line.startswith("running 3 trial(s)") for line in pipe.lines)
    err = capsys.readouterr().err
    assert err.startswith("a progress line\n")
    assert (f"{driver.OUTPUT_CLOSED}: 0 of 3 trials finished and kept; continue with `sweep resume {sweep_dir}`"
            in err)
    assert "Traceback" not in err and "driver error" not in err
    r = rows(sweep_dir)["t1"]
    assert (r.status, r.error) == ("stopped", driver.OUTPUT_CLOSED)
    parent, children = mlflow_runs(sweep_dir)
    assert children["t1"].info.status == "KILLED"
    assert parent.info.status == "KILLED" and parent.data.tags["sweep.ended"] == driver.OUTPUT_CLOSED


@pytest.mark.parametrize("where", ["before-tune", "in-tune"])
def test_a_sigterm_whose_interrupt_was_swallowed_still_stops_the_sweep(cfg, sweep_dir, tmp_path, monkeypatch, where):
    """A signal handler that runs while Ray's compiled code calls back into Python raises into code that
    ignores the exception ("Exception ignored in ..."): the stop is asked for again between the phases and at
    Tune's next step, instead of the sweep running to its end."""
    import sweep.driver as driver

    def swallowed():
        try:
            driver.interrupt(driver.SIGTERM)
        except KeyboardInterrupt:
            pass  # what the compiled code does with it

    reached = []
    if where == "before-tune":
        real = SweepFolder.has_baseline
        monkeypatch.setattr(SweepFolder, "has_baseline", lambda self: (swallowed(), real(self))[1])

    def script(cb):
        if where == "in-tune":
            swallowed()
            cb.on_step_end(iteration=1, trials=[])
        reached.append(True)

    outcome = run_with(monkeypatch, script, cfg, sweep_dir, tmp_path)
    assert outcome.interrupted and outcome.stop_reason == "terminated (SIGTERM)"
    assert not reached  # stopped before Tune ran, or at Tune's next step


def test_the_time_budget_is_a_normal_end(cfg, sweep_dir, tmp_path, monkeypatch):
    """The callback enforces search.time_budget_s: running trials become stopped rows, the sweep goes on to
    re-measurement and the report, and the parent run is FINISHED.  The heartbeat lists the trials in
    flight within HEARTBEAT_MIN_S of their start (written by the callback's next step)."""
    from sweep.folder import HEARTBEAT_MIN_S
    from sweep.status import status_lines

    seen = {}

    def script(cb):
        start_trial(cb, "t1", 0)
        start_trial(cb, "t2", 1)
        budget_from_now()
        time.sleep(HEARTBEAT_MIN_S + 0.05)
        cb.on_step_end(iteration=1, trials=[])  # within the budget: only the heartbeat that was due
        seen["status"] = status_lines(sweep_dir)  # a live driver, as `sweep status` sees it
        time.sleep(budget)
        cb.on_step_end(iteration=2, trials=[])  # past it: Tune is stopped like Ctrl-C
        raise AssertionError("the time budget did not stop Tune")

    budget = HEARTBEAT_MIN_S + 2.0
    budgeted = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, time_budget_s=budget))
    outcome = run_with(monkeypatch, script, budgeted, sweep_dir, tmp_path)
    why = f"time budget of {budget:g} s ran out"
    assert not outcome.interrupted and outcome.stop_reason == why
    assert (tmp_path / "reports" / "exitpaths" / "index.html").is_file()
    got = rows(sweep_dir)
    assert {t: (got[t].status, got[t].error) for t in ("t1", "t2")} == {t: ("stopped", why) for t in ("t1", "t2")}
    parent, children = mlflow_runs(sweep_dir)
    assert {children[t].info.status for t in ("t1", "t2")} == {"KILLED"}
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.ended"] == why
    live = dict(line.split(": ", 1) for line in seen["status"])
    assert live["running"].startswith("2 (t1, t2; heartbeat ")
    assert live["driver"].startswith(f"pid {os.getpid()} on {socket.gethostname()} (`sweep resume` since ")
    assert ": alive, trials; heartbeat" in live["driver"]


def test_the_time_budget_counts_every_run_of_the_sweep(cfg, sweep_dir, tmp_path, monkeypatch):
    """Seconds spent on trials add up over runs (state.json): a resume gets what is left of the budget, and
    none once it is spent (no trial starts; the sweep ends normally and says how to go on)."""
    import sweep.driver as driver

    folder = SweepFolder(sweep_dir)
    folder.write_state({**folder.state(), driver.BUDGET_USED: 0.4})  # an earlier run spent 0.4 s
    budgeted = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, time_budget_s=0.5))

    def script(cb):
        start_trial(cb, "t1", 0)
        budget_from_now()
        cb.on_step_end(iteration=1, trials=[])  # 0.4 s + a moment: within the budget
        time.sleep(0.15)
        cb.on_step_end(iteration=2, trials=[])  # 0.4 + 0.15 s: past it
        raise AssertionError("the time budget did not stop Tune")

    outcome = run_with(monkeypatch, script, budgeted, sweep_dir, tmp_path)
    assert outcome.stop_reason == "time budget of 0.5 s ran out"
    assert 0.55 <= folder.state()[driver.BUDGET_USED] < 5

    lines = []
    monkeypatch.setattr(driver, "_tuner", lambda *a: pytest.fail("a sweep with its budget spent started Tune"))
    again = driver.run_sweep(budgeted, sweep_dir, report_root=tmp_path / "reports", resume=True, log=lines.append)
    assert not again.interrupted and again.stop_reason == "time budget of 0.5 s ran out"
    assert any("earlier runs of this sweep spent 1 s on trials; to run the 3 trial(s) left, raise "
               "search.time_budget_s in" in line for line in lines)
    assert rows(sweep_dir)["t1"].status == "stopped"  # kept, to run first once the budget allows
    parent, _ = mlflow_runs(sweep_dir)
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize("again", ["finished", "cut-short-again"])
def test_a_re_run_configuration_replaces_the_stale_stopped_row(cfg, sweep_dir, tmp_path, monkeypatch, again):
    """A trial cut short keeps its stopped row (with its configuration) only until ``resume`` has run that
    configuration again: then the new trial's row replaces it -- also when the re-run is cut short in turn,
    so that the configuration is enqueued once, not twice -- and its MLflow run is marked superseded."""
    from sweep.results.schema import TrialRecord

    folder = SweepFolder(sweep_dir)
    records, meta = folder.store.records()
    folder.store.write(records + [TrialRecord.unfinished("exitpaths", "lost", "stopped", "driver error: X",
                                                         method="magnitude").replace(trial_number=0,
                                                                                     knobs={"ratio": 0.5})], meta)

    def script(cb):
        import sweep.driver as driver

        st = driver._ACTIVE["sweep"]  # the lost trial's MLflow run, closed when it was stopped
        st.sink.end(st.sink.start_child(st.parent_id, "magnitude-lost", {}, tags={"sweep.trial_id": "lost"}), "KILLED")
        cb.on_trial_start(iteration=0, trials=[], trial=SimpleNamespace(
            trial_id="again", config={"method": "magnitude", "trial_number": 0, "magnitude.ratio": 0.5}))
        if again == "finished":
            rec = TrialRecord(sweep="exitpaths", trial_id="again", trial_number=0, status="ok", method="magnitude",
                              accuracy=0.9, params=1000, macs=2000, latency_ms=0.1, knobs={"ratio": 0.5})
            cb.on_trial_result(iteration=1, trials=[], trial=SimpleNamespace(trial_id="again"),
                               result={"record_json": rec.to_json()})
        # else: Tune returns with it running (Ctrl-C): it becomes a stopped row of the same configuration

    outcome = run_with(monkeypatch, script, cfg, sweep_dir, tmp_path)
    assert outcome.stop_reason == "interrupted (Ctrl-C)"  # Tune returned with trials left
    got = rows(sweep_dir)
    assert "lost" not in got
    assert got["again"].status == ("ok" if again == "finished" else "stopped")
    assert got["again"].knobs == {"ratio": 0.5}
    assert [r.trial_id for r in got.values() if r.status == "stopped"] == ([] if again == "finished" else ["again"])
    _, children = mlflow_runs(sweep_dir)
    assert children["lost"].data.tags["sweep.superseded"] == "true"


def test_of_stopped_rows_with_one_configuration_only_the_latest_is_run_again():
    """A table written before re-runs replaced the stopped rows of their configuration may hold two: the
    resumed sweep keeps the latest, so that the configuration is enqueued once."""
    from sweep.driver import _stopped_twice
    from sweep.results.schema import TrialRecord

    def stopped(tid, at, ratio):
        return TrialRecord.unfinished("s", tid, "stopped", "x", method="magnitude", ended_at=at).replace(
            knobs={"ratio": ratio})

    rows_ = [stopped("a", 10.0, 0.5), stopped("b", 30.0, 0.5), stopped("c", 20.0, 0.5), stopped("d", 5.0, 0.7),
             TrialRecord.unfinished("s", "e", "stopped", "x", method="magnitude", ended_at=1.0)]  # no knobs
    assert _stopped_twice(rows_) == {"a", "c"}


def _finish_trial(cb, trial_id: str, number: int, ratio: float) -> None:
    from sweep.results.schema import TrialRecord

    start_trial(cb, trial_id, number)
    rec = TrialRecord(sweep="exitpaths", trial_id=trial_id, trial_number=number, status="ok", method="magnitude",
                      accuracy=0.9, params=1000, macs=2000, latency_ms=0.1, knobs={"ratio": ratio})
    cb.on_trial_result(iteration=1, trials=[], trial=SimpleNamespace(trial_id=trial_id),
                       result={"record_json": rec.to_json()})


def test_a_lost_or_replaced_tracking_store_is_rebuilt_from_the_table(cfg, sweep_dir, tmp_path, monkeypatch):
    """MLflow mirrors the table: with its store gone (moved aside, or a new tracking server), `sweep resume`
    opens a new parent run, writes a run for every finished trial again, and goes on."""
    run_with(monkeypatch, lambda cb: _finish_trial(cb, "t1", 0, 0.3), cfg, sweep_dir, tmp_path)
    old_parent, old_children = mlflow_runs(sweep_dir)
    assert set(old_children) == {"t1"}
    (sweep_dir / "mlflow.db").rename(tmp_path / "mlflow.db.aside")
    for extra in sweep_dir.glob("mlflow.db-*"):  # sqlite's write-ahead log and index go with it
        extra.rename(tmp_path / extra.name)

    lines = []

    def script(cb):
        _finish_trial(cb, "t2", 1, 0.6)

    import sweep.driver as driver

    monkeypatch.setattr(driver, "_tuner", lambda cfg, folder, callback, records, inbox=None, scheduler=None, new=None:
                        FakeTuner(callback, script))
    monkeypatch.setattr(driver, "_ray_init", lambda *a, **k: False)
    monkeypatch.setattr(driver, "_model_inbox", lambda folder: None)
    driver.run_sweep(cfg, sweep_dir, report_root=tmp_path / "reports", resume=True, log=lines.append)
    assert any(f"parent run {old_parent.info.run_id} is not in the tracking store" in x for x in lines), lines
    parent, children = mlflow_runs(sweep_dir)
    assert parent.info.run_id != old_parent.info.run_id
    assert set(children) == {"t1", "t2"} and all(r.info.status == "FINISHED" for r in children.values())
    assert children["t1"].data.metrics["accuracy"] == 0.9
    got = rows(sweep_dir)
    assert got["t1"].mlflow_run_id == children["t1"].info.run_id  # the table names the new runs
    assert got["baseline"].mlflow_run_id == parent.info.run_id
    assert SweepFolder(sweep_dir).state()["parent_run_id"] == parent.info.run_id
    assert "baseline_params" in parent.data.metrics


def test_a_tracking_store_that_cannot_be_opened_is_one_line(cfg, sweep_dir, tmp_path, capsys):
    from sweep.cli import main

    (sweep_dir / "mlflow.db").write_bytes(b"this is not a database" * 100)
    for extra in sweep_dir.glob("mlflow.db-*"):
        extra.unlink()
    assert main(["resume", str(sweep_dir), "--reports", str(tmp_path / "reports")]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1, err
    assert "the sweep's MLflow tracking store must open, but got " in err
    assert f"move it aside ({sweep_dir / 'mlflow.db'}) and `sweep resume {sweep_dir}`, which opens a new store" in err
    assert SweepFolder(sweep_dir).lock_holder() is None


# ----------------------------------------------------------------------------- sweep status
def write_results(sweep_dir: Path, cfg) -> None:
    """A folder as a sweep leaves it, written without Ray: 2 ok, 1 failed, 1 stopped of 6 trials."""
    from sweep.results.schema import TrialRecord

    def ok(tid, n):
        return TrialRecord(sweep="exitpaths", trial_id=tid, trial_number=n, status="ok", method="magnitude",
                           accuracy=0.9, params=1000, macs=2000, latency_ms=0.1)

    records = [ok("baseline", None).replace(method="baseline", params=5000), ok("a", 0), ok("b", 1),
               TrialRecord.unfinished("exitpaths", "c", "failed", "diverged", method="magnitude"),
               TrialRecord.unfinished("exitpaths", "d", "stopped", "terminated (SIGTERM)", method="magnitude")]
    SweepFolder(sweep_dir).store.write(records, {"name": "exitpaths", "trials": cfg.search.trials})


def status(sweep_dir: Path) -> tuple[int, dict]:
    """`sweep status` in a fresh interpreter: its exit code and facts, and it must not import Ray."""
    code = ("import sys; from sweep.cli import main; rc = main(['status', sys.argv[1]]); "
            "assert 'ray' not in sys.modules, 'sweep status imported Ray'; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, str(sweep_dir)], capture_output=True, text=True, timeout=120)
    assert res.stderr == "" or res.returncode != 0, res.stderr
    return res.returncode, dict(line.split(": ", 1) for line in res.stdout.strip().splitlines())


def test_status_of_a_running_then_killed_sweep(tmp_path, cfg):
    from sweep.config import load_config

    space = tmp_path / "six.yaml"
    space.write_text(SPACE.replace("trials: 3", "trials: 6"))
    sweep_dir = tmp_path / "s"
    folder = SweepFolder(sweep_dir)
    folder.create(load_config(space))
    write_results(sweep_dir, cfg)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(sweep_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        folder.write_heartbeat(["e"], phase="trials", outcome=None)
        rc, facts = status(sweep_dir)
        assert rc == 0
        assert facts["sweep"] == f"exitpaths ({sweep_dir.resolve()})"
        assert facts["done"] == "3 of 6 trials (2 ok, 1 failed)"
        # a live driver running trials runs the stopped rows again (a resume or a promotion round)
        assert facts["stopped"] == "1 (the running driver runs them again): terminated (SIGTERM)"
        assert facts["running"].startswith("1 (e; heartbeat ")
        assert facts["remaining"] == "3 of 6 trials"
        assert facts["driver"].startswith(f"pid {proc.pid} on {socket.gethostname()} (`sweep run` since ")
        assert facts["driver"].endswith("s ago") and ": alive, trials; heartbeat " in facts["driver"]
        folder.write_heartbeat(["e"], phase="remeasure", outcome=None)  # past its trials: it runs none again
        assert status(sweep_dir)[1]["stopped"] == "1 (run again by `sweep resume`): terminated (SIGTERM)"
    finally:
        proc.kill()  # SIGKILL, by pid: no books closed, the lock file still names it
        proc.wait(timeout=30)
        proc.stdout.close()
    rc, facts = status(sweep_dir)
    assert rc == 0
    assert facts["running"].startswith("0 (the last heartbeat, ") and facts["running"].endswith(
        "listed 1: its driver is not running; `sweep resume` runs again first those that saved a fine-tune state)")
    assert facts["driver"].startswith(f"none: pid {proc.pid} on {socket.gethostname()} (`sweep run` since ")
    assert facts["driver"].endswith("is not running (its lock is stale; the next writer takes it over)")
    assert facts["remaining"] == "3 of 6 trials"
    assert facts["stopped"] == "1 (run again by `sweep resume`): terminated (SIGTERM)"


def test_status_of_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    from sweep.cli import main

    (tmp_path / "notes.txt").write_text("hello")
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep: error: not a sweep folder") and str(tmp_path) in err[0]


# ----------------------------------------------------------------------------- models travel through Ray
def test_a_model_that_never_reaches_the_driver_fails_its_trial(tmp_path):
    """A trial's model comes from the driver's inbox actor; if that is gone (its node died), the trial is
    failed with the reason, and no row names a model the folder lacks."""
    from sweep.driver import _received
    from sweep.results.schema import TrialRecord

    def gone(rel):
        raise RuntimeError("ActorDiedError: the actor died unexpectedly\nmore detail")

    st = SimpleNamespace(inbox=SimpleNamespace(take=SimpleNamespace(remote=gone)), folder=SweepFolder(tmp_path))
    rec = TrialRecord(sweep="s", trial_id="t1", status="ok", method="magnitude", accuracy=0.9, params=10, macs=20,
                      latency_ms=0.1, model_path="models/t1.pt")
    got = _received(st, rec)
    assert (got.status, got.model_path) == ("failed", None)
    assert got.error == ("the trial's pruned model never reached the driver (RuntimeError: ActorDiedError: the "
                         "actor died unexpectedly)")
    assert not (tmp_path / "models").exists()
    assert _received(st, rec.replace(status="failed", error="x", model_path=None)).status == "failed"


# ----------------------------------------------------------------------------- finished trials: durable, then counted
def ok_result(trial_id: str, number: int) -> dict:
    from sweep.results.schema import TrialRecord

    rec = TrialRecord(sweep="exitpaths", trial_id=trial_id, trial_number=number, status="ok", method="magnitude",
                      accuracy=0.9, params=1000 - number, macs=2000, latency_ms=0.1, knobs={"ratio": 0.3 + number / 10})
    return {"record_json": rec.to_json(), "history_json": "[]"}


def test_a_finished_trial_counts_only_once_it_is_durable(cfg, sweep_dir, tmp_path, monkeypatch):
    """Ray Tune's thread hands a finished trial to the recorder and goes on; the trial stays among the running
    ones, uncounted and unmirrored, until its journal part is on disk."""
    import threading

    import sweep.driver as driver
    from sweep.results.store import TrialStore

    release, seen = threading.Event(), {}
    real = TrialStore.append_many

    def slow_disk(self, records):
        assert release.wait(60), "the test never released the disk"
        real(self, records)

    def script(cb):
        st = driver._ACTIVE["sweep"]
        start_trial(cb, "t1", 0)
        monkeypatch.setattr(TrialStore, "append_many", slow_disk)
        cb.on_trial_result(iteration=1, trials=[], trial=SimpleNamespace(trial_id="t1"), result=ok_result("t1", 0))
        cb.on_step_end(iteration=2, trials=[])  # Tune's thread is not held up by the disk
        seen["before"] = (st.progress.done, list(st.progress.running), "t1" in rows(sweep_dir))
        release.set()
        st.recorder.wait()
        cb.on_step_end(iteration=3, trials=[])
        seen["after"] = (st.progress.done, list(st.progress.running), rows(sweep_dir)["t1"].status)

    outcome = run_with(monkeypatch, script, cfg, sweep_dir, tmp_path)
    assert seen["before"] == (0, ["t1"], False)
    assert seen["after"] == (1, [], "ok")
    assert outcome.stop_reason == "interrupted (Ctrl-C)"  # Tune returned with 2 of 3 trials left
    _, children = mlflow_runs(sweep_dir)
    assert children["t1"].info.status == "FINISHED" and children["t1"].data.metrics["accuracy"] == 0.9


def test_a_trial_that_could_not_be_written_is_a_driver_error_and_runs_again(cfg, sweep_dir, tmp_path, monkeypatch):
    """The recorder's write fails (a full disk): Tune's thread raises it (a driver error, the parent run
    FAILED), and the trial it could not write is kept as a ``stopped`` row with its configuration."""
    import sweep.driver as driver
    from sweep.results.store import TrialStore

    real, calls = TrialStore.append_many, []

    def full_once(self, records):
        calls.append([r.trial_id for r in records])
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real(self, records)

    def script(cb):
        st = driver._ACTIVE["sweep"]
        start_trial(cb, "t1", 0)
        monkeypatch.setattr(TrialStore, "append_many", full_once)
        cb.on_trial_result(iteration=1, trials=[], trial=SimpleNamespace(trial_id="t1"), result=ok_result("t1", 0))
        st.recorder.wait()
        cb.on_step_end(iteration=2, trials=[])
        raise AssertionError("the recorder's error was not raised")

    with pytest.raises(OSError, match="No space left on device"):
        run_with(monkeypatch, script, cfg, sweep_dir, tmp_path)
    reason = "driver error: OSError: [Errno 28] No space left on device"
    r = rows(sweep_dir)["t1"]
    assert (r.status, r.error, r.method, r.trial_number) == ("stopped", reason, "magnitude", 0)
    assert calls == [["t1"], ["t1"]]  # the failed write, then its stopped row
    parent, children = mlflow_runs(sweep_dir)
    assert children["t1"].info.status == "KILLED"
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.ended"] == reason


def test_progress_line_counts_a_delivered_trial_as_no_longer_running():
    """Tune may start the next trial in a slot before the finished one is durable: the line then still
    says how many run (here 2 of 3 started), while the heartbeat keeps all three (a kill now re-runs it)."""
    from sweep.driver import _Progress

    lines: list[str] = []
    progress = _Progress(12, 0, lines.append)
    progress.running.update({"a": ("magnitude", 0, {}), "b": ("magnitude", 1, {}), "c": ("sr_init", 2, {})})
    progress.ending.add("a")
    progress.line()
    assert "running 2 ·" in lines[-1] and len(progress.running) == 3
    progress.ending.add("zzz")  # a trial that is not running does not lower the count
    progress.line()
    assert "running 2 ·" in lines[-1]


def test_a_tracking_store_that_fails_at_the_end_is_one_warning_not_a_failed_sweep(cfg, tmp_path):
    """After the last trial, the front and report go to the parent run: a store that fails then (a server
    gone, a locked database) costs one warning line, not the finished sweep's exit status."""
    import sweep.driver as driver

    class Gone:
        def log_artifact(self, *a, **k):
            raise OSError("connection refused\n(details)")

        log_metrics = log_artifact

    lines: list[str] = []
    driver._log_parent_artifacts(Gone(), "parent", [], cfg, {}, None, lines.append)
    assert lines == ["warning: the front and report could not be logged to the MLflow parent run: OSError: "
                     "connection refused (details); trials.parquet and the report hold them"]


def test_the_heartbeat_goes_on_while_the_baseline_trains(sweep_dir, monkeypatch):
    """A baseline may train for hours with no Ray Tune step to beat in: a thread rewrites the heartbeat, so
    `sweep status` does not see a driver gone quiet (it printed "heartbeat 79 s ago" and counting)."""
    import sweep.driver as driver

    monkeypatch.setattr(driver, "HEARTBEAT_EVERY_S", 0.05)
    folder = SweepFolder(sweep_dir)
    st = SimpleNamespace(last_beat=0.0, beat_due=False, folder=folder, budget_used0=0.0, fit_t0=None,
                         beat_warned=False, progress=SimpleNamespace(running=set(), log=print))
    seen = set()
    with driver._beating(st):
        t0 = time.time()
        while time.time() - t0 < 2.0 and len(seen) < 3:
            seen.add(folder.state().get("heartbeat"))
            time.sleep(0.02)
    seen.discard(None)
    assert len(seen) >= 3  # rewritten again and again while the block ran
    last = folder.state()["heartbeat"]
    time.sleep(0.2)
    assert folder.state()["heartbeat"] == last  # and no more after it


@pytest.mark.parametrize("failed, code", [(3, 1), (2, 0)])
def test_a_sweep_whose_every_trial_failed_exits_1(cfg, sweep_dir, capsys, failed, code):
    """`sweep run ... && sweep select ...` in a script must not go on as if the sweep had worked; one ok
    trial (or stopped_early / infeasible ones) is a sweep that worked."""
    from sweep.cli import _finish
    from sweep.results.schema import TrialRecord

    base = rows(sweep_dir)["baseline"]
    bad = [TrialRecord.unfinished("exitpaths", f"f{i}", "failed", "ValueError: x", method="magnitude")
           for i in range(failed)]
    good = [base.replace(trial_id="ok1")] if failed < 3 else []
    outcome = SimpleNamespace(interrupted=False, records=[base, *bad, *good], stop_reason=None, fit_s=0.0,
                              trials_run=0, sweep_dir=sweep_dir, tracking_uri="sqlite:///x.db", report_dir=None,
                              wall_s=1.0)
    assert _finish(outcome, cfg) == code
    err = capsys.readouterr().err
    assert ("sweep: every trial failed (3)" in err) == (code == 1)


@pytest.mark.parametrize("done, walls, elapsed, expected", [
    (1, [10.0], 14.0, 11 * 10.0 / 2),  # first trial of two slots: the slots' pace, not 14 s x 11 one after another
    (3, [10.0, 12.0, 11.0], 30.0, 9 * 11.0 / 2),  # a slot has not finished twice yet: still the slots' pace
    (4, [10.0] * 4, 24.0, 24.0 / 4 * 8),  # every slot twice: the rate observed
    (0, [], 5.0, math.nan),
])
def test_progress_eta_early_is_the_slots_pace_then_the_rate(done, walls, elapsed, expected):
    from sweep.driver import _Progress

    progress = _Progress(12, 0, lambda line: None, concurrency=2)
    progress.done, progress.trial_walls = done, walls
    eta = progress.eta_s(elapsed)
    assert (math.isnan(eta) and math.isnan(expected)) or eta == pytest.approx(expected)


def test_progress_eta_once_no_trial_starts_counts_only_those_running():
    """The epoch budget spent: what is left is the trials running, not the rest of search.trials."""
    from sweep.driver import _Progress

    progress = _Progress(12, 0, lambda line: None, concurrency=2)
    progress.done, progress.trial_walls, progress.closed = 6, [10.0] * 4, True
    progress.running.update({"a": ("magnitude", 6, {})})
    assert progress.eta_s(60.0) == pytest.approx(60.0 / 6 * 1)
    progress.ending.add("a")
    assert progress.eta_s(60.0) == 0


@pytest.mark.parametrize("stored, local, want", [
    ("Failure # 1 (occurred at 2026-12-06_14-31-53)\nRayActorError: first\n"
     "Failure # 2 (occurred at 2026-12-06_14-32-10)\nActorUnavailableError: The actor is unavailable:\n"
     "  Socket closed\n", None,
     "ActorUnavailableError: The actor is unavailable: Socket closed"),
    (None, "Failure # 1 (occurred at 2026-12-06_14-31-53)\nActorDiedError: The actor died\n",
     "ActorDiedError: The actor died"),  # not in the trial's storage yet: the file Tune has just written
    (None, None, "its process or node went away; Ray gave no error"),
])
def test_what_killed_a_trial_s_worker_is_one_line_of_its_latest_failure(tmp_path, stored, local, want):
    from sweep.driver import _error_line

    error_file = None
    if local is not None:
        error_file = tmp_path / "error.txt"
        error_file.write_text(local)
    trial = SimpleNamespace(get_error=lambda: stored, error_file=str(error_file) if error_file else None)
    assert _error_line(trial) == want


def test_while_no_node_can_run_a_trial_the_progress_line_gives_no_eta(cfg, monkeypatch):
    """A cluster whose nodes able to run a trial are all gone: one waiting line, the progress line says it
    waits instead of an ETA from before; once trials run again, the ETA is back."""
    from types import SimpleNamespace

    import sweep.driver as driver

    lines = []
    progress = driver._Progress(total=4, already_done=1, log=lines.append, concurrency=2)
    progress.done, progress.trial_walls = 2, [10.0]  # one finished in this run: an ETA from its pace
    st = SimpleNamespace(cfg=cfg, progress=progress, stalled=False)
    monkeypatch.setattr(driver, "_alive_node_resources", lambda: [{"CPU": 0.0}])
    monkeypatch.setattr(driver, "_beat", lambda st, **kw: None)
    driver._say_if_stalled(st)
    assert len(lines) == 1 and lines[0].startswith("waiting: no alive Ray node can run a trial now")
    progress.line()
    assert "· ETA ? (waiting for a node) ·" in lines[-1]
    progress.running = {"t9": ("magnitude", 3, {})}
    driver._say_if_stalled(st)
    progress.line()
    assert not st.stalled and "· ETA 0:10 ·" in lines[-1]


@pytest.mark.parametrize("done, running, ending, closed, last", [
    (3, {"t3": 0}, {"t3"}, False, True),  # the 4th of 4 delivered, nothing else computing: the run's last
    (2, {"t2": 0, "t3": 0}, {"t3"}, False, False),  # another trial still computing
    (2, {"t3": 0}, {"t3"}, False, False),  # one trial still to start
    (1, {"t3": 0}, {"t3"}, True, True),  # no trial starts any more (the epoch budget is spent)
    (4, {}, set(), False, True),  # every trial counted already
])
def test_the_runs_last_trial_is_the_one_after_which_nothing_computes_or_starts(done, running, ending, closed, last):
    """What makes the driver count a delivered trial at once, before Ray Tune's end-of-run work."""
    import sweep.driver as driver

    progress = driver._Progress(total=4, already_done=0, log=lambda line: None, concurrency=2)
    progress.done, progress.running, progress.ending, progress.closed = done, dict(running), set(ending), closed
    assert driver._last_in_flight(progress) is last
