"""``cat`` (complexity-aware training, a reconstruction of Guenter & Sideris 2024): the behaviour its
reconstruction promises, on a CIFAR ResNet-20 (1x8x8 inputs, 4 classes) and the tiny nets of
``nets.py``, with synthetic data and few steps (contexts from the runner's factory).

- λ = 0 removes nothing; β = 0 removes no block; β = 1 removes no channel; a larger λ removes more;
- γ = 1 cuts MACs by a larger fraction than params (high-resolution channels go first), γ = 0 the
  reverse (wide late layers go first);
- the final gates are all 0 or 1, and the rebuilt network computes what the gated one computes with
  those gates; removal during training carries every surviving gate across the surgery;
- safeguards: no removal during warm-up, a group never loses its last channel outside a gated block;
- bad knobs raise ConfigError; runs are deterministic under a seed; info and the logged trajectory.
"""

from __future__ import annotations

import math

import nets
import pytest
import torch
from nets import NETS
from nets import example as tiny_example

from sweep.engine.channels import channel_counts
from sweep.engine.skip import skipped_layers
from sweep.errors import ConfigError, TrialFailure
from sweep.measure import count_macs, count_params
from sweep.methods import PruneContext, get_method
from sweep.methods.cat import finalise, train_cat
from sweep.methods.cat_gates import GatedNet
from sweep.models import build_model

NUM_CLASSES = 4
SHAPE = (1, 8, 8)
FAST = {"epochs": 5}  # 4 batches of 16 per epoch: 20 steps


def resnet20():
    return build_model("cifar_resnet20", num_classes=NUM_CLASSES, in_channels=1, input_size=8)


def example():
    return torch.zeros(1, *SHAPE)


def probe(shape=SHAPE):
    return torch.randn(6, *shape, generator=torch.Generator().manual_seed(99))


def make_ctx(model, seed: int = 0, shape=SHAPE, labels: bool = True) -> PruneContext:
    return nets.make_ctx(model, method="cat", seed=seed, shape=shape, labels=labels)


_CACHE: dict = {}


def run(seed: int = 0, **values):
    """Prune a fresh ResNet-20 (built under ``seed``) with ``cat`` at ``values`` (cached per values)."""
    key = (seed, tuple(sorted(values.items())))
    if key not in _CACHE:
        spec = get_method("cat")
        torch.manual_seed(seed)
        model = resnet20()
        before = (count_params(model), count_macs(model, example()))
        ctx = make_ctx(model, seed)
        res = spec.prune(model, example(), spec.make_config({**FAST, **values}), ctx)
        _CACHE[key] = (res, before, ctx)
    return _CACHE[key]


def fractions(values: dict) -> tuple[float, float]:
    """(params kept, MACs kept) as fractions of the unpruned ResNet-20."""
    res, (p0, m0), _ = run(**values)
    return count_params(res.model) / p0, count_macs(res.model, example()) / m0


# ----------------------------------------------------------------------------- the three knobs
def test_lambda_zero_removes_nothing():
    res, (p0, m0), _ = run(lam=0.0)
    assert count_params(res.model) == p0 and count_macs(res.model, example()) == m0
    assert res.info["final_structure"]["blocks_removed"] == []
    assert all(v == 1.0 for v in res.info["layer_ratios"].values())
    assert res.finetuned and res.info["epochs"] == FAST["epochs"]


def test_larger_lambda_removes_more():
    macs = [fractions({"lam": lam})[1] for lam in (0.0, 0.3, 3.0)]
    assert macs[0] == 1.0
    assert macs[0] > macs[1] > macs[2], macs


def test_beta_zero_removes_no_block_and_beta_one_no_channel():
    res0, (p0, _), _ = run(lam=3.0, beta=0.0)
    assert res0.info["final_structure"]["blocks_removed"] == []
    assert not res0.info["block_gates"]
    assert count_params(res0.model) < p0  # channels did go
    res1, _, _ = run(lam=3.0, beta=1.0)
    assert res1.info["final_structure"]["blocks_removed"]  # blocks did go
    assert not res1.info["channel_gates"]
    full = channel_counts(resnet20())  # surviving layers keep their width (all blocks of a stage are alike)
    assert all(n == full[name] for name, n in res1.info["final_structure"]["channels"].items())


