"""A trial without Ray: baseline -> prune -> fine-tune -> measure, and failures as states."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sweep.config import parse_config
from sweep.folder import SweepFolder
from sweep.trial import TrialSpec, prepare_baseline, run_trial

SPACE = {
    "name": "t",
    "model": {"name": "small_cnn"},
    "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 96,
                "n_val": 48, "n_test": 48},
    "baseline": {"epochs": 3, "lr": 0.05, "reference": True},
    "finetune": {"epochs": 1, "lr": 0.01},
    "search": {"trials": 2, "objectives": ["accuracy", "params"]},
    "measure": {"repeats": 3, "warmup": 1},
    "methods": {"magnitude": {"ratio": {"low": 0.2, "high": 0.6}}},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    cfg = parse_config(SPACE, source="t.yaml")
    d = tmp_path_factory.mktemp("sweep")
    row = prepare_baseline(cfg, SweepFolder(d), log=lambda m: None)
    return cfg, d, row


def test_baseline_row_and_files(swept):
    cfg, d, row = swept
    base = SweepFolder(d).baseline()
    assert row["trial_id"] == "baseline" and row["status"] == "ok"
    assert row["params"] == base["params"] > 0 and row["macs"] == base["macs"] > 0
    assert row["latency_batch"] == 1 and row["threads"] >= 1 and row["device"] == "cpu"
    assert (d / "baseline" / "model.pt").is_file()
    assert 0.0 <= row["accuracy"] <= 1.0


def test_baseline_summary_holds_the_dense_model_fine_tuned_like_a_trial(swept):
    """The reference: the dense model after the trials' fine-tuning (same epochs and recipe, nothing removed),
    equal to fine-tuning the saved baseline again as a trial would; the report's summary names it."""
    import pandas as pd
    import torch

    from sweep import trial
    from sweep.report.tables import summary, summary_items

    cfg, d, row = swept
    ref = SweepFolder(d).baseline()["reference"]
    assert ref["epochs"] == cfg.finetune.epochs == 1 and 0.0 <= ref["accuracy"] <= 1.0
    assert 0.0 <= ref["test_accuracy"] <= 1.0 and ref["wall_s"] > 0
    splits = trial.load_splits(cfg)
    data = trial.trial_data(cfg, splits, cfg.seed)
    again = trial.dense_reference(cfg, SweepFolder(d).load_baseline_model(), splits, data)
    assert again["accuracy"] == pytest.approx(ref["accuracy"]) and torch.get_num_threads() >= 1
    from sweep.results.schema import COLUMNS

    df = pd.DataFrame([{name: row.get(name) for name, _, _ in COLUMNS}])
    meta = {"objectives": ["accuracy", "params"], "baseline": SweepFolder(d).baseline(), "quality": "accuracy"}
    items = dict(summary_items(summary(df, meta, df)))
    assert items["Dense + fine-tuning"].startswith(f"accuracy {ref['accuracy']:.4f} (test accuracy")


@pytest.mark.parametrize("change", [{"baseline": {"epochs": 3, "lr": 0.05}},  # off by default
                                    {"baseline": {"epochs": 3, "lr": 0.05, "reference": False}},
                                    {"finetune": {"epochs": 0, "lr": 0.01}}])
def test_no_reference_unless_asked_or_without_fine_tuning(change):
    from sweep import trial

    cfg = parse_config({**SPACE, **change}, source="t.yaml")
    splits = trial.load_splits(cfg)
    assert trial.dense_reference(cfg, None, splits, trial.trial_data(cfg, splits, cfg.seed)) is None


def test_trial_ok_row_is_smaller_and_saved(swept):
    cfg, d, _ = swept
    row = run_trial(cfg, TrialSpec(str(d), "t1", "magnitude", {"ratio": 0.5}, seed=1))
    assert row["status"] == "ok", row["error"]
    base = SweepFolder(d).baseline()
    assert row["params"] < base["params"] and row["macs"] < base["macs"]
    assert row["params_ratio"] == pytest.approx(row["params"] / base["params"])
    assert row["knob.magnitude.ratio"] == 0.5
    assert row["finetune_epochs"] == 1
    model = SweepFolder(d).load_model(row["model_path"])
    assert sum(p.numel() for p in model.parameters()) == row["params"]
    assert "channels" in json.loads(row["info"])


