"""Shared test helpers (not a test file): the tiny nets, synthetic learnable data and ONE way to build a
method's context, through the same factory as ``sweep run`` and ``sweep prune``
(:func:`sweep.methods.context.make_loaders` + :func:`~sweep.methods.context.build_context`).

The tiny nets: a plain CNN, a residual net (identity-shortcut add), a concatenation net (two conv
branches joined by ``torch.cat``, then a 1x1 conv) and a net of three identity-shortcut blocks in an
``nn.Sequential`` stage (what depth methods remove); 3x8x8 inputs, 4 classes.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from sweep.config import TrainConfig
from sweep.engine.skip import skipped_layers
from sweep.methods import PruneContext
from sweep.methods.context import Loaders, build_context, make_loaders

NUM_CLASSES = 4
SHAPE = (3, 8, 8)


# ----------------------------------------------------------------------------- tiny nets
class PlainCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        x = F.relu(out + x)  # identity shortcut: stem and conv2 channels are coupled
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(12)
        self.b = nn.Conv2d(3, 20, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(20)
        self.mix = nn.Conv2d(32, 24, 1, bias=False)
        self.bn_mix = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, NUM_CLASSES)

    def forward(self, x):
        a = F.relu(self.bn_a(self.a(x)))
        b = F.relu(self.bn_b(self.b(x)))
        x = F.relu(self.bn_mix(self.mix(torch.cat([a, b], dim=1))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Block(nn.Module):
    """A residual block with an identity shortcut (what depth methods remove)."""

    residual_block = True

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class BlockNet(nn.Module):
    """Stem, then a stage of three identity-shortcut blocks in an nn.Sequential."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Block(16), Block(16), Block(16))
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        x = self.layer1(F.relu(self.bn0(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


NETS = {"plain": PlainCNN, "residual": ResidualNet, "concat": ConcatNet, "blocks": BlockNet}


def example(shape=SHAPE):
    return torch.zeros(1, *shape)


def probe(n: int = 5, shape=SHAPE, seed: int = 123):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- data and context
def synthetic(n_train: int = 64, n_val: int = 32, shape=SHAPE, seed: int = 0, num_classes: int = NUM_CLASSES):
    """Learnable (train, val) datasets: Gaussian inputs whose mean is shifted by the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_val) % num_classes
    x = torch.randn(n_train + n_val, *shape, generator=g) + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def synthetic_loaders(*, labels: bool = True, seed: int = 0, data=None, shape=SHAPE, batch_size: int = 16,
            num_classes: int = NUM_CLASSES) -> Loaders:
    """The factory's loaders over ``data`` = (train, val) datasets (default: :func:`synthetic`)."""
    train_ds, val_ds = data if data is not None else synthetic(shape=shape, seed=seed, num_classes=num_classes)
    return make_loaders(train_ds, val_ds, labels=labels, batch_size=batch_size, seed=seed)


COPY = object()  # teacher default: a frozen copy of the model, as the runner gives


def make_ctx(model, *, method: str, labels: bool = True, seed: int = 0, shape=SHAPE, data=None,
             loaders: Loaders | None = None, teacher=COPY, ignored=None, num_classes: int = NUM_CLASSES,
             batch_size: int = 16, finetune_config: TrainConfig | None = None, **overrides) -> PruneContext:
    """A method's context as the runner builds it, on synthetic learnable data.

    ``labels``: the one switch (False strips the labels from train and val); ``data``: own (train,
    val) datasets, or ``loaders``: own loaders (e.g. traps); ``teacher``: default a frozen copy of
    ``model``, or any model, or None; ``ignored``: default the engine's ``skipped_layers``;
    ``finetune_config``: default one epoch at lr 0.01 (the sweep's fine-tune defaults);
    ``overrides``: context fields replaced after the factory (e.g. an oracle ``evaluate``).

    Test-side records on the context: ``ctx.logged`` = every ``(key, value, step)`` logged (method
    figures under ``<method>/``), ``ctx.calls`` = ``(epochs, step_offset)`` of every ``finetune`` call.
    """
    lo = loaders or synthetic_loaders(labels=labels, seed=seed, data=data, shape=shape, batch_size=batch_size,
                                      num_classes=num_classes)
    if teacher is COPY:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    logged: list = []
    calls: list = []
    ctx = build_context(lo, method=method, labels=labels, teacher=teacher,
                        finetune_config=finetune_config or TrainConfig(epochs=1, lr=0.01, batch_size=batch_size),
                        device="cpu", seed=seed, num_classes=num_classes,
                        ignored_layers=skipped_layers(model, example(shape)) if ignored is None else ignored,
                        log_metric=lambda k, v, s=0: logged.append((k, v, s)))
    finetune = ctx.finetune

    def recorded(m, epochs: int | None = None, step_offset: int = 0, lr: float | None = None) -> list:
        calls.append((epochs, step_offset))
        return finetune(m, epochs=epochs, step_offset=step_offset, lr=lr)

    ctx = dataclasses.replace(ctx, **{"finetune": recorded, **overrides})
    ctx.logged, ctx.calls = logged, calls  # type: ignore[attr-defined]
    return ctx


def steps(ctx, key: str) -> list:
    """The steps at which ``key`` was logged on ``ctx``."""
    return [s for k, _, s in ctx.logged if k == key]
