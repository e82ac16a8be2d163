"""Pareto fronts and hypervolume against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sweep import pareto


def brute_dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def brute_mask(F: np.ndarray) -> np.ndarray:
    n = len(F)
    return np.array([not any(brute_dominates(F[j], F[i]) for j in range(n) if j != i) for i in range(n)])


def brute_ranks(F: np.ndarray) -> np.ndarray:
    # Peel fronts one at a time: rank k = non-dominated among what is left after ranks < k.
    ranks = np.full(len(F), -1)
    remaining = list(range(len(F)))
    rank = 0
    while remaining:
        sub = F[remaining]
        mask = brute_mask(sub)
        for idx, on in zip(remaining, mask):
            if on:
                ranks[idx] = rank
        remaining = [idx for idx, on in zip(remaining, mask) if not on]
        rank += 1
    return ranks


def brute_hv(F: np.ndarray, ref: np.ndarray) -> float:
    """Grid over all unique coordinates: a cell counts if some point weakly dominates its lower corner."""
    F = F[(F < ref).all(axis=1)]
    if len(F) == 0:
        return 0.0
    axes = [np.unique(np.append(F[:, j], ref[j])) for j in range(F.shape[1])]
    total = 0.0
    for idx in itertools.product(*[range(len(a) - 1) for a in axes]):
        lower = np.array([axes[j][i] for j, i in enumerate(idx)])
        upper = np.array([axes[j][i + 1] for j, i in enumerate(idx)])
        if (F <= lower).all(axis=1).any():
            total += float(np.prod(upper - lower))
    return total


def random_points(seed: int, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Few distinct values per coordinate, so ties and exact duplicates are common.
    F = rng.integers(0, 6, size=(n, d)).astype(float)
    F[: n // 5] = F[n // 5 : 2 * (n // 5)]  # explicit duplicate rows
    return F


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_mask_and_ranks_match_brute_force(seed: int, d: int) -> None:
    F = random_points(seed, 40, d)
    np.testing.assert_array_equal(pareto.non_dominated_mask(F), brute_mask(F))
    np.testing.assert_array_equal(pareto.non_dominated_sort(F), brute_ranks(F))


def test_duplicates_both_on_front() -> None:
    F = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 3.0]])
    assert pareto.non_dominated_mask(F).tolist() == [True, True, False]
    assert pareto.non_dominated_sort(F).tolist() == [0, 0, 1]


def test_nan_rows_are_off_the_front_and_dominate_nothing() -> None:
    F = np.array([[np.nan, 0.0], [1.0, 1.0], [2.0, 2.0]])
    assert pareto.non_dominated_mask(F).tolist() == [False, True, False]
    assert pareto.non_dominated_sort(F).tolist() == [2, 0, 1]


def test_empty_inputs() -> None:
    F = np.empty((0, 3))
    assert pareto.non_dominated_mask(F).shape == (0,)
    assert pareto.non_dominated_sort(F).shape == (0,)
    assert pareto.hypervolume(F, [1, 1, 1]) == 0.0


@pytest.mark.parametrize("d,n", [(2, 25), (3, 15), (4, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_brute_force(seed: int, d: int, n: int) -> None:
    rng = np.random.default_rng(100 + seed)
    F = rng.random((n, d))
    F[0] = F[1]  # a duplicate
    F[2, 0] = F[3, 0]  # a tie in one coordinate
    ref = np.full(d, 0.9)  # some points lie beyond the reference
    assert pareto.hypervolume(F, ref) == pytest.approx(brute_hv(F, ref), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_matches_brute_force_with_ties(d: int) -> None:
    F = random_points(7, 12, d)
    ref = np.full(d, 5.0)
    assert pareto.hypervolume(F, ref) == pytest.approx(brute_hv(F, ref))


def test_hypervolume_hand_cases() -> None:
    assert pareto.hypervolume(np.array([[1.0, 2.0]]), [3.0, 3.0]) == pytest.approx(2.0)
    # Two 2-D points: union of [1,3]x[2,3] and [2,3]x[1,3] = 2 + 2 - 1.
    assert pareto.hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), [3.0, 3.0]) == pytest.approx(3.0)
    assert pareto.hypervolume(np.array([[0.0, 0.0, 0.0]]), [1.0, 2.0, 3.0]) == pytest.approx(6.0)
    assert pareto.hypervolume(np.array([[0.5]]), [2.0]) == pytest.approx(1.5)


def test_points_beyond_reference_add_nothing() -> None:
    ref = [3.0, 3.0]
    inside = np.array([[1.0, 2.0]])
    beyond = np.array([[0.0, 3.0], [4.0, 0.0], [5.0, 5.0], [np.nan, 0.0]])
    assert pareto.hypervolume(np.vstack([inside, beyond]), ref) == pytest.approx(2.0)
    assert pareto.hypervolume(beyond, ref) == 0.0


def test_to_minimisation_negates_max_columns() -> None:
    values = np.array([[0.9, 10.0], [0.8, 5.0]])
    F = pareto.to_minimisation(values, ["max", "min"])
    np.testing.assert_array_equal(F, [[-0.9, 10.0], [-0.8, 5.0]])
    assert values[0, 0] == 0.9  # input untouched
    assert pareto.non_dominated_mask(F).tolist() == [True, True]
    with pytest.raises(ValueError):
        pareto.to_minimisation(values, ["max", "up"])


def test_sweep_hypervolume_uses_normalised_space() -> None:
    baseline = {"accuracy": 0.8, "params": 1000, "macs": 1e6, "latency_ms": 2.0}
    objectives = ["accuracy", "latency_ms"]
    assert pareto.reference_point(objectives, baseline).tolist() == [0.0, 1.1]
    # Baseline itself: accuracy 1 (x from -1 to 0), cost 1 (y from 1 to 1.1) -> 0.1.
    rows = {"accuracy": np.array([0.8]), "latency_ms": np.array([2.0])}
    assert pareto.sweep_hypervolume(rows, objectives, baseline) == pytest.approx(0.1)
    # Half the accuracy at half the latency: 0.5 x 0.6.
    rows = {"accuracy": np.array([0.4]), "latency_ms": np.array([1.0])}
    assert pareto.sweep_hypervolume(rows, objectives, baseline) == pytest.approx(0.3)
    # Slower than 1.1 x baseline: outside the box.
    rows = {"accuracy": np.array([0.9]), "latency_ms": np.array([2.4])}
    assert pareto.sweep_hypervolume(rows, objectives, baseline) == 0.0
    with pytest.raises(ValueError):
        pareto.reference_point(["accuracy", "energy"], baseline)


def test_hypervolume_history_is_non_decreasing_and_ends_at_total() -> None:
    rng = np.random.default_rng(3)
    n = 60
    baseline = {"accuracy": 0.9, "params": 1e6, "macs": 1e8, "latency_ms": 4.0}
    objectives = ["accuracy", "params", "latency_ms"]
    rows = {
        "accuracy": rng.uniform(0.5, 0.95, n),
        "params": rng.uniform(2e5, 1.3e6, n),
        "latency_ms": rng.uniform(1.0, 5.0, n),
    }
    rows["accuracy"][5] = np.nan
    order = rng.permutation(n)
    history = pareto.hypervolume_history(rows, objectives, baseline, order=order)
    assert history.shape == (n,)
    assert np.all(np.diff(history) >= 0)
    assert history[-1] == pytest.approx(pareto.sweep_hypervolume(rows, objectives, baseline))
    # Each prefix (in completion order) matches a from-scratch computation.
    sorted_rows = {k: v[np.argsort(order, kind="stable")] for k, v in rows.items()}
    for i in (0, 10, 30):
        prefix = {k: v[: i + 1] for k, v in sorted_rows.items()}
        assert history[i] == pytest.approx(pareto.sweep_hypervolume(prefix, objectives, baseline))


def test_hypervolume_200_points_3d_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    F = rng.random((200, 3))
    F[:, 2] = 2.0 - F[:, 0] - F[:, 1]  # every point on the front: the worst case
    start = time.perf_counter()
    pareto.hypervolume(F, [3.0, 3.0, 3.0])
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("robust", [False, True])
def test_a_trial_that_removed_nothing_is_marked_and_never_on_the_front(robust: bool) -> None:
    """The dense network fine-tuned longer (same params and MACs as the baseline, higher accuracy) would
    dominate the baseline; it is marked as the baseline's structure and kept off the front instead."""
    from sweep.pareto import duplicate_of, front_flags, removed_nothing

    base = {"trial_id": "baseline", "status": "ok", "accuracy": 0.90, "params": 1000, "macs": 5000,
            "latency_ms": 2.0, "latency_iqr_ms": 0.0}
    longer = {**base, "trial_id": "t1", "accuracy": 0.93, "latency_ms": 1.9}
    pruned = {**base, "trial_id": "t2", "accuracy": 0.88, "params": 500, "macs": 2500, "latency_ms": 1.0}
    rows = [base, longer, pruned]
    assert removed_nothing(rows) == [False, True, False]
    assert duplicate_of(rows) == [None, "baseline", None]
    assert front_flags(rows, ["accuracy", "latency_ms", "params"], robust=robust) == [True, False, True]
    # without a baseline row there is no reference: nothing is marked
    assert removed_nothing([longer, pruned]) == [False, False]


