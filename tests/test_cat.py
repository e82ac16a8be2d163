"""``cat`` (complexity-aware training, a reconstruction of Guenter & Sideris 2024): the behaviour its
reconstruction promises, on a CIFAR ResNet-20 (1x8x8 inputs, 4 classes) and the tiny nets of
``nets.py``, with synthetic data and few steps (contexts from the runner's factory).

- λ = 0 removes nothing; β = 0 removes no block; β = 1 removes no channel; a larger λ removes more;
- γ = 1 cuts MACs by a larger fraction than params (high-resolution channels go first), γ = 0 the
  reverse (wide late layers go first);
- the flattening hyper-prior: 0 and 1 are the fixed points its dynamics reach exactly (½ the one
  unstable interior point); with a task-loss resistance and a linear pressure a gate ends at a corner
  (the one its prior-free equilibrium is nearer to) instead of inside; ~0 strength early leaves an
  early gate unmoved, and a gate the task loss wants back can come back;
- the safety rounding is nearly a no-op, and the number of gates it had to decide is reported;
- the final gates are all 0 or 1, and the rebuilt network computes what the gated one computes with
  those gates; removal during training carries every surviving gate across the surgery;
- safeguards: no removal during warm-up, a group never loses its last channel outside a gated block;
- the budget: ``info["epochs"]`` is every epoch trained (gated and settle), from the baseline or from scratch;
- bad knobs raise ConfigError; runs are deterministic under a seed; info and the logged trajectory;
- the MACs-target mode (``macs_fraction``): λ moves the way the expected MACs ask, the final network is
  within 3 % of the target on ResNet-20 and the tiny nets, and the final correction re-decides marginal
  gates in θ order without emptying a group.
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
from sweep.methods.cat import (
    CORRECT_TOL,
    FLATTEN_RAMP,
    GATE_TRAVEL,
    STARTS,
    correct_to_target,
    finalise,
    flattening_penalty,
    flattening_strength,
    gate_update,
    train_cat,
)
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
    assert not res0.info["block_gates"] and res0.info["flattening_prior"]["rho_full"]["blocks"] == 0.0
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


# ----------------------------------------------------------------------------- the flattening hyper-prior
def _prior_only(theta0: list, rho: float, lr: float, steps: int = 3000) -> list:
    """Gates under the flattening prior alone (no task loss, no pressure), projected updates; the
    trajectory of the gate vector, one tensor per step."""
    theta = torch.tensor(theta0, dtype=torch.float64)
    vel = torch.zeros_like(theta)
    zero = torch.zeros_like(theta)
    path = [theta.clone()]
    for _ in range(steps):
        gate_update(theta, vel, zero, lr=lr, rho=rho)
        path.append(theta.clone())
    return path


@pytest.mark.parametrize("rho,lr", [(0.5, 0.05), (2.0, 0.01), (2.0, 0.2), (20.0, 0.02)])
def test_prior_alone_drives_gates_to_exactly_0_or_1(rho, lr):
    start = [0.3, 0.7, 0.1, 0.9, 0.49, 0.51, 0.45, 0.55]
    path = _prior_only(start, rho, lr)
    end = path[-1]
    assert end.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # exactly, not approximately
    # symmetric: the gate started at 1 - θ is the mirror image of the one started at θ, at every step
    for th in path:
        torch.testing.assert_close(th[0::2], 1 - th[1::2], rtol=0, atol=1e-12)
    # monotone: each gate moves away from ½ at every step, never back
    d = torch.stack(path)
    assert bool((d[1:, 0::2] <= d[:-1, 0::2]).all()) and bool((d[1:, 1::2] >= d[:-1, 1::2]).all())


@pytest.mark.parametrize("rho", [0.5, 2.0])
def test_prior_fixed_points_are_the_ends_and_the_unstable_middle(rho):
    # 0 and 1 stay put; ½ stays put too (the interior fixed point) but a nudge either way leaves it
    path = _prior_only([0.0, 1.0, 0.5, 0.5 - 1e-6, 0.5 + 1e-6], rho, 0.1, steps=2000)
    assert all(p[:3].tolist() == [0.0, 1.0, 0.5] for p in path)
    assert path[-1][3:].tolist() == [0.0, 1.0]


def test_prior_penalty_is_the_negative_log_density_the_update_descends():
    rho = 1.7
    theta = torch.linspace(0, 1, 101, dtype=torch.float64, requires_grad=True)
    pen = flattening_penalty(theta, rho)
    (grad,) = torch.autograd.grad(pen.sum(), theta)
    pen = pen.detach()
    assert float(pen[0]) == 0.0 and float(pen[-1]) == 0.0  # minima at the ends
    assert int(pen.argmax()) == 50 and float(pen.max()) == pytest.approx(rho / 4)
    assert bool((pen[:-2] - 2 * pen[1:-1] + pen[2:] < 0).all())  # concave
    # the update's prior term is exactly the penalty's gradient: with no other force (zero gradient and
    # velocity) one step is θ - lr·∂P/∂θ, projected on [0, 1]
    x = theta.detach().clone()
    gate_update(x, torch.zeros_like(x), torch.zeros_like(x), lr=0.01, rho=rho)
    torch.testing.assert_close(x, (theta.detach() - 0.01 * grad).clamp(0, 1))


def _one_gate(w: float, delta: float, rho_full: float, steps: int = 600, seed: int = 0,
              lr: float | None = None) -> list:
    """One gate under the method's update and schedule, in the one-gate model of the docstring: the
    straight-through gradient of a useful unit is -Δ on a z = 0 draw and 0 on a z = 1 draw (a trained
    net's local slope), plus the linear pressure w; the prior at s(t)·rho_full; starts at θ = 1;
    ``lr`` unset: the method's default gate step."""
    g = torch.Generator().manual_seed(seed)
    theta, vel = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    lr = GATE_TRAVEL / steps if lr is None else lr
    path = []
    for t in range(1, steps + 1):
        z = float(torch.rand(1, generator=g)) < float(theta)
        gate_update(theta, vel, torch.tensor([(0.0 if z else -delta) + w], dtype=torch.float64), lr=lr,
                    rho=flattening_strength(t, steps) * rho_full)
        path.append(float(theta))
    return path


@pytest.mark.parametrize("lr", [0.02, None])
@pytest.mark.parametrize("w,delta", [(0.3, 1.0), (0.7, 1.0), (1.2, 4.0), (2.8, 4.0), (0.45, 1.0), (0.55, 1.0)])
def test_pressure_plus_prior_ends_at_a_corner_not_inside(w, delta, lr):
    rho_full = 2.0 * max(w, 1.0)  # the method's rule: flatten (2) x max(largest pressure, floor 1)
    free = _one_gate(w, delta, 0.0, lr=0.02)  # no prior: the gate hovers at the interior point 1 - w/Δ
    settled = sum(free[-200:]) / 200
    assert 0.1 < settled < 0.9 and settled == pytest.approx(1 - w / delta, abs=0.08)
    end = _one_gate(w, delta, rho_full, lr=lr)[-1]
    assert end in (0.0, 1.0)  # exactly a corner, with the default gate step (None) too
    if lr is not None:  # gates fast enough to track their equilibrium: the side it lies on
        assert end == (1.0 if w < delta / 2 else 0.0)
    elif w < delta / 2:  # the default step may keep a gate it would drop given more steps, never the reverse
        assert end == 1.0


def test_schedule_is_zero_early_and_full_late():
    steps = 400
    s = [flattening_strength(t, steps) for t in range(steps + 1)]
    assert s[0] == 0.0 and s[-1] == 1.0
    assert all(a <= b for a, b in zip(s, s[1:]))  # annealed in, never out
    assert max(s[: int(0.075 * steps) + 1]) <= 0.0101  # ~0 in the first tenth of the ramp
    assert all(v == 1.0 for v in s[math.ceil(FLATTEN_RAMP * steps):])  # full for the last quarter


@pytest.mark.parametrize("when,moved", [("early", False), ("late", True)])
def test_annealing_leaves_an_early_gate_unmoved_by_the_prior(when, moved):
    steps, rho_full = 400, 2.0
    t = 0 if when == "early" else steps
    rho = flattening_strength(t, steps) * rho_full
    theta = torch.tensor([0.3, 0.7, 0.02])
    before = theta.clone()
    gate_update(theta, torch.zeros(3), torch.zeros(3), lr=0.1, rho=rho)
    assert torch.equal(theta, before) is not moved
    if moved:  # full strength: pushed away from ½, towards the nearer end
        assert theta[0] < 0.3 and theta[1] > 0.7 and theta[2] < 0.02


@pytest.mark.parametrize("when", ["early", "late"])
def test_early_gate_near_0_can_come_back_late_one_cannot(when):
    # a gate knocked near 0 by noisy first steps, for a unit the task loss wants (Δ = 1 > w = 0.3):
    # early (prior ~0) it comes back up; at full strength the prior holds it at 0
    steps, w, delta = 400, 0.3, 1.0
    theta, vel = torch.tensor([0.04], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    t0 = 0 if when == "early" else steps
    for k in range(40):
        rho = flattening_strength(t0 + k if when == "early" else steps, steps) * 2.0
        grad = torch.tensor([-(1 - float(theta)) * delta + w], dtype=torch.float64)  # mean STE + pressure
        gate_update(theta, vel, grad, lr=GATE_TRAVEL / steps, rho=rho)
    assert (float(theta) > 0.1) if when == "early" else (float(theta) == 0.0)


def test_rounding_is_nearly_a_noop_and_reported():
    res, _, ctx = run(lam=1.0)
    info = res.info
    n, total = info["undecided_at_rounding"], info["gates_at_rounding"]
    assert isinstance(n, int) and total > 0 and 0 <= n <= 0.05 * total
    logged = [(v, s) for k, v, s in ctx.logged if k == "cat/undecided_at_rounding"]
    assert logged == [(n, info["rounded_at_step"])]
    # without the prior (flatten 0) the same run leaves the rounding many more gates to decide
    off = run(lam=1.0, flatten=0.0)[0].info["undecided_at_rounding"]
    assert off > 4 * max(n, 1), (n, off)
    traj = info["trajectory"]
    assert traj[0]["flattening"] == 0.0 and traj[-1]["flattening"] == 1.0
    assert traj[-1]["undecided"] == 0  # the rebuilt network has no gates left


def fully_gated(model):
    """``model`` with a gate on every channel group and residual block, all at 1 (the engine's skipped layers
    left ungated)."""
    return GatedNet(model, example(), skipped_layers(model, example()), channel_gates=True, block_gates=True,
                    init=1.0)


def test_undecided_counts_gates_away_from_both_ends():
    model = resnet20()
    gated = fully_gated(model)
    with torch.no_grad():
        gated.theta[:5] = torch.tensor([0.0, 0.04, 0.06, 0.5, 0.96])
        gated.phi[:3] = torch.tensor([0.94, 1.0, 0.0])
    assert gated.undecided(0.05) == 3  # 0.06, 0.5, 0.94
    assert gated.undecided(0.01) == 5


# ----------------------------------------------------------------------------- the rebuilt network
def _check_rebuild(model, x, ex, units_p: float, blocks_p: float, seed: int = 0):
    """Random 0/1 gates -> finalise -> gated output == rebuilt output (eval mode)."""
    gated = GatedNet(model, ex, skipped_layers(model, ex), channel_gates=True, block_gates=True, init=1.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gated.theta.copy_((torch.rand(gated.theta.shape, generator=g) > units_p).float())
        gated.phi.copy_((torch.rand(gated.phi.shape, generator=g) > blocks_p).float())
    units, blocks, _ = finalise(gated)
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


@pytest.mark.parametrize("round_to", [1, None])
def test_rebuilt_equals_gated_after_training(round_to):
    spec = get_method("cat")
    torch.manual_seed(1)
    model = resnet20()
    ctx = make_ctx(model, 1)
    # rounded at the very end: nothing trains after
    cfg = spec.make_config({**FAST, "lam": 1.0, "settle": 0.0, "round_to": round_to})
    x = probe()
    seen = {}

    def on_final(gated, units, blocks):
        # every final gate is 0 or 1: the rounding of θ (θ >= 0.5 kept), up to the safeguards and the grid
        z, zb = gated._z, gated._zb
        theta = gated.theta.detach()
        assert set(z.unique().tolist()) <= {0.0, 1.0} and set(zb.unique().tolist()) <= {0.0, 1.0}
        assert bool(((z == 1) | (theta < 0.5)).all())  # λ alone: the grid rounds up, never drops a kept unit
        for gg, unit in zip(gated.groups, gated.units_on()):  # on the grid: a multiple of the unit, the best θ kept
            zg, tg = z[gg.offset:gg.offset + gg.size], theta[gg.offset:gg.offset + gg.size]
            if gg.block >= 0 and float(zb[gg.block]) == 0:
                continue
            kept = int(zg.sum())
            assert kept % unit == 0 or kept == gg.size, (gg.group.name, kept, unit)
            if 0 < kept < gg.size:
                assert float(tg[zg == 1].min()) >= float(tg[zg == 0].max())
        assert bool(((zb == 1) | (gated.phi.detach() < 0.5) | (zb == 0)).all())
        seen["removed"] = bool(units or blocks)
        t = torch.cat([gated.theta.detach(), gated.phi.detach()])
        seen["undecided"] = int(((t > cfg.threshold) & (t < 1 - cfg.threshold)).sum())
        with torch.no_grad():
            seen["out"] = gated.model.eval()(x)

    pruned, run_info = train_cat(model, example(), cfg, ctx, on_final=on_final)
    assert seen["removed"]  # the comparison is not trivial
    assert run_info["undecided"] == seen["undecided"]  # what the rounding had to decide, counted right
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pruned.modules())
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), seen["out"], rtol=1e-5, atol=1e-5)


