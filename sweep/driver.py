"""The sweep driver: the only module that imports Ray.

``run_sweep`` = baseline -> Ray Tune with Optuna's multi-objective sampler (one Ray trial per sampled
configuration) -> records upserted into ``trials.parquet`` by a callback in this process (the single
writer) -> front re-measured alone -> Pareto flags -> MLflow parent artefacts -> report.
The sweep folder's layout belongs to :mod:`sweep.folder`; the front to :func:`sweep.pareto.front_flags`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .config import SweepConfig
from .folder import SweepFolder, report_dir, sweep_meta
from .pareto import DIRECTIONS
from .results.schema import TrialRecord, with_front
from .results.store import TrialStore, replace_by_id
from .trial import TrialSpec, load_splits, prepare_baseline, run_trial, trial_threads

EXPERIMENT = "tune"


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


# ------------------------------------------------------------------------------- trainable (Ray worker)
@lru_cache(maxsize=4)
def _worker_config(sweep_dir: str) -> SweepConfig:
    return SweepFolder(Path(sweep_dir)).config()


def _trial_seed(base_seed: int, number: int | None, trial_id: str) -> int:
    """Seed of a trial: the sweep seed and the trial's index, so a re-run sweep repeats itself."""
    import zlib

    index = number if number is not None else zlib.crc32(trial_id.encode()) % 100_000
    return base_seed * 100_003 + int(index)


def sweep_trial(config: dict, sweep_dir: str, tracking: dict) -> None:
    """The Ray Tune trainable: one trial, reported once."""
    from ray import tune

    from .results.mlflow_sink import TrialTracker
    from .space import TRIAL_NUMBER, knobs_from_config

    cfg = _worker_config(sweep_dir)
    trial_id = tune.get_context().get_trial_id()
    method, knobs = knobs_from_config(config)
    number = config.get(TRIAL_NUMBER)
    seed = _trial_seed(cfg.seed, number, trial_id)
    tracker = TrialTracker.start(tracking["uri"], tracking["experiment"], tracking["parent_run_id"],
                                 f"{method}-{trial_id}", {"method": method, "seed": seed, "trial_id": trial_id,
                                                          **knobs}, trial_id=trial_id)
    rec = run_trial(cfg, TrialSpec(sweep_dir, trial_id, method, knobs, seed), tracker, trial_number=number)
    if rec.status == "ok":
        tracker.log_metrics({k: getattr(rec, k) for k in ("accuracy", "test_accuracy", "agreement", "params", "macs",
                                                          "latency_ms", "latency_iqr_ms", "params_ratio",
                                                          "macs_ratio", "latency_ratio", "wall_s")})
        tracker.end("FINISHED")
    else:
        tracker.set_tags({"error": rec.error[:5000]})
        tracker.end("FAILED")
    metrics = {o: (float(getattr(rec, o)) if rec.status == "ok" else math.nan) for o in cfg.search.objectives}
    tune.report({**metrics, "record_json": rec.to_json()})


# ------------------------------------------------------------------------------- driver side
def _hypervolume(records: list[TrialRecord], objectives, baseline: dict) -> float:
    """The sweep's hypervolume over every ok record, the dense baseline included (see README: Pareto front)."""
    import numpy as np

    from .pareto import sweep_hypervolume

    ok = [r for r in records if r.status == "ok"]
    vals = {o: np.array([float(r.get(o, math.nan)) for r in ok]) for o in objectives}
    return float(sweep_hypervolume(vals, list(objectives), baseline)) if ok else 0.0


class _Progress:
    """One readable line per event instead of Ray's tables: done/total, running, failed, ETA, front."""

    def __init__(self, total: int, already_done: int, log):
        self.total, self.done0, self.log = total, already_done, log
        self.t0 = time.time()
        self.done = already_done
        self.failed = 0
        self.running: set[str] = set()
        self.front = 0
        self.last_print = 0.0

    def line(self, extra: str = "") -> None:
        el = time.time() - self.t0
        new = self.done - self.done0
        left = self.total - self.done
        eta = (el / new * left) if new else float("nan")
        eta_s = _hms(eta) if math.isfinite(eta) else "?"
        msg = (f"[{self.done:>3}/{self.total}] running {len(self.running)} · failed {self.failed} · "
               f"elapsed {_hms(el)} · ETA {eta_s} · front {self.front}")
        self.log(msg + (f" · {extra}" if extra else ""))
        self.last_print = time.time()


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


