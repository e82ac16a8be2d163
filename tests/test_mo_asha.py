"""MO-ASHA decisions on synthetic reports: rungs, the top-1/η cut, hypervolume and crowding cuts, asynchrony,
settings."""

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
    fallback_reference,
    hv_contributions,
    parse_scheduler,
    reference_beyond,
    reference_from_baseline,
    select_top,
)

OBJ = ["accuracy", "params"]


def sched(eta=2, min_epochs=1, max_epochs=9, rung0=False, objectives=OBJ, selection="hypervolume",
          reference=None, keep="syne_tune", brackets=1) -> MOASHA:
    return MOASHA(MOASHASettings(reduction_factor=eta, min_epochs=min_epochs, max_epochs=max_epochs, rung0=rung0,
                                 selection=selection, keep=keep, promote=keep == "promotable", brackets=brackets),
                  objectives, reference)


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
    s = sched(eta=3)
    assert rep(s, "a", 1, 0.80, 1000).action == CONTINUE  # alone: the first result at a rung goes on
    d = rep(s, "b", 1, 0.70, 2000)  # 2 recorded, keep ⌊2/3⌋ + 1 = 1: b is dominated by a
    assert d.action == STOP and d.rung == 1 and d.reached == 2 and d.kept == 1 and d.front == 2
    assert "outside the top 1 of 2" in d.reason and "after 1 fine-tune epoch" in d.reason
    d = rep(s, "c", 1, 0.95, 500)  # dominates both: front 1
    assert d.action == CONTINUE and d.front == 1 and d.kept == 2


def test_front_ties_with_infinite_crowding_go_to_quality():
    # a cheap, less accurate net is on the front (non-dominated on cost); when only one of the front's two
    # boundary points (both of infinite crowding) fits, the more accurate one is kept
    s = sched(eta=3, selection="crowding")
    rep(s, "big", 1, 0.90, 1000)
    d = rep(s, "tiny", 1, 0.40, 10)  # on the front too
    assert d.front == 1
    # 2 recorded, keep 1: one front, crowding ties (both boundaries infinite) -> better accuracy keeps it
    assert d.action == STOP and d.kept == 1
    rep(s, "mid", 1, 0.85, 900)
    d = rep(s, "tiny2", 1, 0.41, 9)  # 4 recorded, keep 2: the two boundary points (big and tiny2)
    assert d.action == CONTINUE and d.kept == 2


def test_top_cut_by_crowding_distance_inside_the_front():
    s = sched(eta=4, selection="crowding")
    # four points on one front (accuracy up, params up); keep ⌊4/4⌋ + 1 = 2 -> the two boundary points
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


def test_hv_contributions_exclusive_volume():
    # one 2-D front (ref 3, 3): first (1-0)*(3-2), middle (2-1)*(2-0.5), last (3-2)*(0.5-0)
    F = np.array([[0, 2], [1, 0.5], [2, 0], [2, 2], [np.nan, 1], [4, -1]], dtype=float)
    c = hv_contributions(F, np.array([3.0, 3.0]))
    assert c[:3] == pytest.approx([1.0, 1.5, 0.5])
    assert c[3] == 0 and c[4] == 0 and c[5] == 0  # dominated, NaN, outside the reference box
    dup = hv_contributions(np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([2.0, 2.0]))
    assert dup.tolist() == [0.0, 0.0]  # either duplicate alone keeps the volume


@pytest.mark.parametrize("k,want", [(1, [1]), (2, [0, 1]), (3, [0, 1, 2])])
def test_hypervolume_cut_drops_the_least_contributor_one_at_a_time(k, want):
    F = np.array([[0, 2], [1, 0.5], [2, 0]], dtype=float)  # contributions 1, 1.5, 0.5 (ref 3, 3)
    # k=1: drop [2, 0] (0.5); then [0, 2] adds 1 and [1, 0.5] adds 3: [1, 0.5] stays
    got = select_top(F, k, selection="hypervolume", ref=np.array([3.0, 3.0]))
    assert sorted(got.tolist()) == want
    assert select_top(F, 1, selection="crowding").tolist() == [0]  # an infinite boundary, earliest arrival


@pytest.mark.parametrize("selection,cheap", [("hypervolume", CONTINUE), ("crowding", STOP)])
def test_cheap_end_of_the_front_is_weighed_by_hypervolume(selection, cheap):
    # seen in bench/search_efficiency.py: an accurate trial passed the rung first; a much cheaper one, nearly
    # as accurate, arrives.  Both ends of a two-point front have infinite crowding, so crowding hands the one
    # slot to accuracy; its hypervolume contribution against the sweep's reference keeps the cheap one.
    ref = reference_from_baseline(["accuracy", "macs"], {"accuracy": 0.55, "macs": 31e6})
    s = sched(eta=3, objectives=["accuracy", "macs"], selection=selection, reference=ref)
    assert s.report("accurate", 1, {"accuracy": 0.62, "macs": 23e6}).action == CONTINUE
    d = s.report("cheap", 1, {"accuracy": 0.598, "macs": 13.7e6})
    assert d.front == 1 and d.kept == 1 and d.action == cheap
    assert selection in d.reason or d.action == CONTINUE


