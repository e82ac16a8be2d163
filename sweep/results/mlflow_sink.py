"""The MLflow mirror of a sweep: a parent run per sweep, a nested child run per trial.

Runs are addressed by id through ``MlflowClient`` (never the fluent "active run"), so the same code
works inside Ray workers and against an ``http://`` tracking server as well as the embedded sqlite
store.  Parquet stays the source of truth: a tracking failure inside a trial is logged, not fatal.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# MLflow 3 reports usage to its makers from every process that imports it (a client started at import, an
# installation id written in the home folder, a config fetched over the network).  A sweep sends nothing
# to anyone its user did not point it at: off unless the user set it (MLFLOW_DISABLE_TELEMETRY=false opts
# in).  Set here, before this process imports mlflow: everything that uses MLflow imports this module first.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


# The embedded sqlite stores this process has opened (their files' real paths): their connections get
# :data:`SQLITE_PRAGMAS` (see :func:`_tune_sqlite`).
_SQLITE_FILES: set[str] = set()
# Write-ahead logging, synced at checkpoints rather than at every commit.  sqlite's default (a rollback
# journal, synchronous=FULL) syncs the database file and its journal at each transaction, and a trial's run
# takes three: measured 22-30 ms of driver CPU (and 27-38 ms of the mirror's wall time) per trial's run,
# against 14-20 ms and 15-21 ms this way.  WAL with synchronous=NORMAL stays consistent after any crash;
# after a power loss the last few transactions may be gone -- trials.parquet (synced) still holds every
# trial, and ``sweep resume`` opens a run for each finished trial that has none.
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def _sqlite_file(uri: str) -> str | None:
    """The real path of the database file of a ``sqlite:///`` URI (None: not a sqlite file)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else os.path.realpath(path)


def _set_pragmas(dbapi_connection, connection_record) -> None:
    """SQLAlchemy ``connect`` hook: :data:`SQLITE_PRAGMAS` on connections to the files in :data:`_SQLITE_FILES`."""
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
    if not any(name == "main" and file and os.path.realpath(file) in _SQLITE_FILES for _, name, file in rows):
        return
    for pragma in SQLITE_PRAGMAS:
        dbapi_connection.execute(pragma)


def _tune_sqlite(uri: str) -> None:
    """Open the embedded store at ``uri`` (if it is a sqlite file) with :data:`SQLITE_PRAGMAS`.

    MLflow builds its SQLAlchemy engine itself, so the pragmas go in through a ``connect`` listener on every
    engine of this process, limited to the stores the sinks here opened; other sqlite databases are left as
    they are.  Registered before the first client for the URI, so every connection of its engine gets them."""
    file = _sqlite_file(uri)
    if file is None:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _SQLITE_FILES.add(file)
    if not event.contains(Engine, "connect", _set_pragmas):
        event.listen(Engine, "connect", _set_pragmas)


def _create_sqlite_store(file: str, artifact_dir: Path | None) -> None:
    """A new embedded store at ``file``, all or nothing.

    MLflow makes a new database's tables by running its schema migrations one after another (seconds on a
    small machine); a process killed half-way left a database that every later open failed on (``table
    _alembic_tmp_jobs already exists``), so ``sweep resume`` could not go on.  So the tables are made in a
    temporary file beside it (``<file>.new-<pid>``), which is synced and renamed into place once complete;
    one left by a process that died is removed.  The tables come from :func:`_template` where it has them
    (a copy opens in milliseconds); otherwise they are made, and kept there for the next new store."""
    import glob

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from ..durable import durable_rename, pid_alive

    for stale in glob.glob(glob.escape(file) + ".new-*"):
        pid = stale.rsplit("-", 1)[-1]
        if not pid.isdigit() or not pid_alive(int(pid)):
            _remove_sqlite(stale)
    tmp = f"{file}.new-{os.getpid()}"
    uri = f"sqlite:///{tmp}"
    root = (Path(artifact_dir) if artifact_dir is not None else Path("mlruns")).resolve().as_uri()
    template = _template()
    if not (template is not None and _copied(template, tmp, root)):
        _remove_sqlite(tmp)
        store = SqlAlchemyStore(uri, root)
        _drop_cached_engines(uri)
        store.engine.dispose()
        if template is not None:
            _keep_as_template(tmp, template)
    durable_rename(Path(tmp), Path(file))
    # an engine this process holds for the store's URI reads the file that was there before (moved aside)
    _drop_cached_engines(f"sqlite:///{file}")


