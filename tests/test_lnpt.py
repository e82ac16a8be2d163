"""``lnpt`` (reconstruction of Xiao et al. 2024): criterion, global target, label-free retraining."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import nets
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import sweep.trial as trial_mod
from sweep.config import TrainConfig, load_config, parse_config
from sweep.data import make_loader
from sweep.engine.groups import ChannelGraph
from sweep.errors import ConfigError
from sweep.folder import SweepFolder
from sweep.measure import accuracy, agreement, count_macs
from sweep.methods import get_method
from sweep.methods.lnpt import feature_taylor_scores, teacher_fisher_scores
from sweep.train import train
from sweep.trial import TrialSpec, prepare_baseline, run_trial

K = 4
SHAPE = (3, 8, 8)
ROOT = Path(__file__).resolve().parents[1]


class ThreeConv(nn.Module):
    """Three conv-BN-ReLU layers narrower than 32 channels (no rounding: one channel per step)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 20, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(20)
        self.fc = nn.Linear(20, K)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % K
    x = torch.randn(128, *SHAPE, generator=g) * 0.8 + y.view(-1, 1, 1, 1).float() - 1.5
    return x, y


def _trained(seed: int) -> dict:
    x, y = _data()
    torch.manual_seed(seed)
    t = ThreeConv()
    train(t, make_loader(TensorDataset(x[:96], y[:96]), 16, shuffle=True, seed=seed), epochs=4, lr=0.05)
    return t.eval().state_dict()


@pytest.fixture(scope="module")
def teacher_state():
    """A teacher trained for a few epochs (real BN statistics, real features)."""
    return _trained(0)


def _split():
    x, y = _data()
    return TensorDataset(x[:96], y[:96]), TensorDataset(x[96:], y[96:])


def make_ctx(teacher_state, seed=0, labels=False, **kw):
    """The runner's context (label-free by default) with the trained teacher, and a student copy of it."""
    teacher = ThreeConv()
    teacher.load_state_dict(teacher_state)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    kw.setdefault("data", _split())
    ctx = nets.make_ctx(student, method="lnpt", labels=labels, seed=seed, shape=SHAPE, teacher=teacher,
                        num_classes=K, **kw)
    return student, ctx, ctx.logged


def run(teacher_state, seed=0, labels=False, **values):
    spec = get_method("lnpt")
    student, ctx, logged = make_ctx(teacher_state, seed, labels)
    res = spec.prune(student, torch.zeros(1, *SHAPE), spec.make_config(values), ctx)
    return res, ctx, logged


# ------------------------------------------------------------------------------ criterion
def _graph(student, ctx):
    return ChannelGraph(student, torch.zeros(1, *SHAPE), ignored_layers=ctx.ignored_layers)


def _batches(ctx, n=3):
    return [b[0] for b, _ in zip(ctx.unlabeled_loader, range(n))]


def _scores(student, teacher, groups, batches, criterion, seed=0):
    if criterion == "teacher_fisher":
        return teacher_fisher_scores(student, teacher, groups, batches, seed=seed)
    return feature_taylor_scores(student, teacher, groups, student.fc, teacher.fc, batches, criterion=criterion)


def _perturb(model, scale=0.1, seed=0):
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed * 1000 + i)))


@pytest.mark.parametrize("criterion", ["teacher_fisher", "feature_energy", "feature_gap"])
def test_scores_one_per_group_and_finite(teacher_state, criterion):
    student, ctx, _ = make_ctx(teacher_state)
    if criterion == "feature_gap":  # a student that differs from the teacher
        _perturb(student)
    graph = _graph(student, ctx)
    scores = _scores(student, ctx.teacher, graph.groups, _batches(ctx), criterion)
    assert sorted(scores) == sorted(g.name for g in graph.groups) == ["conv1", "conv2", "conv3"]
    for g in graph.groups:
        s = scores[g.name]
        assert s.shape == (g.size,) and torch.isfinite(s).all() and (s >= 0).all()
        assert s.sum() > 0