@pytest.mark.parametrize("reference,winner", [({"accuracy": 0.0, "params": 110.0}, "cheap"),
                                              ({"accuracy": 0.45, "params": 200.0}, "accurate")])
def test_the_given_reference_point_decides_the_front_cut(reference, winner):
    # exclusive contributions: accurate (0.9-0.5)*(ref-90), cheap (0.5-ref_acc)*(90-50)
    s = sched(eta=3, reference=reference)
    assert s.reference == reference
    rep(s, "accurate", 1, 0.9, 90)
    d = rep(s, "cheap", 1, 0.5, 50)
    assert d.front == 1 and d.action == (CONTINUE if winner == "cheap" else STOP)


def test_reference_from_baseline_is_the_sweeps_reference_point():
    base = {"accuracy": 0.9, "macs": 100.0, "latency_ms": 2.0, "params": 5.0}
    ref = reference_from_baseline(["accuracy", "macs", "latency_ms"], base)
    assert ref == pytest.approx({"accuracy": 0.0, "macs": 110.0, "latency_ms": 2.2})
    assert reference_from_baseline(["accuracy", "macs"], {"accuracy": 0.9}) is None  # no MACs figure
    assert reference_from_baseline(["accuracy", "macs"], None) is None


def test_fallback_reference_lies_strictly_beyond_every_row():
    F = np.array([[-0.9, 10.0], [-0.5, 30.0], [np.nan, 1.0], [-0.7, 30.0]])
    ref = fallback_reference(F)
    assert ref == pytest.approx([-0.5 + 0.1 * 0.4, 30.0 + 0.1 * 20.0])
    assert (F[[0, 1, 3]] < ref).all()
    same = fallback_reference(np.array([[2.0, 0.0], [2.0, 0.0]]))  # zero ranges: magnitude, else 1
    assert same == pytest.approx([2.2, 0.1])


def test_reference_must_be_finite():
    s = sched()
    with pytest.raises(ValueError, match="reference must give a finite value for every objective"):
        s.reference = {"accuracy": 0.0}
    s.reference = None
    assert s.reference is None


def test_ties_go_to_quality_then_arrival():
    F = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # exact duplicates: one front, zero ranges
    assert select_top(F, 1).tolist() == [0]  # earliest arrival
    assert select_top(F, 1, quality=np.array([0.0, -1.0, 0.0])).tolist() == [1]


@pytest.mark.parametrize("first", [True, False])
def test_nan_values_stop_and_rank_last(first):
    s = sched(eta=2)
    if not first:
        rep(s, "a", 1, 0.5, 100)
    d = s.report("b", 1, {"accuracy": float("nan"), "params": 1})
    assert d.action == STOP and "non-finite" in d.reason
    d = rep(s, "c", 1, 0.1, 1000)  # worse than "a" on both, but ahead of the NaN row
    assert d.action == CONTINUE and d.front == (1 if first else 2)


def test_three_objectives_with_latency():
    s = sched(eta=3, objectives=["accuracy", "latency_ms", "params"])
    vals = {"a": (0.9, 2.0, 1000), "b": (0.8, 1.0, 800), "c": (0.7, 3.0, 1200)}  # c dominated by a
    for t, (acc, lat, p) in vals.items():
        d = s.report(t, 1, {"accuracy": acc, "latency_ms": lat, "params": p})
    assert d.action == STOP and d.front == 2
    assert s.recorded(1)["b"] == {"accuracy": 0.8, "latency_ms": 1.0, "params": 800.0}


# ------------------------------------------------------------------ asynchrony
def test_asynchronous_first_continues_and_later_arrivals_are_judged_against_the_record():
    s = sched(eta=3, max_epochs=27)
    # the first arrival at a rung has nothing to be judged against: it continues whatever it is
    d = rep(s, "a", 1, 0.10, 1000)
    assert d.action == CONTINUE and d.kept == 1 and "top 1 of 1" in d.reason
    # the second is judged at once (only the best so far continues), without waiting for η results
    d = rep(s, "b", 1, 0.05, 2000)
    assert d.action == STOP and d.reached == 2 and d.kept == 1 and d.front == 2
    assert rep(s, "c", 1, 0.01, 3000).action == STOP  # third of 3, keep 2
    # a trial at a higher rung is judged only against that rung's record (empty: continues)
    assert rep(s, "a", 3, 0.2, 1000).action == CONTINUE
    # a continued trial is never stopped afterwards by a better newcomer at the rung it passed
    assert rep(s, "d", 1, 0.99, 10).action == CONTINUE
    assert "a" in s.recorded(1) and s.recorded(3).keys() == {"a"}


