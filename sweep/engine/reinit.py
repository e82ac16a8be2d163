"""Seeded re-initialisation of a module tree, in place: two schemes, one home.

- :func:`reinit_` — **Kaiming**, one explicit scheme whatever the layers' own defaults, for SR-init's
  block scoring and LNPT's ``init: random`` student.  Conv / linear weights: Kaiming normal (fan-in,
  ReLU gain: std = sqrt(2 / fan_in)), biases 0; BatchNorm: γ = 1, β = 0, running mean 0, running var 1;
  other modules with their own parameters are reset by their ``reset_parameters`` under the same seed.
  Device-independent: numbers are drawn on the CPU from a private generator.
- :func:`reset_parameters_` — **PyTorch's defaults**, where a method trains "from scratch" and the
  network should start as a freshly built one would (``cat``'s ``start: scratch``): every module's own
  ``reset_parameters`` (BatchNorm running statistics too), in module order, under the global RNG seeded
  with ``seed`` inside a fork (the caller's CPU RNG state is left as it was).  Draws on the parameters'
  device: call it on a CPU module for device-independent numbers.
"""

from __future__ import annotations

import math


def reinit_(module, seed: int) -> None:
    """Kaiming re-initialisation of every submodule of ``module`` in place, deterministic under ``seed``."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                w = m.weight
                fan_in = w[0].numel()
                if isinstance(m, nn.modules.conv._ConvTransposeNd):
                    fan_in = w.shape[0] * w[0][0].numel() // max(1, m.groups)
                std = math.sqrt(2.0 / max(1, fan_in))
                w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float32).mul_(std).to(w))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                if m.running_mean is not None:
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
                    if m.num_batches_tracked is not None:
                        m.num_batches_tracked.zero_()
            elif any(True for _ in m.parameters(recurse=False)) and hasattr(m, "reset_parameters"):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed))
                    m.reset_parameters()


def reset_parameters_(module, seed: int) -> None:
    """PyTorch's default initialisation of every submodule of ``module`` in place, under ``seed``.

    On a CPU module built from standard layers, the same numbers as building it afresh after
    ``torch.manual_seed(seed)``; a model whose constructor applies its own scheme (e.g. Kaiming in the
    CIFAR ResNets) gets the layers' defaults instead, not that scheme."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in module.modules():
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
            elif hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