@pytest.mark.parametrize("finetune, scheduler, passes", [
    (0, None, 1),  # measured once, right after pruning: nothing trains it after
    (1, None, 2),  # after pruning, then the fine-tuned network
    (3, {"type": "mo_asha", "min_epochs": 1, "rung0": True}, 3),  # rung 0 (after pruning), rung 1, the end
], ids=["no-finetune", "finetune", "successive-halving"])
def test_a_trial_measures_its_validation_quality_once_per_network(swept, monkeypatch, finetune, scheduler, passes):
    """The validation accuracy a trial records is that of its final network, measured once for it."""
    from sweep import measure, trial

    _, d, _ = swept
    cfg = parse_config({**SPACE, "finetune": {**SPACE["finetune"], "epochs": finetune},
                        "search": {**SPACE["search"], **({"scheduler": scheduler} if scheduler else {})}},
                       source="t.yaml")
    assert cfg.search.scheduler is None or cfg.search.scheduler.rungs() == (0, 1)
    splits = trial.load_splits(cfg)  # the splits every trial of this process uses (remembered)
    seen = []
    real = measure.accuracy

    def counting(model, loader, device):
        seen.append(loader.dataset is splits.val)
        return real(model, loader, device)

    monkeypatch.setattr(measure, "accuracy", counting)
    row = run_trial(cfg, TrialSpec(str(d), f"q{finetune}{bool(scheduler)}", "magnitude", {"ratio": 0.4}, seed=7))
    assert row["status"] == "ok", row["error"]
    assert seen.count(True) == passes and seen.count(False) == 1  # the test split: once, at the end
    final = SweepFolder(d).load_model(row["model_path"])
    val = trial.trial_data(cfg, splits, seed=7).val
    assert row["accuracy"] == pytest.approx(real(final, val, "cpu"), abs=1e-12)


@pytest.mark.parametrize("budget, status", [(0.8, "ok"), (0.5, "infeasible")])
def test_a_latency_budget_is_judged_beside_the_dense_network(swept, monkeypatch, budget, status):
    """Other trials share the machine while a trial times its network: here everything runs at half speed.
    Alone the pruned network would time at 1.2x the baseline's latency and break a budget of 0.8x; timed
    beside the dense network (2x) it is 0.6x of it, and only a budget below that breaks."""
    from sweep import measure

    _, d, _ = swept
    base_ms = SweepFolder(d).baseline()["latency_ms"]
    cfg = parse_config({**SPACE, "search": {**SPACE["search"], "constraints": {"max_latency_ms": budget * base_ms}}},
                       source="t.yaml")
    timed = []

    def side_by_side(models, *a, **k):
        timed.append([m if isinstance(m, measure.Runner) else sum(p.numel() for p in m.parameters()) for m in models])
        return [measure.Latency(f * base_ms, 0.1 * f * base_ms, 1, 3, 1, "cpu", "torch") for f in (2.0, 1.2)]

    monkeypatch.setattr(measure, "compare_latency", side_by_side)
    monkeypatch.setattr(measure, "measure_latency", lambda *a, **k: pytest.fail("timed alone"))
    row = run_trial(cfg, TrialSpec(str(d), f"lat{budget}", "magnitude", {"ratio": 0.5}, seed=1))
    assert row["status"] == status, row["error"]
    assert len(timed) == 1 and isinstance(timed[0][0], measure.Runner)  # the dense network's, kept: made once
    assert SweepFolder(d).baseline()["params"] > timed[0][1] == row["params"]
    assert row["latency_ms"] == pytest.approx(0.6 * base_ms) and row["latency_ratio"] == pytest.approx(0.6)
    assert row["latency_iqr_ms"] == pytest.approx(0.06 * base_ms)
    assert row["finetune_epochs"] == (1 if status == "ok" else 0)


@pytest.mark.parametrize("search, beside", [
    ({"objectives": ["accuracy", "latency_ms"]}, True),  # what the sampler is told, and the live hypervolume
    ({"objectives": ["accuracy", "params"], "constraints": {"max_latency_ms": 1.0}}, True),
    ({"objectives": ["accuracy", "latency_ms"], "scheduler": {"type": "mo_asha", "min_epochs": 1}}, True),
    ({"objectives": ["accuracy", "params"], "scheduler": {"type": "mo_asha", "min_epochs": 1}}, False),
    ({"objectives": ["accuracy", "params"], "constraints": {"max_params": 10}}, False),
])
def test_a_trial_times_its_network_beside_the_dense_one_where_its_latency_decides_in_the_sweep(search, beside):
    from sweep.trial import latency_judged_beside_baseline

    cfg = parse_config({**SPACE, "finetune": {"epochs": 3}, "search": {"trials": 2, **search}}, source="t.yaml")
    assert latency_judged_beside_baseline(cfg, {"latency_ms": 0.5}) is beside
    assert latency_judged_beside_baseline(cfg, {"latency_ms": None}) is False  # no scale to put it on