@pytest.mark.parametrize("eta,second,want", [
    (3, (0.5, 200), STOP), (4, (0.5, 200), STOP),         # dominated by the first: ranks 2nd of 2 > 1/η
    (3, (0.9, 50), CONTINUE), (4, (0.9, 50), CONTINUE),   # dominates the first
    (2, (0.5, 200), CONTINUE),                            # η = 2: 2nd of 2 is within the top half
])
def test_second_arrival_is_judged(eta, second, want):
    s = sched(eta=eta, max_epochs=27)
    assert rep(s, "first", 1, 0.6, 100).action == CONTINUE
    d = rep(s, "second", 1, *second)
    assert d.action == want and d.reached == 2 and d.kept == 2 // eta + 1


@pytest.mark.parametrize("keep,eta,n,kept", [
    ("syne_tune", 3, 3, 2), ("syne_tune", 3, 5, 2), ("syne_tune", 3, 6, 3), ("syne_tune", 3, 11, 4),
    ("syne_tune", 2, 4, 3), ("syne_tune", 4, 7, 2), ("syne_tune", 4, 8, 3),
    ("asha", 3, 2, 1), ("asha", 3, 5, 1), ("asha", 3, 6, 2), ("asha", 3, 11, 3), ("asha", 2, 4, 2), ("asha", 4, 8, 2),
    ("promotable", 3, 2, 0), ("promotable", 3, 5, 1), ("promotable", 3, 6, 2), ("promotable", 2, 4, 2),
    ("promotable", 4, 7, 1),
])
def test_kept_is_floor_n_over_eta_plus_one_or_asha_s_promotable_count(keep, eta, n, kept):
    """``keep: syne_tune`` (the default) keeps ⌊n/η⌋ + 1 of a rung's n results, ``keep: asha`` max(1, ⌊n/η⌋),
    ``keep: promotable`` ⌊n/η⌋."""
    s = sched(eta=eta, max_epochs=27, keep=keep)
    for i in range(n - 1):  # each better on both objectives than the ones before
        rep(s, f"t{i}", 1, 0.5 + 0.01 * i, 1000 - i)
    d = rep(s, "last", 1, 0.1, 5000)  # dominated by all
    assert d.reached == n and d.kept == kept and d.action == STOP and d.front == n
    d = rep(s, "best", 1, 0.99, 1)  # dominates all: always kept
    m = n + 1
    assert d.kept == {"syne_tune": m // eta + 1, "asha": max(1, m // eta), "promotable": m // eta}[keep]
    assert d.action == (CONTINUE if d.kept else STOP)


@pytest.mark.parametrize("keep,want", [("syne_tune", CONTINUE), ("asha", STOP), ("promotable", STOP)])
def test_the_third_arrival_ranked_second_goes_on_only_under_syne_tune_s_count(keep, want):
    s = sched(eta=3, max_epochs=27, keep=keep)
    rep(s, "best", 1, 0.9, 10)
    rep(s, "worst", 1, 0.1, 1000)
    d = rep(s, "middle", 1, 0.5, 100)  # dominated by "best" only: second of three
    assert d.reached == 3 and d.front == 2 and d.action == want


def test_rung0_judges_before_fine_tuning():
    s = sched(eta=3, rung0=True)
    rep(s, "a", 0, 0.6, 100)
    d = rep(s, "b", 0, 0.3, 200)
    assert d.action == STOP and d.rung == 0 and "before fine-tuning" in d.reason


@pytest.mark.parametrize("rung0_eta, kept_at_rung0", [(None, 2), (9, 1)])
def test_rung0_may_keep_fewer_and_later_rungs_keep_their_eta(rung0_eta, kept_at_rung0):
    """A rung-0 result costs no fine-tune epoch: with rung0_reduction_factor 9 the third arrival keeps only the
    best (⌊3/9⌋ + 1), where η = 3 keeps two; rung 1 still keeps ⌊n/3⌋ + 1."""
    s = MOASHA(MOASHASettings(reduction_factor=3, max_epochs=9, rung0=True, rung0_reduction_factor=rung0_eta), OBJ)
    rep(s, "best", 0, 0.9, 100)
    rep(s, "worst", 0, 0.1, 300)
    d = rep(s, "second", 0, 0.5, 200)  # dominated by "best" only
    assert (d.kept, d.stop) == (kept_at_rung0, kept_at_rung0 == 1)
    rep(s, "best", 1, 0.9, 100)
    rep(s, "worst", 1, 0.1, 300)
    d = rep(s, "second", 1, 0.5, 200)
    assert (d.kept, d.stop) == (2, False)


@pytest.mark.parametrize("keeps_front", [False, True])
def test_rung0_keeps_front_stops_only_dominated_trials_there(keeps_front):
    """With η = 3 and k = 1 (keep: asha) the in-front cut keeps one of three non-dominated results at rung 0;
    rung0_keeps_front lets every one of them go on and stops only the dominated; rung 1 cuts as before."""
    s = MOASHA(MOASHASettings(reduction_factor=3, max_epochs=9, rung0=True, rung0_keeps_front=keeps_front,
                              keep="asha"), OBJ)
    rep(s, "accurate", 0, 0.9, 300)
    rep(s, "middle", 0, 0.6, 200)
    cheap = rep(s, "cheap", 0, 0.3, 50)  # the cheapest, scoring low before any fine-tuning: on the first front
    dominated = rep(s, "dominated", 0, 0.5, 250)  # "middle" is cheaper and better
    assert (cheap.front, cheap.kept, cheap.stop) == (1, 1, not keeps_front)
    assert "rung0_keeps_front" in cheap.reason if keeps_front else "outside the top 1 of 3" in cheap.reason
    assert (dominated.front, dominated.stop) == (2, True)
    rep(s, "accurate", 1, 0.9, 300)
    rep(s, "middle", 1, 0.6, 200)
    assert rep(s, "cheap", 1, 0.3, 50).stop  # a later rung's cut is its own


def test_record_replays_history_without_deciding():
    s = sched(eta=3)
    s.record("old", 1, {"accuracy": 0.9, "params": 10})
    assert rep(s, "new", 1, 0.5, 20).action == STOP
    with pytest.raises(ValueError, match="rung must be one of"):
        s.record("x", 5, {"accuracy": 0.9, "params": 10})


def test_promotions_are_the_stopped_trials_a_grown_rung_ranks_in_its_top():
    """ASHA's promotable set, once a rung has grown: the top ⌊n/η⌋ of the rung that were stopped there (not those
    that went on, nor a stop with a missing value, nor replayed results), best first, each named once."""
    s = sched(eta=3, max_epochs=27, keep="asha")
    rep(s, "first", 1, 0.90, 100)  # the first arrival goes on
    assert rep(s, "good", 1, 0.80, 200).stop  # 2 results: max(1, ⌊2/3⌋) = 1 kept, "first" holds it
    assert s.promotions() == []  # ⌊2/3⌋ = 0: nothing is promotable yet
    s.record("replayed", 1, {"accuracy": 0.95, "params": 50})  # a resumed sweep's: ranked, never promoted
    s.record("replayed-stop", 1, {"accuracy": 0.05, "params": 990}, stopped=True)  # promotable, but ranks last
    assert rep(s, "nan", 1, float("nan"), 10).stop
    for i in range(5):  # dominated by "good": stopped
        assert rep(s, f"weak{i}", 1, 0.10 + 0.01 * i, 900 - i).stop
    # 10 results, top 3: "replayed", "good", and "first" (went on): only "good" was stopped there
    assert s.promotions() == [("good", 1)]
    assert s.promotions() == []  # named once
    # a promoted trial goes on to the next rung like any other; its own rung keeps its record
    assert rep(s, "good", 3, 0.85, 200).action == CONTINUE and "good" in s.recorded(1)


def test_promotions_look_from_the_top_rung_down():
    s = sched(eta=2, max_epochs=27, keep="asha")
    rep(s, "a", 1, 0.9, 100)
    assert rep(s, "b", 1, 0.5, 200).stop  # 2 at rung 1: max(1, ⌊2/2⌋) = 1, "a" holds it
    rep(s, "a", 2, 0.9, 100)
    assert rep(s, "d", 2, 0.8, 150).stop  # a later arrival at rung 2 (promoted there by then), dominated by "a"
    rep(s, "e", 2, 0.1, 900)
    rep(s, "f", 2, 0.2, 800)
    rep(s, "c", 1, 0.4, 300)
    rep(s, "g", 1, 0.3, 400)
    # rung 2 (4 results, top 2: a went on, d stopped) before rung 1 (4 results, top 2: a went on, b stopped)
    assert s.promotions() == [("d", 2), ("b", 1)]


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


# ------------------------------------------------------------------ brackets
@pytest.mark.parametrize("brackets,weights,rungs", [
    (1, (1.0,), [(0, 1, 3)]),
    (2, (3 / 5, 2 / 5), [(0, 1, 3), (1, 3)]),
    (4, (27 / 49, 12 / 49, 6 / 49, 4 / 49), [(0, 1, 3), (1, 3), (3,), ()]),  # Hyperband's n per bracket, η = 3
])
def test_brackets_start_at_later_rungs_in_hyperbands_proportions(brackets, weights, rungs):
    s = MOASHASettings(reduction_factor=3, max_epochs=9, rung0=True, brackets=brackets)
    assert s.bracket_weights() == pytest.approx(weights)
    assert [s.bracket_rungs(b) for b in range(brackets)] == rungs
    for n in (10, 48, 200):  # the shares hold from the first trials on
        got = [s.bracket_of(i) for i in range(n)]
        assert all(abs(got.count(b) / n - w) <= 1.5 / n + 0.03 for b, w in enumerate(weights)), (n, got)
    assert [s.bracket_of(i) for i in range(48)] == [s.bracket_of(i) for i in range(48)]  # by number, every time
    assert s.bracket_of(None) == 0


def test_each_bracket_is_judged_from_its_own_first_rung_against_its_own_trials():
    """Two brackets over rungs 0, 1, 3 (η 3): bracket 1 is not judged at rung 0; its rung 1 holds only its trials,
    so a result that bracket 0 stops there goes on in bracket 1, where it arrives first."""
    s = sched(eta=3, max_epochs=9, rung0=True, brackets=2)
    b0 = [n for n in range(20) if s.settings.bracket_of(n) == 0][:2]
    late = next(n for n in range(20) if s.settings.bracket_of(n) == 1)
    assert s.report("b0-0", 1, {"accuracy": 0.9, "params": 100}, number=b0[0]).action == CONTINUE
    assert s.report("b0-1", 1, {"accuracy": 0.2, "params": 100}, number=b0[1]).stop  # 2nd at rung 1, ranked behind
    # a trial of bracket 1: rung 0 is none of its rungs, whatever it scores there
    d = s.report("b1", 0, {"accuracy": 0.01, "params": 100}, number=late)
    assert d.action == CONTINUE and d.rung is None
    d = s.report("b1", 1, {"accuracy": 0.2, "params": 100}, number=late)  # b0-1's figures: the first of its bracket
    assert d.action == CONTINUE and d.rung == 1 and d.reached == 1
    assert d.reason.startswith("rung 1 (1 fine-tune epoch) of bracket 1: in the top 1 of 1")
    assert set(s.recorded(1)) == {"b0-0", "b0-1"} and set(s.recorded(1, bracket=1)) == {"b1"}
    assert s.recorded(0, bracket=1) == {}
    assert s.bracket("b1", number=b0[0]) == 1  # a trial keeps the bracket it was first seen in


def test_a_replayed_result_lands_in_its_trials_bracket_and_brackets_promote_on_their_own():
    s = sched(eta=2, max_epochs=9, brackets=2, keep="asha")  # rungs 1, 2, 4; bracket 1 from rung 2 on
    b0 = [n for n in range(40) if s.settings.bracket_of(n) == 0]
    b1 = [n for n in range(40) if s.settings.bracket_of(n) == 1]
    s.record("old", 1, {"accuracy": 0.9, "params": 10}, number=b1[0])  # rung 1 is none of bracket 1's: not put
    assert s.recorded(1) == {} and s.recorded(1, bracket=1) == {}
    s.record("old", 2, {"accuracy": 0.9, "params": 10}, number=b1[0])
    assert set(s.recorded(2, bracket=1)) == {"old"}
    assert s.report("x", 2, {"accuracy": 0.5, "params": 20}, number=b1[1]).stop  # judged against "old" alone
    assert s.report("y", 1, {"accuracy": 0.5, "params": 20}, number=b0[0]).action == CONTINUE  # bracket 0: first
    assert s.report("z", 1, {"accuracy": 0.4, "params": 30}, number=b0[1]).stop
    s.record("w", 2, {"accuracy": 0.1, "params": 90}, number=b1[2])
    s.record("v", 2, {"accuracy": 0.1, "params": 95}, number=b1[3])
    # bracket 1's rung 2: 4 results, top 2 "old" and "x" (x stopped there); bracket 0's rung 1: 2, top 1 "y" (went on)
    assert s.promotions() == [("x", 2)]


# ------------------------------------------------------------------ settings
def test_parse_scheduler():
    assert parse_scheduler(None) is None
    assert parse_scheduler({"type": "fifo"}) is None
    assert parse_scheduler("fifo") is None
    s = parse_scheduler({"type": "mo_asha", "reduction_factor": 3, "min_epochs": 1, "rung0": True}, max_epochs=9)
    assert s == MOASHASettings(reduction_factor=3, min_epochs=1, max_epochs=9, rung0=True)
    assert s.rungs() == (0, 1, 3)
    assert parse_scheduler("mo_asha", max_epochs=3) == MOASHASettings(3, 1, 3, False)
    assert parse_scheduler("mo_asha").selection == "hypervolume"
    assert parse_scheduler("mo_asha").keep == "syne_tune"
    assert parse_scheduler({"type": "mo_asha", "keep": "asha"}, max_epochs=9).keep == "asha"
    promotable = {"type": "mo_asha", "keep": "promotable", "promote": True}
    assert parse_scheduler(promotable, max_epochs=9).keep == "promotable"
    assert parse_scheduler("mo_asha").promote_every is None
    assert parse_scheduler({**promotable, "promote_every": 12}, max_epochs=9).promote_every == 12
    assert not parse_scheduler("mo_asha").promote
    assert parse_scheduler({"type": "mo_asha", "promote": True}, max_epochs=9).promote
    assert parse_scheduler("mo_asha").brackets == 1
    assert parse_scheduler({"type": "mo_asha", "brackets": 3}, max_epochs=9).brackets == 3
    s = parse_scheduler({"type": "mo_asha", "rung0": True, "rung0_reduction_factor": 9}, max_epochs=9)
    assert (s.eta(0), s.eta(1), s.eta(3)) == (9, 3, 3) and MOASHASettings(rung0=True).eta(0) == 3
    assert not parse_scheduler("mo_asha").rung0_keeps_front
    assert parse_scheduler({"type": "mo_asha", "rung0": True, "rung0_keeps_front": True}).rung0_keeps_front


@pytest.mark.parametrize("selection", ["hypervolume", "crowding"])
def test_parse_selection(selection):
    assert parse_scheduler({"type": "mo_asha", "selection": selection}, max_epochs=9).selection == selection


@pytest.mark.parametrize("data,match", [
    ({"type": "mo_asha", "reduction_factor": 1},
     r"^reduction_factor must be an integer >= 2, but got reduction_factor=1 \(x.yaml: search.scheduler"
     r".reduction_factor\)$"),
    ({"type": "mo_asha", "reduction_factor": 2.5}, r"reduction_factor must be an integer >= 2, but got "
                                                   r"reduction_factor=2.5"),
    ({"type": "mo_asha", "min_epochs": 0}, r"^min_epochs must be an integer >= 1, but got min_epochs=0 "),
    ({"type": "mo_asha", "min_epochs": True}, r"min_epochs must be an integer"),
    ({"type": "mo_asha", "rung0": "yes"}, r"^rung0 must be true or false, but got rung0='yes' "),
    ({"type": "mo_asha", "promote": 1}, r"^promote must be true or false, but got promote=1 "
                                        r"\(x.yaml: search.scheduler.promote\)$"),
    ({"type": "mo_asha", "rung0": True, "rung0_reduction_factor": 1},
     r"^rung0_reduction_factor must be an integer >= 2, but got rung0_reduction_factor=1 "
     r"\(x.yaml: search.scheduler.rung0_reduction_factor\)$"),
    ({"type": "mo_asha", "rung0_reduction_factor": 9}, r"^rung0_reduction_factor applies to rung 0, which needs "
                                                       r"rung0: true, but got rung0=False \(x.yaml: search.scheduler"
                                                       r".rung0_reduction_factor\)$"),
    ({"type": "mo_asha", "rung0_keeps_front": True}, r"^rung0_keeps_front applies to rung 0, which needs rung0: "
                                                     r"true, but got rung0=False \(x.yaml: search.scheduler"
                                                     r".rung0_keeps_front\)$"),
    ({"type": "mo_asha", "rung0": True, "rung0_keeps_front": "yes"},
     r"^rung0_keeps_front must be true or false, but got rung0_keeps_front='yes' \(x.yaml: search.scheduler"
     r".rung0_keeps_front\)$"),
    ({"type": "mo_asha", "min_epochs": 20}, r"at least min_epochs=20 epochs .* but got finetune.epochs=9 "
                                            r"\(x.yaml: search.scheduler.min_epochs\)$"),
    ({"type": "mo_asha", "selection": "epsnet"}, r"^selection must be one of hypervolume, crowding, but got "
                                                 r"selection='epsnet' \(x.yaml: search.scheduler.selection\)$"),
    ({"type": "mo_asha", "keep": "half"}, r"^keep must be one of syne_tune, asha, promotable, but got keep='half' "
                                           r"\(x.yaml: search.scheduler.keep\)$"),
    ({"type": "mo_asha", "keep": "promotable"}, r"^keep: promotable stops a rung's first arrivals until promotions "
                                                r"let them go on, so it must come with promote: true, but got "
                                                r"promote=False \(x.yaml: search.scheduler.keep\)$"),
    ({"type": "mo_asha", "promote": True, "promote_every": 0}, r"^promote_every must be an integer >= 1, but got "
                                                               r"promote_every=0 \(x.yaml: search.scheduler"
                                                               r".promote_every\)$"),
    ({"type": "mo_asha", "promote_every": 12}, r"^promote_every sets how often promotions run, which needs promote: "
                                               r"true, but got promote=False \(x.yaml: search.scheduler"
                                               r".promote_every\)$"),
    ({"type": "mo_asha", "brackets": 0}, r"^brackets must be an integer >= 1, but got brackets=0 "
                                         r"\(x.yaml: search.scheduler.brackets\)$"),
    ({"type": "mo_asha", "brackets": 4}, r"^brackets must be at most 3 \(one per rung, \[1, 3\], and one judged at "
                                         r"none\), but got brackets=4 \(x.yaml: search.scheduler.brackets\)$"),
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


# ------------------------------------------------------------------ a resumed sweep's rungs
def _row(status, epochs, rung_quality, accuracy=0.9, trial_id="t", number=0):
    from sweep.results.schema import TrialRecord

    return TrialRecord(sweep="s", trial_id=trial_id, trial_number=number, status=status, method="magnitude",
                       accuracy=accuracy, params=100, macs=200, latency_ms=1.0, finetune_epochs=epochs,
                       rung_quality=rung_quality)


def _halving_cfg(promote: bool = False, brackets: int = 1):
    """A sweep with rungs 0, 1 and 3 (9 fine-tune epochs, η 3, rung 0)."""
    from sweep.config import parse_config

    settings = {"type": "mo_asha", "rung0": True, "keep": "asha", "promote": promote, "brackets": brackets}
    return parse_config({"name": "s", "model": {"name": "small_cnn"}, "dataset": "digits",
                         "finetune": {"epochs": 9, "checkpoint": True},
                         "search": {"objectives": OBJ, "scheduler": settings},
                         "methods": {"magnitude": {"ratio": {"low": 0.1, "high": 0.9}}}}, source="space.yaml")


@pytest.mark.parametrize("row,replayed", [
    # a trial that went the whole way: every rung it reported, with its fixed costs
    (_row("ok", 9, '{"0": 0.4, "1": 0.6, "3": 0.8}'),
     {0: {"accuracy": 0.4, "params": 100.0}, 1: {"accuracy": 0.6, "params": 100.0},
      3: {"accuracy": 0.8, "params": 100.0}}),
    # stopped at rung 1: the rungs up to there
    (_row("stopped_early", 1, '{"0": 0.4, "1": 0.5}', accuracy=0.5),
     {0: {"accuracy": 0.4, "params": 100.0}, 1: {"accuracy": 0.5, "params": 100.0}}),
    # a table written before the column: where it stopped, as before
    (_row("stopped_early", 1, None, accuracy=0.5), {1: {"accuracy": 0.5, "params": 100.0}}),
    (_row("ok", 9, None), {}),
    (_row("ok", 9, "not json"), {}),                              # edited by hand: nothing replayed
    (_row("ok", 9, '{"0": 0.4, "5": 0.7}'), {0: {"accuracy": 0.4, "params": 100.0}}),  # 5 is no rung of this sweep
    (_row("infeasible", 0, None, accuracy=0.3), {}),
])
def test_a_resumed_sweep_replays_every_rung_its_finished_trials_reported(row, replayed):
    from sweep.driver import _replayed_rungs

    cfg = _halving_cfg()
    assert cfg.search.scheduler.rungs() == (0, 1, 3)
    assert _replayed_rungs(cfg, row, cfg.search.scheduler.rungs()) == replayed


def _resumed(promote: bool, rows):
    from sweep.driver import _scheduler

    return _scheduler(_halving_cfg(promote), rows).logic


def test_the_resumed_scheduler_holds_the_trials_that_went_on_at_their_rungs():
    went_on = _row("ok", 9, '{"0": 0.4, "1": 0.6, "3": 0.8}', trial_id="on")
    stopped = _row("stopped_early", 1, '{"0": 0.5, "1": 0.55}', accuracy=0.55, trial_id="off")
    logic = _resumed(False, [went_on, stopped])
    assert logic.recorded(0) == {"on": {"accuracy": 0.4, "params": 100.0}, "off": {"accuracy": 0.5, "params": 100.0}}
    assert logic.recorded(1) == {"on": {"accuracy": 0.6, "params": 100.0}, "off": {"accuracy": 0.55, "params": 100.0}}
    assert logic.recorded(3) == {"on": {"accuracy": 0.8, "params": 100.0}}
    assert logic.promotions() == []  # without promote, replayed stops are ranked, never promoted


def test_a_resumed_sweep_replays_each_trial_in_its_bracket():
    from sweep.driver import _scheduler

    cfg = _halving_cfg(brackets=2)
    numbers = {b: next(n for n in range(10) if cfg.search.scheduler.bracket_of(n) == b) for b in (0, 1)}
    rows = [_row("ok", 9, '{"0": 0.4, "1": 0.6, "3": 0.8}', trial_id=f"in{b}", number=n) for b, n in numbers.items()]
    logic = _scheduler(cfg, rows).logic
    assert list(logic.recorded(0)) == list(logic.recorded(1)) == list(logic.recorded(3)) == ["in0"]
    assert logic.recorded(0, bracket=1) == {} and list(logic.recorded(1, bracket=1)) == ["in1"]
    assert list(logic.recorded(3, bracket=1)) == ["in1"]


@pytest.mark.parametrize("whole", [True, False])
def test_a_resumed_sweep_may_promote_an_earlier_runs_stop_once_its_rungs_are_whole(whole):
    """Under promote, an earlier run's stop is promotable when the rung, grown, ranks it in its top ⌊n/η⌋ --
    but only where every stopped row holds its rung qualities (a table written before the column holds just
    the stops at their rungs, none of the trials that went on: ranking there would promote the stops)."""
    went_on = [_row("ok", 9, '{"0": 0.3, "1": 0.5, "3": 0.7}', accuracy=0.8, trial_id=f"on{i}") for i in range(2)]
    stopped = [_row("stopped_early", 0, '{"0": 0.6}' if whole else None, accuracy=0.6, trial_id="best")]
    stopped += [_row("stopped_early", 0, '{"0": 0.1}', accuracy=0.1, trial_id=f"weak{i}") for i in range(3)]
    # rung 0 holds 6 results, top 2: "best" (0.6) and one of the same-cost trials that went on (0.3)
    assert _resumed(True, went_on + stopped).promotions() == ([("best", 0)] if whole else [])


def test_a_latency_beyond_the_sweeps_reference_is_cut_by_its_contribution_not_by_quality_alone():
    """Latencies timed beside other trials can lie beyond 1.1x the baseline's (timed alone): beyond the reference
    point they add no hypervolume, and the cut fell to the quality tie-break (B, the middle point, dropped).  With
    the reference pushed out there, the point adding least goes: A, the slowest, barely more accurate than B."""
    s = MOASHA(MOASHASettings(reduction_factor=2, max_epochs=9), ["accuracy", "latency_ms"],
               reference={"accuracy": 0.0, "latency_ms": 1.1})
    s.report("A", 1, {"accuracy": 0.9, "latency_ms": 1.5})
    s.report("C", 1, {"accuracy": 0.5, "latency_ms": 0.5})
    F = np.stack(list(s._recorded[(0, 1)].values()) + [s._vector({"accuracy": 0.8, "latency_ms": 1.2})])
    pushed = reference_beyond(F, s._ref)
    assert pushed[0] == 0.0 and pushed[1] == pytest.approx(1.5 + 0.1 * 1.0)  # quality's stays: every point inside
    # rows: A, C, B.  Against the sweep's own reference A and B add nothing and B goes by quality
    assert set(select_top(F, 2, F[:, 0], selection="hypervolume", ref=s._ref).tolist()) == {0, 1}
    assert set(s._top(F, 2).tolist()) == {1, 2}  # pushed out: C and B, A adds least
    d = s.report("B", 1, {"accuracy": 0.8, "latency_ms": 1.2})
    assert (d.kept, d.stop) == (2, False)
    # every point inside the reference: it is used as it is
    inside = np.array([[-0.9, 1.0], [-0.5, 0.5]])
    assert list(reference_beyond(inside, s._ref)) == list(s._ref)
    # a quality of exactly 0 sits on its reference (it adds nothing there): not a reason to push it out
    assert list(reference_beyond(np.array([[-0.0, 0.4], [-0.5, 0.5]]), s._ref)) == list(s._ref)


def test_under_the_promotable_count_a_rung_s_first_arrivals_stop_and_the_best_is_promoted_once_it_has_grown():
    """``keep: promotable`` is ASHA's ⌊n/η⌋: nobody goes on from a rung of fewer than η results, not even the best
    of them; once the rung has grown, :meth:`MOASHA.promotions` lets the best stopped ones go on."""
    s = sched(eta=3, max_epochs=27, keep="promotable")
    assert rep(s, "best", 1, 0.90, 100).stop  # 1 result: ⌊1/3⌋ = 0 kept
    assert rep(s, "worse", 1, 0.50, 200).stop
    d = rep(s, "worst", 1, 0.10, 300)  # ⌊3/3⌋ = 1 kept, "best" holds it
    assert d.stop and d.kept == 1
    assert rep(s, "newcomer", 1, 0.95, 50).action == CONTINUE  # best of 4: in the top ⌊4/3⌋ = 1 on arrival
    for i in range(2):
        assert rep(s, f"weak{i}", 1, 0.05, 900 + i).stop
    assert s.promotions() == [("best", 1)]  # 6 results, top ⌊6/3⌋ = 2: "newcomer" went on, "best" was stopped
    assert s.promotions() == []


@pytest.mark.parametrize("keep,went_on", [("promotable", False), ("asha", True), ("syne_tune", True)])
def test_a_rung_nobody_went_on_from_promotes_its_best_at_the_end_even_below_eta_results(keep, went_on):
    """At the end a rung of fewer than η results from which no trial went on still carries its best stopped one
    up (successive halving's last survivor), once; where a trial went on from it, ⌊n/η⌋ = 0 promotes nobody.  A
    trial stopped for a missing value does not count as gone on, and is never carried."""
    s = sched(eta=3, max_epochs=27, keep=keep)
    assert rep(s, "nan", 3, float("nan"), 10).stop
    assert rep(s, "only", 3, 0.60, 100).action == (CONTINUE if went_on else STOP)  # 2 results: ⌊2/3⌋ = 0
    assert s.promotions(at_end=False) == []  # between rounds (promote_every) new candidates may still grow it
    assert s.promotions() == ([] if went_on else [("only", 3)])
    assert s.promotions() == []  # "only" went on now: nobody else is carried