def test_removal_during_training_carries_the_gates():
    torch.manual_seed(0)
    model = resnet20().eval()
    gated = fully_gated(model)
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
    gated = fully_gated(model)
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


@pytest.mark.parametrize("round_to", [1, None])
def test_last_channel_kept_outside_blocks_and_block_removed_inside(round_to):
    """Squeezed to the minimum: one channel per group, or, on the grid, one unit of it (the 32-channel conv2
    keeps 8: ``round_to`` unset rounds groups of 32 channels or more)."""
    spec = get_method("cat")
    torch.manual_seed(0)
    plain = NETS["plain"]()
    assert (plain.conv1.out_channels, plain.conv2.out_channels) == (16, 32)
    ctx = make_ctx(plain, shape=(3, 8, 8))
    cfg = spec.make_config({"lam": 100.0, "epochs": 5, "gate_lr": 1.0, "round_to": round_to})
    res = spec.prune(plain, tiny_example(), cfg, ctx)
    assert res.model.conv1.out_channels >= 1 and res.model.conv2.out_channels >= 1
    if round_to == 1:
        assert res.model.conv1.out_channels + res.model.conv2.out_channels <= 4
    else:
        assert res.model.conv1.out_channels <= 3 and res.model.conv2.out_channels == 8
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
    {"flatten": -0.1}, {"flatten": 101.0},
    {"macs_fraction": 0.0}, {"macs_fraction": 1.0}, {"macs_fraction": -0.2}, {"macs_fraction": "half"},
    {"macs_fraction": 0.5, "lam": 0.0},
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


