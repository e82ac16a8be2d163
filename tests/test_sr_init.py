"""SR-init layer pruning (sweep/methods/sr_init.py) and its report section.

Most tests use a hand-made ``ctx.evaluate`` that reads which block is currently re-initialised from
its BatchNorm statistics and returns a chosen accuracy, so the importances are exact and the
threshold rule Δ ≤ τ is checked to the block.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nets
import pytest
import torch
import torch.nn.functional as F
from nets import Block
from torch import nn
from torch.utils.data import TensorDataset

from sweep.engine.depth import stage_depths
from sweep.engine.skip import skipped_layers
from sweep.errors import ConfigError, TrialFailure
from sweep.measure import accuracy, count_params
from sweep.methods import get_method, method_names
from sweep.methods.sr_init import reinit_block
from sweep.train import train

A0 = 0.9
DROPS = {0: 0.5, 1: 0.05, 2: 0.30, 3: 0.10, 4: 0.70}  # Δ_b per block of TinyResNet
SHAPE = (3, 8, 8)
NUM_CLASSES = 4


class TinyResNet(nn.Module):
    """Stem, then one stage of ``n_blocks`` identity-shortcut blocks (``nets.Block``) of width ``c``."""

    def __init__(self, n_blocks=5, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(n_blocks)])
        self.fc = nn.Linear(c, NUM_CLASSES)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PlainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


def trained_stats(model, seed=0):
    """Non-default BN statistics, as a trained net has (re-initialisation sets mean 0 / var 1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def reinitialised(block) -> bool:
    return bool((block.bn1.running_var == 1).all() and (block.bn1.running_mean == 0).all())


def oracle_ctx(model, drops=DROPS, seed=0, calls=None, checks=None):
    """ctx whose evaluate returns A0 − drops[b] while block b is re-initialised (A0 otherwise)."""
    blocks = list(model.blocks) if hasattr(model, "blocks") else []

    def evaluate(m):
        hit = [i for i, b in enumerate(blocks) if reinitialised(b)]
        assert len(hit) <= 1, "more than one block re-initialised at once"
        if calls is not None:
            calls.append(hit[0] if hit else None)
        if hit and checks is not None:
            checks(blocks[hit[0]])
        return A0 - drops[hit[0]] if hit else A0

    return nets.make_ctx(model, method="sr_init", seed=seed, shape=SHAPE, num_classes=NUM_CLASSES,
                         evaluate=evaluate)


def run(model, values, ctx, x=None):
    spec = get_method("sr_init")
    return spec.prune(model, torch.zeros(1, *SHAPE) if x is None else x, spec.make_config(values), ctx)


# ----------------------------------------------------------------------------- the threshold rule
@pytest.mark.parametrize("tau, removed", [
    (0.2, [1, 3]),
    (0.10, [1, 3]),  # Δ = τ is removed (≤)
    (0.099, [1]),
    (0.0, []),  # every Δ > 0: nothing goes
    (1.0, [1, 2, 3, 4]),  # every removable block goes; block 0 (first of stage) stays
])
def test_removes_exactly_blocks_with_delta_at_most_tau(tau, removed):
    torch.manual_seed(0)
    model = trained_stats(TinyResNet())
    orig = copy.deepcopy(model)
    calls = []
    # the paper's surgery alone: the survivors keep their trained weights (the re-fit, ours, is tested below)
    res = run(model, {"tau": tau, "reconstruct": False}, oracle_ctx(model, calls=calls))
    info = res.info
    assert res.finetuned is False and res.model is model
    assert info["removed"] == removed and info["tau"] == tau
    assert [b["removed"] for b in info["blocks"]] == [i in removed for i in range(5)]
    assert [b["delta"] for b in info["blocks"]] == pytest.approx([DROPS[i] for i in range(5)])
    assert [b["removable"] for b in info["blocks"]] == [False, True, True, True, True]
    assert [b["name"] for b in info["blocks"]] == [f"blocks.{i}" for i in range(5)]
    assert calls == [None, 0, 1, 2, 3, 4]  # A_0 once, then each block once (seeds=1)
    assert info["stage_depths_before"] == [5] and info["stage_depths_after"] == [5 - len(removed)]
    assert stage_depths(res.model) == [5 - len(removed)]
    assert info["params_before"] == count_params(orig) and info["params_after"] == count_params(res.model)
    assert (info["params_after"] < info["params_before"]) == bool(removed)
    json.dumps(info)
    # the survivors keep their trained weights; nothing re-initialised leaks into the result
    survivors = [i for i in range(5) if i not in removed]
    for new, old in zip(res.model.blocks, [orig.blocks[i] for i in survivors]):
        for a, b in zip(new.state_dict().values(), old.state_dict().values()):
            assert torch.equal(a, b)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert res.model(x).shape == (2, NUM_CLASSES)
        if not removed:
            assert torch.equal(res.model(x), orig(x))


def test_max_removed_keeps_the_lowest_deltas():
    model = trained_stats(TinyResNet())
    res = run(model, {"tau": 1.0, "max_removed": 2}, oracle_ctx(model))
    assert res.info["removed"] == [1, 3]  # Δ 0.05 and 0.10 of the four candidates


def test_reinitialisation_follows_the_paper_and_is_seeded():
    """Kaiming-normal convs, BN γ=1 β=0 mean 0 var 1 — checked while the block is re-initialised."""
    seen = []

    def check(block):
        assert torch.equal(block.bn1.weight, torch.ones(8)) and torch.equal(block.bn2.bias, torch.zeros(8))
        assert torch.equal(block.bn2.running_var, torch.ones(8)) and torch.equal(block.bn2.running_mean, torch.zeros(8))
        w = block.conv1.weight
        assert w.std().item() == pytest.approx(math.sqrt(2 / (8 * 9)), rel=0.15) and abs(w.mean().item()) < 0.03
        seen.append(w.detach().clone())

    model = trained_stats(TinyResNet())
    run(model, {"tau": 0.0, "seeds": 3}, oracle_ctx(model, checks=check))
    assert len(seen) == 15  # 5 blocks x 3 seeds
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])  # distinct draws
    # same (seed, block, repetition) -> the same draw, in another run
    again = []
    model2 = trained_stats(TinyResNet())
    run(model2, {"tau": 0.0, "seeds": 3}, oracle_ctx(model2, checks=lambda b: again.append(b.conv1.weight.clone())))
    assert all(torch.equal(a, b) for a, b in zip(seen, again))
    blk = Block(8)
    reinit_block(blk, 1)
    w1 = blk.conv1.weight.clone()
    reinit_block(blk, 2)
    assert not torch.equal(w1, blk.conv1.weight)
    reinit_block(blk, 1)
    assert torch.equal(w1, blk.conv1.weight)


