"""Every slot stays busy when trials are shorter than a worker's start (``driver._cached_actors_for_new_trials``).

Ray Tune, reusing actors, gives a finished trial's actor to the next trial to run and drops the actor that
trial had on its way; with trials shorter than a fresh worker's start, the second slot never gets going.
The unit tests pin the rule (who waits for its own actor, who takes a finished one); the integration test
runs real Ray Tune with one worker ready at once and the others slow to start, as a fresh process importing
torch is, and checks that every slot ran trials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweep import driver

ROOT = Path(__file__).resolve().parents[1]


class _Trial:
    """Tune's trial as the rule sees it: hashable, with a resource request."""

    def __init__(self, request: str):
        self.placement_group_factory = request


def _controller(*, own_started: bool | None, resetting=False, search_over=False, others=()):
    """A stand-in for Tune's controller with one trial ``t``: its own actor started, starting, or none (None)."""
    t = _Trial("1 CPU")
    own = object()
    to_actor = {} if own_started is None else {t: own}
    pending = [t]
    for request, has_actor in others:
        o = _Trial(request)
        pending.append(o)
        if has_actor:
            to_actor[o] = object()
    return SimpleNamespace(_trial_to_actor=to_actor, _started_actors={own} if own_started else set(),
                           _resetting_trials={t} if resetting else set(), _pending_trials=set(pending),
                           _search_alg=SimpleNamespace(is_finished=lambda: search_over)), t


@pytest.mark.parametrize("case, kw, waits", [
    ("no actor of its own: takes the finished one", dict(own_started=None), False),
    ("its actor already runs", dict(own_started=True), False),
    ("being reset onto a cached actor", dict(own_started=False, resetting=True), False),
    ("its actor starting, more trials to come", dict(own_started=False), True),
    ("search over, another trial without an actor", dict(own_started=False, search_over=True,
                                                         others=[("1 CPU", False)]), True),
    ("search over, nobody else could take it", dict(own_started=False, search_over=True), False),
    ("search over, the other has an actor", dict(own_started=False, search_over=True,
                                                 others=[("1 CPU", True)]), False),
    ("search over, the other needs other resources", dict(own_started=False, search_over=True,
                                                          others=[("1 GPU", False)]), False),
])
def test_a_trial_waits_for_its_own_actor_only_while_another_trial_can_take_the_finished_one(case, kw, waits):
    controller, trial = _controller(**kw)
    assert driver._waits_for_own_actor(controller, trial) is waits, case


def test_tunes_controller_is_patched_only_while_the_sweep_runs():
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController._maybe_reuse_cached_actor, TuneController._maybe_cache_trial_actor
    with driver._cached_actors_for_new_trials():
        assert TuneController._maybe_reuse_cached_actor is not original[0]
        assert TuneController._maybe_cache_trial_actor is not original[1]
    assert (TuneController._maybe_reuse_cached_actor, TuneController._maybe_cache_trial_actor) == original
    with pytest.raises(RuntimeError), driver._cached_actors_for_new_trials():
        driver._HELD_BACK["lag"] = 2
        raise RuntimeError("Tune failed")
    assert (TuneController._maybe_reuse_cached_actor, TuneController._maybe_cache_trial_actor) == original
    assert driver._HELD_BACK["lag"] == 0


