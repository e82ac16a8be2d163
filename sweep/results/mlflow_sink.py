"""The MLflow mirror of a sweep: a parent run per sweep, a nested child run per trial.

Runs are addressed by id through ``MlflowClient`` (never the fluent "active run"), so the same code
works inside Ray workers and against an ``http://`` tracking server as well as the embedded sqlite
store.  Parquet stays the source of truth: a tracking failure inside a trial is logged, not fatal.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"


def _client(uri: str):
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
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


class TrialTracker:
    """What a trial (and the method inside it) logs to: one child run. Never raises."""

    def __init__(self, sink: MlflowSink | None, run_id: str | None):
        self.sink, self.run_id = sink, run_id

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, parent_run_id: str, name: str, params: dict,
              trial_id: str | None = None):
        """Create the trial's child run. Earlier runs of the same trial (a trial re-run after an
        interruption) are marked superseded, so each trial has one current run."""
        try:
            sink = MlflowSink(tracking_uri, experiment)
            if trial_id is not None:
                for r in sink.children(parent_run_id, trial_id=trial_id):
                    sink.set_tags(r.info.run_id, {"sweep.superseded": "true"})
                    if r.info.status != "KILLED":
                        sink.end(r.info.run_id, "KILLED")
            tags = {"sweep.trial_id": trial_id} if trial_id is not None else None
            return cls(sink, sink.start_child(parent_run_id, name, params, tags=tags))
        except Exception as e:  # tracking must never cost a result
            log.warning("MLflow child run not created (%s); results still go to Parquet", e)
            return cls(None, None)

    def _safe(self, fn, *a) -> None:
        if self.sink is None:
            return
        try:
            fn(*a)
        except Exception as e:
            log.warning("MLflow logging failed: %s", e)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self._safe(self.sink and self.sink.log_metrics, self.run_id, {key: value}, step)

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        self._safe(self.sink and self.sink.log_metrics, self.run_id, metrics, step)

    def set_tags(self, tags: dict) -> None:
        self._safe(self.sink and self.sink.set_tags, self.run_id, tags)

    def end(self, status: str) -> None:
        self._safe(self.sink and self.sink.end, self.run_id, status)