@pytest.mark.parametrize("start", STARTS)
def test_budget_is_every_epoch_trained(start):
    """``epochs`` is the whole budget, gated phase and settle phase together, from either start."""
    res, _, ctx = run(lam=1.0, start=start)
    info = res.info
    assert info["epochs"] == FAST["epochs"] and len(info["train_loss"]) == FAST["epochs"]
    assert info["steps"] == FAST["epochs"] * len(ctx.train_loader)  # every sample pass of every epoch
    assert 0 < info["rounded_at_step"] < info["steps"]  # the settle phase ran inside the same budget


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
        assert {"step", "expected_macs", "expected_params", "live_channels", "live_blocks", "undecided",
                "flattening"} <= set(p)
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
                                 "train_loss", "undecided", "flattening", "undecided_at_rounding")} <= keys
    assert sorted(nets.steps(ctx, "cat/train_loss")) == list(range(1, FAST["epochs"] + 1))
    import json

    json.dumps(info)


# ----------------------------------------------------------------------------- the MACs-target mode
TOL = 0.03  # the benchmark's and the engine's rule: within 3 % of the target MACs


@pytest.mark.parametrize("frac", [0.5, 0.25])
@pytest.mark.parametrize("seed", [0, 1])
def test_macs_fraction_lands_within_tolerance_on_resnet20(frac, seed):
    res, (_, m0), ctx = run(seed=seed, macs_fraction=frac)
    achieved = count_macs(res.model, example()) / m0
    assert abs(achieved - frac) <= TOL * frac, achieved
    mt = res.info["macs_target"]
    assert mt["target"] == frac and mt["achieved"] == pytest.approx(achieved) and mt["target_reached"]
    assert mt["lam_start"] == 1.0 and mt["lam_end"] == res.info["trajectory"][-1]["lam"]
    # the correction's record is consistent: it ends inside its own (tighter) band, in the gates' cost model
    assert abs(mt["corrected"] - frac) <= CORRECT_TOL * frac + 1e-9
    assert mt["gates_redecided"] >= 0 and (mt["gates_redecided"] == 0) == (mt["direction"] is None)
    logged = [k for k, _, _ in ctx.logged]
    assert "cat/lam" in logged and "cat/gates_redecided" in logged


