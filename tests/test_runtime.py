"""Latency on the deployment runtime (``measure.runtime``): ONNX export equal to the torch model, ORT
latency recorded with its runtime, version and thread count, and the YAML's validation. Timing values
never enter an assertion: only what is recorded with them."""

from __future__ import annotations

import copy

import nets
import numpy as np
import pytest
import torch

from sweep import measure
from sweep.config import parse_config
from sweep.engine.channels import prune_to_target
from sweep.errors import ConfigError

ort = pytest.importorskip("onnxruntime")

SPACE = {
    "name": "rt",
    "model": {"name": "small_cnn"},
    "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 48,
                "n_val": 24, "n_test": 24},
    "baseline": {"epochs": 1, "lr": 0.05},
    "finetune": {"epochs": 0, "lr": 0.01},
    "search": {"trials": 1, "objectives": ["accuracy", "latency_ms"]},
    "measure": {"repeats": 3, "warmup": 1, "threads": 1},
    "methods": {"magnitude": {"ratio": 0.5}},
}


def pruned(net_cls):
    torch.manual_seed(0)
    model = net_cls().eval()
    prune_to_target(model, nets.example(), ratio=0.5)
    return model.eval()


@pytest.mark.parametrize("net_cls", [nets.PlainCNN, nets.ResidualNet, nets.ConcatNet])
def test_pruned_model_runs_the_same_on_onnxruntime(net_cls):
    model = pruned(net_cls)
    x = torch.randn(4, *nets.SHAPE)
    onnx_model = measure.export_onnx(model, x)
    sess = measure.ort_session(onnx_model, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ort_latency_records_runtime_version_and_threads():
    model = pruned(nets.ResidualNet)
    lat = measure.measure_latency(model, nets.SHAPE, batch=2, warmup=1, repeats=3, threads=1,
                                  runtime="onnxruntime")
    assert lat.runtime == f"onnxruntime {ort.__version__}"
    assert lat.threads == 1 and lat.batch == 2 and lat.repeats == 3 and lat.device == "cpu"
    assert lat.median_ms > 0 and lat.iqr_ms >= 0
    eager = measure.measure_latency(model, nets.SHAPE, warmup=1, repeats=3, threads=1, runtime="torch")
    assert eager.runtime == f"torch {torch.__version__}"


def test_a_latency_put_on_another_scale_keeps_what_was_timed_with_it():
    lat = measure.Latency(0.4, 0.08, 2, 5, 1, "cpu", "onnxruntime 1.0")
    half = lat.scaled(0.5)
    assert (half.median_ms, half.iqr_ms) == pytest.approx((0.2, 0.04))
    assert (half.batch, half.repeats, half.threads, half.device, half.runtime) == (2, 5, 1, "cpu", "onnxruntime 1.0")
    assert lat.median_ms == 0.4  # a new figure: the timing itself is left as it was


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_kept_runner_is_made_once_per_key_and_times_the_network_as_it_was(runtime, monkeypatch):
    monkeypatch.setattr(measure, "_KEPT_RUNNERS", type(measure._KEPT_RUNNERS)())
    net = pruned(nets.PlainCNN)
    kw = dict(batch=1, threads=1, runtime=runtime)
    first = measure.kept_runner("a", net, nets.SHAPE, **kw)
    assert measure.kept_runner("a", None, nets.SHAPE, **kw) is first  # kept: the network is not read again
    assert measure.kept_runner("a", net, nets.SHAPE, batch=2, threads=1, runtime=runtime) is not first
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()  # the caller's network changes after: the kept runner times the one it was made of
    with torch.inference_mode():
        assert torch.count_nonzero(torch.as_tensor(np.asarray(first.run()))) > 0
    for key in "bc":
        measure.kept_runner(key, net, nets.SHAPE, **kw)
    assert len(measure._KEPT_RUNNERS) == measure.KEPT_RUNNERS  # the least recently used went
    assert measure.kept_runner("a", net, nets.SHAPE, **kw) is not first
    out = measure.compare_latency([first, net], nets.SHAPE, warmup=1, repeats=4, rounds=2, threads=1, runtime=runtime)
    assert [r.runtime.split()[0] for r in out] == [runtime, runtime] and all(r.repeats == 4 for r in out)


def test_compare_latency_times_every_model_on_one_runtime():
    a, b = pruned(nets.PlainCNN), copy.deepcopy(nets.PlainCNN()).eval()
    out = measure.compare_latency([a, b], nets.SHAPE, warmup=1, repeats=4, rounds=2, threads=1,
                                  runtime="onnxruntime")
    assert [r.runtime.split()[0] for r in out] == ["onnxruntime", "onnxruntime"]
    assert all(r.repeats == 4 and r.threads == 1 for r in out)


def test_the_baseline_record_carries_the_runtime(tmp_path):
    from sweep.folder import SweepFolder
    from sweep.trial import prepare_baseline

    cfg = parse_config(SPACE, source="rt.yaml")
    assert cfg.measure.runtime == "onnxruntime"  # the default on a CPU with onnxruntime installed
    rec = prepare_baseline(cfg, SweepFolder(tmp_path), log=lambda m: None)
    assert rec.latency_runtime == f"onnxruntime {ort.__version__}" and rec.threads == 1
    assert SweepFolder(tmp_path).baseline()["latency"]["runtime"] == rec.latency_runtime


def space(**measure_keys):
    return {**SPACE, "measure": {**SPACE["measure"], **measure_keys}}


def test_runtime_is_validated_in_one_line():
    with pytest.raises(ConfigError) as e:
        parse_config(space(runtime="tensorrt"), source="s.yaml")
    msg = str(e.value)
    assert msg == ("runtime must be one of torch, onnxruntime, torch_compile, but got runtime='tensorrt' "
                   "(s.yaml: measure.runtime)")
    assert parse_config(space(runtime="torch"), source="s.yaml").measure.runtime == "torch"
    assert parse_config(space(runtime="torch_compile"), source="s.yaml").measure.runtime == "torch_compile"


def test_cuda_defaults_to_torch_and_onnxruntime_there_needs_its_gpu_build():
    assert parse_config(space(device="cuda"), source="s.yaml").measure.runtime == "torch"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ConfigError, match=r"needs onnxruntime-gpu .* \(s.yaml: measure.runtime\)"):
        parse_config(space(device="cuda", runtime="onnxruntime"), source="s.yaml")