@pytest.mark.parametrize("other", ["perturbed", "retrained"])
def test_teacher_fisher_scores_depend_on_the_teacher(teacher_state, other):
    """Same student (a copy of teacher A), teacher A or B: different scores; the same teacher and seed
    give the same scores, bit for bit."""
    student, ctx, _ = make_ctx(teacher_state)
    teacher_b = ThreeConv()
    teacher_b.load_state_dict(teacher_state if other == "perturbed" else _trained(1))
    if other == "perturbed":
        _perturb(teacher_b, scale=0.3, seed=1)
    teacher_b.eval()
    groups, batches = _graph(student, ctx).groups, _batches(ctx)
    a1 = teacher_fisher_scores(student, ctx.teacher, groups, batches, seed=5)
    a2 = teacher_fisher_scores(student, ctx.teacher, groups, batches, seed=5)
    b = teacher_fisher_scores(student, teacher_b, groups, batches, seed=5)
    assert all(torch.equal(a1[n], a2[n]) for n in a1)
    assert any(not torch.allclose(a1[n], b[n], rtol=1e-3) for n in a1)
    rel = max(float((a1[n] - b[n]).abs().sum() / a1[n].sum()) for n in a1)
    assert rel > 0.05


def test_teacher_fisher_tracks_the_kl_increase(teacher_state):
    """At student == teacher, Σ_x d_g(x)²/2 estimates the KL(p_T ‖ p_S) increase from removing channel g:
    its ranking follows the measured increase (zeroing each channel's output), and its size is that
    increase's to within a small factor (second-order, one pseudo-label per input)."""
    student, ctx, _ = make_ctx(teacher_state)
    x = _data()[0][:96]
    groups = _graph(student, ctx).groups
    scores = teacher_fisher_scores(student, ctx.teacher, groups, list(x.split(16)), seed=0)
    with torch.no_grad():
        log_pt = F.log_softmax(ctx.teacher(x), 1)
    est, true = [], []
    for name in ("conv1", "conv2", "conv3"):
        conv = getattr(student, name)
        for c in range(conv.out_channels):
            h = conv.register_forward_hook(lambda m, i, o, c=c: o.index_fill(1, torch.tensor([c]), 0.0))
            with torch.no_grad():
                log_ps = F.log_softmax(student(x), 1)
            h.remove()
            true.append(float(F.kl_div(log_ps, log_pt, log_target=True, reduction="sum")))
            est.append(float(scores[name][c]))
    est, true = torch.tensor(est), torch.tensor(true)
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731
    spearman = float(torch.corrcoef(torch.stack([rank(est), rank(true)]))[0, 1])
    assert spearman > 0.8
    assert 0.5 < float(est.sum() / true.sum()) < 2.0


def test_gap_criterion_vanishes_when_student_is_teacher(teacher_state):
    """Why init=teacher scores by feature energy: the gap and its gradient are zero there."""
    student, ctx, _ = make_ctx(teacher_state)
    scores = _scores(student, ctx.teacher, _graph(student, ctx).groups, _batches(ctx, 1), "feature_gap")
    assert all(float(s.abs().max()) == 0.0 for s in scores.values())


@pytest.mark.parametrize("labels", ["true", "garbage", "absent"])
@pytest.mark.parametrize("criterion", ["teacher_fisher", "feature_taylor"])
def test_criterion_reads_no_label(teacher_state, labels, criterion):
    """True, garbage or no training labels: the same scores and the same pruned network."""
    def prune(labels):
        train_ds, val_ds = _split()
        if labels == "garbage":
            x, y = train_ds.tensors
            train_ds = TensorDataset(x, (y + 1 + torch.arange(len(y)) % (K - 1)) % K)  # every label wrong
        student, ctx, _ = make_ctx(teacher_state, labels=labels != "absent", data=(train_ds, val_ds))
        spec = get_method("lnpt")
        return spec.prune(student, torch.zeros(1, *SHAPE), spec.make_config({"criterion": criterion, "epochs": 0,
                                                                           "ratio": 0.4}), ctx)

    ref, res = prune("absent"), prune(labels)
    assert res.info["criterion"] == ref.info["criterion"]
    assert res.info["group_score_mean"] == ref.info["group_score_mean"]
    assert res.info["layer_ratios"] == ref.info["layer_ratios"]
    a, b = ref.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ global target
