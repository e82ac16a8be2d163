"""Depth surgery (sweep/engine/depth.py): finding residual blocks and removing them physically.

The parameter counts are the published SR-init reductions (Tang et al. 2023, ICASSP, arXiv 2303.07677),
reproduced by counting.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweep.engine.channels import prune_channels
from sweep.engine.depth import block_names, removable_blocks, remove_blocks, stage_depths
from sweep.engine.skip import skipped_layers
from sweep.errors import ConfigError
from sweep.measure import count_macs, count_params
from sweep.models import build_model

X32 = torch.zeros(1, 3, 32, 32)


def conv_linear_macs(model, x) -> int:
    """MACs of the convs and linears only (the convention of the paper's 125.49 M for ResNet-56)."""
    total = [0]

    def hook(m, args, out):
        if isinstance(m, nn.Conv2d):
            total[0] += out.numel() // out.shape[0] * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return total[0]


def randomise_bn(model, seed=0):
    """Give every BN layer non-default statistics so that 'weights kept' checks mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# ----------------------------------------------------------------------------- published figures
def test_resnet56_cifar10_published_reduction():
    m = build_model("cifar_resnet56", num_classes=10, in_channels=3, input_size=32)
    refs = removable_blocks(m, X32)
    assert len(refs) == 27 and [r.index for r in refs] == list(range(27))
    assert [r.index for r in refs if not r.removable] == [0, 9, 18]  # first block of each stage
    assert all("first block of its stage" in refs[i].reason for i in (0, 9, 18))
    assert refs[0].in_shape == refs[0].out_shape  # layer1.0 has an identity shortcut, still kept
    assert refs[9].in_shape != refs[9].out_shape
    assert count_params(m) == 853_018 and stage_depths(m) == [9, 9, 9]
    macs0 = conv_linear_macs(m, X32)
    remove_blocks(m, [1, 8, 17, 19, 21, 22, 23, 24, 25, 26], X32)
    assert count_params(m) == 307_226
    assert stage_depths(m) == [7, 8, 2]
    assert round(macs0 / 1e6, 2) == 125.49 and round(conv_linear_macs(m, X32) / 1e6, 2) == 78.30
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet56_cifar100_published_reduction():
    m = build_model("cifar_resnet56", num_classes=100, in_channels=3, input_size=32)
    assert count_params(m) == 858_868
    remove_blocks(m, [1, 3, 17, 23, 24, 25, 26])  # static scan: the known block type needs no input
    assert count_params(m) == 535_028
    assert stage_depths(m) == [7, 8, 5]


def test_torchvision_resnet50_published_reduction():
    import torchvision

    m = torchvision.models.resnet50(weights=None)
    refs = removable_blocks(m, X32)
    assert len(refs) == 16 and all(r.cls == "Bottleneck" for r in refs)
    assert [r.index for r in refs if not r.removable] == [0, 3, 7, 13]
    assert (refs[8].name, refs[14].name, refs[15].name) == ("layer3.1", "layer4.1", "layer4.2")
    assert count_params(m) == 25_557_032
    remove_blocks(m, [8, 14, 15], X32)
    assert count_params(m) == 15_514_664
    assert stage_depths(m) == [3, 4, 5, 1]
    assert m.eval()(X32).shape == (1, 1000)


# ----------------------------------------------------------------------------- surgery semantics
def test_removal_keeps_surviving_weights_and_equals_identity_replacement():
    torch.manual_seed(0)
    m = randomise_bn(build_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=32)).eval()
    orig = copy.deepcopy(m)
    n_modules = len(list(m.modules()))
    macs0, params0 = count_macs(m, X32), count_params(m)
    removed_mod = m.layer1[1]
    remove_blocks(m, [1, 5], X32)  # layer1.1 and layer2.2
    assert stage_depths(m) == [2, 2, 3]
    assert all(mod is not removed_mod for mod in m.modules())
    assert len(list(m.modules())) < n_modules
    assert count_macs(m, X32) < macs0 and count_params(m) < params0
    # survivors keep their trained tensors (stage numbering is compacted: layer1.2 -> layer1.1)
    pairs = {"layer1.0": "layer1.0", "layer1.1": "layer1.2", "layer2.0": "layer2.0", "layer2.1": "layer2.1",
             "layer3.2": "layer3.2", "conv1": "conv1", "fc": "fc"}
    new_mods, old_mods = dict(m.named_modules()), dict(orig.named_modules())
    for new, old in pairs.items():
        for (k, a), (_, b) in zip(new_mods[new].state_dict().items(), old_mods[old].state_dict().items()):
            assert torch.equal(a, b), (new, old, k)
    # removing a block = making it the identity (its input is post-ReLU, so relu(x + 0) = x)
    orig.layer1[1] = nn.Identity()
    orig.layer2[2] = nn.Identity()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), orig(x), atol=1e-5)


def test_non_removable_or_unknown_block_raises_config_error_naming_it():
    m = build_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=32)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ConfigError, match=r"block 3 \(layer2\.0, BasicBlock\).*first block of its stage"):
        remove_blocks(m, [1, 3], X32)
    assert stage_depths(m) == [3, 3, 3] and list(m.state_dict()) == list(before)  # nothing changed
    with pytest.raises(ConfigError, match=r"block index must be in \[0, 8\], but got 9"):
        remove_blocks(m, [9])
    with pytest.raises(ConfigError, match="must name a residual block.*'layer9.1'"):
        remove_blocks(m, ["layer9.1"])
    remove_blocks(m, ["layer3.2"])  # names work too
    assert stage_depths(m) == [3, 3, 2]


def test_keep_by_index_and_name():
    m = build_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=32)
    refs = removable_blocks(m, X32, keep=[1, "layer3.2"])
    assert [r.index for r in refs if r.removable] == [2, 4, 5, 7]
    assert refs[1].reason == "kept by the user" and refs[8].reason == "kept by the user"
    with pytest.raises(ConfigError, match="kept by the user"):
        remove_blocks(m, [1], X32, keep=[1])
    with pytest.raises(ConfigError, match="keep must hold"):
        removable_blocks(m, X32, keep=[1.5])


def test_scan_leaves_bn_statistics_and_training_mode_alone():
    m = randomise_bn(build_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=32)).train()
    state = copy.deepcopy(m.state_dict())
    removable_blocks(m, torch.randn(2, 3, 32, 32))
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_helpers_on_resnet20():
    m = build_model("cifar_resnet20", num_classes=10, in_channels=1, input_size=16)
    assert block_names(m) == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert stage_depths(m) == [3, 3, 3]


def test_torchvision_basicblock_resnet18():
    import torchvision

    m = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    refs = removable_blocks(m, X32)
    assert len(refs) == 8 and [r.index for r in refs if r.removable] == [1, 3, 5, 7]
    assert "shortcut is not the identity" not in refs[1].reason
    p0 = count_params(m)
    remove_blocks(m, [3, 7], X32)
    assert stage_depths(m) == [2, 1, 2, 1]
    def block_params(c):  # two 3x3 convs without bias + two BatchNorms (gamma, beta)
        return 2 * c * c * 9 + 2 * 2 * c

    assert count_params(m) == p0 - block_params(128) - block_params(512)
    assert m(X32).shape == (1, 5)


# ----------------------------------------------------------------------------- user models
class ResUnit(nn.Module):
    """A user block recognised by its attribute, not its name."""

    residual_block = True

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class DownBlock(nn.Module):
    """Name contains 'Block', but halves the resolution: a block, not removable."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))


class ProjBlock(nn.Module):
    """Same shapes, but a 1x1 projection shortcut: not the identity, so not removable."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.shortcut = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.shortcut(x) + self.conv(x)


class NotABlock(nn.Module):
    residual_block = False  # opt-out even though its name says "Block"

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.conv(x)


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(ResUnit(8), ResUnit(8), ProjBlock(8), ResUnit(8), DownBlock(8, 16),
                                  ResUnit(16))
        self.tail = nn.Sequential(NotABlock(16), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.tail(self.body(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_user_model_rule():
    torch.manual_seed(0)
    m = UserNet().eval()
    x = torch.randn(1, 3, 16, 16)
    refs = removable_blocks(m, x)
    assert [(r.name, r.cls) for r in refs] == [("body.0", "ResUnit"), ("body.1", "ResUnit"), ("body.2", "ProjBlock"),
                                              ("body.3", "ResUnit"), ("body.4", "DownBlock"), ("body.5", "ResUnit")]
    assert [r.index for r in refs if r.removable] == [1, 3, 5]
    assert "first block of its stage" in refs[0].reason
    assert refs[2].reason == "shortcut is not the identity"
    assert "differs from output shape" in refs[4].reason
    # static scan cannot judge a generic block: it asks for example inputs
    with pytest.raises(ConfigError, match="identity shortcut unknown without example_inputs"):
        remove_blocks(m, [1])
    want = m.body[5]
    macs0 = count_macs(m, x)
    remove_blocks(m, [1, 3], x)
    assert [type(b).__name__ for b in m.body] == ["ResUnit", "ProjBlock", "DownBlock", "ResUnit"]
    assert m.body[3] is want
    assert count_macs(m, x) < macs0 and m(x).shape == (1, 3)


def test_named_sequential_keeps_child_names():
    from collections import OrderedDict

    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                      nn.Sequential(OrderedDict(a=ResUnit(4), b=ResUnit(4), c=ResUnit(4))))
    remove_blocks(m, ["1.b"], torch.zeros(1, 3, 8, 8))
    assert list(m[1]._modules) == ["a", "c"]


# ----------------------------------------------------------------------------- composition with channel pruning
def _resnet20():
    torch.manual_seed(0)
    return randomise_bn(build_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=32)).eval()


@pytest.mark.parametrize("order", ["channels_then_depth", "depth_then_channels"])
def test_composes_with_channel_pruning(order):
    p_depth_only = count_params(remove_blocks(_resnet20(), [1, 4, 7], X32))
    p_width_only = count_params(prune_channels(_resnet20(), X32, ratio=0.5))  # None: its skipped_layers
    m = _resnet20()
    if order == "channels_then_depth":
        prune_channels(m, X32, ratio=0.5, ignored_layers=skipped_layers(m, X32))
        assert [r.index for r in removable_blocks(m, X32) if r.removable] == [1, 2, 4, 5, 7, 8]
        remove_blocks(m, [1, 4, 7], X32)
    else:
        remove_blocks(m, [1, 4, 7], X32)
        prune_channels(m, X32, ratio=0.5, ignored_layers=skipped_layers(m, X32))
    assert stage_depths(m) == [2, 2, 2]
    assert m.layer1[0].conv1.out_channels < 16 and m.layer3[1].conv1.out_channels < 64
    assert m.fc.out_features == 10 and m.layer3[1].conv2.out_channels == 64
    p = count_params(m)
    assert p < p_depth_only and p < p_width_only
    with torch.no_grad():
        out = m(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_mobilenet_v2_inverted_residuals_with_the_identity_add_are_removable():
    """torchvision's InvertedResidual is a block; it is removable exactly where it adds its input
    (``use_res_connect``), and removing all of those leaves a net that runs, shallower."""
    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v2", num_classes=10, in_channels=3, input_size=32).eval()
    refs = removable_blocks(model, X32)
    mods = dict(model.named_modules())
    assert len(refs) == 17 and all(type(mods[r.name]).__name__ == "InvertedResidual" for r in refs)
    assert [r.index for r in refs if r.removable] == [i for i, r in enumerate(refs)
                                                       if mods[r.name].use_res_connect]
    gone = [r.index for r in refs if r.removable]
    macs = count_macs(model, X32)
    remove_blocks(model, gone, X32)
    assert stage_depths(model) == [17 - len(gone)] and count_macs(model, X32) < macs
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
