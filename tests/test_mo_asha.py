"""MO-ASHA decisions on synthetic reports: rungs, the top-1/η cut, crowding ties, asynchrony, settings."""

from __future__ import annotations

import numpy as np
import pytest

from sweep.errors import ConfigError
from sweep.mo_asha import (
    CONTINUE,
    MOASHA,
    STOP,
    MOASHASettings,
    crowding_distance,
    parse_scheduler,
    select_top,
)

OBJ = ["accuracy", "params"]


def sched(eta=2, min_epochs=1, max_epochs=9, rung0=False, objectives=OBJ) -> MOASHA:
    return MOASHA(MOASHASettings(reduction_factor=eta, min_epochs=min_epochs, max_epochs=max_epochs, rung0=rung0),
                  objectives)


def rep(s: MOASHA, tid: str, epoch: int, acc: float, params: float):
    return s.report(tid, epoch, {"accuracy": acc, "params": params})


# ------------------------------------------------------------------ rung schedule
@pytest.mark.parametrize("eta,lo,hi,rung0,want", [
    (3, 1, 27, False, (1, 3, 9)),      # 27 is the full fine-tune, not a rung
    (3, 1, 10, True, (0, 1, 3, 9)),
    (2, 1, 9, False, (1, 2, 4, 8)),
    (4, 2, 40, False, (2, 8, 32)),
    (3, 3, 3, True, (0,)),             # no epoch rung below the full fine-tune: only rung 0
    (3, 1, 1, False, ()),
])
def test_rung_schedule(eta, lo, hi, rung0, want):
    assert MOASHASettings(reduction_factor=eta, min_epochs=lo, max_epochs=hi, rung0=rung0).rungs() == want


def test_rung_for_reports_every_epoch_and_skipped_epochs():
    s = sched(eta=3, max_epochs=27, rung0=True)
    assert s.rungs == (0, 1, 3, 9)
    assert [s.rung_for("a", e) for e in (0, 1, 2, 3, 4, 9, 26, 27)] == [0, 1, 1, 3, 3, 9, 9, None]
    rep(s, "a", 1, 0.5, 10)
    assert s.rung_for("a", 1) is None and s.rung_for("a", 0) is None  # already judged at or past them
    assert s.rung_for("a", 5) == 3  # epoch 3 never reported: judged at the rung it passed


def test_reports_between_rungs_and_at_the_end_are_not_judged():
    s = sched(eta=2, max_epochs=4)
    for t in "abc":
        rep(s, t, 1, 0.9, 10)
    d = rep(s, "z", 1, 0.1, 99)  # dominated by all: stopped at rung 1
    assert d.stop
    assert rep(s, "a", 3, 0.0, 10).action == CONTINUE and rep(s, "a", 3, 0.0, 10).rung is None
    assert rep(s, "b", 4, 0.0, 10).rung is None  # the full fine-tune: the trial is done anyway


# ------------------------------------------------------------------ the rule
def test_dominated_trial_stops_and_front_trial_continues():
    s = sched(eta=2)
    assert rep(s, "a", 1, 0.80, 1000).action == CONTINUE  # alone: too few to judge
    d = rep(s, "b", 1, 0.70, 2000)  # 2 recorded, keep 1: b is dominated by a
    assert d.action == STOP and d.rung == 1 and d.reached == 2 and d.kept == 1 and d.front == 2
    assert "outside the top 1 of 2" in d.reason and "after 1 fine-tune epoch" in d.reason
    d = rep(s, "c", 1, 0.95, 500)  # dominates both: front 1
    assert d.action == CONTINUE and d.front == 1 and d.kept == 1


def test_front_ties_with_infinite_crowding_go_to_quality():
    # a cheap, less accurate net is on the front (non-dominated on cost); when only one of the front's two
    # boundary points (both of infinite crowding) fits, the more accurate one is kept
    s = sched(eta=2)
    rep(s, "big", 1, 0.90, 1000)
    rep(s, "mid", 1, 0.85, 900)  # on the front too
    d = rep(s, "tiny", 1, 0.40, 10)
    assert d.front == 1
    # 3 recorded, keep 1: all on one front, crowding ties (boundaries infinite) -> better accuracy keeps it
    assert d.action == STOP
    d = rep(s, "tiny2", 1, 0.41, 9)  # 4 recorded, keep 2: the two boundary points (big and tiny2)
    assert d.action == CONTINUE and d.kept == 2


