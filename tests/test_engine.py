"""The structural pruning engine: coupled channel groups, pruning to a target, the prunability check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nets import ConcatNet, ResidualNet, make_ctx
from torch import nn

from sweep.engine import channels as ch
from sweep.engine.channels import ChannelPlan, channel_counts, prune_channels, prune_to_target, solve_for_target
from sweep.engine.check import PrunabilityError, check_prunable
from sweep.engine.groups import ChannelGraph, channel_groups, prune_groups
from sweep.engine.skip import skipped_layers
from sweep.errors import ConfigError
from sweep.measure import count_macs, count_params
from sweep.models import build_model

X8 = torch.zeros(1, 3, 8, 8)


def probe(shape=(3, 8, 8), n=4):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def run(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# ----------------------------------------------------------------------------- tiny nets (more in nets.py)
class GroupedNet(nn.Module):
    """A grouped conv (2 groups) and a depthwise conv between 1x1 convs."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 16, 1)
        self.gc = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw2 = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        return self.fc(self.pw2(self.dw(self.gc(self.pw(x)))).mean((2, 3)))


class WideNarrowNet(nn.Module):
    """Widths 20 (narrow), 48 and 64 (wide): to see per-group rounding."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 20, 3, padding=1, bias=False), nn.BatchNorm2d(20)
        self.c2, self.b2 = nn.Conv2d(20, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48)
        self.c3, self.b3 = nn.Conv2d(48, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def members(group):
    return {(m.name, m.kind) for m in group.members}


# ----------------------------------------------------------------------------- groups
def test_residual_group_couples_the_shortcut_and_prunes_in_step():
    torch.manual_seed(0)
    model = ResidualNet()
    groups = {g.name: g for g in channel_groups(model, X8)}
    assert set(groups) == {"stem", "conv1"}  # conv2 joins the stem's group through the add; fc is kept
    stem = groups["stem"]
    assert {("stem", "out"), ("bn0", "out"), ("conv2", "out"), ("bn2", "out"), ("conv1", "in"),
            ("fc", "in")} <= members(stem)
    assert ("conv2", "in") in members(groups["conv1"])
    stem.prune([0, 3, 5])
    assert stem.size == 13  # the group object sees the new width
    assert model.stem.out_channels == model.conv2.out_channels == model.conv1.in_channels == 13
    assert model.fc.in_features == 13 and model.conv1.out_channels == 16
    assert run(model, probe()).shape == (4, 4)


def test_concat_groups_map_consumer_slices_in_one_go():
    torch.manual_seed(0)
    model = ConcatNet()
    w_mix = model.mix.weight.detach().clone()
    graph = channel_groups(model, X8, graph=True)
    a, b = graph.group("a"), graph.group("b")
    slice_b = next(m for m in b.members if m.name == "mix")
    assert slice_b.kind == "in" and slice_b.idxs == tuple(range(12, 32))  # b's channels sit after a's 12
    assert slice_b.root_idxs == tuple(range(20))
    prune_groups({a: [0, 1], b: [0, 19]})  # both slices of one consumer, edited once
    assert (model.a.out_channels, model.b.out_channels, model.mix.in_channels) == (10, 18, 28)
    kept = list(range(2, 12)) + [12 + i for i in range(1, 19)]
    assert torch.equal(model.mix.weight, w_mix[:, kept])  # the right input channels survived
    assert run(model, probe()).shape == (4, 4)


def test_pruned_copy_leaves_the_live_model_and_matches_live_pruning():
    torch.manual_seed(0)
    model = ConcatNet().eval()
    graph = channel_groups(model, X8, graph=True)
    sel = {"a": [2, 4], "b": [1], "mix": [0, 5, 7]}
    copy = graph.pruned_copy(sel)
    assert model.mix.in_channels == 32 and model.mix.out_channels == 24
    graph.prune(sel)
    x = probe()
    assert torch.equal(run(copy, x), run(model, x))


def test_grouped_and_depthwise_convs_prune_consistently():
    torch.manual_seed(0)
    model = GroupedNet()
    graph = channel_groups(model, X8, graph=True)
    dw = graph.group("dw")  # the grouped conv feeds the depthwise conv: one group, chunks of 8
    assert dw.ch_groups == 2 and dw.size == 8 and ("gc", "out") in members(dw)
    graph.prune({dw: [0], "pw": [3]})  # one unit = one channel of every chunk
    assert model.gc.out_channels == 14 and model.gc.groups == 2
    assert model.dw.out_channels == model.dw.groups == 14 and model.pw2.in_channels == 14
    assert model.pw.out_channels == 14
    assert run(model, probe()).shape == (4, 4)


def test_group_weights_and_scores():
    torch.manual_seed(0)
    model = ConcatNet()
    graph = channel_groups(model, X8, graph=True)
    b = graph.group("b")
    assert torch.equal(b.weights(), model.b.weight.detach().reshape(20, -1))
    with torch.no_grad():  # a dead channel (zero filter, zero BN, zero consumer slice) scores lowest
        model.b.weight[7] = 0
        model.bn_b.weight[7] = 0
        model.bn_b.bias[7] = 0
        model.mix.weight[:, 12 + 7] = 0
    for imp in ("l2", "l1", "bn_scale"):
        s = b.score(imp)
        assert s.shape == (20,) and int(torch.argmin(s)) == 7
    assert graph.group("mix").score("l2").shape == (24,)
    no_bn = channel_groups(GroupedNet(), X8, graph=True)
    assert no_bn.group("pw").score("bn_scale") is None  # the criterion does not apply without BN


def test_group_index_errors():
    graph = channel_groups(ConcatNet(), X8, graph=True)
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        graph.group("a").prune([12])
    with pytest.raises(ValueError, match="at least one channel"):
        graph.group("a").prune(list(range(12)))
    with pytest.raises(KeyError, match="no prunable channel group"):
        graph.group("fc")  # the head is kept


# ----------------------------------------------------------------------------- targets
PRECISION = [
    ("small_cnn", 1, 28, "macs_fraction", 0.5),
    ("small_cnn", 1, 28, "params_fraction", 0.3),
    ("yolo7_cls", 1, 28, "macs_fraction", 0.5),
    ("yolo7_cls", 1, 28, "params_fraction", 0.4),
    ("cifar_resnet20", 3, 32, "macs_fraction", 0.5),
    ("cifar_resnet20", 3, 32, "params_fraction", 0.6),
]


@pytest.mark.parametrize("name, c, size, kind, value", PRECISION)
def test_target_lands_within_3_percent(name, c, size, kind, value):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=c, input_size=size)
    x = torch.zeros(1, c, size, size)
    macs0, params0 = count_macs(model, x), count_params(model)
    out, info = prune_to_target(model, x, **{kind: value})
    assert out is model  # pruned in place
    got = {"macs_fraction": count_macs(model, x) / macs0, "params_fraction": count_params(model) / params0}
    assert abs(got[kind] - value) <= 0.03 * value, (got, info)
    assert info["target"] == {kind: value} and info[f"target_{kind}"] == value
    assert info["achieved"][kind] == pytest.approx(got[kind])  # the figures describe the returned model
    assert info["within_tolerance"] is True
    assert run(model, torch.randn(2, c, size, size)).shape == (2, 10)


def test_ratio_zero_keeps_outputs_even_in_train_mode():
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10).train()  # tracing must not touch BN statistics
    x = probe((3, 32, 32))
    ref = run(model, x)
    out, info = prune_to_target(model.train(), x[:1], ratio=0.0)
    assert torch.equal(run(out, x), ref)
    assert info["achieved"]["macs_fraction"] == 1.0 and info["groups_pruned"] == 0


def test_auto_rounding_is_per_group():
    kw = dict(ratio=0.3, global_pruning=False)  # the same ratio in every group: counts are predictable
    auto, _ = prune_to_target(WideNarrowNet(), X8, **kw)
    counts = channel_counts(auto)
    # 20 -> 14 (narrow: not rounded), 48 -> 33 -> 32, 64 -> 44 -> 48 (nearest multiples of 8 or 16, ties up)
    assert (counts["c1"], counts["c2"], counts["c3"]) == (14, 32, 48)
    plain, _ = prune_to_target(WideNarrowNet(), X8, round_to=None, **kw)
    assert [channel_counts(plain)[k] for k in ("c1", "c2", "c3")] == [14, 33, 44]
    four, info = prune_to_target(WideNarrowNet(), X8, round_to=4, **kw)
    assert all(channel_counts(four)[k] % 4 == 0 for k in ("c1", "c2", "c3")) and info["round_to"] == 4
    assert run(four, probe()).shape == (4, 4)


def test_max_layer_ratio_and_last_channel_are_respected():
    model, _ = prune_to_target(WideNarrowNet(), X8, ratio=0.95, max_layer_ratio=0.5, round_to=None)
    counts = channel_counts(model)
    assert counts["c1"] >= 10 and counts["c2"] >= 24 and counts["c3"] >= 32 and counts["fc"] == 4


def test_keep_layers_by_name_and_head_always_kept():
    model, _ = prune_to_target(WideNarrowNet(), X8, ratio=0.5, keep_layers=["c2"], round_to=None)
    counts = channel_counts(model)
    assert counts["c2"] == 48 and counts["c1"] < 20 and counts["c3"] < 64 and counts["fc"] == 4
    with pytest.raises(ConfigError, match="keep_layers must name layers of the model, but got 'nope'"):
        prune_to_target(WideNarrowNet(), X8, ratio=0.5, keep_layers=["nope"])


@pytest.mark.parametrize("kw, message", [
    ({}, "give exactly one of ratio, macs_fraction, params_fraction, latency_fraction, but got none"),
    ({"ratio": 0.3, "macs_fraction": 0.5}, "but got ratio=0.3, macs_fraction=0.5"),
    ({"macs_fraction": 1.5}, "macs_fraction must be in (0, 1], but got macs_fraction=1.5"),
    ({"ratio": 1.0}, "ratio must be in [0, 1), but got ratio=1.0"),
])
def test_target_arguments_are_validated(kw, message):
    with pytest.raises(ConfigError) as ei:
        prune_to_target(WideNarrowNet(), X8, **kw)
    assert message in str(ei.value)


def test_latency_target_search_with_a_deterministic_clock(monkeypatch):
    # A stand-in clock proportional to MACs makes the search testable; the real one is measured below (slow).
    monkeypatch.setattr(ch, "_latency", lambda m, x, kw: count_macs(m, x) / 1e4)
    model = build_model("cifar_resnet20", num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    _, info = prune_to_target(model, x, latency_fraction=0.6)
    assert abs(info["achieved"]["latency_fraction"] - 0.6) <= 0.03 * 0.6
    assert info["achieved"]["latency_fraction"] == pytest.approx(info["achieved"]["macs_fraction"])
    assert info["baseline_latency_ms"] > info["latency_ms"] > 0


def test_unreachable_target_reports_the_closest_plan():
    _, info = prune_to_target(WideNarrowNet(), X8, macs_fraction=0.001)
    assert info["within_tolerance"] is False and info["achieved"]["macs_fraction"] > 0.001


@pytest.mark.parametrize("given", ["keep_layers", "ignored_layers"])
def test_prune_channels_keeps_given_layers_and_the_output_layer(given):
    # keep_layers add to the skipped layers; a given ignored_layers list is final (here: the same list)
    model = WideNarrowNet()
    kw = {"keep_layers": ["c1"]} if given == "keep_layers" else \
        {"ignored_layers": skipped_layers(model, X8, keep=[model.c1])}
    prune_channels(model, X8, ratio=0.5, **kw)
    assert channel_counts(model)["c1"] == 20 and channel_counts(model)["c2"] < 48
    assert model.fc.out_features == 4


def test_a_given_ignored_list_is_final():
    model = WideNarrowNet()
    prune_channels(model, X8, ratio=0.5, ignored_layers=[model.c2, model.fc])  # c2 kept; the engine adds nothing
    counts = channel_counts(model)
    assert counts["c2"] == 48 and counts["c1"] < 20 and counts["c3"] < 64 and counts["fc"] == 4


def test_pruned_copy_to_a_macs_target_leaves_the_input():
    model = ConcatNet()
    pruned, info = prune_to_target(model, X8, macs_fraction=0.5, round_to=None, tolerance=0.02, inplace=False)
    assert pruned is not model and model.mix.in_channels == 32
    assert abs(info["achieved_macs_fraction"] - 0.5) <= 0.02 * 0.5 and pruned.fc.out_features == 4


# ----------------------------------------------------------------------------- prunability check
class HardView(nn.Module):
    """The forward hard-codes 64 channels: pruning conv2 breaks it."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.fc(x.view(x.shape[0], 64, -1).mean(-1))


