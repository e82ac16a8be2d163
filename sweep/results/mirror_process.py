"""The MLflow mirror in a process of its own, so that its writes never hold the driver's interpreter.

Convention: the driver and the mirror process speak one JSON object per line, and nothing is pickled.
Driver -> process (the process's stdin): first ``{"uri", "experiment", "parent_run_id", "sweep_params",
"niceness"}``, then one :class:`~sweep.results.mlflow_sink.TrialMirror` call per line, ``{"op": <method>,
"args": [...]}`` (records as :meth:`TrialRecord.to_json` text), or ``{"op": "flush", "id": n, "timeout": s}``,
which asks for a reply.  Process -> driver (a private copy of the process's stdout; its ``sys.stdout`` and file
descriptor 1 go to stderr, so no library can write into the channel): ``{"run": [trial_id, run_id]}`` as each
run is opened, ``{"warn": line}`` for the mirror's warning lines, ``{"progress": writes_left}`` while it
flushes a backlog, ``{"flushed": n, "ok": bool}``.  The end
of its stdin is the end: the process writes what is queued and exits.  The driver closes it with ``{"op":
"close"}`` first; an end without it means the driver died, and then the trials still running get no run
opened (their starts are dropped) and the runs already opened for them are closed as KILLED, tagged
``sweep.stopped`` (:data:`DRIVER_GONE`; ``sweep resume`` runs those trials again), so that no run the dead
driver started is left RUNNING.

Why a process: a trial's run costs the tracking store three transactions, 10-17 ms of SQLAlchemy's CPU per
trial, and in a thread of the driver that time holds the interpreter lock Ray Tune's loop needs to hand the
next trial out (``bench/scale.py``'s space on 4 nodes, 2 cores: the driver's CPU per trial 32 -> 15 ms and
the steady state 19.5 -> 25 trials/s with the mirror's writes left out; bench/README.md).  Elsewhere the
mirror's work runs on another core.

The process runs at the lowest priority there is (nice :data:`NICENESS`, unless :data:`NICENESS_ENV` says
otherwise): on a busy machine the trials' own work goes first, e.g. the trial workers' start-up (torch's
import) when a sweep begins, which it overlaps with its own import of MLflow.  The lowest, not merely lower
than the driver: Ray runs its workers, where trials compute, at nice 15 (its ``worker_niceness``), and a mirror
at nice 10 had three times a trial worker's share of a busy core.  The mirror catches up when a core is free,
and :meth:`MirrorProcess.flush` waits for it where it must (stopped trials, the end of the sweep, a resumed
sweep's trials that an earlier driver did not mirror); nothing waits for it while trials run.

The process ignores SIGINT and SIGTERM: Ctrl-C in a terminal reaches the whole process group, and the
driver, which stops the sweep on either signal, still has runs to close (its stopped trials, as KILLED)
before it closes the mirror.  If the driver dies without closing it, the end of its stdin ends it too.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import ConfigError
from .mlflow_sink import _now_ms  # one clock for both mirrors (the module imports MLflow only when writing)

# what the driver may ask of the process besides "flush": TrialMirror's queued calls
OPS = ("started", "finished", "stopped", "superseded", "remeasured", "parent_metrics")
# the process's nice value, the lowest priority (module docstring); a process may always lower its own
NICENESS = 19
# another nice value for it, 0-19 (e.g. 0: the driver's priority, where the machine's other work would starve
# it; the test suite runs it so); a process cannot be given more priority than its driver has
NICENESS_ENV = "SWEEP_MIRROR_NICENESS"
# how long close() waits for the process to end once its stdin is closed (it has written what was
# queued by then: close() flushes first), before killing it
EXIT_WAIT_S = 30.0
# the sweep.stopped tag of the runs the process closes when its driver died (stdin ended without a close)
DRIVER_GONE = "the sweep's driver ended without closing its MLflow runs; `sweep resume` runs the trial again"
_CLOSE = object()


def niceness() -> int:
    """The mirror process's nice value: :data:`NICENESS`, or the one :data:`NICENESS_ENV` names."""
    text = os.environ.get(NICENESS_ENV)
    if text is None:
        return NICENESS
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise ConfigError(f"{NICENESS_ENV} must be a whole number from 0 to 19, but got {NICENESS_ENV}={text!r} "
                          f"(environment)")
    return value


