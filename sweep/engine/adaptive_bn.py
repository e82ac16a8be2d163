"""Adaptive BatchNorm: re-estimate the running statistics of a (pruned) network on a few training inputs.

Pruning removes channels (and blocks) upstream of a BatchNorm layer, so the activations it normalises no
longer have the mean and variance it recorded on the dense network; evaluated as is, a pruned network's
quality says more about those stale statistics than about the network.  EagleEye (Li, Wu, Su, Wang & Lin,
"EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning", ECCV 2020, Sec. 3, "adaptive
batch normalization") re-estimates them with a few forward passes over training data, weights frozen, and
shows that the quality measured afterwards ranks candidates much like their quality after fine-tuning.
That is the sweep's rung 0 (:mod:`sweep.mo_asha`): a quality estimate before any fine-tune epoch.

Choices and where they come from:

* ``DEFAULT_BATCHES = 50``: the authors' search code (``search.py`` of their repository) runs about 50
  training batches (it breaks after index 50) in train mode under ``no_grad`` before evaluating.
* Only the BatchNorm layers are put in train mode; every other module stays as it was (dropout off).  The
  authors switch the whole network to train mode; with dropout active the statistics would describe
  activations the evaluated (eval-mode) network never produces, so we do not.
* ``momentum=None`` (cumulative average): the statistics are reset and then become the plain average of the
  per-batch statistics over the batches seen, not an exponential average dominated by the last batches
  (PyTorch's ``momentum=None`` mode, ``num_batches_tracked`` as the count).
* Label-free: a batch may be a tensor, or a tuple / list whose first item is the input; nothing after the
  first item is read, so ``(x,)`` items of unlabeled views and ``(x, y)`` items work alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_BATCHES = 50


@dataclass(frozen=True)
class AdaptiveBNResult:
    layers: int  # BatchNorm layers whose statistics were re-estimated
    batches: int  # batches forwarded
    inputs: int  # inputs forwarded


def batchnorm_layers(model) -> list:
    """The BatchNorm layers (1-D, 2-D, 3-D, synchronised) of ``model`` that keep running statistics."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def first_input(batch):
    """The input of a batch: the batch itself when it is a tensor, else its first item (labels untouched)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)):
        return batch[0]
    raise TypeError(f"a batch must be a tensor or a tuple / list starting with the input, but got "
                    f"{type(batch).__name__}")


def adaptive_bn(model, loader: Iterable, *, max_batches: int = DEFAULT_BATCHES, max_inputs: int | None = None,
                device=None) -> AdaptiveBNResult:
    """Re-estimate every BatchNorm layer's running mean and variance of ``model`` in place.

    Forwards at most ``max_batches`` batches (and at most about ``max_inputs`` inputs: the batch that
    reaches it is the last) of ``loader`` with gradients off, only the BatchNorm layers in train mode,
    their momentum set to None (cumulative average).  Afterwards every module's mode and momentum are as
    before, and the parameters are untouched.  A model without BatchNorm is not run at all.  When no
    batch could be forwarded (an empty loader), or a forward raises, the old statistics are put back.
    Batches of one input are skipped (a BatchNorm over one value per channel has no variance)."""
    import torch

    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, but got max_batches={max_batches!r}")
    if max_inputs is not None and max_inputs < 1:
        raise ValueError(f"max_inputs must be >= 1, but got max_inputs={max_inputs!r}")
    bns = batchnorm_layers(model)
    if not bns:
        return AdaptiveBNResult(0, 0, 0)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    saved = [(m.momentum, {k: v.detach().clone() for k, v in _stats(m).items()}) for m in bns]
    batches = inputs = 0
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for batch in loader:
                x = first_input(batch)
                if x.shape[0] < 2:
                    continue
                model(x.to(device))
                batches += 1
                inputs += int(x.shape[0])
                if batches >= max_batches or (max_inputs is not None and inputs >= max_inputs):
                    break
    except BaseException:
        _restore_stats(bns, saved)
        raise
    finally:
        for m, training in modes.items():
            m.training = training  # the flag itself: Module.train() would recurse into the children
        for m, (momentum, _) in zip(bns, saved):
            m.momentum = momentum
    if batches == 0:
        _restore_stats(bns, saved)
    return AdaptiveBNResult(len(bns), batches, inputs)


def _stats(m) -> dict:
    out = {"running_mean": m.running_mean, "running_var": m.running_var}
    if m.num_batches_tracked is not None:
        out["num_batches_tracked"] = m.num_batches_tracked
    return out


def _restore_stats(bns: list, saved: list) -> None:
    import torch

    with torch.no_grad():
        for m, (_, stats) in zip(bns, saved):
            for k, v in _stats(m).items():
                v.copy_(stats[k])
