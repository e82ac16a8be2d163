"""MACs and skipped layers are functions of the architecture: counted / traced once per architecture and
process, and what is remembered equals a fresh count."""

from __future__ import annotations

import copy

import nets
import pytest
import torch
import torch_pruning as tp

from sweep import measure, trial
from sweep.config import parse_config
from sweep.engine.channels import prune_to_target


@pytest.fixture
def counted(monkeypatch):
    """Forget remembered counts; record each call of Torch-Pruning's counter."""
    monkeypatch.setattr(measure, "_MACS", type(measure._MACS)())
    calls = []
    real = tp.utils.count_ops_and_params

    def counting(model, example_inputs, *a, **kw):
        calls.append(model)
        return real(model, example_inputs, *a, **kw)

    monkeypatch.setattr(tp.utils, "count_ops_and_params", counting)
    return calls


def _strided(net: nets.PlainCNN) -> nets.PlainCNN:
    out = copy.deepcopy(net)
    first = next(m for m in out.modules() if isinstance(m, torch.nn.Conv2d))
    first.stride = (2, 2)
    return out


@pytest.mark.parametrize("change, same", [
    (lambda n: n, True),
    (lambda n: [p.data.normal_() for p in n.parameters()] and n, True),  # other weights: same architecture
    (lambda n: n.train(), True),  # count_macs counts in eval mode, whatever the mode it is given in
    (_strided, False),  # a setting (extra_repr) of one layer
    (lambda n: prune_to_target(n, nets.example(), ratio=0.5)[0], False),  # other shapes
])
def test_architecture_key_is_the_architecture_not_the_weights(change, same):
    net = nets.PlainCNN().eval()
    key = measure.architecture_key(net, nets.example())
    other = change(copy.deepcopy(net)).eval()
    assert (measure.architecture_key(other, nets.example()) == key) is same


def test_the_input_shape_is_part_of_the_key():
    net = nets.PlainCNN().eval()
    assert measure.architecture_key(net, nets.example()) != measure.architecture_key(net, torch.randn(2, 3, 16, 16))


def test_each_architecture_is_counted_once_and_remembered_counts_equal_fresh_ones(counted):
    dense = nets.PlainCNN().eval()
    first = measure.count_macs(dense, nets.example())
    again = copy.deepcopy(dense)
    for p in again.parameters():
        p.data.mul_(3.0)
    assert measure.count_macs(again, nets.example()) == first
    assert len(counted) == 1
    pruned, _ = prune_to_target(copy.deepcopy(dense), nets.example(), ratio=0.5)
    calls = len(counted)
    remembered = measure.count_macs(pruned, nets.example())
    assert len(counted) == calls  # prune_to_target counted the pruned net already
    fresh, _ = tp.utils.count_ops_and_params(copy.deepcopy(pruned).eval(), nets.example())
    assert remembered == int(fresh) < first
    assert dense.training is False and pruned.training is False


def test_count_macs_leaves_the_training_mode_as_given(counted):
    net = nets.PlainCNN().train()
    measure.count_macs(net, nets.example())
    measure.count_macs(net, nets.example())  # remembered: same promise
    assert net.training and len(counted) == 1


def test_skipped_layers_are_traced_once_per_architecture_and_are_the_given_models_modules(monkeypatch):
    from sweep.engine import trace as trace_mod

    cfg = parse_config({"name": "t", "model": {"name": "small_cnn"},
                        "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8]},
                        "search": {"trials": 1}, "methods": {"magnitude": {"ratio": 0.5}}}, source="t.yaml")
    monkeypatch.setattr(trial, "_SKIPPED", {})
    traces = []
    real = trace_mod.trace
    monkeypatch.setattr(trace_mod, "trace", lambda *a, **kw: traces.append(1) or real(*a, **kw))
    from sweep.models import build_model

    nets_ = [build_model("small_cnn", num_classes=3, in_channels=1, input_size=8).eval() for _ in range(2)]
    x = torch.randn(1, 1, 8, 8)
    first, second = (trial.skipped_layers(cfg, n, x) for n in nets_)
    assert len(traces) == 1 and first
    names = [dict((id(m), k) for k, m in n.named_modules()) for n in nets_]
    assert [names[0][id(m)] for m in first] == [names[1][id(m)] for m in second]
    assert all(any(m is o for o in nets_[1].modules()) for m in second)


# ------------------------------------------------------------------------------- the ONNX graph to time
@pytest.fixture
def traced(monkeypatch):
    """Forget remembered graphs; record each trace of the ONNX exporter."""
    monkeypatch.setattr(measure, "_ONNX", type(measure._ONNX)())
    calls = []
    real = torch.onnx.export

    def tracing(model, *a, **kw):
        calls.append(model)
        return real(model, *a, **kw)

    monkeypatch.setattr(torch.onnx, "export", tracing)
    return calls


