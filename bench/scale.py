"""Throughput at scale on a real local multi-node Ray cluster: `sweep` vs raw Ray Tune + OptunaSearch.

1. A cluster of ``--nodes`` Ray nodes on 127.0.0.1, one CPU each: ``ray start --head`` (a free port, a short
   private ``--temp-dir``, no dashboard, no usage stats), then ``ray start --address`` for the others, each
   in its own session (``start_new_session``), so that each ``ray start`` and every daemon it leaves behind
   share one process group whose id is that ``ray start``'s pid.  The script waits until ``ray.nodes()``
   shows every node alive.  Token authentication is on (a fresh token, in ``RAY_AUTH_TOKEN``) for the cluster and
   both drivers.  Each side gets a fresh cluster of plain nodes; with ``--warm-nodes`` ours' nodes start
   with warm workers (``RAY_enable_worker_prestart=1 RAY_preload_python_modules=sweep.warm``, the raylet's
   idle-worker killer off: ``sweep.localcluster.LocalCluster(warm=True)``; the script waits until every
   node's idle worker has imported what a trial needs), raw's stay plain (a warm node would make raw's fresh
   trial workers import torch).
2. ours: ``sweep run SPACE --address 127.0.0.1:PORT --trials N --concurrency 4`` in a subprocess, on a
   trivial space: a tiny synthetic dataset (1x8x8, 4 classes, 64/32/32 images), ``small_cnn``,
   ``magnitude`` over the ratio, ``baseline.epochs: 1``, ``finetune.epochs: 0``, ``measure.repeats: 3``,
   ``measure.remeasure: none``, ``search.sampler: random``.  Its progress lines (``[ k/N] ...``, one per
   finished trial, flushed) are stamped as they arrive; at each one the driver's CPU time
   (``/proc/PID/stat`` utime+stime: all its threads) and RSS (psutil, else ``/proc/PID/status`` VmRSS) are
   read from outside, so the measuring costs the driver nothing.
3. raw: this process connects to its cluster and runs plain ``tune.Tuner`` + ``OptunaSearch``
   (``RandomSampler``) with the same trial count, concurrency and Tune settings; trial i sleeps our trial
   i's ``wall_s`` (same mean duration; a no-op that leaves the CPUs free; with ``--raw-busy``, a control, it
   keeps its CPU busy as long instead).  A Tune ``Callback`` samples
   this driver's CPU and RSS at each completed trial, for the same figures.

Figures: trials/s = trials finished / (last trial finished - Tune started) for both, and their ratio;
driver RSS when Tune starts and at the last trial; driver CPU seconds per trial in the window of ``--mark``
trials centred on trial ``--mark`` (trials mark/2 .. 3 mark/2) and in the last ``--mark`` trials
(N - mark .. N), and their ratio; trials lost = trials asked - finished rows (ok or failed) in the sweep's
results (``trials.parquet`` and its journal, merged).  For each side's steady state, the CPU per trial of
everything it runs (:func:`sweep_cpu`), also by kind of process, and the most trials/s the machine's cores
allow at that figure: on a small machine, whether a side is bound by its CPU or by Ray Tune's turnaround.
At the end every process group recorded at ``ray start`` is sent SIGTERM, then SIGKILL after a grace
period; any process still carrying the cluster's private temp dir on its command line (a worker one of our
raylets spawned) is killed by pid.  Nothing else is touched (no ``ray stop``).

    python bench/scale.py                          # 1000 trials, mark 100
    python bench/scale.py --trials 200 --mark 20   # a reduced run for a small machine
    python bench/scale.py --trials 300 --mark 30 --py-spy /tmp/driver.txt   # where the driver's CPU goes
    python bench/scale.py --trials 300 --mark 30 --raw-busy                 # the control: raw trials load the CPUs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from overhead import OBJECTIVES_DIR, TUNE_ENV, load, optuna_sampler, quiet, store_records

from sweep.localcluster import LocalCluster  # noqa: E402
from sweep.warm import KEEP_IDLE_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

SPACE = """\
name: bench-scale
seed: 0
model: {{name: small_cnn}}
dataset: {{name: synthetic, num_classes: 4, input_shape: [1, 8, 8], n_train: 64, n_val: 32, n_test: 32}}
baseline: {{epochs: 1, lr: 0.05}}
finetune: {{epochs: 0, lr: 0.01}}
search:
  trials: {trials}
  concurrency: {concurrency}
  sampler: random
  objectives: [accuracy, latency_ms, params]
  cpus_per_trial: 1
