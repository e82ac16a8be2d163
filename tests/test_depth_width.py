"""Depth and width together (sweep.engine.depth_width): block order, the plan choice, the MACs target, and
magnitude's ``depth`` knob. Plan latencies are replaced by fixed figures where the choice is asserted
(timing on shared cores decides nothing a test can pin); one test times real plans and asserts only
what holds whatever the timing says."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from nets import NETS, example, make_ctx

import sweep.measure
from sweep.engine.channels import TOLERANCE, channel_counts
from sweep.engine.depth import removable_blocks, stage_depths
from sweep.engine.depth_width import MIN_GAIN, block_ms_per_mac, block_order, fastest_plan, prune_depth_and_width
from sweep.errors import ConfigError
from sweep.measure import Latency, count_macs
from sweep.methods import get_method
from sweep.models import build_model
from sweep.report.widths import trial_widths


def resnet20(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=16).eval(), torch.zeros(1, 3, 16, 16)


def plan(blocks, ms):
    return {"blocks": blocks, "latency_ms": ms}


@pytest.mark.parametrize("lats, want", [
    ([10.0, 8.0, 9.0], 1),  # blocks pay: the fastest
    ([10.0, 9.8, 9.9], 0),  # within MIN_GAIN of channel-only: noise, keep the channels
    ([10.0, 11.0, 12.0], 0),  # channel-only is fastest
    ([10.0], 0),  # one plan: kept untimed
])
def test_fastest_plan_takes_blocks_only_when_they_pay(lats, want):
    cands = [plan([] if i == 0 else [i], ms) for i, ms in enumerate(lats)]
    assert fastest_plan(cands) is cands[want]
    assert MIN_GAIN > 0.02  # 9.8 vs 10 is inside it


def test_block_order_lowest_bn_scale_first_and_deeper_first_on_ties():
    model, x = resnet20()
    refs = removable_blocks(model, x)
    removable = [r for r in refs if r.removable]
    # untrained: every gamma is 1, so deeper blocks go first
    assert block_order(model, refs) == sorted((r.index for r in removable), reverse=True)
    # a small gamma in the last BatchNorm of a shallow block puts it first
    shallow = removable[0]
    block = dict(model.named_modules())[shallow.name]
    bns = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        bns[-1].weight.fill_(0.01)
        bns[0].weight.fill_(5.0)  # the branch's first BN does not count
    assert block_order(model, refs)[0] == shallow.index


def test_block_order_divides_the_score_by_latency_per_mac():
    model, x = resnet20()
    refs = removable_blocks(model, x)
    removable = [r.index for r in refs if r.removable]
    slow = removable[0]  # the shallowest: last by score alone (equal scores, deeper first)
    cost = {i: (3.0 if i == slow else 1.0) for i in removable}
    assert block_order(model, refs, cost)[0] == slow
    # a score three times lower than the rest outweighs a cost 2.5 times higher
    deep = removable[-1]
    bn = [m for m in dict(model.named_modules())[refs[deep].name].modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():
        bn.weight.fill_(1 / 3.5)
    cost[slow] = 2.5
    assert block_order(model, refs, cost)[:2] == [deep, slow]


def test_block_costs_are_timed_once_per_kind_of_block(monkeypatch):
    model, x = resnet20()
    refs = removable_blocks(model, x)
    calls = []
    real = sweep.measure.measure_latency

    def counted(block, shape, **kw):
        calls.append(shape)
        return real(block, shape, **kw)

    monkeypatch.setattr(sweep.measure, "measure_latency", counted)
    per_mac = block_ms_per_mac(model, refs, x, {"runtime": "torch", "threads": 1})
    assert set(per_mac) == {r.index for r in refs if r.removable}
    assert len(calls) == 3  # ResNet-20: one kind of removable block per stage
    assert all(v > 0 for v in per_mac.values())


def fake_latency(ms_by_blocks):
    """A stand-in for compare_latency: each plan's latency from the number of blocks it lost."""
    def compare(models, input_shape, **kw):
        return [Latency(median_ms=ms_by_blocks(sum(stage_depths(m))), iqr_ms=0.0, batch=1, repeats=1, threads=1,
                        device="cpu", runtime="torch") for m in models]
    return compare


