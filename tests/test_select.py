"""Choosing inside a budget, on synthetic rows (no models, no sweep folder)."""

from __future__ import annotations

import math

import pytest

from sweep.errors import BudgetError
from sweep.results.schema import TrialRecord
from sweep.select import Budget, candidates, choose


def row(tid, acc, lat, params=100_000, macs=5_000_000, status="ok", method="magnitude"):
    return TrialRecord(trial_id=tid, status=status, method=method, accuracy=acc, latency_ms=lat, params=params,
                       macs=macs)


ROWS = [
    row("baseline", 0.95, 4.0, 1_000_000, 50_000_000, method="baseline"),
    row("a", 0.90, 2.0, 400_000),
    row("b", 0.90, 1.5, 500_000),   # ties with a on accuracy, faster
    row("c", 0.85, 1.0, 200_000),
    row("d", 0.70, 0.5, 50_000),
    row("f", 0.99, 0.1, 10, status="failed"),
    row("s", 0.99, 0.1, 10, status="stopped"),
]


def test_budget_items_only_set_limits():
    assert Budget().items() == []
    assert Budget(max_params=5, min_accuracy=0.5).items() == [("max_params", 5), ("min_accuracy", 0.5)]


def test_broken_texts():
    r = row("x", 0.8123, 3.1, params=120_000, macs=7_000_000)
    assert Budget(max_latency_ms=2.0).broken(r) == ["latency_ms 3.1 > 2"]
    assert Budget(max_params=100_000).broken(r) == ["params 120,000 > 100,000"]
    assert Budget(max_macs=5e6).broken(r) == ["macs 7,000,000 > 5,000,000"]
    assert Budget(min_accuracy=0.9).broken(r) == ["accuracy 0.8123 < 0.9"]
    both = Budget(max_latency_ms=2.0, min_accuracy=0.9).broken(r)
    assert both == ["latency_ms 3.1 > 2", "accuracy 0.8123 < 0.9"]
    assert Budget(max_latency_ms=3.1, min_accuracy=0.8123).broken(r) == []  # limits are inclusive
    assert Budget().broken(r) == []


def test_broken_unknown_values():
    b = Budget(max_latency_ms=2.0)
    assert b.broken({"latency_ms": None}) == ["latency_ms unknown"]
    assert b.broken({"latency_ms": float("nan")}) == ["latency_ms unknown"]
    assert b.broken({}) == ["latency_ms unknown"]


def test_candidates_order_and_filter():
    assert [r["trial_id"] for r in candidates(ROWS, Budget())] == ["baseline", "b", "a", "c", "d"]
    assert [r["trial_id"] for r in candidates(ROWS, Budget(max_latency_ms=2.0))] == ["b", "a", "c", "d"]
    assert [r["trial_id"] for r in candidates(ROWS, Budget(max_params=300_000))] == ["c", "d"]
    assert [r["trial_id"] for r in candidates(ROWS, Budget(max_params=300_000, min_accuracy=0.8))] == ["c"]


def test_candidates_only_ok_rows():
    ids = {r["trial_id"] for r in candidates(ROWS, Budget(max_params=100))}
    assert ids == set()  # f and s would fit, but they are not ok
    assert all(r["status"] == "ok" for r in candidates(ROWS, Budget()))


def test_choose_returns_candidates():
    got = choose(ROWS, Budget(max_latency_ms=1.0))
    assert [r["trial_id"] for r in got] == ["c", "d"]


def test_choose_names_the_closest_and_what_it_breaks():
    with pytest.raises(BudgetError) as ei:
        choose(ROWS, Budget(max_latency_ms=0.4))
    msg = str(ei.value)
    assert "closest: trial d (magnitude)" in msg
    assert "breaks latency_ms 0.5 > 0.4" in msg
    assert "max-latency-ms 0.4" in msg
    assert "\n" not in msg


def test_choose_closest_by_relative_excess_over_several_limits():
    # c breaks params by 100 %, d breaks accuracy by ~12.5 %: d is closer
    with pytest.raises(BudgetError) as ei:
        choose(ROWS, Budget(max_params=100_000, min_accuracy=0.8))
    msg = str(ei.value)
    assert "closest: trial d" in msg and "accuracy 0.7 < 0.8" in msg
    assert "params" not in msg.split("breaks", 1)[1]  # d is inside on params


