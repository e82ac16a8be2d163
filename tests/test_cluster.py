"""A sweep on a real multi-node Ray cluster on this machine, with no shared filesystem.

Three ``ray start`` nodes on 127.0.0.1 (:mod:`sweep.localcluster`, token authentication on): a head with no
CPU (so every trial runs on a worker node) and two one-CPU worker nodes, each started in its own mount
namespace with an empty tmpfs over the folder that holds the sweep: a worker that opened the sweep folder
would find nothing.  ``sweep run --address`` then runs trials on both workers; their models and records
reach the driver through Ray.  Marked ``cluster`` (and ``integration``); needs root for ``unshare -m``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sweep.localcluster import LocalCluster, group_alive

pytestmark = [pytest.mark.cluster, pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                 reason="worker nodes without the driver's disk need `unshare -m` as root")]

SPACE = """
name: clustered
model: {name: small_cnn}
dataset: DATASET
baseline: {epochs: 2, lr: 0.05}
finetune: {epochs: 1, lr: 0.01, checkpoint_every_s: 0}
search: {trials: 4, concurrency: 2, sampler: random, objectives: [accuracy, latency_ms, params]}
measure: {repeats: 5, warmup: 1}
methods:
  magnitude:
    ratio: {low: 0.2, high: 0.8}
"""

# what each worker node sees of a folder, and the node's process group (its raylet's, the worker's parent)
PROBE = """
import json, os, sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=1)
def look(path):
    return ray.get_runtime_context().get_node_id(), sorted(os.listdir(path)), os.getpgid(os.getppid())
workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(w, soft=False)).remote(sys.argv[2])
        for w in workers]
