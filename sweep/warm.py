"""The warm-up of Ray's worker processes: what a trial imports, imported before a trial comes.

Convention: importing this module *is* the warm-up, only in a Ray worker that was told to preload it (its
raylet's ``RAY_preload_python_modules`` names ``sweep.warm``); anywhere else (the driver, the CLI, a
trial's worker that imports :mod:`sweep.driver`), importing it just gives the constants.  Two places ask
for it:

- the embedded Ray: the driver sets ``RAY_preload_python_modules=sweep.warm``, ``SWEEP_WARM_DIR``
  (:data:`READY_ENV`) and ``RAY_kill_idle_workers_interval_ms=0`` (:data:`KEEP_IDLE_ENV`) while it starts
  Ray, when trials will use every one of the idle workers Ray starts with it
  (:func:`sweep.driver._preload_modules`);
- the nodes of a ``ray start`` cluster started with ``RAY_preload_python_modules=sweep.warm``,
  ``RAY_enable_worker_prestart=1`` and the idle-worker killer off (:class:`sweep.localcluster.LocalCluster`
  with ``warm=True``): each raylet then starts one idle worker per CPU at once, those workers import what a
  trial needs while the node waits, and the sweep's trial actors start in them -- an experiment, not a
  recommendation yet (``bench/README.md``, ``scale.py``).

A worker of the model inbox (``SWEEP_ROLE=model-inbox`` in its runtime environment) imports nothing: it
only holds bytes.  Every other worker imports :data:`MODULES`, then, where ``SWEEP_WARM_DIR`` names a
folder, marks itself ready: an empty file named after its pid.  The embedded Ray's driver waits for those
marks before Ray Tune starts (:func:`sweep.driver._await_warm_workers`): Ray's worker pool passes over a
worker that is still importing and starts a fresh process instead, which imports everything again while
the warm one is killed as surplus.  Nothing here may raise: Ray would lose the worker.
"""

from __future__ import annotations

import importlib
import os
import sys

# CPU seconds of each on 2 idle cores: torch 2.1, torch._dynamo 1.2 (with sympy; torch.optim imports it at
# the first optimizer), torchvision 0.4, onnx 0.1 (the ONNX export for latency; 0.8 with ml_dtypes 0.7.0,
# whose extension module takes 0.75 s to load), sweep.driver (the trainable) 0.1
MODULES = ("torch", "torch._dynamo", "onnx", "sympy", "torchvision", "torch_pruning", "onnxruntime",
           "sweep.driver")
READY_ENV = "SWEEP_WARM_DIR"
PRELOAD_ENV = "RAY_preload_python_modules"  # read by the raylet as it starts, and inherited by its workers
# Set to "0" (read by the raylet as it starts) wherever workers are warmed: it turns off the raylet's killing
# of idle workers.  Ray keeps as many idle workers as the node has CPUs *available*; once Tune's placement
# groups reserve the trials' CPUs, none are, so the warm workers count as surplus, and where the raylet's
# periodic check (every 200 ms) runs before the trial actors' leases take them, it kills them as "idle for a
# long time" and starts fresh processes for the trials, which import everything again (quickstart on 2
# cores: both warm workers killed in 2 of 6 sweeps, first trials 8 s after Tune instead of 2.5; with it 0 of 6).
KEEP_IDLE_ENV = "RAY_kill_idle_workers_interval_ms"
ROLE_ENV = "SWEEP_ROLE"
INBOX_ROLE = "model-inbox"


STARTED = ".importing"  # suffix of a worker's mark while it imports; the bare pid once it is done


def warm_up(ready_dir: str | None) -> list[str]:
    """Import :data:`MODULES` (the inbox's worker: none), then mark this process ready in ``ready_dir`` (if
    any): ``<pid>.importing`` while it imports, ``<pid>`` once done, so that the driver can tell workers that
    are slow from workers that never started the warm-up.  Returns the modules that failed to import
    (logged by nobody: a trial then imports them itself)."""
    failed: list[str] = []
    if os.environ.get(ROLE_ENV) == INBOX_ROLE:
        return failed
    started = _mark(ready_dir, str(os.getpid()) + STARTED) if ready_dir else None
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
    if started:
        try:
            os.replace(started, os.path.join(ready_dir, str(os.getpid())))
        except OSError:  # the driver's session folder is gone: it no longer waits
            pass
    return failed


def _mark(folder: str, name: str) -> str | None:
    """An empty file ``name`` in ``folder``; its path, or None where it cannot be written."""
    path = os.path.join(folder, name)
    try:
        with open(path, "w"):
            pass
    except OSError:
        return None
    return path


def marks(ready_dir: str) -> tuple[int, int]:
    """``(begun, ready)``: how many workers have marked ``ready_dir`` at all, and how many are done importing
    (raises OSError where the folder cannot be read)."""
    names = os.listdir(ready_dir)
    return len(names), sum(1 for name in names if not name.endswith(STARTED))


def preloaded_by_ray() -> bool:
    """Whether this process is a Ray worker whose raylet was told to preload this module (a driver is not,
    nor a worker that imports it through :mod:`sweep.driver` without being told to)."""
    if __name__ not in os.environ.get(PRELOAD_ENV, "").split(","):
        return False
    worker = sys.modules.get("ray._private.worker")  # imported before any preload; never imported here
    return worker is not None and getattr(worker.global_worker, "mode", None) == worker.WORKER_MODE


if preloaded_by_ray():
    warm_up(os.environ.get(READY_ENV))
