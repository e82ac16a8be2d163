"""The YOLOv7-style classification net: its blocks, its size, and that every concat coupling prunes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweep.engine.channels import prune_to_target
from sweep.engine.check import check_prunable
from sweep.engine.groups import channel_groups
from sweep.measure import count_macs, count_params
from sweep.models import build_model
from sweep.models.yolo_style import ELAN, MP, SPPCSPC, Conv

X28 = torch.zeros(1, 1, 28, 28)


def fashion_mnist_net():
    torch.manual_seed(0)
    return build_model("yolo7_cls", num_classes=10, in_channels=1, input_size=28).eval()


def test_blocks_follow_the_yolov7_config():
    model = fashion_mnist_net()
    assert sum(isinstance(m, ELAN) for m in model.modules()) == 2
    assert sum(isinstance(m, MP) for m in model.modules()) == 2
    spp = model.spp
    assert isinstance(spp, SPPCSPC)
    assert [(p.kernel_size, p.stride, p.padding) for p in spp.m] == [(5, 1, 2), (9, 1, 4), (13, 1, 6)]
    conv = model.stem[0]
    assert isinstance(conv, Conv) and isinstance(conv[0], nn.Conv2d) and conv[0].bias is None
    assert isinstance(conv[1], nn.BatchNorm2d) and isinstance(conv[2], nn.SiLU)
    elan = model.stage1[0]
    assert elan.fuse[0].in_channels == 4 * elan.cv1[0].out_channels  # 4 taps concatenated
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10


def test_size_suits_fashion_mnist_on_a_cpu():
    model = fashion_mnist_net()
    assert 300_000 < count_params(model) < 1_000_000
    assert 10e6 < count_macs(model, X28) < 100e6


@pytest.mark.parametrize("c, size", [(1, 28), (3, 32), (1, 8), (3, 7)])
def test_forward_shapes(c, size):
    model = build_model("yolo7_cls", num_classes=5, in_channels=c, input_size=size).eval()
    with torch.no_grad():  # odd maps (7 -> 4 -> 2) keep both MP branches equal thanks to ceil_mode
        out = model(torch.randn(2, c, size, size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_concat_couplings_are_groups():
    graph = channel_groups(fashion_mnist_net(), X28, graph=True)
    cv4 = graph.group("spp.cv4.0")
    # x1 and its three max-pooled copies: four slices of cv5's input go with each channel of cv4
    cv5_in = [m for m in cv4.members if m.name == "spp.cv5.0" and m.kind == "in"]
    assert len(cv5_in) == 1 and len(cv5_in[0].idxs) == 4 * cv4.size
    assert sorted(set(cv5_in[0].root_idxs)) == list(range(cv4.size))
    # ELAN: the 1x1 branch and the 3x3 taps each own one quarter of the fusion conv's input
    h = graph.group("stage1.0.cv1.0").size
    for root, quarter in [("stage1.0.m.3.0", 0), ("stage1.0.m.1.0", 1), ("stage1.0.cv2.0", 2), ("stage1.0.cv1.0", 3)]:
        fuse_in = next(m for m in graph.group(root).members if m.name == "stage1.0.fuse.0")
        assert fuse_in.idxs == tuple(range(quarter * h, (quarter + 1) * h)), root
    # MP: the concat of two branches feeds the next ELAN's two 1x1 convs
    mp_b = graph.group("stage1.1.cv3.0")
    assert {("stage2.0.cv1.0", "in"), ("stage2.0.cv2.0", "in")} <= {(m.name, m.kind) for m in mp_b.members}


def test_prunes_at_half_and_saves(tmp_path):
    model = fashion_mnist_net()
    params0, macs0 = count_params(model), count_macs(model, X28)
    check_prunable(model, X28)  # raises if a coupling were missed
    _, info = prune_to_target(model, X28, ratio=0.5)
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert count_params(model) < 0.6 * params0 and count_macs(model, X28) < 0.6 * macs0
    assert model.spp.cv5[0].in_channels == 4 * model.spp.cv4[0].out_channels < 4 * 64
    path = tmp_path / "pruned.pt"
    torch.save(model, path)  # trials save whole pruned modules
    loaded = torch.load(path, weights_only=False).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