def _trained_like(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``net`` with every parameter and BatchNorm statistic drawn afresh: no two tensors equal, as after training."""
    out = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in out.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + (0.5 if "running_var" in name else -0.5))
    return out.eval()


def _ort_outputs(onnx_model: bytes, x: torch.Tensor):
    sess = measure.ort_session(onnx_model, threads=1)
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def test_a_graph_to_time_is_traced_once_per_architecture_and_carries_each_models_own_weights(traced):
    x = torch.randn(1, 3, 16, 16)
    a, b = _trained_like(nets.PlainCNN(), 1), _trained_like(nets.PlainCNN(), 2)
    ga = measure.export_onnx(a, x, remember=True)
    gb = measure.export_onnx(b, x, remember=True)
    assert len(traced) == 1  # b has a's architecture: a's graph with b's weights
    with torch.no_grad():
        for model, graph in ((a, ga), (b, gb)):
            assert torch.allclose(_ort_outputs(graph, x), model(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(a(x), b(x), atol=1e-3)
    measure.export_onnx(_strided(b), x, remember=True)  # another architecture
    measure.export_onnx(b, torch.randn(2, 3, 16, 16), remember=True)  # another input shape
    measure.export_onnx(b, x)  # a graph to keep (sweep select's file): traced, constants folded
    assert len(traced) == 4


def test_a_graph_is_not_remembered_when_one_initializer_stands_for_several_tensors(traced):
    x = torch.randn(1, 3, 16, 16)
    fresh = nets.PlainCNN().eval()  # BatchNorm weights all ones: the exporter keeps one tensor for them
    measure.export_onnx(fresh, x, remember=True)
    measure.export_onnx(_trained_like(fresh, 3), x, remember=True)
    assert len(traced) == 2 and len(measure._ONNX) == 1


def test_a_remembered_graph_that_does_not_fit_is_forgotten_and_the_model_traced_afresh(traced):
    x = torch.randn(1, 3, 16, 16)
    a = _trained_like(nets.PlainCNN(), 4)
    measure.export_onnx(a, x, remember=True)
    key = next(iter(measure._ONNX))
    other = _trained_like(_strided(nets.PlainCNN()), 5)
    measure._ONNX[key] = measure.export_onnx(other, x, remember=True)  # a wrong graph under a's key
    graph = measure.export_onnx(a, x, remember=True)
    with torch.no_grad():
        assert torch.allclose(_ort_outputs(graph, x), a(x), atol=1e-4, rtol=1e-4)
    assert len(traced) == 3 and measure._ONNX[key] == graph  # traced again, and remembered right


@pytest.fixture
def sessions(monkeypatch):
    """Each ONNX Runtime session made, with its intra-op threads."""
    made = []
    real = measure.ort_session

    def making(onnx_model, threads, device="cpu"):
        made.append(threads)
        return real(onnx_model, threads, device)

    monkeypatch.setattr(measure, "ort_session", making)
    monkeypatch.setattr(measure, "_CHECKED", {})
    return made


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("remembered", [False, True])
def test_a_latency_on_onnxruntime_loads_its_graph_into_one_session_the_checked_one(sessions, threads, remembered):
    net = _trained_like(nets.PlainCNN(), 6)
    if remembered:  # its architecture's graph already traced: the remembered graph with its weights
        measure.export_onnx(_trained_like(nets.PlainCNN(), 7), torch.randn(1, 3, 16, 16), remember=True)
        sessions.clear()
    lat = measure.measure_latency(net, (3, 16, 16), warmup=1, repeats=2, threads=threads, runtime="onnxruntime")
    assert sessions == [threads] and lat.threads == threads and measure._CHECKED == {}


def test_a_checked_session_serves_only_its_own_graph_threads_and_device(sessions):
    x = torch.randn(1, 3, 16, 16)
    graph = measure.export_onnx(_trained_like(nets.PlainCNN(), 8), x, threads=1)
    assert measure._checked_session(graph[:1] + graph[1:], 1, "cpu") is None  # equal bytes, another object
    assert measure._checked_session(graph, 2, "cpu") is None
    assert measure._checked_session(graph, 1, "cuda:0") is None
    sess = measure._checked_session(graph, 1, "cpu")
    assert sess is not None and measure._checked_session(graph, 1, "cpu") is None  # handed out once
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), _ort_outputs(graph, x), atol=1e-5)


def test_a_failed_check_keeps_no_session(sessions):
    x = torch.randn(1, 3, 16, 16)
    good = measure.export_onnx(_trained_like(nets.PlainCNN(), 9), x)
    with pytest.raises(ValueError, match="outputs differ"):
        measure._check_export(_trained_like(nets.PlainCNN(), 10), x, good)  # another network's weights
    assert measure._CHECKED == {}
