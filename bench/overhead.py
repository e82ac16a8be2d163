"""Orchestration overhead per trial: `sweep` vs raw Ray Tune + OptunaSearch, measured side by side.

1. ours: the search space (default: the shipped quickstart, digits + small CNN + magnitude) runs through
   ``sweep.driver.run_sweep`` (``--via api``, default) or ``sweep run`` in a subprocess (``--via cli``), in
   a temporary sweep folder, no report.  The outcome gives ``fit_s`` (wall of the Ray Tune part),
   ``trial_s`` (summed ``wall_s`` of the trials) and ``trials_run``; the rows give each trial's ``wall_s``.
2. raw: on a freshly started local Ray (same ``ray.init`` settings and Tune environment as sweep's
   embedded one), plain ``tune.Tuner`` + ``OptunaSearch`` (the same Optuna sampler as the space, same
   objectives and directions), the same number of trials and concurrency, ``reuse_actors=True``; trial i
   sleeps for our trial i's measured ``wall_s`` (``time.sleep``: equally long, but idle, so it leaves the
   CPUs to the driver, which our trials do not) and reports made-up objective values.

Overhead per trial, for both, as ``sweep run`` prints it (``sweep.driver.overhead_per_trial``):

    slot  = (fit_s * concurrency - sum(trial wall_s)) / trials     slot-seconds each trial costs beyond its own work
    wall  = (fit_s - sum(trial wall_s) / concurrency) / trials     = slot / concurrency: sweep seconds added per trial

The last line reports ``wall``: ``(sweep wall - sum(trial wall) / concurrency) / trials``, with the sweep's
wall taken over its Ray Tune part (``fit_s``, both runs alike); the table gives ``slot`` too
(``concurrency`` times larger; ``sweep run`` prints both).  A breakdown from the trials' own
timestamps follows: per concurrency slot, the gap between Tune starting and a slot's first trial (worker
start-up, imports, dataset load, MLflow client) and between consecutive trials of one slot (driver
callback, searcher, scheduling, per-trial MLflow run set-up); for ours also the wall_s of each worker's
first trial against the others, the MLflow child run's time before the trial body starts and after it
ends (read from the sweep's MLflow store), and a fresh interpreter timing what a new worker imports.

    python bench/overhead.py                       # quickstart, 12 trials, 2 at a time
    python bench/overhead.py --trials 24 --concurrency 2 --space search_spaces/quickstart.yaml
    python bench/overhead.py --py-spy /tmp/ours.txt   # also sample the driver and its Ray workers with py-spy
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES_DIR = {"accuracy": "max", "agreement": "max", "latency_ms": "min", "params": "min", "macs": "min"}

# the Tune settings sweep's driver sets for itself (sweep/driver.py::_ray_init); the raw run gets the same
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0", "RAY_DEDUP_LOGS": "0"}


# ------------------------------------------------------------------------------------------ helpers
def load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def quiet() -> None:
    """The quieting `sweep run` does (sweep/cli.py::_quiet_libraries), without importing it."""
    import warnings

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic", "ray", "ray.tune", "optuna", "torch_pruning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    except Exception:
        pass


def optuna_sampler(name: str, seed: int, n_trials: int):
    """The Optuna sampler a space names, built by sweep's own function (the raw run uses the same one)."""
    from sweep.space import make_sampler

    return make_sampler(name, seed=seed, n_trials=n_trials)


def overhead(fit_s: float, trial_s: float, n: int, c: int) -> tuple[float, float]:
    """(slot, wall) overhead per trial; see the module docstring (sweep's own function, which ``sweep run``
    prints)."""
    from sweep.driver import overhead_per_trial

    wall, slot = overhead_per_trial(fit_s, trial_s, n, c)
    return slot, wall