def test_gamma_balances_macs_against_params():
    # channels only (beta = 0) so that the comparison is about which channels go: in ResNet-20 at 8x8
    # a stage-1 channel costs 4x the MACs and 1/4 the parameters of a stage-3 channel
    p1, m1 = fractions({"lam": 2.0, "beta": 0.0, "gamma": 1.0})
    p0, m0 = fractions({"lam": 2.0, "beta": 0.0, "gamma": 0.0})
    assert (1 - m1) > (1 - p1), (p1, m1)  # gamma = 1: MACs cut by a larger fraction than params
    assert (1 - p0) > (1 - m0), (p0, m0)  # gamma = 0: the reverse
    r1 = run(lam=2.0, beta=0.0, gamma=1.0)[0].info["layer_ratios"]
    r0 = run(lam=2.0, beta=0.0, gamma=0.0)[0].info["layer_ratios"]
    stage = lambda r, s: sum(v for k, v in r.items() if k.startswith(f"layer{s}")) / 3  # noqa: E731
    assert stage(r1, 1) < stage(r1, 3) and stage(r0, 3) < stage(r0, 1)


# ----------------------------------------------------------------------------- the rebuilt network
def _check_rebuild(model, x, ex, units_p: float, blocks_p: float, seed: int = 0):
    """Random 0/1 gates -> finalise -> gated output == rebuilt output (eval mode)."""
    gated = GatedNet(model, ex, skipped_layers(model, ex), channel_gates=True, block_gates=True, init=1.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gated.theta.copy_((torch.rand(gated.theta.shape, generator=g) > units_p).float())
        gated.phi.copy_((torch.rand(gated.phi.shape, generator=g) > blocks_p).float())
    units, blocks = finalise(gated)
    assert set(gated._z.unique().tolist()) <= {0.0, 1.0} and set(gated._zb.unique().tolist()) <= {0.0, 1.0}
    model.eval()
    with torch.no_grad():
        gated_out = model(x)
    gated.remove(units, blocks, rebuild=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # a plain module
    with torch.no_grad():
        plain_out = model(x)
    torch.testing.assert_close(plain_out, gated_out, rtol=1e-5, atol=1e-5)
    return units, blocks


@pytest.mark.parametrize("net", sorted(NETS))
def test_rebuilt_equals_gated_on_tiny_nets(net):
    torch.manual_seed(0)
    model = NETS[net]()
    with torch.no_grad():  # non-trivial BN statistics and affine terms, so that a wrong gate would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    p0 = count_params(model)
    units, blocks = _check_rebuild(model, probe((3, 8, 8)), tiny_example(), 0.5, 0.5)
    assert units or blocks
    assert count_params(model) < p0


def test_rebuilt_equals_gated_after_training():
    spec = get_method("cat")
    torch.manual_seed(1)
    model = resnet20()
    ctx = make_ctx(model, 1)
    cfg = spec.make_config({**FAST, "lam": 1.0, "settle": 0.0})  # rounded at the very end: nothing trains after
    x = probe()
    seen = {}

    def on_final(gated, units, blocks):
        # every final gate is 0 or 1: the rounding of θ (θ >= 0.5 kept), up to the safeguards
        z, zb = gated._z, gated._zb
        assert set(z.unique().tolist()) <= {0.0, 1.0} and set(zb.unique().tolist()) <= {0.0, 1.0}
        assert bool(((z == 1) | (gated.theta.detach() < 0.5)).all())
        assert bool(((zb == 1) | (gated.phi.detach() < 0.5) | (zb == 0)).all())
        seen["removed"] = bool(units or blocks)
        with torch.no_grad():
            seen["out"] = gated.model.eval()(x)

    pruned, run_info = train_cat(model, example(), cfg, ctx, on_final=on_final)
    assert seen["removed"]  # the comparison is not trivial
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pruned.modules())
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), seen["out"], rtol=1e-5, atol=1e-5)


