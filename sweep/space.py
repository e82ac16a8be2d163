"""Search-space translation: a sweep's YAML space -> an Optuna define-by-run function.

Conventions (tested):
- The method is itself a dimension, ``method`` (categorical); it is not sampled when the space has
  one method.
- Each knob is sampled under the name ``<method>.<knob>``, only when that method was drawn
  (a conditional space), so two methods may share a knob name without sharing a distribution.
- ``{low, high}`` ranges are inclusive at both ends for integers and floats (Optuna's convention);
  ``log: true`` samples log-uniformly; ``step`` makes a range discrete.
- Fixed values are returned as constants: they appear in the trial config but are not searched.
- A per-stage family (a ``stages`` knob, e.g. ``stage_ratios: {stages: 4, low: 0.0, high: 0.8}``) is
  expanded when the YAML is parsed into one float knob per stage (``stage_ratio_0`` ... ``stage_ratio_3``,
  sampled as ``<method>.stage_ratio_<i>``); :func:`knobs_from_config` returns them as they were sampled
  and the method's ``make_config`` folds them back into one tuple (``cfg.stage_ratios``).
"""

from __future__ import annotations

from typing import NamedTuple

from .config import SAMPLERS, SweepConfig
from .errors import ConfigError
from .methods import get_method

METHOD_PARAM = "method"
TRIAL_NUMBER = "trial_number"  # Optuna's trial number: a stable per-sweep index (seeds derive from it)


def param_name(method: str, knob: str) -> str:
    return f"{method}.{knob}"


class DefineByRun:
    """``space(trial) -> constants`` for Ray Tune's ``OptunaSearch(space=...)``.

    A class, not a closure: Ray pickles the searcher (with this function) to save its state.

    ``TRIAL_NUMBER`` (and so the trial's seed) is the sweep's own index of the trial: for a resumed sweep,
    whose study starts with ``told`` finished trials and then the trials cut short, enqueued to run again, the
    enqueued ones get their own numbers back (``reserved``, in enqueue order; None: the next free one), so that
    a re-run has its seed back and goes on from its saved fine-tune state; the study's new trials take the
    numbers no finished or re-run trial holds, lowest first.  No number repeats whatever order trials finished in.
    """

    def __init__(self, cfg: SweepConfig, told: int = 0, used=(), reserved=()):
        self.reserved = [None if r is None else int(r) for r in reserved]
        self.told = int(told)
        self.used = sorted(set(int(u) for u in used) | {r for r in self.reserved if r is not None})
        self.methods = [m.name for m in cfg.methods]
        self.spaces = {m.name: dict(m.knobs) for m in cfg.methods}
        # by the space's own keys: a stages knob is sampled as its stage knobs (stage_ratio_0, ...)
        self.kinds = {m.name: {k: get_method(m.name).knob(k).kind for k in m.knobs} for m in cfg.methods}

    def __call__(self, trial) -> dict:
        consts: dict = {TRIAL_NUMBER: self.sweep_number(trial.number)}
        if len(self.methods) > 1:
            method = trial.suggest_categorical(METHOD_PARAM, self.methods)
        else:
            method = self.methods[0]
            consts[METHOD_PARAM] = method
        for knob, dist in self.spaces[method].items():
            name = param_name(method, knob)
            if "fixed" in dist:
                consts[name] = dist["fixed"]
            elif "choices" in dist:
                trial.suggest_categorical(name, dist["choices"])
            elif self.kinds[method][knob] == "int":
                trial.suggest_int(name, dist["low"], dist["high"], step=dist.get("step", 1), log=dist["log"])
            else:
                trial.suggest_float(name, dist["low"], dist["high"], step=dist.get("step"), log=dist["log"])
        return consts


    def sweep_number(self, study_number: int) -> int:
        """For the study's ``told + k``-th trial: its reserved number, else the ``j``-th number no finished or
        re-run trial holds (``j``: ``k`` less the reserved numbers before it)."""
        k = study_number - self.told
        if 0 <= k < len(self.reserved) and self.reserved[k] is not None:
            return self.reserved[k]
        n = k - sum(r is not None for r in self.reserved[:max(k, 0)])
        for u in self.used:  # ascending: each used number at or below the candidate pushes it up one
            if u <= n:
                n += 1
            else:
                break
        return n