def test_global_ratio_reached_and_layer_ratios_differ(teacher_state):
    res, _, _ = run(teacher_state, ratio=0.5, epochs=0)
    m, info = res.model, res.info
    sizes = {"conv1": 16, "conv2": 24, "conv3": 20}
    kept = {n: getattr(m, n).out_channels for n in sizes}
    removed = 1 - sum(kept.values()) / sum(sizes.values())
    assert abs(removed - 0.5) <= 1 / sum(sizes.values())  # one rounding unit (no rounding below 32 wide)
    assert info["achieved_ratio"] == pytest.approx(removed)
    assert info["layer_ratios"] == pytest.approx({n: kept[n] / sizes[n] for n in sizes})
    assert len({round(v, 6) for v in info["layer_ratios"].values()}) > 1  # one global ranking, not per layer
    assert m.fc.out_features == K
    assert info["penultimate_features"] == {"teacher": 20, "student": kept["conv3"]}


@pytest.mark.parametrize("criterion", [None, "feature_taylor"])  # None: the default
@pytest.mark.parametrize("target", [0.5, 0.3])
def test_macs_fraction_within_three_percent(teacher_state, target, criterion):
    macs0 = count_macs(ThreeConv(), torch.zeros(1, *SHAPE))
    knobs = {} if criterion is None else {"criterion": criterion}
    res, _, _ = run(teacher_state, macs_fraction=target, epochs=0, **knobs)
    frac = count_macs(res.model, torch.zeros(1, *SHAPE)) / macs0
    assert abs(frac - target) <= 0.03 * target
    assert res.info["achieved_macs_fraction"] == pytest.approx(frac)
    assert res.info["target"] == {"macs_fraction": target}
    assert res.info["criterion"] == ("teacher_fisher" if criterion is None else "feature_energy")


def test_max_layer_ratio_caps_every_group(teacher_state):
    res, _, _ = run(teacher_state, ratio=0.8, max_layer_ratio=0.85, epochs=0)
    assert min(res.info["layer_ratios"].values()) >= 0.15 - 1e-9


# ------------------------------------------------------------------------------ retraining
@pytest.mark.parametrize("values, criterion", [
    ({"init": "random", "ratio": 0.3}, "teacher_fisher"),
    ({"init": "teacher", "ratio": 0.6}, "teacher_fisher"),
    ({"init": "random", "ratio": 0.3, "criterion": "feature_taylor"}, "feature_gap"),
    ({"init": "teacher", "ratio": 0.6, "criterion": "feature_taylor"}, "feature_energy"),
])
def test_feature_alignment_reduces_the_learning_gap(teacher_state, values, criterion):
    # without the reconstruction, which already closes most of the gap before the first step
    res, _, logged = run(teacher_state, epochs=3, feature_weight=1.0, kd_weight=1.0, reconstruct=False, **values)
    gap = res.info["learning_gap"]
    assert len(gap) == 4  # step 0 right after pruning, then one per epoch
    assert gap[-1] < gap[0]
    assert res.info["criterion"] == criterion
    steps = {k: [s for kk, _, s in logged if kk == f"lnpt/{k}"] for k in ("learning_gap", "agreement",
                                                                            "val_accuracy")}
    assert steps["learning_gap"] == steps["agreement"] == [0, 1, 2, 3]
    assert steps["val_accuracy"] == []  # no labels in this context: nothing reported


def test_info_keys_and_finetuned(teacher_state):
    res, _, _ = run(teacher_state, epochs=2)
    info = res.info
    assert res.finetuned is True and info["epochs"] == 2
    for k in ("layer_ratios", "learning_gap", "trajectory", "agreement", "criterion", "init", "achieved",
              "macs", "params", "channels", "train_loss"):
        assert k in info, k
    assert [p["step"] for p in info["trajectory"]] == [0, 1, 2]
    assert all({"learning_gap", "agreement"} <= set(p) for p in info["trajectory"])
    assert [p["learning_gap"] for p in info["trajectory"]] == info["learning_gap"]
    _, ctx, _ = make_ctx(teacher_state)  # the logged agreement is sweep.measure.agreement's
    assert info["agreement"][-1] == agreement(res.model, ctx.teacher, ctx.unlabeled_val_loader)
    json.dumps(info)