@pytest.mark.parametrize("frac", [0.5, 0.25])
def test_macs_fraction_lambda_moves_the_right_way(frac):
    """On a full network the expected MACs start above the target, so λ first rises from its start (1.0);
    it ends higher for the smaller target (more pressure needed); the trajectory records it."""
    res, _, _ = run(macs_fraction=frac)
    mt = res.info["macs_target"]
    path = mt["lam_path"]
    assert path[0]["step"] == 1 and path[0]["lam"] > 1.0 and path[0]["expected_macs"] > frac
    assert all(p["lam"] > 0 for p in path) and path[-1]["lam"] == mt["lam_end"]
    assert [p["step"] for p in path] == sorted(p["step"] for p in path)
    if frac == 0.25:
        assert mt["lam_end"] > run(macs_fraction=0.5)[0].info["macs_target"]["lam_end"]


@pytest.mark.parametrize("e,up", [(0.9, True), (0.3, False), (0.5, None)])
def test_macs_fraction_controller_step_sign(e, up, monkeypatch):
    """The controller's one step, isolated: with the expected MACs held at ``e`` (target 0.5) λ goes up
    (above the target), down (below) or stays (on it) at every step of the gated phase."""
    import sweep.methods.cat_gates as cg

    true_expected = cg.GatedNet.expected

    def fake(self, theta=None, phi=None):
        m, p = true_expected(self, theta, phi)
        if theta is None and phi is None and self.theta.numel():  # the controller's (and snapshots') reading
            return m * 0 + e * self.macs0, p
        return m, p

    monkeypatch.setattr(cg.GatedNet, "expected", fake)
    spec = get_method("cat")
    torch.manual_seed(0)
    model = resnet20()
    res = spec.prune(model, example(), spec.make_config({**FAST, "macs_fraction": 0.5, "lam": 2.0}), make_ctx(model))
    lams = [p["lam"] for p in res.info["macs_target"]["lam_path"]]
    assert lams, "the controller recorded its path"
    diffs = [b - a for a, b in zip([2.0] + lams, lams)]
    if up is None:
        assert all(d == pytest.approx(0.0) for d in diffs)
    elif up:
        assert all(d > 0 for d in diffs)
    else:
        assert all(d < 0 for d in diffs)


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("frac", [0.5, 0.25])
def test_macs_fraction_on_tiny_nets(net, frac):
    """On the tiny nets (few, coarse groups) the target is met within 3 % where one unit's MACs allow:
    else the correction stopped because no unit fits, and the result is the closest it could reach from
    the side it started (every remaining flip would cross the band)."""
    spec = get_method("cat")
    torch.manual_seed(0)
    model = NETS[net]()
    m0 = count_macs(model, tiny_example())
    res = spec.prune(model, tiny_example(), spec.make_config({"epochs": 3, "macs_fraction": frac}),
                     make_ctx(model, shape=(3, 8, 8)))
    achieved = count_macs(res.model, tiny_example()) / m0
    mt = res.info["macs_target"]
    with torch.no_grad():
        assert res.model(probe((3, 8, 8))).shape == (6, NUM_CLASSES)
    assert achieved == pytest.approx(mt["achieved"])
    assert abs(achieved - frac) <= TOL * frac, (achieved, mt)


