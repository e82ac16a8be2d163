"""YAML space -> Optuna define-by-run, driven by a real Optuna study (no Ray)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import optuna
import pytest

from sweep.config import parse_config
from sweep.methods import METHODS, Knob, MethodSpec
from sweep.space import (
    METHOD_PARAM,
    TRIAL_NUMBER,
    DefineByRun,
    define_by_run,
    knobs_from_config,
    make_sampler,
    param_name,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)


def cfg_for(methods: dict, **extra):
    data = {"name": "s", "model": {"name": "small_cnn"}, "dataset": "digits", "methods": methods, **extra}
    return parse_config(data, source="space.yaml")


def study(sampler=None):
    return optuna.create_study(directions=["maximize", "minimize"],
                               sampler=sampler or optuna.samplers.RandomSampler(seed=0))


def sample(space: DefineByRun, n: int, sampler=None):
    """n trials: (consts returned by the space, params Optuna sampled, trial number)."""
    s = study(sampler)
    out = []
    for _ in range(n):
        t = s.ask()
        consts = space(t)
        out.append((consts, dict(t.params), t.number))
        s.tell(t, [0.5, 1.0])
    return out


def test_float_range_inclusive_bounds():
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.2, "high": 0.4}}}))
    assert isinstance(space, DefineByRun)
    values = [p["magnitude.ratio"] for _, p, _ in sample(space, 60)]
    assert all(0.2 <= v <= 0.4 for v in values)
    assert len(set(values)) > 10  # actually searched, not a constant


def test_float_step_range_hits_grid_points_and_both_ends():
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.2, "high": 0.4, "step": 0.1}}}))
    values = {round(p["magnitude.ratio"], 9) for _, p, _ in sample(space, 60)}
    assert values == {0.2, 0.3, 0.4}


def test_integer_knob_inclusive_bounds():
    space = define_by_run(cfg_for({"magnitude": {"round_to": {"low": 1, "high": 2}}}))
    values = [p["magnitude.round_to"] for _, p, _ in sample(space, 40)]
    assert set(values) == {1, 2}  # both ends, nothing else
    assert all(isinstance(v, int) for v in values)


def test_log_range():
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.01, "high": 0.9, "log": True}}}))
    s = study()
    t = s.ask()
    space(t)
    dist = t.distributions["magnitude.ratio"]
    assert isinstance(dist, optuna.distributions.FloatDistribution)
    assert dist.log and (dist.low, dist.high) == (0.01, 0.9)
    values = [p["magnitude.ratio"] for _, p, _ in sample(space, 200)]
    assert all(0.01 <= v <= 0.9 for v in values)
    # log-uniform: the median sits near the geometric mean (0.095), far below the arithmetic one (0.455)
    med = sorted(values)[len(values) // 2]
    assert med < 0.25, med
    assert abs(math.log(med) - math.log(math.sqrt(0.01 * 0.9))) < 0.8


def test_integer_log_range():
    space = define_by_run(cfg_for({"magnitude": {"round_to": {"low": 1, "high": 64, "log": True}}}))
    s = study()
    t = s.ask()
    space(t)
    dist = t.distributions["magnitude.round_to"]
    assert isinstance(dist, optuna.distributions.IntDistribution) and dist.log


def test_choices():
    space = define_by_run(cfg_for({"magnitude": {"importance": {"choices": ["l1", "l2"]}}}))
    values = [p["magnitude.importance"] for _, p, _ in sample(space, 30)]
    assert set(values) == {"l1", "l2"}


def test_fixed_values_are_constants_not_sampled():
    space = define_by_run(cfg_for({"magnitude": {"ratio": 0.3, "global_pruning": False,
                                                 "importance": {"choices": ["l1"]}}}))
    for consts, params, number in sample(space, 3):
        assert consts["magnitude.ratio"] == 0.3
        assert consts["magnitude.global_pruning"] is False
        assert "magnitude.ratio" not in params and "magnitude.global_pruning" not in params
        assert params == {"magnitude.importance": "l1"}


def test_trial_number_and_single_method_are_constants():
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.1, "high": 0.9}}}))
    for i, (consts, params, number) in enumerate(sample(space, 4)):
        assert consts[TRIAL_NUMBER] == number == i
        assert consts[METHOD_PARAM] == "magnitude"
        assert METHOD_PARAM not in params and TRIAL_NUMBER not in params


@pytest.fixture
def two_methods(monkeypatch):
    """A second method sharing the knob name `ratio` with a different range (removed afterwards)."""
    spec = MethodSpec(name="toy", prune=lambda *a: None,
                      knobs=(Knob("ratio", "float", 0.5, low=0.0, high=1.0), Knob("steps", "int", 1, low=1, high=5)))
    monkeypatch.setitem(METHODS._entries, "toy", spec)
    return cfg_for({"magnitude": {"ratio": {"low": 0.1, "high": 0.2}},
                    "toy": {"ratio": {"low": 0.7, "high": 0.9}, "steps": 3}})


def test_method_is_a_dimension_and_knobs_are_conditional(two_methods):
    space = define_by_run(two_methods)
    seen = set()
    for consts, params, _ in sample(space, 30):
        method = params[METHOD_PARAM]
        assert METHOD_PARAM not in consts
        seen.add(method)
        if method == "magnitude":
            assert set(params) == {METHOD_PARAM, "magnitude.ratio"}
            assert 0.1 <= params["magnitude.ratio"] <= 0.2
        else:
            assert set(params) == {METHOD_PARAM, "toy.ratio"}
            assert 0.7 <= params["toy.ratio"] <= 0.9
            assert consts["toy.steps"] == 3
    assert seen == {"magnitude", "toy"}


def test_picklable():
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.1, "high": 0.9}, "round_to": 2}}))
    clone = pickle.loads(pickle.dumps(space))
    assert clone.methods == space.methods and clone.spaces == space.spaces and clone.kinds == space.kinds
    (c1, p1, _), = sample(space, 1, optuna.samplers.RandomSampler(seed=3))
    (c2, p2, _), = sample(clone, 1, optuna.samplers.RandomSampler(seed=3))
    assert (c1, p1) == (c2, p2)


def test_knobs_from_config_round_trip():
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.1, "high": 0.9}, "round_to": 4,
                                                 "importance": {"choices": ["l1", "l2"]}}}))
    (consts, params, _), = sample(space, 1)
    config = {**params, **consts}  # what Ray Tune hands the trainable
    method, knobs = knobs_from_config(config)
    assert method == "magnitude"
    assert set(knobs) == {"ratio", "round_to", "importance"}
    assert knobs["ratio"] == params["magnitude.ratio"] and knobs["round_to"] == 4
    assert TRIAL_NUMBER not in knobs
    # the knobs make a valid method config again
    mcfg = METHODS.get("magnitude").make_config(knobs)
    assert mcfg.ratio == knobs["ratio"] and mcfg.round_to == 4


def test_knobs_from_config_ignores_other_methods():
    config = {METHOD_PARAM: "toy", "toy.ratio": 0.8, "magnitude.ratio": 0.1, TRIAL_NUMBER: 7}
    assert knobs_from_config(config) == ("toy", {"ratio": 0.8})
    assert param_name("magnitude", "ratio") == "magnitude.ratio"


@pytest.mark.parametrize("name, cls", [
    ("tpe", optuna.samplers.TPESampler),
    ("nsga2", optuna.samplers.NSGAIISampler),
    ("gp", optuna.samplers.GPSampler),
    ("random", optuna.samplers.RandomSampler),
])
def test_make_sampler(name, cls):
    s = make_sampler(name, seed=0, n_trials=12)
    assert type(s) is cls


@pytest.mark.parametrize("n_trials, eta, cap, startup", [
    (12, 1, None, 4),    # a third of the trials
    (6, 1, None, 3),     # at least 3
    (60, 1, None, 10),   # at most Optuna's default
    (48, 3, None, 5),    # MO-ASHA: 48 trials cost about 16 full fine-tunes, a third of them random
    (12, 3, None, 3),
    (48, 1, None, 10),
    (120, 3, 12, 4),     # an epoch budget paying for 12 full fine-tunes: a third of those, not of 40
    (12, 1, 60, 4),      # a budget beyond the trials changes nothing
])
def test_random_startup_is_a_third_of_the_fine_tune_budget(n_trials, eta, cap, startup):
    from sweep.space import guided_after

    assert guided_after(n_trials, eta, cap) == startup
    tpe = make_sampler("tpe", seed=0, n_trials=n_trials, reduction_factor=eta, cap=cap)
    assert tpe._n_startup_trials == startup


def _region_share(sampler, finished_in_region: int) -> float:
    """Share of 30 TPE draws of x in [0, 1] that land in [0, 0.1], in a two-objective study whose first three
    trials lie there and were stopped early (PRUNED), followed by 17 PRUNED ones anywhere and
    ``finished_in_region`` COMPLETE ones in [0.05, 0.1]."""
    from optuna.distributions import FloatDistribution

    d = {"x": FloatDistribution(0, 1)}
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = np.random.default_rng(0)
    for i in range(20):
        x = float(rng.uniform(0, 0.1) if i < 3 else rng.uniform(0, 1))
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"x": x},
                                                  distributions=d))
    for i in range(finished_in_region):
        study.add_trial(optuna.trial.create_trial(values=[0.9, 1.0 + i], params={"x": 0.05 + 0.01 * i},
                                                  distributions=d))
    xs = []
    for _ in range(30):
        t = study.ask(d)
        xs.append(t.params["x"])
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return float(np.mean(np.array(xs) < 0.1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpe_under_successive_halving_never_takes_stopped_trials_for_good_ones(seed):
    """Optuna's multi-objective TPE fills its good set with the earliest PRUNED trials while fewer have finished
    (they all score alike): it then draws near the first candidates the rungs stopped.  The sweep's TPE for
    MO-ASHA keeps them out of it, and draws where finished trials lie once there are some."""
    from sweep.tpe import EarlyStopTPESampler

    assert type(make_sampler("tpe", seed=seed, n_trials=48, reduction_factor=3)) is EarlyStopTPESampler
    assert type(make_sampler("tpe", seed=seed, n_trials=48)) is optuna.samplers.TPESampler  # no early stops
    optuna_default = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0)
    assert _region_share(optuna_default, 0) >= 0.25  # 2.5x the prior's 0.1: drawn to the stopped trials
    assert _region_share(EarlyStopTPESampler(seed=seed, n_startup_trials=0), 0) <= 0.15  # the prior, away
    assert _region_share(EarlyStopTPESampler(seed=seed, n_startup_trials=0), 4) >= 0.25  # finished ones lead


def test_tpe_good_set_size_is_optunas_capped_at_the_trials_finished_in_budget():
    from sweep.tpe import EarlyStopTPESampler, finished_in_budget, optuna_gamma

    study = optuna.create_study(directions=["maximize", "minimize"])
    add = study.add_trial
    for _ in range(30):
        add(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    for v in (0.0, -1.0, 2.0):  # the last one breaks its budget: Optuna puts it with the infeasible
        t = optuna.trial.create_trial(values=[0.5, 1.0])
        t.set_constraint("max_macs", v)
        add(t)
    assert finished_in_budget(study) == 2
    s = EarlyStopTPESampler(seed=0)
    s._study = study
    assert optuna_gamma(33, 2) == 4 and s.good_set_size(33) == 2
    assert s.good_set_size(10) == 1  # Optuna's own when enough trials finished
    s._study = None
    assert s.good_set_size(33) == 4


@pytest.mark.filterwarnings("ignore:Argument ``group`` is an experimental feature")
def test_tpe_with_budgets_models_the_knobs_jointly_and_samples_a_conditional_space():
    """With search.constraints TPE is multivariate and grouped (budgets depend on the knobs together), and it
    still samples a space whose knobs depend on the method, told each trial's constraint values as the driver
    tells them; seeded, it repeats itself.  Without budgets it keeps Optuna's multi-objective default."""
    from sweep.constraints import tell_constraints

    assert make_sampler("tpe", seed=0, n_trials=12)._multivariate is None
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.1, "high": 0.9}},
                                   "sr_init": {"tau": {"low": 0.0, "high": 0.5}}}))

    def draws(seed: int) -> list[dict]:
        sampler = make_sampler("tpe", seed=seed, n_trials=12, constraints=1)
        assert sampler._multivariate is True and sampler._group is True
        st, out = study(sampler), []
        for _ in range(12):
            t = st.ask()
            space(t)
            ratio = t.params.get("magnitude.ratio")
            tell_constraints(t, ["max_macs"], [0.5 - ratio if ratio is not None else -1.0])  # ratio >= 0.5 keeps it
            st.tell(t, [0.5, 1.0])
            out.append(dict(t.params))
        return out

    a = draws(3)
    assert {p[METHOD_PARAM] for p in a} == {"magnitude", "sr_init"}
    assert all(set(p) == {METHOD_PARAM, f"{p[METHOD_PARAM]}.{'ratio' if p[METHOD_PARAM] == 'magnitude' else 'tau'}"}
               for p in a)
    assert a == draws(3)


