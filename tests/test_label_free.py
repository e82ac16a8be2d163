"""Label-free sweeps: nothing after the teacher reads a training label (enforced by the data path)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import sweep.trial as trial_mod
from sweep.config import parse_config
from sweep.errors import ConfigError
from sweep.folder import SweepFolder
from sweep.methods import METHODS, Knob, MethodSpec, PruneResult
from sweep.trial import TrialSpec, prepare_baseline, run_trial

BASE = {
    "name": "lf",
    "labels": "none",
    "model": {"name": "small_cnn"},
    "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 120,
                "n_val": 48, "n_test": 48},
    "baseline": {"epochs": 3, "lr": 0.05, "cloud_fraction": 0.4},
    "finetune": {"epochs": 2, "lr": 0.01},
    "search": {"trials": 2, "objectives": ["agreement", "params"]},
    "measure": {"repeats": 3, "warmup": 1},
    "methods": {"lf_probe": {"ratio": 0.4}},
}

SEEN = {}


def _probe(model, example_inputs, cfg, ctx):
    """A label-free test method: records what its loaders yield, then prunes by magnitude."""
    from sweep.engine.channels import prune_channels

    SEEN["train_item_len"] = {len(b) for b in ctx.train_loader}
    SEEN["val_item_len"] = {len(b) for b in ctx.val_loader}
    SEEN["labels_available"] = ctx.labels_available
    return PruneResult(prune_channels(model, example_inputs, ratio=cfg.ratio, ignored_layers=ctx.ignored_layers))


@pytest.fixture
def probe(monkeypatch):
    spec = MethodSpec("lf_probe", _probe, (Knob("ratio", "float", 0.3, low=0, high=1, low_open=True, high_open=True),),
                      needs_labels=False)
    monkeypatch.setitem(METHODS._entries, "lf_probe", spec)
    labelled = MethodSpec("needs_labels_probe", _probe, (), needs_labels=True)
    monkeypatch.setitem(METHODS._entries, "needs_labels_probe", labelled)
    return spec


def test_label_free_space_needs_a_teacher(probe):
    raw = {**BASE, "baseline": {"epochs": 3}}
    with pytest.raises(ConfigError, match="needs a teacher"):
        parse_config(raw, source="lf.yaml")


def test_label_free_space_rejects_a_method_that_needs_labels(probe):
    raw = {**BASE, "methods": {"needs_labels_probe": {}}}
    with pytest.raises(ConfigError, match="needs training labels"):
        parse_config(raw, source="lf.yaml")


def test_label_free_space_searches_agreement_not_accuracy(probe):
    raw = {**BASE, "search": {"objectives": ["accuracy", "params"]}}
    with pytest.raises(ConfigError, match="agreement"):
        parse_config(raw, source="lf.yaml")
    assert parse_config(BASE, source="lf.yaml").quality == "agreement"


def test_cloud_fraction_only_in_label_free_spaces(probe):
    raw = {**BASE, "labels": "supervised", "search": {"objectives": ["accuracy", "params"]}}
    with pytest.raises(ConfigError, match="cloud_fraction"):
        parse_config(raw, source="lf.yaml")


def _garbage(splits):
    x, y = splits.train.tensors
    g = torch.Generator().manual_seed(123)
    bad = torch.randint(0, 3, y.shape, generator=g)
    assert (bad != y).any()
    return type(splits)(splits.name, TensorDataset(x, bad), splits.val, splits.test, splits.num_classes,
                        splits.input_shape)


def test_garbage_training_labels_give_the_same_trial(probe, tmp_path, monkeypatch):
    cfg = parse_config(BASE, source="lf.yaml")
    prepare_baseline(cfg, SweepFolder(tmp_path), log=lambda m: None)  # the teacher, from the labelled cloud split
    spec = TrialSpec(str(tmp_path), "t1", "lf_probe", {"ratio": 0.4}, seed=7)
    clean = run_trial(cfg, spec)
    assert clean["status"] == "ok", clean["error"]
    assert SEEN == {"train_item_len": {1}, "val_item_len": {1}, "labels_available": False}

    true_splits = trial_mod.load_splits(cfg)
    monkeypatch.setattr(trial_mod, "load_splits", lambda c: _garbage(true_splits))
    dirty = run_trial(cfg, TrialSpec(str(tmp_path), "t2", "lf_probe", {"ratio": 0.4}, seed=7))
    assert dirty["status"] == "ok", dirty["error"]
    for k in ("agreement", "accuracy", "test_accuracy", "params", "macs"):
        assert dirty[k] == clean[k], k
    a = torch.load(tmp_path / clean["model_path"], weights_only=False).state_dict()
    b = torch.load(tmp_path / dirty["model_path"], weights_only=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
