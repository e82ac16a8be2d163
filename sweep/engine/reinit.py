"""Seeded random re-initialisation of a module tree (shared by SR-init's block scoring and LNPT's
``init: random`` student).

Conv / linear weights: Kaiming normal (fan-in, ReLU gain: std = sqrt(2 / fan_in)), biases 0;
BatchNorm: γ = 1, β = 0, running mean 0, running var 1; other modules with their own parameters are
reset by their ``reset_parameters`` under the same seed. Device-independent: numbers are drawn on
the CPU from a private generator.
"""

from __future__ import annotations

import math


def reinit_(module, seed: int) -> None:
    """Re-initialise every submodule of ``module`` in place, deterministically under ``seed``."""
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