# The callback object is pickled into Ray's experiment state and unpickled by `Tuner.restore`; it
# must hold no state of its own, or a resumed sweep would report into the interrupted process's
# objects.  It looks the live state up here instead.
_ACTIVE: dict[str, _CallbackState] = {}


def _upsert(st: _CallbackState, new: list[TrialRecord]) -> list[TrialRecord]:
    records, _ = st.store.records()
    records = with_front(replace_by_id(records, new), st.cfg.search.objectives)
    st.store.write(records, st.meta)
    return records


def _live_state() -> _CallbackState:
    # resolved through the module at call time: a by-value copy of `_ACTIVE` would be stale
    import sweep.driver as driver

    return driver._ACTIVE["sweep"]


def _make_callback():
    from ray.tune import Callback

    class SweepCallback(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            _live_state().progress.running.add(trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "record_json" not in result:
                return
            st = _live_state()
            progress = st.progress
            rec = TrialRecord.from_json(result["record_json"])
            records = _upsert(st, [rec])
            progress.running.discard(trial.trial_id)
            progress.done += 1
            progress.failed += rec.status != "ok"
            progress.front = sum(1 for r in records if r.on_front)
            hv = _hypervolume(records, st.cfg.search.objectives, st.meta["baseline"])
            if st.sink is not None:
                try:
                    st.sink.log_metrics(st.parent_id, {"hypervolume": hv, "front_size": progress.front,
                                                       "trials_done": progress.done}, step=progress.done)
                except Exception as e:  # tracking is a mirror: the Parquet row is already safe
                    progress.log(f"warning: MLflow logging of the hypervolume failed: {type(e).__name__}: {e}")
            if rec.status == "ok":
                agree = f" agree {rec.agreement:.4f}" if st.cfg.label_free else ""
                what = (f"{trial.trial_id} {rec.method} acc {rec.accuracy:.4f}{agree} "
                        f"lat {rec.latency_ms:.3f} ms params {rec.params:,}")
            else:
                what = f"{trial.trial_id} {rec.method} FAILED: {rec.error.splitlines()[0][:100]}"
            progress.line(what)

        def on_trial_error(self, iteration, trials, trial, **info):
            # the trainable catches trial errors itself; this is a crashed worker (e.g. killed for memory)
            st = _live_state()
            st.progress.running.discard(trial.trial_id)
            records, _ = st.store.records()
            if any(r.trial_id == trial.trial_id and r.status != "stopped" for r in records):
                return
            try:
                err = f"worker crashed: {str(trial.get_error())[:2000]}"
            except Exception as e:  # the error itself could not be read back from Ray
                err = f"worker crashed (its error could not be read: {type(e).__name__})"
            _upsert(st, [TrialRecord.unfinished(st.cfg.name, trial.trial_id, "failed", err,
                                                method=trial.config.get("method"), ended_at=time.time())])
            st.progress.done += 1
            st.progress.failed += 1
            st.progress.line(f"{trial.trial_id} FAILED: {err[:100]}")

        def on_step_end(self, iteration, trials, **info):
            progress = _live_state().progress
            if time.time() - progress.last_print > 30:
                progress.line()

    return SweepCallback()


def _ray_init(address: str | None, sweep_dir: Path, cpus: int | None):
    import logging

    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        return
    # embedded local Ray: no token auth, and session files in a short private temp folder
    # (unix socket paths are limited to ~107 characters, too short for most sweep folders)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    tmp = tempfile.mkdtemp(prefix="sweep-ray-")
    ray.init(num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, _temp_dir=tmp, configure_logging=True)


def _tuner(cfg: SweepConfig, folder: SweepFolder, tracking: dict, callback, restore: bool):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from .space import define_by_run, first_points, make_sampler

    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, sweep_dir=str(folder.path), tracking=tracking),
        {"cpu": cfg.search.cpus_per_trial})
    storage = str(folder.ray_dir)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=storage, verbose=0, callbacks=[callback],
                                failure_config=tune.FailureConfig(max_failures=0))
    exp_path = Path(storage) / EXPERIMENT
    if restore and tune.Tuner.can_restore(str(exp_path)):
        return tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    searcher = OptunaSearch(
        space=define_by_run(cfg), metric=list(cfg.search.objectives),
        mode=[DIRECTIONS[o] for o in cfg.search.objectives],
        sampler=make_sampler(cfg.search.sampler, seed=cfg.seed, n_trials=cfg.search.trials),
        points_to_evaluate=first_points(cfg) or None,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=cfg.search.trials,
                                    max_concurrent_trials=cfg.search.concurrency, reuse_actors=True,
                                    time_budget_s=cfg.search.time_budget_s),
        run_config=run_config,
    )


