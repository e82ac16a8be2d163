"""The method contract, run against every registered method on the tiny nets of ``nets.py``.

Plain CNN, residual net (identity-shortcut add), concatenation net (two conv branches joined by
torch.cat, then a 1x1 conv) and a stage of residual blocks: each method must keep the net runnable with
the same output shape, never grow it, be deterministic under a seed and reject out-of-range knobs with
a ConfigError.  Contexts come from the runner's factory (``nets.make_ctx``).
"""

from __future__ import annotations

import math

import pytest
import torch
from nets import NETS, NUM_CLASSES, PlainCNN, example, make_ctx, probe

from sweep.engine.channels import channel_counts
from sweep.engine.skip import skipped_layers
from sweep.errors import ConfigError, RegistryError, TrialFailure
from sweep.measure import count_macs, count_params
from sweep.methods import METHODS, PruneResult, get_method, register_method


class NotApplicable(Exception):
    pass


def run_method(method: str, net: str, seed: int = 0, values: dict | None = None):
    """Build the net under ``seed``, prune it with ``method`` at ``values`` (default config).

    A method that cannot apply to an architecture (e.g. depth pruning on a net without residual
    blocks) must say so with a TrialFailure naming the model class — a failed trial row, not a crash;
    that is checked here and reported as ``NotApplicable``.
    """
    spec = get_method(method)
    torch.manual_seed(seed)
    model = NETS[net]().eval()
    before = (count_params(model), count_macs(model, example()))
    ctx = make_ctx(model, method=method, seed=seed)
    torch.manual_seed(seed)
    try:
        res = spec.prune(model, example(), spec.make_config(values or {}), ctx)
    except TrialFailure as e:
        assert type(model).__name__ in str(e), f"{method} on {net}: the failure must name the model: {e}"
        raise NotApplicable(str(e)) from None
    return res, before, ctx


ALL = METHODS.names()

# The only (method, net) pairs where a method may refuse: depth pruning needs residual blocks with an
# identity shortcut inside an nn.Sequential stage, which only BlockNet has.  Any other refusal fails.
NOT_APPLICABLE = {("sr_init", "plain"), ("sr_init", "residual"), ("sr_init", "concat")}


def run_applicable(method: str, net: str, seed: int = 0):
    """``run_method``, or None where the pair is pinned as not applicable (and it did refuse)."""
    if (method, net) in NOT_APPLICABLE:
        with pytest.raises(NotApplicable):
            run_method(method, net, seed)
        return None
    return run_method(method, net, seed)


@pytest.fixture(scope="module", autouse=True)
def _warm_up():
    """Pay the one-off imports (torch_pruning, the optimiser) outside the timed tests."""
    model = PlainCNN()
    count_macs(model, example())
    make_ctx(model, method="magnitude").finetune(model, 1)


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("method", ALL)
def test_forward_shape_and_size(method, net):
    ran = run_applicable(method, net)
    if ran is None:
        return
    res, (params0, macs0), ctx = ran
    assert isinstance(res, PruneResult)
    model = res.model.eval()
    with torch.no_grad():
        out = model(probe())
    assert out.shape == (5, NUM_CLASSES)
    assert torch.isfinite(out).all()
    params1, macs1 = count_params(model), count_macs(model, example())
    assert params1 <= params0 and macs1 <= macs0
    if method == "magnitude":  # default ratio 0.5: strictly smaller
        assert params1 < params0 and macs1 < macs0
    # the info is a JSON-able dict and the pruned net still trains (finite loss)
    import json

    json.dumps(res.info, default=str)
    if not res.finetuned:
        losses = ctx.finetune(model, 1)
        assert len(losses) == 1 and math.isfinite(losses[0])
    assert 0.0 <= ctx.evaluate(model) <= 1.0


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("method", ALL)
def test_deterministic_under_seed(method, net):
    ran = run_applicable(method, net, seed=7)
    if ran is None:
        return
    a = ran[0]
    b, _, _ = run_method(method, net, seed=7)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    assert {k: tuple(v.shape) for k, v in sa.items()} == {k: tuple(v.shape) for k, v in sb.items()}
    a.model.eval(), b.model.eval()
    with torch.no_grad():
        assert torch.equal(a.model(probe()), b.model(probe()))


def test_not_applicable_pairs_name_registered_methods_and_nets():
    assert {m for m, _ in NOT_APPLICABLE} <= set(ALL) and {n for _, n in NOT_APPLICABLE} <= set(NETS)


@pytest.mark.parametrize("method", ALL)
def test_every_method_applies_to_a_residual_block_net(method):
    res, (params0, macs0), _ = run_method(method, "blocks")
    assert count_macs(res.model, example()) <= macs0