# Where a new embedded store's tables are kept once made (:func:`_template`); unset: the user's cache folder.
CACHE_ENV = "SWEEP_CACHE_DIR"


def _template() -> Path | None:
    """The file that holds an empty store's tables for this MLflow version (it may not exist yet), or None
    where no cache folder can be made.

    Measured on 2 cores: MLflow's migrations make a new store's tables in 1.8 s, a copy of them opens in
    0.04 s -- paid by every new sweep (and by every test that makes one).  The template lacks only the
    default experiment (id 0), whose artifact location is the store's own: MLflow adds it as a store opens."""
    from mlflow.version import VERSION

    folder = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sweep")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    return Path(folder) / f"mlflow-{VERSION}-tables.db"


def _copied(template: Path, tmp: str, root: str) -> bool:
    """Whether a copy of ``template`` at ``tmp`` opened as a store (MLflow checks that its schema is this
    version's and adds the default experiment with artifact root ``root``); False where there is no template
    or it is not one (a truncated or foreign file: the tables are made instead, and the template replaced)."""
    import shutil

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp}"
    try:
        shutil.copyfile(template, tmp)
        if _rows(tmp, "experiments") or _rows(tmp, "runs"):  # not an empty store's tables: not ours
            return False
        store = SqlAlchemyStore(uri, root)
        ok = store.get_experiment("0").artifact_location == f"{root}/0"
        store.engine.dispose()
        return ok
    except Exception:
        return False
    finally:
        _drop_cached_engines(uri)