def _remeasure(cfg: SweepConfig, folder: SweepFolder, records: list[TrialRecord], log) -> list[TrialRecord]:
    """Latency taken while other trials shared the machine is noisy: re-measure it alone.

    ``measure.remeasure: all`` re-measures every ok trial (a noisy point may look dominated as easily
    as it may look good); ``front`` re-measures front members, recomputes the front and repeats for
    newcomers (at most 3 rounds); ``none`` keeps the figures taken during the sweep.
    """
    from .measure import measure_latency

    objectives = list(cfg.search.objectives)
    if "latency_ms" not in objectives or cfg.measure.remeasure == "none":
        return with_front(records, objectives)
    splits = load_splits(cfg)
    base_lat = next(r for r in records if r.is_baseline).latency_ms
    rounds = 1 if cfg.measure.remeasure == "all" else 3
    for _ in range(rounds):
        records = with_front(records, objectives)
        todo = {r.trial_id for r in records if r.status == "ok" and not r.latency_alone and r.model_path
                and (cfg.measure.remeasure == "all" or r.on_front)}
        if not todo:
            break
        fresh = {}
        for r in sorted((r for r in records if r.trial_id in todo), key=lambda r: not r.on_front):
            lat = measure_latency(folder.load_model(r.model_path), splits.input_shape,
                                  batch=cfg.measure.latency_batch, warmup=cfg.measure.warmup,
                                  repeats=cfg.measure.repeats, threads=trial_threads(cfg), device=cfg.measure.device)
            fresh[r.trial_id] = dict(latency_ms=lat.median_ms, latency_iqr_ms=lat.iqr_ms, threads=lat.threads,
                                     latency_alone=True)
        records = [r.replace(**fresh[r.trial_id]) if r.trial_id in fresh else r for r in records]
        if base_lat:
            records = [r.replace(latency_ratio=r.latency_ms / base_lat) if r.latency_ms is not None else r
                       for r in records]
        log(f"re-measured the latency of {len(todo)} trial(s) alone")
    return with_front(records, objectives)