def test_make_sampler_unknown():
    from sweep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sampler must be one of tpe, nsga2, gp, random, but got sampler='cmaes'"):
        make_sampler("cmaes", seed=0, n_trials=5)


def test_seeded_sampler_repeats_itself():
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.1, "high": 0.9}}}))
    a = [p for _, p, _ in sample(space, 5, make_sampler("tpe", seed=1, n_trials=5))]
    b = [p for _, p, _ in sample(space, 5, make_sampler("tpe", seed=1, n_trials=5))]
    assert a == b


def test_every_method_is_drawn_first_when_a_space_holds_several(tmp_path):
    """The driver enqueues one trial per method: with Ray Tune's OptunaSearch the first trials cover
    every method, whatever the sampler would have drawn."""
    from ray.tune.search.optuna import OptunaSearch

    from sweep.config import load_config
    from sweep.space import define_by_run, first_points, make_sampler

    cfg = load_config("search_spaces/all_methods.yaml")
    names = [m.name for m in cfg.methods]
    points = first_points(cfg)
    assert points == [{"method": m} for m in names]
    s = OptunaSearch(space=define_by_run(cfg), metric=["accuracy", "latency_ms"], mode=["max", "min"],
                     sampler=make_sampler("random", seed=0, n_trials=20), points_to_evaluate=points)
    drawn = [s.suggest(f"t{i}") for i in range(len(names))]
    assert [d["method"] for d in drawn] == names
    for d in drawn:  # knobs are still sampled for the enqueued method
        assert any(k.startswith(d["method"] + ".") for k in d) or not cfg.method(d["method"]).knobs