def slot_gaps(spans: list[tuple[float, float]], c: int, t0: float | None,
              t_end: float | None = None) -> tuple[list[float], list[float], list[float]]:
    """(first gaps, later gaps, tails) of trials ``(start, end)`` laid on ``c`` slots.

    First gap: from ``t0`` (Tune started) to the first trial of a slot.  Later gap: from the end of one
    trial to the start of the next trial in the same slot (the slot whose last end is the latest one at
    or before the start).  Tail: from a slot's last trial end to ``t_end`` (Tune returned)."""
    slots: list[float] = []
    first, later = [], []
    for s, e in sorted(spans):
        free = [i for i, end in enumerate(slots) if end <= s + 1e-3]
        if len(slots) < c and not free:
            if t0 is not None:
                first.append(s - t0)
            slots.append(e)
            continue
        if not free:  # overlapping more than c (clock skew between processes): use the earliest end
            free = [min(range(len(slots)), key=lambda i: slots[i])]
        i = max(free, key=lambda j: slots[j])
        later.append(s - slots[i])
        slots[i] = e
    tails = [t_end - e for e in slots] if t_end is not None else []
    return first, later, tails


def fmt_stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"median {statistics.median(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f}, n {len(xs)})"


def ts(x) -> float | None:
    if x is None:
        return None
    return x.timestamp() if hasattr(x, "timestamp") else float(x)


def store_records(folder: Path):
    """Every trial's record (``trials.parquet`` and ``trials.journal/`` merged)."""
    from sweep.results.store import TrialStore

    records, _ = TrialStore(folder).records()
    return [r for r in records if r.trial_id != "baseline"]


def mlflow_edges(folder: Path, records) -> tuple[list[float], list[float]]:
    """Per trial: (row started_at - MLflow child run start, MLflow run end - row ended_at), in seconds."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        exps = client.search_experiments()
        runs = client.search_runs([e.experiment_id for e in exps], max_results=50000)
    except Exception as e:
        print(f"# (MLflow breakdown unavailable: {type(e).__name__}: {e})")
        return [], []
    by_id = {r.data.tags.get("sweep.trial_id"): r for r in runs if r.data.tags.get("sweep.trial_id")}
    before, after = [], []
    for rec in records:
        run = by_id.get(rec.trial_id)
        if run is None or rec.started_at is None or rec.ended_at is None:
            continue
        before.append(ts(rec.started_at) - run.info.start_time / 1000)
        if run.info.end_time:
            after.append(run.info.end_time / 1000 - ts(rec.ended_at))
    return before, after


class PySpy:
    """py-spy record of this process and its children (the local Ray and its workers), if asked."""

    def __init__(self, out: str | None, rate: int = 50):
        self.proc = None
        if not out:
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            print(f"# py-spy not found ({exe}); `pip install py-spy` into the venv to profile")
            return
        self.proc = subprocess.Popen([exe, "record", "--pid", str(os.getpid()), "--subprocesses", "--idle",
                                      "--nonblocking", "--rate", str(rate), "--format", "raw", "-o", out],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ------------------------------------------------------------------------------------------ ours
def run_ours_api(cfg, work: Path, spy: PySpy | None = None) -> dict:
    from sweep.driver import run_sweep

    folder = work / "ours"
    stamps: list[tuple[float, str]] = []

    def log(msg: str) -> None:
        stamps.append((time.time(), msg))
        print(f"  | {msg}", file=sys.stderr, flush=True)

    t0 = time.time()
    outcome = run_sweep(cfg, folder, report_root=None, log=log)
    wall = time.time() - t0
    if spy is not None:
        spy.stop()
    fit_t0 = next((t for t, m in stamps if re.match(r"running \d+ trial", m)), None)
    records = store_records(folder)
    return dict(folder=folder, wall_s=wall, fit_s=getattr(outcome, "fit_s", float("nan")),
                trial_s=getattr(outcome, "trial_s", float("nan")), trials_run=getattr(outcome, "trials_run", 0),
                concurrency=getattr(outcome, "concurrency", cfg.search.concurrency), records=records,
                fit_t0=fit_t0)


def run_ours_cli(space: Path, work: Path, trials: int, conc: int) -> dict:
    folder = work / "ours"
    exe = Path(sys.executable).with_name("sweep")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "sweep.cli"]),
           "run", str(space), "--out", str(folder), "--reports", str(work / "reports"),
           "--trials", str(trials), "--concurrency", str(conc)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    wall = time.time() - t0
    for line in p.stdout.splitlines():
        print(f"  | {line}", file=sys.stderr)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"sweep run failed with exit code {p.returncode}")
    m = re.search(r"trials ran ([\d.]+) s \((\d+) trials, (\d+) at a time, ([\d.]+) s of trial compute\)", p.stdout)
    if not m:
        raise SystemExit("sweep run did not print its `trials ran ...: overhead ... s per trial` line")
    return dict(folder=folder, wall_s=wall, fit_s=float(m[1]), trials_run=int(m[2]), concurrency=int(m[3]),
                trial_s=float(m[4]), records=store_records(folder), fit_t0=None)


# ------------------------------------------------------------------------------------------ raw
class RawSpace:
    """Define-by-run space for the raw run: one float knob, and the trial's index as a constant."""

    def __call__(self, trial) -> dict:
        trial.suggest_float("ratio", 0.1, 0.9)
        return {"n": trial.number}


