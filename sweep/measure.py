"""Measurement, in one place: accuracy, params, MACs and latency.

Latency follows the usual protocol: warm-up runs, then many timed repeats under
``torch.inference_mode``; the median and the inter-quartile range are reported together with the
batch size, thread count and device, because a latency figure means nothing without them.

A network whose outputs are not finite (diverged in fine-tuning, or broken by a pruning step) is a
failed trial: :func:`accuracy` and :func:`agreement` check the logits they compute anyway and raise
:class:`~sweep.errors.TrialFailure` ("diverged: ..."), with no extra forward pass.  (Accuracy itself is a
ratio of counts, always finite: a check on it could never fire.)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from .errors import TrialFailure


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


def check_finite(logits, where: str) -> None:
    """Raise :class:`TrialFailure` ("diverged: ...") when ``logits`` hold a NaN or an infinity."""
    import torch

    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        raise TrialFailure(f"diverged: the network outputs non-finite values ({int(bad.sum())} of "
                           f"{bad.numel()} logits in a batch of {logits.shape[0]}, {where})")


def accuracy(model, loader, device: str = "cpu") -> float:
    """Top-1 accuracy in eval mode; labels are only read here, for reporting and validation."""
    import torch

    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            logits = model(x.to(device))
            check_finite(logits, "measuring accuracy")
            pred = logits.argmax(dim=1)
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
            logits = model(x)
            check_finite(logits, "measuring agreement")
            same += int((logits.argmax(1) == teacher(x).argmax(1)).sum())
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


def compare_latency(models, input_shape, *, batch: int = 1, warmup: int = 10, repeats: int = 50,
                    threads: int | None = None, device: str = "cpu", rounds: int = 5) -> list[Latency]:
    """Latency of several models measured side by side: their timed runs are interleaved in
    ``rounds`` rounds (A, B, A, B, ...), so drift and load changes on the machine hit all of them
    alike and their ratio is honest even when each figure alone is noisy."""
    import torch

    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, *input_shape, device=device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        models = [m.to(device).eval() for m in models]
        times: list[list[float]] = [[] for _ in models]
        per_round = max(1, repeats // rounds)
        with torch.inference_mode():
            for m in models:
                for _ in range(warmup):
                    m(x)
            sync()
            for _ in range(rounds):
                for i, m in enumerate(models):
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        m(x)
                        sync()
                        times[i].append((time.perf_counter() - t0) * 1e3)
        out = []
        for t in times:
            q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0], t[0], t[0]]
            out.append(Latency(median_ms=statistics.median(t), iqr_ms=q[2] - q[0], batch=batch,
                               repeats=len(t), threads=torch.get_num_threads(), device=device))
        return out
    finally:
        torch.set_num_threads(prev_threads)
