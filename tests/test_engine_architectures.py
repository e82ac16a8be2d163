"""The engine on real architectures: residual adds, concatenations (Inception, DenseNet, ELAN), depthwise
convs. Each is pruned at a moderate ratio and must still run with the same output shape, smaller."""

from __future__ import annotations

import pytest
import torch

from sweep.engine.channels import prune_to_target
from sweep.engine.check import check_prunable
from sweep.engine.skip import skipped_layers
from sweep.measure import count_macs, count_params
from sweep.models import build_model

# (model, input channels, input size): inputs as small as each net allows
FAST = [("yolo7_cls", 1, 28), ("cifar_resnet20", 3, 32), ("mlp", 1, 28)]
SLOW = [("cifar_resnet56", 3, 32), ("vgg16_bn", 3, 32), ("torchvision:resnet18", 3, 32),
        ("torchvision:mobilenet_v2", 3, 32), ("torchvision:densenet121", 3, 32),
        ("torchvision:googlenet", 3, 64)]
CASES = FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW]


def _build(name, c, size):
    torch.manual_seed(0)
    return build_model(name, num_classes=7, in_channels=c, input_size=size).eval()


def _run(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name, c, size", CASES)
def test_prunes_and_runs(name, c, size):
    model = _build(name, c, size)
    x = torch.zeros(1, c, size, size)
    macs0, params0 = count_macs(model, x), count_params(model)
    _, info = prune_to_target(model, x, ratio=0.4)
    out = _run(model, torch.randn(2, c, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    macs1, params1 = count_macs(model, x), count_params(model)
    assert macs1 < 0.9 * macs0 and params1 < 0.9 * params0
    assert info["achieved"]["ratio"] == pytest.approx(0.4, abs=0.05)  # rounding moves it a little
    assert info["achieved"]["macs_fraction"] == pytest.approx(macs1 / macs0)


@pytest.mark.parametrize("name, c, size", CASES)
def test_ratio_zero_is_the_identity(name, c, size):
    model = _build(name, c, size)
    x = torch.randn(2, c, size, size)
    ref = _run(model, x)
    params = count_params(model)
    out, info = prune_to_target(model, x[:1], ratio=0.0)
    assert info["groups_pruned"] == 0 and count_params(out) == params
    assert torch.equal(_run(out, x), ref)


def test_squeezenet_conv_classifier_is_found_on_the_graph_and_kept():
    """SqueezeNet classifies with a conv (conv -> ReLU -> pool -> flatten, no Linear): found on the
    graph, never pruned, with no keep_layers from the user."""
    torch.manual_seed(0)
    model = build_model("torchvision:squeezenet1_1", num_classes=10, input_size=64).eval()
    x = torch.zeros(1, 3, 64, 64)
    names = {m: n for n, m in model.named_modules()}
    assert [names[m] for m in skipped_layers(model, x)] == ["classifier.1"]
    assert check_prunable(model, x)["skipped"] == []
    _, info = prune_to_target(model, x, ratio=0.3)
    assert _run(model, torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert info["achieved"]["ratio"] == pytest.approx(0.3, abs=0.05) and model.classifier[1].out_channels == 10


@pytest.mark.slow
def test_shufflenet_prunes_the_groups_it_can_map_and_reports_the_others():
    """Channel shuffle: Torch-Pruning's index mapping fails (ZeroDivisionError, IndexError) for the
    groups through the shuffle; those are left out and listed, the others are pruned."""
    torch.manual_seed(0)
    model = build_model("torchvision:shufflenet_v2_x0_5", num_classes=10, input_size=64).eval()
    x = torch.zeros(1, 3, 64, 64)
    summary = check_prunable(model, x)
    assert summary["groups"] > 0 and summary["skipped"]
    assert all("index mapping fails" in why for _, why in summary["skipped"])
    _, info = prune_to_target(model, x, ratio=0.3)
    assert info["groups_pruned"] > 0 and _run(model, torch.randn(2, 3, 64, 64)).shape == (2, 10)
