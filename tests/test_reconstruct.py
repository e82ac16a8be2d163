"""Teacher-guided layer-wise reconstruction (:mod:`sweep.engine.reconstruct`) and the kept-channel map it needs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweep.engine.groups import ChannelGraph
from sweep.engine.reconstruct import reconstruct_layers

SHAPE = (3, 8, 8)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 20, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(20)
        self.fc = nn.Linear(20, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _teacher(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    net = ConvNet()
    with torch.no_grad():  # BN statistics of a net that has seen data: run a few batches in train mode
        net.train()
        for i in range(5):
            net(torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(100 + i)))
    return net.eval()


def _batches(n=4, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, *SHAPE, generator=g) for _ in range(n)]


def _pruned(teacher, keep=0.5):
    """A copy of ``teacher`` with the lowest-L2 half of every group's channels removed, and the kept map."""
    student = copy.deepcopy(teacher)
    graph = ChannelGraph(student, torch.zeros(1, *SHAPE))
    sel = {g: g.score("l2").argsort()[: int(g.size * (1 - keep))].tolist() for g in graph.groups}
    kept = graph.kept_channels(sel)
    graph.prune(sel)
    return student, kept


def test_kept_channels_are_the_surviving_slices():
    teacher = _teacher()
    student, kept = _pruned(teacher)
    t_mods = dict(teacher.named_modules())
    for name, mod in student.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        out, inp = kept.get(name, (range(mod.weight.shape[0]), range(mod.weight.shape[1])))
        assert tuple(mod.weight.shape[:2]) == (len(out), len(inp)), name
        expected = t_mods[name].weight[list(out)][:, list(inp)]
        assert torch.equal(mod.weight, expected), name
    assert set(kept) == {"conv1", "conv2", "conv3", "fc"}
    assert len(kept["fc"][0]) == 5 and len(kept["fc"][1]) == 10  # the head keeps its outputs, loses inputs


def _output_gap(student, teacher, xs) -> float:
    with torch.no_grad():
        return sum(float((student(x) - teacher(x)).pow(2).mean()) for x in xs)


def test_refit_lowers_every_layer_error_and_the_output_gap():
    teacher = _teacher()
    student, kept = _pruned(teacher)
    before = _output_gap(student, teacher, _batches(seed=99))
    res = reconstruct_layers(student, teacher, kept, _batches())
    assert res.layers == ["conv2", "conv3", "fc"]  # conv1's inputs are the image's: left as it is
    assert not res.skipped
    for name in res.layers:
        assert res.error_after[name] < res.error_before[name], name
    assert _output_gap(student, teacher, _batches(seed=99)) < 0.5 * before  # held-out inputs
    assert res.inputs == 128 and res.forwards == 2 * 128  # one pass of each network


