"""Trials start in Ray's idle workers of the embedded Ray, with what a trial imports already imported.

The unit tests pin the rules (when the workers pre-import, what Tune's actors are given while the sweep
runs, and that the environment is left as it was); the integration test starts a real embedded Ray the
way ``sweep run`` does and checks that a Tune trial runs in a worker started before Tune, torch loaded.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep import driver, warm
from sweep.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(concurrency: int, cpus_per_trial: float = 1.0):
    import dataclasses

    cfg = load_config(ROOT / "search_spaces" / "quickstart.yaml")
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, concurrency=concurrency,
                                                               cpus_per_trial=cpus_per_trial))


@pytest.mark.parametrize("concurrency, cpus_per_trial, cpus, preloads", [
    (2, 1.0, 2, True),     # the quickstart on 2 cores: every idle worker runs trials
    (1, 2.0, 2, False),    # one trial of 2 CPUs on 2 cores: one of the two idle workers would idle
    (1, 1.0, 2, False),
    (4, 1.0, 2, True),     # more trials than CPUs: still one worker per CPU
    (2, 1.0, 16, False),   # 14 idle workers would hold torch for nothing
    (8, 4.0, 16, False),   # only 4 trials of 4 CPUs fit at a time
    (16, 1.0, 16, True),
    (32, 0.5, 16, True),
])
def test_idle_workers_preload_only_when_trials_use_every_one_of_them(concurrency, cpus_per_trial, cpus, preloads):
    got = driver._preload_modules(_cfg(concurrency, cpus_per_trial), cpus)
    assert (got is not None) is preloads
    if preloads:
        assert got == "sweep.warm"


@pytest.mark.parametrize("module", warm.MODULES)
def test_every_preloaded_module_imports(module):
    # Ray logs a module it cannot import and goes on: a misspelt name would silently preload nothing
    assert importlib.import_module(module) is not None


def test_a_worker_imports_what_a_trial_needs_then_marks_itself_ready(tmp_path, monkeypatch):
    monkeypatch.delenv(warm.ROLE_ENV, raising=False)
    assert warm.warm_up(str(tmp_path)) == []
    assert os.listdir(tmp_path) == [str(os.getpid())]  # the ".importing" mark became the ready one
    assert all(m in sys.modules for m in warm.MODULES)


def test_the_inbox_worker_imports_nothing_and_is_not_counted(tmp_path):
    # a fresh interpreter, as Ray starts the inbox's worker: the warm-up, then the actor's module
    env = {**os.environ, warm.ROLE_ENV: warm.INBOX_ROLE}
    code = ("import sys, sweep.warm, sweep.inbox; sweep.warm.warm_up(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'ray', 'onnx') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("preload", ["sweep.warm", "torch,sweep.warm", "", "torch"])
def test_importing_it_outside_a_ray_worker_warms_nothing_up(tmp_path, preload):
    # a driver whose shell exported the nodes' settings, or the CLI: the module gives its constants only
    env = {**os.environ, warm.PRELOAD_ENV: preload, warm.READY_ENV: str(tmp_path)}
    env.pop(warm.ROLE_ENV, None)
    code = "import sys, sweep.warm; print(sweep.warm.preloaded_by_ray(), 'torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False"]
    assert os.listdir(tmp_path) == []


def test_a_worker_whose_ready_folder_is_gone_still_starts(tmp_path, monkeypatch):
    monkeypatch.delenv(warm.ROLE_ENV, raising=False)
    assert warm.warm_up(str(tmp_path / "gone")) == []  # Ray would lose a worker whose preload raises


def test_a_failed_import_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.delenv(warm.ROLE_ENV, raising=False)
    monkeypatch.setattr(warm, "MODULES", ("json", "no_such_module_anywhere"))
    assert warm.warm_up(str(tmp_path)) == ["no_such_module_anywhere"]
    assert os.listdir(tmp_path) == [str(os.getpid())]


@pytest.mark.parametrize("marks, want, waited_at_least, said", [
    (["1000", "1001"], 2, 0.0, None),                     # both workers ready: no wait, nothing to say
    (["1000"], 2, 0.3, "1 ready after"),                  # one never comes: given up after the timeout
    (["1000", "1001.importing"], 2, 0.3, "1 ready after"),  # one still importing is not ready
    ([], 2, 0.2, "none of Ray's 2 idle worker"),          # none began: given up after the start timeout
])
def test_the_driver_waits_for_the_workers_marks_until_its_timeout(tmp_path, monkeypatch, marks, want,
                                                                   waited_at_least, said):
    for name in marks:
        (tmp_path / name).touch()
    monkeypatch.setattr(driver, "_WARM", {"dir": str(tmp_path), "workers": want})
    lines = []
    waited = driver._await_warm_workers(lines.append, timeout=0.3, start_timeout=0.2)
    assert waited >= waited_at_least
    assert waited < 5
    assert bool(lines) is (said is not None)
    if said:
        assert said in lines[0]
    assert driver._WARM == {}  # once per Ray
    assert driver._await_warm_workers(lines.append, timeout=10) == 0.0


def test_the_driver_stops_waiting_as_soon_as_the_last_worker_is_ready(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(driver, "_WARM", {"dir": str(tmp_path), "workers": 1})
    threading.Timer(0.3, (tmp_path / "42").touch).start()
    waited = driver._await_warm_workers(lambda line: None, timeout=30)
    assert 0.2 <= waited < 10


def test_the_preload_variable_lives_only_while_ray_starts_and_a_users_value_wins(monkeypatch):
    monkeypatch.delenv(driver.PRELOAD_ENV, raising=False)
    with driver._env(driver.PRELOAD_ENV, "torch"):
        assert os.environ[driver.PRELOAD_ENV] == "torch"
    assert driver.PRELOAD_ENV not in os.environ
    monkeypatch.setenv(driver.PRELOAD_ENV, "numpy")
    with driver._env(driver.PRELOAD_ENV, "torch"):
        assert os.environ[driver.PRELOAD_ENV] == "numpy"
    assert os.environ[driver.PRELOAD_ENV] == "numpy"
    with driver._env(driver.PRELOAD_ENV, None):
        assert os.environ[driver.PRELOAD_ENV] == "numpy"


@pytest.mark.parametrize("concurrency, warms", [(2, True), (1, False)])
def test_the_raylet_keeps_idle_workers_only_where_they_are_warmed(monkeypatch, concurrency, warms):
    # Ray reads RAY_* settings from the environment as its raylet starts: what ray.init sees is what it gets
    import ray

    seen = {}
    monkeypatch.delenv(driver.KEEP_IDLE_ENV, raising=False)
    monkeypatch.delenv(driver.PRELOAD_ENV, raising=False)
    monkeypatch.setattr(driver, "_embedded_auth", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(
        {k: os.environ.get(k) for k in (driver.KEEP_IDLE_ENV, driver.PRELOAD_ENV)}))
    try:
        assert driver._ray_init(None, Path("."), 2, print, _cfg(concurrency))
    finally:
        driver._WARM.clear()
        while driver._EMBEDDED_TMP:
            shutil.rmtree(driver._EMBEDDED_TMP.pop(), ignore_errors=True)
    assert seen == ({driver.KEEP_IDLE_ENV: "0", driver.PRELOAD_ENV: "sweep.warm"} if warms
                    else {driver.KEEP_IDLE_ENV: None, driver.PRELOAD_ENV: None})
    assert driver.KEEP_IDLE_ENV not in os.environ  # only while Ray starts


def test_tune_actors_lose_only_the_lightning_variable_while_the_sweep_runs():
    from ray.tune.execution import class_cache

    before = dict(class_cache.DEFAULT_ENV_VARS)
    assert "PL_DISABLE_FORK" in before  # what makes Ray start a fresh process for every trial actor
    with driver._trial_actors_on_idle_workers():
        assert "PL_DISABLE_FORK" not in class_cache.DEFAULT_ENV_VARS
        assert {k: v for k, v in before.items() if k != "PL_DISABLE_FORK"} == class_cache.DEFAULT_ENV_VARS
    assert class_cache.DEFAULT_ENV_VARS == before
    with pytest.raises(RuntimeError), driver._trial_actors_on_idle_workers():
        raise RuntimeError("Tune failed")
    assert class_cache.DEFAULT_ENV_VARS == before


PROBE = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from sweep import driver, warm
from sweep.config import load_config
cfg = load_config(Path(sys.argv[1]) / "search_spaces" / "quickstart.yaml")
assert driver._ray_init(None, Path.cwd(), 2, print, cfg)  # cwd: the test's tmp_path
import ray
from ray import tune

def trainable(config):
    import psutil
    tune.report({"created": psutil.Process().create_time(), "torch": "torch" in sys.modules,
                 "dynamo": "torch._dynamo" in sys.modules})

time.sleep(float(sys.argv[2]))  # the driver's baseline: the idle workers import meanwhile
waited = driver._await_warm_workers(print, timeout=180)  # as the sweep does before Tune starts
t0 = time.time()
with driver._trial_actors_on_idle_workers():
    grid = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                      tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=2, reuse_actors=True),
                      run_config=tune.RunConfig(storage_path=str(Path.cwd() / "tune"), verbose=0)).fit()
print(json.dumps({"t0": t0, "waited": waited, "trials": [r.metrics for r in grid],
                  "env_left": driver.PRELOAD_ENV in os.environ}))
driver._ray_shutdown(True, print)  # as a sweep ends: the embedded Ray's session folder goes too
"""