def test_reconstruction_narrows_the_gap_before_retraining(teacher_state):
    """Re-fitting the layers that lost inputs brings the pruned student's penultimate features and
    predictions closer to the teacher's before any training step (step 0 of the learning gap)."""
    on, _, _ = run(teacher_state, epochs=0, ratio=0.5)
    off, _, _ = run(teacher_state, epochs=0, ratio=0.5, reconstruct=False)
    rec = on.info["layer_reconstruction"]
    assert rec["applied"] is True and rec["layers"] and rec["inputs"] > 0
    assert all(rec["error_after"][n] < rec["error_before"][n] for n in rec["layers"])
    assert off.info["layer_reconstruction"] == {"applied": False, "why": "reconstruct: false"}
    assert on.info["learning_gap"][0] < off.info["learning_gap"][0]
    assert on.info["channels"] == off.info["channels"]  # the same channels go; only the weights differ


def test_reconstruction_needs_a_student_that_starts_from_the_teacher(teacher_state):
    res, _, _ = run(teacher_state, epochs=0, init="random")
    assert res.info["layer_reconstruction"]["applied"] is False
    assert "init: random" in res.info["layer_reconstruction"]["why"]


@pytest.mark.parametrize("epochs", [0, 2])
def test_val_accuracy_beside_the_learning_gap_with_labels(teacher_state, epochs):
    """With validation labels: one accuracy per learning-gap point (step 0, then each epoch), the last
    one the pruned network's; without: none (the validation loader yields no labels)."""
    res, ctx, logged = run(teacher_state, labels=True, epochs=epochs)
    info = res.info
    assert len(info["val_accuracy"]) == len(info["learning_gap"]) == epochs + 1
    assert info["val_accuracy"] == [p["val_accuracy"] for p in info["trajectory"]]
    assert [s for k, _, s in logged if k == "lnpt/val_accuracy"] == list(range(epochs + 1))
    assert info["val_accuracy"][-1] == accuracy(res.model, ctx.val_loader)
    json.dumps(info)
    res, _, logged = run(teacher_state, labels=False, epochs=epochs)
    assert "val_accuracy" not in res.info and len(res.info["learning_gap"]) == epochs + 1
    assert not any("val_accuracy" in p for p in res.info["trajectory"])
    assert not any(k == "lnpt/val_accuracy" for k, _, _ in logged)


def test_deterministic_under_seed(teacher_state):
    a, _, _ = run(teacher_state, seed=3, init="random", epochs=1)
    b, _, _ = run(teacher_state, seed=3, init="random", epochs=1)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.info["learning_gap"] == b.info["learning_gap"]
    c, _, _ = run(teacher_state, seed=4, init="random", epochs=1)
    assert not torch.equal(c.model.state_dict()["conv1.weight"].flatten()[:8], sa["conv1.weight"].flatten()[:8])


def _retrain(teacher_state, student_edit=None, **ft):
    from sweep.methods.lnpt import retrain

    student, ctx, logged = make_ctx(teacher_state,
                                    finetune_config=TrainConfig(epochs=1, batch_size=16, **{"lr": 0.01, **ft}))
    if student_edit is not None:
        with torch.no_grad():
            student_edit(student)
    cfg = get_method("lnpt").make_config({"epochs": 1})
    log = retrain(student, ctx.teacher, student.fc, ctx.teacher.fc, None, ctx.unlabeled_loader,
                  ctx.unlabeled_val_loader, cfg, ctx)
    return student, log, logged