measure: {{latency_batch: 1, warmup: 1, repeats: 3, remeasure: none}}
methods:
  magnitude:
    ratio: {{low: 0.1, high: 0.9}}
"""
OBJECTIVES = ["accuracy", "latency_ms", "params"]
PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\]")
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------ process probes
def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """Every process now: pid -> (parent pid, process group, CPU seconds so far)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        out[int(name)] = (int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def process_kind(pid: int, driver: int) -> str:
    """What process ``pid`` is, by its command line: ``driver``; a Ray worker by its process title
    (``ray::ImplicitFunc`` for a trial's actor, ``ray::_ModelInbox``, ``ray::IDLE``; a method name after
    the dot dropped); a daemon by its executable (``raylet``, ``gcs_server``); a Python process by its
    ``-m`` module or script (``sweep.results.mirror_process``, ``agent.py``)."""
    if pid == driver:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):  # a worker's title, one string: ray::<actor or task>[.<method>] ...
        return argv[0].split()[0].split(".")[0]
    exe = os.path.basename(argv[0])
    if exe.startswith("python"):
        rest = argv[1:]
        if "-m" in rest[:-1]:
            return rest[rest.index("-m") + 1]
        return os.path.basename(next((a for a in rest if not a.startswith("-")), exe))
    return exe


def sweep_cpu(groups: list[int], driver: int) -> dict[int, tuple[str, float]]:
    """Everything one side runs, now: pid -> (:func:`process_kind`, CPU seconds so far) for the cluster's
    daemons (the process groups of its ``ray start``s), the driver, and every process any of them started
    (trial workers, the MLflow mirror, the model inbox).  Processes that ended are not in it."""
    table = _proc_table()
    mine = {pid for pid, (_, pgrp, _) in table.items() if pgrp in groups or pid == driver}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in mine and pid not in mine}
        mine |= more
        grew = bool(more)
    return {pid: (process_kind(pid, driver), table[pid][2]) for pid in mine}