def raw_trainable(config: dict, durations: list, objectives: list) -> None:
    from ray import tune

    t0 = time.time()
    if durations:
        time.sleep(durations[config["n"] % len(durations)])
    t1 = time.time()
    rng = random.Random(config["n"])
    tune.report({**{o: rng.random() for o in objectives}, "t_start": t0, "t_end": t1, "work_s": t1 - t0})


def start_local_ray(cpus: int) -> tuple[float, str]:
    """A fresh embedded Ray, as sweep starts it; (seconds ``ray.init`` took, its temp dir)."""
    import ray

    from sweep.driver import _ray_reads_auth_again

    os.environ.update(TUNE_ENV)
    if ray.is_initialized():
        ray.shutdown()
    # token authentication, as sweep's embedded Ray has it (ours, run first in this process, left its token in
    # the environment; via the CLI a fresh one).  Ray read its auth mode when first imported, so it reads it again:
    # a Ray that caches token mode while the environment says otherwise starts workers no trial actor reaches
    if os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    if not _ray_reads_auth_again():
        raise SystemExit("this Ray cannot be made to read its auth mode again: raw Ray Tune would not start")
    tmp = tempfile.mkdtemp(prefix="bench-ray-")
    t0 = time.time()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             _temp_dir=tmp, configure_logging=True)
    return time.time() - t0, tmp


def run_raw(work: Path, durations: list[float], trials: int, conc: int, sampler: str, seed: int,
            objectives: list[str], address: str | None = None, callbacks=None) -> dict:
    """Plain Ray Tune + OptunaSearch; returns fit_s, trial_s (summed sleeps) and per-trial spans."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=RawSpace(), metric=list(objectives),
                            mode=[OBJECTIVES_DIR[o] for o in objectives],
                            sampler=optuna_sampler(sampler, seed, trials))
    trainable = tune.with_resources(tune.with_parameters(raw_trainable, durations=list(durations),
                                                         objectives=list(objectives)), {"cpu": 1})
    tuner = tune.Tuner(trainable,
                       tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials,
                                                   max_concurrent_trials=conc, reuse_actors=True),
                       run_config=tune.RunConfig(name="raw", storage_path=str(work / "raw"), verbose=0,
                                                 callbacks=callbacks or None))
    t0 = time.time()
    results = tuner.fit()
    fit_s = time.time() - t0
    spans = []
    for r in results:
        m = r.metrics or {}
        if "t_start" in m and r.error is None:
            spans.append((m["t_start"], m["t_end"]))
    return dict(fit_s=fit_s, trial_s=sum(e - s for s, e in spans), trials_run=len(spans), concurrency=conc,
                spans=spans, fit_t0=t0, errors=sum(1 for r in results if r.error is not None),
                first_error=next((_last_line(r.error) for r in results if r.error is not None), None))


def _last_line(error) -> str:
    """The last line of an error's text (a traceback ends with the exception), without terminal colours."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(error).__name__