def test_retraining_follows_the_sweep_finetune_settings(teacher_state):
    noise = lambda s: s.conv2.weight.add_(0.3)  # noqa: E731  (a student away from its teacher)
    frozen, log, logged = _retrain(teacher_state, noise, lr=0.0)
    start = ThreeConv()
    start.load_state_dict(teacher_state)
    assert torch.equal(frozen.conv1.weight, start.conv1.weight)  # lr 0: the weights do not move
    moved, log2, _ = _retrain(teacher_state, noise, lr=0.05, optimizer="adam")
    assert not torch.equal(moved.conv1.weight, start.conv1.weight)
    assert log2["learning_gap"][1] < log2["learning_gap"][0]
    assert [s for k, _, s in logged if k == "lnpt/train_loss"] == [1] and len(log["train_loss"]) == 1


def test_nan_student_fails_as_diverged(teacher_state):
    """The learning-gap pass checks the student's logits: a NaN student is a failed trial, not NaNs."""
    from sweep.errors import TrialFailure

    with pytest.raises(TrialFailure, match=r"diverged: the network outputs non-finite values .*lnpt"):
        _retrain(teacher_state, lambda s: s.fc.weight.fill_(float("nan")))


class _NoLabels(tuple):
    """A batch whose label cannot be read: only ``batch[0]`` works."""

    def __getitem__(self, i):
        if i != 0:
            raise AssertionError("lnpt read a label")
        return tuple.__getitem__(self, 0)

    def __iter__(self):
        raise AssertionError("lnpt unpacked a labelled batch")


@pytest.mark.parametrize("labels", [False, True])
def test_reads_no_training_label_where_labelled_loaders_are_reachable(teacher_state, labels):
    """lnpt reads ``ctx.unlabeled_loader`` / ``ctx.unlabeled_val_loader`` only: training batches whose
    labels cannot be read are never touched, and validation labels only to report ``val_accuracy``
    where ``ctx.labels_available``."""
    x, y = _data()

    def trap(lo, hi, bs):
        return [_NoLabels((x[i:i + bs], y[i:i + bs])) for i in range(lo, hi, bs)]

    lo = nets.synthetic_loaders(labels=labels, data=_split())
    lo = dataclasses.replace(lo, train=trap(0, 96, 16), val=lo.val if labels else trap(96, 128, 32))
    spec = get_method("lnpt")
    student, ctx, _ = make_ctx(teacher_state, labels=labels, loaders=lo)
    assert ctx.train_loader is lo.train  # the trap is what the method sees
    res = spec.prune(student, torch.zeros(1, *SHAPE), spec.make_config({"epochs": 1}), ctx)
    assert len(res.info["learning_gap"]) == 2
    assert all(("val_accuracy" in p) == labels for p in res.info["trajectory"])


# ------------------------------------------------------------------------------ knobs
@pytest.mark.parametrize("values, match", [
    ({"feature_weight": 0, "kd_weight": 0}, "must not both be 0"),
    ({"ratio": 0.5, "macs_fraction": 0.5}, "give only one of ratio, macs_fraction"),
    ({"init": "zeros"}, "init must be one of"),
    ({"criterion": "energy"}, r"criterion must be one of \{teacher_fisher, feature_taylor\}, but got "
                              r"criterion='energy' \(x.yaml: methods.lnpt.criterion\)"),
    ({"temperature": 0}, "temperature must be in"),
    ({"epochs": 51}, "epochs must be in"),
    ({"epochs": 1.5}, "epochs must be an integer"),
    ({"cal_batches": 0}, "cal_batches must be in"),
    ({"max_layer_ratio": 1.0}, "max_layer_ratio must be in"),
    ({"ratio": 1.0}, "ratio must be in"),
])
def test_bad_knobs_raise_config_error(values, match):
    with pytest.raises(ConfigError, match=match):
        get_method("lnpt").make_config(values, where="x.yaml: methods.lnpt")


def test_zero_weights_allowed_without_retraining():
    cfg = get_method("lnpt").make_config({"feature_weight": 0, "kd_weight": 0, "epochs": 0})
    assert cfg.epochs == 0 and get_method("lnpt").needs_labels is False