def test_the_dense_network_a_trial_is_timed_beside_is_made_ready_once_per_process(swept, monkeypatch):
    """Its export and session are kept under the baseline's key: a second trial times the same runner, and a
    baseline written again (another key) gets a runner of its own."""
    from sweep import measure

    _, d, _ = swept
    cfg = parse_config({**SPACE, "search": {**SPACE["search"], "objectives": ["accuracy", "latency_ms"]}},
                       source="t.yaml")
    made, timed = [], []
    real_make, real_compare = measure.make_runner, measure.compare_latency

    def counted(model, *a, **k):
        made.append(sum(p.numel() for p in model.parameters()))
        return real_make(model, *a, **k)

    def compared(models, *a, **k):
        timed.append(models[0])
        return real_compare(models, *a, **k)

    monkeypatch.setattr(measure, "make_runner", counted)
    monkeypatch.setattr(measure, "compare_latency", compared)
    monkeypatch.setattr(measure, "_KEPT_RUNNERS", type(measure._KEPT_RUNNERS)())
    dense = SweepFolder(d).baseline()["params"]
    rows = [run_trial(cfg, TrialSpec(str(d), f"k{i}", "magnitude", {"ratio": 0.5}, seed=i)) for i in range(2)]
    assert [r["status"] for r in rows] == ["ok", "ok"] and rows[0]["latency_ratio"] > 0
    assert made.count(dense) == 1 and len(made) == 3  # the dense network once, each pruned one once
    assert isinstance(timed[0], measure.Runner) and timed[1] is timed[0]
    key = SweepFolder(d).baseline_key()
    folder = SweepFolder(d)  # the same bytes written again (atomically: another file), another key
    folder.write_model_bytes("baseline/model.pt", folder.read_model_bytes("baseline/model.pt"))
    assert SweepFolder(d).baseline_key() != key
    run_trial(cfg, TrialSpec(str(d), "k2", "magnitude", {"ratio": 0.5}, seed=2))
    assert made.count(dense) == 2 and timed[2] is not timed[0]


def test_a_worker_keys_the_baseline_by_its_bytes():
    import hashlib

    from sweep.driver import TrialInputs, _ShippedIO

    def key(data: bytes, digest: str = "") -> str:
        return _ShippedIO(TrialInputs("s", None, {}, data, None, baseline_digest=digest)).baseline_key()

    assert key(b"dense") == key(b"dense", hashlib.sha256(b"dense").hexdigest()) != key(b"other")


def test_diverging_trial_is_a_failed_row(swept):
    cfg, d, _ = swept
    bad = replace(cfg, finetune=replace(cfg.finetune, lr=1e30))
    row = run_trial(bad, TrialSpec(str(d), "t2", "magnitude", {"ratio": 0.3}, seed=2))
    assert row["status"] == "failed"
    assert "diverged" in row["error"]
    assert row.get("accuracy") is None


def test_measuring_a_nan_network_raises_diverged():
    """Accuracy is a ratio of counts (always finite): the guard is on the logits it computes."""
    import torch

    from sweep.errors import TrialFailure
    from sweep.measure import accuracy, agreement

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight[1, 2] = float("nan")
    x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    with pytest.raises(TrialFailure, match=r"diverged: the network outputs non-finite values \(8 of 24 "):
        accuracy(model, [(x, y)])
    with pytest.raises(TrialFailure, match="diverged: the network outputs non-finite values"):
        agreement(model, teacher, [(x,)])
    assert 0.0 <= agreement(teacher, model, [(x,)]) <= 1.0  # the guard is on the network measured


def test_nan_network_after_pruning_is_a_failed_row(swept, monkeypatch):
    """A method that hands back a network full of NaNs (saying it fine-tuned it): a failed row."""
    import dataclasses

    import torch

    import sweep.methods as methods

    cfg, d, _ = swept
    spec = methods.get_method("magnitude")

    def nan_prune(model, example, mcfg, ctx):
        res = spec.prune(model, example, mcfg, ctx)
        with torch.no_grad():
            for p in res.model.parameters():
                p.fill_(float("nan"))
        return dataclasses.replace(res, finetuned=True)

    monkeypatch.setattr(methods, "get_method", lambda name, **kw: dataclasses.replace(spec, prune=nan_prune))
    row = run_trial(cfg, TrialSpec(str(d), "t_nan", "magnitude", {"ratio": 0.3}, seed=4))
    assert row["status"] == "failed"
    assert "diverged: the network outputs non-finite values" in row["error"]


def test_raising_method_is_a_failed_row(swept):
    cfg, d, _ = swept
    row = run_trial(cfg, TrialSpec(str(d), "t3", "magnitude", {"ratio": 1.5}, seed=3))
    assert row["status"] == "failed"
    assert "ratio must be in (0, 1)" in row["error"]


def test_model_outside_sweep_folder_is_refused(swept, tmp_path):
    from sweep.errors import SweepDirError

    _, d, _ = swept
    with pytest.raises(SweepDirError, match="inside the sweep folder"):
        SweepFolder(d).load_model("../elsewhere.pt")