def run_sweep(cfg: SweepConfig, sweep_dir: Path, *, report_root: Path | None = Path("reports"),
              address: str | None = None, tracking_uri: str | None = None, resume: bool = False,
              log=print) -> SweepOutcome:
    from .results.mlflow_sink import MlflowSink

    t0 = time.time()
    folder = SweepFolder(sweep_dir)
    if not resume:
        folder.create(cfg)
    state = folder.state()
    uri = tracking_uri or state.get("tracking_uri") or folder.default_tracking_uri
    experiment = state.get("experiment") or cfg.name
    sink = MlflowSink(uri, experiment, artifact_dir=folder.artifacts_dir)
    parent_id = state.get("parent_run_id")
    if parent_id:
        n = sink.close_stale_children(parent_id)
        if n:
            log(f"closed {n} MLflow run(s) left RUNNING by the interruption as KILLED")
        sink.reopen(parent_id)
    else:
        parent_id = sink.start_parent(cfg.name, {
            "model": cfg.model.name, "dataset": cfg.dataset.name, "trials": cfg.search.trials,
            "concurrency": cfg.search.concurrency, "sampler": cfg.search.sampler,
            "objectives": ",".join(cfg.search.objectives), "methods": ",".join(m.name for m in cfg.methods),
            "finetune_epochs": cfg.finetune.epochs, "seed": cfg.seed})
        sink.log_artifact(parent_id, folder.config_path)
    state.update(tracking_uri=uri, experiment=experiment, parent_run_id=parent_id, name=cfg.name)
    folder.write_state(state)

    store = folder.store
    records, _ = store.records()
    if not any(r.is_baseline for r in records) or not folder.has_baseline():
        brec = prepare_baseline(cfg, folder, log=log).replace(mlflow_run_id=parent_id)
        base = folder.baseline()
        records = with_front([r for r in records if not r.is_baseline] + [brec], cfg.search.objectives)
        store.write(records, sweep_meta(cfg, base))
        sink.log_metrics(parent_id, {f"baseline_{k}": base[k] for k in
                                     ("accuracy", "test_accuracy", "params", "macs", "latency_ms")})
        log(f"baseline: accuracy {base['accuracy']:.4f} (val) · params {base['params']:,} · "
            f"MACs {base['macs']:,} · latency {base['latency_ms']:.3f} ms "
            f"(batch {cfg.measure.latency_batch}, {base['latency']['threads']} thread(s), {cfg.measure.device})")
    base = folder.baseline()
    meta = sweep_meta(cfg, base)
    records, _ = store.records()
    done = sum(1 for r in records if not r.is_baseline and r.status in ("ok", "failed"))
    progress = _Progress(cfg.search.trials, done, log)
    interrupted = False
    timing: dict = {}
    if done < cfg.search.trials:
        _ray_init(address, folder.path, None)
        _ACTIVE["sweep"] = _CallbackState(store, cfg, meta, progress, sink, parent_id)
        callback = _make_callback()
        tracking = {"uri": uri, "experiment": experiment, "parent_run_id": parent_id}
        tuner = _tuner(cfg, folder, tracking, callback, restore=resume)
        log(f"running {cfg.search.trials - done} trial(s), {cfg.search.concurrency} at a time "
            f"({cfg.search.sampler} sampler; objectives: {', '.join(cfg.search.objectives)})")
        fit_t0 = time.time()
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        fit_s = time.time() - fit_t0
        records, _ = store.records()
        this_run = [r for r in records if not r.is_baseline and r.ended_at is not None and r.wall_s
                    and r.started_at is not None and r.started_at.timestamp() >= fit_t0]
        timing = dict(fit_s=fit_s, trial_s=sum(r.wall_s for r in this_run), trials_run=len(this_run),
                      concurrency=cfg.search.concurrency)
        finished = sum(1 for r in records if not r.is_baseline and r.status in ("ok", "failed"))
        budget_hit = cfg.search.time_budget_s is not None and time.time() - t0 >= cfg.search.time_budget_s
        interrupted = interrupted or (finished < cfg.search.trials and not budget_hit)
        if interrupted:
            _mark_stopped(store, meta, progress.running, cfg)
            sink.close_stale_children(parent_id)
    records, _ = store.records()
    if interrupted:
        sink.end(parent_id, "KILLED")
        log(f"interrupted: {progress.done} of {cfg.search.trials} trials finished and kept; "
            f"continue with `sweep resume {folder.path}`")
        return SweepOutcome(folder.path, None, records, True, time.time() - t0, tracking_uri=uri, **timing)

    records = _remeasure(cfg, folder, records, log)
    store.write(records, meta)
    out_dir = None
    if report_root is not None:
        from .report import build_report

        out_dir = report_dir(cfg.name, report_root)
        build_report(folder.path, out_dir)
    _log_parent_artifacts(sink, parent_id, records, cfg, base, out_dir)
    sink.end(parent_id, "FINISHED")
    return SweepOutcome(folder.path, out_dir, records, False, time.time() - t0, tracking_uri=uri, **timing)


def _mark_stopped(store: TrialStore, meta: dict, running: set, cfg: SweepConfig) -> None:
    records, _ = store.records()
    have = {r.trial_id for r in records}
    new = [TrialRecord.unfinished(cfg.name, t, "stopped", "interrupted before it finished", ended_at=time.time())
           for t in running if t not in have]
    if new:
        store.write(with_front(records + new, cfg.search.objectives), meta)


def _log_parent_artifacts(sink, parent_id, records: list[TrialRecord], cfg, base, out_dir) -> None:
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
        sink.log_metrics(parent_id, {"final_hypervolume": hv, "final_front_size": len(front)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
