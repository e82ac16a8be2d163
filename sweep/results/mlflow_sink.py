"""The MLflow mirror of a sweep: a parent run per sweep, a nested child run per trial.

Runs are addressed by id through ``MlflowClient`` (never the fluent "active run"), so the same code
works inside Ray workers and against an ``http://`` tracking server as well as the embedded sqlite
store.  Parquet stays the source of truth: a tracking failure inside a trial is logged, not fatal.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _client(uri: str):
    import os

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
        self.client = _client(tracking_uri)
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

    # ---------------------------------------------------------------- parent
    def start_parent(self, name: str, params: dict, tags: dict | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"sweep.role": "parent",
                                                                            **(tags or {})})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    # ---------------------------------------------------------------- children
    def start_child(self, parent_run_id: str, name: str, params: dict, tags: dict | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={PARENT_TAG: parent_run_id, "sweep.role": "trial", **(tags or {})})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def close_stale_children(self, parent_run_id: str) -> int:
        """Mark child runs left RUNNING by an interrupted sweep as KILLED; return how many."""
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                                                     f"and attributes.status = 'RUNNING'")
        for r in runs:
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
    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        ps = [Param(str(k), _param(v)) for k, v in params.items() if v is not None]
        for i in range(0, len(ps), 100):
            self.client.log_batch(run_id, params=ps[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(str(k), float(v), now, step) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(ms), 500):
            self.client.log_batch(run_id, metrics=ms[i:i + 500])

    def set_tags(self, run_id: str, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, _param(v))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


class TrialMirror:
    """The trials' child runs, written by one background thread of the driver.

    Trials never talk to MLflow: the driver hears of a trial's start and end from Ray Tune and queues
    what to write here (open the run; its metric trajectory, final metrics and status; KILLED for a
    stopped trial; parent metrics while the sweep runs), so a worker needs no MLflow client, no tracking
    server connection and no access to the sweep folder, and a slow tracking server never slows the
    sweep.  One thread is the only writer while trials run (the embedded sqlite store then never sees two
    writers).  Never raises: a failed write is one warning line, and Parquet already holds the trial.
    ``run_ids`` maps trial ids to their current run, filled as runs are created."""

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
        self._thread = threading.Thread(target=self._loop, name="sweep-mlflow-mirror", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- queued (O(1) for the caller)
    def started(self, trial_id: str, name: str, params: dict) -> None:
        """Open the trial's child run (tagged ``sweep.trial_id``), with its parameters."""
        self._q.put((self._start, (trial_id, name, params)))

    def finished(self, record, history: list | tuple = ()) -> None:
        """Close the trial's run with its record: ``history`` is ``(key, value, step, timestamp_ms)``
        tuples (the trajectory the method logged), then the final metrics; FINISHED, or FAILED with the
        error as a tag.  A record whose run was never opened (a sweep resumed after the driver died
        before writing it) gets one, and runs an earlier driver left for it are tagged superseded."""
        self._q.put((self._finish, (record, list(history))))

    def stopped(self, trial_ids, reason: str) -> None:
        """Close the runs of trials the driver stopped as KILLED, tagged ``sweep.stopped``."""
        self._q.put((self._stop, (list(trial_ids), reason)))

    def superseded(self, trial_ids) -> None:
        """Tag the runs of ``trial_ids`` ``sweep.superseded`` (another trial re-ran their configuration)."""
        self._q.put((self.sink.supersede_trial_runs, (self.parent_id, list(trial_ids))))

    def remeasured(self, records) -> None:
        """Overwrite the latency metrics of these trials' runs with their figures re-measured alone (the
        ones the table, the front and the report use), tagged ``sweep.latency: re-measured alone``."""
        self._q.put((self._remeasured, (list(records),)))

    def parent_metrics(self, metrics: dict, step: int = 0) -> None:
        """Log the parent's metrics at ``step``; steps queued while the writer is behind go in one batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self._parent.extend(Metric(str(k), float(v), now, step) for k, v in metrics.items()
                                if isinstance(v, (int, float)) and math.isfinite(float(v)))
            if self._parent_queued:
                return
            self._parent_queued = True
        self._q.put((self._parent_metrics, ()))

    # ---------------------------------------------------------------- waiting
    def flush(self, timeout_s: float = 120.0) -> bool:
        """Wait until every queued write is done (at most ``timeout_s``); False if some are still left."""
        deadline = time.monotonic() + timeout_s
        with self._q.all_tasks_done:
            while self._q.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._warn(f"warning: {self._q.unfinished_tasks} MLflow write(s) still queued after "
                               f"{timeout_s:g} s; trials.parquet holds every trial regardless")
                    return False
                self._q.all_tasks_done.wait(left)
        return True

    def close(self, timeout_s: float = 120.0) -> None:
        self.flush(timeout_s)
        self._q.put(None)
        self._thread.join(timeout=5)

    # ---------------------------------------------------------------- the writer thread
    def _loop(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                fn, args = item
                try:
                    fn(*args)
                except Exception as e:  # tracking is a mirror: the Parquet row is already safe
                    what = getattr(fn, "__name__", "write").strip("_")
                    if what not in self._warned:  # one line per kind of write, not one per trial
                        self._warned.add(what)
                        self._warn(f"warning: MLflow {what} failed (trials.parquet holds every trial; "
                                   f"further failures of this kind are not shown): {type(e).__name__}: {e}")
            finally:
                self._q.task_done()

    def _parent_metrics(self) -> None:
        with self._lock:
            batch, self._parent, self._parent_queued = self._parent, [], False
        for i in range(0, len(batch), 500):
            self.sink.client.log_batch(self.parent_id, metrics=batch[i:i + 500])

    def _start(self, trial_id: str, name: str, params: dict) -> None:
        if trial_id in self.run_ids:  # started again after its worker died: one run per trial, tagged
            self.sink.set_tags(self.run_ids[trial_id], {"sweep.restarted": "true"})
            return
        self.run_ids[trial_id] = self.sink.start_child(self.parent_id, name, {**self.sweep_params, **params},
                                                       tags={"sweep.trial_id": trial_id})

    def _finish(self, rec, history: list) -> None:
        from mlflow.entities import Metric

        run_id = self.run_ids.get(rec.trial_id)
        if run_id is None:
            for r in self.sink.children(self.parent_id, trial_id=rec.trial_id):
                self.sink.set_tags(r.info.run_id, {"sweep.superseded": "true"})
            run_id = self.run_ids[rec.trial_id] = self.sink.start_child(
                self.parent_id, f"{rec.method}-{rec.trial_id}",
                {**self.sweep_params, "method": rec.method, "seed": rec.seed, "trial_id": rec.trial_id, **rec.knobs},
                tags={"sweep.trial_id": rec.trial_id})
        ms = [Metric(str(k), float(v), int(t), int(s)) for k, v, s, t in history
              if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(ms), 500):
            self.sink.client.log_batch(run_id, metrics=ms[i:i + 500])
        tags = {"sweep.node_id": rec.node_id, "sweep.host": rec.host, "sweep.latency_runtime": rec.latency_runtime}
        if any(tags.values()):
            self.sink.set_tags(run_id, {k: v for k, v in tags.items() if v})
        if rec.status in ("ok", "stopped_early", "infeasible"):  # measured outcomes (log what was measured)
            self.sink.log_metrics(run_id, {k: rec.get(k) for k in FINAL_METRICS})
            if rec.status != "ok":
                self.sink.set_tags(run_id, {"sweep.status": rec.status, "sweep.reason": (rec.error or "")[:5000]})
            self.sink.end(run_id, "FINISHED")
        else:
            self.sink.set_tags(run_id, {"error": (rec.error or "")[:5000]})
            self.sink.end(run_id, "KILLED" if rec.status == "stopped" else "FAILED")

    def _remeasured(self, records: list) -> None:
        for r in records:
            run_id = r.mlflow_run_id or self.run_ids.get(r.trial_id)
            if run_id is None:
                continue
            self.sink.log_metrics(run_id, {k: r.get(k) for k in ("latency_ms", "latency_iqr_ms", "latency_ratio")},
                                  step=1)
            self.sink.set_tags(run_id, {"sweep.latency": "re-measured alone",
                                        **({"sweep.latency_runtime": r.latency_runtime} if r.latency_runtime else {})})

    def _stop(self, trial_ids: list, reason: str) -> None:
        for tid in trial_ids:
            run_id = self.run_ids.get(tid)
            if run_id is not None:
                self.sink.set_tags(run_id, {"sweep.stopped": reason})
                self.sink.end(run_id, "KILLED")


# what a finished trial's run holds as metrics (its row holds these and more)
FINAL_METRICS = ("accuracy", "test_accuracy", "agreement", "params", "macs", "latency_ms", "latency_iqr_ms",
                 "params_ratio", "macs_ratio", "latency_ratio", "wall_s")