def _rows(file: str, table: str) -> int:
    """How many rows ``table`` of the sqlite database ``file`` holds (raises where it is no such database)."""
    import sqlite3

    # a URI, read-only: the path percent-encoded, so that a '?', '#' or '%' in it names the file, not a query
    con = sqlite3.connect(Path(file).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def _keep_as_template(made: str, template: Path) -> None:
    """Keep a copy of the store just made at ``made``, less its default experiment, as ``template`` (all or
    nothing: copied beside it, then renamed); a cache that cannot be written is passed over."""
    import shutil
    import sqlite3

    from ..durable import durable_rename

    part = f"{template}.new-{os.getpid()}"
    try:
        shutil.copyfile(made, part)
        con = sqlite3.connect(part)
        try:
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
            con.commit()
        finally:
            con.close()
        durable_rename(Path(part), template)
    except (OSError, sqlite3.Error):
        _remove_sqlite(part)


def _remove_sqlite(file: str) -> None:
    """A sqlite file and its journals, where they exist."""
    for path in (file, file + "-wal", file + "-shm", file + "-journal"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _drop_cached_engines(uri: str) -> None:
    """Forget the SQLAlchemy engines MLflow's tracking and registry stores keep for ``uri`` (one per URI and
    process), so that the next client opens the file now at that path."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for cls in (SqlAlchemyStore, RegistryStore):
        engine = getattr(cls, "_engine_map", {}).pop(uri, None)
        if engine is not None:
            engine.dispose()


def _check_sqlite_file(file: str) -> None:
    """Raise ``sqlite3.DatabaseError`` at once if ``file`` is not a readable sqlite database: MLflow would
    retry opening it with a growing back-off for about 100 s (meant for a database server still starting)."""
    import sqlite3
    from urllib.request import pathname2url

    con = sqlite3.connect(f"file:{pathname2url(file)}?mode=ro", uri=True)
    try:
        con.execute("PRAGMA schema_version").fetchone()
    finally:
        con.close()


# Where an embedded store records artifact locations (absolute ``file:`` URIs): table, its key, the columns.
ARTIFACT_COLUMNS = (("experiments", "experiment_id", ("artifact_location",)),
                    ("runs", "run_uuid", ("artifact_uri",)),
                    ("logged_models", "model_id", ("artifact_location",)),
                    ("model_versions", "rowid", ("source", "storage_location")))


def relocate_artifacts(file: str, artifact_dir: Path) -> list[str]:
    """Point the embedded store ``file`` at ``artifact_dir`` when its sweep folder was moved or copied; return
    the artifact roots it pointed at before ([] when nothing was elsewhere).

    MLflow records every artifact location as an absolute URI, fixed when the experiment was made, and has no
    call to change it: a folder moved (or copied to another machine) would log its artifacts where it used to
    be -- into the original folder, for a copy -- or fail there.  An old root is an experiment's location named
    like ``artifact_dir`` (``.../mlartifacts``) but elsewhere; it and every location under it are rewritten,
    in one transaction of this folder's own database (a store this sweep made: the tables above are MLflow's
    own schema, checked before use)."""
    import sqlite3

    new = Path(artifact_dir).resolve().as_uri()
    con = sqlite3.connect(file, timeout=30)
    try:
        olds = [loc for (loc,) in con.execute("SELECT artifact_location FROM experiments")
                if isinstance(loc, str) and loc.startswith("file://") and loc != new
                and loc.rstrip("/").rsplit("/", 1)[-1] == Path(artifact_dir).name]
        if not olds:
            return []
        with con:  # one transaction: all moved, or none
            for table, key, columns in ARTIFACT_COLUMNS:
                have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
                for col in (c for c in columns if c in have):
                    for k, value in con.execute(f"SELECT {key}, {col} FROM {table}").fetchall():
                        moved = _moved(value, olds, new)
                        if moved is not None:
                            con.execute(f"UPDATE {table} SET {col} = ? WHERE {key} = ?", (moved, k))
        return olds
    finally:
        con.close()


def _moved(value, olds: list[str], new: str) -> str | None:
    """``value`` with an old artifact root replaced by ``new`` (None: not under any of ``olds``)."""
    if not isinstance(value, str):
        return None
    for old in olds:
        if value == old or value.startswith(old.rstrip("/") + "/"):
            return new + value[len(old.rstrip("/")):]
    return None


def _forget_artifact_repos() -> None:
    """Drop the artifact repositories MLflow keeps per run in this process (they hold the locations from
    before :func:`relocate_artifacts`)."""
    from mlflow.tracking._tracking_service import utils

    cache = getattr(utils, "_artifact_repos_cache", None)
    if cache is not None:
        cache.clear()


def _client(uri: str, artifact_dir: Path | None = None):
    """An MLflow client on ``uri``; an embedded (sqlite) store is made there when missing, checked when present,
    and, when it is a sweep folder's own (the database beside ``artifact_dir``), pointed at that folder's
    artifacts if the folder moved (:func:`relocate_artifacts`; never a store other sweeps may share)."""
    file = _sqlite_file(uri)
    if file is not None and not os.path.exists(file):
        _create_sqlite_store(file, artifact_dir)
    elif file is not None:
        _check_sqlite_file(file)
        if artifact_dir is not None and Path(file).parent == Path(artifact_dir).resolve().parent:  # the folder's own
            moved_from = relocate_artifacts(file, artifact_dir)
            if moved_from:
                log.info("the sweep folder moved: its MLflow store's artifacts now live in %s (were %s)",
                         artifact_dir, ", ".join(moved_from))
                _drop_cached_engines(uri)
                _forget_artifact_repos()
    _tune_sqlite(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # with an http server MLflow would print "View run ..." at every run's end (and fetch the URL for it)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _param(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:6000]


class MlflowSink:
    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: Path | None = None):
        self.uri = tracking_uri
        self.client = _client(tracking_uri, artifact_dir)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # local stores keep artefacts inside the sweep folder; a tracking server keeps its own
            local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
            loc = Path(artifact_dir).resolve().as_uri() if artifact_dir is not None and local else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=loc)
        else:
            self.experiment_id = exp.experiment_id
        # MLflow 3 opens an untagged experiment in its GenAI view (traces); a sweep is model training
        if (exp is None or exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING):
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)

    def has_run(self, run_id: str) -> bool:
        """Whether the store holds run ``run_id`` (False: not there, e.g. a store that was replaced)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as e:
            if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    # ---------------------------------------------------------------- parent
    def start_parent(self, name: str, params: dict, tags: dict | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"sweep.role": "parent",
                                                                            **(tags or {})})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    # ---------------------------------------------------------------- children
    def start_child(self, parent_run_id: str, name: str, params: dict, tags: dict | None = None, *,
                    start_ms: int | None = None, metrics: list | None = None) -> str:
        """A nested run with its parameters (and ``metrics``, :class:`mlflow.entities.Metric` objects, when
        it is opened already finished): two writes, the run with its tags, then one batch."""
        run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=name,
                                     tags={PARENT_TAG: parent_run_id, "sweep.role": "trial",
                                           **{k: _param(v) for k, v in (tags or {}).items()}})
        self.log_batch(run.info.run_id, metrics=metrics or (), params=params)
        return run.info.run_id

    def close_stale_children(self, parent_run_id: str, reason: str) -> int:
        """Mark child runs left RUNNING by an interrupted sweep as KILLED, tagged ``sweep.stopped`` with
        ``reason`` (so a run that ended without a result says why); return how many."""
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                                                     f"and attributes.status = 'RUNNING'")
        for r in runs:
            self.set_tags(r.info.run_id, {"sweep.stopped": reason})
            self.client.set_terminated(r.info.run_id, status="KILLED")
        return len(runs)

    def kill_trial_runs(self, parent_run_id: str, trial_ids, reason: str) -> int:
        """Close the current runs of ``trial_ids`` (trials the driver stopped) as KILLED, tagged with
        ``reason``, whatever status the trial itself set: a trial that finished after the driver stopped
        listening has no recorded result, and ``sweep resume`` runs it again.  Returns how many."""
        ids = set(trial_ids)
        if not ids:
            return 0
        n = 0
        for r in self.children(parent_run_id):
            if r.data.tags.get("sweep.trial_id") in ids and r.data.tags.get("sweep.superseded") != "true":
                self.set_tags(r.info.run_id, {"sweep.stopped": reason})
                if r.info.status != "KILLED":
                    self.end(r.info.run_id, "KILLED")
                n += 1
        return n

    def supersede_trial_runs(self, parent_run_id: str, trial_ids) -> int:
        """Tag the runs of ``trial_ids`` ``sweep.superseded`` (another trial re-ran their configuration)."""
        ids = set(trial_ids)
        runs = [r for r in self.children(parent_run_id) if r.data.tags.get("sweep.trial_id") in ids] if ids else []
        for r in runs:
            self.set_tags(r.info.run_id, {"sweep.superseded": "true"})
        return len(runs)

    def children(self, parent_run_id: str, trial_id: str | None = None) -> list:
        """Every child run of the parent (all pages), or only those of one trial (a filtered query, so a
        trial's start costs the same at trial 10 and at trial 10,000)."""
        query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
        if trial_id is not None:
            query += f" and tags.`sweep.trial_id` = '{trial_id}'"
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # ---------------------------------------------------------------- logging
    def log_batch(self, run_id: str, metrics=(), params: dict | None = None, tags: dict | None = None) -> None:
        """Metrics (:class:`mlflow.entities.Metric` objects), parameters and tags in as few calls as MLflow's
        batch limits allow (one, for a trial's run): each call is one transaction of the tracking store."""
        from mlflow.entities import Param, RunTag

        ms = list(metrics)
        ps = [Param(str(k), _param(v)) for k, v in (params or {}).items() if v is not None]
        ts = [RunTag(str(k), _param(v)) for k, v in (tags or {}).items() if v is not None]
        while ms or ps or ts:
            bp, ps = ps[:MAX_PARAMS_TAGS], ps[MAX_PARAMS_TAGS:]
            bt, ts = ts[:MAX_PARAMS_TAGS], ts[MAX_PARAMS_TAGS:]
            room = MAX_ENTITIES - len(bp) - len(bt)
            bm, ms = ms[:room], ms[room:]
            self.client.log_batch(run_id, metrics=bm, params=bp, tags=bt)

    def log_params(self, run_id: str, params: dict) -> None:
        self.log_batch(run_id, params=params)

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        self.log_batch(run_id, metrics=_metrics(metrics, step))

    def set_tags(self, run_id: str, tags: dict) -> None:
        self.log_batch(run_id, tags=tags)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED", end_ms: int | None = None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_ms)


