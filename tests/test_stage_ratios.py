"""Per-stage ratios: groups binned by depth, each stage cut by its ratio, a MACs target met by one scale,
and the ``stage_ratios`` knob family through the registry and the search space."""

from __future__ import annotations

import optuna
import pytest
import torch
from nets import NETS, example, make_ctx

from sweep.config import parse_config
from sweep.engine.channels import ChannelPlan, prune_to_target, solve_for_target, stage_assignment, stage_of
from sweep.engine.groups import ChannelGraph
from sweep.errors import ConfigError
from sweep.measure import count_macs
from sweep.methods import get_method
from sweep.models import build_model
from sweep.space import define_by_run, distributions, knobs_from_config

optuna.logging.set_verbosity(optuna.logging.ERROR)
X32 = torch.zeros(1, 3, 32, 32)


def resnet20():
    torch.manual_seed(0)
    return build_model("cifar_resnet20", num_classes=10)


# ----------------------------------------------------------------------------- groups -> stages
@pytest.mark.parametrize("n, stages, expected", [
    (9, 4, [0, 0, 1, 1, 2, 2, 2, 3, 3]),  # n >= stages: contiguous bins of floor/ceil(n/stages) groups
    (8, 4, [0, 0, 1, 1, 2, 2, 3, 3]),
    (4, 4, [0, 1, 2, 3]),
    (2, 4, [1, 3]),  # fewer groups than stages: each in the stage holding its centre, stages 0 and 2 empty
    (3, 4, [0, 2, 3]),
    (5, 1, [0, 0, 0, 0, 0]),
])
def test_stage_rule(n, stages, expected):
    got = [stage_of(k, n, stages) for k in range(n)]
    assert got == expected
    assert got == sorted(got)  # contiguous in depth order
    if n >= stages:
        assert set(got) == set(range(stages))  # no stage left empty


def test_resnet20_stages_follow_depth_and_are_deterministic():
    graph = ChannelGraph(resnet20(), X32)
    mapping = stage_assignment(graph, graph.groups, 3)
    # ResNet-20's prunable groups are the 9 blocks' inner convs (the option-A stream is kept): 3 per stage
    assert mapping == {f"layer{s + 1}.{b}.conv1": s for s in range(3) for b in range(3)}
    again = ChannelGraph(resnet20(), X32)
    assert stage_assignment(again, list(reversed(again.groups)), 3) == mapping  # the listing order is irrelevant


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("stages", [1, 2, 4, 6])
def test_mapping_is_deterministic_and_respects_the_stage_count(net, stages):
    maps = []
    for _ in range(2):
        torch.manual_seed(0)
        graph = ChannelGraph(NETS[net]().eval(), example())
        maps.append(stage_assignment(graph, graph.groups, stages))
    assert maps[0] == maps[1]
    order = [g.name for g in graph.depth_order()]
    stages_in_depth_order = [maps[0][name] for name in order]
    assert stages_in_depth_order == [stage_of(k, len(order), stages) for k in range(len(order))]
    assert set(maps[0].values()) <= set(range(stages))
    assert len(set(maps[0].values())) == min(stages, len(order))  # as many stages used as groups allow


def test_concat_branches_are_ordered_by_depth_then_by_declaration():
    graph = ChannelGraph(NETS["concat"]().eval(), example())
    # branches a and b sit at the same depth (declared a first), the 1x1 conv mixing them after both
    assert [g.name for g in graph.depth_order()] == ["a", "b", "mix"]


# ----------------------------------------------------------------------------- each stage by its ratio
@pytest.mark.parametrize("global_pruning", [True, False])
@pytest.mark.parametrize("ratios", [(0.0, 0.25, 0.5), (0.6, 0.3, 0.0), (0.5, 0.5, 0.5)])
def test_each_stage_loses_its_ratio(ratios, global_pruning):
    graph = ChannelGraph(resnet20(), X32)
    sol = solve_for_target(graph, target="stage_ratios", value=ratios, round_to=None, global_pruning=global_pruning)
    info = sol.info()
    assert info["target"] == {"stage_ratios": list(ratios)} and info["within_tolerance"] is True
    assert info["stage_groups"] == [3, 3, 3] and info["empty_stages"] == []
    kept = dict(zip((g.name for g in sol.plan.groups), sol.kept))
    for name, stage in info["stage_of"].items():
        size = graph.group(name).size
        if ratios[stage] == 0:
            assert kept[name] == size  # a stage at 0 is kept whole
    # each stage loses its ratio of its channels, within one channel of its narrowest conv (16, 32, 64 wide)
    for got, want, width in zip(info["achieved_stage_ratios"], ratios, (16, 32, 64)):
        assert want <= got <= want + 1 / width + 1e-9  # rounding removes a channel more, never one less