def _probe(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (driver.PRELOAD_ENV, driver.KEEP_IDLE_ENV, "RAY_ADDRESS")}
    env["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    p = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(BASELINE_S)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(out["trials"]) == 2
    assert not out["env_left"]
    return out


# what the probe's driver spends before Tune starts (the sweep's baseline); the idle workers import meanwhile
# and the driver then waits for the rest (the idle workers import at nice 15 on 2 shared cores)
BASELINE_S = 3


@pytest.mark.integration
@pytest.mark.serial
def test_a_trial_of_the_embedded_ray_runs_in_a_worker_started_before_tune_with_torch_loaded(tmp_path):
    # An idle worker is as old as the embedded Ray (at least BASELINE_S before t0); a fresh process is a moment
    # older than t0. Without the change every trial actor gets a fresh process; without the raylet's idle
    # killer off (warm.KEEP_IDLE_ENV) the idle workers were killed as Tune reserved the CPUs in 2 sweeps of 6.
    out = _probe(tmp_path)
    ages = [out["t0"] - m["created"] for m in out["trials"]]
    assert all(age > BASELINE_S / 2 for age in ages), f"a trial's actor got a fresh process: ages {ages}"
    assert all(m["torch"] and m["dynamo"] for m in out["trials"]), "the idle worker had not imported a trial's needs"


CLUSTER_PROBE = r"""
import json, logging, os, sys, time
import ray
from ray import tune
from sweep import driver
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)

def trainable(config):
    tune.report({"pid": os.getpid(), "torch": "torch" in sys.modules, "dynamo": "torch._dynamo" in sys.modules})

t0 = time.time()
with driver._trial_actors_on_idle_workers():
    grid = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                      tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=1, reuse_actors=True),
                      run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0)).fit()
print(json.dumps({"t0": t0, "trials": [r.metrics for r in grid]}))
"""


def _cluster_probe(tmp_path: Path, warm_nodes: bool) -> tuple[dict, list[int]]:
    """One fresh LocalCluster (a head without CPUs, one 1-CPU worker node), the probe's two trials on it; its
    output and the pids of the node's workers warmed before the probe started."""
    from sweep.localcluster import LocalCluster, group_alive

    c = LocalCluster(head_cpus=0, warm=warm_nodes)
    try:
        c.start_head()
        c.add_worker(cpus=1)
        assert c.alive_nodes(2) == 2
        # a warm node's idle worker has imported what a trial needs before the sweep starts
        assert c.warm_workers(1, timeout=180) == (1 if warm_nodes else 0)
        warmed = [int(name) for name in os.listdir(c.warm_dir)] if warm_nodes else []
        env = {k: v for k, v in c.env.items() if k != "RAY_ADDRESS"}
        env["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        p = subprocess.run([sys.executable, "-c", CLUSTER_PROBE, c.address, str(tmp_path / "tune")], env=env,
                           capture_output=True, text=True, timeout=240, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        c.stop()
        assert not [g for g in c.groups if group_alive(g)]
    assert len(out["trials"]) == 2
    return out, warmed


@pytest.mark.integration
@pytest.mark.serial
@pytest.mark.parametrize("warm_nodes", [True, False])
def test_a_cluster_trial_on_a_warm_node_runs_in_the_worker_warmed_before_the_sweep(tmp_path, warm_nodes):
    # Nodes started with warm workers (LocalCluster(warm=True), an experiment: sweep/warm.py) hold one idle
    # worker per CPU that has imported what a trial needs before the sweep, and the trials run in it: with the
    # raylet's idle killer on, that worker was killed as the driver's job reserved the CPU in 3 probes of 4
    # (the trial then waited for a fresh process's imports), with it off (warm.KEEP_IDLE_ENV) in none of 4.
    # The control (warm=False, the default) shows the probe can tell: a process there has imported nothing.
    out, warmed = _cluster_probe(tmp_path, warm_nodes)
    imported = [m["torch"] and m["dynamo"] for m in out["trials"]]
    assert imported == [warm_nodes, warm_nodes], out
    if warm_nodes:
        assert [m["pid"] for m in out["trials"]] == [warmed[0]] * 2, (out, warmed)