def test_a_controller_without_the_fields_it_reads_keeps_tunes_own_rule(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    calls = []
    monkeypatch.setattr(TuneController, "_maybe_reuse_cached_actor", lambda self, trial: calls.append(trial) or True)
    with driver._cached_actors_for_new_trials():
        assert TuneController._maybe_reuse_cached_actor(SimpleNamespace(), "t") is True
    assert calls == ["t"]


# every worker process but the first imports this module slowly (a fresh process importing torch)
SLOW_MODULE = r"""
import os, time
from ray import tune
try:
    os.close(os.open(os.environ["SLOW_FLAG"], os.O_CREAT | os.O_EXCL))
except FileExistsError:
    time.sleep(START_S)

def trainable(config):
    t0 = time.time()
    time.sleep(TRIAL_S)
    tune.report({"t0": t0, "t1": time.time(), "pid": os.getpid(), "y": config["x"]})
"""

PROBE = r"""
import json, logging, os, sys
os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch
sys.path.insert(0, sys.argv[1])
from sweep import driver
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
open(os.environ["SLOW_FLAG"], "w").close()  # this driver imports the module at once...
import slowtrial
os.remove(os.environ["SLOW_FLAG"])         # ...and the first worker to import it too
with driver._cached_actors_for_new_trials():
    grid = tune.Tuner(tune.with_resources(slowtrial.trainable, {"cpu": 1}),
                      param_space={"x": tune.uniform(0, 1)},
                      tune_config=tune.TuneConfig(search_alg=OptunaSearch(metric="y", mode="max"), num_samples=24,
                                                  max_concurrent_trials=2, reuse_actors=True),
                      run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0)).fit()
print(json.dumps([r.metrics for r in grid]))
"""


@pytest.mark.integration
@pytest.mark.serial
def test_both_slots_run_trials_when_a_worker_starts_slower_than_a_trial(tmp_path):
    # 24 trials of 0.5 s; one worker ready at once, the other 3 s to start. Without the change, Ray Tune ran
    # all 24 in the first worker (one pid, never two at a time) in every run seen.
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "slowtrial.py").write_text("START_S, TRIAL_S = 3.0, 0.5\n" + SLOW_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(SLOW_FLAG=str(tmp_path / "first"), PYTHONPATH=f"{tmp_path / 'mod'}{os.pathsep}{ROOT}")
    p = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(tmp_path / "tune")], env=env,
                       capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    trials = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(trials) == 24
    pids = {m["pid"] for m in trials}
    overlapping = [a for a in trials for b in trials if a is not b and a["t0"] < b["t1"] and b["t0"] < a["t1"]]
    assert len(pids) == 2 and overlapping, f"the second slot never ran: pids {pids}"


def _caching_controller(cached: int, search_over=False):
    """Tune's controller as the actor-keeping rule sees it: its actor cache (Ray's own) with ``cached`` actors
    already in it (Tune keeps one finished actor even with no trial waiting), and Tune's own caching step."""
    from ray.tune.utils.object_cache import _ObjectCache  # what TuneController keeps its actors in

    cache = _ObjectCache(may_keep_one=True)
    cache.increase_max("1 CPU", cached)
    for i in range(cached):
        assert cache.cache_object("1 CPU", f"cached {i}")
    cache.decrease_max("1 CPU", cached)
    controller = SimpleNamespace(_trial_to_actor={}, _started_actors=set(), _resetting_trials=set(),
                                 _pending_trials=set(), _actor_cache=cache,
                                 _search_alg=SimpleNamespace(is_finished=lambda: search_over))

    def tunes_own(c, trial):  # TuneController._maybe_cache_trial_actor, reduced to its cache call
        return c._actor_cache.cache_object(trial.placement_group_factory, f"actor of {id(trial)}")
    return controller, tunes_own


@pytest.mark.parametrize("lag, cached, search_over, kept", [
    (2, 1, False, True),    # a held draw is coming: the second slot's actor stays
    (0, 1, False, False),   # nothing held back: Tune's own rule (it drops it)
    (2, 2, False, False),   # as many kept as the lag already
    (2, 1, True, False),    # the search is over: no draw is coming
])
def test_a_finished_actor_is_kept_for_held_draws_and_given_back_once_taken(monkeypatch, lag, cached, search_over,
                                                                          kept):
    monkeypatch.setitem(driver._HELD_BACK, "lag", lag)
    controller, tunes_own = _caching_controller(cached, search_over)
    trial = _Trial("1 CPU")
    assert not tunes_own(controller, _Trial("1 CPU"))  # what Tune alone does with a second actor
    assert driver._kept_for_held_draws(controller, trial, tunes_own) is kept
    cache = controller._actor_cache
    assert cache.num_cached_objects == cached + kept
    if not kept:
        assert cache.total_max_objects == 0  # Tune's own counts, untouched
        return
    assert list(cache.flush_cached_objects()) == []  # Tune's cleanup after each step evicts none of them
    for _ in range(cache.num_cached_objects):  # trials take them: each gives back what it counted as
        cache.increase_max("1 CPU")  # Tune stages the trial...
        assert cache.pop_cached_object("1 CPU") is not None
        cache.decrease_max("1 CPU")  # ...and unstages it once it has an actor
        driver._kept_taken(controller, _Trial("1 CPU"))
    assert cache.total_max_objects == 0 and cache.num_cached_objects == 0
    driver._kept_taken(controller, _Trial("1 CPU"))  # one more changes nothing
    assert cache.total_max_objects == 0