class HardShuffle(nn.Module):
    """A channel shuffle with a hard-coded 4x4 split: pruning conv1 breaks the reshape."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.conv1(x)
        n, _, h, w = x.shape
        x = x.reshape(n, 4, 4, h, w).transpose(1, 2).reshape(n, 16, h, w)
        return self.fc(self.conv2(x).mean((2, 3)))


@pytest.mark.parametrize("net, layer, where", [
    (HardView, "'conv2' (Conv2d)", "in layer 'fc' (Linear)"),
    (HardShuffle, "'conv1' (Conv2d)", "in the forward of '<model>' (HardShuffle) after layer 'conv1' (Conv2d)"),
])
def test_check_names_the_layer_that_breaks(net, layer, where):
    with pytest.raises(PrunabilityError) as ei:
        check_prunable(net(), X8)
    msg = str(ei.value)
    assert isinstance(ei.value, ConfigError) and "\n" not in msg
    assert f"pruning layer {layer} breaks it" in msg and where in msg and "RuntimeError" in msg, msg


def test_check_passes_prunable_nets_and_honours_ignored_layers():
    model = ConcatNet()
    params = count_params(model)
    assert check_prunable(model, X8) == {"groups": 3, "checked": 3, "skipped": []}
    assert count_params(model) == params  # a copy was pruned
    model = HardView()
    kept = skipped_layers(model, X8, keep=["conv2"])  # a given list is final: the head is in it
    assert check_prunable(model, X8, ignored_layers=kept)["groups"] == 1  # conv2 kept: nothing breaks
    assert check_prunable(model, X8, keep_layers=["conv2"])["groups"] == 1  # the same, added to the default


def test_check_turns_a_failure_of_the_graph_analysis_into_one_line(monkeypatch):
    import torch_pruning as tp

    model = ConcatNet()
    build = tp.DependencyGraph._build_dependency

    def fails_at_mix(self, module2node):  # stands in for a Torch-Pruning bug met while handling one layer
        for module in module2node:
            if isinstance(module, nn.Conv2d) and module.out_channels == 24:  # mix, in the checked copy
                raise ZeroDivisionError("integer division or modulo by zero")
        return build(self, module2node)

    monkeypatch.setattr(tp.DependencyGraph, "_build_dependency", fails_at_mix)
    with pytest.raises(PrunabilityError) as ei:
        check_prunable(model, X8)
    msg = str(ei.value)
    assert "\n" not in msg and "dependency analysis fails at layer 'mix' (Conv2d)" in msg, msg
    assert "ZeroDivisionError: integer division or modulo by zero" in msg


# ----------------------------------------------------------------------------- what is never pruned
class ConvClassifier(nn.Module):
    """A classifier without a Linear (SqueezeNet's shape): the last conv's channels are the classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1),
                                      nn.BatchNorm2d(24), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(24, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class TwoHeads(nn.Module):
    """Two outputs, one of them a concat of two convs: every layer whose channels reach an output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.fc(x.mean((2, 3))), torch.cat([self.a(x), self.b(x)], 1).mean((2, 3))


@pytest.mark.parametrize("net, expected", [(ConvClassifier, ["classifier.1"]), (ResidualNet, ["fc"]),
                                           (TwoHeads, ["a", "b", "fc"])])
def test_skipped_layers_are_the_layers_whose_channels_reach_an_output(net, expected):
    model = net()
    names = {m: n for n, m in model.named_modules()}
    assert [names[m] for m in skipped_layers(model, X8)] == expected


def test_skipped_layers_add_kept_layers_once():
    model = ResidualNet()
    names = {m: n for n, m in model.named_modules()}
    assert [names[m] for m in skipped_layers(model, X8, keep=["conv1", model.fc, "conv1"])] == ["fc", "conv1"]


def test_conv_classifier_keeps_its_output_shape():
    torch.manual_seed(0)
    model = ConvClassifier()
    check_prunable(model, X8)  # passes without naming any layer
    _, info = prune_to_target(model, X8, ratio=0.3)
    assert run(model, probe()).shape == (4, 4) and model.classifier[1].out_channels == 4
    assert info["groups_pruned"] >= 1


def test_skipped_layers_names_a_bad_keep_layer():
    with pytest.raises(ConfigError, match="model.keep_layers must name layers of the model, but got 'nope'"):
        skipped_layers(WideNarrowNet(), X8, keep=["nope"], what="model.keep_layers")


# ----------------------------------------------------------------------------- groups that cannot be mapped
class ShuffleNet(nn.Module):
    """ShuffleNet-V2 units (channel split, concat, channel shuffle): Torch-Pruning's index mapping of
    the shuffle's reshape divides by zero."""

    def __init__(self):
        from torchvision.models.shufflenetv2 import InvertedResidual

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stage = nn.Sequential(InvertedResidual(8, 16, 2), InvertedResidual(16, 16, 1),
                                   InvertedResidual(16, 16, 1))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.head(self.stage(self.stem(x))).mean((2, 3)))