# MLflow's limits on one log_batch call (mlflow.utils.validation)
MAX_PARAMS_TAGS, MAX_ENTITIES = 100, 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(values: dict, step: int = 0, timestamp_ms: int | None = None) -> list:
    """Finite numbers of ``values`` as MLflow metrics (booleans, text and NaN are left out)."""
    from mlflow.entities import Metric

    now = _now_ms() if timestamp_ms is None else timestamp_ms
    return [Metric(str(k), float(v), now, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]


class TrialMirror:
    """The trials' child runs, written by one background thread of the driver.

    Trials never talk to MLflow: the driver hears of a trial's start and end from Ray Tune and queues
    what to write here (open the run; its metric trajectory, final metrics and status; KILLED for a
    stopped trial; parent metrics while the sweep runs), so a worker needs no MLflow client, no tracking
    server connection and no access to the sweep folder, and a slow tracking server never slows the
    sweep.  One thread is the only writer while trials run (the embedded sqlite store then never sees two
    writers).  Never raises: a failed write is one warning line, and Parquet already holds the trial.
    ``run_ids`` maps trial ids to their current run, filled as runs are created.

    Each write is a transaction of the tracking store (or a request to a server), so the writer makes few.
    A trial's run is opened (its tags, then its parameters) at most :data:`START_HOLD_S` after the trial
    started, and its end is one batch (metrics and tags) and the final status; a trial that ends within
    that time has its run opened finished (tags; parameters and metrics; status), with the start and end
    times the driver noted.  Parent metrics keep every step and are written at most once every
    :data:`PARENT_METRICS_EVERY_S` seconds.  :meth:`flush` writes everything held."""

    def __init__(self, sink: MlflowSink, parent_run_id: str, warn=None, sweep_params: dict | None = None):
        import queue
        import threading

        self.sink, self.parent_id = sink, parent_run_id
        self.sweep_params = dict(sweep_params or {})  # on every child run too, so runs filter by them
        self.run_ids: dict[str, str] = {}
        self._warn = warn or log.warning
        self._warned: set[str] = set()
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._parent: list = []  # parent metrics not written yet (see parent_metrics)
        self._parent_queued = False
        self._parent_at = -math.inf  # time.monotonic() of the last parent write
        self._parent_due = False  # metrics are waiting for PARENT_METRICS_EVERY_S to pass
        self._held: dict[str, tuple] = {}  # trial id -> (its start's arguments, time.monotonic() when held)
        self._running: set[str] = set()  # trial ids whose run this mirror opened RUNNING and has not closed
        self._thread = threading.Thread(target=self._loop, name="sweep-mlflow-mirror", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- queued (O(1) for the caller)
    def started(self, trial_id: str, name: str, params: dict, at_ms: int | None = None) -> None:
        """Open the trial's child run (tagged ``sweep.trial_id``), with its parameters; its start time is
        ``at_ms`` (default: now), however late the writer gets to it."""
        self._q.put((self._start, (trial_id, name, params, _now_ms() if at_ms is None else at_ms)))

    def finished(self, record, history: list | tuple = (), at_ms: int | None = None) -> None:
        """Close the trial's run with its record: ``history`` is ``(key, value, step, timestamp_ms)``
        tuples (the trajectory the method logged), then the final metrics; FINISHED, or FAILED with the
        error as a tag; its end time is ``at_ms`` (default: now).  A record whose run this mirror never opened
        (a sweep resumed after the driver died) takes the run an earlier driver opened for it, if any
        (completed if still open: see :meth:`_earlier_run`), or gets a new one."""
        self._q.put((self._finish, (record, list(history), _now_ms() if at_ms is None else at_ms)))

    def stopped(self, trial_ids, reason: str) -> None:
        """Close the runs of trials the driver stopped as KILLED, tagged ``sweep.stopped``."""
        self._q.put((self._stop, (list(trial_ids), reason)))

    def superseded(self, trial_ids) -> None:
        """Tag the runs of ``trial_ids`` ``sweep.superseded`` (another trial re-ran their configuration)."""
        self._q.put((self._supersede, (list(trial_ids),)))

    def remeasured(self, records) -> None:
        """Overwrite the latency metrics of these trials' runs with their figures re-measured alone (the
        ones the table, the front and the report use), tagged ``sweep.latency: re-measured alone``, or, for
        rows not timed again, put on the re-measured baseline's scale (tagged so)."""
        self._q.put((self._remeasured, (list(records),)))

    def parent_metrics(self, metrics: dict, step: int = 0) -> None:
        """Log the parent's metrics at ``step``; every step is kept, and the steps of a second (or of the
        time the writer is behind) go in one batch."""
        with self._lock:
            self._parent.extend(_metrics(metrics, step))
            if self._parent_queued:
                return
            self._parent_queued = True
        self._q.put((self._parent_metrics, (False,)))

    def orphaned(self, reason: str) -> None:
        """The driver is gone, and with it the ends of the trials still running: drop the starts still held
        (runs not opened yet) and close the runs opened for such trials as KILLED, tagged ``sweep.stopped``
        with ``reason``.  No run is left RUNNING; ``sweep resume`` runs those trials again, under runs of
        their own."""
        self._q.put((self._orphaned, (reason,)))

    def _orphaned(self, reason: str) -> None:
        self._held.clear()
        self._stop(sorted(self._running), reason)

    # ---------------------------------------------------------------- waiting
    def flush(self, timeout_s: float = 120.0, on_progress=None) -> bool:
        """Write everything queued, held starts and parent metrics included; False if some writes are still
        left after ``timeout_s`` in which none was done.  A backlog that is being written is waited for,
        however long (a sweep of thousands of trials on a busy machine, where the mirror writes last); one that
        stands still is not.  ``on_progress(left)``, if given, hears of each write done while it waits."""
        if not self._thread.is_alive():  # closed: nothing writes any more
            return self._q.unfinished_tasks == 0
        self._q.put((self._write_held, ()))
        deadline = time.monotonic() + timeout_s
        left = self._q.unfinished_tasks
        while True:
            with self._q.all_tasks_done:
                now = self._q.unfinished_tasks
                if now and now >= left:
                    wait = deadline - time.monotonic()
                    if wait > 0:
                        self._q.all_tasks_done.wait(min(wait, 1.0))
                        continue
            if not now:
                return True
            if now < left:  # written meanwhile: patience starts again
                left, deadline = now, time.monotonic() + timeout_s
                if on_progress is not None:
                    on_progress(left)
                continue
            self._warn(f"warning: {now} MLflow write(s) still queued and none written in {timeout_s:g} s; "
                       f"trials.parquet holds every trial regardless")
            return False

    def close(self, timeout_s: float = 120.0) -> None:
        self.flush(timeout_s)
        self._q.put(None)
        self._thread.join(timeout=5)

    # ---------------------------------------------------------------- the writer thread
    def _loop(self) -> None:
        import queue

        while True:
            due = [at + START_HOLD_S for _, at in self._held.values()]
            if self._parent_due:  # parent metrics wait for their second to pass
                due.append(self._parent_at + PARENT_METRICS_EVERY_S)
            wait = max(0.0, min(due) - time.monotonic()) if due else None
            try:
                batch = [self._q.get(timeout=wait)]
            except queue.Empty:
                self._write_held(due_only=True)
                continue
            while batch[-1] is not None:  # take what else is queued: a run's start and end may meet
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            pending = len(batch)
            try:
                for item in batch:
                    if item is not None:
                        self._take(*item)
                    self._q.task_done()  # one by one: a flush sees a long backlog move (its patience)
                    pending -= 1
                self._write_held(due_only=True)
            finally:
                for _ in range(pending):
                    self._q.task_done()
            if batch[-1] is None:
                return

    def _take(self, fn, args: tuple) -> None:
        """One queued write.  A new run's start is held (up to :data:`START_HOLD_S`) for its end, so that a
        short trial's run is opened finished; anything else that names a held trial writes its start first."""
        if fn == self._start and args[0] not in self.run_ids and args[0] not in self._held:
            self._held[args[0]] = (args, time.monotonic())
            return
        if fn == self._finish and args[0].trial_id in self._held:
            self._call(fn, (*args, self._held.pop(args[0].trial_id)[0]))
            return
        for tid in self._names(fn, args) & self._held.keys():
            self._call(self._start, self._held.pop(tid)[0])
        self._call(fn, args)

    def _write_held(self, due_only: bool = False) -> None:
        """Open the held runs (those held :data:`START_HOLD_S` already, with ``due_only``), then the parent
        metrics (if their second has passed, with ``due_only``)."""
        now = time.monotonic()
        for tid, (args, at) in list(self._held.items()):
            if not due_only or now - at >= START_HOLD_S:
                del self._held[tid]
                self._call(self._start, args)
        if not due_only or self._parent_due:
            self._call(self._parent_metrics, (not due_only,))

    def _names(self, fn, args: tuple) -> set:
        """The trial ids a queued write concerns."""
        if fn in (self._start, self._finish):
            return {args[0] if fn == self._start else args[0].trial_id}
        if fn in (self._stop, self._supersede):
            return set(args[0])
        if fn == self._remeasured:
            return {r.trial_id for r in args[0]}
        return set()

    def _call(self, fn, args: tuple) -> None:
        try:
            fn(*args)
        except Exception as e:  # tracking is a mirror: the Parquet row is already safe
            what = getattr(fn, "__name__", "write").strip("_")
            if what not in self._warned:  # one line per kind of write, not one per trial
                self._warned.add(what)
                self._warn(f"warning: MLflow {what} failed (trials.parquet holds every trial; "
                           f"further failures of this kind are not shown): {type(e).__name__}: {e}")

    def _parent_metrics(self, now: bool) -> None:
        with self._lock:
            self._parent_queued = False
            if not self._parent:
                self._parent_due = False
                return
            if not now and time.monotonic() - self._parent_at < PARENT_METRICS_EVERY_S:
                self._parent_due = True  # the loop comes back when the second has passed
                return
            batch, self._parent, self._parent_due = self._parent, [], False
        self._parent_at = time.monotonic()
        self.sink.log_batch(self.parent_id, metrics=batch)

    def _child_params(self, params: dict) -> dict:
        return {**self.sweep_params, **params}

    def _start(self, trial_id: str, name: str, params: dict, start_ms: int) -> None:
        if trial_id in self.run_ids:  # started again after its worker died: one run per trial, tagged
            self.sink.set_tags(self.run_ids[trial_id], {"sweep.restarted": "true"})
            return
        self.run_ids[trial_id] = self.sink.start_child(self.parent_id, name, self._child_params(params),
                                                       tags={"sweep.trial_id": trial_id}, start_ms=start_ms)
        self._running.add(trial_id)

    def _finish(self, rec, history: list, end_ms: int, opening: tuple | None = None) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(str(k), float(v), int(t), int(s)) for k, v, s, t in history
                   if isinstance(v, (int, float)) and math.isfinite(float(v))]
        measured = rec.status in ("ok", "stopped_early", "infeasible")  # measured outcomes: log what was measured
        if measured:
            metrics += _metrics({k: rec.get(k) for k in FINAL_METRICS}, timestamp_ms=end_ms)
        tags = {"sweep.node_id": rec.node_id, "sweep.host": rec.host, "sweep.latency_runtime": rec.latency_runtime}
        tags = {k: v for k, v in tags.items() if v}
        if measured and rec.status != "ok":
            tags.update({"sweep.status": rec.status, "sweep.reason": (rec.error or "")[:5000]})
        elif not measured:
            tags["error"] = (rec.error or "")[:5000]
        status = "FINISHED" if measured else "KILLED" if rec.status == "stopped" else "FAILED"
        run_id = self.run_ids.get(rec.trial_id)
        if run_id is None and opening is None:  # a record this mirror never saw start: a resumed sweep's
            run_id, complete = self._earlier_run(rec.trial_id, status, {m.key for m in metrics})
            if run_id is not None:
                self.run_ids[rec.trial_id] = run_id
                if complete:
                    return
        if run_id is None:  # opened now, finished: its start (queued, or the record's) and everything at once
            if opening is not None:
                _, name, params, start_ms = opening
            else:
                name = f"{rec.method}-{rec.trial_id}"
                params = {"method": rec.method, "seed": rec.seed, "trial_id": rec.trial_id, **rec.knobs}
                start_ms = int(rec.started_at.timestamp() * 1000) if rec.started_at else None
            run_id = self.run_ids[rec.trial_id] = self.sink.start_child(
                self.parent_id, name, self._child_params(params), tags={"sweep.trial_id": rec.trial_id, **tags},
                start_ms=start_ms, metrics=metrics)
        else:
            self.sink.log_batch(run_id, metrics=metrics, tags=tags)
        self.sink.end(run_id, status, end_ms=end_ms)
        self._running.discard(rec.trial_id)

    def _earlier_run(self, trial_id: str, status: str, metric_keys: set) -> tuple[str | None, bool]:
        """The run an earlier driver opened for this trial, and whether it is complete already (``status``, and
        every metric in ``metric_keys``): (None, False) when there is none.

        A driver that dies after the mirror wrote a trial's run but before the run's id reached
        ``trials.parquet`` (the table learns it at the next compaction) leaves the resumed sweep a finished
        row without a run id.  Its run is this trial's own (trial ids are unique, and a trial re-run after a
        kill gets a new one), so it is adopted -- completed if the driver died while it was open, left as it
        is if complete -- rather than doubled by a new run.  If there are several, the latest is kept and the
        others are tagged superseded."""
        runs = [r for r in self.sink.children(self.parent_id, trial_id=trial_id)
                if r.data.tags.get("sweep.superseded") != "true"]
        if not runs:
            return None, False
        runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
        for r in runs[:-1]:
            self.sink.set_tags(r.info.run_id, {"sweep.superseded": "true"})
        run = runs[-1]
        if "sweep.stopped" in run.data.tags:  # closed as KILLED by an exit path that did not know it finished
            self.sink.client.delete_tag(run.info.run_id, "sweep.stopped")
        return run.info.run_id, run.info.status == status and metric_keys <= set(run.data.metrics)

    def _remeasured(self, records: list) -> None:
        for r in records:
            run_id = r.mlflow_run_id or self.run_ids.get(r.trial_id)
            if run_id is None:
                continue
            self.sink.log_batch(run_id, metrics=_metrics({k: r.get(k) for k in ("latency_ms", "latency_iqr_ms",
                                                                               "latency_ratio")}, step=1),
                                tags={"sweep.latency": "re-measured alone" if r.latency_alone else
                                      "timed during the sweep, put on the re-measured baseline's scale",
                                      **({"sweep.latency_runtime": r.latency_runtime} if r.latency_runtime else {})})

    def _stop(self, trial_ids: list, reason: str) -> None:
        for tid in trial_ids:
            run_id = self.run_ids.get(tid)
            if run_id is not None:
                self.sink.set_tags(run_id, {"sweep.stopped": reason})
                self.sink.end(run_id, "KILLED")
                self._running.discard(tid)

    def _supersede(self, trial_ids: list) -> None:
        self.sink.supersede_trial_runs(self.parent_id, trial_ids)


# parent metrics (hypervolume, front size, trials done: one point per finished trial) are written at most
# this often; each write is a transaction of the tracking store, and a trial may take less than a second
PARENT_METRICS_EVERY_S = 1.0
# a trial's run is opened at most this long after the trial started (with the trial's start time): a trial
# that ends meanwhile has its run opened finished, which saves the store a transaction
START_HOLD_S = 2.0

# what a finished trial's run holds as metrics (its row holds these and more)
FINAL_METRICS = ("accuracy", "test_accuracy", "agreement", "nmi", "test_nmi", "params", "macs", "latency_ms",
                 "latency_iqr_ms", "params_ratio", "macs_ratio", "latency_ratio", "wall_s")