def test_stage_ratios_of_the_engine_prune_the_live_model():
    model = resnet20()
    macs0 = count_macs(model, X32)
    out, info = prune_to_target(model, X32, stage_ratios=(0.5, 0.0, 0.0), round_to=None, global_pruning=False)
    assert out is model
    assert [model.layer1[b].conv1.out_channels for b in range(3)] == [8, 8, 8]
    assert [model.layer3[b].conv1.out_channels for b in range(3)] == [64, 64, 64]
    assert count_macs(model, X32) == info["macs"][1] < macs0
    # with stages the channel ratio is what was removed (24 of 336 channels): the report draws the widths
    assert info["channel_ratio"] == info["achieved"]["ratio"] == pytest.approx(24 / 336)


def test_fewer_groups_than_stages_leaves_stages_empty():
    graph = ChannelGraph(NETS["plain"]().eval(), example())
    sol = solve_for_target(graph, target="stage_ratios", value=(0.9, 0.5, 0.9, 0.25), round_to=None)
    info = sol.info()
    assert info["stage_of"] == {"conv1": 1, "conv2": 3}
    assert info["empty_stages"] == [0, 2] and info["stage_groups"] == [0, 1, 0, 1]
    assert info["achieved_stage_ratios"] == [None, 0.5, None, 0.25]


# ----------------------------------------------------------------------------- a MACs target
# Per-channel granularity on the tiny nets (16-32 channels: auto rounding to 8 would move the MACs in
# steps larger than 3 %), the engine's default rounding on ResNet-20.
@pytest.mark.parametrize("ratios", [(0.2, 0.5, 0.3, 0.6), (0.6, 0.4, 0.2, 0.1)])
@pytest.mark.parametrize("value", [0.4, 0.6])
@pytest.mark.parametrize("net", ["plain", "residual", "concat", "resnet20"])
def test_macs_target_within_3_percent(net, value, ratios):
    if net == "resnet20":
        model, x, kw = resnet20(), X32, {}
    else:
        torch.manual_seed(0)
        model, x, kw = NETS[net]().eval(), example(), {"round_to": None}
    macs0 = count_macs(model, x)
    _, info = prune_to_target(model, x, macs_fraction=value, stage_ratios=ratios, **kw)
    got = count_macs(model, x) / macs0
    assert abs(got - value) <= 0.03 * value, info
    assert info["within_tolerance"] is True and info["achieved"]["macs_fraction"] == pytest.approx(got)
    assert info["stage_ratios"] == list(ratios) and info["stage_scale"] > 0


def test_target_keeps_the_stage_weights():
    graph = ChannelGraph(resnet20(), X32)
    sol = solve_for_target(graph, target="macs_fraction", value=0.5, stage_ratios=(0.1, 0.3, 0.6))
    cut = sol.info()["achieved_stage_ratios"]
    assert cut[0] < cut[1] < cut[2]  # heavier weight, deeper cut
    zero = solve_for_target(graph, target="macs_fraction", value=0.6, stage_ratios=(0.0, 0.5, 0.5))
    first = {name for name, s in zero.info()["stage_of"].items() if s == 0}
    assert first and not first & {g.name for g in zero.selection}  # weight 0: the stage is never cut


@pytest.mark.parametrize("kw, message", [
    ({"stage_ratios": (0.2, 1.0)}, "stage_ratio_1 must be in [0, 1), but got stage_ratio_1=1.0"),
    ({"stage_ratios": ()}, "stage_ratios must be a non-empty list of numbers in [0, 1)"),
    ({"stage_ratios": (0.2,), "ratio": 0.3}, "give stage_ratios alone or with one of"),
    ({"stage_ratios": (0.0, 0.0), "macs_fraction": 0.5}, "stage_ratios must hold a positive ratio"),
])
def test_engine_rejects_bad_stage_ratios(kw, message):
    with pytest.raises(ConfigError) as ei:
        prune_to_target(NETS["plain"]().eval(), example(), **kw)
    assert message in str(ei.value) and "\n" not in str(ei.value)


