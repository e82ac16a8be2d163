"""Tests for sweep.models: registered architectures, torchvision and user builders, checkpoints, errors."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch
from torch import nn

from sweep.engine.skip import skipped_layers
from sweep.errors import ConfigError, RegistryError
from sweep.models import MODELS, build_model, model_names
from sweep.models.cifar_resnet import BasicBlock, ShortcutA


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward(model: nn.Module, channels: int, size: int, batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, channels, size, size))


# --- registered architectures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, classes, expected",
    [
        ("cifar_resnet56", 10, 853_018),
        ("cifar_resnet56", 100, 858_868),
        # Option A has no shortcut parameters; 272,474 would be ResNet-20 with option-B projection shortcuts.
        ("cifar_resnet20", 10, 269_722),
        ("cifar_resnet110", 10, 1_727_962),
    ],
)
def test_cifar_resnet_param_counts(name, classes, expected):
    assert n_params(build_model(name, num_classes=classes)) == expected


@pytest.mark.parametrize("name, n", [("cifar_resnet20", 3), ("cifar_resnet56", 9), ("cifar_resnet110", 18)])
def test_cifar_resnet_layout(name, n):
    # Depth-surgery code addresses these attribute names directly.
    model = build_model(name, num_classes=10)
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.bias is None
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.fc, nn.Linear)
    for stage, width in zip((model.layer1, model.layer2, model.layer3), (16, 32, 64)):
        assert isinstance(stage, nn.Sequential) and len(stage) == n
        for block in stage:
            assert isinstance(block, BasicBlock)
            assert block.conv2.out_channels == width and block.conv1.bias is None
            for attr in ("conv1", "bn1", "conv2", "bn2", "shortcut"):
                assert isinstance(getattr(block, attr), nn.Module)
    shortcuts = [b.shortcut for b in model.modules() if isinstance(b, BasicBlock) and isinstance(b.shortcut, ShortcutA)]
    assert len(shortcuts) == 2 and all(n_params(s) == 0 for s in shortcuts)


def test_shortcut_a_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_vgg16_bn_is_cfg_d():
    model = build_model("vgg16_bn", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert model.classifier.in_features == 512
    # An 8x8 input reaches 1x1 after 3 pools; pooling further would fail.
    small = build_model("vgg16_bn", num_classes=10, input_size=8)
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.modules()) == 3


def test_small_cnn_is_small_and_pools_only_when_possible():
    model = build_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    assert 10_000 < n_params(model) < 150_000
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    tiny = build_model("small_cnn", num_classes=10, in_channels=1, input_size=2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in tiny.modules()) == 0
    assert forward(tiny, 1, 2).shape == (2, 10)


SHAPE_CASES = [
    (name, channels, size)
    for name in ["small_cnn", "cifar_resnet20", "cifar_resnet56", "vgg16_bn", "yolo7_cls", "mlp"]
    for channels in (1, 3)
    for size in (8, 28, 32)
]


@pytest.mark.parametrize("name, channels, size", SHAPE_CASES)
def test_forward_shapes(name, channels, size):
    model = build_model(name, num_classes=7, in_channels=channels, input_size=size)
    out = forward(model, channels, size)
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes_resnet110(channels):
    model = build_model("cifar_resnet110", num_classes=100, in_channels=channels)
    assert forward(model, channels, 32).shape == (2, 100)


def test_every_registered_name_is_covered():
    # A newly registered model must be added to the shape tests above.
    covered = {c[0] for c in SHAPE_CASES} | {"cifar_resnet110"}
    assert set(MODELS.names()) == covered


def test_model_names_lists_registry_and_patterns():
    names = model_names()
    assert names[: len(MODELS.names())] == MODELS.names()
    assert "cifar_resnet56" in names and "torchvision:<name>" in names and "package.module:function" in names


@pytest.mark.parametrize("name, c, size, head", [
    ("small_cnn", 1, 28, "fc"), ("mlp", 1, 28, "fc"), ("cifar_resnet20", 3, 32, "fc"), ("cifar_resnet56", 3, 32, "fc"),
    ("vgg16_bn", 3, 32, "classifier"), ("yolo7_cls", 1, 28, "fc"), ("torchvision:resnet18", 3, 32, "fc"),
    ("torchvision:mobilenet_v2", 3, 32, "classifier.1"), ("torchvision:densenet121", 3, 32, "classifier"),
])
def test_skipped_layers_start_with_the_last_linear_of_ordinary_nets(name, c, size, head):
    """The layer found on the graph is the last nn.Linear, as the type-based rule had it; then the
    layers the model declares (the CIFAR ResNets' residual stream)."""
    model = build_model(name, num_classes=10, in_channels=c, input_size=size)
    names = {m: n for n, m in model.named_modules()}
    skipped = [names[m] for m in skipped_layers(model, torch.zeros(1, c, size, size))]
    assert skipped[0] == head == names[[m for m in model.modules() if isinstance(m, nn.Linear)][-1]]
    declared = [names[m] for m in getattr(model, "pruning_ignored_layers", list)()]
    assert skipped == [head] + declared


def test_skipped_layers_of_plain_stacks():
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert skipped_layers(seq, torch.zeros(1, 4)) == [seq[2]]
    conv = nn.Conv2d(3, 3, 1)  # no Linear at all: the layer that produces the output
    assert skipped_layers(conv, torch.zeros(1, 3, 4, 4)) == [conv]


def test_deepcopy_and_pickle_cifar_resnet20(tmp_path):
    model = build_model("cifar_resnet20", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(copy.deepcopy(model)(x), ref)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded.layer2[0].shortcut, ShortcutA)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)