@pytest.mark.parametrize("fraction", [0.5, 0.7])
@pytest.mark.parametrize("depth_pays", [True, False])
def test_target_met_and_the_chosen_plan_returned(monkeypatch, fraction, depth_pays):
    model, x = resnet20()
    before = copy.deepcopy(model.state_dict())
    depths0 = sum(stage_depths(model))
    # depth pays: fewer blocks, faster; else every block removed costs time
    monkeypatch.setattr(sweep.measure, "compare_latency",
                        fake_latency(lambda n: float(n) if depth_pays else 100.0 - n))
    pruned, info = prune_depth_and_width(model, x, macs_fraction=fraction, latency_kw={"runtime": "torch"})
    got = count_macs(pruned, x) / count_macs(model, x)
    assert abs(got - fraction) <= fraction * TOLERANCE
    assert info["within_tolerance"] and info["achieved_macs_fraction"] == pytest.approx(got)
    d = info["depth"]
    assert [c["share"] for c in d["candidates"]][0] == 0.0 and d["candidates"][0]["blocks"] == []
    assert len(d["candidates"]) > 1  # ResNet-20 has removable blocks: plans with blocks were built
    lost = depths0 - sum(stage_depths(pruned))
    assert lost == len(d["blocks_removed"])
    # widths under the input's layer names, removed blocks as SR-init records them: the report lines them up
    widths0 = channel_counts(model)
    assert set(info["channels"]) <= set(widths0) and info["removed"] == sorted(info["removed"])
    assert all((b["delta"] is not None) == b["removable"] for b in info["blocks"])  # the report's bars
    json.dumps(info, allow_nan=False)
    gone = {b["name"] for b in info["blocks"] if b["removed"]}
    assert gone == set(d["blocks_removed"]) and len(info["removed"]) == lost
    assert set(widths0) - set(info["channels"]) == {k for k in widths0 if any(k.startswith(g + ".") for g in gone)}
    row = pd.Series({"trial_id": "t", "method": "magnitude", "info": json.dumps(info)})
    w = trial_widths(row, widths0)
    assert w.removed == set(widths0) - set(info["channels"])
    if depth_pays:
        assert lost == max(len(c["blocks"]) for c in d["candidates"]) > 0
    else:
        assert lost == 0 and d["share"] == 0.0
    # the model as given is untouched
    assert sum(stage_depths(model)) == depths0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert pruned(x).shape == model(x).shape


def test_net_without_removable_blocks_gets_the_channel_plan_untimed(monkeypatch):
    def never(*a, **k):
        raise AssertionError("a single plan must not be timed")

    monkeypatch.setattr(sweep.measure, "compare_latency", never)
    torch.manual_seed(0)
    model = NETS["plain"]().eval()
    pruned, info = prune_depth_and_width(model, example(), macs_fraction=0.5)
    assert [c["share"] for c in info["depth"]["candidates"]] == [0.0]
    assert info["depth"]["blocks_removed"] == [] and info["depth"]["candidates"][0]["latency_ms"] is None
    assert count_macs(pruned, example()) < count_macs(model, example())


def test_real_timing_picks_one_of_its_plans():
    model, x = resnet20()
    pruned, info = prune_depth_and_width(model, x, macs_fraction=0.5, importance="l2_latency",
                                         latency_kw={"runtime": "torch", "threads": 1})
    d = info["depth"]
    assert all(c["latency_ms"] > 0 for c in d["candidates"])
    chosen = [c for c in d["candidates"] if c["share"] == d["share"]]
    assert len(chosen) == 1 and chosen[0]["blocks"] == d["blocks_removed"]
    assert info["within_tolerance"]


@pytest.mark.parametrize("shares", [(), (0.5, 1.5), (-0.1,)])
def test_bad_shares_are_one_line_errors(shares):
    model, x = resnet20()
    with pytest.raises(ConfigError, match="depth shares must be in"):
        prune_depth_and_width(model, x, macs_fraction=0.5, shares=shares)


def test_magnitude_depth_needs_macs_fraction():
    spec = get_method("magnitude")
    with pytest.raises(ConfigError, match="depth needs macs_fraction for method magnitude"):
        spec.make_config({"depth": True})
    spec.make_config({"depth": True, "macs_fraction": 0.5})  # accepted
    # a space: the partner may be searched; without it, one line before any trial
    spec.parse_space({"depth": True, "macs_fraction": {"low": 0.3, "high": 0.7}}, "space")
    spec.parse_space({"depth": {"choices": [False, True]}, "macs_fraction": 0.5}, "space")
    for bad in ({"depth": True}, {"depth": {"choices": [False, True]}, "ratio": {"low": 0.2, "high": 0.5}}):
        with pytest.raises(ConfigError, match=r"depth needs macs_fraction .*\(space\)"):
            spec.parse_space(bad, "space")


def test_magnitude_depth_prunes_blocks_where_they_pay(monkeypatch):
    monkeypatch.setattr(sweep.measure, "compare_latency", fake_latency(float))
    spec = get_method("magnitude")
    torch.manual_seed(0)
    model = NETS["blocks"]().eval()
    ctx = make_ctx(model, method="magnitude")
    res = spec.prune(model, example(), spec.make_config({"depth": True, "macs_fraction": 0.6}), ctx)
    assert res.info["depth"]["blocks_removed"]
    assert sum(stage_depths(res.model)) < 3
    assert abs(res.info["achieved_macs_fraction"] - 0.6) <= 0.6 * TOLERANCE
