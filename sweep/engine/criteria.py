"""Channel importance criteria: which channels of a coupled group go first.

Convention: a criterion scores every channel of a Torch-Pruning group (higher = keep); the names below
are what knobs and :func:`sweep.engine.channels.prune_to_target` accept. The latency-aware names
(``*_latency``) use the magnitude criterion of the same prefix as the value and divide it by a measured
latency cost per channel (:mod:`sweep.engine.latency`, after NetAdapt and HALP); that division happens
in :class:`sweep.engine.channels.ChannelPlan`, so :func:`make_importance` returns the value part.
"""

from __future__ import annotations

IMPORTANCES = ("l2", "l1", "bn_scale", "random")
# Latency-aware variants: the magnitude criterion weighted by measured latency (sweep.engine.latency).
LATENCY_IMPORTANCES = ("l2_latency", "l1_latency")
LATENCY_SUFFIX = "_latency"


def make_importance(name: str):
    """The ``tp.importance`` object of criterion ``name`` (see the module docstring)."""
    import torch_pruning as tp

    if name in LATENCY_IMPORTANCES:  # the value part of a latency-aware criterion
        name = name[: -len(LATENCY_SUFFIX)]
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"importance must be one of {IMPORTANCES + LATENCY_IMPORTANCES}, but got {name!r}")