def test_default_criterion_is_teacher_guided():
    spec = get_method("lnpt")
    assert spec.knob("criterion").default == "teacher_fisher" == spec.make_config({}).criterion


# ------------------------------------------------------------------------------ a label-free trial
LF = {
    "name": "lnpt-lf",
    "labels": "none",
    "model": {"name": "small_cnn"},
    "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 120,
                "n_val": 48, "n_test": 48},
    "baseline": {"epochs": 3, "lr": 0.05, "cloud_fraction": 0.4},
    "finetune": {"epochs": 1, "lr": 0.01},
    "search": {"trials": 2, "objectives": ["agreement", "params"]},
    "measure": {"repeats": 3, "warmup": 1},
    "methods": {"lnpt": {"ratio": 0.4, "epochs": 2, "init": {"choices": ["teacher", "random"]}}},
}


def _garbage(splits):
    x, y = splits.train.tensors
    bad = torch.randint(0, 3, y.shape, generator=torch.Generator().manual_seed(123))
    assert (bad != y).any()
    return type(splits)(splits.name, TensorDataset(x, bad), splits.val, splits.test, splits.num_classes,
                        splits.input_shape)


@pytest.fixture(scope="module")
def lf_sweep(tmp_path_factory):
    """The label-free sweep's folder with its baseline (the teacher), prepared once."""
    folder = tmp_path_factory.mktemp("lnpt-lf")
    cfg = parse_config(LF, source="lnpt-lf.yaml")
    prepare_baseline(cfg, SweepFolder(folder), log=lambda m: None)
    return cfg, folder


@pytest.mark.parametrize("target", [0.5, 0.35])
def test_trial_with_the_default_criterion_meets_a_macs_target(lf_sweep, target):
    cfg, folder = lf_sweep
    r = run_trial(cfg, TrialSpec(str(folder), f"macs{target}", "lnpt", {"macs_fraction": target, "epochs": 1},
                                 seed=7))
    assert r["status"] == "ok", r["error"]
    assert json.loads(r["info"])["criterion"] == "teacher_fisher"
    assert abs(r["macs_ratio"] - target) <= 0.03 * target


def test_garbage_training_labels_give_the_same_lnpt_trial(lf_sweep, monkeypatch):
    cfg, tmp_path = lf_sweep
    knobs = {"ratio": 0.4, "epochs": 2, "init": "teacher"}
    clean = run_trial(cfg, TrialSpec(str(tmp_path), "t1", "lnpt", knobs, seed=7))
    assert clean["status"] == "ok", clean["error"]
    assert clean["finetune_epochs"] == 2 and clean["params_ratio"] < 1

    true_splits = trial_mod.load_splits(cfg)
    monkeypatch.setattr(trial_mod, "load_splits", lambda c: _garbage(true_splits))
    dirty = run_trial(cfg, TrialSpec(str(tmp_path), "t2", "lnpt", knobs, seed=7))
    assert dirty["status"] == "ok", dirty["error"]
    for k in ("agreement", "accuracy", "test_accuracy", "params", "macs"):
        assert dirty[k] == clean[k], k
    assert json.loads(dirty["info"])["learning_gap"] == json.loads(clean["info"])["learning_gap"]
    a = torch.load(tmp_path / clean["model_path"], weights_only=False).state_dict()
    b = torch.load(tmp_path / dirty["model_path"], weights_only=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ search spaces
def test_search_spaces_parse():
    lf = load_config(ROOT / "search_spaces" / "lnpt.yaml")
    assert lf.label_free and lf.baseline.cloud_fraction == 0.3
    assert [m.name for m in lf.methods] == ["lnpt", "magnitude"]
    assert lf.method("lnpt").knobs["init"] == {"choices": ["teacher", "random"]}
    assert lf.search.objectives == ("agreement", "latency_ms", "macs")
    sup = load_config(ROOT / "search_spaces" / "lnpt_vs_magnitude.yaml")
    assert not sup.label_free
    assert sup.method("lnpt").knobs["ratio"] == {"fixed": 0.5} == sup.method("magnitude").knobs["ratio"]