def test_removal_during_training_carries_the_gates():
    torch.manual_seed(0)
    model = resnet20().eval()
    gated = GatedNet(model, example(), skipped_layers(model, example()), channel_gates=True, block_gates=True,
                     init=1.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        gated.theta.copy_(torch.rand(gated.theta.shape, generator=g))
        gated.phi.copy_(torch.rand(gated.phi.shape, generator=g) * 0.5 + 0.5)
        gated.phi[2] = 0.0
    off = torch.zeros(gated.theta.numel(), dtype=torch.bool)
    off[::3] = True
    units, blocks = gated.decide(off, gated.phi.detach() == 0)
    assert blocks == [2]
    survivors = [(gg.outs[0][0], float(gated.theta.detach()[gg.offset + u]))
                 for gi, gg in enumerate(gated.groups) if gg.block != 2
                 for u in range(gg.size) if u not in units.get(gi, [])]
    kept_phi = [float(p) for i, p in enumerate(gated.phi.detach()) if i != 2]
    x = probe()
    z = torch.ones(gated.theta.numel())
    for gi, us in units.items():
        z[gated.groups[gi].offset + torch.tensor(us)] = 0
    gated.set_gates(z, (gated.phi.detach() > 0).float())
    with torch.no_grad():
        before = model(x)
    gated.remove(units, blocks)  # rebuild: a new graph, gates and hooks
    assert sorted(float(t) for t in gated.theta.detach()) == sorted(t for _, t in survivors)
    assert [float(p) for p in gated.phi.detach()] == pytest.approx(kept_phi)
    gated.set_gates(torch.ones(gated.theta.numel()), torch.ones(gated.phi.numel()))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_expected_cost_of_the_full_net_is_exact():
    model = resnet20()
    gated = GatedNet(model, example(), skipped_layers(model, example()), channel_gates=True, block_gates=True,
                     init=1.0)
    assert gated.params0 == count_params(model)
    conv_linear_macs = 0
    hooks = []

    def hook(m, a, out):
        nonlocal conv_linear_macs
        w = m.weight
        conv_linear_macs += w.numel() * (out[0, 0].numel() if out.dim() > 2 else 1)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    gated.clear_gates()
    with torch.no_grad():
        model.eval()(example())
    assert gated.macs0 == conv_linear_macs
    # multilinear: halving every channel gate of one group lowers E[params] by half that group's share
    with torch.no_grad():
        gg = gated.groups[0]
        t = torch.ones_like(gated.theta)
        t[gg.offset:gg.offset + gg.size] = 0.5
        _, p_half = gated.expected(t, torch.ones_like(gated.phi))
        t[gg.offset:gg.offset + gg.size] = 0.0
        _, p_zero = gated.expected(t, torch.ones_like(gated.phi))
    assert float(p_half) == pytest.approx((gated.params0 + float(p_zero)) / 2)


# ----------------------------------------------------------------------------- safeguards
def test_warmup_and_patience_gate_removal():
    res, _, _ = run(lam=20.0, warmup=0.5, patience=2)
    events = res.info["removals_during_training"]
    assert events, "a strong lambda with patience 2 removes structures while training"
    assert min(e["step"] for e in events) >= res.info["warmup_steps"] == 10
    res2, _, _ = run(lam=20.0, warmup=0.0, patience=1000)
    assert res2.info["removals_during_training"] == []  # never long enough under the threshold


def test_last_channel_kept_outside_blocks_and_block_removed_inside():
    spec = get_method("cat")
    torch.manual_seed(0)
    plain = NETS["plain"]()
    ctx = make_ctx(plain, shape=(3, 8, 8))
    res = spec.prune(plain, tiny_example(), spec.make_config({"lam": 100.0, "epochs": 5, "gate_lr": 1.0}), ctx)
    assert res.model.conv1.out_channels >= 1 and res.model.conv2.out_channels >= 1
    assert res.model.conv1.out_channels + res.model.conv2.out_channels <= 4  # squeezed to the minimum
    with torch.no_grad():
        assert res.model(probe((3, 8, 8))).shape == (6, NUM_CLASSES)
    blocks = NETS["blocks"]()
    gated = GatedNet(blocks, tiny_example(), skipped_layers(blocks, tiny_example()), channel_gates=True,
                     block_gates=True, init=1.0)
    inner = [gi for gi, gg in enumerate(gated.groups) if gg.block >= 0]
    off = torch.zeros(gated.theta.numel(), dtype=torch.bool)
    gg = gated.groups[inner[0]]
    off[gg.offset:gg.offset + gg.size] = True  # every channel of one block's inner group off
    units, rm = gated.decide(off, torch.zeros(gated.phi.numel(), dtype=torch.bool))
    assert rm == [gg.block] and inner[0] not in units


# ----------------------------------------------------------------------------- knobs, determinism, info
@pytest.mark.parametrize("values", [
    {"beta": 1.5}, {"beta": -0.1}, {"gamma": 1.1}, {"gamma": -0.5}, {"lam": -1.0}, {"lam": 101.0},
    {"epochs": 0}, {"start": "random"}, {"warmup": 0.95}, {"threshold": 0.5}, {"gate_lr": 0.0},
    {"init_prob": 0.04}, {"init_prob": 0.3, "threshold": 0.3}, {"patience": 0}, {"settle": 0.95},
])
def test_bad_knobs_raise_config_error(values):
    with pytest.raises(ConfigError) as ei:
        get_method("cat").make_config(values, where="test: cat")
    assert "test: cat" in str(ei.value)


def test_deterministic_under_seed():
    a, _, _ = run(seed=5, lam=1.0)
    spec = get_method("cat")
    torch.manual_seed(5)
    model = resnet20()
    b = spec.prune(model, example(), spec.make_config({**FAST, "lam": 1.0}), make_ctx(model, 5))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.info["trajectory"] == b.info["trajectory"]


def test_scratch_start_reinitialises_and_trains():
    res, _, _ = run(lam=1.0, start="scratch")
    assert res.info["start"] == "scratch" and res.info["init_prob"] == 0.9
    assert res.info["trajectory"][0]["expected_macs"] < 1.0  # gates start at 0.9
    assert all(math.isfinite(v) for v in res.info["train_loss"])


def test_scratch_initialisation_is_pytorch_default_under_a_seed():
    """``start: scratch`` re-initialises with reset_parameters_: the numbers of the same layers built
    afresh under the seed, BatchNorm statistics reset, and the caller's RNG left alone."""
    from sweep.engine.reinit import reset_parameters_

    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                   torch.nn.Linear(144, 3))

    torch.manual_seed(123)
    fresh = build()
    model = build()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1), model[1].weight.uniform_(0, 2)
    rng = torch.random.get_rng_state()
    reset_parameters_(model, 123)
    assert torch.equal(torch.random.get_rng_state(), rng)
    sf, sm = fresh.state_dict(), model.state_dict()
    assert all(torch.equal(sf[k], sm[k]) for k in sf)


