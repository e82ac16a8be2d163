"""Adaptive BN: corrupted running statistics come back to the data's, and nothing else changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweep.engine.adaptive_bn import DEFAULT_BATCHES, adaptive_bn, batchnorm_layers, first_input


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=0.3), nn.ReLU(),
        nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3), nn.BatchNorm1d(3),
    )


def data(n=512, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g) * 2.0 + 0.7


def batches(x: torch.Tensor, size=64, labelled=True):
    y = torch.zeros(len(x), dtype=torch.long)
    return [(x[i:i + size], y[i:i + size]) if labelled else x[i:i + size] for i in range(0, len(x), size)]


def corrupt(model) -> None:
    for m in batchnorm_layers(model):
        m.running_mean.fill_(5.0)
        m.running_var.fill_(100.0)


def bn_inputs(model, x) -> dict:
    """Each BN layer's input over ``x`` with the network in eval mode (what the statistics should describe)."""
    seen, hooks = {}, []
    for m in batchnorm_layers(model):
        hooks.append(m.register_forward_hook(lambda mod, inp, out: seen.__setitem__(mod, inp[0].detach())))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def per_channel(t: torch.Tensor):
    dims = [0] + list(range(2, t.dim()))
    return t.mean(dim=dims), t.var(dim=dims)


def test_restores_statistics_close_to_the_data():
    model, x = tiny_net(), data()
    corrupt(model)
    res = adaptive_bn(model, batches(x))
    assert res.layers == 3 and res.batches == 8 and res.inputs == 512
    first = batchnorm_layers(model)[0]
    # the first BN's input does not depend on other BN layers: its statistics are the data's own
    mean, var = per_channel(nn.Sequential(model[0]).eval()(x).detach())
    assert torch.allclose(first.running_mean, mean, atol=1e-4)
    assert torch.allclose(first.running_var, var, rtol=0.02)
    # every layer's statistics describe what it sees in eval mode, within a few per cent
    for m, inp in bn_inputs(model, x).items():
        mean, var = per_channel(inp)
        assert torch.allclose(m.running_mean, mean, atol=0.05 * float(var.sqrt().max())), m
        assert torch.allclose(m.running_var, var, rtol=0.1), m


def test_outputs_come_back_after_corruption():
    model, x = tiny_net(), data()
    adaptive_bn(model, batches(x))
    reference = model.eval()(x).detach()
    corrupt(model)
    assert not torch.allclose(model.eval()(x), reference, atol=1e-2)
    adaptive_bn(model, batches(x))
    assert torch.allclose(model.eval()(x).detach(), reference, atol=1e-5)


def test_weights_modes_and_momentum_unchanged():
    model = tiny_net()
    model.train()
    model[6].eval()  # a mixed set of modes must come back as it was
    before = {k: v.clone() for k, v in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    corrupt(model)
    adaptive_bn(model, batches(data()))
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [m.momentum for m in batchnorm_layers(model)] == [0.1, 0.3, 0.1]
    assert all(p.grad is None for p in model.parameters())


class NoLabel(tuple):
    """A batch ``(x, y)`` whose label may not be read: only ``batch[0]`` is allowed."""

    def __getitem__(self, i):
        if i != 0:
            raise AssertionError("the label was read")
        return super().__getitem__(0)

    def __iter__(self):
        raise AssertionError("the batch was unpacked (label read)")


def test_reads_no_label_and_takes_tensors_and_one_tuples():
    x = data(256)
    a, b, c = tiny_net(), tiny_net(), tiny_net()
    adaptive_bn(a, [NoLabel((xb, object())) for xb in batches(x, labelled=False)])
    adaptive_bn(b, batches(x, labelled=False))  # plain tensors
    adaptive_bn(c, [(xb,) for xb in batches(x, labelled=False)])  # unlabeled views yield (x,)
    for ma, mb, mc in zip(batchnorm_layers(a), batchnorm_layers(b), batchnorm_layers(c)):
        assert torch.equal(ma.running_mean, mb.running_mean) and torch.equal(ma.running_var, mc.running_var)
    with pytest.raises(TypeError, match="a batch must be a tensor or a tuple"):
        first_input({"x": x})


def test_limits_on_batches_and_inputs():
    x = data(4096)
    assert adaptive_bn(tiny_net(), batches(x, 32)).batches == DEFAULT_BATCHES == 50
    assert adaptive_bn(tiny_net(), batches(x, 32), max_batches=3).inputs == 96
    r = adaptive_bn(tiny_net(), batches(x, 64), max_inputs=300)
    assert (r.batches, r.inputs) == (5, 320)
    with pytest.raises(ValueError, match="max_batches must be >= 1"):
        adaptive_bn(tiny_net(), [], max_batches=0)


def test_empty_loader_or_a_failing_forward_keeps_the_old_statistics():
    model = tiny_net()
    corrupt(model)
    r = adaptive_bn(model, [data(1)])  # one input: skipped, nothing forwarded
    assert r.batches == 0
    assert all(float(m.running_var[0]) == 100.0 for m in batchnorm_layers(model))

    model.train()
    bad = [data(8), torch.randn(8, 3, 8, 8)]  # the second batch has the wrong channel count
    with pytest.raises(RuntimeError):
        adaptive_bn(model, bad)
    assert all(float(m.running_mean[0]) == 5.0 for m in batchnorm_layers(model))
    assert all(m.training for m in model.modules())
    assert [m.momentum for m in batchnorm_layers(model)] == [0.1, 0.3, 0.1]


def test_without_batchnorm_nothing_runs():
    class Untouchable:
        def __iter__(self):
            raise AssertionError("loader read")

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    assert adaptive_bn(net, Untouchable()).layers == 0