def test_choose_without_ok_rows():
    with pytest.raises(BudgetError, match="no `ok` rows"):
        choose([r for r in ROWS if r["status"] != "ok"], Budget(max_params=1))


def test_excess():
    b = Budget(max_latency_ms=2.0, max_params=100_000, min_accuracy=0.8)
    inside = row("x", 0.9, 1.0, params=50_000)
    assert b.excess(inside) == 0.0
    assert b.excess(row("x", 0.8, 2.0, params=100_000)) == 0.0  # on the limits
    assert b.excess(row("x", 0.9, 3.0, params=50_000)) == pytest.approx(0.5)
    assert b.excess(row("x", 0.6, 3.0, params=150_000)) == pytest.approx(0.25 + 0.5 + 0.5)
    assert Budget().excess(inside) == 0.0
    assert b.excess({"accuracy": 0.9, "params": 1, "latency_ms": None}) == math.inf


def test_excess_of_nan_metric_is_infinite():
    b = Budget(max_latency_ms=2.0)
    assert b.broken({"latency_ms": float("nan")}) == ["latency_ms unknown"]
    assert b.excess({"latency_ms": float("nan")}) == math.inf


@pytest.mark.parametrize("speedup, words", [(812.4, "812x faster"), (3.254, "3.25x faster"), (1.0, "1x faster"),
                                            (0.4, "2.5x slower"), (float("nan"), "of unknown speed")])
def test_a_speed_up_over_the_teacher_reads_as_the_report_writes_it_and_says_slower_below_one(speedup, words):
    from sweep.measure import speed_words

    assert speed_words(speedup) == words


SWEEP_OWN = {"max_params": 300_000, "min_quality": 0.8}
KEPT = "; --ignore-sweep-budgets leaves out the sweep's search.constraints"


@pytest.mark.parametrize("flags, keep, want, line", [
    ({}, True, Budget(max_params=300_000, min_accuracy=0.8),
     "budget: max-params 300,000 (search.constraints), min-accuracy 0.8 (search.constraints)" + KEPT),
    ({"max_latency_ms": 1.0}, True, Budget(max_latency_ms=1.0, max_params=300_000, min_accuracy=0.8),  # adds one
     "budget: max-latency-ms 1 (flag), max-params 300,000 (search.constraints), min-accuracy 0.8 (search.constraints)"
     + KEPT),
    ({"max_params": 500_000}, True, Budget(max_params=500_000, min_accuracy=0.8),  # loosens the sweep's
     "budget: max-params 500,000 (flag, for the sweep's 300,000), min-accuracy 0.8 (search.constraints)" + KEPT),
    ({"max_latency_ms": 1.0}, False, Budget(max_latency_ms=1.0), None),  # --ignore-sweep-budgets: flags alone
    ({}, False, Budget(), None),
])
def test_a_selection_keeps_to_the_sweeps_own_constraints_each_flag_in_place_of_its_namesake(flags, keep, want, line):
    from sweep.constraints import parse_constraints
    from sweep.select import sweep_budget

    lines = []
    assert sweep_budget(Budget(**flags), parse_constraints(SWEEP_OWN), lines.append, keep_sweep=keep) == want
    assert lines == ([line] if line else [])


def test_the_sweeps_constraints_rule_out_what_they_rule_out_and_a_sweep_without_them_leaves_the_flags():
    from sweep.constraints import parse_constraints
    from sweep.select import sweep_budget

    lines = []
    budget = sweep_budget(Budget(), parse_constraints(SWEEP_OWN), lines.append)
    assert [r.trial_id for r in choose(ROWS, budget)] == ["c"]  # a and b break the params, d the quality
    given = Budget(max_latency_ms=1.0)
    assert sweep_budget(given, parse_constraints(None), lines.append) is given
    assert sweep_budget(Budget(), None, lines.append) == Budget() and len(lines) == 1