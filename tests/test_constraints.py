"""search.constraints: parsing with one-line errors, broken budgets in words, Optuna constraint values."""

from __future__ import annotations

import math

import pytest

from sweep.constraints import (
    UNKNOWN_VIOLATION,
    Constraints,
    budget_names,
    parse_constraints,
    tell_constraints,
)
from sweep.errors import ConfigError

W = "x.yaml: search.constraints"


def test_parse_and_defaults():
    c = parse_constraints({"max_params": 10_000, "max_macs": "5e6", "max_latency_ms": 0.5, "min_quality": 0.9}, W)
    assert c.items() == [("max_latency_ms", 0.5), ("max_params", 10_000), ("max_macs", 5e6), ("min_quality", 0.9)]
    assert c and not parse_constraints(None) and not parse_constraints({}, W)
    assert parse_constraints({"max_params": None}, W) == Constraints()


@pytest.mark.parametrize("data,match", [
    ({"max_flops": 3}, r"^unknown key 'max_flops' in x.yaml: search.constraints; allowed keys: "
                       r"max_latency_ms, max_params, max_macs, min_quality$"),
    ({"max_params": -5}, r"^max_params must be a number > 0, but got max_params=-5 "
                         r"\(x.yaml: search.constraints.max_params\)$"),
    ({"max_latency_ms": 0}, r"^max_latency_ms must be a number > 0, but got max_latency_ms=0 "),
    ({"min_quality": 1.5}, r"^min_quality must be in \[0, 1\] .* but got min_quality=1.5 "
                           r"\(x.yaml: search.constraints.min_quality\)$"),
    ({"max_macs": "lots"}, r"^max_macs must be a finite number, but got max_macs='lots' "),
    ({"max_macs": True}, r"^max_macs must be a finite number, but got max_macs=True "),
    ({"max_macs": math.inf}, r"^max_macs must be a finite number"),
    ([1, 2], r"^constraints must be a mapping of budgets .* but got list \[1, 2\] \(x.yaml: search.constraints\)$"),
])
def test_bad_constraints_one_line_error(data, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_constraints(data, W)
    assert "\n" not in str(e.value)


def test_broken_in_words():
    c = Constraints(max_params=10_000, max_macs=1e6, max_latency_ms=2.0, min_quality=0.9)
    fig = {"params": 12_000, "macs": 900_000, "latency_ms": 3.14159, "accuracy": 0.85}
    assert c.broken(fig) == ["latency_ms 3.142 > max_latency_ms 2", "params 12,000 > max_params 10,000",
                             "accuracy 0.85 < min_quality 0.9"]
    # before fine-tuning only the costs count (quality is not known yet)
    assert c.broken_costs(fig) == ["latency_ms 3.142 > max_latency_ms 2", "params 12,000 > max_params 10,000"]
    assert c.broken_costs({"params": 5, "macs": 5, "latency_ms": 1.0}) == []
    # label-free sweeps bound agreement
    free = {**fig, "agreement": 0.95}
    assert c.broken(free, quality="agreement") == c.broken_costs(fig)  # agreement 0.95 >= 0.9: only the costs
    assert Constraints(min_quality=0.96).broken(free, quality="agreement") == ["agreement 0.95 < min_quality 0.96"]
    assert c.broken({"params": 1, "macs": 1}) == ["latency_ms unknown (max_latency_ms 2)",
                                                   "accuracy unknown (min_quality 0.9)"]
    assert c.broken({"params": 1, "macs": 1, "latency_ms": math.nan, "accuracy": 1.0}) == [
        "latency_ms unknown (max_latency_ms 2)"]


def test_wording_follows_select_budget():
    from sweep.select import Budget

    c = Constraints(max_params=10_000, max_latency_ms=2.0, min_quality=0.9)
    fig = {"params": 12_000, "latency_ms": 3.14159, "accuracy": 0.85}
    ours = [s.replace("max_params ", "").replace("max_latency_ms ", "").replace("min_quality ", "")
            for s in c.broken(fig)]
    assert ours == Budget(**c.budget_kwargs()).broken(fig)


def test_violations_for_optuna():
    c = Constraints(max_params=10_000, max_latency_ms=2.0, min_quality=0.8)
    assert c.violations({"params": 12_000, "latency_ms": 1.0, "accuracy": 0.9}) == pytest.approx([-0.5, 0.2, -0.125])
    assert all(v <= 0 for v in c.violations({"params": 10_000, "latency_ms": 2.0, "accuracy": 0.8}))
    assert c.violations({"params": 1, "accuracy": 0.9})[0] == UNKNOWN_VIOLATION
    assert Constraints().violations({"params": 1}) == []


def test_tell_constraints_sets_one_value_per_budget_by_name():
    class Trial:  # what the driver and a resumed study hand it: an Optuna trial's set_constraint
        def __init__(self):
            self.constraints = {}

        def set_constraint(self, key, value):
            self.constraints[key] = value

    names = budget_names(Constraints(max_params=10, min_quality=0.5))
    assert names == ("max_params", "min_quality") and budget_names(None) == budget_names(Constraints()) == ()
    cases = [([0.2, -0.5], {"max_params": 0.2, "min_quality": -0.5}),
             (None, {"max_params": UNKNOWN_VIOLATION, "min_quality": UNKNOWN_VIOLATION}),   # nothing reported
             ([math.nan, 0.0], {"max_params": UNKNOWN_VIOLATION, "min_quality": 0.0}),     # Optuna refuses NaN
             ([1.0], {"max_params": 1.0, "min_quality": UNKNOWN_VIOLATION})]                # too few values
    for values, want in cases:
        t = Trial()
        tell_constraints(t, names, values)
        assert t.constraints == want


def test_constrained_tpe_learns_the_feasible_region_from_the_trials_constraints(recwarn):
    """End to end with Optuna: values set on each trial as the driver sets them steer TPE to the feasible side,
    without the samplers' deprecated ``constraints_func``."""
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = Constraints(max_params=1_000)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=8)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(40):
        t = study.ask()
        ratio = t.suggest_float("ratio", 0.0, 1.0)
        params = int(2_000 * (1 - ratio))  # feasible when ratio > 0.5
        tell_constraints(t, budget_names(c), c.violations({"params": params}))
        study.tell(t, [1 - ratio, params])
    late = [t.params["ratio"] for t in study.trials[20:]]
    assert sum(r > 0.5 for r in late) >= 0.8 * len(late)
    assert all(set(t.constraints) == {"max_params"} for t in study.trials)
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_budget_kwargs():
    c = Constraints(max_macs=5e6, min_quality=0.9)
    assert c.budget_kwargs() == {"max_macs": 5e6, "min_accuracy": 0.9}