def test_no_enqueued_points_for_one_method_or_a_small_budget():
    from dataclasses import replace

    from sweep.config import load_config
    from sweep.space import first_points

    assert first_points(load_config("search_spaces/fashion_mnist.yaml")) == []  # one method
    cfg = load_config("search_spaces/all_methods.yaml")
    assert first_points(replace(cfg, search=replace(cfg.search, trials=2))) == []


@pytest.mark.parametrize("told, used, reserved, expect", [
    (0, [], [], [0, 1, 2, 3]),  # a new sweep: the study's numbers
    (1, [1], [], [0, 2, 3, 4]),  # trial 1 finished, trial 0 was cut short: 0 comes back first, 1 never again
    (2, [0, 2], [], [1, 3, 4, 5]),
    (3, [0, 1, 2], [], [3, 4, 5, 6]),
    # trials 0 and 2 finished; 3 was cut short (re-run first, its number back); 1 was lost before any row or
    # saved state: a new trial takes it
    (2, [0, 2], [3], [3, 1, 4, 5]),
    (1, [0], [4, None, 2], [4, 1, 2, 3]),  # a re-run whose number a finished trial took gets a free one
])
def test_a_resumed_sweep_numbers_new_trials_with_the_numbers_no_finished_trial_holds(told, used, reserved, expect):
    space = define_by_run(cfg_for({"magnitude": {"ratio": {"low": 0.2, "high": 0.4}}}), told, used, reserved)
    assert [space.sweep_number(told + k) for k in range(4)] == expect