def test_without_onnxruntime_the_default_falls_back_to_torch_once(monkeypatch):
    said = []
    monkeypatch.setattr(measure, "onnxruntime_available", lambda: False)
    monkeypatch.setattr(measure, "_FALLBACK_SAID", False)
    assert measure.default_runtime("cpu", say=said.append) == "torch"
    assert measure.default_runtime("cpu", say=said.append) == "torch"
    assert len(said) == 1 and "onnxruntime is not installed" in said[0] and "measure.runtime: torch" in said[0]
    with pytest.raises(ConfigError, match="needs the onnxruntime package"):
        parse_config(space(runtime="onnxruntime"), source="s.yaml")


def test_an_export_that_is_not_the_model_is_a_one_line_error():
    class Noisy(torch.nn.Module):
        """Its output is not a function of its input: no exported graph can match it on a fresh input."""

        def forward(self, x):
            return x + torch.rand_like(x)

    with pytest.raises(ConfigError, match="needs an ONNX export of the model, but .*outputs differ") as e:
        measure.export_onnx(Noisy(), torch.randn(1, 3))
    assert "\n" not in str(e.value)


def test_latency_table_is_timed_on_the_runtime():
    from torch import nn

    from sweep.engine import latency as lat

    conv = lat.LayerShape(nn.Conv2d, tuple(sorted({
        "in_channels": 4, "out_channels": 6, "kernel_size": (3, 3), "stride": (1, 1), "padding": (1, 1),
        "dilation": (1, 1), "groups": 1, "bias": False}.items())), (4, 7, 7))
    on_ort = lat.LatencyLUT(batch=1, threads=1, warmup=1, repeats=2, rounds=1, runtime="onnxruntime")
    on_torch = lat.LatencyLUT(batch=1, threads=1, warmup=1, repeats=2, rounds=1, runtime="torch")
    assert on_ort[conv] > 0 and on_torch[conv] > 0
    assert on_ort.measured == 1 and on_torch.measured == 1  # one entry per runtime: neither reused the other's
    # ONNX Runtime folds BatchNorm into the conv before it: the table prices BN only on eager torch
    assert nn.BatchNorm2d not in on_ort.timed_types and nn.modules.batchnorm._BatchNorm in on_torch.timed_types
    assert lat.LatencyLUT(batch=1).runtime == "onnxruntime"  # the CPU default, as measure.runtime's


def test_latency_aware_pruning_builds_its_table_on_the_given_runtime():
    torch.manual_seed(0)
    model = nets.ResidualNet().eval()
    _, info = prune_to_target(model, nets.example(), ratio=0.3, importance="l2_latency",
                              latency_kw={"threads": 1, "runtime": "onnxruntime"})
    assert info["importance"] == "l2_latency" and info["latency_ms_per_channel"]
    assert all(v > 0 for v in info["latency_ms_per_channel"].values())


@pytest.mark.slow
def test_torch_compile_runtime_times_the_compiled_model():
    lat = measure.measure_latency(nets.PlainCNN().eval(), nets.SHAPE, warmup=1, repeats=3, threads=1,
                                  runtime="torch_compile")
    assert lat.runtime == f"torch_compile {torch.__version__} (inductor)" and lat.threads == 1


@pytest.mark.parametrize("cls, kw, input_shape", [
    ("Conv2d", {"in_channels": 6, "out_channels": 8, "kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1),
                "dilation": (1, 1), "groups": 2, "bias": True}, (6, 9, 9)),
    ("Conv2d", {"in_channels": 4, "out_channels": 4, "kernel_size": (3, 3), "stride": (1, 1), "padding": "same",
                "dilation": (2, 2), "groups": 4, "bias": False}, (4, 7, 7)),
    ("Conv1d", {"in_channels": 3, "out_channels": 5, "kernel_size": (5,), "stride": (1,), "padding": (2,),
                "dilation": (1,), "groups": 1, "bias": False}, (3, 11)),
    ("Linear", {"in_features": 12, "out_features": 7, "bias": True}, (12,)),
    ("Linear", {"in_features": 12, "out_features": 7, "bias": False}, (3, 12)),
])
def test_table_layers_written_as_onnx_compute_the_layer(cls, kw, input_shape):
    from torch import nn

    from sweep.engine.latency import LayerShape, onnx_layer

    shape = LayerShape(getattr(nn, cls), tuple(sorted(kw.items())), input_shape)
    x = torch.randn(2, *input_shape)
    sess = measure.ort_session(onnx_layer(shape, batch=2), threads=1)
    with torch.no_grad():
        want = shape.build()(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-6)