def test_top_cut_by_crowding_distance_inside_the_front():
    s = sched(eta=2)
    # four points on one front (accuracy up, params up); keep 2 -> the two boundary points
    for tid, acc, p in [("a", 0.90, 100), ("b", 0.80, 50), ("c", 0.70, 10)]:
        rep(s, tid, 1, acc, p)
    d = rep(s, "d", 1, 0.85, 75)  # inside the front, finite crowding: outside the top 2
    assert d.front == 1 and d.action == STOP
    assert "front 1" in d.reason


def test_crowding_prefers_isolated_points():
    # front of 5 (minimisation); keep 3: both boundaries plus the interior point with the largest gap
    F = np.array([[0, 10], [1, 9], [2, 8], [6, 4], [10, 0]], dtype=float)
    cd = crowding_distance(F)
    assert np.isinf(cd[0]) and np.isinf(cd[4])
    assert cd[3] > cd[2] > cd[1]
    assert sorted(select_top(F, 3).tolist()) == [0, 3, 4]


def test_select_top_fills_whole_fronts_first():
    F = np.array([[0, 0], [1, 1], [2, 2], [0.5, 3], [3, 0.5]], dtype=float)
    # front 1: [0,0]; front 2: [1,1],[0.5,3],[3,0.5]; front 3: [2,2]
    assert select_top(F, 1).tolist() == [0]
    top2 = select_top(F, 2).tolist()
    assert top2[0] == 0 and top2[1] in (3, 4)  # a boundary point of front 2 (infinite crowding)
    assert sorted(select_top(F, 4).tolist()) == [0, 1, 3, 4]
    assert 2 not in select_top(F, 4).tolist()


def test_ties_go_to_quality_then_arrival():
    F = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # exact duplicates: one front, zero ranges
    assert select_top(F, 1).tolist() == [0]  # earliest arrival
    assert select_top(F, 1, quality=np.array([0.0, -1.0, 0.0])).tolist() == [1]


def test_nan_values_rank_last():
    s = sched(eta=2)
    rep(s, "a", 1, 0.5, 100)
    d = s.report("b", 1, {"accuracy": float("nan"), "params": 1})
    assert d.action == STOP


def test_three_objectives_with_latency():
    s = sched(eta=3, objectives=["accuracy", "latency_ms", "params"])
    vals = {"a": (0.9, 2.0, 1000), "b": (0.8, 1.0, 800), "c": (0.7, 3.0, 1200)}  # c dominated by a
    for t, (acc, lat, p) in vals.items():
        d = s.report(t, 1, {"accuracy": acc, "latency_ms": lat, "params": p})
    assert d.action == STOP and d.front == 2
    assert s.recorded(1)["b"] == {"accuracy": 0.8, "latency_ms": 1.0, "params": 800.0}


# ------------------------------------------------------------------ asynchrony
def test_asynchronous_few_trials_continue_and_later_arrivals_are_judged_against_the_record():
    s = sched(eta=3, max_epochs=27)
    # the first η-1 arrivals at a rung cannot be judged: they continue whatever they are
    assert rep(s, "a", 1, 0.10, 1000).action == CONTINUE
    d = rep(s, "b", 1, 0.05, 2000)
    assert d.action == CONTINUE and d.kept == 0 and "2 of 3 results needed" in d.reason
    # the third is judged at once against the two recorded, without waiting for the rung to fill
    assert rep(s, "c", 1, 0.01, 3000).action == STOP
    # a trial at a higher rung is judged only against that rung's record (empty: continues)
    assert rep(s, "a", 3, 0.2, 1000).action == CONTINUE
    # a continued trial is never stopped afterwards by a better newcomer at the rung it passed
    assert rep(s, "d", 1, 0.99, 10).action == CONTINUE
    assert "a" in s.recorded(1) and s.recorded(3).keys() == {"a"}