def test_a_trial_that_removed_nothing_adds_nothing_to_the_hypervolume() -> None:
    """The driver's hypervolume and the report's (summary and history) leave such a trial out: the same
    sweep with and without it has the same volume, although it would dominate the baseline."""
    import pandas as pd

    from sweep.driver import _hypervolume
    from sweep.report.rows import objective_values, ok_rows_in_order
    from sweep.results.schema import TrialRecord

    objectives = ["accuracy", "params"]
    base = dict(sweep="s", status="ok", accuracy=0.90, params=1000, macs=5000, latency_ms=2.0, method="baseline")
    baseline = {"accuracy": 0.90, "params": 1000, "macs": 5000, "latency_ms": 2.0}
    rows = [TrialRecord(trial_id="baseline", **base),
            TrialRecord(trial_id="t2", **{**base, "method": "m", "accuracy": 0.88, "params": 500, "macs": 2500})]
    longer = TrialRecord(trial_id="t1", **{**base, "method": "m", "accuracy": 0.95})
    with_it = _hypervolume([*rows, longer], objectives, baseline)
    assert with_it == pytest.approx(_hypervolume(rows, objectives, baseline)) and with_it > 0
    assert _hypervolume([rows[0], longer], objectives, baseline) == pytest.approx(
        _hypervolume(rows[:1], objectives, baseline))
    df = pd.DataFrame([{c: r.get(c) for c in ("trial_id", "status", "accuracy", "params", "macs", "ended_at")}
                       for r in [*rows, longer]])
    kept = ok_rows_in_order(df)
    assert list(kept["trial_id"]) == ["baseline", "t2"]
    history = pareto.hypervolume_history(objective_values(kept, objectives), objectives, baseline)
    assert history[-1] == pytest.approx(with_it)
