"""Measurement, in one place: accuracy, params, MACs and latency.

Latency follows the usual protocol: warm-up runs, then many timed repeats under
``torch.inference_mode``; the median and the inter-quartile range are reported together with the
batch size, thread count and device, because a latency figure means nothing without them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, asdict


@dataclass(frozen=True)
class Latency:
    median_ms: float
    iqr_ms: float
    batch: int
    repeats: int
    threads: int
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model, example_inputs) -> int:
    """MACs of one forward pass (Torch-Pruning's counter, which works on a copy)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs)


def accuracy(model, loader, device: str = "cpu") -> float:
    """Top-1 accuracy in eval mode; labels are only read here, for reporting and validation."""
    import torch

    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            pred = model(x.to(device)).argmax(dim=1)
            correct += int((pred.cpu() == y).sum())
            total += int(y.numel())
    if total == 0:
        raise ValueError("cannot measure accuracy on an empty split")
    return correct / total


def agreement(model, teacher, loader, device: str = "cpu") -> float:
    """Top-1 agreement with the teacher on unlabeled batches (reads ``batch[0]`` only): the
    label-free quality proxy that label-free sweeps search and select on."""
    import torch

    model.eval()
    teacher.eval()
    same = total = 0
    with torch.inference_mode():
        for batch in loader:
            x = batch[0].to(device)
            same += int((model(x).argmax(1) == teacher(x).argmax(1)).sum())
            total += x.shape[0]
    if total == 0:
        raise ValueError("cannot measure agreement on an empty split")
    return same / total


def measure_latency(model, input_shape, *, batch: int = 1, warmup: int = 10, repeats: int = 50,
                    threads: int | None = None, device: str = "cpu") -> Latency:
    """Median and IQR of the forward time of ``model`` on a random batch."""
    import torch

    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = model.to(device).eval()
        x = torch.randn(batch, *input_shape, device=device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        times = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            sync()
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
        q = statistics.quantiles(times, n=4)
        return Latency(median_ms=statistics.median(times), iqr_ms=q[2] - q[0], batch=batch,
                       repeats=repeats, threads=torch.get_num_threads(), device=device)
    finally:
        torch.set_num_threads(prev_threads)