def test_groups_whose_index_mapping_fails_are_left_out_and_reported():
    import torch_pruning as tp

    torch.manual_seed(0)
    model, x = ShuffleNet().eval(), torch.zeros(1, 3, 16, 16)
    with pytest.raises(ZeroDivisionError):  # what Torch-Pruning alone does with this net
        tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    graph = ChannelGraph(model, x)
    assert graph.skipped and all("index mapping fails: ZeroDivisionError" in why for _, why in graph.skipped)
    assert {n for n, _ in graph.skipped}.isdisjoint(g.name for g in graph.groups) and len(graph.groups) >= 3
    summary = check_prunable(model, x)
    assert summary["skipped"] == graph.skipped and summary["groups"] == len(graph.groups)
    ref = run(model, torch.randn(2, 3, 16, 16))
    _, info = prune_to_target(model, x, ratio=0.3)
    assert info["groups_pruned"] >= 1 and run(model, torch.randn(2, 3, 16, 16)).shape == ref.shape


# ----------------------------------------------------------------------------- the solver
def test_solver_ranks_by_given_scores_and_matches_a_ratio():
    model = WideNarrowNet()
    graph = ChannelGraph(model, X8)
    scores = {"c1": torch.arange(20.0), "c2": torch.arange(48.0).flip(0)}  # c3 has none: not pruned
    sol = solve_for_target(graph, target="ratio", value=0.5, scores=scores, round_to=None, match_ratio=True)
    assert sorted(g.name for g in sol.plan.groups) == ["c1", "c2"]
    assert sol.achieved["ratio"] == pytest.approx(0.5, abs=1 / 68)  # closest plan: within one channel
    sel = {g.name: idx for g, idx in sol.selection.items()}
    assert sel["c1"] == list(range(len(sel["c1"])))  # lowest scores first
    assert sel["c2"] == list(range(47, 47 - len(sel["c2"]), -1))
    cut = solve_for_target(graph, target="ratio", value=0.5, scores=scores, round_to=None, max_layer_ratio=0.2)
    assert cut.ratio == 0.5 and cut.achieved["ratio"] < 0.25  # a plain cut stops at the per-group cap
    with pytest.raises(ValueError, match="one value per unit"):
        ChannelPlan(graph, scores={"c1": torch.zeros(3)})