def test_plan_without_stages_is_unchanged():
    graph = ChannelGraph(resnet20(), X32)
    plain, staged = ChannelPlan(graph), ChannelPlan(graph, stage_ratios=(0.5,))
    # one stage of weight 1/2 is the global ranking: search position 1/2 (scale 1) cuts it at 1/2
    assert staged.kept(0.5) == plain.kept(0.5) and plain.bins == [list(range(len(plain.groups)))]
    assert staged.kept(0.25) == plain.kept(0.5 * 0.25 / 0.75)  # scale r / (1 - r) times the weight


# ----------------------------------------------------------------------------- knobs and the space
def cfg_for(knobs: dict):
    return parse_config({"name": "s", "model": {"name": "small_cnn"}, "dataset": "digits",
                         "methods": {"magnitude": knobs}}, source="space.yaml")


def test_family_expands_into_stage_knobs_and_round_trips():
    cfg = cfg_for({"stage_ratios": {"stages": 4, "low": 0.0, "high": 0.8}, "macs_fraction": 0.5})
    space = define_by_run(cfg)
    dists = distributions(cfg, "magnitude")
    assert sorted(dists) == [f"magnitude.stage_ratio_{i}" for i in range(4)]
    assert all((d.low, d.high) == (0.0, 0.8) for d in dists.values())
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    spec = get_method("magnitude")
    seen = set()
    for _ in range(5):
        trial = study.ask()
        config = {**space(trial), **trial.params}
        method, knobs = knobs_from_config(config)
        assert method == "magnitude" and set(knobs) == {"macs_fraction"} | {f"stage_ratio_{i}" for i in range(4)}
        mcfg = spec.make_config(knobs, where="trial")
        assert mcfg.stage_ratios == tuple(trial.params[f"magnitude.stage_ratio_{i}"] for i in range(4))
        assert all(0.0 <= r <= 0.8 for r in mcfg.stage_ratios) and mcfg.macs_fraction == 0.5
        seen.add(mcfg.stage_ratios)
        study.tell(trial, 0.5)
    assert len(seen) == 5  # sampled, not constant


@pytest.mark.parametrize("knobs, fixed", [
    ({"stage_ratios": [0.1, 0.4]}, (0.1, 0.4)),
    ({"stage_ratio_0": 0.2, "stage_ratio_1": {"low": 0.1, "high": 0.3}}, None),  # a range per stage
])
def test_fixed_and_per_stage_entries(knobs, fixed):
    cfg = cfg_for(knobs)
    (consts, params) = _one_trial(cfg)
    _, values = knobs_from_config({**consts, **params})
    got = get_method("magnitude").make_config(values).stage_ratios
    assert len(got) == 2 and (fixed is None or got == fixed)
    if fixed is None:
        assert got[0] == 0.2 and 0.1 <= got[1] <= 0.3 and set(params) == {"magnitude.stage_ratio_1"}


def _one_trial(cfg):
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    return define_by_run(cfg)(trial), dict(trial.params)