def test_rung0_judges_before_fine_tuning():
    s = sched(eta=2, rung0=True)
    rep(s, "a", 0, 0.6, 100)
    d = rep(s, "b", 0, 0.3, 200)
    assert d.action == STOP and d.rung == 0 and "before fine-tuning" in d.reason


def test_record_replays_history_without_deciding():
    s = sched(eta=2)
    s.record("old", 1, {"accuracy": 0.9, "params": 10})
    assert rep(s, "new", 1, 0.5, 20).action == STOP
    with pytest.raises(ValueError, match="rung must be one of"):
        s.record("x", 5, {"accuracy": 0.9, "params": 10})


def test_deterministic():
    rng = np.random.default_rng(0)
    reports = [(f"t{i}", int(e), float(rng.random()), float(rng.integers(1, 1000)))
               for i in range(40) for e in (1, 2, 4) if rng.random() < 0.8]
    runs = []
    for _ in range(2):
        s = sched(eta=2)
        runs.append([rep(s, t, e, a, p) for t, e, a, p in reports])
    assert runs[0] == runs[1]
    # about 1/η of each judged rung continues
    stops = [d for d in runs[0] if d.rung == 1 and d.reached >= 2]
    assert 0.2 < sum(d.stop for d in stops) / len(stops) < 0.9


# ------------------------------------------------------------------ settings
def test_parse_scheduler():
    assert parse_scheduler(None) is None
    assert parse_scheduler({"type": "fifo"}) is None
    assert parse_scheduler("fifo") is None
    s = parse_scheduler({"type": "mo_asha", "reduction_factor": 3, "min_epochs": 1, "rung0": True}, max_epochs=9)
    assert s == MOASHASettings(reduction_factor=3, min_epochs=1, max_epochs=9, rung0=True)
    assert s.rungs() == (0, 1, 3)
    assert parse_scheduler("mo_asha", max_epochs=3) == MOASHASettings(3, 1, 3, False)


@pytest.mark.parametrize("data,match", [
    ({"type": "mo_asha", "reduction_factor": 1},
     r"^reduction_factor must be an integer >= 2, but got reduction_factor=1 \(x.yaml: search.scheduler"
     r".reduction_factor\)$"),
    ({"type": "mo_asha", "reduction_factor": 2.5}, r"reduction_factor must be an integer >= 2, but got "
                                                   r"reduction_factor=2.5"),
    ({"type": "mo_asha", "min_epochs": 0}, r"^min_epochs must be an integer >= 1, but got min_epochs=0 "),
    ({"type": "mo_asha", "min_epochs": True}, r"min_epochs must be an integer"),
    ({"type": "mo_asha", "rung0": "yes"}, r"^rung0 must be true or false, but got rung0='yes' "),
    ({"type": "mo_asha", "min_epochs": 20}, r"at least min_epochs=20 epochs .* but got finetune.epochs=9 "
                                            r"\(x.yaml: search.scheduler.min_epochs\)$"),
    ({"type": "hyperband"}, r"^type must be one of fifo, mo_asha, but got type='hyperband' "
                            r"\(x.yaml: search.scheduler.type\)$"),
    ({"type": "mo_asha", "eta": 3}, r"^unknown key 'eta' in x.yaml: search.scheduler; allowed keys: type, "),
    ({"type": "fifo", "min_epochs": 3}, r"^min_epochs is a setting of type mo_asha, but got type=fifo"),
    ([3], r"^scheduler must be a mapping or one of fifo, mo_asha, but got list \[3\] "),
])
def test_bad_settings_one_line_error(data, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_scheduler(data, "x.yaml: search.scheduler", max_epochs=9)
    assert "\n" not in str(e.value)


def test_unknown_objective():
    with pytest.raises(ConfigError, match="objectives must be among"):
        MOASHA(MOASHASettings(), ["accuracy", "energy"])