@pytest.mark.parametrize("method", ALL)
def test_out_of_range_knobs_raise_config_error(method):
    spec = get_method(method)
    bounded = [k for k in spec.knobs if k.kind == "float" and (k.low is not None or k.high is not None)]
    for k in bounded:
        bad = []
        if k.high is not None:
            bad.append(k.high + 0.5)
            if k.high_open:
                bad.append(k.high)
        if k.low is not None:
            bad.append(k.low - 0.5)
            if k.low_open:
                bad.append(k.low)
        for v in bad:
            with pytest.raises(ConfigError) as ei:
                spec.make_config({k.name: v}, where=f"test: {method}")
            msg = str(ei.value)
            assert f"{k.name}=" in msg and f"test: {method}.{k.name}" in msg, msg


@pytest.mark.parametrize("method", ALL)
def test_unknown_knob_raises(method):
    with pytest.raises(ConfigError, match="unknown knob"):
        get_method(method).make_config({"no_such_knob": 1})


@pytest.mark.parametrize("method", ALL)
def test_default_config_is_valid_and_frozen(method):
    spec = get_method(method)
    cfg = spec.make_config({})
    assert set(cfg) == {k.name for k in spec.knobs}
    with pytest.raises(AttributeError):
        cfg.ratio = 0.1  # frozen, whatever the knob


# ----------------------------------------------------------------------------- registry
def test_duplicate_method_name_raises():
    existing = ALL[0]
    with pytest.raises(RegistryError, match=f"'{existing}' is already registered"):
        register_method(existing, knobs=[])(lambda *a: None)
    assert METHODS.names() == ALL  # nothing was replaced or added


def test_unknown_method_lists_valid_names():
    with pytest.raises(RegistryError) as ei:
        get_method("no-such-method", where="x.yaml: methods.no-such-method")
    msg = str(ei.value)
    assert "'no-such-method'" in msg and "x.yaml: methods.no-such-method" in msg
    for name in ALL:
        assert name in msg


# ----------------------------------------------------------------------------- magnitude specifics
def test_magnitude_macs_fraction_hits_target():
    res, (_, macs0), _ = run_method("magnitude", "plain", values={"macs_fraction": 0.5})
    macs1 = count_macs(res.model, example())
    assert abs(macs1 / macs0 - 0.5) <= 0.05 * 0.5
    info = res.info
    assert info["target_macs_fraction"] == 0.5
    assert info["achieved_macs_fraction"] == pytest.approx(macs1 / macs0)
    assert 0.0 < info["channel_ratio"] < 0.9
    assert "channels" in info


@pytest.mark.parametrize("values", [
    {"ratio": 0.5},
    {"macs_fraction": 0.5},  # bisection prunes copies: the copies' heads must stay ignored too
])
@pytest.mark.parametrize("net", sorted(NETS))
def test_magnitude_ignored_head_keeps_out_features(net, values):
    res, _, _ = run_method("magnitude", net, values=values)
    assert res.model.fc.out_features == NUM_CLASSES
    assert res.info["channels"]["fc"] == NUM_CLASSES
    with torch.no_grad():
        assert res.model.eval()(probe()).shape == (5, NUM_CLASSES)


def test_magnitude_explicit_ignored_layer_keeps_its_channels():
    spec = get_method("magnitude")
    torch.manual_seed(0)
    model = PlainCNN()
    ctx = make_ctx(model, method="magnitude", ignored=[model.conv1, model.fc])
    res = spec.prune(model, example(), spec.make_config({"ratio": 0.5}), ctx)
    assert res.model.conv1.out_channels == 16
    assert res.model.conv2.out_channels < 32
    assert res.info["channel_ratio"] == 0.5


def test_magnitude_round_to_keeps_multiples():
    res, _, _ = run_method("magnitude", "plain", values={"ratio": 0.4, "round_to": 4})
    counts = channel_counts(res.model)
    assert counts["conv1"] % 4 == 0 and counts["conv2"] % 4 == 0
    assert counts["conv2"] < 32


def test_skipped_layers_of_cifar_resnet20_and_pruning():
    from sweep.models import build_model

    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10, in_channels=1, input_size=16)
    x = torch.zeros(1, 1, 16, 16)
    ignored = skipped_layers(model, x)
    assert any(m is model.conv1 for m in ignored)
    assert any(m is model.fc for m in ignored)
    params0 = count_params(model)
    spec = get_method("magnitude")
    ctx = make_ctx(model, method="magnitude", shape=(1, 16, 16), num_classes=10, ignored=ignored)
    res = spec.prune(model, x, spec.make_config({"ratio": 0.5}), ctx)
    m = res.model.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert count_params(m) < params0
    assert m.conv1.out_channels == 16 and m.fc.out_features == 10
    assert m.layer1[0].conv1.out_channels < 16  # inner block channels were pruned
