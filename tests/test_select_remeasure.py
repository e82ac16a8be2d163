"""`sweep select` re-measures the latency of its candidates before it trusts a latency budget: several side by
side (interleaved, so that the machine's load hits them alike), the most accurate first."""

from __future__ import annotations

import dataclasses

import pytest

from sweep.config import parse_config
from sweep.folder import SweepFolder, sweep_meta
from sweep.select import REMEASURED_TOGETHER, Budget, select
from sweep.trial import TrialSpec, prepare_baseline, run_trial

SPACE = {
    "name": "sel",
    "model": {"name": "small_cnn"},
    "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 96,
                "n_val": 48, "n_test": 48},
    "baseline": {"epochs": 1, "lr": 0.05},
    "finetune": {"epochs": 0, "lr": 0.01},
    "search": {"trials": 6, "objectives": ["accuracy", "latency_ms"]},
    "measure": {"repeats": 3, "warmup": 1},
    "methods": {"magnitude": {"ratio": {"low": 0.1, "high": 0.9}}},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep folder of six in-process trials and the baseline, each with a made-up accuracy and latency (the
    ranking is the test's, not the synthetic data's)."""
    cfg = parse_config(SPACE, source="sel.yaml")
    folder = SweepFolder(tmp_path_factory.mktemp("sel"))
    folder.create(cfg)
    base = prepare_baseline(cfg, folder, log=lambda m: None)
    rows = [base.replace(accuracy=0.5, latency_ms=1.0)]  # a candidate too: the least accurate here
    for i in range(6):
        r = run_trial(cfg, TrialSpec(str(folder.path), f"t{i}", "magnitude", {"ratio": 0.1 + 0.1 * i}, seed=i),
                      trial_number=i)
        assert r.status == "ok", r.error
        rows.append(r.replace(accuracy=0.9 - 0.01 * i, latency_ms=1.0))  # t0 the most accurate
    folder.store.write(rows, sweep_meta(cfg, folder.baseline()))
    return folder


def _timed(monkeypatch, latency_of):
    """Replace the timing with ``latency_of(model) -> ms``; return the calls made (the models each timed)."""
    import sweep.measure

    real_one, real_many = sweep.measure.measure_latency, sweep.measure.compare_latency
    calls: list[list] = []

    def one(model, *a, **k):
        calls.append([model])
        return dataclasses.replace(real_one(model, *a, **k), median_ms=latency_of(model))

    def many(models, *a, **k):
        calls.append(list(models))
        return [dataclasses.replace(lat, median_ms=latency_of(m)) for m, lat in zip(models, real_many(models, *a, **k))]

    monkeypatch.setattr(sweep.measure, "measure_latency", one)
    monkeypatch.setattr(sweep.measure, "compare_latency", many)
    return calls


def _width(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_a_latency_budget_re_measures_the_best_candidates_side_by_side(swept, monkeypatch, tmp_path):
    """The two most accurate break the budget once re-measured: the third is chosen, all from one interleaved
    measurement of the first REMEASURED_TOGETHER candidates, the rejects named with why."""
    widths = sorted((_width(swept.load_model(r.model_path)), r.trial_id) for r in swept.results()[0]
                    if not r.is_baseline)
    slow = {w for w, tid in widths if tid in ("t0", "t1")}
    calls = _timed(monkeypatch, lambda m: 5.0 if _width(m) in slow else 0.5)
    d = select(swept.path, Budget(max_latency_ms=1.5), out=tmp_path / "out", export=False, register=False,
               log=lambda m: None)
    assert d["chosen"]["trial_id"] == "t2"
    assert [len(c) for c in calls] == [REMEASURED_TOGETHER]
    assert [r["trial_id"] for r in d["rejected_after_remeasure"]] == ["t0", "t1"]
    assert d["latency_remeasured"]["median_ms"] == 0.5


def test_every_candidate_over_the_budget_is_tried_group_by_group_then_one_line(swept, monkeypatch, tmp_path):
    from sweep.errors import BudgetError

    calls = _timed(monkeypatch, lambda m: 9.0)
    with pytest.raises(BudgetError, match=r"once its latency is re-measured alone \(7 tried\)"):
        select(swept.path, Budget(max_latency_ms=1.5), out=tmp_path / "out", export=False, register=False,
               log=lambda m: None)
    assert [len(c) for c in calls] == [REMEASURED_TOGETHER, 7 - REMEASURED_TOGETHER]
    assert not (tmp_path / "out").exists()


def test_without_a_latency_budget_only_the_choice_is_timed(swept, monkeypatch, tmp_path):
    calls = _timed(monkeypatch, lambda m: 0.5)
    d = select(swept.path, Budget(max_params=10**9), out=tmp_path / "out", export=False, register=False,
               log=lambda m: None)
    assert d["chosen"]["trial_id"] == "t0" and [len(c) for c in calls] == [1]
