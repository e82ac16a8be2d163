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
    params, opt, sched = make_optimizer(model, loader, epochs=epochs, lr=lr, momentum=momentum,
                                        weight_decay=weight_decay, optimizer=optimizer)
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


def make_optimizer(model, loader, *, epochs: int, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                   optimizer: str = "sgd"):
    """(trainable params, SGD-with-Nesterov or Adam, cosine schedule over every step of ``epochs``)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * max(1, _len(loader)))
    return params, opt, sched


def _len(loader) -> int:
    try:
        return len(loader)
    except TypeError:
        return 0


def distill(student, teacher, loader: Iterable, *, epochs: int, lr: float, temperature: float = 4.0,
            momentum: float = 0.9, weight_decay: float = 5e-4, optimizer: str = "sgd", device: str = "cpu",
            feature_weight: float = 0.0, features=None,
            on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Label-free training: match the teacher's softened outputs (KL at ``temperature``, scaled by
    T² as in Hinton et al., 2015, §2) and, with ``feature_weight`` > 0, its penultimate features.

    Batches are read as ``batch[0]`` only: the loader may (and in label-free sweeps does) carry no
    labels.  ``features(model, x) -> (logits, penultimate)`` is needed for the feature term.
    """
    import torch
    import torch.nn.functional as F

    if epochs <= 0:
        return []
    student.to(device).train()
    teacher.to(device).eval()
    params, opt, sched = make_optimizer(student, loader, epochs=epochs, lr=lr, momentum=momentum,
                                        weight_decay=weight_decay, optimizer=optimizer)
    t = temperature
    losses = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for batch in loader:
            x = batch[0].to(device)
            with torch.no_grad():
                if feature_weight > 0:
                    t_logits, t_feat = features(teacher, x)
                else:
                    t_logits = teacher(x)
            if feature_weight > 0:
                s_logits, s_feat = features(student, x)
            else:
                s_logits = student(x)
            loss = F.kl_div(F.log_softmax(s_logits / t, dim=1), F.softmax(t_logits / t, dim=1),
                            reduction="batchmean") * (t * t)
            if feature_weight > 0:
                loss = loss + feature_weight * F.mse_loss(s_feat, t_feat)
            lv = loss.item()
            if not math.isfinite(lv):
                raise TrialFailure(f"diverged: non-finite distillation loss {lv} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += lv * len(x)
            n += len(x)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise TrialFailure(f"diverged: non-finite weights after epoch {epoch + 1}")
        losses.append(total / max(n, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    student.eval()
    return losses
