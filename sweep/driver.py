"""The sweep driver: the only module that imports Ray.

``run_sweep`` = baseline -> Ray Tune with Optuna's multi-objective sampler (one Ray trial per sampled
configuration) -> records appended to ``trials.parquet``'s journal by this process (the single writer,
holding the folder's lock: a recorder thread makes each finished trial durable, then the Tune callback
counts it, see :class:`_Recorder`) -> front re-measured alone -> Pareto flags -> MLflow parent
artefacts -> report.  The sweep folder's layout belongs to :mod:`sweep.folder`; the front to
:func:`sweep.pareto.front_flags`.

Every way out closes the books: the trials in flight become ``stopped`` rows naming why, their MLflow
runs are closed as KILLED, and the parent run ends KILLED (Ctrl-C, SIGTERM through :func:`interrupt`),
FINISHED (the time budget ran out: a normal end, re-measured and reported with the trials it has) or
FAILED (the driver's own exception, re-raised).  Ctrl-C, SIGTERM and the time budget all stop Ray Tune
the same way (its SIGINT handler: it saves its state with the running trials still to run, which is
what ``sweep resume`` restores).  The epoch budget stops nothing: once it is spent the searcher gives no
trial more, the running ones finish, and the sweep ends as with the time budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import SweepConfig
from .constraints import budget_names
from .errors import SweepDirError, SweepError
from .folder import (
    BASELINE_MODEL,
    EMBEDDED_KEY,
    HEARTBEAT_EVERY_S,
    HEARTBEAT_MIN_S,
    MLFLOW_DB,
    SweepFolder,
    report_dir,
    sweep_meta,
)
from .pareto import DIRECTIONS
from .results.schema import FINISHED, TrialRecord, epochs_spent, with_front
from .results.store import TrialStore
from .trial import (
    TrialSpec,
    load_splits,
    prepare_baseline,
    run_trial,
    rung_qualities,
    trial_threads,
    use_shipped_splits,
)
from .warm import KEEP_IDLE_ENV, PRELOAD_ENV, READY_ENV, marks

EXPERIMENT = "tune"
RUNG = "rung"  # key of a rung report (fine-tune epochs so far) in the results a trial sends Tune
PROMOTED = "promoted at "  # how the `stopped` row of a promoted trial's error begins (_promote), until it runs again
CONSTRAINTS_KEY = "constraints"  # key of a result's search.constraints values (told to Optuna as constraints)
# trials.parquet is rewritten (the journal folded in) at most this often while trials run; every finished
# trial is durable in the journal at once (see sweep.results.store)
COMPACT_EVERY_S = 10.0
# on a cluster, how often the driver checks, while no trial runs and trials remain, that an alive node can still
# run one (all the nodes that could have gone away): one line says so, instead of a silent wait
STALL_CHECK_S = 10.0
# how long the driver waits for a finished trial's model from the inbox (it is normally there already)
MODEL_FETCH_TIMEOUT_S = 120.0

# why a sweep stopped early: the ``error`` of its stopped rows, the parent run's ``sweep.ended`` tag
CTRL_C = "interrupted (Ctrl-C)"
SIGTERM = "terminated (SIGTERM)"
OUTPUT_CLOSED = "stopped: its output was closed (broken pipe)"  # `sweep run ... | head`: the reader went away
# ... and the tag of a trial's MLflow run that an earlier driver left open (it was killed or lost its machine)
DRIVER_DIED = "the driver died before the trial ended"


# state.json's count of seconds spent running trials, over every run of the sweep (search.time_budget_s)
BUDGET_USED = "trials_s_used"


def budget_reason(seconds: float) -> str:
    return f"time budget of {seconds:g} s ran out"


def epoch_budget_reason(epochs: int) -> str:
    return f"epoch budget of {epochs} fine-tune epochs spent"


@dataclass
class SweepOutcome:
    sweep_dir: Path
    report_dir: Path | None
    records: list[TrialRecord]
    interrupted: bool
    wall_s: float
    fit_s: float = 0.0  # wall time of the Ray Tune part
    trial_s: float = 0.0  # summed wall time of the trials run in this call
    trials_run: int = 0
    concurrency: int = 1
    tracking_uri: str = ""
    stop_reason: str | None = None  # why the sweep ended before its trials were all done (None: it did not)

    def overhead(self) -> tuple[float, float]:
        """(wall, slot) orchestration overhead per trial of this call (:func:`overhead_per_trial`)."""
        return overhead_per_trial(self.fit_s, self.trial_s, self.trials_run, self.concurrency)


def overhead_per_trial(fit_s: float, trial_s: float, n: int, concurrency: int) -> tuple[float, float]:
    """(wall, slot) orchestration overhead per trial, from the Ray Tune part's wall time ``fit_s``, the summed
    wall time of its ``n`` trials ``trial_s`` and the concurrency: ``wall = (fit_s - trial_s / concurrency) /
    n`` is what each trial adds to the sweep beyond its own work spread over the slots (``bench/overhead.py``'s
    figure); ``slot = concurrency * wall``, the seconds a slot spends per trial outside any trial.  NaN for
    no trial."""
    if not n:
        return math.nan, math.nan
    wall = (fit_s - trial_s / concurrency) / n
    return wall, wall * concurrency


# ------------------------------------------------------------------------------- trainable (Ray worker)
@dataclass(frozen=True)
class TrialInputs:
    """What every trial needs from the driver, put once in Ray's object store (``tune.with_parameters``):
    the configuration, the baseline's figures and model bytes, and the inbox its pruned model goes to.
    A worker therefore never reads or writes the sweep folder, which need not exist on its node."""

    sweep_dir: str  # the driver's folder: named in messages, never opened by a worker
    cfg: SweepConfig
    baseline: dict
    baseline_model: bytes
    inbox: object  # the :func:`_model_inbox` actor
    teacher: dict | None = None  # an MBN teacher's state (plain tensors), when the space names one
    splits: object = None  # a Ray ObjectRef of the driver's DataSplits (trial.use_shipped_splits)
    baseline_digest: str = ""  # SHA-256 of baseline_model: the baseline's key in a worker (trial.run_trial's io)


class _ShippedIO:
    """The sweep folder as a trial on any node sees it (see ``trial.run_trial``'s ``io``): the baseline from
    :class:`TrialInputs`, and its pruned model sent to the driver's inbox instead of written to disk."""

    model_rel = staticmethod(SweepFolder.model_rel)

    def __init__(self, inputs: TrialInputs):
        self.inputs = inputs

    def baseline(self) -> dict:
        return self.inputs.baseline

    def teacher_state(self) -> dict | None:
        return self.inputs.teacher

    def load_baseline_model(self):
        from .folder import load_model_bytes

        return load_model_bytes(self.inputs.baseline_model)  # bytes the driver read from its own folder

    def baseline_key(self) -> str:
        digest = self.inputs.baseline_digest or hashlib.sha256(self.inputs.baseline_model).hexdigest()
        return f"sha256:{digest}"

    def save_model(self, model, rel: str) -> str:
        import ray

        from .folder import model_bytes

        ray.get(self.inputs.inbox.put.remote(rel, model_bytes(model)))
        return rel

    def progress_slot(self, name: str) -> "_InboxSlot":
        return _InboxSlot(self.inputs.inbox, name)


class _InboxSlot:
    """A trial configuration's fine-tune state in the driver's sweep folder, reached through the model inbox
    (the :class:`sweep.durable.FileSlot` interface): a trial on a node without the folder keeps it there."""

    def __init__(self, inbox, name: str):
        self.inbox, self.name = inbox, name

    def __str__(self) -> str:
        return f"the saved progress {self.name} (in the sweep folder)"

    def stamp(self) -> int:
        return 0  # read once per trial: the trial itself is the only one to write it while it runs

    def read(self) -> bytes | None:
        import ray

        return ray.get(self.inbox.progress.remote(self.name))

    def write(self, data: bytes) -> None:
        import ray

        ray.get(self.inbox.keep_progress.remote(self.name, data))

    def remove(self) -> None:
        import ray

        ray.get(self.inbox.drop_progress.remote(self.name))


def _trial_seed(base_seed: int, number: int | None, trial_id: str) -> int:
    """Seed of a trial: the sweep seed and the trial's index, so a re-run sweep repeats itself."""
    import zlib

    index = number if number is not None else zlib.crc32(trial_id.encode()) % 100_000
    return base_seed * 100_003 + int(index)


def _node() -> dict:
    """Where this trial runs: the Ray node's id and the machine's host name and IP address."""
    import socket

    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(),
            "host": f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"}


def sweep_trial(config: dict, inputs: TrialInputs) -> None:
    """The Ray Tune trainable: one trial, reported once, with the trajectory its method logged.

    It touches neither MLflow (the driver mirrors the record, see
    :class:`~sweep.results.mlflow_sink.TrialMirror`) nor the sweep folder (see :class:`TrialInputs`)."""
    from ray import tune

    from .space import TRIAL_NUMBER, knobs_from_config

    cfg = inputs.cfg
    if inputs.splits is not None:
        import ray

        use_shipped_splits(cfg, lambda: ray.get(inputs.splits))
    trial_id = tune.get_context().get_trial_id()
    method, knobs = knobs_from_config(config)
    number = config.get(TRIAL_NUMBER)
    history: list[tuple] = []

    def log_metric(key: str, value: float, step: int = 0) -> None:
        history.append((key, float(value), int(step), int(time.time() * 1000)))

    def report_rung(epochs: int, partial: TrialRecord) -> None:
        # the scheduler judges this; if it stops the trial, this row (with the trajectory so far) is its row
        partial = partial.replace(**_node())
        tune.report({**_objective_values(cfg, partial), RUNG: epochs, "partial_json": partial.to_json(),
                     "history_json": json.dumps(history), CONSTRAINTS_KEY: _violations(cfg, partial)})

    spec = TrialSpec(inputs.sweep_dir, trial_id, method, knobs, _trial_seed(cfg.seed, number, trial_id))
    # the state goes once the driver has the row durable (_Recorder), not before: a driver killed in between
    # runs the trial again from it
    rec = run_trial(cfg, spec, log_metric, trial_number=number, io=_ShippedIO(inputs),
                    report_rung=report_rung if cfg.search.scheduler is not None else None,
                    keep_progress=True).replace(**_node())
    tune.report({**_objective_values(cfg, rec), "record_json": rec.to_json(), "history_json": json.dumps(history),
                 CONSTRAINTS_KEY: _violations(cfg, rec)})


def _objective_values(cfg: SweepConfig, rec: TrialRecord) -> dict:
    """What a trial reports of a record: its objectives -- measured for ``ok``, ``stopped_early`` (quality at
    its rung: what the scheduler judges; the searcher is told such a trial as pruned, :func:`_sweep_search`)
    and ``infeasible`` (quality before fine-tuning) rows, NaN for ``failed`` ones (Optuna then counts the
    trial as failed)."""
    told = rec.status in ("ok", "stopped_early", "infeasible")
    return {o: (float(rec.get(o)) if told and rec.get(o) is not None else math.nan) for o in cfg.search.objectives}


def _violations(cfg: SweepConfig, rec: TrialRecord) -> list[float]:
    """search.constraints as Optuna's constraint values (<= 0: within the budget); [] without budgets."""
    limits = cfg.search.constraints
    figures = {k: rec.get(k) for k in ("params", "macs", "latency_ms", cfg.quality)}
    return limits.violations(figures, cfg.quality) if limits else []


def _model_inbox(folder: SweepFolder):
    """An actor on the driver's node that holds each trial's pruned model (bytes) until the driver takes it
    and writes it into the sweep folder, and keeps the trials' fine-tune states in the folder's ``progress/``
    (:class:`sweep.inbox.ModelInbox`); no CPU reserved."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .inbox import ModelInbox
    from .warm import INBOX_ROLE, ROLE_ENV

    here = ray.get_runtime_context().get_node_id()
    # an environment of its own, so that it starts in a new process and leaves Ray's idle workers (torch
    # already imported: _preload_modules) to the trials; that process imports neither torch (sweep.warm
    # skips it) nor anything but sweep.inbox
    return ray.remote(num_cpus=0, max_restarts=0)(ModelInbox).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        runtime_env={"env_vars": {ROLE_ENV: INBOX_ROLE}}).remote(str(folder.progress_dir))


def _received(st, rec: TrialRecord) -> TrialRecord:
    """``rec`` once its model is in the sweep folder (taken from the inbox); a model that never arrived makes
    the trial ``failed`` (a row must not name a model the folder lacks)."""
    if rec.status != "ok" or not rec.model_path or st.inbox is None:
        return rec
    import ray

    try:
        data = ray.get(st.inbox.take.remote(rec.model_path), timeout=MODEL_FETCH_TIMEOUT_S)
    except Exception as e:  # the inbox actor is gone (its node died) or Ray timed out
        data, why = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    else:
        why = "it was not in the driver's inbox"
    if data is None:
        return rec.replace(status="failed", model_path=None,
                           error=f"the trial's pruned model never reached the driver ({why})")
    st.folder.write_model_bytes(rec.model_path, data)
    return rec


# ------------------------------------------------------------------------------- driver side
def _hypervolume(records: list[TrialRecord], objectives, baseline: dict) -> float:
    """The sweep's hypervolume (:func:`sweep.pareto.records_hypervolume`; see README: Pareto front)."""
    from .pareto import records_hypervolume

    return records_hypervolume(records, objectives, baseline)


class _Progress:
    """One readable line per event instead of Ray's tables: done/total, running, failed, ETA, front."""

    def __init__(self, total: int, already_done: int, log, concurrency: int = 1):
        self.total, self.done0, self.log = total, already_done, log
        self.concurrency = max(1, concurrency)
        self.t0 = time.time()
        self.done = already_done
        self.failed = 0
        self.trial_walls: list[float] = []  # wall_s of this run's first finished trials (the ETA's early pace)
        self.closed = False  # no trial starts any more (the epoch budget is spent): only those running are left
        self.running: dict[str, tuple] = {}  # trial id -> (method, trial number), in flight now
        # trials whose final result Tune delivered but that are not durable yet: still in ``running`` (a
        # driver killed now would run them again) but no longer counted as running on the progress line,
        # where Tune may already have started the next trial in their slot
        self.ending: set[str] = set()
        self.front = 0
        self.last_print = 0.0
        self.waiting = False  # no alive node can run a trial (a cluster's): no ETA until one can

    def line(self, extra: str = "") -> None:
        el = time.time() - self.t0
        eta = self.eta_s(el)
        eta_s = "? (waiting for a node)" if self.waiting else _hms(eta) if math.isfinite(eta) else "?"
        msg = (f"[{self.done:>3}/{self.total}] running {self.in_flight()} · failed {self.failed} · "
               f"elapsed {_hms(el)} · ETA {eta_s} · front {self.front}")
        self.log(msg + (f" · {extra}" if extra else ""))
        self.last_print = time.time()

    def eta_s(self, elapsed: float) -> float:
        """Seconds until the last trial ends, NaN before any finished in this run.

        Until every slot has finished two trials, the pace is the slots' (``concurrency`` trials per mean
        trial wall time): the rate so far would count the workers' start-up and, with several slots, the
        first trials that all end together, as if they ran one after another (a 12-trial sweep, 2 at a time,
        would read about twice its length after its first trial).  From then on it is the rate observed."""
        new = self.done - self.done0
        left = self.in_flight() if self.closed else self.total - self.done
        if not new:
            return math.nan
        if new < 2 * self.concurrency and self.trial_walls:
            return left * (sum(self.trial_walls) / len(self.trial_walls)) / self.concurrency
        return elapsed / new * left

    def in_flight(self) -> int:
        """Trials running now: started and without a delivered final result."""
        return len(self.running.keys() - self.ending)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class _CallbackState:
    store: TrialStore
    cfg: SweepConfig
    meta: dict
    progress: _Progress
    sink: object
    parent_id: str
    folder: SweepFolder | None = None
    mirror: object = None  # the trials' MLflow runs, written on the mirror's own thread (None: no tracking)
    inbox: object = None  # the actor trials send their pruned models to (see _model_inbox)
    retried: dict = field(default_factory=dict)  # trial id -> times Tune ran it again after its worker died
    stopped_early: dict = field(default_factory=dict)  # trial id -> why successive halving stopped it
    fit_t0: float | None = None  # when Ray Tune started in this call (the time budget counts from here)
    budget_reason: str | None = None  # set once a budget (time, epochs) ended the sweep: a normal end
    budget_used0: float = 0.0  # seconds of trials that earlier runs of this sweep spent (the budget counts them)
    time_up: bool = False  # the time budget ran out in this run
    epochs_reason: str | None = None  # set once the epoch budget is spent
    epochs: int = 0  # fine-tune epochs of the finished trials, every run of the sweep (search.epoch_budget)
    last_beat: float = 0.0
    beat_due: bool = False  # a trial started or ended since the last heartbeat (written within HEARTBEAT_MIN_S)
    beat_warned: bool = False
    records: dict = field(default_factory=dict)  # trial id -> TrialRecord: the table, kept in memory
    stopped: dict = field(default_factory=dict)  # trial id -> the ``stopped`` records among them (_apply: O(1))
    front: list = field(default_factory=list)  # the records on the front now (maintained incrementally)
    hv: float | None = None  # the hypervolume of ``front`` (None: not computed since the front changed)
    pending: int = 0  # records appended to the journal since the last compaction
    compacted_at: float = 0.0
    recorder: "_Recorder | None" = None  # makes finished trials durable while Tune runs (see _Recorder)
    address: str | None = None  # the Ray cluster's (None: the embedded Ray, whose one node cannot go away)
    stall_checked: float = 0.0  # when :func:`_say_if_stalled` last asked Ray for the alive nodes
    stalled: bool = False  # it said no alive node can run a trial (said again only after trials ran again)


# Why this process was asked to stop (SIGTERM), set by :func:`interrupt`; cleared by each run_sweep.
_STOP: dict[str, str] = {}


def interrupt(reason: str, frame=None) -> None:
    """Stop the running sweep the way Ctrl-C does, recording ``reason`` (call it from a signal handler).

    Inside ``tuner.fit()`` this calls Ray Tune's SIGINT handler: Tune stops, saves its state (the running
    trials stay to be re-run by ``sweep resume``) and returns; elsewhere Python's raises KeyboardInterrupt.
    Either way ``run_sweep`` closes the books with ``reason``."""
    _STOP.setdefault("reason", reason)
    _stop_tune(frame)


def ask_stop(reason: str) -> None:
    """Stop the running sweep with ``reason`` from any thread: set here, delivered at Ray Tune's next step or
    between the phases (:func:`_stop_lost`); from the main thread :func:`interrupt` stops it at once."""
    _STOP.setdefault("reason", reason)


def _stop_tune(frame=None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Ray Tune's returns (it stops Tune); Python's raises KeyboardInterrupt
        _STOP["delivered"] = "tune"
    else:  # SIGINT ignored or default: nothing would stop Tune gracefully
        raise KeyboardInterrupt


def _stop_lost() -> bool:
    """A stop was asked for (:func:`interrupt`) and its KeyboardInterrupt never arrived: a signal handler that
    runs while Ray's compiled code calls back into Python raises into code that ignores the exception
    ("Exception ignored in ..."), and the sweep would go on to its end.  Checked between the phases and at
    each step of Ray Tune, where the stop is asked for again."""
    return "reason" in _STOP and "delivered" not in _STOP


def _stop_if_lost() -> None:
    """Outside Ray Tune: raise the KeyboardInterrupt a lost stop should have raised (see :func:`_stop_lost`)."""
    if _stop_lost():
        _STOP["delivered"] = "again"
        raise KeyboardInterrupt


def _beat(st: _CallbackState, *, soon: bool = False, **fields) -> None:
    """The heartbeat `sweep status` reads: now, and the trials in flight. Never costs the sweep.

    ``soon``: the trials in flight changed; written now unless the last heartbeat is younger than
    :data:`~sweep.folder.HEARTBEAT_MIN_S`, else by the callback's next step after that (a trial may take
    less than the rewrite of ``state.json`` costs)."""
    now = time.time()
    if soon and not fields and now - st.last_beat < HEARTBEAT_MIN_S:
        st.beat_due = True
        return
    st.last_beat, st.beat_due = now, False
    if st.folder is None:
        return
    # the time budget's count survives a killed driver (up to its last heartbeat)
    fields.setdefault(BUDGET_USED, round(st.budget_used0 + (st.last_beat - st.fit_t0 if st.fit_t0 else 0.0), 3))
    try:
        st.folder.write_heartbeat(list(st.progress.running), **fields)
    except Exception as e:
        if not st.beat_warned:
            st.beat_warned = True
            st.progress.log(f"warning: the heartbeat in state.json could not be written: {type(e).__name__}: {e}")


@contextmanager
def _beating(st: _CallbackState):
    """The heartbeat rewritten every :data:`~sweep.folder.HEARTBEAT_EVERY_S` seconds from a thread of its own
    while the block runs (a phase without Ray Tune's steps to beat in: the baseline's training)."""
    done = threading.Event()

    def beat():
        while not done.wait(HEARTBEAT_EVERY_S):
            _beat(st)

    t = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


# seconds between saves of Ray Tune's own experiment state (see _ray_init: nothing reads it back)
TUNE_STATE_EVERY_S = 3600

# The callback object is pickled into Ray's experiment state and unpickled by `Tuner.restore` (as a call
# to `_make_callback`); it must hold no state of its own, or a resumed sweep would report into the
# interrupted process's objects.  It looks the live state up here instead.
_ACTIVE: dict[str, _CallbackState] = {}


def _upsert(st: _CallbackState, new: list[TrialRecord]) -> None:
    """Record ``new`` now, on this thread (the rare records: stopped trials, crashed workers): one durable
    journal part, then the in-memory table and the front (see :func:`_apply`).  Finished trials take the
    :class:`_Recorder`'s way instead."""
    with _store_lock(st):
        st.store.append_many(new)
    stale = _apply(st, new)
    if stale or time.time() - st.compacted_at >= COMPACT_EVERY_S:
        _compact(st)
    if stale and st.mirror is not None:
        st.mirror.superseded(stale)


def _apply(st: _CallbackState, new: list[TrialRecord]) -> set[str]:
    """Records already in the journal, into the in-memory table, with the front updated: O(1) per record.

    A ``stopped`` record of another trial whose configuration a new record ran again (a trial cut short,
    re-run by ``sweep resume``) is dropped and its id returned: the table then needs one compaction, which
    happens at most once per re-run trial."""
    stale = _reruns(st.stopped.values(), new) if st.stopped else set()  # only resumed sweeps have stopped rows
    for r in new:
        st.records[r.trial_id] = r
        st.pending += 1
        if r.status == "stopped":
            st.stopped[r.trial_id] = r
        else:
            st.stopped.pop(r.trial_id, None)
    for tid in stale:
        del st.records[tid]
        st.stopped.pop(tid, None)
    _update_front(st, {r.trial_id for r in new} | stale)
    return stale


class _Recorder:
    """Finished trials made durable off Ray Tune's thread.

    Ray Tune runs every trial's start, result and scheduling on the driver's one thread, so what the
    callback does there delays the next trial.  Making a trial durable is mostly waiting on the disk
    (its model and its journal part, each written, fsynced, renamed and its folder fsynced) and on the
    model inbox; this thread does it, in the order Tune delivered the trials, several at once when they
    queue up (one journal part for them).  Tune's thread then *counts* what is durable (:func:`_collect`:
    table in memory, front, MLflow, progress line) -- a trial counts only once it survives a crash.  A
    trial stays among the running ones until then, so that every way out turns the ones not recorded yet
    into ``stopped`` rows.  An error here (the disk is full) is raised on Tune's thread by the next
    :func:`_collect`: a driver error, as it would be if the callback wrote the files itself."""

    def __init__(self, st: _CallbackState):
        import collections
        import queue

        self.st = st
        self.queue: queue.Queue = queue.Queue()
        self.durable: collections.deque = collections.deque()  # (record, history): durable, not counted yet
        self.lock = threading.Lock()  # the store's single writer: appending here, compacting on Tune's thread
        self.error: BaseException | None = None
        self.error_raised = False
        self.thread = threading.Thread(target=self._loop, name="sweep-recorder", daemon=True)
        self.thread.start()

    def put(self, record: TrialRecord, history: list) -> None:
        self.queue.put((record, history))

    def wait(self) -> None:
        """Until every record put so far is durable (or the thread failed)."""
        self.queue.join()

    def _drop_progress(self, records: list[TrialRecord]) -> None:
        """The saved fine-tune states of trials whose rows are durable now go (a trial leaves its own, and one the
        scheduler stopped never ends by itself).  Never raises: the rows are durable already, and a state left
        behind is removed at the sweep's end."""
        try:
            for name in _progress_names(self.st, records):
                self.st.folder.progress_slot(name).remove()
        except Exception:
            pass

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=MODEL_FETCH_TIMEOUT_S + 30)

    def _loop(self) -> None:
        import queue

        while True:
            batch = [self.queue.get()]
            while batch[-1] is not None:  # what else finished meanwhile shares the journal part
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                items = [b for b in batch if b is not None]
                if items and self.error is None:
                    got = [(_received(self.st, rec), history) for rec, history in items]  # models durable first
                    with self.lock:
                        self.st.store.append_many([rec for rec, _ in got])
                        self.durable.extend(got)
                    promotes = _promotes(self.st.cfg)  # a stopped trial's state is kept: a promotion goes on from it
                    self._drop_progress([rec for rec, _ in got if not (promotes and rec.status == "stopped_early")])
            except BaseException as e:  # raised on Tune's thread by _collect; nothing is written after it
                self.error = e
            finally:
                for _ in batch:
                    self.queue.task_done()
            if batch[-1] is None:
                return


def _store_lock(st: _CallbackState):
    """The store's writer lock while the recorder runs (nothing to hold otherwise)."""
    from contextlib import nullcontext

    return st.recorder.lock if st.recorder is not None else nullcontext()


def _collect(st: _CallbackState, *, wait: bool = False, compacting: bool = False, raise_error: bool = True) -> None:
    """Count the trials the recorder made durable (on Tune's thread, in their order): each goes into the
    table in memory and the front, its MLflow run is closed, it leaves the running ones, and the progress
    line and the parent's metrics say so.  ``wait``: first wait until everything put is durable.  The
    recorder's error, if any, is raised here once (after counting what it did record)."""
    rec = st.recorder
    if rec is None:
        return
    if wait:
        rec.wait()
    stale: set[str] = set()
    while rec.durable:
        record, history = rec.durable.popleft()
        stale |= _apply(st, [record])
        _counted(st, record, history)
    if stale:
        if not compacting:
            _compact(st)
        if st.mirror is not None:
            st.mirror.superseded(stale)
    if rec.error is not None and raise_error and not rec.error_raised:
        rec.error_raised = True
        raise rec.error


def _counted(st: _CallbackState, rec: TrialRecord, history: list) -> None:
    """A durable trial's MLflow run, progress and parent metrics."""
    progress = st.progress
    if st.mirror is not None:
        st.mirror.finished(rec, history)
    progress.running.pop(rec.trial_id, None)
    progress.ending.discard(rec.trial_id)
    _beat(st, soon=True)
    progress.done += 1
    progress.failed += rec.status == "failed"
    if len(progress.trial_walls) < 2 * progress.concurrency and rec.wall_s is not None and math.isfinite(rec.wall_s):
        progress.trial_walls.append(rec.wall_s)
    if st.mirror is not None:
        if st.hv is None:  # the front changed: dominated records add nothing
            st.hv = _hypervolume(st.front, st.cfg.search.objectives, st.meta["baseline"])
        st.mirror.parent_metrics({"hypervolume": st.hv, "front_size": progress.front,
                                  "trials_done": progress.done}, step=progress.done)
    if rec.status == "ok":
        agree = f" agree {rec.agreement:.4f}" if st.cfg.label_free else ""
        acc = "n/a" if rec.accuracy is None else f"{rec.accuracy:.4f}"  # None: no labelled set
        what = (f"{rec.trial_id} {rec.method} acc {acc}{agree} "
                f"lat {rec.latency_ms:.3f} ms params {rec.params:,}")
    elif rec.status == "failed":
        what = f"{rec.trial_id} {rec.method} FAILED: {clipped(rec.error, 100)}"
    else:  # stopped_early, infeasible: the reason says where and why (once: an infeasible row's starts so)
        why = (rec.error or "").removeprefix(f"{rec.status}: ")
        what = f"{rec.trial_id} {rec.method} {rec.status}: {clipped(why, 140)}"
    progress.line(what)


def _last_in_flight(progress: _Progress) -> bool:
    """Whether no trial is computing any more and none is left to start: every trial of the run has ended,
    though the last may not be durable yet (its result delivered, its row being written)."""
    return progress.in_flight() == 0 and (progress.closed or progress.done + len(progress.ending) >= progress.total)


def clipped(text: str, n: int) -> str:
    """The first line of ``text`` in at most about ``n`` characters, for a progress line: cut at the last word
    boundary before ``n``, with an ellipsis (the table keeps the whole text)."""
    line = text.splitlines()[0] if text else ""
    if len(line) <= n:
        return line
    cut = line.rfind(" ", 0, n)
    return line[:cut if cut > n // 2 else n].rstrip(" ,;:(") + " …"


def _compact(st: _CallbackState) -> None:
    """Fold the journal into ``trials.parquet`` (front flags included), so that a plain
    ``pandas.read_parquet`` of it lags the sweep by at most :data:`COMPACT_EVERY_S`; O(table), so it runs
    on a clock, not per trial.  It holds the store's lock and first counts what the recorder appended:
    the parts it deletes are all in the table it writes."""
    with _store_lock(st):
        _collect(st, compacting=True, raise_error=False)
        _write_table(st)


def _write_table(st: _CallbackState) -> None:
    front = {r.trial_id for r in st.front}
    run_ids = st.mirror.run_ids if st.mirror is not None else {}
    for tid, r in st.records.items():  # front flags and the MLflow runs opened since the last compaction
        change = {} if r.on_front is (tid in front) else {"on_front": tid in front}
        if r.mlflow_run_id is None and tid in run_ids:
            change["mlflow_run_id"] = run_ids[tid]
        if change:  # records are kept as written, so only the few that changed are copied
            st.records[tid] = r.replace(**change)
    st.store.write(st.records.values(), st.meta)
    st.pending, st.compacted_at = 0, time.time()


def _config_key(r: TrialRecord) -> tuple:
    return _knobs_key(r.method, r.knobs)


def _knobs_key(method: str, knobs: dict) -> tuple:
    return (method, tuple(sorted((k, repr(v)) for k, v in knobs.items())))


def _reruns(records, new: list[TrialRecord]) -> set[str]:
    """Ids of ``stopped`` records (not among ``new``) that a record of ``new`` ran again, by configuration --
    finished, or cut short again (a re-run stopped by a later interruption): one ``stopped`` row per
    configuration, so a configuration is enqueued to run again once."""
    done = {_config_key(r) for r in new if r.knobs}
    ids = {r.trial_id for r in new}
    return {r.trial_id for r in records if r.status == "stopped" and r.trial_id not in ids and r.knobs
            and _config_key(r) in done}


def _stopped_twice(records) -> set[str]:
    """Ids of ``stopped`` records whose configuration a later ``stopped`` record holds too (a table written
    before re-runs replaced stopped rows of their configuration): all but the latest of each configuration."""
    def when(r: TrialRecord) -> float:
        return r.ended_at.timestamp() if r.ended_at is not None else 0.0

    latest: dict[tuple, TrialRecord] = {}
    older: set[str] = set()
    for r in records:
        if r.status != "stopped" or not r.knobs:
            continue
        key, prev = _config_key(r), latest.get(_config_key(r))
        if prev is None or when(r) >= when(prev):
            latest[key] = r
            if prev is not None:
                older.add(prev.trial_id)
        else:
            older.add(r.trial_id)
    return older


def _update_front(st: _CallbackState, changed: set[str]) -> None:
    """The front after records ``changed`` (new, replaced or dropped): O(front) unless a member changed."""
    from .pareto import front_flags

    objectives = st.cfg.search.objectives
    if any(r.trial_id in changed for r in st.front):  # a member replaced or gone: dominated ones may return
        pool = list(st.records.values())
    else:
        pool = st.front + [st.records[t] for t in changed if t in st.records]
    before = [r.trial_id for r in st.front]
    st.front = [r for r, on in zip(pool, front_flags(pool, objectives)) if on]
    if [r.trial_id for r in st.front] != before or changed & set(before):
        st.hv = None
    st.progress.front = len(st.front)


def _error_line(trial, limit: int = 200) -> str:
    """What killed a trial's worker, as Ray Tune has it, on one line: the trial's error text (its storage copy,
    else the local file Tune has just written it to, which the storage may not have yet), without Tune's
    ``Failure # n (occurred at ...)`` header."""
    try:
        text = trial.get_error()
    except Exception as e:  # the error itself could not be read back from Ray
        return f"its error could not be read: {type(e).__name__}"
    if not text and getattr(trial, "error_file", None):
        try:
            text = Path(trial.error_file).read_text()
        except OSError:
            text = None
    if not text:
        return "its process or node went away; Ray gave no error"
    last = str(text)
    if "Failure # " in last:  # the latest failure only, without its header line "n (occurred at ...)"
        last = last.rsplit("Failure # ", 1)[1].partition("\n")[2]
    return " ".join(line.strip() for line in last.splitlines() if line.strip())[:limit]


def _live_state() -> _CallbackState:
    # resolved through the module at call time: a by-value copy of `_ACTIVE` would be stale
    import sweep.driver as driver

    return driver._ACTIVE["sweep"]


def _make_callback():
    from ray.tune import Callback

    from .space import TRIAL_NUMBER, knobs_from_config

    class SweepCallback(Callback):
        def __reduce__(self):
            # Ray Tune pickles its callbacks into the experiment state; a class defined here would be
            # pickled by value (its code frozen at the first run). Rebuilt by name, `sweep resume` runs
            # the callback of the code installed now.
            return (_make_callback, ())

        def on_trial_start(self, iteration, trials, trial, **info):
            st = _live_state()
            method, knobs = knobs_from_config(trial.config)
            number = trial.config.get(TRIAL_NUMBER)
            st.progress.running[trial.trial_id] = (method, number, knobs)
            if st.mirror is not None:
                st.mirror.started(trial.trial_id, f"{method}-{trial.trial_id}",
                                  {"method": method, "seed": _trial_seed(st.cfg.seed, number, trial.trial_id),
                                   "trial_id": trial.trial_id, **knobs})
            _beat(st, soon=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            st = _live_state()
            payload = _taken_payload(result)
            if payload["record_json"]:
                rec = TrialRecord.from_json(payload["record_json"])
            elif result.get("done") and payload["partial_json"]:
                # a rung report; the scheduler stopped the trial when Tune marks it done: its rung row is final
                why = st.stopped_early.pop(trial.trial_id, "stopped by successive halving")
                rec = TrialRecord.from_json(payload["partial_json"]).replace(error=why, ended_at=time.time())
            else:
                return
            # durable on the recorder's thread; counted (table, MLflow, progress) by _collect once it is; its
            # epochs at once, before Tune asks the searcher for the next trial (search.epoch_budget)
            st.epochs += epochs_spent([rec])
            st.progress.ending.add(trial.trial_id)
            st.recorder.put(rec.replace(retried=st.retried.get(trial.trial_id, 0)),
                            json.loads(payload["history_json"] or "[]"))
            # the run's last trial is counted at once (its line printed, its row in the table), before Ray Tune's
            # end-of-run work (the final save of its experiment state, O(trials)) rather than after it
            _collect(st, wait=_last_in_flight(st.progress))

        def on_trial_recover(self, iteration, trials, trial, **info):
            # its worker died (node lost, killed for memory): Tune runs it again, from its last saved fine-tune
            # epoch if it saved one (trial.trial_progress), else from the start
            st = _live_state()
            n = st.retried[trial.trial_id] = st.retried.get(trial.trial_id, 0) + 1
            st.progress.running.pop(trial.trial_id, None)
            st.progress.line(f"{trial.trial_id} lost its worker ({clipped(_error_line(trial), 120)}); running it again "
                             f"({n} of search.retries={st.cfg.search.retries})")

        def on_trial_error(self, iteration, trials, trial, **info):
            # the trainable catches trial errors itself; this is a crashed worker (e.g. killed for memory)
            st = _live_state()
            _collect(st, wait=True)  # a result of this trial that Tune delivered is recorded first
            m, k = knobs_from_config(trial.config)
            method, number, knobs = st.progress.running.pop(trial.trial_id, (m, trial.config.get(TRIAL_NUMBER), k))
            st.progress.ending.discard(trial.trial_id)
            _beat(st, soon=True)
            old = st.records.get(trial.trial_id)
            if old is not None and old.status != "stopped":
                return
            tries = st.retried.get(trial.trial_id, 0)
            err = f"worker crashed{f' {tries + 1} times' if tries else ''}: {_error_line(trial, 2000)}"
            rec = TrialRecord.unfinished(st.cfg.name, trial.trial_id, "failed", err, method=method,
                                         ended_at=time.time()).replace(trial_number=number, knobs=knobs)
            _upsert(st, [rec])
            if st.mirror is not None:
                st.mirror.finished(rec)
            st.progress.done += 1
            st.progress.failed += 1
            st.progress.line(f"{trial.trial_id} FAILED: {clipped(err, 100)}")

        def on_step_end(self, iteration, trials, **info):
            st = _live_state()
            if _stop_lost():  # a SIGTERM whose KeyboardInterrupt was swallowed before Tune ran: stop Tune now
                _stop_tune()
            _collect(st)
            now = time.time()
            budget = st.cfg.search.time_budget_s
            if (budget is not None and not st.time_up and st.fit_t0 is not None
                    and st.budget_used0 + now - st.fit_t0 >= budget):
                st.time_up = True
                st.budget_reason = st.budget_reason or budget_reason(budget)
                st.progress.log(f"{budget_reason(budget)}: stopping the {len(st.progress.running)} running trial(s)")
                _stop_tune()
            if now - st.last_beat >= (HEARTBEAT_MIN_S if st.beat_due else HEARTBEAT_EVERY_S):
                _beat(st)
            if st.pending and now - st.compacted_at >= COMPACT_EVERY_S:
                _compact(st)
            if st.address is not None and now - st.stall_checked >= STALL_CHECK_S:
                st.stall_checked = now
                _say_if_stalled(st)
            if now - st.progress.last_print > 30:
                st.progress.line()

    return SweepCallback()


_PAYLOAD = ("record_json", "partial_json", "history_json")


def _taken_payload(result: dict) -> dict:
    """A trial result's record, rung row and trajectory (JSON text), taken out of ``result``.

    Ray Tune keeps each trial's last result for the whole sweep, in the driver's memory and in every
    experiment-state snapshot it writes, and lets callbacks change the result in place: once read, the texts
    (a few KB a trial) go.  ``record_json`` stays as an empty marker: the searcher and the scheduler tell a
    trial's final report from a rung report by it (:func:`_stopped_at_rung`)."""
    payload = {key: result.pop(key, None) for key in _PAYLOAD}
    if payload["record_json"] is not None:
        result["record_json"] = ""
    return payload


def _embedded_auth() -> str | None:
    """Token authentication for the embedded Ray, unless the user chose a mode (``RAY_AUTH_MODE``).

    Ray binds its servers to every network address of this machine, so an embedded Ray without
    authentication would take jobs from anyone who reaches the machine.  A random token, made once per
    process and kept in this process's environment (the Ray processes it starts inherit it), lets in only
    them.  Ray reads its auth mode when it is first imported; a Ray imported before (a notebook, a script that
    imports ray first) is made to read it again (:func:`_ray_reads_auth_again`).  Where that cannot be done the
    embedded Ray runs without a token and a note says so; a Ray the caller already started is left as it is."""
    import secrets
    import sys

    if "RAY_AUTH_MODE" in os.environ:
        return None
    imported = "ray" in sys.modules
    if imported and sys.modules["ray"].is_initialized():
        return None  # the caller's own Ray, set up as the caller chose: the sweep starts none
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    if imported and not _ray_reads_auth_again():
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.pop("RAY_AUTH_TOKEN")
        return ("note: Ray was imported before the sweep started Ray and could not be made to read its auth mode "
                "again, so its embedded Ray runs without token authentication; set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN before importing ray to have it")
    return None


def _ray_reads_auth_again() -> bool:
    """Have an imported (not started) Ray read ``RAY_AUTH_MODE`` and its token from the environment again, as
    Ray's own test utilities do (``ray._private.authentication_test_utils.reset_auth_token_state``): its
    config first, then the token cache.  False where this Ray has no such calls."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # another Ray: the caller falls back to no token, and says so
        return False
    return True


def _ray_init(address: str | None, sweep_dir: Path, cpus: int | None, log=print,
              cfg: SweepConfig | None = None) -> bool:
    """Start (or connect to) Ray; True when this call did, False when Ray was already up.

    The embedded Ray's idle workers import what a trial needs as they start (see :func:`_preload_modules`).
    ``ray.init`` installs its own SIGTERM handler (exit at once, with code 15 and no word); a SIGTERM or SIGINT
    while Ray starts goes to the caller's handler (the CLI's: stop the sweep like Ctrl-C) once Ray is up
    (:func:`_stops_held_while_ray_starts`), and the caller's SIGTERM handler is put back after."""
    import logging

    if address is None:
        note = _embedded_auth()  # before Ray is imported: it reads its auth mode once, then
        if note:
            log(note)
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # TUNE_MAX_PENDING_TRIALS_PG stays Ray's "auto": the concurrency limit, so that the first trials of
    # every slot start together (a limit of 1 starts them one placement group after another)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # a trial whose worker died is one line of ours (on_trial_recover / on_trial_error), not Tune's traceback
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # Ray Tune's experiment state is never read back (a resumed sweep starts a fresh tuner from the table: see
    # _tuner), and each save rewrites every trial's state, by default every 10 s: O(trials) each time, about 3 ms
    # of the driver's CPU per trial at 900 trials. Saved once an hour instead (and at the end, as Tune always does).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(TUNE_STATE_EVERY_S))
    if ray.is_initialized():
        return False
    main = threading.current_thread() is threading.main_thread()
    caller_sigterm = signal.getsignal(signal.SIGTERM) if main else None
    caller_sigint = signal.getsignal(signal.SIGINT) if main else None
    try:
        if address:
            with _stops_held_while_ray_starts(caller_sigterm, caller_sigint):
                try:
                    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
                except ConnectionError as e:  # e.g. something answers at the address, but not a Ray head
                    from .errors import ConfigError

                    raise ConfigError(f"--address must be a running Ray cluster's head, but connecting failed: "
                                      f"{str(e).strip().splitlines()[0][:300]} (--address={address}); check "
                                      f"the address (`ray status --address {address}` on the head)") from None
        else:
            # embedded local Ray: session files in a short private temp folder (unix socket paths are
            # limited to ~107 characters, too short for most sweep folders); authentication: _embedded_auth
            tmp = tempfile.mkdtemp(prefix="sweep-ray-")
            _EMBEDDED_TMP.append(tmp)  # removed with its logs at shutdown (_ray_shutdown)
            cpus = cpus or os.cpu_count() or 1
            preload = _preload_modules(cfg, cpus) if cfg is not None else None
            ready = _warm_folder(tmp, cpus) if preload and PRELOAD_ENV not in os.environ else None
            # read by the raylet as it starts (and passed on to its workers); a value the user set wins. The
            # warm workers are kept until the trials take them (KEEP_IDLE_ENV)
            with (_env(PRELOAD_ENV, preload), _env(READY_ENV, ready), _env(KEEP_IDLE_ENV, "0" if ready else None),
                  _stops_held_while_ray_starts(caller_sigterm, caller_sigint)):
                ray.init(num_cpus=cpus, include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=False, _temp_dir=tmp, configure_logging=True)
    finally:
        if main and caller_sigterm not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, caller_sigterm)
    return True


@contextmanager
def _stops_held_while_ray_starts(sigterm, sigint):
    """While Ray starts, a SIGTERM or SIGINT the caller handles (``sigterm`` / ``sigint``: its handlers, e.g.
    the CLI's stop-like-Ctrl-C and Python's KeyboardInterrupt) is held, and handed to the caller's handler once
    ``ray.init`` has returned.

    ``ray.init`` replaces the SIGTERM handler early on with one that exits at once (``sys.exit(15)``: exit code
    15, no message, the books left to the next run), and once its core worker is up a C++ handler catches
    SIGTERM too; an exception raised half-way through connecting left the process to abort at exit (exit code
    -6).  So Ray's ``set_sigterm_handler`` is made a no-op for that time (where the caller handles SIGTERM and
    Ray has that function), and the signals are only noted.  Signals the caller does not handle are left as
    they are."""
    try:
        from ray._private import utils as ray_utils
    except ImportError:
        ray_utils = None
    saved = getattr(ray_utils, "set_sigterm_handler", None)
    callers = {s: h for s, h in ((signal.SIGTERM, sigterm), (signal.SIGINT, sigint)) if callable(h)}
    if not callers:
        yield
        return
    held: list[int] = []
    for s in callers:
        signal.signal(s, lambda signum, frame: held.append(signum))
    patch = saved is not None and signal.SIGTERM in callers
    if patch:
        ray_utils.set_sigterm_handler = lambda h: None
    try:
        yield
    finally:
        if patch:
            ray_utils.set_sigterm_handler = saved
        for s, h in callers.items():
            signal.signal(s, h)
    if held:  # Ray is up: now the caller's way out (which shuts it down)
        callers[held[0]](held[0], None)


def _warm_folder(tmp: str, workers: int) -> str:
    """The folder the embedded Ray's ``workers`` idle workers mark themselves ready in (see
    :func:`_await_warm_workers`), inside its session folder."""
    folder = os.path.join(tmp, "warm")
    os.makedirs(folder, exist_ok=True)
    _WARM.update(dir=folder, workers=workers)
    return folder


@contextmanager
def _env(name: str, value: str | None):
    """``name=value`` in this process's environment while the block runs (unless already set, or
    ``value`` is None), then as it was."""
    if value is None or name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


# how long the driver waits, before Tune starts, for the embedded Ray's idle workers to finish importing
WARM_WAIT_S = 120.0
# ... and how long for the first of them to begin (a worker that cannot import sweep.warm never does)
WARM_START_S = 30.0


def _preload_modules(cfg: SweepConfig, cpus: int) -> str | None:
    """What the embedded Ray's idle workers import as they start (:mod:`sweep.warm`), or None.

    Ray starts one idle Python worker per CPU with the driver, while the driver trains or loads the
    baseline; a trial's actor starts in one of them (see :func:`_trial_actors_on_idle_workers`), so with
    torch already imported there its first trial starts at once instead of after a fresh interpreter's
    imports.  Only when trials will use every one of those workers: each holds its imports (a few hundred
    MB) whether a trial comes or not.  Where CPUs are idle while the baseline trains, the imports are
    free; on busy cores they finish once the baseline is done, and the driver waits for them
    (:func:`_await_warm_workers`)."""
    trial_workers = min(cfg.search.concurrency, max(1, int(cpus // cfg.search.cpus_per_trial)))
    return "sweep.warm" if trial_workers >= cpus else None


# the embedded Ray's warm-up, while it runs: the folder its workers mark themselves ready in, and how many
_WARM: dict = {}


def _await_warm_workers(log, timeout: float = WARM_WAIT_S, start_timeout: float = WARM_START_S) -> float:
    """Wait until the embedded Ray's idle workers have imported what a trial needs (:mod:`sweep.warm`);
    returns the seconds waited.  Ray's worker pool passes over a worker that is still importing and starts a
    fresh process for the trial instead: it imports everything again on the same cores, and the warm worker
    is killed as surplus once done (quickstart on 2 busy cores: each slot's first trial started 6.8 s after
    Tune, in a fresh process).  After ``timeout`` the sweep goes on (Ray then starts fresh workers), and after
    ``start_timeout`` if no worker has even begun the warm-up (its workers cannot import ``sweep``)."""
    folder, want = _WARM.get("dir"), _WARM.get("workers", 0)
    if not folder or not want:
        return 0.0
    t0 = time.time()
    ready = begun = 0
    while time.time() - t0 < timeout and not _STOP:
        try:
            begun, ready = marks(folder)
        except OSError:
            break
        if ready >= want or (not begun and time.time() - t0 >= start_timeout):
            break
        time.sleep(0.05)
    waited = time.time() - t0
    if not begun:
        log(f"note: none of Ray's {want} idle worker process(es) began importing what a trial needs within "
            f"{waited:.0f} s (can they import `sweep`? it should be installed, e.g. `pip install -e .`); trials "
            f"start in fresh processes")
    elif waited >= 1.0 or ready < want:
        log(f"Ray's {want} worker process(es) imported what a trial needs: {min(ready, want)} ready after "
            f"waiting {waited:.1f} s" + ("" if ready >= want else " (the others start trials as fresh processes)"))
    _WARM.clear()  # once per Ray: a resumed or later Tune run in this process does not wait again
    return waited


@contextmanager
def _trial_actors_on_idle_workers():
    """Let Ray Tune start trial actors in Ray's idle workers instead of fresh processes.

    Ray Tune gives its actors a runtime environment of their own, ``env_vars: {PL_DISABLE_FORK: 1}`` (a
    PyTorch Lightning setting, ``ray.tune.execution.class_cache.DEFAULT_ENV_VARS``), and Ray starts a new
    worker process for any runtime environment that differs from the job's: each trial actor then pays a
    fresh interpreter, Ray's and torch's imports (measured: Tune start to first trial 4.3 s, 1.6 s without
    it).  Trials never use Lightning, so that one variable is left out while Tune runs; the variables Tune
    copies from the driver's environment (cloud credentials, Ray Train settings) still travel."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray layout: its actors keep their own processes
        yield
        return
    saved = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if not isinstance(saved, dict):
        yield
        return
    class_cache.DEFAULT_ENV_VARS = {k: v for k, v in saved.items() if k != "PL_DISABLE_FORK"}
    try:
        yield
    finally:
        class_cache.DEFAULT_ENV_VARS = saved


# what Ray Tune's controller must have for :func:`_cached_actors_for_new_trials` (otherwise: left as it is)
_CONTROLLER_FIELDS = ("_trial_to_actor", "_started_actors", "_resetting_trials", "_search_alg", "_pending_trials")
# while a reproducible sweep's searcher holds a draw back (``search.reproducible``, :func:`_sweep_search`): how many
# finished trial actors Tune keeps for the draws to come (its lag); 0 while it holds nothing back
_HELD_BACK = {"lag": 0}


@contextmanager
def _cached_actors_for_new_trials():
    """Keep every slot busy when a trial is shorter than a worker's start: a trial whose own actor is still
    starting does not take a finished trial's actor while another trial can.

    With ``reuse_actors``, Ray Tune's controller gives a finished trial's actor to the next trial to run,
    and where that trial already has an actor of its own on the way (a fresh process importing torch), it
    drops that one (``TuneController._maybe_reuse_cached_actor``).  When trials are shorter than a worker's
    start, the second slot's actor is dropped every time, a new one requested for the next trial is dropped
    in turn, and the whole sweep runs one trial at a time without a word (quickstart: 12 trials in one slot
    with 2 asked; raw Ray Tune, one worker ready at once, the other 3 s to start, 24 trials of 0.5 s: one
    slot, 12.5 s; with this, both slots, 7.8 s).  So while more trials can come (the search is not over, or
    one is pending without an actor), such a trial waits for its own actor and the finished one goes to a
    trial that has none; once the search is over it takes it as before (a trial whose actor cannot start
    never waits for ever).  Only while the sweep's Tune runs; on a Ray whose controller lacks what this
    reads, nothing changes."""
    try:
        from ray.tune.execution.tune_controller import TuneController
    except ImportError:
        yield
        return
    original = getattr(TuneController, "_maybe_reuse_cached_actor", None)
    if original is None:
        yield
        return

    def maybe_reuse_cached_actor(self, trial):
        if all(hasattr(self, f) for f in _CONTROLLER_FIELDS) and _waits_for_own_actor(self, trial):
            return False
        reused = original(self, trial)
        if reused:
            _kept_taken(self, trial)
        return reused

    original_cache = getattr(TuneController, "_maybe_cache_trial_actor", None)

    def maybe_cache_trial_actor(self, trial):
        return original_cache(self, trial) or _kept_for_held_draws(self, trial, original_cache)

    TuneController._maybe_reuse_cached_actor = maybe_reuse_cached_actor
    if original_cache is not None:
        TuneController._maybe_cache_trial_actor = maybe_cache_trial_actor
    _HELD_BACK["lag"] = 0
    try:
        yield
    finally:
        TuneController._maybe_reuse_cached_actor = original
        if original_cache is not None:
            TuneController._maybe_cache_trial_actor = original_cache
        _HELD_BACK["lag"] = 0


def _kept_for_held_draws(controller, trial, cache) -> bool:
    """Whether a finished trial's actor that Tune would drop is kept for the draws a reproducible sweep holds back:
    Tune keeps finished actors only for trials already waiting to start (and one more), so when the searcher
    holds its next draws until an older trial finishes, both slots free up with no trial waiting and the second
    actor would go; the next draw would then wait for a fresh worker (measured on the quickstart: 2-7 s per pair
    of trials).  At most the lag's number of actors are kept; each counts as a waiting trial in Tune's actor
    cache until a trial takes one (:func:`_kept_taken`)."""
    lag = _HELD_BACK["lag"]
    actors = getattr(controller, "_actor_cache", None)
    if (not lag or actors is None or not all(hasattr(controller, f) for f in _CONTROLLER_FIELDS)
            or controller._search_alg.is_finished() or actors.num_cached_objects >= lag):
        return False
    key = trial.placement_group_factory
    # room for every actor cached now and this one (Tune counts a cached actor beyond its waiting trials as extra)
    by = max(1, actors.num_cached_objects + 1 - actors.total_max_objects)
    actors.increase_max(key, by)
    if cache(controller, trial):
        kept = controller.__dict__.setdefault("_sweep_kept", {})
        kept[key] = kept.get(key, 0) + by
        return True
    actors.decrease_max(key, by)
    return False


def _kept_taken(controller, trial) -> None:
    """A trial took a cached actor: one actor kept for held draws (:func:`_kept_for_held_draws`) no longer
    counts as a waiting trial in Tune's actor cache."""
    kept = getattr(controller, "__dict__", {}).get("_sweep_kept")
    if not kept:
        return
    key = trial.placement_group_factory
    if kept.get(key, 0) > 0:
        kept[key] -= 1
        controller._actor_cache.decrease_max(key)


def _waits_for_own_actor(controller, trial) -> bool:
    """Whether ``trial``, whose actor is still starting, should leave a finished trial's actor to another
    trial (see :func:`_cached_actors_for_new_trials`)."""
    own = controller._trial_to_actor.get(trial)
    if own is None or own in controller._started_actors or trial in controller._resetting_trials:
        return False
    if not controller._search_alg.is_finished():
        return True  # the next trial takes it
    request = trial.placement_group_factory
    return any(t is not trial and t not in controller._trial_to_actor and t.placement_group_factory == request
               for t in controller._pending_trials)


def _check_schedulable(cfg: SweepConfig, address: str | None) -> None:
    """A trial must fit on one node, or Ray Tune would wait for it for ever: checked against this machine
    before anything runs (the embedded Ray gets all its CPUs and GPUs), against the cluster once connected."""
    from .errors import ConfigError

    if address is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        nodes = [{"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}]
    else:
        nodes = _alive_node_resources()
    short = _shortfall(cfg, nodes)
    if short is not None:
        key, what, asked, most = short
        raise ConfigError(f"search.{what} must fit on one Ray node (the largest has {most:g} {key}s, "
                          f"{len(nodes)} node(s) in all), but got {what}={asked:g} "
                          f"({cfg.source}: search.{what}); lower it there and run again")


def _alive_node_resources() -> list[dict]:
    """The resources of each node of the connected Ray cluster that is alive now."""
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _shortfall(cfg: SweepConfig, nodes: list[dict]) -> tuple[str, str, float, float] | None:
    """What a trial asks that no node of ``nodes`` (their resources) has: (resource, setting, asked, the most one
    node has); None when a trial fits on one of them."""
    for key, what, asked in (("CPU", "cpus_per_trial", cfg.search.cpus_per_trial),
                             ("GPU", "gpus_per_trial", cfg.search.gpus_per_trial)):
        most = max((float(n.get(key, 0)) for n in nodes), default=0.0)
        if asked > most:
            return key, what, asked, most
    return None


def _say_if_stalled(st: _CallbackState) -> None:
    """On a cluster, while no trial runs and trials remain: if no alive node can run one (the nodes that could
    have gone away), say so once -- Ray Tune waits for resources silently, for ever -- and what to do.  Said
    again only after trials have run in between."""
    if st.progress.running or st.progress.closed or st.progress.done >= st.progress.total:
        if st.stalled:  # trials run again
            st.stalled = st.progress.waiting = False
            _beat(st, phase="trials")
        return
    try:
        nodes = _alive_node_resources()
    except Exception:  # the head itself is unreachable: Ray says so its own way
        return
    short = _shortfall(st.cfg, nodes)
    if short is None or st.stalled:
        return
    st.stalled = st.progress.waiting = True
    key, what, asked, most = short
    _beat(st, phase=f"waiting for a Ray node with {asked:g} {key}(s) (none alive can run a trial)")  # sweep status
    st.progress.log(f"waiting: no alive Ray node can run a trial now (a trial needs {asked:g} {key}(s), "
                    f"search.{what}; the {len(nodes)} alive node(s) have at most {most:g} each); the sweep goes on "
                    f"when a node that can joins the cluster (`ray start --address ...`), or stop it with "
                    f"Ctrl-C (`sweep resume` continues)")


# how long the driver tries to reach a Ray cluster's head (--address) before saying it cannot
RAY_CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """A Ray address nothing answers at is one line before anything is written: ``ray.init`` would retry for
    ever, printing Ray's "Failed to connect to GCS" every 30 s (with Ctrl-C held while Ray starts, see
    :func:`_stops_held_while_ray_starts`).  ``auto`` (the cluster this machine runs) is left to Ray."""
    from urllib.parse import urlsplit

    from .errors import ConfigError
    from .localcluster import unanswered

    if address in ("auto", "local"):
        return
    try:
        parts = urlsplit(address if "://" in address else f"ray://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise ConfigError(f"--address must be a Ray head's host:port (e.g. 127.0.0.1:6379), ray://host:port or "
                          f"auto, but got --address={address!r} (--address)")
    why = unanswered(host, port, RAY_CONNECT_TIMEOUT_S)
    if why is not None:
        raise ConfigError(f"--address must be a running Ray cluster's head, but nothing answers at {host}:{port} "
                          f"({why}) (--address={address}); start the head (`ray start --head --port {port}`) or "
                          f"correct the address") from None


def _cluster_line(address: str) -> str:
    """The cluster a sweep runs on, in one line: its nodes, CPUs and GPUs, and the node of this driver."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = {k: sum(float(n.get("Resources", {}).get(k, 0)) for n in nodes) for k in ("CPU", "GPU")}
    here = ray.get_runtime_context().get_node_id()
    return (f"Ray cluster {address}: {len(nodes)} node(s) alive, {total['CPU']:g} CPU(s), {total['GPU']:g} GPU(s); "
            f"the driver is on node {here}")


# session folders of the embedded Ray this process started (sockets, logs): removed at shutdown, so that
# sweep after sweep does not fill the temp folder; a killed driver leaves its folder, as Ray's own does
_EMBEDDED_TMP: list[str] = []


def _ray_shutdown(started: bool, log) -> None:
    """Stop the trials' workers for good (a stopped trial must not finish its MLflow run after we closed
    it, nor share the machine with the re-measurement); only a Ray this sweep started. An embedded Ray's
    session folder goes with it."""
    if not started:
        return
    try:
        import ray

        with _stop_handlers_rearmed():
            ray.shutdown()
    except Exception as e:
        log(f"warning: Ray did not shut down cleanly: {type(e).__name__}: {e}")
    _WARM.clear()
    while _EMBEDDED_TMP:
        shutil.rmtree(_EMBEDDED_TMP.pop(), ignore_errors=True)


@contextmanager
def _stop_handlers_rearmed():
    """The process's SIGTERM and SIGINT handlers in force again after the block (``ray.shutdown``).

    Ray's core worker handles SIGTERM in C++; shutting it down sets the signal's disposition back to the
    default underneath Python, whose handler (the CLI's stop-like-Ctrl-C) Python still reports as installed:
    a SIGTERM during the re-measurement or the report killed the driver outright (exit -15, no message, the
    lock left stale, the report never written).  Installing Python's handlers again re-registers them."""
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        yield
    finally:
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)


@contextmanager
def _sigint_kept():
    """Ray Tune installs its SIGINT handler for ``fit()`` and leaves it there: put the previous one back."""
    main = threading.current_thread() is threading.main_thread()
    prev = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if prev is not None:
            signal.signal(signal.SIGINT, prev)


def _tuner(cfg: SweepConfig, folder: SweepFolder, callback, records: list[TrialRecord], inbox=None, scheduler=None,
           new: int | None = None):
    """A fresh tuner for the trials still missing (at most ``new`` new candidates beside those run again, where
    given: :func:`_promote_every`); the searcher knows every finished trial.

    Resuming never restores Ray Tune's own experiment state (saved only now and then, so stale after a
    hard kill): the table is the truth.  Finished trials (ok or failed) are told to the sampler, trials
    that were cut short (``stopped``) are enqueued to run again first, and only ``trials − finished``
    trials are asked for.  Trial numbers, and so seeds, continue after the told ones, and the sampler is
    seeded from the sweep seed and the number told: no configuration or seed repeats.  ``scheduler``: Ray
    Tune's scheduler (default :func:`_scheduler` of the finished trials; promotion rounds pass the sweep's)."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from .mbn.teacher import teacher_state
    from .space import define_by_run, first_points, make_sampler, study_with_history

    # the data goes once into Ray's object store, fetched once per worker process: no worker re-reads the
    # dataset (or needs its files on its node)
    dense = folder.read_model_bytes(BASELINE_MODEL)
    inputs = TrialInputs(str(folder.path), cfg, folder.baseline(), dense, inbox, teacher_state(folder),
                         ray.put(load_splits(cfg)), hashlib.sha256(dense).hexdigest())
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, inputs=inputs),
        {"cpu": cfg.search.cpus_per_trial, **({"gpu": cfg.search.gpus_per_trial} if cfg.search.gpus_per_trial else {})})
    # no `time_budget_s` for Ray: its stopper would end the cut trials and the searcher for good; the
    # callback stops Tune the way Ctrl-C does instead (on_step_end)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=str(folder.ray_dir), verbose=0, callbacks=[callback],
                                failure_config=tune.FailureConfig(max_failures=cfg.search.retries))
    trials = sorted((r for r in records if not r.is_baseline), key=lambda r: (r.trial_number is None,
                                                                               r.trial_number or 0))
    finished = [r for r in trials if r.status in FINISHED]
    told = [_told(cfg, r) for r in finished if r.method and r.knobs]
    again = _run_again(cfg, folder, trials, finished)
    rerun = [(m, k) for _, m, k in again]
    measured = {r.method for r in finished} | {m for m, _ in rerun}
    first = [p for p in first_points(cfg) if p.get("method") not in measured]
    todo = cfg.search.trials - _finished(records)
    if new is not None:
        todo = min(todo, len(again) + new)
    used = [r.trial_number for r in finished if r.trial_number is not None]
    kw: dict = dict(space=define_by_run(cfg, len(told), used, [n for n, _, _ in again]),
                    metric=list(cfg.search.objectives), mode=[DIRECTIONS[o] for o in cfg.search.objectives])
    constraints = len(budget_names(cfg.search.constraints))
    eta = cfg.search.scheduler.reduction_factor if cfg.search.scheduler is not None else 1
    # the full fine-tunes an epoch budget pays for: with it, the sweep's budget in the sampler's start-up
    cap = cfg.search.epoch_budget // max(1, cfg.finetune.epochs) if cfg.search.epoch_budget else None
    if told or rerun:
        sampler = make_sampler(cfg.search.sampler, seed=_resumed_seed(cfg, len(told), rerun),
                               n_trials=cfg.search.trials, constraints=constraints, reduction_factor=eta, cap=cap)
        storage, name = study_with_history(cfg, told, rerun + [(p["method"], None) for p in first], sampler)
        kw.update(sampler=sampler, storage=storage, study_name=name)
    else:  # a new sweep: exactly the searcher of a first run
        kw.update(sampler=make_sampler(cfg.search.sampler, seed=cfg.seed, n_trials=cfg.search.trials,
                                       constraints=constraints, reduction_factor=eta, cap=cap),
                  points_to_evaluate=first or None)
    lag = cfg.search.concurrency if cfg.search.reproducible else None
    searcher = _sweep_search(OptunaSearch, budget_names(cfg.search.constraints), lag=lag)(**kw)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=todo,
                                    scheduler=scheduler if scheduler is not None else _scheduler(cfg, finished),
                                    max_concurrent_trials=cfg.search.concurrency, reuse_actors=True),
        run_config=run_config,
    )


def _fit(st: _CallbackState, tuner) -> bool:
    """Run Ray Tune to its end; whether a KeyboardInterrupt ended it (a second Ctrl-C, or no Tune handler to stop
    gracefully).  Every trial Tune delivered is recorded and counted before it returns."""
    interrupted = False
    try:
        with _sigint_kept(), _trial_actors_on_idle_workers(), _cached_actors_for_new_trials():
            tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    _collect(st, wait=True)
    return interrupted


def _promotes(cfg: SweepConfig) -> bool:
    """Whether the sweep promotes trials stopped early (``search.scheduler.promote``)."""
    return cfg.search.scheduler is not None and cfg.search.scheduler.promote


def _promote_every(cfg: SweepConfig) -> int | None:
    """How many new candidates each of the sweep's tuners asks for before promotions run
    (``search.scheduler.promote_every``); None: one tuner for them all, promotions at the end."""
    return cfg.search.scheduler.promote_every if _promotes(cfg) else None


def _promote(st: _CallbackState, scheduler) -> int:
    """Successive halving's promotions, once Tune has run every candidate (or a round of ``promote_every`` of
    them, :func:`_promote_every`): the ``stopped_early`` rows that their
    rung, as it stands now, ranks in its top ``⌊n/η⌋`` (:meth:`sweep.mo_asha.MOASHA.promotions`) become
    ``stopped`` rows, which the next tuner runs again first, with their numbers (so seeds) back, from the
    fine-tune state saved at their rung (where one is left; else from the start); returns how many.  Their
    epochs leave the epoch budget's count (the re-run's row counts them all again).  In a resumed sweep the
    earlier runs' stops are among them (:func:`_scheduler` replays their rungs)."""
    logic = getattr(scheduler, "logic", None)
    if logic is None or not _promotes(st.cfg):
        return 0
    # not every candidate has run: no end yet, unless the sweep runs its candidates in rounds (promote_every)
    at_end = _finished(list(st.records.values())) >= st.cfg.search.trials
    if _promote_every(st.cfg) is None and not at_end:
        return 0
    rows, spent = [], 0
    for tid, rung in logic.promotions(at_end=at_end):
        r = st.records.get(tid)
        if r is None or r.status != "stopped_early" or r.trial_number is None or not r.knobs:
            continue
        spent += epochs_spent([r])
        where = "rung 0 (before fine-tuning)" if rung == 0 else f"rung {rung} ({rung} fine-tune epochs)"
        rows.append(r.replace(status="stopped", error=f"{PROMOTED}{where}: now in the rung's top; runs again"))
        scheduler.promoted[r.trial_number] = rung
    if not rows:
        return 0
    _upsert(st, rows)
    st.epochs -= spent
    st.progress.done -= len(rows)
    # an earlier run's stops promoted in a resumed sweep were counted as done before this run
    st.progress.done0 = min(st.progress.done0, st.progress.done)
    st.progress.line(f"promotion: {len(rows)} trial(s) stopped early now rank in their rung's top "
                     f"(trials {', '.join(str(r.trial_number) for r in rows)}); they go on from there")
    return len(rows)


def _same_config(a: tuple[str, dict], b: tuple[str, dict]) -> bool:
    """Whether two ``(method, knobs)`` are one configuration, whatever the type numbers came back as."""
    def loose(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)

    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(loose(a[1][k]) == loose(b[1][k]) for k in a[1])


def _resumed_seed(cfg: SweepConfig, told: int, rerun: list) -> int:
    """The sampler's seed in a resumed sweep: the sweep seed and the number of trials told, and, when trials
    run again first, which ones.  Their configurations came from the stream of an earlier run, which drew them
    in the same order (enqueued trials draw nothing): a stream of that seed would draw them once more as new
    trials, e.g. when nothing had finished yet."""
    import zlib

    seed = cfg.seed * 1_000_003 + told
    if rerun:
        seed += 1 + zlib.crc32(repr(sorted(_knobs_key(m, k) for m, k in rerun)).encode())
    return seed % 2**31


def _run_again(cfg: SweepConfig, folder: SweepFolder, trials: list[TrialRecord],
               finished: list[TrialRecord]) -> list[tuple[int | None, str, dict]]:
    """``(number, method, knobs)`` of the trials a resumed sweep runs again first, by number: those cut short
    (``stopped`` rows), and those a killed driver left mid-fine-tune with a saved state but no row
    (:func:`sweep.trial.saved_trials`).  Each gets its number back (:class:`sweep.space.DefineByRun`), so its
    seed, and goes on from its saved fine-tune epoch; a number or configuration that has a finished row is
    never run again."""
    from .trial import keeps_progress, saved_trials

    done_numbers = {r.trial_number for r in finished if r.trial_number is not None}
    done_configs = {_config_key(r) for r in finished if r.knobs}
    saved = saved_trials(folder) if keeps_progress(cfg) else []
    # a trial's own knobs, as it ran (the table may give an int knob back as a float: 0 -> 0.0)
    as_saved = {number: (method, knobs) for _, number, method, knobs in saved if number >= 0}
    out: dict = {}  # configuration -> (number, method, knobs)
    for r in trials:
        if r.status == "stopped" and r.method and r.knobs:
            number = r.trial_number if r.trial_number not in done_numbers else None
            method, knobs = r.method, r.knobs
            if number in as_saved and _same_config(as_saved[number], (method, knobs)):
                method, knobs = as_saved[number]
            out[_knobs_key(method, knobs)] = (number, method, knobs)
    taken = {n for n, _, _ in out.values()}
    for _, number, method, knobs in saved:
        key = _knobs_key(method, knobs)
        if (number >= 0 and number not in done_numbers and number not in taken and key not in done_configs
                and key not in out):
            out[key] = (number, method, knobs)
    seen: set[int] = set()
    again = []
    for number, method, knobs in sorted(out.values(), key=lambda t: (t[0] is None, t[0] or 0)):
        again.append((number if number not in seen else None, method, knobs))
        seen.add(number)
    return again


def _told(cfg: SweepConfig, rec: TrialRecord):
    """How a resumed sweep tells a finished trial to the sampler: as it was told while it ran
    (:func:`_sweep_search`)."""
    from .space import Told

    state = {"failed": "fail", "stopped_early": "pruned"}.get(rec.status, "complete")
    values = list(_objective_values(cfg, rec).values()) if state == "complete" else None
    return Told(rec.method, rec.knobs, values, tuple(_violations(cfg, rec)), state)


def _epoch_budget_spent() -> bool:
    """Whether the live sweep's finished trials have spent its ``search.epoch_budget``; the first time, the
    sweep's budget reason is set and one line says so (the trials running then finish: the budget may be
    exceeded by what they spend)."""
    try:
        st = _live_state()
    except KeyError:  # no live sweep (a searcher driven by hand)
        return False
    budget = st.cfg.search.epoch_budget
    if budget is None or st.epochs < budget:
        return False
    if st.epochs_reason is None:
        st.epochs_reason = epoch_budget_reason(budget)
        st.budget_reason = st.budget_reason or st.epochs_reason
        st.progress.closed = True
        st.progress.log(f"{st.epochs_reason} ({st.epochs} by the finished trials): no trial starts any more; the "
                        f"{st.progress.in_flight()} running finish")
    return True


def _stopped_at_rung(result: dict | None) -> bool:
    """A trial's last result is a rung report (no record): successive halving stopped it there."""
    return bool(result) and RUNG in result and "record_json" not in result


def _sweep_search(base, budgets: tuple[str, ...] = (), lag: int | None = None):
    """Ray's OptunaSearch as the sweep tells it finished trials (``budgets``: the names of the sweep's
    ``search.constraints``, in :meth:`~sweep.constraints.Constraints.items` order; ``lag``: the sweep's
    concurrency where ``search.reproducible`` holds, else None):

    - each trial's ``search.constraints`` values go to Optuna as the trial's constraints
      (:func:`sweep.constraints.tell_constraints`, one per budget in ``budgets``), so constrained TPE /
      NSGA-II / GP learn where the budgets hold;
    - a trial that successive halving stopped at a rung is told as PRUNED, without values (Ray's
      OptunaSearch would tell its rung quality as a final one, COMPLETE): its quality there is a lower bound
      after fewer epochs, and a sampler that took it as final would see a cheap, under-trained candidate as
      a finished point of the front.  Optuna's own pruners leave such trials PRUNED; TPE ranks them below
      every completed trial, NSGA-II leaves them out of its population;
    - a trial that errored is FAIL (Ray's would be COMPLETE with its last report, when it sent one), as a
      resumed sweep tells its ``failed`` row;
    - with ``lag`` (c), draws are told in the order they were drawn and the k-th draw sees exactly draws
      0 .. k - c: it waits (Tune asks again) until those have finished, and a trial that finished sooner
      waits to be told.  What the sampler knows at each draw is then fixed by the seed, whatever the load or
      the order trials finish in; without it, which of c running trials finishes first decides what the next
      draw sees.  The cost: a slot idles while the oldest running trial is slower than the others."""
    import logging

    import optuna
    from ray.tune.search import Searcher

    from .constraints import tell_constraints

    class SweepOptunaSearch(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._drawn: list[str] = []  # trial ids in the order they were drawn (with lag)
            self._held: dict[str, tuple[dict | None, bool]] = {}  # finished, not yet told (with lag)
            self._told_n = 0  # draws told so far, in draw order (with lag)
            self._waiting: set[str] = set()  # drawn, not yet finished (with lag)

        def suggest(self, trial_id):
            if _epoch_budget_spent():  # no trial starts; Tune ends once the running ones have finished
                return Searcher.FINISHED
            new = lag is not None and trial_id not in self._ot_trials
            if new and not self._caught_up():
                _HELD_BACK["lag"] = lag  # Tune keeps the finished trials' actors for the draws to come
                return None  # an older draw is still running: Tune asks again
            _HELD_BACK["lag"] = 0
            out = super().suggest(trial_id)
            if new and isinstance(out, dict):
                self._drawn.append(trial_id)
                self._waiting.add(trial_id)
            return out

        def _caught_up(self) -> bool:
            """Tell the finished draws the next draw must see (those ``lag`` or more before it), in draw order;
            whether all of them had finished."""
            while self._told_n <= len(self._drawn) - lag:
                tid = self._drawn[self._told_n]
                if tid not in self._held:
                    return False
                self._tell(tid, *self._held.pop(tid))
                self._told_n += 1
            return True

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._waiting:
                self._waiting.discard(trial_id)
                # kept small: the sweep's callback takes the trial's texts out of Tune's result later
                wanted = {*(self._metric if isinstance(self._metric, list) else [self._metric]), CONSTRAINTS_KEY,
                          RUNG, "record_json"}
                kept = None if result is None else {k: ("" if k == "record_json" else v)
                                                    for k, v in result.items() if k in wanted}
                self._held[trial_id] = (kept, error)
                return
            self._tell(trial_id, result, error)

        def _tell(self, trial_id, result, error):
            ot = self._ot_trials.get(trial_id)
            if ot is None or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result=result, error=error)
            if budgets and not error:  # a failed trial is no point of the search: Optuna ignores it
                tell_constraints(ot, budgets, (result or {}).get(CONSTRAINTS_KEY))
            if error:  # Ray would tell an errored trial's last report (a rung's) as final
                state = optuna.trial.TrialState.FAIL
            elif _stopped_at_rung(result):
                state = optuna.trial.TrialState.PRUNED
            else:
                return super().on_trial_complete(trial_id, result=result, error=error)
            try:
                self._ot_study.tell(ot, None, state=state)
            except Exception as exc:  # as Ray's own tell: a refused tell is a warning, not the sweep's end
                logging.getLogger(__name__).warning("could not tell Optuna that trial %s is %s: %s", trial_id,
                                                    state.name, exc)
            self._completed_trials.add(trial_id)

    return SweepOptunaSearch


def _replayed_rungs(cfg: SweepConfig, rec: TrialRecord, rungs) -> dict[int, dict]:
    """What a resumed sweep's scheduler puts back at its ``rungs`` for a finished row: the objective values the
    trial reported at each rung it reached (its ``rung_quality``, with the row's costs: pruning fixed them), so
    that new trials are judged against whole rungs, the trials that went on included; for a ``stopped_early``
    row without it (a table written before the column), its values at the rung it stopped at."""
    if rec.status not in ("ok", "stopped_early"):  # failed or infeasible rows never reached a rung's judgement
        return {}
    reached = {e: q for e, q in rung_qualities(rec).items() if e in rungs}
    if reached:
        return {e: _objective_values(cfg, rec.replace(**{cfg.quality: q})) for e, q in reached.items()}
    if rec.status == "stopped_early" and rec.finetune_epochs in rungs:
        return {rec.finetune_epochs: _objective_values(cfg, rec)}
    return {}


def _scheduler(cfg: SweepConfig, finished: list[TrialRecord]):
    """Ray Tune's scheduler: FIFO, or multi-objective successive halving (:mod:`sweep.mo_asha` decides; this
    is its Tune face, with the decisions in ``.logic``).  A resumed sweep replays every rung result its finished
    trials reported (:func:`_replayed_rungs`).  The hypervolume reference that cuts a rung's front is the
    sweep's own (from the dense baseline's figures), taken from the live sweep at the first report: the
    baseline is trained after the tuner is built.
    ``.promoted`` (trial number -> rung) names the trials run again from a rung (:func:`_promote`): their
    reports up to that rung are not judged again (rung 0 is reported once more: it has no saved state)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from .space import TRIAL_NUMBER

    settings = cfg.search.scheduler
    if settings is None:
        return FIFOScheduler()
    from .mo_asha import MOASHA, reference_from_baseline

    logic = MOASHA(settings, cfg.search.objectives)
    # an earlier run's stops may be promoted once its rungs are whole again: every stopped row holds its rung
    # qualities (a table written before rung_quality does not: its rungs lack the trials that went on)
    whole = all(r.rung_quality for r in finished if r.status == "stopped_early")
    for r in finished:
        for rung, values in _replayed_rungs(cfg, r, logic.rungs).items():
            stopped = settings.promote and whole and r.status == "stopped_early" and rung == r.finetune_epochs
            logic.record(r.trial_id, rung, values, stopped=stopped, number=r.trial_number)  # in its bracket

    class MOASHAScheduler(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.logic = logic
            self.promoted: dict[int, int] = {}

        def on_trial_result(self, tune_controller, trial, result):
            if RUNG not in result or "record_json" in result:
                return TrialScheduler.CONTINUE
            if int(result[RUNG]) <= self.promoted.get(trial.config.get(TRIAL_NUMBER), -1):
                return TrialScheduler.CONTINUE  # a promoted trial passes the rung it was promoted from
            if logic.reference is None:  # stays None where the baseline lacks a figure: the rung's own fallback
                try:
                    baseline = _live_state().meta.get("baseline")
                except KeyError:  # no live sweep (a scheduler driven by hand)
                    baseline = None
                logic.reference = reference_from_baseline(cfg.search.objectives, baseline)
            decision = logic.report(trial.trial_id, int(result[RUNG]),
                                    {o: result.get(o) for o in cfg.search.objectives},
                                    number=trial.config.get(TRIAL_NUMBER))
            if not decision.stop:
                return TrialScheduler.CONTINUE
            _live_state().stopped_early[trial.trial_id] = decision.reason
            return TrialScheduler.STOP

    return MOASHAScheduler()


# models re-measured side by side after a sweep (their timed runs interleaved): held in memory at once, each with its
# runtime session
REMEASURED_TOGETHER = 8


def _remeasure(cfg: SweepConfig, folder: SweepFolder, records: list[TrialRecord], log) -> list[TrialRecord]:
    """Latency taken while other trials shared the machine is noisy: re-measure it alone, the models side by
    side (:func:`sweep.measure.compare_latency`, in groups of :data:`REMEASURED_TOGETHER`: their timed runs
    interleaved), so that a change of the machine's speed while they are timed hits them alike instead of the
    one model timed then (on a shared 2-core machine one model of a front timed one after another came out at
    1.8x its figure timed beside the others).

    Convention: the dense baseline is timed in every group, and every re-measured trial is put on one scale,
    the baseline's: ``latency_ratio`` is its median over the baseline's median in its own group, and
    ``latency_ms`` (and ``latency_iqr_ms``) that ratio times the baseline's re-measured latency, so that trials
    timed in different groups, or in different runs of a resumed sweep, compare as their ratios do (this
    machine switches between speeds that differ by 2x).  The baseline's row keeps the first timing it gets
    alone (the sweep's metadata takes it too: :func:`_with_remeasured_baseline`); a resumed sweep's new trials
    are put on that scale by the baseline timed beside them.

    ``measure.remeasure: all`` re-measures every ok trial (a noisy point may look dominated as easily
    as it may look good); ``front`` re-measures front members, recomputes the front and repeats for
    newcomers (at most 3 rounds); ``none`` keeps the figures taken during the sweep.
    """
    from .measure import compare_latency

    objectives = list(cfg.search.objectives)
    if "latency_ms" not in objectives or cfg.measure.remeasure == "none":
        return with_front(records, objectives)
    splits = load_splits(cfg)
    rounds = 1 if cfg.measure.remeasure == "all" else 3
    before = sum(r.on_front for r in with_front(records, objectives))
    base = next((r for r in records if r.is_baseline and r.model_path), None)
    row = next((r for r in records if r.is_baseline), None)
    # the scale every re-measured trial is put on: the baseline's latency timed alone (None: not yet)
    scale_ms = row.latency_ms if row is not None and row.latency_alone and row.latency_ms else None
    # a baseline not yet timed alone (a sweep's first end, or a folder written before the scale): every trial
    # is timed again beside it, so that none stays on the scale of an earlier timing
    again = base is not None and scale_ms is None
    for _ in range(rounds):
        records = with_front(records, objectives)
        todo = {r.trial_id for r in records if r.status == "ok" and (again or not r.latency_alone) and r.model_path
                and not r.is_baseline and (cfg.measure.remeasure == "all" or r.on_front)}
        again = False
        with_base = base is not None and scale_ms is None
        if not todo and not with_base:
            break
        fresh: dict[str, dict] = {}
        ordered = sorted((r for r in records if r.trial_id in todo), key=lambda r: not r.on_front)
        size = REMEASURED_TOGETHER - (base is not None)
        for i in range(0, max(len(ordered), 1), size):
            group = ([base] if base is not None else []) + ordered[i:i + size]
            lats = compare_latency([folder.load_model(r.model_path) for r in group], splits.input_shape,
                                   batch=cfg.measure.latency_batch, warmup=cfg.measure.warmup,
                                   repeats=cfg.measure.repeats, threads=trial_threads(cfg),
                                   device=cfg.measure.device, runtime=cfg.measure.runtime)  # as the trials were
            base_ms = lats[0].median_ms if base is not None and lats[0].median_ms > 0 else None
            if base_ms is not None and scale_ms is None:  # the baseline's first timing alone: the scale
                scale_ms = base_ms
                fresh[base.trial_id] = _timed(lats[0], 1.0, 1.0)
            for r, lat in zip(group, lats):
                if r.is_baseline:
                    continue
                if base_ms is None:  # nothing to put it on a scale with: as timed
                    fresh[r.trial_id] = _timed(lat, 1.0, None)
                else:
                    fresh[r.trial_id] = _timed(lat, scale_ms / base_ms, lat.median_ms / base_ms)
        records = [r.replace(**fresh[r.trial_id]) if r.trial_id in fresh else r for r in records]
        records = _on_the_baseline_scale(records)
        timed = [f"{len(todo)} trial(s)"] if todo else []
        log(f"re-measured the latency of {' and '.join((['the baseline'] if with_base else []) + timed)} alone"
            + (" (beside the baseline)" if base is not None and not with_base else ""))
    records = with_front(records, objectives)
    after = sum(r.on_front for r in records)
    if after != before:  # the progress lines counted the front with the latencies timed during the sweep
        log(f"the front now holds {after} point(s): {before} with the latencies timed during the sweep")
    return records


def _on_the_baseline_scale(records: list[TrialRecord]) -> list[TrialRecord]:
    """Rows whose latency was not timed again after the sweep (stopped early, infeasible, off the front under
    ``remeasure: front``) keep the ratio they were timed at during the sweep (against the baseline's latency
    when it was trained), and their ``latency_ms`` (and spread) is put on the scale of the baseline's latency
    in the table, as the re-measured rows' are (:func:`_remeasure`): so every row of a plot's latency axis is
    on one scale.  A row without a ratio gets one against that latency.  The same result however often it is
    applied."""
    base_lat = next((r.latency_ms for r in records if r.is_baseline), None)
    if not base_lat:
        return records
    out = []
    for r in records:
        if r.is_baseline or r.latency_alone or r.latency_ms is None:
            out.append(r)
        elif r.latency_ratio is None or not r.latency_ms > 0:
            out.append(r.replace(latency_ratio=r.latency_ms / base_lat))
        else:
            factor = r.latency_ratio * base_lat / r.latency_ms
            out.append(r.replace(latency_ms=r.latency_ratio * base_lat, latency_iqr_ms=(
                None if r.latency_iqr_ms is None else r.latency_iqr_ms * factor)))
    return out


def _timed(lat, scale: float, ratio: float | None) -> dict:
    """A re-measured row's latency columns: ``lat`` (a :class:`sweep.measure.Latency`) with its median and
    spread multiplied by ``scale`` (onto the baseline's scale, :func:`_remeasure`), and ``ratio`` to the
    baseline timed beside it."""
    lat = lat.scaled(scale)
    return dict(latency_ms=lat.median_ms, latency_iqr_ms=lat.iqr_ms, threads=lat.threads,
                latency_repeats=lat.repeats, latency_runtime=lat.runtime, latency_alone=True, latency_ratio=ratio)


def _with_remeasured_baseline(meta: dict, records: list[TrialRecord]) -> dict:
    """``meta`` with the dense baseline's latency re-measured after the sweep (:func:`_remeasure`) in place of
    the one timed when the baseline was trained: the hypervolume divides each trial's latency by the
    baseline's, and after the re-measurement the trials' latencies are from that timing, not the first (on a
    shared machine the two differed by 1.8x, which put every trial beyond the reference point)."""
    base = next((r for r in records if r.is_baseline), None)
    if base is None or not base.latency_alone or not base.latency_ms:
        return meta
    return {**meta, "baseline": {**meta["baseline"], "latency_ms": base.latency_ms}}


def run_sweep(cfg: SweepConfig, sweep_dir: Path, *, report_root: Path | None = Path("reports"),
              address: str | None = None, tracking_uri: str | None = None, resume: bool = False,
              log=print) -> SweepOutcome:
    """Run (or, with ``resume``, continue) the sweep in ``sweep_dir``, holding the folder's lock throughout."""
    folder = SweepFolder(sweep_dir)
    if address is not None:
        _check_reachable(address)  # before anything is written, the lock included
    with folder.lock("sweep resume" if resume else "sweep run", new=not resume) as lock:
        prev = lock.previous
        if prev is not None and prev["pid"] != os.getpid():
            log(f"note: took over the sweep folder's lock from pid {prev['pid']} on {prev.get('host', '?')} "
                f"(`{prev.get('command', '?')}`), which no longer holds it")
        return _run_locked(cfg, folder, report_root=report_root, address=address, tracking_uri=tracking_uri,
                           resume=resume, log=log)


def _run_locked(cfg: SweepConfig, folder: SweepFolder, *, report_root: Path | None, address: str | None,
                tracking_uri: str | None, resume: bool, log) -> SweepOutcome:
    from .results.mirror_process import niceness

    t0 = time.time()
    _STOP.clear()
    niceness()  # the environment's say on the MLflow mirror's priority, checked before anything is written
    if address is None:
        _check_schedulable(cfg, None)  # before anything is written
    if not resume and tracking_uri is not None:  # a store that cannot be opened stops a new sweep before it starts
        _open_sink(tracking_uri, cfg.name, folder)
    ray_started = False
    if not resume or _finished(folder.store.records()[0]) < cfg.search.trials:
        # Ray first: it starts its processes (idle workers importing torch: _preload_modules) while the
        # driver sets up MLflow and trains or loads the baseline; a cluster that cannot be reached stops a
        # new sweep before its folder is written
        ray_started = _ray_init(address, folder.path, None, log, cfg)
    try:
        if not resume:
            folder.create(cfg)
        if ray_started or address is not None:
            _check_schedulable(cfg, address)
        if address is not None:
            log(_cluster_line(address))
        return _run_with_ray(cfg, folder, report_root=report_root, address=address, tracking_uri=tracking_uri,
                             log=log, ray_started=ray_started, t0=t0)
    except BaseException:
        _ray_shutdown(ray_started, log)  # a no-op when the sweep already shut it down
        raise


def _run_with_ray(cfg: SweepConfig, folder: SweepFolder, *, report_root: Path | None, address: str | None,
                  tracking_uri: str | None, log, ray_started: bool, t0: float) -> SweepOutcome:
    from .results.mirror_process import open_mirror

    state = folder.state()
    uri = tracking_uri or folder.tracking_uri(state)  # a moved or copied folder keeps its own embedded store
    experiment = state.get("experiment") or cfg.name
    sink = _open_sink(uri, experiment, folder)
    parent_id = state.get("parent_run_id")
    rebuild = bool(parent_id) and not sink.has_run(parent_id)
    if rebuild:
        log(f"note: the sweep's MLflow parent run {parent_id} is not in the tracking store {uri} (a new or "
            f"replaced store): a new parent run is opened, and every finished trial's run is written again from "
            f"trials.parquet")
        parent_id = None
    if parent_id:
        n = sink.close_stale_children(parent_id, DRIVER_DIED)
        if n:
            log(f"closed {n} MLflow run(s) left RUNNING by the interruption as KILLED")
        sink.reopen(parent_id)
    else:
        parent_id = sink.start_parent(cfg.name, {
            **_sweep_params(cfg), "trials": cfg.search.trials, "concurrency": cfg.search.concurrency,
            "methods": ",".join(m.name for m in cfg.methods), "finetune_epochs": cfg.finetune.epochs,
            "seed": cfg.seed})
        sink.log_artifact(parent_id, folder.config_path)
    state.update(tracking_uri=uri, experiment=experiment, parent_run_id=parent_id, name=cfg.name,
                 **{EMBEDDED_KEY: uri == folder.default_tracking_uri})
    folder.write_state(state)

    store = folder.store
    progress = _Progress(cfg.search.trials, 0, log, cfg.search.concurrency)
    st = _CallbackState(store, cfg, {}, progress, sink, parent_id, folder,
                        mirror=open_mirror(sink, experiment, parent_id, log, _sweep_params(cfg)),
                        budget_used0=float(state.get(BUDGET_USED) or 0.0), address=address)
    _beat(st, phase="baseline", outcome=None)
    timing: dict = {}
    try:
        if ray_started or address is not None:  # Ray is up: the inbox's process starts with the baseline
            st.inbox = _model_inbox(folder)
        records, _ = store.records()
        if not any(r.is_baseline for r in records) or not folder.has_baseline():
            with _beating(st):  # training it may take hours: `sweep status` must still see a live driver
                brec = prepare_baseline(cfg, folder, log=log).replace(mlflow_run_id=parent_id)
            base = folder.baseline()
            records = with_front([r for r in records if not r.is_baseline] + [brec], cfg.search.objectives)
            store.write(records, sweep_meta(cfg, base))
            sink.log_metrics(parent_id, {f"baseline_{k}": base[k] for k in
                                         ("accuracy", "test_accuracy", "params", "macs", "latency_ms")})
            acc = "n/a (no labelled set)" if base["accuracy"] is None else f"{base['accuracy']:.4f} (val)"
            log(f"baseline: accuracy {acc} · params {base['params']:,} · "
                f"MACs {base['macs']:,} · latency {base['latency_ms']:.3f} ms "
                f"(batch {cfg.measure.latency_batch}, {base['latency']['threads']} thread(s), {cfg.measure.device})")
        _stop_if_lost()
        base = folder.baseline()
        meta = st.meta = sweep_meta(cfg, base)
        records = store.records()[0]
        if rebuild:  # the runs the table names are gone with the old store: each finished trial gets a new one
            records = [r.replace(mlflow_run_id=parent_id if r.is_baseline else None) for r in records]
            sink.log_metrics(parent_id, {f"baseline_{k}": base[k] for k in
                                         ("accuracy", "test_accuracy", "params", "macs", "latency_ms")})
        records = _reconciled(st, records)
        progress.done = progress.done0 = _finished(records)
        st.epochs = epochs_spent(records)
        reason = None
        budget, epochs = cfg.search.time_budget_s, cfg.search.epoch_budget
        if progress.done < cfg.search.trials and budget is not None and st.budget_used0 >= budget:
            reason = st.budget_reason = budget_reason(budget)
            log(f"{reason}: earlier runs of this sweep spent {st.budget_used0:.0f} s on trials; to run the "
                f"{cfg.search.trials - progress.done} trial(s) left, raise search.time_budget_s in "
                f"{folder.config_path} and resume")
        elif progress.done < cfg.search.trials and epochs is not None and st.epochs >= epochs:
            reason = st.budget_reason = st.epochs_reason = epoch_budget_reason(epochs)
            log(f"{reason}: earlier runs of this sweep spent {st.epochs} fine-tune epochs on trials; to run the "
                f"{cfg.search.trials - progress.done} trial(s) left, raise search.epoch_budget in "
                f"{folder.config_path} and resume")
        elif progress.done < cfg.search.trials:
            if not ray_started and address is None:  # e.g. a trial row went missing since the start
                ray_started = _ray_init(None, folder.path, None, log, cfg)
            _ACTIVE["sweep"] = st
            callback = _make_callback()
            st.inbox = st.inbox or _model_inbox(folder)
            scheduler = _scheduler(cfg, [r for r in records if not r.is_baseline and r.status in FINISHED])
            for r in records:  # promoted trials a killed driver left to run again: they pass their rung again
                if (r.status == "stopped" and (r.error or "").startswith(PROMOTED) and r.trial_number is not None
                        and hasattr(scheduler, "promoted")):
                    scheduler.promoted[r.trial_number] = int(r.finetune_epochs or 0)
            every = _promote_every(cfg)
            tuner = _tuner(cfg, folder, callback, records, st.inbox, scheduler, new=every)
            log(f"running {cfg.search.trials - progress.done} trial(s), {cfg.search.concurrency} at a time "
                f"({cfg.search.sampler} sampler; objectives: {', '.join(cfg.search.objectives)})")
            st.fit_t0 = progress.t0 = time.time()
            _await_warm_workers(log)  # on the trials' clock (time budget, overhead): it is what they wait for
            _stop_if_lost()
            _beat(st, phase="trials")
            st.recorder = _Recorder(st)
            interrupted = _fit(st, tuner)
            # successive halving's promotions once the candidates have run out (or after every `promote_every`
            # of them): each round runs again, from their rungs, the trials stopped early that the grown rungs now
            # rank in their top (mo_asha.promote), beside the next round's new candidates
            done_before = None
            while not interrupted and _STOP.get("reason") is None and st.budget_reason is None:
                promoted, done = _promote(st, scheduler), _finished(store.records()[0])
                # a round that finished no trial (e.g. every one of them cut short) is not started again
                if not promoted and (every is None or done >= cfg.search.trials or done == done_before):
                    break
                done_before = done
                interrupted = _fit(st, _tuner(cfg, folder, callback, store.records()[0], st.inbox, scheduler,
                                              new=every))
            timing = _timing(store, cfg, st.fit_t0)
            st.budget_used0, st.fit_t0 = st.budget_used0 + time.time() - st.fit_t0, None
            _settle(st)
            _release_inbox(st)
            finished = _finished(store.records()[0])
            # Tune returned: all trials done, or stopped by SIGTERM, the time budget or Ctrl-C (which
            # reaches Ray Tune's handler directly, so it is what remains when trials are left)
            reason = _STOP.get("reason") or st.budget_reason or (
                CTRL_C if interrupted or finished < cfg.search.trials else None)
            if reason is not None:
                _ray_shutdown(ray_started, log)
                ray_started = False
                _close_books(st, reason)
            _drop_spent_progress(st)
            if reason is not None and reason != st.budget_reason:
                return _interrupted(st, reason, t0, uri, timing)
        else:  # a resumed sweep whose trials had all finished: its end (re-measurement, report) again
            _drop_spent_progress(st)
            log(f"all {cfg.search.trials} trials had finished: nothing left to run; the latencies are re-measured "
                f"where due and the report drawn again")
        _beat(st, phase="remeasure")
        _ray_shutdown(ray_started, log)  # the re-measurement has the machine to itself
        ray_started = False
        records, _ = store.records()
        records = _remeasure(cfg, folder, records, log)
        meta = st.meta = _with_remeasured_baseline(meta, records)
        store.write(records, meta)
        st.mirror.remeasured([r for r in records if r.latency_ms is not None and not r.is_baseline])
        out_dir = None
        if report_root is not None:
            from .report import build_report

            out_dir = report_dir(cfg.name, report_root)
            build_report(folder.path, out_dir, log=log)
        _log_parent_artifacts(sink, parent_id, records, cfg, meta["baseline"], out_dir, log)
        _end_parent(st, "FINISHED", reason or "finished")
        _beat(st, phase="done", outcome=reason or "finished")
        return SweepOutcome(folder.path, out_dir, records, False, time.time() - t0, tracking_uri=uri,
                            stop_reason=reason, **timing)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Ray Tune (baseline, re-measurement, report)
        _record_delivered(st)  # while Ray (the model inbox) is still up
        _ray_shutdown(ray_started, log)
        reason = _STOP.get("reason") or CTRL_C
        _close_books(st, reason)
        return _interrupted(st, reason, t0, uri, timing)
    except BaseException as e:  # the driver's own error (in Tune, the callback, or around them): re-raised
        _record_delivered(st)  # while Ray (the model inbox) is still up
        _ray_shutdown(ray_started, log)
        reason = f"driver error: {_error_text(e)}"
        _close_books(st, reason)
        _end_parent(st, "FAILED", reason)
        _beat(st, phase="done", outcome=reason)
        if not isinstance(e, SweepError):  # a SweepError's own line says what to do
            log(f"{reason}; {progress.done} of {cfg.search.trials} trials finished and kept; "
                f"continue with `sweep resume {folder.path}` once fixed")
        raise
    finally:
        _ACTIVE.pop("sweep", None)
        if st.recorder is not None:
            st.recorder.close()
        _release_inbox(st)
        st.mirror.close()


def _open_sink(uri: str, experiment: str, folder: SweepFolder):
    """The sweep's MLflow sink; a tracking store that cannot be opened is one line saying what to do (the
    table holds every trial, and a sweep resumed on a new store writes their runs again)."""
    from .results.mlflow_sink import MlflowSink

    try:
        return MlflowSink(uri, experiment, artifact_dir=folder.artifacts_dir)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if uri == folder.default_tracking_uri:
            hint = (f"trials.parquet holds every trial: repair the store, or move it aside ({folder.path / MLFLOW_DB})"
                    f" and `sweep resume {folder.path}`, which opens a new store and writes every trial's run again")
        else:
            hint = "check the URI and that its server is up"
        raise SweepDirError(f"the sweep's MLflow tracking store must open, but got {type(e).__name__}: {first} "
                            f"(tracking URI {uri}); {hint}") from None


def _sweep_params(cfg: SweepConfig) -> dict:
    """The sweep-level parameters every MLflow run carries (the parent's, and each trial's for filtering)."""
    return {"model": cfg.model.name, "dataset": cfg.dataset.name, "sampler": cfg.search.sampler,
            "objectives": ",".join(cfg.search.objectives), "latency_runtime": cfg.measure.runtime}


def _reconciled(st: _CallbackState, records: list[TrialRecord]) -> list[TrialRecord]:
    """The table at the start of a run, compacted (the journal folded in), in memory with its front;
    ``stopped`` records whose configuration already finished (re-run before a hard kill) are dropped."""
    stale = _reruns(records, [r for r in records if r.status != "stopped"]) | _stopped_twice(records)
    st.records = {r.trial_id: r for r in records if r.trial_id not in stale}
    st.stopped = {tid: r for tid, r in st.records.items() if r.status == "stopped"}
    missing = [r for r in st.records.values() if not r.is_baseline and r.status in FINISHED and r.mlflow_run_id is None]
    if st.mirror is not None and missing:  # finished trials an earlier driver died before mirroring get runs now
        for r in missing:
            st.mirror.finished(r)
        _settle(st)  # their run ids go into the table (a new sweep waits for nothing here)
    _update_front(st, set(st.records))
    _compact(st)
    return list(st.records.values())


def _release_inbox(st: _CallbackState) -> None:
    """Tune is done: every result it delivered was taken from the inbox; end the actor (a Ray that outlives
    this sweep, e.g. a cluster or a caller's, would otherwise keep one per sweep)."""
    if st.inbox is None:
        return
    try:
        import ray

        # on a way out Ray may be shut down already (and the actor with it): a Ray call now would start a
        # new local Ray just to find nothing to kill
        if ray.is_initialized():
            ray.kill(st.inbox, no_restart=True)
    except Exception:  # already gone with its node or with Ray
        pass
    st.inbox = None


def _settle(st: _CallbackState) -> None:
    """Wait for the MLflow mirror, then fold the journal (and the run ids it opened) into the table."""
    if st.mirror is not None:
        st.mirror.flush()
    if st.meta:
        _compact(st)


def _error_text(e: BaseException) -> str:
    """One line for an exception (Ray Tune wraps a callback's error in a TuneError whose message is the
    whole traceback: its last line names the error)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback (most recent call last)"):
        return lines[-1][:300]
    return f"{type(e).__name__}: {' '.join(lines)[:300]}"


def _finished(records: list[TrialRecord]) -> int:
    """Trials that are done for good: ok or failed (stopped ones are run again by `sweep resume`)."""
    return sum(1 for r in records if not r.is_baseline and r.status in FINISHED)


def _timing(store: TrialStore, cfg: SweepConfig, fit_t0: float) -> dict:
    fit_s = time.time() - fit_t0
    records, _ = store.records()
    this_run = [r for r in records if not r.is_baseline and r.ended_at is not None and r.wall_s
                and r.started_at is not None and r.started_at.timestamp() >= fit_t0]
    return dict(fit_s=fit_s, trial_s=sum(r.wall_s for r in this_run), trials_run=len(this_run),
                concurrency=cfg.search.concurrency)


def _interrupted(st: _CallbackState, reason: str, t0: float, uri: str, timing: dict) -> SweepOutcome:
    """The end of an interrupted sweep (Ctrl-C, SIGTERM): parent KILLED, one line on how to continue."""
    _end_parent(st, "KILLED", reason)
    _beat(st, phase="done", outcome=reason)
    if st.pending and st.meta:  # the table a user opens with pandas holds everything kept
        _compact(st)
    records, _ = st.store.records()
    st.progress.log(f"{reason}: {_finished(records)} of {st.cfg.search.trials} trials finished and kept; "
                    f"continue with `sweep resume {st.folder.path}`")
    return SweepOutcome(st.folder.path, None, records, True, time.time() - t0, tracking_uri=uri,
                        stop_reason=reason, **timing)


def _close_books(st: _CallbackState, reason: str) -> None:
    """The trials in flight become ``stopped`` rows naming ``reason``; MLflow runs left RUNNING are KILLED.

    Each step on its own: a failure is one warning line, never a mask over what stopped the sweep."""
    log = st.progress.log
    _record_delivered(st)  # the trials Tune delivered first; the rest of the running ones become stopped rows
    stopped = list(st.progress.running)
    try:
        _mark_stopped(st, reason)
    except Exception as e:
        log(f"warning: the stopped trials could not be recorded: {type(e).__name__}: {e}")
    st.progress.running.clear()
    st.progress.ending.clear()
    if st.mirror is None:
        return
    st.mirror.stopped(stopped, reason)
    st.mirror.flush()
    try:  # any run still RUNNING that the mirror does not know of (opened by an earlier driver)
        n = st.sink.close_stale_children(st.parent_id, reason)
        if n:
            log(f"closed {n} more MLflow run(s) left RUNNING as KILLED")
    except Exception as e:
        log(f"warning: MLflow runs of the stopped trials could not be closed: {type(e).__name__}: {e}")


def _progress_names(st: _CallbackState, records) -> set[str]:
    """The names the fine-tune states of ``records`` are kept under (:func:`sweep.trial.progress_name`)."""
    from .trial import keeps_progress, progress_name

    if not records or st.folder is None or not keeps_progress(st.cfg):
        return set()
    base = st.folder.baseline()
    return {progress_name(st.cfg, r.method, r.knobs, r.seed, base) for r in records
            if r.method and r.knobs and r.seed is not None}


def _drop_spent_progress(st: _CallbackState) -> None:
    """Tune is done and the books are closed: the saved fine-tune states no trial will go on from -- their
    number or configuration has a finished row -- are removed; those of trials cut short stay for the re-run
    that ``sweep resume`` starts first.  Never raises: a state left behind costs disk, not results."""
    from .trial import saved_trials

    try:
        if st.folder is None or not st.folder.progress_dir.is_dir():
            return
        finished = [r for r in st.records.values() if r.status in FINISHED and not r.is_baseline]
        numbers = {r.trial_number for r in finished if r.trial_number is not None}
        configs = {_config_key(r) for r in finished if r.knobs}
        stopped = {r.trial_number for r in st.records.values() if r.status == "stopped"}
        for name, number, method, knobs in saved_trials(st.folder):
            if number not in stopped and (number in numbers or _knobs_key(method, knobs) in configs):
                st.folder.progress_slot(name).remove()
        for part in st.folder.progress_dir.glob("*.tmp"):  # a write the inbox never finished (no writer now)
            part.unlink(missing_ok=True)
    except Exception as e:
        st.progress.log(f"warning: saved fine-tune states could not be removed from {st.folder.progress_dir}: "
                        f"{type(e).__name__}: {e}")


def _record_delivered(st: _CallbackState) -> None:
    """On a way out: every trial Tune delivered recorded and counted; never raises (a failure is one line,
    and the trials it leaves among the running ones become ``stopped`` rows)."""
    rec = st.recorder
    if rec is None:
        return
    try:
        _collect(st, wait=True, raise_error=False)
    except Exception as e:
        st.progress.log(f"warning: finished trials could not be counted: {type(e).__name__}: {e}")
    if rec.error is not None and not rec.error_raised:
        rec.error_raised = True
        st.progress.log(f"warning: finished trials could not be recorded ({type(rec.error).__name__}: {rec.error}); "
                        f"they are recorded as stopped, to run again")


def _end_parent(st: _CallbackState, status: str, ended: str) -> None:
    """Close the parent run with ``status``; its ``sweep.ended`` tag says how the sweep ended."""
    if st.sink is None:
        return
    try:
        st.sink.set_tags(st.parent_id, {"sweep.ended": ended})
        st.sink.end(st.parent_id, status)
    except Exception as e:
        st.progress.log(f"warning: the MLflow parent run could not be closed as {status}: {type(e).__name__}: {e}")


def _mark_stopped(st: _CallbackState, reason: str) -> None:
    """A ``stopped`` record for each trial in flight (one that already finished keeps its record); each
    carries its configuration, so that ``sweep resume`` runs it again first."""
    if not st.progress.running:
        return
    now = time.time()
    new = [TrialRecord.unfinished(st.cfg.name, tid, "stopped", reason, method=method, ended_at=now)
           .replace(trial_number=number, knobs=knobs)
           for tid, (method, number, knobs) in st.progress.running.items()
           if tid not in st.records or st.records[tid].status == "stopped"]
    if new:
        _upsert(st, new)


def _log_parent_artifacts(sink, parent_id, records: list[TrialRecord], cfg, base, out_dir, log) -> None:
    """The front (CSV, Parquet), the report and the final figures on the parent run.  MLflow is a mirror: a
    tracking store that fails here is one warning line, and the finished sweep stays finished (its table and
    report hold all of it)."""
    import pandas as pd

    front = pd.DataFrame([r.to_row() for r in records if r.on_front])
    tmp = Path(tempfile.mkdtemp(prefix="sweep-front-"))
    try:
        front.to_csv(tmp / "front.csv", index=False)
        front.to_parquet(tmp / "front.parquet", index=False)
        sink.log_artifact(parent_id, tmp / "front.csv", "front")
        sink.log_artifact(parent_id, tmp / "front.parquet", "front")
        if out_dir is not None:
            for p in sorted(Path(out_dir).glob("*")):
                if p.is_file():
                    sink.log_artifact(parent_id, p, "report")
        hv = _hypervolume(records, cfg.search.objectives, base)
        final = {"final_hypervolume": hv, "final_front_size": len(front)}
        if base.get("latency_ms"):  # the one the final hypervolume divides by (re-measured: _with_remeasured_baseline)
            final["final_baseline_latency_ms"] = base["latency_ms"]
        sink.log_metrics(parent_id, final)
    except Exception as e:  # whatever the store raises (an HTTP error, a locked database)
        log(f"warning: the front and report could not be logged to the MLflow parent run: {type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]}; trials.parquet and the report hold them")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