def test_solver_meets_a_macs_target_with_given_scores():
    model = WideNarrowNet()
    graph = ChannelGraph(model, X8)
    scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(graph)}
    sol = solve_for_target(graph, target="macs_fraction", value=0.5, scores=scores)
    info = sol.info()
    assert info["within_tolerance"] and abs(info["achieved_macs_fraction"] - 0.5) <= 0.03 * 0.5
    graph.prune(sol.selection)
    assert count_macs(model, X8) == info["macs"][1]  # the figures describe the pruned model


# ----------------------------------------------------------------------------- the magnitude method
def _magnitude(values, model=None, x=X8):
    from sweep.methods import get_method

    spec = get_method("magnitude")
    model = model or WideNarrowNet()
    ctx = make_ctx(model, method="magnitude", shape=tuple(x.shape[1:]))
    return spec.prune(model, x, spec.make_config(values, where="test"), ctx)


def test_magnitude_targets_are_exclusive_knobs():
    from sweep.methods import get_method

    spec = get_method("magnitude")
    for a, b in [("ratio", "params_fraction"), ("macs_fraction", "latency_fraction")]:
        with pytest.raises(ConfigError, match=f"give only one of ratio, macs_fraction, params_fraction, "
                                              f"latency_fraction for method magnitude, but got {a}, {b}"):
            spec.make_config({a: 0.5, b: 0.5}, where="test")
    assert spec.make_config({}).round_to is None  # unset = the engine's automatic rounding