def test_correction_re_decides_by_theta_and_keeps_a_unit_per_group():
    torch.manual_seed(0)
    model = resnet20().eval()
    gated = fully_gated(model)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        gated.theta.copy_(torch.rand(gated.theta.shape, generator=g) * 0.4 + 0.6)  # every unit kept by rounding
    z, zb = torch.ones(gated.theta.numel()), torch.ones(gated.phi.numel())
    z2, _, rec = correct_to_target(gated, z, zb, 0.25)
    assert rec["direction"] == "off" and rec["within_tolerance"]
    assert abs(rec["corrected"] - 0.25) <= CORRECT_TOL * 0.25
    off = z2 == 0
    assert int(off.sum()) == rec["gates_redecided"] > 0
    for gg in gated.groups:  # no group emptied: no block removed, no path cut
        assert bool((z2[gg.offset:gg.offset + gg.size] == 1).any())
    # θ order: a switched-off unit never has a larger θ than a kept unit of equal or larger MACs share
    # (a cheaper, higher-θ unit may go late, to land inside the band, never a costlier one)
    theta = gated.theta.detach()
    assert float(theta[off].mean()) < float(theta[~off].mean())
    # and back: from the corrected network to a larger target, units come back, highest θ first
    z3, _, rec3 = correct_to_target(gated, z2, zb, 0.5)
    assert rec3["direction"] == "on" and rec3["within_tolerance"]
    back = (z3 == 1) & off
    assert int(back.sum()) == rec3["gates_redecided"]
    assert float(theta[back].mean()) > float(theta[off & ~back].mean())