# ------------------------------------------------------------------------------------------ cold start
COLD = r"""
import json, os, sys, time
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
out = {}
def step(name, fn):
    t0 = time.perf_counter()
    try:
        fn()
        out[name] = time.perf_counter() - t0
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
step("ray.tune", lambda: __import__("ray.tune"))
step("sweep.driver", lambda: __import__("sweep.driver"))
def mlflow_client():
    from mlflow.tracking import MlflowClient
    MlflowClient(sys.argv[1]).search_experiments(max_results=1)
step("mlflow client", mlflow_client)
step("torch", lambda: __import__("torch"))
step("sklearn.datasets", lambda: __import__("sklearn.datasets"))
print(json.dumps(out))
"""


def cold_start(tracking_uri: str) -> str:
    """What a fresh Ray worker pays before its first trial, timed step by step in a fresh interpreter, in
    the order sweep's worker meets them (ray.tune: both; sweep.driver: unpickling the trainable; MLflow:
    the trial's child run; torch: run_trial's first line; sklearn: loading digits, inside the trial)."""
    import json

    p = subprocess.run([sys.executable, "-c", COLD, tracking_uri], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return f"n/a ({p.stderr.strip().splitlines()[-1:] or p.returncode})"
    return ", ".join(f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} {v}" for k, v in out.items())


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--via", choices=("api", "cli"), default="api",
                    help="run ours through sweep.driver.run_sweep (api) or `sweep run` in a subprocess (cli)")
    ap.add_argument("--py-spy", metavar="FILE", help="record our part (driver + Ray workers) with py-spy, raw "
                    "collapsed stacks to FILE (api only; sampling costs CPU: use a separate run for figures)")
    ap.add_argument("--no-cold-start", action="store_true", help="skip timing a fresh process's imports")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = ap.parse_args(argv)
    if args.trials < 1 or args.concurrency < 1:
        ap.error("--trials and --concurrency must be >= 1")

    sys.path.insert(0, str(ROOT))
    quiet()
    os.environ.update(TUNE_ENV)
    from sweep.config import load_config

    cfg = load_config(args.space)
    cfg = replace(cfg, name="bench-overhead",
                  search=replace(cfg.search, trials=args.trials, concurrency=args.concurrency))
    cfg.raw["search"] = {**(cfg.raw.get("search") or {}), "trials": args.trials, "concurrency": args.concurrency}
    cfg.raw["name"] = "bench-overhead"
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    space_copy = work / "space.yaml"
    shutil.copy(args.space, space_copy)

    from importlib.metadata import version

    import ray
    import torch

    print(f"# overhead  {_dt.datetime.now().isoformat(timespec='seconds')}  ray {ray.__version__}  optuna "
          f"{version('optuna')}  mlflow {version('mlflow')}  torch {torch.__version__}  python "
          f"{sys.version.split()[0]}  {os.cpu_count()} cores")
    print(f"# space {args.space} ({cfg.dataset.name}, {cfg.model.name}, "
          f"{', '.join(m.name for m in cfg.methods)}, finetune {cfg.finetune.epochs} epochs, {cfg.search.sampler} "
          f"sampler), {args.trials} trials, {args.concurrency} at a time, ours via {args.via}")
    print(f"# load avg (1/5/15 min) at start {load()}", flush=True)

    spy = PySpy(args.py_spy) if args.via == "api" else None
    if args.via == "api":
        ours = run_ours_api(cfg, work, spy)
        import ray as _ray

        if _ray.is_initialized():
            _ray.shutdown()
    else:
        ours = run_ours_cli(space_copy, work, args.trials, args.concurrency)
    load_mid = load()
    recs = sorted(ours["records"], key=lambda r: (r.trial_number is None, r.trial_number or 0,
                                                  ts(r.started_at) or 0))
    durations = [float(r.wall_s) for r in recs if r.wall_s]
    if not durations:
        raise SystemExit("ours finished no trial with a wall_s: nothing to compare")
    ok = sum(1 for r in recs if r.status == "ok")

    ray_init_s, ray_tmp = start_local_ray(os.cpu_count() or 1)
    try:
        raw = run_raw(work, durations, args.trials, args.concurrency, cfg.search.sampler, cfg.seed,
                      list(cfg.search.objectives))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    load_end = load()
    if raw["errors"]:  # a comparison with a raw side that did not run its trials means nothing
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"raw Ray Tune: {raw['errors']} of {args.trials} trial(s) errored, first: "
                         f"{raw['first_error']}; no overhead figure")

    o_slot, o_wall = overhead(ours["fit_s"], ours["trial_s"], ours["trials_run"], ours["concurrency"])
    r_slot, r_wall = overhead(raw["fit_s"], raw["trial_s"], raw["trials_run"], raw["concurrency"])
    print(f"# ours: {ok} ok of {len(recs)} trial rows; whole sweep (baseline, trials, re-measure) "
          f"{ours['wall_s']:.1f} s; load avg after ours {load_mid}")
    print(f"# raw: Ray Tune + OptunaSearch, trial i sleeps ours' wall_s[i] (mean {statistics.mean(durations):.2f} s); "
          f"ray.init {ray_init_s:.1f} s (not counted); {raw['errors']} errored; load avg at end {load_end}")
    head = (f"{'run':<22}{'fit s':>8}{'sum trial s':>12}{'trials':>7}{'conc':>5}"
            f"{'overhead s/trial (slot)':>25}{'(wall)':>8}")
    print(head)
    print("-" * len(head))
    print(f"{'ours (sweep)':<22}{ours['fit_s']:>8.1f}{ours['trial_s']:>12.1f}{ours['trials_run']:>7}"
          f"{ours['concurrency']:>5}{o_slot:>25.3f}{o_wall:>8.3f}")
    print(f"{'raw Ray Tune + Optuna':<22}{raw['fit_s']:>8.1f}{raw['trial_s']:>12.1f}{raw['trials_run']:>7}"
          f"{raw['concurrency']:>5}{r_slot:>25.3f}{r_wall:>8.3f}")
    print(f"{'ours - raw':<22}{ours['fit_s'] - raw['fit_s']:>8.1f}{'':>12}{'':>7}{'':>5}"
          f"{o_slot - r_slot:>25.3f}{o_wall - r_wall:>8.3f}")

    # where the time goes, from the trials' own timestamps
    o_spans = [(ts(r.started_at), ts(r.ended_at)) for r in recs if r.started_at is not None and r.ended_at is not None]
    o_end = ours["fit_t0"] + ours["fit_s"] if ours["fit_t0"] is not None else None
    of, ol, ot = slot_gaps(o_spans, ours["concurrency"], ours["fit_t0"], o_end)
    rf, rl, rt = slot_gaps(raw["spans"], raw["concurrency"], raw["fit_t0"], raw["fit_t0"] + raw["fit_s"])
    print("# gaps per slot, seconds (from trial start/end stamps; ours' stamps are taken inside run_trial):")
    print(f"#   Tune start -> first trial of a slot   ours {fmt_stats(of)}")
    print(f"#                                         raw  {fmt_stats(rf)}")
    print(f"#   trial end -> next trial, same slot    ours {fmt_stats(ol)}")
    print(f"#                                         raw  {fmt_stats(rl)}")
    print(f"#   last trial of a slot -> Tune returns  ours {fmt_stats(ot)}")
    print(f"#                                         raw  {fmt_stats(rt)}")
    by_start = sorted((r for r in recs if r.started_at is not None and r.wall_s), key=lambda r: ts(r.started_at))
    c = ours["concurrency"]
    print(f"#   ours: wall_s of each slot's first trial {fmt_stats([r.wall_s for r in by_start[:c]])}; of the "
          f"others {fmt_stats([r.wall_s for r in by_start[c:]])} (a worker's first trial also loads the dataset "
          f"and imports: counted as trial compute, and slept as long by raw)")
    before, after = mlflow_edges(ours["folder"], recs)
    print(f"#   ours: MLflow child run created -> trial body starts  {fmt_stats(before)}")
    print(f"#   ours: trial body ends -> MLflow child run ended      {fmt_stats(after)}")
    if not args.no_cold_start:
        print(f"# cold start of a fresh process, step by step (load avg {load()}): "
              f"{cold_start('sqlite:///' + str(ours['folder'] / 'mlflow.db'))}")
    if args.keep:
        print(f"# kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"overhead: ours_s_per_trial={o_wall:.3f} ray_s_per_trial={r_wall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
