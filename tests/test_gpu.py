"""Fine-tuning and latency on a GPU (marked ``gpu``; skipped where CUDA is absent).

Latency on CUDA is timed with CUDA events (the GPU's own clock) and recorded with the GPU's name; a
fine-tune on ``cuda`` trains the model there.  On a CPU-only machine these skip, with the reason.
"""

from __future__ import annotations

import pytest
import torch

from tests.nets import NUM_CLASSES, SHAPE, PlainCNN

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")]


def test_latency_on_cuda_is_timed_by_events_and_names_the_gpu():
    from sweep.measure import compare_latency, measure_latency

    lat = measure_latency(PlainCNN(), SHAPE, batch=4, warmup=3, repeats=10, device="cuda", runtime="torch")
    assert lat.median_ms > 0 and lat.repeats == 10
    name = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    assert lat.device == name
    # side by side (a re-measurement, a latency budget judged beside the dense network): recorded alike
    both = compare_latency([PlainCNN(), PlainCNN()], SHAPE, batch=4, warmup=1, repeats=10, device="cuda",
                           runtime="torch")
    assert [b.device for b in both] == [name, name] and all(b.median_ms > 0 for b in both)


def test_finetuning_on_cuda_trains_there():
    from sweep.train import train

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, *SHAPE, generator=g), torch.randint(0, NUM_CLASSES, (64,), generator=g)
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = PlainCNN()
    losses = train(model, loader, epochs=2, lr=0.05, device="cuda")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert next(model.parameters()).device.type == "cuda"


def test_depth_and_width_plans_leave_a_cuda_model_on_cuda():
    """Plans and blocks are timed on copies on the CPU (as the latency table is): neither the model given
    nor the plan returned leaves the GPU."""
    from sweep.engine.depth_width import prune_depth_and_width
    from tests.nets import BlockNet

    torch.manual_seed(0)
    model = BlockNet().eval().cuda()
    x = torch.zeros(1, *SHAPE, device="cuda")
    pruned, info = prune_depth_and_width(model, x, macs_fraction=0.6, latency_kw={"runtime": "torch"})
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.device.type for p in pruned.parameters()} == {"cuda"}
    assert pruned(x).shape == model(x).shape and info["within_tolerance"]