def test_seeds_average_the_accuracy_drop():
    model = trained_stats(TinyResNet())
    blocks = list(model.blocks)
    got: dict[int, list[float]] = {}

    def evaluate(m):
        hit = [i for i, b in enumerate(blocks) if reinitialised(b)]
        if not hit:
            return A0
        a = A0 - min(0.8, abs(blocks[hit[0]].conv1.weight[0, 0, 0, 0].item()))  # depends on the draw
        got.setdefault(hit[0], []).append(a)
        return a

    ctx = nets.make_ctx(model, method="sr_init", shape=SHAPE, num_classes=NUM_CLASSES, evaluate=evaluate)
    info = run(model, {"tau": 0.0, "seeds": 4}, ctx).info
    for b in info["blocks"]:
        accs = got[b["index"]]
        assert len(accs) == 4 and len(set(accs)) > 1
        assert b["accuracy"] == pytest.approx(accs)
        assert b["delta"] == pytest.approx(A0 - sum(accs) / 4)


# ----------------------------------------------------------------------------- real evaluation
def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(128) % NUM_CLASSES
    x = torch.randn(128, *SHAPE, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x[:96], y[:96]), TensorDataset(x[96:], y[96:])


def _trained_tiny(seed=0):
    torch.manual_seed(seed)
    model = TinyResNet()
    loaders = nets.synthetic_loaders(data=_data(seed), seed=seed)
    train(model, loaders.train, epochs=2, lr=0.05)
    return model.eval(), loaders.val


def _real_ctx(model, seed=0):
    """The runner's context on ``_data()``: ``ctx.evaluate`` is the validation accuracy; calls counted."""
    ctx = nets.make_ctx(model, method="sr_init", seed=seed, shape=SHAPE, num_classes=NUM_CLASSES, data=_data())
    calls, evaluate = [], ctx.evaluate

    def counted(m):
        calls.append(1)
        return evaluate(m)

    ctx.evaluate = counted
    return ctx, calls