def test_magnitude_params_target_records_target_and_achieved():
    res = _magnitude({"params_fraction": 0.5})
    assert res.info["target"] == {"params_fraction": 0.5}
    assert abs(res.info["achieved"]["params_fraction"] - 0.5) <= 0.03 * 0.5
    assert res.info["round_to"] == "auto" and res.info["channels"]["fc"] == 4


def test_magnitude_round_to_unset_rounds_only_wide_layers():
    res = _magnitude({"ratio": 0.3, "global_pruning": False})
    assert [res.info["channels"][k] for k in ("c1", "c2", "c3")] == [14, 32, 48]
    res = _magnitude({"ratio": 0.3, "global_pruning": False, "round_to": 1})
    assert [res.info["channels"][k] for k in ("c1", "c2", "c3")] == [14, 33, 44]


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_densenet121_half_macs_lands_within_3_percent():
    torch.manual_seed(0)
    model = build_model("torchvision:densenet121", num_classes=10, input_size=64)
    x = torch.zeros(1, 3, 64, 64)
    macs0 = count_macs(model, x)
    ref = channel_counts(model)
    _, info = prune_to_target(model, x, macs_fraction=0.5)
    achieved = count_macs(model, x) / macs0
    assert abs(achieved - 0.5) <= 0.03 * 0.5, info["achieved"]  # Torch-Pruning's stepping gave 1/2.58
    counts = channel_counts(model)
    pruned_wide = [k for k in counts if counts[k] != ref[k] and ref[k] >= ch.ROUND_MIN_WIDTH]
    assert pruned_wide and all(counts[k] % 8 == 0 for k in pruned_wide)
    assert run(model, torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.slow
def test_latency_target_is_measured_and_lowers_latency():
    torch.manual_seed(0)
    model = build_model("vgg16_bn", num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    _, info = prune_to_target(model, x, latency_fraction=0.5, latency_kw={"repeats": 15})
    # a noisy clock: ask for the direction and a loose band, not the 3 %
    assert 0.3 < info["achieved"]["latency_fraction"] < 0.75
    assert info["achieved"]["macs_fraction"] < 0.75


# ----------------------------------------------------------------------------- the auto grid
@pytest.mark.parametrize("capability,unit", [("AVX512", 16), ("AVX2", 8), ("DEFAULT", 8)])
def test_auto_grid_is_the_cpu_vector_width(monkeypatch, capability, unit):
    ch.round_wide.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    try:
        assert ch.round_wide() == unit
        assert ch.rounding_unit(64, "auto") == unit and ch.rounding_unit(20, "auto") == 1
        assert ch.rounding_unit(32, "auto") == 8  # one step is at most a quarter of a group's width
    finally:
        ch.round_wide.cache_clear()


class OneWideGroup(nn.Module):
    """One prunable group of 64 channels whose MACs are linear in its width: on a grid of 16 it keeps a
    multiple of 16 (MACs fraction 0.25, 0.5, 0.75 or 1), on a grid of 8 a multiple of 8, whatever the
    weights."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 4, bias=False)

    def forward(self, x):
        return self.fc(F.relu(self.b1(self.c1(x))).mean((2, 3)))


def test_auto_grid_is_halved_only_where_it_cannot_meet_a_target(monkeypatch):
    monkeypatch.setattr(ch, "round_wide", lambda: 16)
    _, on16 = prune_to_target(OneWideGroup(), X8, macs_fraction=0.5, inplace=False)
    assert on16["within_tolerance"] and on16["round_unit"] == 16 and on16["round_to"] == "auto"
    _, fixed = prune_to_target(OneWideGroup(), X8, macs_fraction=0.625, round_to=16, inplace=False)
    assert not fixed["within_tolerance"]  # an explicit grid is kept, off target
    pruned, finer = prune_to_target(OneWideGroup(), X8, macs_fraction=0.625, inplace=False)
    assert finer["within_tolerance"] and finer["round_unit"] == 8
    assert channel_counts(pruned)["c1"] == 40