# ----------------------------------------------------------------------------- kept counts on the grid
def gridded(round_to=8):
    torch.manual_seed(0)
    model = resnet20().eval()
    return GatedNet(model, example(), skipped_layers(model, example()), channel_gates=True, block_gates=True,
                    init=1.0, round_to=round_to)


def widest(gated):
    return max(range(len(gated.groups)), key=lambda i: gated.groups[i].size)


@pytest.mark.parametrize("kept,how,want", [(61, "nearest", 64), (51, "nearest", 48), (53, "nearest", 56),
                                           (59, "up", 64), (47, "up", 48), (2, "nearest", 8), (0, "up", 8)])
def test_decide_puts_kept_counts_on_the_grid_keeping_the_best_theta(kept, how, want):
    gated = gridded()
    gi = widest(gated)
    gg = gated.groups[gi]
    assert gg.size == 64 and gated.units_on()[gi] == 8
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        gated.theta.copy_(torch.rand(gated.theta.shape, generator=g))
    theta = gated.theta.detach()[gg.offset:gg.offset + gg.size]
    off = torch.zeros(gated.theta.numel(), dtype=torch.bool)
    ranked = torch.argsort(theta, descending=True)
    off[gg.offset + ranked[kept:]] = True  # the flags keep the `kept` best
    units, blocks = gated.decide(off, torch.zeros(gated.phi.numel(), dtype=torch.bool), grid=how)
    gone = set(units.get(gi, []))
    assert gg.size - len(gone) == want
    kept_units = [u for u in range(gg.size) if u not in gone]
    assert set(kept_units) == {int(u) for u in ranked[:want]}  # the highest θ stay, whatever the rounding
    if how == "up":
        assert gone <= {int(u) for u in ranked[kept:]}  # rounding up never removes what the flags keep
    # without a grid the flags are followed as they are (at least one unit kept)
    plain, _ = gated.decide(off, torch.zeros(gated.phi.numel(), dtype=torch.bool))
    assert gg.size - len(plain.get(gi, [])) == max(1, kept)