def test_real_training_rule_and_determinism():
    trained, val_loader = _trained_tiny()
    a0 = accuracy(trained, val_loader)
    results = []
    for _ in range(2):
        model = copy.deepcopy(trained)
        ctx, calls = _real_ctx(model, seed=3)
        res = run(model, {"tau": 0.15, "seeds": 2}, ctx)
        assert len(calls) == 1 + 5 * 2
        results.append(res)
    a, b = results
    info = a.info
    assert info["base_accuracy"] == pytest.approx(a0)
    assert info == b.info  # same seed: same importances, same removals
    want = [x["index"] for x in info["blocks"] if x["removable"] and x["delta"] <= 0.15 + 1e-9]
    assert info["removed"] == want and 0 < len(want) < 4  # the data make some blocks matter, some not
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(a.model.eval()(x), b.model.eval()(x))
    assert accuracy(trained, val_loader) == a0  # the caller's copy untouched by the copies' pruning


def test_no_removable_block_is_a_trial_failure_naming_the_class():
    model = PlainNet()
    with pytest.raises(TrialFailure, match="PlainNet has no residual blocks"):
        run(model, {}, oracle_ctx(model))
    one = TinyResNet(n_blocks=1)  # a single block: first of its stage, never removable
    with pytest.raises(TrialFailure, match="TinyResNet has 1 residual blocks, none removable"):
        run(one, {}, oracle_ctx(one))


def test_channel_ratio_follow_up_on_cifar_resnet20():
    from sweep.models import build_model

    def fresh():
        torch.manual_seed(0)
        return trained_stats(build_model("cifar_resnet20", num_classes=10, in_channels=1, input_size=16))

    x = torch.zeros(1, 1, 16, 16)
    depth_only = fresh()
    ctx = nets.make_ctx(depth_only, method="sr_init", shape=(1, 16, 16), num_classes=10, evaluate=lambda m: 0.5)
    p_depth = count_params(run(depth_only, {"tau": 0.0}, ctx, x).model)  # every Δ = 0 <= 0
    model = fresh()
    ctx.ignored_layers = skipped_layers(model, x)  # still names the removed blocks' conv2
    res = run(model, {"tau": 0.0, "channel_ratio": 0.5}, ctx, x)
    m = res.model
    assert stage_depths(m) == [1, 1, 1] and res.info["removed"] == [1, 2, 4, 5, 7, 8]
    assert res.info["params_after_depth"] == p_depth > res.info["params_after"] == count_params(m)
    assert res.info["macs_after"] < res.info["macs_after_depth"] < res.info["macs_before"]
    assert m.layer1[0].conv1.out_channels < 16 and m.layer1[0].conv2.out_channels == 16  # stream width kept
    assert m.fc.out_features == 10
    with torch.no_grad():
        assert m(torch.randn(2, 1, 16, 16)).shape == (2, 10)


# ----------------------------------------------------------------------------- a MACs target
RESNET20_DROPS = [0.5, 0.3, 0.05, 0.5, 0.2, 0.1, 0.5, 0.15, 0.25]  # Δ order of removable blocks: 2, 5, 7, 4, 8, 1


def _resnet20():
    from sweep.models import build_model

    torch.manual_seed(0)
    return trained_stats(build_model("cifar_resnet20", num_classes=10, in_channels=1, input_size=16))


def _resnet20_ctx(model, shape=(1, 16, 16)):
    """The oracle ``evaluate`` on a CIFAR ResNet-20: A0 − RESNET20_DROPS[b] while block b is re-initialised."""
    from sweep.engine.depth import removable_blocks

    modules = dict(model.named_modules())
    blocks = [modules[r.name] for r in removable_blocks(model, torch.zeros(1, *shape))]

    def evaluate(m):
        hit = [i for i, b in enumerate(blocks) if reinitialised(b)]
        return A0 - RESNET20_DROPS[hit[0]] if hit else A0

    return nets.make_ctx(model, method="sr_init", shape=shape, num_classes=10, evaluate=evaluate)