def _text_params(params: dict) -> dict:
    """Parameter values as the mirror writes them (text), so that JSON cannot change them (a tuple would
    come back a list); None stays None (not written)."""
    return {str(k): (None if v is None else str(v)) for k, v in params.items()}


class MirrorProcess:
    """:class:`~sweep.results.mlflow_sink.TrialMirror`'s calls, carried out by a TrialMirror in a child process.

    The same methods and promises: each call is queued (O(1) for the caller, never raises), :meth:`flush`
    waits for what is queued, ``run_ids`` maps trial ids to their runs as the process opens them.  If the
    process ends before it is closed (it could not open the store, or it was killed), one warning line says
    so and later calls are dropped: ``trials.parquet`` holds every trial, and ``sweep resume`` opens the runs
    that are missing."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, warn=None, sweep_params: dict | None = None):
        self.parent_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        self._warn = warn or (lambda line: print(line, file=sys.stderr))
        self._cond = threading.Condition()
        self._replies: dict[int, bool] = {}
        self._asked = 0
        self._closing = False
        self._ended = False  # the process's channel reached its end
        self._heard = time.monotonic()  # when the process last said anything (flush's patience counts from it)
        self._q: queue.Queue = queue.Queue()
        nice = niceness()
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds the `sweep` package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "sweep.results.mirror_process"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8")
        self._q.put({"uri": uri, "experiment": experiment, "parent_run_id": parent_run_id,
                     "sweep_params": _text_params(sweep_params or {}), "niceness": nice})
        self._writer = threading.Thread(target=self._write_loop, name="sweep-mlflow-mirror-out", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="sweep-mlflow-mirror-in", daemon=True)
        self._writer.start()
        self._reader.start()

    # ---------------------------------------------------------------- queued (O(1) for the caller)
    def started(self, trial_id: str, name: str, params: dict, at_ms: int | None = None) -> None:
        self._call("started", trial_id, name, _text_params(params), _now_ms() if at_ms is None else at_ms)

    def finished(self, record, history: list | tuple = (), at_ms: int | None = None) -> None:
        self._call("finished", record, [list(h) for h in history], _now_ms() if at_ms is None else at_ms)

    def stopped(self, trial_ids, reason: str) -> None:
        self._call("stopped", list(trial_ids), reason)

    def superseded(self, trial_ids) -> None:
        self._call("superseded", list(trial_ids))

    def remeasured(self, records) -> None:
        self._call("remeasured", list(records))

    def parent_metrics(self, metrics: dict, step: int = 0) -> None:
        self._call("parent_metrics", dict(metrics), step)

    def _call(self, op: str, *args) -> None:
        if not self._ended:
            self._q.put((op, args))

    # ---------------------------------------------------------------- waiting
    def flush(self, timeout_s: float = 120.0) -> bool:
        """Wait until the process has written everything asked of it so far, as long as it keeps writing (it
        says so as it goes: :meth:`TrialMirror.flush`); False if writes are left after ``timeout_s`` (and a
        little more for the reply) in which the process said nothing, or if the process has ended."""
        with self._cond:
            if self._ended:
                return False
            self._asked += 1
            n = self._asked
        self._q.put(("flush", n, timeout_s))
        asked = time.monotonic()
        with self._cond:
            while n not in self._replies and not self._ended:
                left = max(asked, self._heard) + timeout_s + 10.0 - time.monotonic()
                if left <= 0:
                    self._warn(f"warning: MLflow writes still queued and none written in {timeout_s:g} s; "
                               f"trials.parquet holds every trial regardless")
                    return False
                self._cond.wait(min(left, 1.0))
            return self._replies.pop(n, False)

    def close(self, timeout_s: float = 120.0) -> None:
        """Write what is queued, then end the process (killed if it has not ended :data:`EXIT_WAIT_S` later)."""
        self.flush(timeout_s)
        self._closing = True
        self._q.put(("close",))
        self._q.put(_CLOSE)
        try:
            self._proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._writer.join(timeout=5)
        self._reader.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    # ---------------------------------------------------------------- the driver's two threads
    def _write_loop(self) -> None:
        """Queued calls -> JSON lines on the process's stdin, in order; records serialised here, off the
        caller's thread."""
        pipe = self._proc.stdin
        while True:
            item = self._q.get()
            try:
                if item is _CLOSE:
                    pipe.close()
                    return
                pipe.write(json.dumps(_encoded(item)) + "\n")
                if self._q.empty():
                    pipe.flush()
            except (OSError, ValueError):  # the process is gone (a broken pipe): the reader says so
                self._drain()
                return

    def _drain(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _read_loop(self) -> None:
        for line in self._proc.stdout:
            self._heard = time.monotonic()
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "run" in msg:
                tid, run_id = msg["run"]
                self.run_ids[tid] = run_id
            elif "warn" in msg:
                self._warn(msg["warn"])
            elif "flushed" in msg:
                with self._cond:
                    self._replies[int(msg["flushed"])] = bool(msg.get("ok"))
                    self._cond.notify_all()
        code = self._proc.wait()
        # judged by how it ended, not by whether close() has begun: the writer can meet the broken pipe of a
        # killed process first, and close() then starts before this thread gets here
        if not (self._closing and code == 0):
            self._warn(f"warning: the MLflow mirror process ended (exit code {code}); MLflow gets no more of this "
                       f"sweep's runs, trials.parquet holds every trial, and `sweep resume` opens the missing runs")
        self._drain()


def _encoded(item) -> dict:
    if isinstance(item, dict):  # the opening line
        return item
    op, *rest = item
    if op == "flush":
        return {"op": "flush", "id": rest[0], "timeout": rest[1]}
    if op == "close":
        return {"op": "close"}
    args = list(rest[0])
    if op == "finished":
        args[0] = args[0].to_json()
    elif op == "remeasured":
        args[0] = [r.to_json() for r in args[0]]
    return {"op": op, "args": args}


def open_mirror(sink, experiment: str, parent_run_id: str, warn=None, sweep_params: dict | None = None):
    """The sweep's trial mirror: a :class:`MirrorProcess` for ``sink``'s store, or, where no process can be
    started, a :class:`~sweep.results.mlflow_sink.TrialMirror` thread on ``sink`` itself."""
    try:
        return MirrorProcess(sink.uri, experiment, parent_run_id, warn, sweep_params)
    except OSError as e:
        from .mlflow_sink import TrialMirror

        (warn or print)(f"note: no process for the MLflow mirror ({type(e).__name__}: {e}); it writes from the "
                        f"driver's own process")
        return TrialMirror(sink, parent_run_id, warn, sweep_params)


# ------------------------------------------------------------------------------------ the process
class _Announced(dict):
    """``run_ids`` of the process's TrialMirror: each new entry is also sent to the driver."""

    def __init__(self, say):
        super().__init__()
        self._say = say

    def __setitem__(self, trial_id, run_id) -> None:
        super().__setitem__(trial_id, run_id)
        self._say({"run": [trial_id, run_id]})


def main() -> int:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver ends this process (module docstring)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def say(msg: dict) -> None:
        with lock:
            channel.write(json.dumps(msg) + "\n")
            channel.flush()

    opening = json.loads(sys.stdin.readline() or "{}")
    try:  # before MLflow's import, which is most of its start-up
        os.setpriority(os.PRIO_PROCESS, 0, max(int(opening.get("niceness", NICENESS)),
                                               os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError:  # not allowed here: the mirror runs at the driver's priority
        pass
    try:
        from .mlflow_sink import MlflowSink, TrialMirror
        from .schema import TrialRecord

        sink = MlflowSink(opening["uri"], opening["experiment"])
        mirror = TrialMirror(sink, opening["parent_run_id"], warn=lambda line: say({"warn": line}),
                             sweep_params=opening.get("sweep_params"))
    except Exception as e:  # noqa: BLE001 -- the driver hears of it and goes on without MLflow
        say({"warn": f"warning: the MLflow mirror could not open the tracking store "
                     f"{opening.get('uri')!r}: {type(e).__name__}: {e}"})
        return 1
    mirror.run_ids = _Announced(say)
    closed = False
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        op = msg.get("op")
        if op == "close":
            closed = True
            continue
        if op == "flush":
            ok = mirror.flush(float(msg.get("timeout", 120.0)), on_progress=lambda left: say({"progress": left}))
            say({"flushed": msg["id"], "ok": ok})
            continue
        if op not in OPS:
            continue
        args = msg["args"]
        if op == "finished":
            args[0] = TrialRecord.from_json(args[0])
        elif op == "remeasured":
            args[0] = [TrialRecord.from_json(r) for r in args[0]]
        getattr(mirror, op)(*args)
    if not closed:  # the driver died (module docstring)
        mirror.orphaned(DRIVER_GONE)
    mirror.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
