"""The sweep driver: the only module that imports Ray.

``run_sweep`` = baseline -> Ray Tune with Optuna's multi-objective sampler (one Ray trial per sampled
configuration) -> rows upserted into ``trials.parquet`` by a callback in this process (the single
writer) -> front re-measured alone -> Pareto flags -> MLflow parent artefacts -> report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .config import SweepConfig, load_config
from .errors import SweepDirError
from .results.schema import BASELINE_ID
from .results.store import TrialStore
from .trial import TrialSpec, load_model, prepare_baseline, read_baseline, run_trial, trial_threads

CONFIG_FILE = "sweep.yaml"
STATE_FILE = "state.json"
RAY_DIR = "ray"
EXPERIMENT = "tune"
OBJECTIVE_MODES = {"accuracy": "max", "agreement": "max", "latency_ms": "min", "params": "min", "macs": "min"}


@dataclass
class SweepOutcome:
    sweep_dir: Path
    report_dir: Path | None
    rows: list[dict]
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
    return load_config(Path(sweep_dir) / CONFIG_FILE)


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
    row = run_trial(cfg, TrialSpec(sweep_dir, trial_id, method, knobs, seed), tracker)
    row["mlflow_run_id"] = tracker.run_id
    row["trial_number"] = number
    if row["status"] == "ok":
        tracker.log_metrics({k: row[k] for k in ("accuracy", "test_accuracy", "agreement", "params", "macs",
                                                 "latency_ms",
                                                 "latency_iqr_ms", "params_ratio", "macs_ratio",
                                                 "latency_ratio", "wall_s")})
        tracker.end("FINISHED")
    else:
        tracker.set_tags({"error": row["error"][:5000]})
        tracker.end("FAILED")
    metrics = {o: (float(row[o]) if row["status"] == "ok" else math.nan) for o in cfg.search.objectives}
    tune.report({**metrics, "row_json": json.dumps(row, default=str)})


# ------------------------------------------------------------------------------- driver side
def _front(rows: list[dict], objectives) -> list[dict]:
    """Set ``on_front`` on every row (ok rows with finite objectives only)."""
    import numpy as np

    from .pareto import non_dominated_mask, to_minimisation

    cand = [i for i, r in enumerate(rows) if r.get("status") == "ok"
            and all(r.get(o) is not None and math.isfinite(float(r[o])) for o in objectives)]
    for r in rows:
        r["on_front"] = False
    if cand:
        F = np.array([[float(rows[i][o]) for o in objectives] for i in cand])
        mask = non_dominated_mask(to_minimisation(F, [OBJECTIVE_MODES[o] for o in objectives]))
        for i, m in zip(cand, mask):
            rows[i]["on_front"] = bool(m)
    return rows


def _hypervolume(rows: list[dict], objectives, baseline: dict) -> float:
    import numpy as np

    from .pareto import sweep_hypervolume

    ok = [r for r in rows if r.get("status") == "ok" and r.get("trial_id") != BASELINE_ID]
    vals = {o: np.array([float(r[o]) for r in ok]) for o in objectives}
    return float(sweep_hypervolume(vals, list(objectives), baseline)) if ok else 0.0


def _meta(cfg: SweepConfig, baseline: dict) -> dict:
    return {"name": cfg.name, "objectives": list(cfg.search.objectives),
            "baseline": {k: baseline.get(k, 1.0) for k in ("accuracy", "test_accuracy", "agreement", "params", "macs",
                                                          "latency_ms")},
            "labels": cfg.labels, "quality": cfg.quality,
            "model": cfg.model.name, "dataset": cfg.dataset.name, "methods": [m.name for m in cfg.methods],
            "trials": cfg.search.trials}


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


def _upsert(st: _CallbackState, new_rows: list[dict]) -> list[dict]:
    rows, _ = st.store.read()
    by_id = {r["trial_id"]: r for r in rows}
    for r in new_rows:
        by_id[r["trial_id"]] = {**by_id.get(r["trial_id"], {}), **r}
    rows = _front(list(by_id.values()), st.cfg.search.objectives)
    st.store.write(rows, st.meta)
    return rows


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
            if "row_json" not in result:
                return
            st = _live_state()
            progress = st.progress
            row = json.loads(result["row_json"])
            rows = _upsert(st, [row])
            progress.running.discard(trial.trial_id)
            progress.done += 1
            progress.failed += row["status"] != "ok"
            progress.front = sum(1 for r in rows if r.get("on_front"))
            hv = _hypervolume(rows, st.cfg.search.objectives, st.meta["baseline"])
            if st.sink is not None:
                try:
                    st.sink.log_metrics(st.parent_id, {"hypervolume": hv, "front_size": progress.front,
                                                       "trials_done": progress.done}, step=progress.done)
                except Exception:
                    pass
            if row["status"] == "ok":
                agree = f" agree {row['agreement']:.4f}" if st.cfg.label_free else ""
                what = (f"{trial.trial_id} {row['method']} acc {row['accuracy']:.4f}{agree} "
                        f"lat {row['latency_ms']:.3f} ms params {row['params']:,}")
            else:
                what = f"{trial.trial_id} {row['method']} FAILED: {row['error'].splitlines()[0][:100]}"
            progress.line(what)

        def on_trial_error(self, iteration, trials, trial, **info):
            # the trainable catches trial errors itself; this is a crashed worker (e.g. killed for memory)
            st = _live_state()
            st.progress.running.discard(trial.trial_id)
            rows, _ = st.store.read()
            if any(r["trial_id"] == trial.trial_id and r["status"] != "stopped" for r in rows):
                return
            err = "worker crashed"
            try:
                err = f"worker crashed: {str(trial.get_error())[:2000]}"
            except Exception:
                pass
            _upsert(st, [{"sweep": st.cfg.name, "trial_id": trial.trial_id, "status": "failed", "error": err,
                          "method": trial.config.get("method"), "ended_at": time.time()}])
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


def _tuner(cfg: SweepConfig, sweep_dir: Path, tracking: dict, callback, restore: bool):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from .space import define_by_run, first_points, make_sampler

    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, sweep_dir=str(sweep_dir), tracking=tracking),
        {"cpu": cfg.search.cpus_per_trial})
    storage = str((sweep_dir / RAY_DIR).resolve())
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=storage, verbose=0, callbacks=[callback],
                                failure_config=tune.FailureConfig(max_failures=0))
    exp_path = Path(storage) / EXPERIMENT
    if restore and tune.Tuner.can_restore(str(exp_path)):
        return tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    searcher = OptunaSearch(
        space=define_by_run(cfg), metric=list(cfg.search.objectives),
        mode=[OBJECTIVE_MODES[o] for o in cfg.search.objectives],
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


def _remeasure(cfg: SweepConfig, sweep_dir: Path, rows: list[dict], log) -> list[dict]:
    """Latency taken while other trials shared the machine is noisy: re-measure it alone.

    ``measure.remeasure: all`` re-measures every ok trial (a noisy point may look dominated as easily
    as it may look good); ``front`` re-measures front members, recomputes the front and repeats for
    newcomers (at most 3 rounds); ``none`` keeps the figures taken during the sweep.
    """
    from .measure import measure_latency
    from .trial import load_splits

    objectives = list(cfg.search.objectives)
    if "latency_ms" not in objectives or cfg.measure.remeasure == "none":
        return _front(rows, objectives)
    splits = load_splits(cfg)
    base = next(r for r in rows if r["trial_id"] == BASELINE_ID)
    rounds = 1 if cfg.measure.remeasure == "all" else 3
    for _ in range(rounds):
        rows = _front(rows, objectives)
        todo = [r for r in rows if r.get("status") == "ok" and not r.get("latency_alone") and r.get("model_path")
                and (cfg.measure.remeasure == "all" or r.get("on_front"))]
        if not todo:
            break
        for r in sorted(todo, key=lambda r: not r.get("on_front")):
            model = load_model(sweep_dir, r["model_path"])
            lat = measure_latency(model, splits.input_shape, batch=cfg.measure.latency_batch,
                                  warmup=cfg.measure.warmup, repeats=cfg.measure.repeats,
                                  threads=trial_threads(cfg), device=cfg.measure.device)
            r.update(latency_ms=lat.median_ms, latency_iqr_ms=lat.iqr_ms, threads=lat.threads,
                     latency_alone=True)
        base_lat = base.get("latency_ms")
        if base_lat:
            for x in rows:
                if x.get("latency_ms") is not None:
                    x["latency_ratio"] = x["latency_ms"] / base_lat
        log(f"re-measured the latency of {len(todo)} trial(s) alone")
    return _front(rows, objectives)


def init_sweep_dir(cfg: SweepConfig, sweep_dir: Path) -> None:
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        if (sweep_dir / CONFIG_FILE).exists():
            raise SweepDirError(f"sweep folder already exists: {sweep_dir}; continue it with "
                                f"`sweep resume {sweep_dir}` or choose another --name/--out")
        raise SweepDirError(f"output folder is not empty and not a sweep folder: {sweep_dir}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    raw = dict(cfg.raw)
    raw["name"] = cfg.name
    if cfg.baseline.path:  # resolved, so that the copy works from anywhere
        b = raw.get("baseline")
        raw["baseline"] = {**(b if isinstance(b, dict) else {}), "path": cfg.baseline.path}
    (sweep_dir / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))


def load_sweep(sweep_dir: Path) -> tuple[SweepConfig, dict]:
    if not (sweep_dir / CONFIG_FILE).is_file():
        raise SweepDirError(f"not a sweep folder (no {CONFIG_FILE}): {sweep_dir}")
    cfg = load_config(sweep_dir / CONFIG_FILE)
    state = json.loads((sweep_dir / STATE_FILE).read_text()) if (sweep_dir / STATE_FILE).is_file() else {}
    return cfg, state


def run_sweep(cfg: SweepConfig, sweep_dir: Path, *, report_root: Path | None = Path("reports"),
              address: str | None = None, tracking_uri: str | None = None, resume: bool = False,
              log=print) -> SweepOutcome:
    from .results.mlflow_sink import MlflowSink, default_tracking_uri

    t0 = time.time()
    sweep_dir = sweep_dir.resolve()
    if not resume:
        init_sweep_dir(cfg, sweep_dir)
    state_path = sweep_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    uri = tracking_uri or state.get("tracking_uri") or default_tracking_uri(sweep_dir)
    experiment = state.get("experiment") or cfg.name
    sink = MlflowSink(uri, experiment, artifact_dir=sweep_dir / "mlartifacts")
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
        sink.log_artifact(parent_id, sweep_dir / CONFIG_FILE)
    state.update(tracking_uri=uri, experiment=experiment, parent_run_id=parent_id, name=cfg.name)
    _write_json(state_path, state)

    store = TrialStore(sweep_dir)
    rows, _ = store.read()
    if not any(r["trial_id"] == BASELINE_ID for r in rows) or not (sweep_dir / "baseline" / "model.pt").is_file():
        brow = prepare_baseline(cfg, sweep_dir, log=log)
        brow["mlflow_run_id"] = parent_id
        base = read_baseline(sweep_dir)
        meta = _meta(cfg, base)
        rows = [r for r in rows if r["trial_id"] != BASELINE_ID] + [brow]
        store.write(_front(rows, cfg.search.objectives), meta)
        sink.log_metrics(parent_id, {f"baseline_{k}": base[k] for k in
                                     ("accuracy", "test_accuracy", "params", "macs", "latency_ms")})
        log(f"baseline: accuracy {base['accuracy']:.4f} (val) · params {base['params']:,} · "
            f"MACs {base['macs']:,} · latency {base['latency_ms']:.3f} ms "
            f"(batch {cfg.measure.latency_batch}, {base['latency']['threads']} thread(s), {cfg.measure.device})")
    base = read_baseline(sweep_dir)
    meta = _meta(cfg, base)
    rows, _ = store.read()
    done = sum(1 for r in rows if r["trial_id"] != BASELINE_ID and r["status"] in ("ok", "failed"))
    progress = _Progress(cfg.search.trials, done, log)
    interrupted = False
    timing: dict = {}
    if done < cfg.search.trials:
        _ray_init(address, sweep_dir, None)
        _ACTIVE["sweep"] = _CallbackState(store, cfg, meta, progress, sink, parent_id)
        callback = _make_callback()
        tracking = {"uri": uri, "experiment": experiment, "parent_run_id": parent_id}
        tuner = _tuner(cfg, sweep_dir, tracking, callback, restore=resume)
        log(f"running {cfg.search.trials - done} trial(s), {cfg.search.concurrency} at a time "
            f"({cfg.search.sampler} sampler; objectives: {', '.join(cfg.search.objectives)})")
        fit_t0 = time.time()
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        fit_s = time.time() - fit_t0
        rows, _ = store.read()
        this_run = [r for r in rows if r["trial_id"] != BASELINE_ID and r.get("ended_at") is not None
                    and _epoch(r.get("started_at")) >= fit_t0 and r.get("wall_s")]
        timing = dict(fit_s=fit_s, trial_s=sum(r["wall_s"] for r in this_run), trials_run=len(this_run),
                      concurrency=cfg.search.concurrency)
        finished = sum(1 for r in rows if r["trial_id"] != BASELINE_ID and r["status"] in ("ok", "failed"))
        budget_hit = cfg.search.time_budget_s is not None and time.time() - t0 >= cfg.search.time_budget_s
        interrupted = interrupted or (finished < cfg.search.trials and not budget_hit)
        if interrupted:
            _mark_stopped(store, meta, progress.running, cfg)
            sink.close_stale_children(parent_id)
    rows, _ = store.read()
    if interrupted:
        sink.end(parent_id, "KILLED")
        log(f"interrupted: {progress.done} of {cfg.search.trials} trials finished and kept; "
            f"continue with `sweep resume {sweep_dir}`")
        return SweepOutcome(sweep_dir, None, rows, True, time.time() - t0, tracking_uri=uri, **timing)

    rows = _remeasure(cfg, sweep_dir, rows, log)
    store.write(rows, meta)
    report_dir = None
    if report_root is not None:
        from .report import build_report

        report_dir = Path(report_root) / cfg.name
        build_report(sweep_dir, report_dir)
    _log_parent_artifacts(sink, parent_id, sweep_dir, rows, cfg, base, report_dir)
    sink.end(parent_id, "FINISHED")
    return SweepOutcome(sweep_dir, report_dir, rows, False, time.time() - t0, tracking_uri=uri, **timing)


def _epoch(v) -> float:
    if v is None:
        return 0.0
    return v.timestamp() if hasattr(v, "timestamp") else float(v)


def _mark_stopped(store: TrialStore, meta: dict, running: set, cfg: SweepConfig) -> None:
    rows, _ = store.read()
    have = {r["trial_id"] for r in rows}
    new = [{"sweep": cfg.name, "trial_id": t, "status": "stopped", "error": "interrupted before it finished",
            "ended_at": time.time()} for t in running if t not in have]
    if new:
        rows = _front(rows + new, cfg.search.objectives)
        store.write(rows, meta)


def _log_parent_artifacts(sink, parent_id, sweep_dir: Path, rows, cfg, base, report_dir) -> None:
    import pandas as pd

    front = [r for r in rows if r.get("on_front")]
    tmp = Path(tempfile.mkdtemp(prefix="sweep-front-"))
    try:
        df = pd.DataFrame(front)
        df.to_csv(tmp / "front.csv", index=False)
        df.to_parquet(tmp / "front.parquet", index=False)
        sink.log_artifact(parent_id, tmp / "front.csv", "front")
        sink.log_artifact(parent_id, tmp / "front.parquet", "front")
        if report_dir is not None:
            for p in sorted(Path(report_dir).glob("*")):
                if p.is_file():
                    sink.log_artifact(parent_id, p, "report")
        hv = _hypervolume(rows, cfg.search.objectives, base)
        sink.log_metrics(parent_id, {"final_hypervolume": hv, "final_front_size": len(front)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