@pytest.mark.parametrize("fraction, removed, channels", [
    (0.75, [2, 5], False),  # two blocks land within 3 %: no channel step
    (0.5, [2, 4, 5, 7], True),  # block 8 next would overshoot: held back, channels close the gap
    (0.25, [1, 2, 4, 5, 7, 8], True),  # every block goes, then channels
])
def test_macs_fraction_lands_within_tolerance_removing_blocks_in_delta_order(fraction, removed, channels):
    from sweep.engine.channels import TOLERANCE, channel_counts
    from sweep.measure import count_macs

    x = torch.zeros(1, 1, 16, 16)
    model = _resnet20()
    macs0 = count_macs(model, x)
    names0 = {id(mod): n for n, mod in model.named_modules()}  # the widths are keyed by these
    res = run(model, {"tau": 1.0, "macs_fraction": fraction}, _resnet20_ctx(model), x)
    info, m = res.info, res.model
    assert info["blocks_order"] == [2, 5, 7, 4, 8, 1]  # ascending Δ
    assert info["removed"] == removed == sorted(info["blocks_order"][: len(removed)])  # a prefix of it
    assert info["blocks_held_back"] == info["blocks_order"][len(removed):]
    macs = count_macs(m, x)
    assert abs(macs / macs0 - fraction) <= fraction * TOLERANCE
    assert info["macs_after"] == macs and info["achieved_macs_fraction"] == macs / macs0 and info["target_reached"]
    # blocks never take the MACs more than the tolerance below the target; the trail says why a block stayed
    assert info["macs_after_depth"] >= fraction * macs0 * (1 - TOLERANCE)
    assert [t["block"] for t in info["blocks_trail"] if t["removed"]] == info["blocks_order"][: len(removed)]
    if info["blocks_held_back"] and info["blocks_trail"][-1]["removed"] is False:
        assert info["blocks_trail"][-1]["macs"] < fraction * macs0 * (1 - TOLERANCE)
    assert (info["channel_step"] is not None) == channels == (info["macs_after"] < info["macs_after_depth"])
    # the widths under the input's layer names: a removed block's layers are absent, and a later block keeps
    # its own name although its stage renumbered it
    assert info["channels"] == {names0[id(mod)]: w for mod, w in zip(
        [dict(m.named_modules())[n] for n in channel_counts(m)], channel_counts(m).values())}
    gone = {info["blocks"][b]["name"] for b in removed}
    assert not any(k.startswith(g + ".") for k in info["channels"] for g in gone)
    assert stage_depths(m) == [3 - len([b for b in removed if b // 3 == stage]) for stage in range(3)]
    with torch.no_grad():
        assert m(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    json.dumps(info, allow_nan=False)


def test_macs_fraction_with_remove_blocks_keeps_the_given_order():
    from sweep.measure import count_macs

    x = torch.zeros(1, 1, 16, 16)
    model = _resnet20()
    macs0 = count_macs(model, x)
    res = run(model, {"remove_blocks": [8, 1, 2], "macs_fraction": 0.78}, _resnet20_ctx(model), x)
    info = res.info
    assert info["removed"] == [1, 8] and info["blocks_held_back"] == [2]  # 8, then 1 reach the target: 2 stays
    assert [t["block"] for t in info["blocks_trail"]] == [8, 1] and info["channel_step"] is None
    assert info["target_reached"] and abs(count_macs(res.model, x) / macs0 - 0.78) <= 0.78 * 0.03


@pytest.mark.parametrize("values", [
    {"remove_blocks": [2, 5, 7]},  # blocks only: every later layer sees other inputs, no width changed
    {"remove_blocks": [2, 5], "macs_fraction": 0.5},  # blocks, then channels (the kept map by the new names)
])
def test_reconstruction_brings_the_pruned_network_closer_to_the_unpruned_one(values):
    from sweep.engine.depth import module_names

    x = torch.zeros(1, 1, 16, 16)
    held_out = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    dense = _resnet20().eval()
    with torch.no_grad():
        want = dense(held_out)
    errors, infos = {}, {}
    for recon in (False, True):
        model = copy.deepcopy(dense)
        names = module_names(model)
        ctx = nets.make_ctx(model, method="sr_init", shape=(1, 16, 16), num_classes=10, evaluate=lambda m: 0.5)
        res = run(model, {**values, "reconstruct": recon}, ctx, x)
        with torch.no_grad():
            errors[recon] = float(F.mse_loss(res.model.eval()(held_out), want))
        infos[recon] = res.info
        renamed = {n: names[id(m)] for n, m in res.model.named_modules() if id(m) in names}
    assert "layer_reconstruction" not in infos[False]
    rec = infos[True]["layer_reconstruction"]
    assert errors[True] < 0.5 * errors[False]  # on inputs the re-fit never saw
    assert rec["inputs"] == 4 * 16 and rec["layers"]  # recon_batches (4) of the unlabeled loader
    # keyed by the unpruned network's names: a removed block's layers have no counterpart, a renumbered
    # block's layers are re-fitted under their old names
    gone = [infos[True]["blocks"][b]["name"] for b in infos[True]["removed"]]
    assert all(any(k.startswith(g + ".") for g in gone) for k, why in rec["skipped"].items() if "no layer" in why)
    assert {k for k in rec["skipped"] if "no layer" in k or "no layer" in rec["skipped"][k]} == {
        n for n, m in dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        and any(n.startswith(g + ".") for g in gone)}
    assert set(rec["layers"]) <= set(renamed.values())
    assert "already computes" in rec["skipped"]["layer1.0.conv1"]  # before the first removed block: unchanged
    assert all(rec["error_after"][k] < rec["error_before"][k] for k in rec["layers"])
    json.dumps(infos[True], allow_nan=False)


# ----------------------------------------------------------------------------- the authors' fine-tuning
def _authors_run(qualities, monkeypatch, epochs=3):
    """TinyResNet, block 1 removed, recipe "authors" on the runner's context (sweep lr 0.05, wd 5e-4);
    ``ctx.evaluate`` returns ``qualities`` in turn and snapshots the weights it is shown."""
    import sweep.train as tr
    from sweep.config import TrainConfig
    from sweep.methods.context import build_context

    built, make_optimizer = [], tr.make_optimizer

    def recording(params, hp, *, total_steps):
        out = make_optimizer(params, hp, total_steps=total_steps)
        built.append(out[0])
        return out

    monkeypatch.setattr(tr, "make_optimizer", recording)
    torch.manual_seed(0)
    model = trained_stats(TinyResNet())
    logged, snaps = [], []
    ctx = build_context(nets.synthetic_loaders(data=_data()), method="sr_init", labels=True, teacher=None,
                        finetune_config=TrainConfig(epochs=epochs, lr=0.05, weight_decay=5e-4), device="cpu",
                        seed=0, num_classes=NUM_CLASSES, ignored_layers=[],
                        log_metric=lambda k, v, s=0: logged.append((k, v, s)))

    def evaluate(m):
        snaps.append({k: v.clone() for k, v in m.state_dict().items()})
        return qualities[len(snaps) - 1]

    ctx = dataclasses.replace(ctx, evaluate=evaluate)
    res = run(model, {"remove_blocks": [1], "recipe": "authors"}, ctx)
    return res, snaps, built, logged


@pytest.mark.parametrize("qualities, best", [([0.9, 0.5, 0.7], 0), ([0.5, 0.8, 0.8], 1)])  # ties: the earlier
def test_authors_recipe_keeps_the_best_epoch_with_their_hyperparameters(qualities, best, monkeypatch):
    from sweep.methods.sr_init import AUTHORS_RECIPE

    res, snaps, built, logged = _authors_run(qualities, monkeypatch)
    assert res.finetuned is True and res.info["epochs"] == 3 and res.info["recipe"] == "authors"
    assert res.info["epoch_quality"] == qualities and res.info["best_epoch"] == best + 1
    assert res.info["best_quality"] == qualities[best]
    state = res.model.state_dict()
    assert len(snaps) == 3 and all(torch.equal(state[k], snaps[best][k]) for k in state)
    assert not all(torch.equal(state[k], snaps[2][k]) for k in state)  # not the last epoch's weights
    (opt,) = built  # one training run, with the authors' settings, not the sweep's (lr 0.05, wd 5e-4)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and group["initial_lr"] == 0.01 and group["weight_decay"] == 5e-3
    assert group["momentum"] == 0.9 and group["nesterov"] is False
    assert AUTHORS_RECIPE == {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-3,
                              "nesterov": False}
    assert [s for k, _, s in logged if k == "sr_init/finetune_quality"] == [0, 1, 2]
    assert [s for k, _, s in logged if k == "train_loss"] == [0, 1, 2]
    json.dumps(res.info, allow_nan=False)


def test_authors_recipe_needs_a_finetune_that_takes_its_settings():
    model = trained_stats(TinyResNet())
    ctx = dataclasses.replace(oracle_ctx(model), finetune=lambda m, epochs=None: [])
    with pytest.raises(TrialFailure, match="recipe='authors' must have a ctx.finetune that takes epochs, keep_best"):
        run(model, {"tau": 0.2, "recipe": "authors"}, ctx)


# ----------------------------------------------------------------------------- registry and knobs
def test_registered_with_knobs():
    assert "sr_init" in method_names()
    spec = get_method("sr_init")
    cfg = spec.make_config({})
    assert dict(cfg) == {"tau": 0.60, "seeds": 1, "max_removed": None, "channel_ratio": 0.0,
                         "remove_blocks": None, "macs_fraction": None, "recipe": "sweep", "reconstruct": True,
                         "recon_batches": 4}
    assert spec.make_config({"tau": 0.6185, "seeds": 10, "max_removed": 3, "channel_ratio": 0.3}).tau == 0.6185


@pytest.mark.parametrize("knob, value", [
    ("tau", 1.5), ("tau", -0.1), ("tau", "high"), ("seeds", 0), ("seeds", 11), ("seeds", 2.5),
    ("max_removed", 0), ("channel_ratio", 1.0), ("channel_ratio", -0.2), ("no_such", 1),
    ("macs_fraction", 0.0), ("macs_fraction", 1.5), ("recipe", "paper"),
])
def test_bad_knob_values_raise_config_error(knob, value):
    with pytest.raises(ConfigError, match=knob):
        get_method("sr_init").make_config({knob: value}, where="x.yaml: methods.sr_init")


def test_macs_fraction_and_channel_ratio_are_exclusive():
    with pytest.raises(ConfigError, match="give only one of macs_fraction, channel_ratio for method sr_init"):
        get_method("sr_init").make_config({"macs_fraction": 0.5, "channel_ratio": 0.3}, where="x.yaml")


def test_search_space_file_parses():
    from sweep.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "search_spaces" / "sr_init.yaml")
    assert {m.name for m in cfg.methods} == {"sr_init", "magnitude"}
    assert cfg.model.name == "cifar_resnet20" and cfg.dataset.name == "fashion-mnist"


# ----------------------------------------------------------------------------- report
def test_report_draws_block_importance_for_front_sr_init_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sweep import report
    from sweep.results.schema import COLUMNS

    base = {"accuracy": 0.9, "test_accuracy": 0.89, "params": 1000, "macs": 5000, "latency_ms": 4.0}
    blocks = [{"index": i, "name": f"layer.{i}", "removable": i != 0, "delta": d, "removed": i in (1, 3)}
              for i, d in enumerate([0.5, 0.05, 0.3, 0.1])]
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def row(trial_id, method, acc, size, info, on_front):
        r = {name: None for name, _, _ in COLUMNS}
        r.update(sweep="demo", trial_id=trial_id, status="ok", error="", method=method, accuracy=acc,
                 test_accuracy=acc, params=size, macs=5 * size, latency_ms=size / 250, on_front=on_front,
                 info=json.dumps(info), started_at=t0, ended_at=t0 + timedelta(seconds=len(trial_id)))
        return r

    rows = [row("baseline", "baseline", 0.9, 1000, {}, True),
            row("sr/1", "sr_init", 0.88, 600, {"tau": 0.2, "blocks": blocks}, True),
            row("sr2", "sr_init", 0.70, 900, {"tau": 0.1, "blocks": blocks}, False),  # off the front
            row("mag", "magnitude", 0.85, 500, {"channel_ratio": 0.5}, True)]
    meta = {"name": "demo", "objectives": ["accuracy", "latency_ms"], "baseline": base}
    schema = pa.schema([pa.field(n, t) for n, t, _ in COLUMNS], metadata={"sweep": json.dumps(meta)})
    (tmp_path / "sweep").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "sweep" / "trials.parquet")
    written = report.build_report(tmp_path / "sweep", tmp_path / "out")
    names = {p.name for p in written}
    assert "blocks_sr_1.png" in names  # trial id made file-safe
    assert not any(n.startswith("blocks_sr2") or n.startswith("blocks_mag") for n in names)
    png = tmp_path / "out" / "blocks_sr_1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    index = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "<h2>Per-block importance</h2>" in index and 'src="blocks_sr_1.png"' in index
    # without an sr_init row on the front there is no section (sr/1 now dominated: slower and worse)
    rows[1].update(accuracy=0.6, latency_ms=5.0, on_front=False)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "sweep" / "trials.parquet")
    report.build_report(tmp_path / "sweep", tmp_path / "out2")
    assert "Per-block importance" not in (tmp_path / "out2" / "index.html").read_text(encoding="utf-8")