def test_needs_labels():
    """A context without labels fails at once (ctx.labels_available), before any training or gating."""
    spec = get_method("cat")
    assert spec.needs_labels
    model = resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrialFailure, match="cannot run in a label-free sweep"):
        spec.prune(model, example(), spec.make_config({"epochs": 1, "start": "scratch"}),
                   make_ctx(model, labels=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_info_trajectory_and_logged_metrics():
    res, _, ctx = run(lam=1.0)
    info = res.info
    traj = info["trajectory"]
    assert [p["step"] for p in traj] == list(range(FAST["epochs"] + 1))
    for p in traj:
        assert {"step", "expected_macs", "expected_params", "live_channels", "live_blocks"} <= set(p)
    assert traj[0]["expected_macs"] == 1.0 and traj[0]["expected_params"] == 1.0
    assert traj[-1]["expected_macs"] < traj[0]["expected_macs"]
    assert traj[-1]["live_channels"] <= traj[0]["live_channels"]
    fs = info["final_structure"]
    assert set(fs) == {"channels", "blocks_kept", "blocks_removed"}
    assert len(fs["blocks_kept"]) + len(fs["blocks_removed"]) == 9
    assert fs["channels"]["fc"] == NUM_CLASSES
    assert set(info["layer_ratios"]) == {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}
    assert all(0.0 <= v <= 1.0 for v in info["layer_ratios"].values())
    keys = {k for k, _, _ in ctx.logged}
    assert {f"cat/{k}" for k in ("expected_macs", "expected_params", "live_channels", "live_blocks",
                                 "train_loss")} <= keys
    assert sorted(nets.steps(ctx, "cat/train_loss")) == list(range(1, FAST["epochs"] + 1))
    import json

    json.dumps(info)