def test_train_raises_on_non_finite_loss():
    import torch

    from sweep.errors import TrialFailure
    from sweep.train import train

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.full((8, 4), float("nan"))
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(TrialFailure, match="diverged"):
        train(model, [(x, y)], epochs=1, lr=0.1)


def test_compare_latency_interleaves_and_reports_each_model():
    import torch

    from sweep.measure import compare_latency

    small = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    big = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3), torch.nn.Conv2d(64, 64, 3), torch.nn.Flatten())
    a, b = compare_latency([small, big], (1, 16, 16), repeats=10, warmup=1, threads=1, rounds=5)
    assert a.repeats == b.repeats == 10 and a.threads == b.threads == 1
    assert a.median_ms > 0 and b.median_ms > 0 and a.iqr_ms >= 0


def test_shipped_splits_are_what_load_splits_returns_fetched_once_per_process(swept, monkeypatch):
    """A Ray worker is handed the driver's splits: load_splits returns them without reading the dataset,
    and the hand-over is fetched once however many trials the worker runs; another sweep's data is loaded."""
    import sweep.trial as trial

    cfg = swept[0]
    monkeypatch.setattr(trial, "_SHIPPED", {})
    shipped, fetched = object(), []

    def fetch():
        fetched.append(1)
        return shipped

    def no_reading(*args):
        raise AssertionError("the dataset was read although its splits were shipped")

    with monkeypatch.context() as m:
        m.setattr(trial, "_splits", no_reading)
        for _ in range(3):
            trial.use_shipped_splits(cfg, fetch)
            assert trial.load_splits(cfg) is shipped
    assert fetched == [1]
    other = replace(cfg, seed=cfg.seed + 1)
    assert trial.load_splits(other) is not shipped and len(trial.load_splits(other).train) > 0


@pytest.mark.parametrize("step", ["baseline", "trial"])
def test_a_baseline_or_trial_run_in_process_leaves_torch_threads_as_found(swept, tmp_path, step):
    # they set their own thread counts; a caller's later seeded training must run as it would have
    import torch

    cfg, d, _ = swept
    prev = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        if step == "baseline":
            prepare_baseline(cfg, SweepFolder(tmp_path), log=lambda m: None)
        else:
            assert run_trial(cfg, TrialSpec(str(d), "threads", "magnitude", {"ratio": 0.5}, seed=1))["status"] == "ok"
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(prev)


# a label-free space whose baseline is the dense student of an MBN teacher (sweep.mbn.teacher)
MBN_SPACE = {**SPACE, "labels": "none", "search": {"trials": 2, "objectives": ["agreement", "params"]},
             "baseline": {"teacher": {"mbn": {"V": 8, "clusters": 3}}, "epochs": 3, "lr": 0.05},
             "measure": {"repeats": 3, "warmup": 1, "runtime": "torch"}}


@pytest.mark.parametrize("space", [SPACE, MBN_SPACE], ids=["supervised", "mbn-student"])
def test_a_baseline_killed_while_it_trains_goes_on_from_its_last_epoch(tmp_path, monkeypatch, space, epochs_trained):
    """The driver dies after two of three baseline epochs: the next prepare_baseline says where it goes on,
    trains only the last epoch, and saves the network an uninterrupted run saves; the epoch checkpoint is
    removed once the baseline is written."""
    import torch

    from sweep.folder import BASELINE_TRAINING
    from sweep.train import EpochCheckpoint

    cfg = parse_config(space, source="t.yaml")
    whole = SweepFolder(tmp_path / "whole")
    prepare_baseline(cfg, whole, log=lambda m: None)

    folder = SweepFolder(tmp_path / "killed")
    folder.create(cfg)
    real_save = EpochCheckpoint.save

    def save_then_die(self, state):
        real_save(self, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # what the process sees of its end, as far as this test can tell

    monkeypatch.setattr(EpochCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_baseline(cfg, folder, log=lambda m: None)
    monkeypatch.setattr(EpochCheckpoint, "save", real_save)
    assert (folder.path / BASELINE_TRAINING).is_file() and not folder.has_baseline()
    from sweep.status import status_lines

    assert ("baseline: not trained yet; its training state after the latest epoch is saved (a resumed sweep goes on "
            "from there)") in status_lines(folder.path)

    lines, epochs = [], epochs_trained
    epochs.clear()  # the trainings above are not this one
    row = prepare_baseline(cfg, folder, log=lines.append)
    assert any("3 epochs (going on after epoch 2, where an interrupted run left it)" in x for x in lines), lines
    assert epochs[:1] == [2]  # the baseline's own training trained its last epoch only (then the reference's)
    a, b = folder.load_baseline_model().state_dict(), whole.load_baseline_model().state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert row[cfg.quality] == whole.baseline()[cfg.quality]
    assert not (folder.path / BASELINE_TRAINING).exists()
