"""Channel (width) pruning on Torch-Pruning's dependency graph.

Torch-Pruning finds the coupled channel groups (residual adds, concatenations, depthwise convs) and
does the surgery; this module adds what it lacks: hitting a MACs target precisely (bisection on the
global ratio instead of coarse steps) and a uniform interface for every method.
"""

from __future__ import annotations

import copy
from typing import Sequence

IMPORTANCES = ("l2", "l1", "bn_scale", "random")


def make_importance(name: str):
    import torch_pruning as tp

    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"importance must be one of {IMPORTANCES}, but got {name!r}")


def default_ignored_layers(model) -> list:
    """Layers whose outputs are never pruned: the classifier head (the last Linear: its outputs are
    the classes), plus whatever the model declares through ``pruning_ignored_layers()``."""
    import torch.nn as nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    extra = list(model.pruning_ignored_layers()) if hasattr(model, "pruning_ignored_layers") else []
    return linears[-1:] + extra


def prune_channels(model, example_inputs, *, ratio: float, importance: str = "l2",
                   global_pruning: bool = True, ignored_layers: Sequence = (), round_to: int | None = None,
                   max_layer_ratio: float = 0.9):
    """Remove ``ratio`` of the prunable channels in place and return the model.

    ``max_layer_ratio`` stops global pruning from emptying a layer (a zero-width layer breaks the net).
    """
    import torch
    import torch_pruning as tp

    if ratio <= 0:
        return model
    ignored = list(ignored_layers) or default_ignored_layers(model)
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=make_importance(importance), global_pruning=global_pruning,
        pruning_ratio=ratio, max_pruning_ratio=max_layer_ratio, ignored_layers=ignored, round_to=round_to,
    )
    with torch.no_grad():
        pruner.step()
    return model


def prune_to_macs(model, example_inputs, *, macs_fraction: float, tolerance: float = 0.02,
                  max_iter: int = 14, **kw):
    """Prune so that MACs land at ``macs_fraction`` of the model's current MACs.

    Bisection on the channel ratio, each candidate pruned on a fresh copy, so the target is hit
    within ``tolerance`` (relative) where the channel granularity allows; returns
    ``(pruned_model, info)`` with target and achieved fractions side by side.
    """
    from ..measure import count_macs

    macs0 = count_macs(model, example_inputs)
    target = macs_fraction * macs0
    lo, hi = 0.0, kw.get("max_layer_ratio", 0.9)
    best, best_err, best_ratio = None, float("inf"), 0.0
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        cand = prune_channels(copy.deepcopy(model), example_inputs, ratio=mid, **kw)
        macs = count_macs(cand, example_inputs)
        err = abs(macs - target) / target
        if err < best_err:
            best, best_err, best_ratio = cand, err, mid
        if err <= tolerance:
            break
        if macs > target:
            lo = mid
        else:
            hi = mid
    achieved = count_macs(best, example_inputs) / macs0
    return best, {"target_macs_fraction": macs_fraction, "achieved_macs_fraction": achieved,
                  "channel_ratio": best_ratio}


def channel_counts(model) -> dict:
    """Output channels / features of every conv and linear layer (recorded with a trial)."""
    import torch.nn as nn

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out