# --- torchvision ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchvision_resnet18_one_channel():
    model = build_model("torchvision:resnet18", num_classes=7, in_channels=1)
    assert model.conv1.in_channels == 1
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.out_channels) == ((7, 7), (2, 2), 64)
    assert model.fc.out_features == 7
    assert forward(model, 1, 32).shape == (2, 7)


@pytest.mark.slow
def test_torchvision_googlenet_has_no_aux_heads():
    model = build_model("torchvision:googlenet", num_classes=5)
    assert model.aux1 is None and model.aux2 is None
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_unknown_torchvision_name_lists_valid_names():
    with pytest.raises(RegistryError, match=r"resnet18") as exc:
        build_model("torchvision:resnet_nope", num_classes=10, where="q.yaml: model")
    assert "resnet_nope" in str(exc.value) and "(q.yaml: model.name)" in str(exc.value)


# --- user builders -------------------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_pkg").mkdir()
    (tmp_path / "my_models_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_models_pkg" / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(num_classes, in_channels):  # no input_size: must not be passed
                return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, num_classes))

            def build_any(**kwargs):
                m = nn.Linear(1, kwargs["num_classes"])
                m.seen = kwargs
                return m

            def not_a_model(num_classes):
                return "oops"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models_pkg.nets"


def test_user_builder_gets_accepted_kwargs(user_module):
    model = build_model(f"{user_module}:build", num_classes=4, in_channels=1, input_size=8)
    assert forward(model, 1, 8).shape == (2, 4)
    seen = build_model(f"{user_module}:build_any", num_classes=3, in_channels=2, input_size=9).seen
    assert seen == {"num_classes": 3, "in_channels": 2, "input_size": 9}


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_such_pkg_xyz.mod:build", "importable"),
        ("{mod}:missing", "must be a function"),
        ("{mod}:not_a_model", "must return a torch.nn.Module"),
    ],
)
def test_user_builder_errors(user_module, target, message):
    name = target.format(mod=user_module)
    with pytest.raises(ConfigError, match=message) as exc:
        build_model(name, num_classes=3, where="q.yaml: model")
    assert name in str(exc.value) and "(q.yaml: model.name)" in str(exc.value)


# --- checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_checkpoint_round_trip(tmp_path, wrap):
    src = build_model("small_cnn", num_classes=5, in_channels=1, input_size=8)
    state = src.state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    dst = build_model("small_cnn", num_classes=5, in_channels=1, input_size=8, checkpoint=str(path))
    for key, value in dst.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(2, 1, 8, 8)
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_checkpoint_mismatch_names_offending_keys(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(build_model("small_cnn", num_classes=10).state_dict(), path)
    with pytest.raises(ConfigError, match=r"fc\.weight") as exc:
        build_model("small_cnn", num_classes=5, checkpoint=str(path), where="q.yaml: model")
    assert "(10, 128) vs model (5, 128)" in str(exc.value) and "(q.yaml: model.checkpoint)" in str(exc.value)
    torch.save(build_model("cifar_resnet20", num_classes=10).state_dict(), path)
    with pytest.raises(ConfigError, match=r"missing keys .*unexpected keys"):
        build_model("small_cnn", num_classes=10, checkpoint=str(path))


def test_checkpoint_not_found(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=r"checkpoint not found") as exc:
        build_model("small_cnn", num_classes=10, checkpoint=str(missing))
    assert "nope.pt" in str(exc.value)


def test_checkpoint_without_state_dict_is_rejected(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ConfigError, match="must hold a state dict"):
        build_model("small_cnn", num_classes=10, checkpoint=str(path))


# --- validation ----------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(RegistryError) as exc:
        build_model("resnet_nope", num_classes=10, where="q.yaml: model")
    msg = str(exc.value)
    for valid in ("cifar_resnet56", "small_cnn", "vgg16_bn", "torchvision:<name>", "package.module:function"):
        assert valid in msg
    assert "'resnet_nope'" in msg and "(q.yaml: model.name)" in msg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes must be >= 2, but got num_classes=1 (quick.yaml: model.num_classes)"),
        ({"num_classes": True}, "num_classes must be an integer, but got num_classes=True"),
        ({"num_classes": 10, "in_channels": 0}, "in_channels must be >= 1, but got in_channels=0"),
        ({"num_classes": 10, "input_size": "32"}, "input_size must be an integer, but got input_size='32'"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ConfigError) as exc:
        build_model("small_cnn", where="quick.yaml: model", **kwargs)
    assert message in str(exc.value)


def test_malformed_user_pattern_is_rejected():
    with pytest.raises(ConfigError, match="package.module:function"):
        build_model("not a/path:fn", num_classes=10)


# --- training sanity -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_small_cnn_learns_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    perm = torch.randperm(len(y))
    train, test = perm[:1400], perm[1400:]
    model = build_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        model.train()
        for idx in train.split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.93  # ~0.99 after 3 epochs