def define_by_run(cfg: SweepConfig, told: int = 0, used=(), reserved=()) -> DefineByRun:
    return DefineByRun(cfg, told, used, reserved)


def first_points(cfg: SweepConfig) -> list[dict]:
    """One enqueued trial per method (its knobs still sampled) when a space holds several methods and
    the budget allows, so that every method is measured at least once and the report can compare
    them; samplers' random start-up would otherwise leave some undrawn."""
    methods = [m.name for m in cfg.methods]
    if len(methods) < 2 or cfg.search.trials < len(methods):
        return []
    return [{METHOD_PARAM: m} for m in methods]


def knobs_from_config(config: dict) -> tuple[str, dict]:
    """Split a flat trial config back into (method, {knob: value})."""
    method = config[METHOD_PARAM]
    prefix = method + "."
    knobs = {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}  # TRIAL_NUMBER has no dot
    return method, knobs


def make_sampler(name: str, *, seed: int, n_trials: int, constraints: int = 0, reduction_factor: int = 1,
                 cap: int | None = None):
    """The Optuna sampler named in the YAML (``search.sampler``).  With ``constraints`` budgets
    (search.constraints) TPE models the knobs jointly; TPE, NSGA-II and GP learn where the budgets hold from
    the constraint values each finished trial carries (:func:`sweep.constraints.tell_constraints`; random
    sampling ignores them).  ``reduction_factor`` is successive halving's η
    when trials may stop early (``search.scheduler: mo_asha``), else 1; ``cap`` the full fine-tunes an epoch
    budget pays for (``search.epoch_budget`` // ``finetune.epochs``); see :func:`guided_after`."""
    import optuna

    startup = guided_after(n_trials, reduction_factor, cap)
    if name == "tpe":
        # under successive halving most trials end PRUNED: the good set then holds finished trials only
        tpe = optuna.samplers.TPESampler
        if reduction_factor > 1:
            from .tpe import EarlyStopTPESampler as tpe
        return tpe(seed=seed, n_startup_trials=startup, **(_JOINT if constraints else {}))
    if name == "nsga2":
        population = max(4, min(50, fine_tune_budget(n_trials, reduction_factor, cap) // 3))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, but got sampler={name!r} (search.sampler)")


# TPE with budgets models the knobs jointly (one kernel density over all of them, ``multivariate``; per group
# of knobs that appear together, ``group``, for spaces where the method decides the knobs): whether a
# candidate keeps a cost budget depends on its knobs together (four stage ratios that each look safe can
# break a MACs budget as a whole), which independent per-knob densities cannot express.  Measured on Optuna's
# constrained TPE alone (bench/README.md, search_efficiency "A hard budget"): over-budget candidates among the
# last 16 of 32 trials 0.5 with it against 2.2 without, 2.25 against 2.75 of the last 6 of 12; on an
# unconstrained synthetic space neither won (hypervolume within 1.5 %), so sweeps without budgets keep
# Optuna's default for multi-objective studies (independent).  Both options are experimental in Optuna.
_JOINT = {"multivariate": True, "group": True}


def guided_after(n_trials: int, reduction_factor: int = 1, cap: int | None = None) -> int:
    """How many random start-up trials a model-based sampler draws before its model takes over: a third of
    the sweep's budget, at least 3 and at most Optuna's default of 10, so that short sweeps still get
    guided trials.

    The budget is counted in fully fine-tuned trials.  Under successive halving with reduction factor η
    (``search.scheduler: mo_asha``) about one trial in η goes past its first judged rung, so ``n_trials``
    trials cost about ``n_trials / η`` full fine-tunes, and the start-up is a third of that: a sweep of 4N
    trials with MO-ASHA starts guiding as soon as a sweep of N fully fine-tuned trials would, rather than
    spending its first 10 candidates (and, since the first results at every rung go on, most of its early
    fine-tune epochs) on random ones.  A reconstruction of "a third of the budget" for early stopping, not
    taken from a paper; ``bench/search_efficiency.py`` measures its effect (bench/README.md).  An epoch budget
    (``search.epoch_budget``) pays for at most ``cap`` full fine-tunes, whatever the trial count."""
    return min(10, max(3, fine_tune_budget(n_trials, reduction_factor, cap) // 3))


def fine_tune_budget(n_trials: int, reduction_factor: int = 1, cap: int | None = None) -> int:
    """A sweep's budget in fully fine-tuned trials: ``n_trials``, or about ``n_trials / η`` under successive
    halving (see :func:`guided_after`); no more than ``cap``, the full fine-tunes an epoch budget pays for."""
    budget = n_trials // max(1, reduction_factor)
    return budget if cap is None else min(budget, cap)


def distributions(cfg: SweepConfig, method: str) -> dict:
    """Optuna distributions of the parameters a trial of ``method`` samples (what :class:`DefineByRun`
    suggests for it): the method itself when the space has several, and its non-fixed knobs."""
    import optuna.distributions as od

    out: dict = {}
    methods = [m.name for m in cfg.methods]
    if len(methods) > 1:
        out[METHOD_PARAM] = od.CategoricalDistribution(methods)
    space = next(m.knobs for m in cfg.methods if m.name == method)
    kinds = {k: get_method(method).knob(k).kind for k in space}
    for knob, dist in space.items():
        name = param_name(method, knob)
        if "choices" in dist:
            out[name] = od.CategoricalDistribution(dist["choices"])
        elif "low" in dist and kinds[knob] == "int":
            out[name] = od.IntDistribution(dist["low"], dist["high"], step=dist.get("step", 1), log=dist["log"])
        elif "low" in dist:
            out[name] = od.FloatDistribution(dist["low"], dist["high"], step=dist.get("step"), log=dist["log"])
    return out


class Told(NamedTuple):
    """A finished trial as a resumed sweep tells it to Optuna: ``state`` is ``complete`` (``values`` are its
    objectives), ``pruned`` (successive halving stopped it at a rung: Optuna's PRUNED, no values, as Optuna's
    own pruners leave such a trial -- its quality at the rung is not its final quality, and a sampler told it as
    final would learn a cheap, under-trained point as a good one) or ``fail``; ``constraints`` are its
    ``search.constraints`` values (empty without budgets)."""

    method: str
    knobs: dict
    values: list | None
    constraints: tuple = ()
    state: str = "complete"


def study_with_history(cfg: SweepConfig, told: list[Told], rerun: list, sampler, name: str = "sweep"):
    """An Optuna study (in memory) that already knows the sweep's finished trials, for a resumed sweep.

    ``told``: every finished trial, in order (:class:`Told`);
    ``rerun``: ``(method, knobs)`` of trials that were cut short, enqueued to run again first (knobs None:
    only the method is fixed, its knobs sampled -- a multi-method space's first trial of that method).  Trial
    numbers, and so seeds, continue after the told trials: nothing repeats.  Returns
    ``(storage, study name)`` for ``OptunaSearch(storage=..., study_name=...)``, which loads it.
    """
    import optuna

    from .pareto import DIRECTIONS

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                directions=["maximize" if DIRECTIONS[o] == "max" else "minimize"
                                            for o in cfg.search.objectives])
    from .constraints import budget_names, tell_constraints

    budgets = budget_names(cfg.search.constraints)
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "fail": optuna.trial.TrialState.FAIL}
    for t in told:
        dists = distributions(cfg, t.method)
        params = {n: _param_value(t.method, n, t.knobs) for n in dists}
        values = t.values if t.state == "complete" else None
        trial = optuna.trial.create_trial(state=states[t.state], values=values, params=params, distributions=dists)
        if budgets and t.state != "fail":  # as the live sweep tells them (driver._sweep_search)
            tell_constraints(trial, budgets, t.constraints)
        study.add_trial(trial)
    for method, knobs in rerun:
        dists = distributions(cfg, method)
        study.enqueue_trial({n: _param_value(method, n, knobs) for n in dists} if knobs is not None
                            else {METHOD_PARAM: method}, skip_if_exists=False)
    return storage, name


def _param_value(method: str, name: str, knobs: dict):
    return method if name == METHOD_PARAM else knobs[name[len(method) + 1:]]