def cpu_by_kind(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each kind of process spent between two :func:`sweep_cpu` readings: per pid alive at the
    second (one started meanwhile counts from 0; one that ended meanwhile is not counted), under the kind it
    has then (a worker's title changes when an actor starts in it)."""
    out: dict[str, float] = {}
    for pid, (kind, c) in after.items():
        out[kind] = out.get(kind, 0.0) + c - before.get(pid, (kind, 0.0))[1]
    return out


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: every process, ours or not, and the
    time the hypervisor gave this machine's CPUs to someone else), and of those the stolen ones alone."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK, steal / TICK


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Cluster(LocalCluster):
    """``nodes`` Ray nodes of one CPU each (see :mod:`sweep.localcluster`)."""

    def __init__(self, nodes: int, object_store_mb: int, warm: bool, auth: dict | None = None,
                 keep_idle: bool = False):
        super().__init__(head_cpus=1, object_store_mb=object_store_mb, ray_bin=str(VENV_BIN / "ray"), warm=warm)
        self.n = nodes
        if keep_idle:  # the raylets' idle-worker killer off (warm nodes have it off already)
            self.node_env = {**self.node_env, KEEP_IDLE_ENV: "0"}
        if auth:  # a driver process presents one token for good (Ray reads it once): every cluster shares it
            self.auth = dict(auth)
            self.env.update(auth)

    def start(self) -> float:
        t0 = time.time()
        self.start_head()
        for _ in range(self.n - 1):
            self.add_worker(cpus=1)
        return time.time() - t0

    def alive_nodes(self, timeout: float = 120.0) -> int:  # type: ignore[override]
        return super().alive_nodes(self.n, timeout)

    def up(self, label: str) -> None:
        """Start every node, wait until all are alive and (warm nodes) every idle worker is warm; say so."""
        up_s = self.start()
        alive = self.alive_nodes()
        t0 = time.time()
        warm = self.warm_workers(self.n, timeout=300)
        print(f"# cluster for {label} {self.address} (temp dir {self.tmp}): {alive} of {self.n} nodes alive after "
              f"{up_s:.1f} s of `ray start`; " + (f"{warm} of {self.n} warm workers ready {time.time() - t0:.1f} s "
                                                  f"later; " if self.warm_dir else "plain nodes (no warm workers); ")
              + f"process groups {self.groups}", flush=True)
        if alive < self.n:
            raise SystemExit(f"only {alive} of {self.n} Ray nodes came up")


# ------------------------------------------------------------------------------------------ ours
def run_ours(space: Path, folder: Path, address: str, trials: int, conc: int, timeout: float,
             groups: list[int], spy_out: str | None = None) -> dict:
    """`sweep run` in a subprocess; its progress lines stamped with its CPU and RSS read from outside.
    With ``spy_out``, py-spy samples the driver (on-CPU stacks, per thread) from Tune's start to its end."""
    exe = VENV_BIN / "sweep"
    cmd = [str(exe), "run", str(space), "--out", str(folder), "--reports", str(folder.parent / "reports"),
           "--address", address, "--trials", str(trials), "--concurrency", str(conc)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=folder.parent)
    samples: list[tuple[int, float, float, float]] = []  # (done, wall, cpu s, rss MB) at each new count
    start: dict = {}
    tail: list[str] = []
    seen: set[int] = set()
    spy: list = []
    whole: dict[int, tuple[float, float, float]] = {}  # (wall, CPU s of all its processes, machine busy s)
    step = max(1, trials // 10)

    def read() -> None:
        for line in p.stdout:
            now = time.time()
            try:
                cpu, rss = cpu_s(p.pid), rss_mb(p.pid)
            except OSError:
                cpu = rss = float("nan")
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-40]
            if not start and re.match(r"running \d+ trial", line):
                start.update(t=now, cpu=cpu, rss=rss)
                whole[0] = (now, sweep_cpu(groups, p.pid), machine_busy_s())
                if spy_out:
                    spy.append(py_spy(p.pid, spy_out))
            m = PROGRESS.match(line)
            if m and int(m[1]) not in seen:
                seen.add(int(m[1]))
                samples.append((int(m[1]), now, cpu, rss))
                if int(m[1]) % step == 0:
                    whole[int(m[1])] = (now, sweep_cpu(groups, p.pid), machine_busy_s())
                    print(f"  | {line[:110]}", file=sys.stderr, flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"# ours ran past --timeout {timeout:g} s: SIGTERM (the sweep keeps what finished)", flush=True)
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
    reader.join(timeout=10)
    for proc in spy:
        if proc is not None:
            try:
                proc.wait(timeout=60)  # py-spy ends with the process it samples, writing its file
            except subprocess.TimeoutExpired:
                proc.kill()
    fit = next((ln for ln in tail if ln.startswith("trials ran ")), "")
    return dict(rc=rc, samples=samples, start=start, tail=tail, fit_line=fit, whole=whole, end=time.time())


def py_spy(pid: int, out: str, rate: int = 100):
    """py-spy record of process ``pid`` (its on-CPU Python stacks, one root per thread, raw collapsed
    stacks to ``out``) until it ends; None without py-spy.  Sampling costs the driver some CPU."""
    exe = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(exe).exists():
        print(f"# py-spy not found ({exe}); `pip install py-spy` into the venv to profile", flush=True)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--threads", "--nonblocking", "--rate", str(rate),
                             "--format", "raw", "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------ raw
class RawSpace:
    def __call__(self, trial) -> dict:
        trial.suggest_float("ratio", 0.1, 0.9)
        return {"n": trial.number}


def raw_trainable(config: dict, durations: list, busy: bool = False) -> None:
    from ray import tune

    t0 = time.time()
    if busy:  # the control: as long as ours' trial i, keeping its CPU busy all along
        end = t0 + durations[config["n"] % len(durations)]
        while time.time() < end:
            pass
    else:
        time.sleep(durations[config["n"] % len(durations)])
    tune.report({"accuracy": 0.5, "latency_ms": 1.0, "params": 1.0, "work_s": time.time() - t0})


def run_raw(address: str, work: Path, durations: list[float], trials: int, conc: int, seed: int,
            groups: list[int], busy: bool = False) -> dict:
    import logging

    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    samples: list[tuple[int, float, float, float]] = []
    me = os.getpid()
    whole: dict[int, tuple[float, float, float]] = {}
    step = max(1, trials // 10)

    class Sampler(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            samples.append((len(samples) + 1, time.time(), cpu_s(me), rss_mb(me)))
            if len(samples) % step == 0:
                whole[len(samples)] = (time.time(), sweep_cpu(groups, me), machine_busy_s())

    os.environ.update(TUNE_ENV)
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        searcher = OptunaSearch(space=RawSpace(), metric=OBJECTIVES, mode=[OBJECTIVES_DIR[o] for o in OBJECTIVES],
                                sampler=optuna_sampler("random", seed, trials))
        trainable = tune.with_resources(tune.with_parameters(raw_trainable, durations=list(durations), busy=busy),
                                        {"cpu": 1})
        tuner = tune.Tuner(trainable,
                           tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials,
                                                       max_concurrent_trials=conc, reuse_actors=True),
                           run_config=tune.RunConfig(name="raw", storage_path=str(work / "raw"), verbose=0,
                                                     callbacks=[Sampler()]))
        start = dict(t=time.time(), cpu=cpu_s(me), rss=rss_mb(me))
        whole[0] = (start["t"], sweep_cpu(groups, me), machine_busy_s())
        results = tuner.fit()
        fit_s = time.time() - start["t"]
        done = sum(1 for r in results if r.error is None)
    finally:
        ray.shutdown()
    return dict(samples=samples, start=start, fit_s=fit_s, done=done, whole=whole)


# ------------------------------------------------------------------------------------------ figures
def figures(samples: list, start: dict, mark: int, n: int) -> dict:
    """Throughput, RSS at start/end, CPU per trial around ``mark`` and at the end, from (done, t, cpu, rss)."""
    by = {d: (t, c, r) for d, t, c, r in samples}
    last = max(by) if by else 0
    out = dict(done=last, tput=float("nan"), rss0=start.get("rss", float("nan")),
               rss1=by[last][2] if last else float("nan"), cpu_mark=float("nan"), cpu_end=float("nan"))
    if last and start:
        out["tput"] = last / (by[last][0] - start["t"])

    def per_trial(a: int, b: int) -> float:
        a, b = max(a, 1), min(b, last)
        if b <= a or a not in by or b not in by:
            return float("nan")
        return (by[b][1] - by[a][1]) / (b - a)

    out["cpu_mark"] = per_trial(mark - mark // 2, mark + mark // 2)
    out["cpu_end"] = per_trial(last - mark, last) if last >= n else float("nan")
    out["curve"] = by
    return out


def print_stretches(name: str, by: dict, start: dict, n: int) -> None:
    """Per tenth of the run: trials/s, the driver's CPU seconds per trial and its RSS in that stretch."""
    if not by or start.get("t") is None:
        return
    step = max(1, n // 10)
    print(f"# {name + ' by stretch:':<17}{'trials':>11} {'trials/s':>9} {'CPU s/trial':>12} {'RSS MB':>8}")
    prev = (0, start["t"], start["cpu"])
    for k in range(step, max(by) + 1, step):
        if k not in by:
            continue
        t, c, r = by[k]
        print(f"# {'':<16}{prev[0]:>5}..{k:<5} {(k - prev[0]) / (t - prev[1]):>9.3f} "
              f"{(c - prev[2]) / (k - prev[0]):>12.4f} {r:>8.0f}")
        prev = (k, t, c)


def print_whole(name: str, whole: dict, mark: int, n: int) -> None:
    """The steady state of everything a side runs, from trial ``mark`` to the last sample before the last
    tenth (by the last trial Tune has ended the trial workers, and a process that ended no longer counts):
    throughput, CPU per trial of all its processes (:func:`sweep_cpu`), the cores that takes and the
    machine's busy cores, the most trials/s this machine's cores allow at that CPU per trial, and the CPU
    per trial by kind of process (:func:`cpu_by_kind`): where a side's CPU goes."""
    ks = sorted(k for k in whole if mark <= k <= n - max(1, n // 10))
    if len(ks) < 2:
        return
    (t0, c0, (b0, s0)), (t1, c1, (b1, s1)) = whole[ks[0]], whole[ks[-1]]
    k, dt, cores = ks[-1] - ks[0], t1 - t0, os.cpu_count() or 1
    if dt <= 0 or k <= 0:
        return
    kinds = cpu_by_kind(c0, c1)
    per = sum(kinds.values()) / k
    print(f"# {name} steady state, trials {ks[0]}..{ks[-1]}: {k / dt:.1f} trials/s; all its processes (cluster "
          f"daemons, trial workers, driver and its children) {per * 1000:.1f} ms of CPU per trial = "
          f"{per * k / dt:.2f} cores; the machine {(b1 - b0) / dt:.2f} of {cores} cores busy (anyone's; "
          f"{(s1 - s0) / dt:.2f} of them stolen by the hypervisor); "
          f"{cores} cores allow at most {cores / per if per > 0 else float('inf'):.1f} trials/s at that CPU per "
          f"trial")
    top = sorted(kinds.items(), key=lambda kv: -kv[1])
    shown = [f"{kind} {c / k * 1000:.1f}" for kind, c in top if c / k >= 0.0005]
    rest = sum(c for _, c in top if c / k < 0.0005) / k * 1000
    print(f"# {name} CPU ms per trial by process: " + ", ".join(shown) + (f", others {rest:.1f}" if rest else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--mark", type=int, default=100, help="the early window: CPU per trial in trials "
                    "mark/2 .. 3 mark/2, compared with the last `mark` trials (default 100)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--object-store-mb", type=int, default=150, help="object store per node (default 150 MB)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds each side may run (default 7200)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary sweep folder (printed)")
    ap.add_argument("--raw-busy", action="store_true", help="a control: raw's trial i keeps its CPU busy for "
                    "ours' wall_s[i] instead of sleeping (the load of real trials, or more); not the goal's figure")
    ap.add_argument("--warm-nodes", action="store_true", help="start ours' nodes with warm workers (idle workers "
                    "that import what a trial needs as the node starts; an experiment, see bench/README.md)")
    ap.add_argument("--keep-idle-workers", action="store_true", help="start every node of both sides with the "
                    "raylet's idle-worker killer off (RAY_kill_idle_workers_interval_ms=0): no idle worker started and "
                    "ended again and again while trial actors hold every CPU")
    ap.add_argument("--py-spy", metavar="FILE", help="sample our driver with py-spy while Tune runs (on-CPU "
                    "stacks per thread, raw collapsed format, to FILE); sampling costs CPU: take figures from a "
                    "run without it")
    args = ap.parse_args(argv)
    if args.trials < 2 or not 2 <= args.mark <= args.trials or args.concurrency < 1 or args.nodes < 1:
        ap.error("need --trials >= 2, 2 <= --mark <= --trials, --concurrency >= 1, --nodes >= 1")

    sys.path.insert(0, str(ROOT))
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    space = work / "space.yaml"
    space.write_text(SPACE.format(trials=args.trials, concurrency=args.concurrency))
    folder = work / "ours"
    # Ray reads its auth mode once, when first imported: the clusters' token goes in the environment first
    cluster = Cluster(args.nodes, args.object_store_mb, warm=args.warm_nodes, keep_idle=args.keep_idle_workers)
    os.environ.update(cluster.auth)  # both drivers present the clusters' token

    import ray

    print(f"# scale  {_dt.datetime.now().isoformat(timespec='seconds')}  ray {ray.__version__}  python "
          f"{sys.version.split()[0]}  {os.cpu_count()} cores; {args.nodes} Ray nodes x 1 CPU on 127.0.0.1; "
          f"{args.trials} trials, {args.concurrency} at a time, mark {args.mark}")
    print("# ours: sweep run --address (synthetic 1x8x8, small_cnn, magnitude, baseline 1 epoch, finetune 0, "
          "repeats 3, remeasure none, random sampler); raw: Tune + OptunaSearch(RandomSampler), trial i "
          f"{'spins the CPU for' if args.raw_busy else 'sleeps'} ours' wall_s[i]")
    print("# each on a fresh cluster: ours on " + ("nodes with warm workers (--warm-nodes: "
          "RAY_enable_worker_prestart=1 RAY_preload_python_modules=sweep.warm)" if args.warm_nodes
          else "plain `ray start` nodes") + ", raw on plain `ray start` nodes"
          + ("; every node with the idle-worker killer off (--keep-idle-workers: RAY_kill_idle_workers_interval_ms=0)"
             if args.keep_idle_workers else ""), flush=True)
    print(f"# load avg (1/5/15 min) at start {load()}", flush=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    prev_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            cluster.up("ours")
            ours = run_ours(space, folder, cluster.address, args.trials, args.concurrency, args.timeout,
                            cluster.groups, args.py_spy)
        finally:
            print(f"# cluster for ours: {cluster.stop()}", flush=True)
        load_mid = load()
        if ours["rc"] != 0:
            print("\n".join("  | " + ln for ln in ours["tail"][-25:]))
        recs = store_records(folder) if (folder / "trials.parquet").exists() else []
        finished = [r for r in recs if r.status in ("ok", "failed")]
        failed = sum(1 for r in recs if r.status == "failed")
        lost = args.trials - len(finished)
        recs.sort(key=lambda r: (r.trial_number is None, r.trial_number or 0))
        durations = [float(r.wall_s) for r in recs if r.wall_s] or [0.1]
        mean_wall = sum(durations) / len(durations)
        print(f"# ours: exit {ours['rc']}; {len(finished)} finished rows ({failed} failed), lost {lost}; mean trial "
              f"wall_s {mean_wall:.3f} s; {ours['fit_line'] or 'no `trials ran` line'}; load avg {load_mid}",
              flush=True)

        cluster = Cluster(args.nodes, args.object_store_mb, warm=False, auth=cluster.auth,
                          keep_idle=args.keep_idle_workers)
        try:
            cluster.up("raw")
            raw = run_raw(cluster.address, work, durations, args.trials, args.concurrency, 0, cluster.groups,
                          args.raw_busy)
        finally:
            print(f"# cluster for raw: {cluster.stop()}", flush=True)
        load_end = load()
        print(f"# raw: {raw['done']} of {args.trials} trials finished; fit {raw['fit_s']:.1f} s; load avg at end "
              f"{load_end}")
    finally:
        signal.signal(signal.SIGTERM, prev_term)

    fo = figures(ours["samples"], ours["start"], args.mark, args.trials)
    fr = figures(raw["samples"], raw["start"], args.mark, args.trials)
    ratio = fo["tput"] / fr["tput"] if fr["tput"] else float("nan")
    m, n = args.mark, args.trials
    head = (f"{'run':<22}{'trials':>7}{'trials/s':>10}{'RSS start MB':>13}{'RSS end MB':>11}"
            f"{f'CPU s/trial @{m}':>17}{f'CPU s/trial @{n}':>17}{'ratio':>7}")
    print(head)
    print("-" * len(head))
    for name, f in (("ours (sweep)", fo), ("raw Ray Tune + Optuna", fr)):
        print(f"{name:<22}{f['done']:>7}{f['tput']:>10.3f}{f['rss0']:>13.0f}{f['rss1']:>11.0f}"
              f"{f['cpu_mark']:>17.4f}{f['cpu_end']:>17.4f}{f['cpu_end'] / f['cpu_mark']:>7.2f}")
    print(f"# throughput ratio ours/raw {ratio:.3f}; CPU windows: trials {max(1, m - m // 2)}..{m + m // 2} and "
          f"{n - m}..{n}")
    # the curves: per tenth of the run, each driver's CPU per trial, RSS and throughput in that stretch
    for name, f, start in (("ours", fo, ours["start"]), ("raw", fr, raw["start"])):
        print_stretches(name, f["curve"], start, n)
    for name, side in (("ours", ours), ("raw", raw)):
        print_whole(name, side["whole"], m, n)
    if fo["done"]:
        print(f"# ours: the sweep ended {ours['end'] - fo['curve'][fo['done']][0]:.1f} s after its last trial's "
              f"progress line (the MLflow mirror catching up, the table compacted, the report)")
    if args.keep:
        print(f"# kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    growth = fo["rss1"] - fo["rss0"]
    print(f"scale: throughput_ratio={ratio:.3f} rss_growth_mb={growth:.0f} "
          f"cpu_per_trial_ratio={fo['cpu_end'] / fo['cpu_mark']:.2f} lost={lost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