def test_exact_recovery_when_the_removed_inputs_are_redundant():
    """A linear layer whose removed inputs are combinations of the kept ones is recovered exactly."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 4)).eval()  # no nonlinearity: 6 features span 3-d
    student = copy.deepcopy(teacher)
    graph = ChannelGraph(student, torch.zeros(1, 3), ignored_layers=["1"])
    (group,) = graph.groups
    sel = {group: [0, 1]}
    kept = graph.kept_channels(sel)
    graph.prune(sel)
    xs = [torch.randn(64, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    res = reconstruct_layers(student, teacher, kept, xs, ridge=1e-9)
    assert res.layers == ["1"]
    assert res.error_after["1"] < 1e-6 < res.error_before["1"]
    x = torch.randn(16, 3)
    with torch.no_grad():
        assert torch.allclose(student(x), teacher(x), atol=1e-4)


def test_all_layers_and_unpruned_layers_stay_put():
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    res = reconstruct_layers(student, teacher, {}, _batches(), layers="all")
    for name, mod in student.named_modules():  # nothing pruned: every re-fit is already optimal
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            assert torch.allclose(mod.weight, dict(teacher.named_modules())[name].weight, atol=1e-4), name
    assert set(res.layers) | set(res.skipped) == {"conv1", "conv2", "conv3", "fc"}
    assert reconstruct_layers(copy.deepcopy(teacher), teacher, {}, _batches()).layers == []


def test_deterministic_and_label_free():
    teacher = _teacher()
    a, kept = _pruned(teacher)
    b, _ = _pruned(teacher)
    xs = _batches()
    reconstruct_layers(a, teacher, kept, xs, seed=3, rows=100)
    garbage = [(x, torch.full((len(x),), 10 ** 6)) for x in xs]  # labels are never read
    reconstruct_layers(b, teacher, kept, garbage, seed=3, rows=100)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na


def test_grouped_convs_are_listed_as_skipped():
    class Depthwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.conv2 = nn.Conv2d(8, 6, 1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            x = self.conv2(F.relu(self.dw(F.relu(self.conv1(x)))))
            return self.fc(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1))

    torch.manual_seed(0)
    teacher = Depthwise().eval()
    student = copy.deepcopy(teacher)
    graph = ChannelGraph(student, torch.zeros(1, *SHAPE))
    sel = {g: [0, 1] for g in graph.groups}
    kept = graph.kept_channels(sel)
    graph.prune(sel)
    res = reconstruct_layers(student, teacher, kept, _batches())
    assert "grouped conv" in res.skipped["dw"]
    assert "conv2" in res.layers


def test_bad_layers_value():
    teacher = _teacher()
    with pytest.raises(ValueError, match="layers must be"):
        reconstruct_layers(copy.deepcopy(teacher), teacher, {}, _batches(), layers="some")


def test_conv1d_layers_are_unfolded_as_their_weights_are_laid_out():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(2, 12, 3, padding=1)
            self.c2 = nn.Conv1d(12, 8, 5, stride=2, padding=2, bias=False)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = F.relu(self.c2(F.relu(self.c1(x))))
            return self.fc(x.mean(-1))

    torch.manual_seed(0)
    teacher = Seq().eval()
    student = copy.deepcopy(teacher)
    graph = ChannelGraph(student, torch.zeros(1, 2, 16))
    sel = {g: g.score("l2").argsort()[: g.size // 2].tolist() for g in graph.groups}
    kept = graph.kept_channels(sel)
    graph.prune(sel)
    xs = [torch.randn(16, 2, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    res = reconstruct_layers(student, teacher, kept, xs)
    assert res.layers == ["c2", "fc"] and not res.skipped
    assert all(res.error_after[n] < res.error_before[n] for n in res.layers)


@pytest.mark.parametrize("channels, rows, max_bytes, expected", [
    ([16, 32, 64], 16384, 1 << 30, 16384),  # small nets: every layer gets the full sample
    ([2048] * 16, 16384, 1 << 30, (1 << 30) // (4 * 2048 * 16)),  # wide ones share the budget
    ([10 ** 9], 16384, 1 << 30, 1),  # never zero rows
])
def test_rows_per_layer_keeps_the_held_rows_in_budget(channels, rows, max_bytes, expected):
    from sweep.engine.reconstruct import rows_per_layer

    got = rows_per_layer(channels, rows, max_bytes)
    assert got == expected
    assert got == 1 or got * 4 * sum(channels) <= max_bytes


def test_a_smaller_budget_samples_fewer_rows(monkeypatch):
    import sweep.engine.reconstruct as rec

    teacher = _teacher()
    student, kept = _pruned(teacher)
    res = rec.reconstruct_layers(student, teacher, kept, _batches())
    assert res.rows == rec.ROWS and res.info()["rows"] == rec.ROWS
    # 100 rows of conv2's, conv3's and fc's kept outputs (12, 10 and 5 channels)
    monkeypatch.setattr(rec, "MAX_HELD_BYTES", 4 * 100 * (12 + 10 + 5))
    student, kept = _pruned(teacher)
    res = rec.reconstruct_layers(student, teacher, kept, _batches())
    assert res.rows == 100 and res.layers == ["conv2", "conv3", "fc"]


def test_a_layer_whose_inputs_are_all_zero_keeps_its_weights():
    """Nothing to fit (X = 0): the solve is still defined and the weights stay the pruned ones."""
    teacher = _teacher()
    student, kept = _pruned(teacher)
    with torch.no_grad():  # the student's conv3 inputs relu(bn2(...)) are all zero (and it has no bias)
        student.bn2.weight.zero_()
        student.bn2.bias.fill_(-1.0)
    before = student.conv3.weight.detach().clone()
    res = reconstruct_layers(student, teacher, kept, _batches())
    assert "conv3" not in res.layers and "re-fit would not lower" in res.skipped["conv3"]
    assert torch.equal(student.conv3.weight, before)
