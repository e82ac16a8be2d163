"""Exact resume under SIGKILL at any moment: kill a real sweep again and again, resume it, check the books.

The resume goal (bench/README.md, ``resume.py``): after any number of SIGKILLs at any moment, a sweep that is
resumed until it ends has exactly ``trials`` finished rows, no seed, trial number or configuration twice, and
no MLflow run left RUNNING.  A test kills the driver mid-trial; this script kills it *anywhere*: while Ray
starts, while the baseline trains, between trials, while a trial's row is written, during the final
re-measurement and the report.

1. ``sweep run SPACE --trials N`` in a subprocess (its own session, so its process group is known, and a
   private ``TMPDIR``, so every Ray process of its embedded cluster carries that folder on its command line).
2. After a delay drawn uniformly from ``[--min-delay, --window]`` seconds, the driver's process group and
   every process carrying the private folder get SIGKILL -- a lost machine, not a signal the driver could
   handle.  With ``--signal term`` the driver gets SIGTERM instead (what a cluster scheduler sends), with
   ``--signal int`` its process group gets SIGINT (Ctrl-C in a terminal): it must then exit by itself within
   ``--grace`` seconds, with 143 / 130, without a traceback, and leave no Ray process behind.  ``sweep
   status`` is run on the folder (it must exit 0 and never report more done than asked) and the next attempt
   is ``sweep resume`` (or ``sweep run`` again while the folder holds no ``sweep.yaml`` yet: stopped before
   the sweep existed).
3. After ``--kills`` kills, one last ``sweep resume`` runs to the end (exit 0 expected).  An attempt that
   ends by itself before its kill counts as the end (exit 0) or as a failure (anything else).

Checked at the end, from the sweep folder (``TrialStore.records()``, the MLflow store, the report):
finished rows (``ok``, ``failed``, and with successive halving or budgets ``stopped_early`` and ``infeasible``:
``sweep.results.schema.FINISHED``) against asked, rows left ``stopped``, duplicate trial ids, seeds, trial
numbers and configurations among finished rows, finished trials with a second MLflow run (one that an
earlier driver wrote, superseded by a new one), MLflow runs left RUNNING, the parent run's status,
finished trials without a run, runs of trials cut short that are neither superseded nor KILLED with a
``sweep.stopped`` reason, progress lines that counted more done than asked, saved fine-tune states left in
``progress/``, processes left behind.  Printed besides: how many finished trials went on from a fine-tune epoch
an earlier, killed run of their configuration had saved (``resumed_at_epoch`` in the row's ``info``), and how
many epochs that kept from being trained again.

    python bench/resume.py                         # quickstart, 40 trials, 10 kills (about 5 min on 2 cores)
    python bench/resume.py --kills 15 --seed 1 --window 30

Last line, exactly:

    resume: kills=<n> finished=<rows>/<asked> duplicates=<n> running_runs=<n> lost=<n> ok=<yes|no>

``duplicates`` sums the repeated trial ids, seeds, trial numbers and configurations and the finished trials
with a second MLflow run; ``lost`` is
``asked - finished`` (negative: too many); ``ok`` is ``yes`` when every check held.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweep.localcluster import kill_node, pids_with  # noqa: E402

NAME = "resumebench"
# --signal: how an attempt is stopped, and the exit code a graceful stop must give
SIGNALS = {"kill": (signal.SIGKILL, None), "term": (signal.SIGTERM, 143), "int": (signal.SIGINT, 130)}
# a progress line: "[  3/8] running ..."
PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\]", re.M)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def kill_everything(group: int, marker: str) -> int:
    """SIGKILL the driver's process group (and the processes its members started), then every process whose
    command line carries ``marker`` (the embedded Ray's private temp folder), until none is left; returns how
    many processes were killed."""
    killed = set(kill_node(group))
    deadline = time.time() + 30
    while time.time() < deadline:
        pids = [p for p in pids_with(marker) if p != os.getpid()]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed.add(p)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    return len(killed)


def status_check(sweep_dir: Path, env: dict, asked: int) -> str:
    """``sweep status`` after a kill: its exit code and the ``done`` line ("" when the folder is no sweep yet)."""
    if not (sweep_dir / "sweep.yaml").is_file():
        return "no sweep.yaml yet"
    res = subprocess.run([sys.executable, "-m", "sweep.cli", "status", str(sweep_dir)], env=env,
                         capture_output=True, text=True, timeout=120)
    text = res.stdout + res.stderr
    done = re.search(r"done: (\d+) of (\d+)", text)
    if res.returncode != 0 or done is None or int(done.group(1)) > asked:
        raise SystemExit(f"resume: `sweep status` after a kill: rc {res.returncode}, output: {text.strip()[-500:]}")
    return done.group(0)


def books(sweep_dir: Path, asked: int) -> dict:
    """What the sweep folder holds at the end (module docstring)."""
    from mlflow.tracking import MlflowClient

    from sweep.results.schema import FINISHED
    from sweep.results.store import TrialStore

    records = TrialStore(sweep_dir).records()[0]
    rows = [r for r in records if not r.is_baseline]
    done = [r for r in rows if r.status in FINISHED]

    def repeated(values) -> int:
        return sum(n - 1 for n in Counter(values).values() if n > 1)

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=10000) if exp else []
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    trial_runs = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    finished_ids = {r.trial_id for r in done}

    def tid(run) -> str | None:
        return run.data.tags.get("sweep.trial_id")

    def superseded(run) -> bool:
        return run.data.tags.get("sweep.superseded") == "true"

    per_trial = Counter(tid(r) for r in trial_runs if tid(r) in finished_ids and not superseded(r))
    # a superseded run belongs to a trial cut short and run again under another id; one of a finished trial
    # is a double: a second run opened for a trial that already had one
    doubled = sum(1 for r in trial_runs if superseded(r) and tid(r) in finished_ids)
    doubled += sum(n - 1 for n in per_trial.values())
    # a trial cut short that has no row (its driver died at once) keeps its run: KILLED, saying why
    unexplained = [r for r in trial_runs if tid(r) not in finished_ids and not superseded(r)
                   and not (r.info.status == "KILLED" and r.data.tags.get("sweep.stopped"))]
    resumed = [json.loads(r.info).get("resumed_at_epoch", 0) if r.info else 0 for r in done]
    resumed = [e for e in resumed if isinstance(e, int) and e > 0]
    return {
        "resumed": len(resumed), "epochs_kept": sum(resumed),
        "progress_left": len(list((sweep_dir / "progress").glob("*.pt"))),
        "rows": len(rows), "finished": len(done), "stopped": sum(r.status == "stopped" for r in rows),
        "dup_ids": repeated(r.trial_id for r in rows), "dup_seeds": repeated(r.seed for r in done),
        "dup_numbers": repeated(r.trial_number for r in done),
        "dup_configs": repeated((r.method, tuple(sorted(r.knobs.items()))) for r in done),
        "running_runs": sum(r.info.status == "RUNNING" for r in runs),
        "parents": [p.info.status for p in parents], "trial_runs": len(trial_runs),
        "without_run": len(finished_ids - set(per_trial)), "doubled_runs": doubled, "unexplained": len(unexplained),
        "asked": asked,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--trials", type=int, default=40,
                    help="enough that the sweep is not done before the kills are (default 40)")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--window", type=float, default=30.0,
                    help="latest kill moment, seconds after an attempt starts (default 30: on 2 cores the "
                         "quickstart's start-up, baseline and first trials, or a resume's start-up and a few trials)")
    ap.add_argument("--min-delay", type=float, default=0.5)
    ap.add_argument("--signal", choices=sorted(SIGNALS), default="kill",
                    help="kill (default): SIGKILL to everything, a lost machine; term: SIGTERM to the driver, what a "
                         "cluster scheduler sends; int: SIGINT to its process group, Ctrl-C in a terminal")
    ap.add_argument("--grace", type=float, default=90.0,
                    help="seconds a driver stopped by SIGTERM or SIGINT may take to exit (default 90)")
    ap.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds the last, uninterrupted resume may take")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = ap.parse_args(argv)
    if args.trials < 1 or args.kills < 0 or not 0 <= args.min_delay <= args.window:
        print(f"resume: needs --trials >= 1, --kills >= 0 and 0 <= --min-delay <= --window, but got trials="
              f"{args.trials} kills={args.kills} min-delay={args.min_delay} window={args.window} (command line)",
              file=sys.stderr)
        return 2
    args.space = str(Path(args.space).resolve())  # the sweeps run in a work folder of their own
    if not Path(args.space).is_file():
        print(f"resume: --space must be a search-space file, but got space={args.space!r} (command line)",
              file=sys.stderr)
        return 2

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    # short: Ray's unix socket paths must stay under ~107 characters
    ray_tmp = tempfile.mkdtemp(prefix="swr", dir="/tmp")
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING", "TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    sweep_dir = work / "runs" / NAME
    t_start = time.time()
    print(f"# bench/resume.py  {_dt.datetime.now():%Y-%m-%d %H:%M}  cores {os.cpu_count()}  load {load()}")
    print(f"# space {args.space}, {args.trials} trials, {args.kills} kills at uniform [{args.min_delay}, "
          f"{args.window}] s after each start, seed {args.seed}; work folder {work}")
    print(f"{'#':>3} {'command':7} {'kill at':>8} {'ended':>8} {'rc':>5} {'killed':>6}  "
          "last line of its output  | `sweep status` after a kill")

    proc = None
    over_count = []  # progress lines that counted more done than asked
    kills = 0
    graceful: list[str] = []  # stops by SIGTERM / SIGINT that did not exit cleanly
    outcome = "not reached"

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for attempt in range(args.kills + 1):
            last = attempt == args.kills
            command = "resume" if (sweep_dir / "sweep.yaml").is_file() else "run"
            argv_ = (["resume", str(sweep_dir)] if command == "resume"
                     else ["run", args.space, "--name", NAME, "--trials", str(args.trials)])
            out_path = work / f"attempt{attempt}.txt"
            with open(out_path, "w") as out:
                t0 = time.time()
                proc = subprocess.Popen([sys.executable, "-m", "sweep.cli", *argv_], cwd=work, env=env,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            at = None if last else rng.uniform(args.min_delay, args.window)
            try:
                proc.wait(timeout=args.timeout if last else at)
                rc, killed = proc.returncode, 0
            except subprocess.TimeoutExpired:
                if last:
                    print(f"resume: the last resume ran past --timeout={args.timeout} s (command line)",
                          file=sys.stderr)
                    kill_everything(proc.pid, ray_tmp)
                    return 1
                sig, want = SIGNALS[args.signal]
                if want is None:
                    killed = kill_everything(proc.pid, ray_tmp)
                    proc.wait()
                    rc = "KILL"
                else:  # a graceful stop: the driver must close the books itself, in time, and take its Ray along
                    killed = 0
                    if sig == signal.SIGINT:
                        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole foreground group
                    else:
                        proc.send_signal(sig)
                    try:
                        rc = proc.wait(timeout=args.grace)
                    except subprocess.TimeoutExpired:
                        killed = kill_everything(proc.pid, ray_tmp)
                        proc.wait()
                        rc = "HUNG"
                    time.sleep(2.0)  # Ray's daemons end a moment after the driver that shut them down
                    left_now = pids_with(ray_tmp)
                    text_now = (work / f"attempt{attempt}.txt").read_text(errors="replace")
                    if rc not in (want, 0) or "Traceback" in text_now or left_now:
                        graceful.append(f"attempt {attempt}: exit {rc} (want {want}), traceback "
                                        f"{'Traceback' in text_now}, {len(left_now)} process(es) left")
                        killed += kill_everything(proc.pid, ray_tmp)
            ended = time.time() - t0
            proc = None
            text = out_path.read_text(errors="replace")
            over_count += [m.group(0) for m in PROGRESS.finditer(text) if int(m.group(1)) > int(m.group(2))]
            tail = (text.strip().splitlines() or ["(no output)"])[-1][:70]
            # a graceful stop that came too late (the sweep had ended: exit 0) is no stop
            stopped = rc in ("KILL", "HUNG") or (at is not None and rc == SIGNALS[args.signal][1])
            kills += stopped
            after = f"{tail[:60]:60}  | {status_check(sweep_dir, env, args.trials)}" if stopped else tail
            print(f"{attempt:>3} {command:7} {'-' if at is None else f'{at:.1f}':>8} {ended:>8.1f} {rc!s:>5} "
                  f"{killed:>6}  {after}", flush=True)
            if not stopped:
                if rc != 0:
                    print(f"resume: `sweep {command}` exited {rc} without being killed (its work folder is kept: "
                          f"{work}); its output ends:\n" + "\n".join(text.strip().splitlines()[-15:]),
                          file=sys.stderr)
                    shutil.rmtree(ray_tmp, ignore_errors=True)
                    return 1
                outcome = "finished"
                break
    except KeyboardInterrupt:
        if proc is not None:
            kill_everything(proc.pid, ray_tmp)
        print("resume: interrupted; the work folder is removed", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        return 130

    left = pids_with(ray_tmp)
    b = books(sweep_dir, args.trials)
    report = (work / "reports" / NAME / "index.html").is_file()
    dups = b["dup_ids"] + b["dup_seeds"] + b["dup_numbers"] + b["dup_configs"] + b["doubled_runs"]
    lost = b["asked"] - b["finished"]
    checks = {
        "the sweep finished (exit 0)": outcome == "finished",
        f"finished rows {b['finished']} == asked {b['asked']}": lost == 0,
        f"rows left stopped: {b['stopped']}": b["stopped"] == 0,
        f"repeated trial ids {b['dup_ids']}, seeds {b['dup_seeds']}, trial numbers {b['dup_numbers']}, "
        f"configurations {b['dup_configs']}": dups == 0,
        f"MLflow runs RUNNING: {b['running_runs']}": b["running_runs"] == 0,
        f"parent runs {b['parents']} (one, FINISHED)": b["parents"] == ["FINISHED"],
        f"finished trials without an MLflow run: {b['without_run']}": b["without_run"] == 0,
        f"runs of trials cut short, neither superseded nor KILLED with a reason: {b['unexplained']} (of "
        f"{b['trial_runs']} trial runs)": b["unexplained"] == 0,
        f"finished trials with a second MLflow run: {b['doubled_runs']}": b["doubled_runs"] == 0,
        f"progress lines counting past the total: {len(over_count)}": not over_count,
        f"saved fine-tune states left behind: {b['progress_left']}": b["progress_left"] == 0,
        f"report written: {report}": report,
        f"processes left behind: {len(left)}": not left,
    }
    if args.signal != "kill":
        checks[f"stops by SIG{args.signal.upper()} that exited uncleanly: {len(graceful)}"] = not graceful
        for g in graceful:
            print(f"  {g}")
    print(f"# took {time.time() - t_start:.0f} s, load {load()}")
    print(f"# trials that went on from a saved fine-tune epoch: {b['resumed']} ({b['epochs_kept']} epochs not "
          f"trained again)")
    for what, held in checks.items():
        print(f"  {'ok  ' if held else 'FAIL'}  {what}")
    if args.keep:
        print(f"# kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"resume: kills={kills} finished={b['finished']}/{b['asked']} duplicates={dups} "
          f"running_runs={b['running_runs']} lost={lost} ok={'yes' if all(checks.values()) else 'no'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