def test_unit_order_breaks_theta_ties_by_magnitude():
    gated = gridded()
    gi = widest(gated)
    gg = gated.groups[gi]
    score = gg.group.score("l2")
    order = gated.unit_order(gi)  # every θ at 1: magnitude alone
    assert torch.equal(order, torch.argsort(score, descending=True, stable=True))
    with torch.no_grad():
        gated.theta[gg.offset + int(order[-1])] = 1.0
        gated.theta[gg.offset:gg.offset + gg.size] -= 0.1
        gated.theta[gg.offset + int(order[-1])] = 1.0  # the weakest unit now has the highest θ
    assert int(gated.unit_order(gi)[0]) == int(order[-1])


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_correction_moves_whole_grid_units(target):
    gated = gridded()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        gated.theta.copy_(torch.rand(gated.theta.shape, generator=g) * 0.4 + 0.6)
    per_unit = gated.units_on()
    assert set(per_unit) == {8}
    z, zb = torch.ones(gated.theta.numel()), torch.ones(gated.phi.numel())
    z2, _, rec = correct_to_target(gated, z, zb, target, units_on=per_unit)
    assert rec["direction"] == "off" and rec["gates_redecided"] % 8 == 0 and rec["gates_redecided"] > 0
    for gg in gated.groups:
        kept = int(z2[gg.offset:gg.offset + gg.size].sum())
        assert kept % 8 == 0 and kept >= 8, (gg.group.name, kept)


@pytest.mark.parametrize("values", [{"lam": 1.0}, {"macs_fraction": 0.5}])
def test_cat_keeps_wide_layers_on_the_engine_grid(values):
    """Unset ``round_to`` rounds as the engine does: groups of 32 channels or more keep multiples of their
    unit (8, or 16 for 64 channels on an AVX-512 CPU); with a MACs target the result is still within 3 %."""
    from sweep.engine.channels import AUTO, rounding_unit

    res, (_, m0), _ = run(**values)
    full = channel_counts(resnet20())
    for name, n in res.info["final_structure"]["channels"].items():
        if name.endswith(("conv1", "conv2")) and name.startswith("layer") and full[name] >= 32:
            unit = rounding_unit(full[name], AUTO)
            assert n % unit == 0 or n == full[name], (name, n, unit)
    if "macs_fraction" in values:
        mt = res.info["macs_target"]
        assert mt["target_reached"] and mt["round_unit"] in (8, 16)


def test_block_brought_back_by_the_correction_keeps_its_groups_on_the_grid():
    """Below the band with no unit left: a block removed by the rounding comes back with its units as rounded,
    each of its groups' counts rounded up onto the grid (the best θ added), the block's gate first in the list."""
    from sweep.methods.cat import _block_back

    gated = gridded()
    inner = [(gi, gg) for gi, gg in enumerate(gated.groups) if gg.block >= 0 and gg.size >= 32]
    gi, gg = inner[0]
    g = torch.Generator().manual_seed(3)
    theta = torch.rand(gated.theta.shape, generator=g)
    sl = slice(gg.offset, gg.offset + gg.size)
    theta[sl] = torch.linspace(0.0, 0.99, gg.size)  # 13 of 32 (or 26 of 64) at >= 0.5: off the grid of 8
    z, zb = torch.ones(gated.theta.numel()), torch.ones(gated.phi.numel())
    zb[gg.block] = 0.0
    z[sl] = 0.0
    live_block = torch.ones(gated.theta.numel(), dtype=torch.bool)
    live_block[sl] = False
    changed = _block_back(gated, z, zb, gated.phi.detach(), theta, float("inf"), live_block, gated.units_on())
    assert changed[0] == gated.theta.numel() and float(zb[gg.block]) == 1.0 and bool(live_block[sl].all())
    kept = z[sl] == 1
    assert int(kept.sum()) % 8 == 0 and bool(kept[theta[sl] >= 0.5].all())  # the rounding's units, and on the grid
    assert float(theta[sl][kept].min()) >= float(theta[sl][~kept].max())
    assert set(changed[1:]) >= {gg.offset + int(u) for u in (kept & (theta[sl] < 0.5)).nonzero().flatten()}
