"""Iterative filter pruning for concat CNNs (sweep/methods/iterative.py; Pavlitska et al. 2024).

Most tests run on ``MiniYolo``, a tiny net with the two couplings the method targets (an ELAN-like
concat of three branches and an SPP-like concat of a conv output with its max-pooled copy), on
synthetic 1x8x8 data; one test runs the real ``yolo7_cls`` with the analysis limited to two groups.
"""

from __future__ import annotations

import copy
import json
import math

import nets
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweep.engine.channels import channel_counts
from sweep.engine.skip import skipped_layers
from sweep.errors import ConfigError, TrialFailure
from sweep.measure import count_macs, count_params
from sweep.methods import PruneContext, get_method
from sweep.methods.iterative import RATES, Candidate, choose, log_score
from sweep.train import train

NUM_CLASSES = 4
SHAPE = (1, 8, 8)
KEYS = ("iterative/iter_params", "iterative/iter_macs", "iterative/iter_latency_ms", "iterative/iter_quality")


class CBS(nn.Module):
    """YOLOv7's Conv (conv + BN + SiLU); SiLU functional: fewer modules, faster copies."""

    def __init__(self, c_in, c_out, k=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class MiniYolo(nn.Module):
    """stem -> ELAN-like cat(c, b, a) -> fuse -> SPP-like cat(y, maxpool(y)) -> out -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = CBS(1, 8, 3)
        self.a, self.b, self.c = CBS(8, 4), CBS(8, 4), CBS(4, 4, 3)
        self.fuse = CBS(12, 8)
        self.spp_cv = CBS(8, 8)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.spp_out = CBS(16, 8)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        x = self.stem(x)
        b = self.b(x)
        x = self.fuse(torch.cat([self.c(b), b, self.a(x)], 1))
        y = self.spp_cv(x)
        x = self.spp_out(torch.cat([y, self.pool(y)], 1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


class LinearOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_ctx(model, *, label_free=False, shape=SHAPE, ignored=None, seed=0) -> PruneContext:
    """The runner's context on 64 + 64 synthetic samples; the teacher is a frozen copy of ``model``."""
    return nets.make_ctx(model, method="iterative", labels=not label_free, seed=seed, shape=shape,
                         data=nets.synthetic(64, 64, shape=shape, seed=seed), ignored=ignored)


def only(model, *names):
    """Ignored layers that leave only the groups rooted in ``names`` (fewer candidates: faster tests)."""
    return skipped_layers(model, torch.zeros(1, *SHAPE), keep=[n for n, _ in model.named_children() if n not in names])


def run(values=None, *, seed=0, net=MiniYolo, label_free=False, groups=None):
    spec = get_method("iterative")
    torch.manual_seed(seed)
    model = net().eval()
    ctx = make_ctx(model, label_free=label_free, seed=seed, ignored=only(model, *groups) if groups else None)
    before = (count_params(model), count_macs(model, torch.zeros(1, *SHAPE)), channel_counts(model))
    torch.manual_seed(seed)
    res = spec.prune(model, torch.zeros(1, *SHAPE), spec.make_config(values or {}), ctx)
    return res, before, ctx


def probe(shape=SHAPE):
    return torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- the iteration
K3 = {"iterations": 3, "n_params": 2, "n_macs": 1, "epochs_per_iter": 1}


@pytest.fixture(scope="module")
def k3():
    """One 3-iteration run shared by several tests (each run analyses 7 groups x 3 rates per iteration)."""
    return run(K3, seed=3)


def test_k_iterations_give_k_plus_one_points_shrinking(k3):
    res, (p0, m0, _), ctx = k3
    traj = res.info["trajectory"]
    assert [p["step"] for p in traj] == [0, 1, 2, 3]
    assert traj[0]["params"] == p0 and traj[0]["macs"] == m0 and traj[0]["pruned_groups"] == []
    params, macs = [p["params"] for p in traj], [p["macs"] for p in traj]
    assert all(a >= b for a, b in zip(params, params[1:])) and params[-1] < params[0]
    assert all(a >= b for a, b in zip(macs, macs[1:])) and macs[-1] < macs[0]
    for p in traj:
        assert set(p) == {"step", "params", "macs", "latency_ms", "quality", "pruned_groups", "alpha"}
        assert 0.0 <= p["quality"] <= 1.0 and p["latency_ms"] > 0
    assert [p["alpha"] for p in traj] == [None, 20.0, 18.0, 16.0]  # alpha - (k-1) * alpha_decay
    model = res.model.eval()
    with torch.no_grad():
        assert model(probe()).shape == (5, NUM_CLASSES)
    assert (count_params(model), count_macs(model, torch.zeros(1, *SHAPE))) == (params[-1], macs[-1])
    # fine-tuned here, one loss history: offsets 0, 1, 2; the runner reads info["epochs"]
    assert res.finetuned and res.info["epochs"] == 3 and ctx.calls == [(1, 0), (1, 1), (1, 2)]
    for key in KEYS:
        assert nets.steps(ctx, key) == [0, 1, 2, 3]
    assert [v for k, v, s in ctx.logged if k == "iterative/iter_params"] == params
    assert nets.steps(ctx, "train_loss") == [0, 1, 2]  # the runner's fine-tuning figure, not the method's
    json.dumps(res.info, allow_nan=False)


def check_union(res, n_params, n_macs):
    for p, d in zip(res.info["trajectory"][1:], res.info["iteration_details"]):
        assert 1 <= len(p["pruned_groups"]) <= n_params + n_macs
        assert p["pruned_groups"] == [s["group"] for s in d["selected"]]
        by = [b for s in d["selected"] for b in s["by"]]
        assert by.count("params") == n_params and by.count("macs") == n_macs
        for s in d["selected"]:  # each chosen group's rate is one of the paper's (capped at the floor)
            assert s["rate"] in RATES and s["removed"] <= int(s["rate"] * s["width"])


def test_union_is_at_most_n_params_plus_n_macs(k3):
    check_union(k3[0], K3["n_params"], K3["n_macs"])


@pytest.mark.parametrize("n_params,n_macs", [(2, 0), (0, 3)])
def test_union_with_one_score_only(n_params, n_macs):
    res, _, _ = run({"iterations": 1, "n_params": n_params, "n_macs": n_macs, "epochs_per_iter": 0},
                    groups=("a", "b", "c", "spp_cv"))
    check_union(res, n_params, n_macs)
    assert set(res.info["iteration_details"][0]["sensitivity"]) == {"a.conv", "b.conv", "c.conv", "spp_cv.conv"}


def test_deterministic_under_seed():
    values, groups = {"iterations": 2, "n_params": 1, "n_macs": 1}, ("b", "fuse", "spp_cv")
    a, _, _ = run(values, seed=3, groups=groups)
    b, _, _ = run(values, seed=3, groups=groups)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    strip = [{k: v for k, v in p.items() if k != "latency_ms"} for p in a.info["trajectory"]]
    assert strip == [{k: v for k, v in p.items() if k != "latency_ms"} for p in b.info["trajectory"]]
    assert a.info["iteration_details"] == b.info["iteration_details"]


def test_zero_counts_prune_nothing():
    res, (p0, m0, ch0), ctx = run({"iterations": 2, "n_params": 0, "n_macs": 0, "epochs_per_iter": 1})
    traj = res.info["trajectory"]
    assert len(traj) == 3 and all(p["pruned_groups"] == [] for p in traj)
    assert {p["params"] for p in traj} == {p0} and {p["macs"] for p in traj} == {m0}
    assert channel_counts(res.model) == ch0
    assert res.info["epochs"] == 2  # still fine-tuned each iteration


def test_subset_quality_is_what_ctx_evaluate_measures():
    """With the whole split as the subset, the local scorer's unpruned quality equals ctx.evaluate."""
    torch.manual_seed(0)
    model = MiniYolo().eval()
    ctx = make_ctx(model, ignored=only(model, "spp_cv"))
    train(model, ctx.train_loader, epochs=2, lr=0.05)
    expected = ctx.evaluate(model)
    spec = get_method("iterative")
    res = spec.prune(model, torch.zeros(1, *SHAPE), spec.make_config(
        {"iterations": 1, "epochs_per_iter": 0, "val_samples": 1000}), ctx)
    d = res.info["iteration_details"][0]
    assert d["base_quality"] == expected and res.info["val_samples_used"] == 64
    assert res.info["trajectory"][0]["quality"] == expected


def test_sensitivity_table_covers_every_group_and_rate_on_the_subset():
    res, (p0, m0, _), _ = run({"iterations": 1, "epochs_per_iter": 0, "val_samples": 40})
    assert res.info["val_samples_used"] == 40
    table = res.info["iteration_details"][0]["sensitivity"]
    assert set(table) == {"stem.conv", "a.conv", "b.conv", "c.conv", "fuse.conv", "spp_cv.conv", "spp_out.conv"}
    for rows in table.values():
        assert [r[0] for r in rows] == list(RATES)
        removed = [r[1] for r in rows]
        assert removed == sorted(removed) and len(set(removed)) == 3
        d_params = [r[3] for r in rows]
        assert all(0 < a < b for a, b in zip(d_params, d_params[1:]))  # more removed, more saved
        assert all(0.0 <= r[2] <= 1.0 and 0 < r[4] < m0 for r in rows)
        assert all(r[2] * 40 == int(r[2] * 40) for r in rows)  # a fraction of the 40-sample subset
    # MACs at the smaller rates follow from one count per group: they match a count of each candidate
    from sweep.engine.groups import ChannelGraph
    from sweep.methods.iterative import _plan

    torch.manual_seed(0)
    model = MiniYolo().eval()
    graph = ChannelGraph(model, torch.zeros(1, *SHAPE))  # ignored_layers=None: skipped_layers
    for g, order, steps in _plan(graph, "l2", {}, 0.9):
        exact = [m0 - count_macs(graph.pruned_copy({g: order[:n].tolist()}), torch.zeros(1, *SHAPE))
                 for _, n in steps]
        assert [r[4] for r in table[g.name]] == exact, g.name


# ----------------------------------------------------------------------------- scoring and alpha
def cand(group, order, rate, quality, d_params, d_macs=1000, width=16):
    return Candidate(group=group, order=order, rate=rate, removed=int(rate * width), width=width,
                     quality=quality, params=0, macs=0, d_params=d_params, d_macs=d_macs)


def test_larger_alpha_prefers_rates_with_higher_accuracy():
    cands = [cand("g", 0, 0.25, 0.90, 100), cand("g", 0, 0.5, 0.80, 200), cand("g", 0, 0.75, 0.60, 300)]
    pick = {a: choose(cands, a, 1, 0)[0][0].rate for a in (1.0, 4.0, 20.0)}
    assert pick == {1.0: 0.75, 4.0: 0.5, 20.0: 0.25}  # 300*.6=180 > 160; 200*.8^4=82 > 66, 59; 100*.9^20
    # across groups too: a big but damaging cut loses to a small harmless one at large alpha
    two = [cand("big", 0, 0.5, 0.5, 1000), cand("small", 1, 0.5, 0.95, 100)]
    assert choose(two, 1.0, 1, 0)[0][0].group == "big"
    assert choose(two, 20.0, 1, 0)[0][0].group == "small"


def test_scores_and_union_rules():
    assert log_score(100, 0.0, 20) == -math.inf and log_score(0, 0.9, 20) == -math.inf
    assert log_score(300, 0.6, 50) == pytest.approx(math.log(300) + 50 * math.log(0.6))  # no underflow
    # params score picks g at 0.75, MACs score picks g at 0.25: one entry, the milder rate, both reasons
    cands = [cand("g", 0, 0.25, 0.9, 10, d_macs=900), cand("g", 0, 0.75, 0.9, 30, d_macs=100),
             cand("h", 1, 0.5, 0.0, 10**6, d_macs=10**6)]  # quality 0: never chosen
    (c, by), = choose(cands, 1.0, 2, 2)
    assert c.group == "g" and c.rate == 0.25 and by == ["params", "macs"]
    assert choose(cands, 1.0, 0, 0) == []


def test_lowest_criterion_channels_go_first():
    from sweep.engine.groups import ChannelGraph
    from sweep.methods.iterative import _plan

    torch.manual_seed(0)
    model = MiniYolo().eval()
    with torch.no_grad():
        model.stem.conv.weight[5].mul_(1e-3)
        model.stem.conv.weight[2].mul_(1e-2)
    graph = ChannelGraph(model, torch.zeros(1, *SHAPE))  # ignored_layers=None: skipped_layers
    plan = {g.name: (order, steps) for g, order, steps in _plan(graph, "l2", {}, 0.9)}
    order, steps = plan["stem.conv"]
    assert order[:2].tolist() == [5, 2] and steps == [(0.25, 2), (0.5, 4), (0.75, 6)]


# ----------------------------------------------------------------------------- limits, seeds, errors
def test_max_layer_ratio_is_never_exceeded_and_the_epochs_left_are_spent():
    res, (_, _, ch0), ctx = run({"iterations": 4, "n_params": 7, "n_macs": 7, "alpha": 1, "alpha_decay": 0,
                                 "epochs_per_iter": 1, "max_layer_ratio": 0.5})
    ch = channel_counts(res.model)
    for name, c in ch0.items():
        assert ch[name] >= math.ceil(c * 0.5), name
    info = res.info
    assert info["stopped_early"] is not None  # everything reached its floor before iteration 4
    done = info["iterations_done"]
    assert done < 4 and len(info["trajectory"]) == done + 2  # + one point after the final fine-tune
    last = info["trajectory"][-1]
    assert last["step"] == done + 1 and last["pruned_groups"] == [] and last["alpha"] is None
    # the budget is iterations x epochs_per_iter: the iterations not run are one final fine-tune
    assert info["epochs"] == 4 and ctx.calls == [(1, k) for k in range(done)] + [(4 - done, done)]


# ----------------------------------------------------------------------------- a MACs target
@pytest.mark.parametrize("values, groups, reached_at, calls", [
    ({"iterations": 3, "macs_fraction": 0.85}, None, 1, [(3, 0)]),  # crossed in iteration 1: scaled down
    ({"iterations": 3, "macs_fraction": 0.7}, ("a", "fuse", "spp_cv"), 2, [(1, 0), (2, 1)]),
    ({"iterations": 2, "macs_fraction": 0.3}, ("a", "fuse", "spp_cv"), None, [(1, 0), (1, 1)]),  # missed
    ({"iterations": 2, "macs_fraction": 1.0}, None, 0, [(2, 0)]),  # the input model is there already
])
def test_macs_fraction_stops_at_the_target_within_the_same_epochs(values, groups, reached_at, calls):
    from sweep.engine.channels import TOLERANCE

    frac, iterations = values["macs_fraction"], values["iterations"]
    res, (_, m0, _), ctx = run({**values, "n_params": 1, "n_macs": 1, "epochs_per_iter": 1}, groups=groups)
    info = res.info
    achieved = count_macs(res.model, torch.zeros(1, *SHAPE)) / m0
    assert info["achieved_macs_fraction"] == achieved and info["target_reached_at"] == reached_at
    assert info["epochs"] == iterations == sum(e for e, _ in ctx.calls) and ctx.calls == calls
    assert nets.steps(ctx, "train_loss") == list(range(iterations))  # one loss history
    if reached_at is None:
        assert info["target_reached"] is False and achieved > frac * (1 + TOLERANCE)
        assert info["target_note"].startswith(f"MACs target {frac} of the input's missed")
        assert info["iterations_done"] == iterations and info["stopped_early"] is None
    else:
        assert info["target_reached"] is True and abs(achieved - frac) <= frac * TOLERANCE
        assert "target_note" not in info and info["iterations_done"] == reached_at
        assert info["stopped_early"].endswith("MACs target" if reached_at == 0 else "the MACs target is reached")
    if reached_at == 1:  # the chosen removals would overshoot: every count scaled by one s < 1
        d = info["iteration_details"][0]
        assert 0 < d["scale"] < 1 and d["finetune_epochs"] == 3
        assert all(s["removed"] == int(d["scale"] * s["planned"] + 1e-9) for s in d["selected"])
    json.dumps(info, allow_nan=False)


@pytest.mark.parametrize("knob,value", [
    ("macs_fraction", 0.0), ("macs_fraction", 1.5),
    ("iterations", 0), ("iterations", 21), ("iterations", 2.5), ("alpha", 0.5), ("alpha", 51),
    ("alpha_decay", -1), ("alpha_decay", 11), ("n_params", -1), ("n_macs", 21), ("criterion", "random"),
    ("epochs_per_iter", 21), ("val_samples", 16), ("max_layer_ratio", 0.0), ("max_layer_ratio", 1.0),
    ("alpha", "20"),
])
def test_bad_knobs_raise_config_error(knob, value):
    with pytest.raises(ConfigError, match=f"{knob}="):
        get_method("iterative").make_config({knob: value}, where="test")


def test_defaults_cite_the_paper():
    cfg = get_method("iterative").make_config({})
    assert (cfg.alpha, cfg.n_params, cfg.n_macs, cfg.criterion) == (20.0, 6, 5, "l2")
    assert (cfg.iterations, cfg.alpha_decay, cfg.epochs_per_iter, cfg.val_samples) == (3, 2.0, 1, 512)
    assert get_method("iterative").needs_labels is False


@pytest.mark.parametrize("net,criterion", [(LinearOnly, "l2"), (NoBN, "bn_scale")])
def test_nothing_to_prune_is_a_trial_failure_naming_the_model(net, criterion):
    with pytest.raises(TrialFailure, match=net.__name__):
        run({"criterion": criterion, "iterations": 1}, net=net)


# ----------------------------------------------------------------------------- label-free, yolo7
def test_label_free_context_scores_by_teacher_agreement():
    res, (p0, _, _), ctx = run({"iterations": 1, "n_params": 2, "n_macs": 2}, label_free=True,
                                 groups=("a", "fuse", "spp_cv"))
    assert all(len(b) == 1 for b in ctx.val_loader)  # no labels anywhere near the method
    traj = res.info["trajectory"]
    assert traj[0]["quality"] == 1.0  # the input model agrees with itself (the teacher)
    assert res.info["iteration_details"][0]["base_quality"] == 1.0
    assert traj[-1]["params"] < p0 and res.info["epochs"] == 1
    with torch.no_grad():
        assert res.model.eval()(probe()).shape == (5, NUM_CLASSES)


def test_label_free_without_teacher_uses_the_input_model():
    torch.manual_seed(0)
    model = MiniYolo().eval()
    ctx = make_ctx(model, label_free=True, ignored=only(model, "spp_cv"))
    ctx.teacher = None
    spec = get_method("iterative")
    res = spec.prune(model, torch.zeros(1, *SHAPE), spec.make_config({"iterations": 1, "epochs_per_iter": 0}), ctx)
    assert res.info["iteration_details"][0]["base_quality"] == 1.0


def test_yolo7_cls_sppcspc_concat_slices_stay_coupled():
    """On the real yolo7_cls, analysis limited to spp.cv4 (x1, concatenated with its three max-pooled
    copies) and spp.cv2 (the CSP branch): pruning edits every slice of both concats."""
    from sweep.engine.groups import ChannelGraph
    from sweep.methods.iterative import _plan
    from sweep.models import build_model
    from sweep.models.yolo_style import Conv

    torch.manual_seed(0)
    model = build_model("yolo7_cls", num_classes=NUM_CLASSES, in_channels=1, input_size=16).eval()
    keep = {"spp.cv4", "spp.cv2"}
    ignored = [n for n, m in model.named_modules() if isinstance(m, Conv) and n not in keep]
    ctx = make_ctx(model, shape=(1, 16, 16), ignored=skipped_layers(model, torch.zeros(1, 1, 16, 16), keep=ignored))
    spec = get_method("iterative")
    x = torch.zeros(1, 1, 16, 16)
    p0, m0 = count_params(model), count_macs(model, x)
    model0 = copy.deepcopy(model)
    res = spec.prune(model, x, spec.make_config({"iterations": 1, "alpha": 1, "n_params": 1, "n_macs": 1,
                                                 "epochs_per_iter": 0, "val_samples": 32}), ctx)
    m = res.model.eval()
    assert set(res.info["trajectory"][1]["pruned_groups"]) <= {"spp.cv4.0", "spp.cv2.0"}
    assert count_params(m) < p0
    c4, c2 = m.spp.cv4[0].out_channels, m.spp.cv2[0].out_channels
    assert m.spp.cv5[0].in_channels == 4 * c4 and m.spp.cv7[0].in_channels == m.spp.cv6[0].out_channels + c2
    assert min(c4, c2) < 64
    with torch.no_grad():
        assert m(probe((1, 16, 16))).shape == (5, NUM_CLASSES)
    # spp.cv4's channels appear in 4 slices of one concat: its MACs per rate still match exact counts
    graph = ChannelGraph(model0, x, keep_layers=ignored)
    (g, order, steps), = [p for p in _plan(graph, "l2", {}, 0.9) if p[0].name == "spp.cv4.0"]
    exact = [m0 - count_macs(graph.pruned_copy({g: order[:n].tolist()}), x) for _, n in steps]
    assert [r[4] for r in res.info["iteration_details"][0]["sensitivity"]["spp.cv4.0"]] == exact


def test_search_space_file_parses():
    from pathlib import Path

    from sweep.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "search_spaces" / "iterative.yaml")
    assert {m.name for m in cfg.methods} == {"iterative", "magnitude"}
    assert cfg.model.name == "yolo7_cls" and cfg.dataset.name == "fashion-mnist"
    knobs = cfg.method("iterative").knobs
    assert knobs["iterations"] == {"low": 1, "high": 4, "log": False} and knobs["val_samples"] == {"fixed": 256}
