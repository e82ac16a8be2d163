"""The noise-aware front (``front_flags(..., robust=True)``) and duplicate structures, on hand-made rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sweep import pareto
from sweep.results.schema import TrialRecord, with_front

OBJ = ["accuracy", "latency_ms"]


def row(tid, acc, lat, iqr=0.0, params=1000, macs=5000, status="ok", **extra):
    return {"trial_id": tid, "status": status, "accuracy": acc, "latency_ms": lat, "latency_iqr_ms": iqr,
            "params": params, "macs": macs, **extra}


def test_overlapping_spreads_do_not_order_latency():
    # a is faster by 0.0001 ms, but both spreads are 0.0016 ms wide: the strict front keeps both
    # (a faster, b more accurate); the robust one sees equal latency, so b's accuracy wins.
    rows = [row("a", 0.90, 1.0000, 0.0016), row("b", 0.91, 1.0001, 0.0016)]
    assert pareto.front_flags(rows, OBJ) == [True, True]
    assert pareto.front_flags(rows, OBJ, robust=True) == [False, True]


def test_separated_spreads_do_order_latency():
    # bands 1.0 ± 0.05 and 2.0 ± 0.05 do not overlap: a is faster, b more accurate, both stay
    rows = [row("a", 0.90, 1.0, 0.1), row("b", 0.91, 2.0, 0.1)]
    assert pareto.front_flags(rows, OBJ, robust=True) == [True, True]
    # and a point slower beyond the noise and less accurate is dominated under both tests
    rows.append(row("c", 0.89, 3.0, 0.1))
    assert pareto.front_flags(rows, OBJ) == [True, True, False]
    assert pareto.front_flags(rows, OBJ, robust=True) == [True, True, False]


def test_strict_win_inside_the_noise_is_no_win():
    # c equals d in accuracy and is faster only within the noise: strictly dominated, robustly not
    rows = [row("c", 0.90, 1.00, 0.2), row("d", 0.90, 1.05, 0.2)]
    assert pareto.front_flags(rows, OBJ) == [True, False]
    assert pareto.front_flags(rows, OBJ, robust=True) == [True, True]


def test_bands_that_just_touch_count_as_overlapping():
    # 1.0 + 0.1 == 1.2 - 0.1: touching bands are not separated
    rows = [row("a", 0.90, 1.0, 0.2), row("b", 0.91, 1.2, 0.2)]
    assert pareto.front_flags(rows, OBJ, robust=True) == [False, True]


def test_zero_or_missing_spread_is_the_strict_front():
    rng = np.random.default_rng(0)
    rows = [row(str(i), float(a), float(b), iqr) for i, (a, b), iqr in
            zip(range(40), rng.integers(0, 6, size=(40, 2)), [0.0, None, float("nan"), 0.0] * 10)]
    assert pareto.front_flags(rows, OBJ, robust=True) == pareto.front_flags(rows, OBJ)


def test_robust_front_is_never_empty_and_skips_non_ok_rows():
    rows = [row(str(i), 0.9, 1.0 + i * 0.01, 0.5) for i in range(5)] + [row("f", 0.99, 0.1, status="failed")]
    flags = pareto.front_flags(rows, OBJ, robust=True)
    assert any(flags) and flags[-1] is False


def test_robust_test_matches_a_brute_force_reference():
    rng = np.random.default_rng(1)
    F = rng.integers(0, 5, size=(30, 2)).astype(float)
    H = rng.choice([0.0, 0.5, 1.0], size=(30, 2))

    def dominates(i, j):
        not_worse = all(F[i, k] - H[i, k] <= F[j, k] + H[j, k] for k in range(2))
        better = any(F[i, k] + H[i, k] < F[j, k] - H[j, k] for k in range(2))
        return not_worse and better

    want = [not any(dominates(j, i) for j in range(30) if j != i) for i in range(30)]
    assert pareto.non_dominated_mask(F, H).tolist() == want


def test_within_noise_and_neighbours():
    a, b, c = row("a", 0.9, 1.0, 0.2), row("b", 0.9, 1.15, 0.2), row("c", 0.9, 2.0, 0.2)
    assert pareto.within_noise(a, b) and not pareto.within_noise(a, c)
    assert pareto.noise_neighbours([a, b, c]) == [1, 1, 0]


def test_identical_structures_are_marked_duplicates():
    widths = json.dumps({"channels": {"conv1": 8, "conv2": 16}})
    other = json.dumps({"channels": {"conv1": 16, "conv2": 8}})
    rows = [row("baseline", 0.95, 2.0, params=5000, macs=9000),
            row("t1", 0.90, 1.0, info=widths), row("t2", 0.91, 1.0, info=widths),
            row("t3", 0.92, 1.0, info=other),  # same counts, other widths: a different network
            row("t4", 0.93, 1.0, status="failed", info=widths),
            row("t5", 0.90, 1.0, info=widths)]
    assert pareto.duplicate_of(rows) == [None, None, "t1", None, None, "t1"]
    assert pareto.structure_key(row("x", 0.9, 1.0, params=None)) is None


def test_with_front_sets_both_fronts_and_duplicates():
    recs = [TrialRecord(trial_id="baseline", status="ok", accuracy=0.95, params=5000, macs=9000, latency_ms=2.0,
                        latency_iqr_ms=0.01),
            TrialRecord(trial_id="a", status="ok", accuracy=0.90, params=2706, macs=23900, latency_ms=1.0000,
                        latency_iqr_ms=0.0016),
            TrialRecord(trial_id="b", status="ok", accuracy=0.91, params=2706, macs=23900, latency_ms=1.0001,
                        latency_iqr_ms=0.0016)]
    out = with_front(recs, OBJ)
    assert [r.on_front for r in out] == [True, True, True]
    assert [r.on_front_robust for r in out] == [True, False, True]
    assert [r.duplicate_of for r in out] == [None, None, "a"]


def test_report_shows_spread_runtime_and_noise_counts(tmp_path):
    """The report's summary names the runtime and how many front points noise alone orders; the latency
    plots carry the IQR as error bars; an old table without the newer columns still reads."""
    from sweep import report
    from sweep.report.plots import interactive_traces, method_styles
    from sweep.report.read import read_trials
    from tests.test_report import BASELINE, _row, write_table

    rows = [_row("baseline", "baseline", "ok", BASELINE["accuracy"], 0.0, 0)]
    # t0 and t1: one architecture (2,706 params, 23.9k MACs), latencies 0.0001 ms apart, spread 0.0016 ms
    for i, (acc, lat, params) in enumerate([(0.80, 2.0000, 2706), (0.81, 2.0001, 2706), (0.70, 1.0, 1500)]):
        r = _row(f"t{i}", "magnitude", "ok", acc, 0.5, i + 1)
        r.update(latency_ms=lat, latency_iqr_ms=0.0016, params=params, macs=params * 9,
                 latency_runtime="onnxruntime 1.2.3", threads=1, latency_batch=1, device="cpu",
                 **{"knob.magnitude.ratio": 0.5})
        rows.append(r)
    for r in rows:
        r.setdefault("knob.magnitude.ratio", None)
    write_table(tmp_path / "sweep", rows, {"name": "n", "objectives": ["accuracy", "latency_ms"],
                                           "baseline": BASELINE})
    report.build_report(tmp_path / "sweep", tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text()
    assert "onnxruntime 1.2.3, 1 thread(s), batch 1, cpu" in page
    # strict front: baseline, t0 (faster), t1 (more accurate), t2; t0 and t1 are within noise
    assert "2 of 4 front points have another front point within latency noise" in page
    assert "the noise-aware front has 3 point(s); 1 ok row(s) duplicate" in page
    df, _ = read_trials(tmp_path / "sweep")
    traces = interactive_traces(df, "accuracy", method_styles(["magnitude"]))
    assert np.allclose(traces[0]["xerr"], 0.0008)
    # the CLI's front table says the same: t0 is on the strict front by noise alone and duplicates t0's
    # structure in t1 (the earlier row is the original)
    lines = {ln.split()[0]: ln.split() for ln in report.front_table(df, ["accuracy", "latency_ms"]).splitlines()[2:]}
    assert lines["t0"][-2:] == ["no", "-"] and lines["t1"][-2:] == ["yes", "t0"]
    assert lines["t2"][-2:] == ["yes", "-"]


def test_old_tables_without_the_new_columns_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sweep.results.store import TrialStore

    rec = TrialRecord(trial_id="baseline", status="ok", accuracy=0.9, params=10, macs=20, latency_ms=1.0)
    table = pa.Table.from_pylist([{k: v for k, v in rec.to_row().items()
                                   if k not in ("latency_runtime", "on_front_robust", "duplicate_of")}],
                                 schema=None)
    table = table.replace_schema_metadata({"sweep": json.dumps({"name": "old", "objectives": OBJ})})
    pq.write_table(table, tmp_path / "trials.parquet")
    (back,), meta = TrialStore(tmp_path).records()
    assert back.latency_runtime is None and back.on_front_robust is None and back.latency_ms == 1.0


def _remeasurement(tmp_path, monkeypatch, speeds=(1.0,)):
    """A sweep's config, its rows (the baseline, then a and b: during the sweep b looked slower than a, at the
    same accuracy and params, so dominated), and the models timed side by side call by call, the machine at
    ``speeds[i]`` (a factor on every figure) during the i-th call."""
    import yaml

    from sweep import driver, measure
    from sweep.config import load_config
    from sweep.folder import SweepFolder
    from sweep.results.schema import BASELINE_ID

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": "remeasured", "model": {"name": "small_cnn"},
        "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 24, "n_val": 12,
                    "n_test": 12},
        "search": {"objectives": ["accuracy", "latency_ms", "params"]}, "measure": {"remeasure": "all"},
        "methods": {"magnitude": {"ratio": 0.5}}}))
    cfg = load_config(space)

    def rec(tid, acc, lat, params):
        return TrialRecord(sweep="remeasured", trial_id=tid, status="ok", method="magnitude", accuracy=acc,
                           latency_ms=lat, params=params, macs=2 * params, model_path=f"models/{tid}.pt")

    records = [rec(BASELINE_ID, 0.9, 1.0, 100), rec("a", 0.8, 0.1, 50), rec("b", 0.8, 0.2, 50)]
    alone = {"baseline": 1.0, "a": 0.2, "b": 0.2}  # alone, the two are equally fast: both on the front

    def timed(ms):
        return measure.Latency(ms, 0.0, 1, 30, 1, "cpu", "torch")

    groups = []  # the models timed side by side, call by call

    def side_by_side(models, *a, **k):
        speed = speeds[min(len(groups), len(speeds) - 1)]
        groups.append(list(models))
        return [timed(alone[tid] * speed) for tid in models]

    monkeypatch.setattr(SweepFolder, "load_model", lambda self, rel: rel.split("/")[-1].removesuffix(".pt"))
    monkeypatch.setattr(measure, "compare_latency", side_by_side)
    monkeypatch.setattr(driver, "REMEASURED_TOGETHER", 2)
    return cfg, SweepFolder(tmp_path / "s"), records, groups


def test_the_remeasurement_says_when_the_front_it_leaves_differs_from_the_sweeps(tmp_path, monkeypatch):
    """The progress lines count the front with latencies timed beside other trials; re-measured alone, a
    trial that looked dominated may join it: the log says how many points the front holds now."""
    from sweep import driver

    cfg, folder, records, groups = _remeasurement(tmp_path, monkeypatch)
    said: list[str] = []
    out = driver._remeasure(cfg, folder, records, said.append)
    assert [r.on_front for r in out] == [True, True, True]
    assert [r.latency_repeats for r in out] == [30, 30, 30] and all(r.latency_alone for r in out)
    # timed side by side, at most REMEASURED_TOGETHER at once, the baseline in every group, the sweep's front
    # first: each trial once
    assert groups == [["baseline", "a"], ["baseline", "b"]]
    assert said == ["re-measured the latency of the baseline and 2 trial(s) alone",
                    "the front now holds 3 point(s): 2 with the latencies timed during the sweep"]
    # nothing changed: nothing more said
    said.clear()
    driver._remeasure(cfg, folder, [r.replace(latency_alone=False) for r in out], said.append)
    assert said == ["re-measured the latency of the baseline and 2 trial(s) alone"]


def test_remeasured_ratios_are_against_the_baseline_timed_beside_them(tmp_path, monkeypatch):
    """The machine runs twice as slow while the second group is timed: each trial's ratio is taken against
    the baseline of its own group and its latency put on the baseline's scale, so both trials come out as
    fast as they are (and both on the front); the baseline keeps its first timing, and the sweep's metadata
    takes it (its hypervolume divides by it)."""
    from sweep import driver, pareto

    cfg, folder, records, groups = _remeasurement(tmp_path, monkeypatch, speeds=(1.0, 2.0))
    out = driver._remeasure(cfg, folder, records, lambda line: None)
    figures = {r.trial_id: (r.latency_ms, r.latency_ratio, r.on_front) for r in out}
    assert figures == {"baseline": (1.0, 1.0, True), "a": (0.2, 0.2, True), "b": (0.2, 0.2, True)}
    # the metadata's baseline latency: the one the trials' latencies were timed beside, not the sweep's first
    meta = {"objectives": ["accuracy", "latency_ms", "params"],
            "baseline": {"accuracy": 0.9, "latency_ms": 0.1, "params": 100}}
    new = driver._with_remeasured_baseline(meta, out)
    assert new["baseline"] == {"accuracy": 0.9, "latency_ms": 1.0, "params": 100}
    assert meta["baseline"]["latency_ms"] == 0.1  # not changed in place
    # with the first timing every trial lies beyond the reference point (1.1x the baseline's latency): no volume
    assert pareto.records_hypervolume(out, meta["objectives"], meta["baseline"]) == 0.0
    assert pareto.records_hypervolume(out, meta["objectives"], new["baseline"]) > 0.0
    # a baseline not re-measured leaves the metadata as it is
    kept = [r.replace(latency_alone=False) if r.is_baseline else r for r in out]
    assert driver._with_remeasured_baseline(meta, kept) is meta


@pytest.mark.parametrize("speed", [0.5, 3.0])
def test_a_resumed_sweeps_new_trials_go_on_the_scale_of_the_baseline_timed_before(tmp_path, monkeypatch, speed):
    """A resumed sweep's new trial is timed beside the baseline at whatever speed the machine has now; the
    baseline keeps the timing of the sweep's first end, and the new trial's latency is its ratio times that."""
    from sweep import driver

    cfg, folder, records, groups = _remeasurement(tmp_path, monkeypatch, speeds=(1.0, speed))
    first = driver._remeasure(cfg, folder, records[:2], lambda line: None)  # the sweep's first end: baseline, a
    said: list[str] = []
    out = driver._remeasure(cfg, folder, first + records[2:], said.append)  # resumed: b is new
    assert groups[-1] == ["baseline", "b"]
    figures = {r.trial_id: (r.latency_ms, r.latency_ratio) for r in out}
    assert figures == {"baseline": (1.0, 1.0), "a": (0.2, 0.2), "b": (pytest.approx(0.2), pytest.approx(0.2))}
    assert said[0] == "re-measured the latency of 1 trial(s) alone (beside the baseline)"


def test_a_baseline_not_yet_timed_alone_has_every_trial_timed_again_beside_it(tmp_path, monkeypatch):
    """A folder whose trials were re-measured but whose baseline was not (written before the baseline's
    scale): the baseline is timed now, and so is every trial, so that none stays on an earlier timing's
    scale."""
    from sweep import driver

    cfg, folder, records, groups = _remeasurement(tmp_path, monkeypatch, speeds=(2.0,))
    old = [r if r.is_baseline else r.replace(latency_alone=True, latency_ms=0.9) for r in records]
    said: list[str] = []
    out = driver._remeasure(cfg, folder, old, said.append)
    assert groups == [["baseline", "a"], ["baseline", "b"]]
    assert {r.trial_id: r.latency_ms for r in out} == {"baseline": 2.0, "a": 0.4, "b": 0.4}
    assert said[0] == "re-measured the latency of the baseline and 2 trial(s) alone"


def test_only_the_baseline_left_to_time_says_so(tmp_path, monkeypatch):
    from sweep import driver

    cfg, folder, records, groups = _remeasurement(tmp_path, monkeypatch)
    said: list[str] = []
    out = driver._remeasure(cfg, folder, records[:1], said.append)
    assert groups == [["baseline"]] and out[0].latency_alone and out[0].latency_ratio == 1.0
    assert said == ["re-measured the latency of the baseline alone"]


def test_rows_not_timed_again_keep_their_ratio_on_the_re_measured_baselines_scale():
    """A stopped-early row was timed during the sweep at 0.6x the baseline's latency when it was trained
    (0.5 ms); the baseline re-measured after the sweep reads 1.0 ms: the row's latency goes on that scale
    (0.6 ms, its spread alike), keeping its ratio, whatever times it is applied; re-measured rows stay."""
    from sweep import driver

    ok = dict(status="ok", accuracy=0.9, params=10, macs=20)
    base = TrialRecord(trial_id="baseline", latency_ms=1.0, latency_ratio=1.0, latency_alone=True, **ok)
    stopped = TrialRecord(trial_id="s", status="stopped_early", latency_ms=0.3, latency_iqr_ms=0.03, latency_ratio=0.6)
    alone = TrialRecord(trial_id="a", latency_ms=0.4, latency_ratio=0.4, latency_alone=True, **ok)
    bare = TrialRecord(trial_id="b", status="infeasible", latency_ms=0.8)  # no ratio: one against the baseline's
    out = driver._on_the_baseline_scale([base, stopped, alone, bare])
    assert [(r.latency_ms, r.latency_ratio) for r in out] == [(1.0, 1.0), (pytest.approx(0.6), 0.6), (0.4, 0.4),
                                                              (0.8, 0.8)]
    assert out[1].latency_iqr_ms == pytest.approx(0.06) and not out[1].latency_alone
    again = driver._on_the_baseline_scale(out)
    assert [(r.latency_ms, r.latency_ratio) for r in again] == [(r.latency_ms, r.latency_ratio) for r in out]