@pytest.mark.parametrize("knobs, message", [
    ({"stage_ratios": {"stages": 0, "low": 0.0, "high": 0.8}},
     "stages must be an integer >= 1, but got stages=0 (space.yaml: methods.magnitude.stage_ratios)"),
    ({"stage_ratios": {"stages": 4, "low": 0.8, "high": 0.2}},
     "low must be < high, but got low=0.8, high=0.2 (space.yaml: methods.magnitude.stage_ratios)"),
    ({"stage_ratios": {"stages": 4, "low": 0.0, "high": 1.0}},
     "stage_ratios must be in [0, 1), but got stage_ratios=1.0 (space.yaml: methods.magnitude.stage_ratios.high)"),
    ({"stage_ratios": [0.2, 1.2]},
     "stage_ratio_1 must be in [0, 1), but got stage_ratio_1=1.2 (space.yaml: methods.magnitude.stage_ratios)"),
    ({"stage_ratio_0": -0.1},
     "stage_ratio_0 must be in [0, 1), but got stage_ratio_0=-0.1 (space.yaml: methods.magnitude.stage_ratio_0)"),
    ({"stage_ratios": {"low": 0.0, "high": 0.8}}, "stage_ratios must give stages"),
    ({"stage_ratio_1": 0.2}, "stage_ratio_<i> knobs must be numbered 0, 1, ... with none missing, but got "
                             "stage_ratio_1 (space.yaml: methods.magnitude)"),
    ({"stage_ratios": [0.1, 0.2], "stage_ratio_1": 0.3}, "each knob must be given once, but got stage_ratio_1"),
    ({"stage_ratios": [0.1], "ratio": 0.5}, "give only one of ratio, stage_ratios for method magnitude"),
])
def test_bad_space_is_one_config_error_line(knobs, message):
    with pytest.raises(ConfigError) as ei:
        cfg_for(knobs)
    assert message in str(ei.value) and "\n" not in str(ei.value)


def test_stage_knobs_from_a_trial_are_checked_in_make_config():
    spec = get_method("magnitude")
    with pytest.raises(ConfigError, match=r"stage_ratio_2 must be in \[0, 1\), but got stage_ratio_2=1.0 \(t.stage"):
        spec.make_config({"stage_ratio_0": 0.1, "stage_ratio_1": 0.1, "stage_ratio_2": 1.0}, where="t")
    with pytest.raises(ConfigError, match="give stage_ratios or its stage knobs, not both"):
        spec.make_config({"stage_ratios": [0.1], "stage_ratio_0": 0.1}, where="t")
    assert spec.make_config({"stage_ratios": "0.1, 0.3"}).stage_ratios == (0.1, 0.3)  # --knob stage_ratios=...


# ----------------------------------------------------------------------------- the magnitude method
@pytest.mark.parametrize("method, net", [("magnitude", "plain"), ("magnitude", "residual"), ("magnitude", "concat"),
                                         ("lnpt", "residual")])
def test_channel_methods_with_stage_ratios_and_a_macs_target(method, net):
    """Per-stage ratios as the weights of a MACs target, for every channel method that offers them (lnpt
    ranks by its label-free scores within the stages)."""
    spec = get_method(method)
    torch.manual_seed(0)
    model = NETS[net]().eval()
    macs0 = count_macs(model, example())
    extra = {"round_to": 1} if method == "magnitude" else {"epochs": 0}
    cfg = spec.make_config({"stage_ratio_0": 0.3, "stage_ratio_1": 0.6, "stage_ratio_2": 0.2,
                            "stage_ratio_3": 0.5, "macs_fraction": 0.5, **extra}, where="test")
    res = spec.prune(model, example(), cfg, make_ctx(model, method=method, labels=method == "magnitude"))
    got = count_macs(res.model, example()) / macs0
    assert abs(got - 0.5) <= 0.03 * 0.5
    assert res.info["target"] == {"macs_fraction": 0.5} and res.info["stage_ratios"] == [0.3, 0.6, 0.2, 0.5]
    assert res.info["channels"]["fc"] == 4


@pytest.mark.parametrize("ratios", [(0.0, 0.25, 0.5), (0.5, 0.0, 0.25)])
def test_lnpt_cuts_each_stage_by_its_ratio_with_its_label_free_scores(ratios):
    """lnpt with stage ratios alone: each depth stage of ResNet-20 loses its ratio of channels (rounding to
    x8 on groups >= 32 channels wide), a stage at 0 is kept whole; no label is read (labels stripped)."""
    spec = get_method("lnpt")
    model = resnet20()
    cfg = spec.make_config({f"stage_ratio_{i}": r for i, r in enumerate(ratios)} | {"epochs": 0}, where="test")
    res = spec.prune(model, X32, cfg, make_ctx(model, method="lnpt", labels=False, shape=(3, 32, 32)))
    info = res.info
    assert info["target"] == {"stage_ratios": list(ratios)} and info["stage_groups"] == [3, 3, 3]
    for got, want, unit in zip(info["achieved_stage_ratios"], ratios, (1 / 16, 8 / 32, 8 / 64)):
        assert (got == 0) if want == 0 else (want - 1e-9 <= got <= want + unit + 1e-9)
