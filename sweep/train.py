"""Supervised training and fine-tuning (SGD or Adam, cosine schedule); no method-specific branches."""

from __future__ import annotations

import math
from typing import Callable, Iterable

from .errors import TrialFailure


def train(model, loader: Iterable, *, epochs: int, lr: float, momentum: float = 0.9,
          weight_decay: float = 5e-4, optimizer: str = "sgd", device: str = "cpu",
          on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place with cross-entropy; return the mean loss of each epoch.

    A non-finite loss raises :class:`TrialFailure` ("diverged") at once, so that a diverging
    trial becomes a failed row instead of a model full of NaNs.
    """
    import torch
    import torch.nn.functional as F

    if epochs <= 0:
        return []
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    steps_per_epoch = max(1, _len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    losses = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            lv = loss.item()
            if not math.isfinite(lv):
                raise TrialFailure(f"diverged: non-finite loss {lv} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += lv * len(y)
            n += len(y)
        # the last step of an epoch can blow the weights up after its (finite) loss was computed
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise TrialFailure(f"diverged: non-finite weights after epoch {epoch + 1}")
        losses.append(total / max(n, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    model.eval()
    return losses


def _len(loader) -> int:
    try:
        return len(loader)
    except TypeError:
        return 0