print(json.dumps(ray.get(refs)))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(cluster, the folder worker nodes cannot see, {worker node id: its process group}); every node is
    stopped by its process group at the end."""
    hidden = tmp_path_factory.mktemp("cluster") / "runs"
    hidden.mkdir()
    (hidden / "on-the-drivers-disk").write_text("only the driver's node has this")
    c = LocalCluster(head_cpus=0)
    try:
        c.start_head()
        for _ in range(2):
            c.add_worker(cpus=1, private=(hidden,))
        assert c.alive_nodes(3) == 3
        probe = subprocess.run([sys.executable, "-c", PROBE, c.address, str(hidden)], env=c.env,
                               capture_output=True, text=True, timeout=180)
        assert probe.returncode == 0, probe.stderr[-3000:]
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert len(seen) == 2 and all(files == [] for _, files, _ in seen)  # an empty tmpfs on each worker
        assert os.listdir(hidden) == ["on-the-drivers-disk"]  # while the driver sees its disk
        groups = {node: group for node, _, group in seen}
        assert sorted(groups.values()) == sorted(c.groups[1:])
        yield c, hidden, groups
    finally:
        c.stop()
        assert not [p for p in c.groups if group_alive(p)]


def _write_idx(path: Path, a: np.ndarray) -> None:
    """An uncompressed IDX file of unsigned bytes (the Fashion-MNIST format)."""
    path.write_bytes(bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">i4").tobytes() + a.astype(np.uint8).tobytes())


def _fashion_files(root: Path) -> Path:
    """Small Fashion-MNIST-format files (10 classes of noisy 28x28 class patterns) under ``root``."""
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (10, 28, 28))
    root.mkdir()
    for split, n in (("train", 300), ("t10k", 100)):
        y = np.arange(n) % 10
        x = np.clip(patterns[y] + rng.normal(0, 40, (n, 28, 28)), 0, 255)
        _write_idx(root / f"{split}-images-idx3-ubyte", x)
        _write_idx(root / f"{split}-labels-idx1-ubyte", y)
    return root


def _sweep(c, hidden: Path, tmp_path: Path, name: str, finetune_epochs: int,
           dataset: str = "{name: digits}") -> tuple[list, Path]:
    space = tmp_path / f"{name}.yaml"
    space.write_text(SPACE.replace("name: clustered", f"name: {name}").replace(
        "finetune: {epochs: 1", f"finetune: {{epochs: {finetune_epochs}").replace("DATASET", dataset))
    sweep_dir = hidden / name
    cmd = [sys.executable, "-m", "sweep.cli", "run", str(space), "--out", str(sweep_dir), "--address", c.address,
           "--reports", str(tmp_path / "reports")]
    return cmd, sweep_dir


def _trials_and_runs(sweep_dir: Path, name: str):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    df = pd.read_parquet(sweep_dir / "trials.parquet")
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return df[df["trial_id"] != "baseline"], {r.data.tags["sweep.trial_id"]: r for r in runs
                                              if r.data.tags.get("sweep.role") == "trial"}


def test_a_sweep_runs_on_two_nodes_that_cannot_see_its_folder(cluster, tmp_path):
    """Neither the sweep folder nor the dataset's files (both on the driver's disk only) are seen by a
    worker node: the data reaches the trials through Ray's object store."""
    c, hidden, groups = cluster
    files = _fashion_files(hidden / "fashion")
    cmd, sweep_dir = _sweep(c, hidden, tmp_path, "clustered", 1, f"{{name: fashion-mnist, root: {files}}}")
    run = subprocess.run(cmd, cwd=tmp_path, env={**c.env, "MLFLOW_LOGGING_LEVEL": "WARNING"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "Ray cluster 127.0.0.1:" in run.stdout and "3 node(s) alive, 2 CPU(s), 0 GPU(s)" in run.stdout

    trials, runs = _trials_and_runs(sweep_dir, "clustered")
    assert len(trials) == 4 and (trials["status"] == "ok").all(), trials[["trial_id", "status", "error"]]
    assert set(trials["node_id"]) == set(groups)  # both worker nodes ran trials, and only they
    assert trials["host"].str.startswith(f"{socket.gethostname()} (").all()
    assert (trials["retried"] == 0).all()
    for p in trials["model_path"]:  # sent through Ray, written by the driver
        assert (sweep_dir / p).stat().st_size > 0
    assert {t: r.data.tags.get("sweep.node_id") for t, r in runs.items()} == dict(zip(trials["trial_id"],
                                                                                      trials["node_id"]))
    assert (tmp_path / "reports" / "clustered" / "index.html").is_file()

    # the cluster keeps token authentication on: a driver with a wrong token is refused
    wrong = {**c.env, "RAY_AUTH_TOKEN": "0" * 64}
    code = "import ray, sys; ray.init(address=sys.argv[1]); print(ray.nodes())"
    refused = subprocess.run([sys.executable, "-c", code, c.address], env=wrong, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and "NodeID" not in refused.stdout


def test_successive_halving_stops_trials_on_worker_nodes(cluster, tmp_path):
    """search.scheduler mo_asha on the cluster: the rung reports of trials on worker nodes reach the driver's
    scheduler through Ray, a trial it stops there ends as a ``stopped_early`` row with the quality and node of
    its rung (its record sent through Ray, the folder unseen by the node), and only full trials keep a model.
    One trial at a time, a seeded random sampler and no latency objective (as the local integration test):
    the same trials stop at every run.  Runs before the node-lost test (both worker nodes alive)."""
    c, hidden, groups = cluster
    cmd, sweep_dir = _sweep(c, hidden, tmp_path, "halving", 3)
    space = Path(cmd[4])
    space.write_text(space.read_text().replace(
        "search: {trials: 4, concurrency: 2, sampler: random, objectives: [accuracy, latency_ms, params]}",
        "search: {trials: 8, concurrency: 1, sampler: random, objectives: [accuracy, params],\n"
        "         scheduler: {type: mo_asha, reduction_factor: 3, min_epochs: 1, rung0: true}}"))
    run = subprocess.run(cmd, cwd=tmp_path, env={**c.env, "MLFLOW_LOGGING_LEVEL": "WARNING"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    trials, runs = _trials_and_runs(sweep_dir, "halving")
    assert len(trials) == 8 and set(trials["status"]) <= {"ok", "stopped_early"}, trials[["status", "error"]]
    early, ok = trials[trials["status"] == "stopped_early"], trials[trials["status"] == "ok"]
    assert len(early) >= 1 and len(ok) >= 1, run.stdout[-3000:]
    assert early["error"].str.startswith("rung ").all() and set(early["finetune_epochs"]) <= {0, 1}
    assert early["accuracy"].notna().all() and early["model_path"].isna().all() and not early["on_front"].any()
    assert (ok["finetune_epochs"] == 3).all() and all((sweep_dir / p).stat().st_size > 0 for p in ok["model_path"])
    assert set(trials["node_id"]) <= set(groups)  # every row, stopped or not, names the worker node it ran on
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == 8
    assert {runs[t].data.tags.get("sweep.status") for t in early["trial_id"]} == {"stopped_early"}
    assert f"sweep halving: {len(ok)} ok, 0 failed, {len(early)} stopped early" in run.stdout


def _states_of_unfinished(sweep_dir: Path) -> set[int]:
    """Trial numbers with a saved fine-tune state and no row yet: trials running now (a finished trial's state
    stays until the driver has its row durable)."""
    from sweep.folder import SweepFolder
    from sweep.trial import saved_trials

    if not (sweep_dir / "progress").is_dir():
        return set()
    try:
        rows = SweepFolder(sweep_dir).store.records()[0]
    except Exception:  # the table is being written: ask again
        return set()
    done = {r.trial_number for r in rows if r.trial_number is not None}
    return {number for _, number, _, _ in saved_trials(SweepFolder(sweep_dir))} - done


def test_a_node_lost_mid_trial_runs_that_trial_again_elsewhere(cluster, tmp_path):
    """Both worker nodes busy, one is killed (raylet, daemons, workers): the trial it ran is run again on the
    other node (``retried`` 1) from the fine-tune epoch it had saved in the driver's folder through the model
    inbox, the sweep finishes, and no row is lost or doubled.  Runs after the test above (the cluster keeps one
    worker node)."""
    c, hidden, groups = cluster
    cmd, sweep_dir = _sweep(c, hidden, tmp_path, "nodelost", 40)  # trials of several seconds
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**c.env, "MLFLOW_LOGGING_LEVEL": "WARNING"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # both nodes run a trial (the driver's heartbeat lists two), each with a
            state = sweep_dir / "state.json"  # fine-tune epoch saved (of 40)
            if (state.is_file() and len(json.loads(state.read_text() or "{}").get("running", [])) == 2
                    and len(_states_of_unfinished(sweep_dir)) >= 2):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never ran two trials at once")
        lost, kept = sorted(groups, key=lambda n: groups[n])
        assert c.kill_node(groups[lost])
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    assert "lost its worker" in out and "running it again (1 of search.retries=1)" in out

    trials, runs = _trials_and_runs(sweep_dir, "nodelost")
    assert len(trials) == 4 and trials["trial_id"].is_unique and (trials["status"] == "ok").all(), out[-3000:]
    again = trials[trials["retried"] == 1]
    assert len(again) == 1 and set(again["node_id"]) == {kept}
    assert (trials["retried"] <= 1).all()
    assert len(runs) == 4 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs[again["trial_id"].iloc[0]].data.tags["sweep.restarted"] == "true"
    assert json.loads(again["info"].iloc[0])["resumed_at_epoch"] >= 1
    assert not (sweep_dir / "progress").exists()


def test_with_every_worker_node_lost_the_sweep_says_it_waits_and_goes_on_when_a_node_joins(cluster, tmp_path):
    """The last worker node is killed mid-trial (the head has no CPU): Ray Tune alone would wait for resources
    in silence; the sweep says, once, that no alive node can run a trial and what to do, and finishes once a new
    node joins.  Runs after the test above (the cluster keeps one worker node)."""
    import threading

    from sweep.localcluster import kill_node

    c, hidden, groups = cluster
    alive = [g for g in groups.values() if group_alive(g)]
    assert len(alive) == 1, groups
    cmd, sweep_dir = _sweep(c, hidden, tmp_path, "waiting", 40)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**c.env, "MLFLOW_LOGGING_LEVEL": "WARNING"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def wait_for(test, what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if test():
                return
            time.sleep(0.2)
        pytest.fail(f"{what} never happened; output so far:\n{''.join(lines)[-3000:]}")

    try:
        state = sweep_dir / "state.json"
        wait_for(lambda: state.is_file() and json.loads(state.read_text() or "{}").get("running"),
                 "a trial running")
        assert kill_node(alive[0])
        wait_for(lambda: any(line.startswith("waiting: no alive Ray node can run a trial") for line in lines),
                 "the waiting line")
        status = subprocess.run([sys.executable, "-m", "sweep.cli", "status", str(sweep_dir)], capture_output=True,
                                text=True, timeout=120)
        assert "alive, waiting for a Ray node with 1 CPU(s) (none alive can run a trial)" in status.stdout, status
        c.add_worker(cpus=1, private=(hidden,))  # recorded in the cluster's groups: stopped with the others
        proc.wait(timeout=600)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    waiting = [line for line in lines if line.startswith("waiting:")]
    assert len(waiting) == 1 and "a trial needs 1 CPU(s), search.cpus_per_trial" in waiting[0], waiting
    assert "at most 0 each" in waiting[0] and "`sweep resume` continues" in waiting[0]
    assert "lost its worker (" in out and "Traceback" not in out  # one line of ours, not Ray Tune's traceback
    trials, runs = _trials_and_runs(sweep_dir, "waiting")
    assert len(trials) == 4 and (trials["status"] == "ok").all() and (trials["retried"] <= 1).all()
    assert not set(trials.loc[trials["retried"] == 1, "node_id"]) & set(groups)  # re-run on the new node
    assert len(runs) == 4 and {r.info.status for r in runs.values()} == {"FINISHED"}
